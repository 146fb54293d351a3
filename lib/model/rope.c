/* rope.c - RoPE scaling beyond layers.c's default/linear/dynamic/llama3:
 * yarn as transformers' _compute_yarn_parameters (float32 tensor ops in
 * torch's order, the correction range in double as Python computes it),
 * the attention factor it puts on cos/sin, longrope, partial rotary
 * embeddings (Phi-4-mini's partial_rotary_factor), and llamafactory's
 * --rope_scaling (model/model_utils/rope.py: configure_rope). */
#include <math.h>
#include <string.h>
#include "util/error.h"
#include "util/json.h"
#include "model/model_internal.h"

static double yarn_mscale(double scale, double mscale)
{
	return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* find_correction_dim */
static double corr_dim(double rot, int dim, double base, int max_pos)
{
	return (dim * log(max_pos / (rot * 2 * M_PI))) / (2 * log(base));
}

void ft_rope_yarn_inv_freq(float *inv, int hd, const ft_rope_params *p)
{
	float base = (float)p->theta, factor = (float)p->factor;
	int half = hd / 2;
	double bf = p->beta_fast > 0 ? p->beta_fast : 32, bs = p->beta_slow > 0 ? p->beta_slow : 1;
	double low = corr_dim(bf, hd, p->theta, p->original_max_pos);
	double high = corr_dim(bs, hd, p->theta, p->original_max_pos);
	if (p->truncate) {
		low = floor(low);
		high = ceil(high);
	}
	if (low < 0) low = 0;
	if (high > hd - 1) high = hd - 1;
	if (low == high) high += 0.001;   /* transformers: prevent a singularity */
	for (int i = 0; i < half; i++) {
		float pos_freq = powf(base, (float)(2 * i) / (float)hd);
		float extra = 1.0f / pos_freq, inter = 1.0f / (factor * pos_freq);
		float ramp = ((float)i - (float)low) / (float)(high - low);
		ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
		float ef = 1 - ramp;
		inv[i] = inter * (1 - ef) + extra * ef;
	}
}

void ft_rope_scale_tables(float *cos_t, float *sin_t, size_t n, const ft_rope_params *p)
{
	if (p->attention_factor == 0 || p->attention_factor == 1)
		return;
	float a = (float)p->attention_factor;
	for (size_t i = 0; i < n; i++) {
		cos_t[i] *= a;
		sin_t[i] *= a;
	}
}

void ft_rope_params_of(const ft_config *c, ft_rope_params *p)
{
	memset(p, 0, sizeof *p);
	snprintf(p->type, sizeof p->type, "%s", c->rope_type);
	p->theta = c->rope_theta;
	p->factor = c->rope_factor;
	p->low_freq_factor = c->rope_low_freq_factor;
	p->high_freq_factor = c->rope_high_freq_factor;
	p->original_max_pos = c->rope_original_max_pos;
	p->max_pos = c->max_position_embeddings;
	p->beta_fast = c->rope_beta_fast;
	p->beta_slow = c->rope_beta_slow;
	p->truncate = c->rope_truncate;
	p->attention_factor = c->rope_attention_factor;
	p->short_factor = c->rope_short;
	p->long_factor = c->rope_long;
}

/* transformers' _compute_longrope_parameters: 1 / (ext * base^(2i/dim)),
 * ext the long factors when seq_len exceeds the original length (its
 * longrope_frequency_update, from the longest position + 1), else the
 * short ones. */
void ft_rope_longrope_inv_freq(float *inv, int hd, const ft_rope_params *p, int seq_len)
{
	const float *ext = seq_len > p->original_max_pos ? p->long_factor : p->short_factor;
	for (int i = 0; i < hd / 2; i++)
		inv[i] = 1.0f / (ext[i] * powf((float)p->theta, (float)(2 * i) / (float)hd));
}

int ftp_rotary_dim(const ft_config *c)
{
	return c->rotary_dim > 0 ? c->rotary_dim : c->head_dim;
}

/* transformers' dim = int(head_dim * partial_rotary_factor): the double
 * product truncated, as Python's int() of a float. */
int ftp_rope_partial_config(const json_t *rp, const json_t *j, ft_config *c, const char *path)
{
	const json_t *v = rp ? json_object_get(rp, "partial_rotary_factor") : NULL;
	if (!v) v = json_object_get(j, "partial_rotary_factor");
	if (!v || json_is_null(v)) return 0;
	if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
		return ft_fail("%s: partial_rotary_factor must be a number in (0, 1]", path);
	double f = json_number_value(v);
	if (f == 1) return 0;
	if (c->arch != FT_ARCH_PHI3)
		return ft_fail("%s: partial_rotary_factor %g is supported for Phi3ForCausalLM only", path, f);
	int rd = (int)(c->head_dim * f);
	if (rd < 2 || rd % 2)
		return ft_fail("%s: partial_rotary_factor %g gives %d rotary values of head_dim %d "
			       "(ft needs an even number)", path, f, rd, c->head_dim);
	c->partial_rotary_factor = f;
	c->rotary_dim = rd;
	return 0;
}

/* n factors; dim names what n is half of (head_dim, or the rotary dim) */
static int factors(const json_t *rp, const char *key, float *out, int n, const char *dim,
		   const char *path)
{
	const json_t *a = json_object_get(rp, key);
	if (!json_is_array(a) || (int)json_array_size(a) != n)
		return ft_fail("%s: longrope %s must list %s/2 = %d numbers", path, key, dim, n);
	for (int i = 0; i < n; i++) {
		const json_t *v = json_array_get(a, i);
		if (!json_is_number(v) || !(json_number_value(v) > 0))
			return ft_fail("%s: longrope %s[%d] must be a positive number", path, key, i);
		out[i] = (float)json_number_value(v);
	}
	return 0;
}

/* longrope's keys; the original length from the config's top level
 * first (Phi-3 keeps it there, and transformers prefers it). */
int ftp_rope_longrope_config(const json_t *rp, const json_t *j, ft_config *c, const char *path)
{
	int n = ftp_rotary_dim(c) / 2;
	const char *dim = c->rotary_dim ? "head_dim*partial_rotary_factor" : "head_dim";
	if (n > 128) return ft_fail("%s: longrope with head_dim %d: ft supports 256", path, c->head_dim);
	if (factors(rp, "short_factor", c->rope_short, n, dim, path) < 0 ||
	    factors(rp, "long_factor", c->rope_long, n, dim, path) < 0)
		return -1;
	const json_t *top = json_object_get(j, "original_max_position_embeddings");
	if (json_is_integer(top)) c->rope_original_max_pos = (int)json_integer_value(top);
	const json_t *f = json_object_get(rp, "factor");
	c->rope_factor = json_is_number(f) ? json_number_value(f)
			 : (double)c->max_position_embeddings / c->rope_original_max_pos;
	const json_t *af = json_object_get(rp, "attention_factor");
	c->rope_attention_factor = json_is_number(af) ? json_number_value(af)
				 : c->rope_factor <= 1 ? 1.0
				 : sqrt(1 + log(c->rope_factor) / log(c->rope_original_max_pos));
	return 0;
}

/* yarn's keys; factor absent or null: max_position_embeddings / original
 * (transformers' DeepSeek-V3 rule), attention_factor absent: from factor
 * and mscale / mscale_all_dim. */
int ftp_rope_yarn_config(const json_t *rp, ft_config *c, const char *path)
{
	const json_t *f = json_object_get(rp, "factor");
	if (!json_is_number(f))
		c->rope_factor = (double)c->max_position_embeddings / c->rope_original_max_pos;
	c->rope_beta_fast = ft_json_num(rp, "beta_fast", 32);
	c->rope_beta_slow = ft_json_num(rp, "beta_slow", 1);
	if (!(c->rope_beta_fast > 0) || !(c->rope_beta_slow > 0))
		return ft_fail("%s: yarn beta_fast and beta_slow must be positive", path);
	c->rope_truncate = ft_json_bool(rp, "truncate", 1);
	const json_t *af = json_object_get(rp, "attention_factor");
	double ms = ft_json_num(rp, "mscale", 0), msa = ft_json_num(rp, "mscale_all_dim", 0);
	if (json_is_number(af))
		c->rope_attention_factor = json_number_value(af);
	else if (ms != 0 && msa != 0)
		c->rope_attention_factor = yarn_mscale(c->rope_factor, ms) / yarn_mscale(c->rope_factor, msa);
	else
		c->rope_attention_factor = yarn_mscale(c->rope_factor, 1);
	if (!(c->rope_attention_factor > 0))
		return ft_fail("%s: yarn attention_factor must be positive", path);
	return 0;
}

int ft_config_rope_override(ft_config *c, const char *type, long long model_max_length,
			    const char **why)
{
	*why = NULL;
	if (strcmp(type, "linear") && strcmp(type, "dynamic") && strcmp(type, "yarn") &&
	    strcmp(type, "llama3"))
		return ft_fail("--rope_scaling %s: not one of linear, dynamic, yarn, llama3", type);
	/* the pretraining length: original_max_position_embeddings where the
	 * config's scaling has one, else max_position_embeddings */
	long long old = strcmp(c->rope_type, "default") ? c->rope_original_max_pos
							: c->max_position_embeddings;
	double factor = 2.0;   /* inference */
	if (model_max_length > 0) {
		if (model_max_length <= old) {
			*why = "the input length is within the model's: rope scaling is not applied";
			return 1;
		}
		factor = ceil((double)model_max_length / (double)old);
	}
	if (old * factor > (1 << 24))
		return ft_fail("--rope_scaling: %lld positions are too many", (long long)(old * factor));
	snprintf(c->rope_type, sizeof c->rope_type, "%s", type);
	c->rope_factor = factor;
	c->max_position_embeddings = (int)(old * factor);
	c->rope_original_max_pos = (int)old;
	c->rope_low_freq_factor = 1;
	c->rope_high_freq_factor = 4;
	c->rope_beta_fast = 32;
	c->rope_beta_slow = 1;
	c->rope_truncate = 1;
	c->rope_attention_factor = !strcmp(type, "yarn") ? yarn_mscale(factor, 1) : 0;
	return 0;
}

json_t *ftp_rope_json(const ft_config *c)
{
	json_t *rp = json_pack("{s:s, s:f}", "rope_type", c->rope_type, "rope_theta", c->rope_theta);
	if (strcmp(c->rope_type, "default"))
		json_object_set_new(rp, "factor", json_real(c->rope_factor));
	if (!strcmp(c->rope_type, "llama3")) {
		json_object_set_new(rp, "low_freq_factor", json_real(c->rope_low_freq_factor));
		json_object_set_new(rp, "high_freq_factor", json_real(c->rope_high_freq_factor));
	}
	if (!strcmp(c->rope_type, "llama3") || !strcmp(c->rope_type, "yarn") ||
	    !strcmp(c->rope_type, "dynamic"))
		json_object_set_new(rp, "original_max_position_embeddings",
				    json_integer(c->rope_original_max_pos));
	if (!strcmp(c->rope_type, "longrope")) {
		json_t *sf = json_array(), *lf = json_array();
		for (int i = 0; i < ftp_rotary_dim(c) / 2; i++) {
			json_array_append_new(sf, json_real(c->rope_short[i]));
			json_array_append_new(lf, json_real(c->rope_long[i]));
		}
		json_object_set_new(rp, "short_factor", sf);
		json_object_set_new(rp, "long_factor", lf);
		json_object_set_new(rp, "original_max_position_embeddings",
				    json_integer(c->rope_original_max_pos));
	}
	if (c->rotary_dim)   /* Phi3Config keeps it here (and at the top level) */
		json_object_set_new(rp, "partial_rotary_factor", json_real(c->partial_rotary_factor));
	if (!strcmp(c->rope_type, "yarn")) {
		json_object_set_new(rp, "beta_fast", json_real(c->rope_beta_fast));
		json_object_set_new(rp, "beta_slow", json_real(c->rope_beta_slow));
		json_object_set_new(rp, "attention_factor", json_real(c->rope_attention_factor));
		if (!c->rope_truncate) json_object_set_new(rp, "truncate", json_false());
	}
	return rp;
}

void ft_config_rope_to_json(void *config_json, const ft_config *c)
{
	json_t *j = config_json, *rp = json_object_get(j, "rope_parameters");
	json_object_del(j, "rope_scaling");
	if (json_is_object(rp) && json_is_object(json_object_get(rp, "full_attention")))
		json_object_set_new(rp, "full_attention", ftp_rope_json(c));   /* Gemma 3: global layers */
	else
		json_object_set_new(j, "rope_parameters", ftp_rope_json(c));
	json_object_set_new(j, "max_position_embeddings", json_integer(c->max_position_embeddings));
}
