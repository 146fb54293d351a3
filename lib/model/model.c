/* model.c - configuration, weights and the parameter list of LLaMA /
 * Mistral / Qwen2 decoders (forward/backward in model_fwd.c, files in
 * model_io.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "util/error.h"
#include "util/json.h"
#include "model/model_internal.h"

const char *const ft_lin_names[L_NLIN] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
};

static int cfg_int(const json_t *j, const char *key, int *out, const char *path)
{
	long long v;
	if (ft_json_req_int(j, key, &v) < 0)
		return ft_fail_ctx("%s: ", path);
	if (v <= 0 || v > (1LL << 30))
		return ft_fail("%s: %s = %lld is out of range", path, key, v);
	*out = (int)v;
	return 0;
}

/* rope_theta and rope scaling, in transformers 5's "rope_parameters" or
 * 4.x's "rope_theta" + "rope_scaling" spelling. */
int ftp_config_rope(const json_t *j, ft_config *c, const char *path)
{
	const json_t *rp = json_object_get(j, "rope_parameters");
	if (!json_is_object(rp))
		rp = json_object_get(j, "rope_scaling");
	c->rope_theta = ft_json_num(j, "rope_theta", 10000.0);
	snprintf(c->rope_type, sizeof c->rope_type, "default");
	c->rope_factor = 1;
	c->rope_low_freq_factor = 1;
	c->rope_high_freq_factor = 4;
	c->rope_original_max_pos = c->max_position_embeddings;
	if (ftp_rope_partial_config(json_is_object(rp) ? rp : NULL, j, c, path) < 0)
		return -1;
	if (!json_is_object(rp))
		return 0;
	c->rope_theta = ft_json_num(rp, "rope_theta", c->rope_theta);
	const char *t = ft_json_str(rp, "rope_type", ft_json_str(rp, "type", "default"));
	if (strcmp(t, "default") && strcmp(t, "linear") && strcmp(t, "dynamic") &&
	    strcmp(t, "llama3") && strcmp(t, "yarn") && strcmp(t, "longrope"))
		return ft_fail("%s: rope type '%s' is not supported (default, "
			       "linear, dynamic, llama3, yarn, longrope)", path, t);
	snprintf(c->rope_type, sizeof c->rope_type, "%s", t);
	c->rope_factor = ft_json_num(rp, "factor", 1.0);
	c->rope_low_freq_factor = ft_json_num(rp, "low_freq_factor", 1.0);
	c->rope_high_freq_factor = ft_json_num(rp, "high_freq_factor", 4.0);
	c->rope_original_max_pos = (int)ft_json_int(rp, "original_max_position_embeddings",
						    c->max_position_embeddings);
	if (!strcmp(t, "yarn") && ftp_rope_yarn_config(rp, c, path) < 0)
		return -1;
	if (!strcmp(t, "longrope") && ftp_rope_longrope_config(rp, j, c, path) < 0)
		return -1;
	if (strcmp(t, "default") && !(c->rope_factor > 0))
		return ft_fail("%s: rope factor must be positive", path);
	return 0;
}

static int config_from_json(const json_t *j, ft_config *c, const char *path)
{
	memset(c, 0, sizeof *c);
	const json_t *archs = json_object_get(j, "architectures");
	const char *arch = json_is_array(archs) && json_array_size(archs)
		? json_string_value(json_array_get(archs, 0)) : NULL;
	const char *mt = ft_json_str(j, "model_type", "");
	if (!arch)
		arch = *mt ? mt : "(none)";
	const json_t *quant = json_object_get(j, "quantization_config");
	if (quant)   /* gptq, awq, aqlm, fp8...: packed weights, not plain tensors */
		return ft_fail("%s: a pre-quantized checkpoint (%s): ft loads unquantized weights "
			       "only", path, ft_json_str(quant, "quant_method", "unknown method"));
	if (ftp_arch_from_name(arch, &c->arch, path) < 0)
		return -1;
	if (cfg_int(j, "vocab_size", &c->vocab_size, path) < 0 ||
	    cfg_int(j, "hidden_size", &c->hidden_size, path) < 0 ||
	    cfg_int(j, "intermediate_size", &c->intermediate_size, path) < 0 ||
	    cfg_int(j, "num_hidden_layers", &c->num_hidden_layers, path) < 0 ||
	    cfg_int(j, "num_attention_heads", &c->num_attention_heads, path) < 0)
		return -1;
	c->num_key_value_heads = (int)ft_json_int(j, "num_key_value_heads", c->num_attention_heads);
	const json_t *hdj = json_object_get(j, "head_dim");
	c->head_dim = json_is_integer(hdj) ? (int)json_integer_value(hdj)
					   : c->hidden_size / c->num_attention_heads;
	if (c->num_key_value_heads <= 0 || c->num_attention_heads % c->num_key_value_heads)
		return ft_fail("%s: num_attention_heads %d is not a multiple of "
			       "num_key_value_heads %d", path, c->num_attention_heads,
			       c->num_key_value_heads);
	if (c->head_dim <= 0 || c->head_dim % 2)
		return ft_fail("%s: head_dim %d must be positive and even", path, c->head_dim);
	c->max_position_embeddings = (int)ft_json_int(j, "max_position_embeddings", 2048);
	c->rms_norm_eps = ft_json_num(j, "rms_norm_eps", 1e-6);
	c->initializer_range = ft_json_num(j, "initializer_range", 0.02);
	int gemma = c->arch == FT_ARCH_GEMMA2 || c->arch == FT_ARCH_GEMMA3;
	c->tie_word_embeddings = ft_json_bool(j, "tie_word_embeddings", gemma);   /* Gemma ties */
	const char *act = ft_json_str(j, "hidden_act", "silu");
	if (!gemma && strcmp(act, "silu") && strcmp(act, "swish"))
		return ft_fail("%s: hidden_act %s is not supported (silu)", path, act);
	if (ft_json_bool(j, "mlp_bias", 0))
		return ft_fail("%s: mlp_bias true is not supported", path);
	if (c->arch == FT_ARCH_QWEN2) {
		c->attention_bias = 1;
		if (ft_json_bool(j, "use_sliding_window", 0))
			return ft_fail("%s: Qwen2 use_sliding_window true is not supported", path);
	} else if (c->arch != FT_ARCH_QWEN3 && ft_json_bool(j, "attention_bias", 0))
		return ft_fail("%s: attention_bias true is not supported for %s", path, arch);
	if (c->arch == FT_ARCH_MISTRAL) {
		const json_t *sw = json_object_get(j, "sliding_window");
		c->sliding_window = json_is_integer(sw) ? (int)json_integer_value(sw) : 0;
	}
	const char *dt = ft_json_str(j, "dtype", ft_json_str(j, "torch_dtype", "float32"));
	snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt);
	if (ftp_config_rope(j, c, path) < 0 || ftp_arch_config(j, c, path) < 0) return -1;
	return ftp_config_check(c, path);
}

int ft_config_load(const char *config_json, ft_config *c)
{
	json_t *j = ft_json_load_file(config_json);
	if (!j)
		return -1;
	int rc = config_from_json(j, c, config_json);
	json_decref(j);
	return rc;
}

int ftp_lin_dims(const ft_config *c, int which, int *in, int *out)
{
	int D = c->hidden_size, qd = c->num_attention_heads * c->head_dim;
	int kd = c->num_key_value_heads * c->head_dim, F = c->intermediate_size;
	switch (which) {
	case L_Q: *in = D; *out = qd; break;
	case L_K: case L_V: *in = D; *out = kd; break;
	case L_O: *in = qd; *out = D; break;
	case L_GATE: case L_UP: *in = D; *out = F; break;
	default: *in = F; *out = D; break;
	}
	return 0;
}

/* ---- seeded random numbers: xoshiro256** seeded by splitmix64 of
 * (seed ^ FNV-1a(name)), one stream per tensor, so a tensor's values do
 * not depend on which other tensors exist. */
typedef struct { uint64_t s[4]; } rng;

static uint64_t sm64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (const char *p = name; *p; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
	uint64_t x = seed ^ h;
	for (int i = 0; i < 4; i++)
		r->s[i] = sm64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r)
{
	uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
	s[2] ^= t; s[3] = rotl(s[3], 45);
	return res;
}

static double rng_uniform(rng *r) { return (rng_next(r) >> 11) * 0x1.0p-53; }

static void fill_uniform(float *w, size_t n, float bound, uint64_t seed, const char *name)
{
	rng r;
	rng_seed(&r, seed, name);
	for (size_t i = 0; i < n; i++)
		w[i] = (float)((2 * rng_uniform(&r) - 1) * bound);
}

void ftp_fill_normal(float *w, size_t n, float std, uint64_t seed, const char *name)
{
	rng r;
	rng_seed(&r, seed, name);
	for (size_t i = 0; i < n; i += 2) {
		double u1 = rng_uniform(&r), u2 = rng_uniform(&r);
		double rad = sqrt(-2 * log(1 - u1)), a = 2 * M_PI * u2;
		w[i] = (float)(std * rad * cos(a));
		if (i + 1 < n)
			w[i + 1] = (float)(std * rad * sin(a));
	}
}

/* ---- the list of base tensors, in transformers' parameter order ---- */

static void add_param(ft_model *m, size_t *cap, const char *name, ftp_wg *p,
		      int ndim, int64_t d0, int64_t d1, int trainable, int decay)
{
	if (m->nparams == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		m->params = ft_xrealloc(m->params, *cap * sizeof *m->params);
	}
	size_t n = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
	if (trainable && !p->g)
		p->g = ft_xcalloc(n, sizeof(float));
	if (!trainable && p->g) {
		free(p->g);
		p->g = NULL;
	}
	ft_param *q = &m->params[m->nparams++];
	q->name = ft_xstrdup(name);
	q->w = p->w;
	q->g = p->g;
	q->n = n;
	q->ndim = ndim;
	q->shape[0] = d0;
	q->shape[1] = ndim == 2 ? d1 : 0;
	q->trainable = trainable;
	q->decay = decay;
}

/* transformers' get_decay_parameter_names: no decay for names matching
 * bias, layernorm, rmsnorm, (^|.)norm($|.) or _norm($|.) (lower case). */
static int decays(const char *name)
{
	if (strstr(name, "bias") || strstr(name, "layernorm") || strstr(name, "rmsnorm"))
		return 0;
	for (const char *p = name; (p = strstr(p, "norm")); p++) {
		char before = p == name ? '.' : p[-1], after = p[4];
		if ((before == '.' || before == '_') && (after == '.' || after == 0))
			return 0;
	}
	return 1;
}

static int layer_trainable(const ft_model *m, int l)
{
	int L = m->c.num_hidden_layers, n = m->o.freeze_trainable_layers;
	if (m->o.type == FT_FT_FULL)
		return 1;
	if (m->o.type != FT_FT_FREEZE)
		return 0;
	if (m->o.use_llama_pro)
		return ftp_llama_pro_layer(m, l);
	return n >= 0 ? l >= L - n : l < -n;
}

/* freeze_extra_modules' bit b, in freeze tuning only */
static int extra_trainable(const ft_model *m, unsigned b)
{
	return m->o.type == FT_FT_FREEZE && (m->o.freeze_extra & b);
}

static int module_trainable(const ft_model *m, int l, int lin)
{
	if (!layer_trainable(m, l))
		return 0;
	if (m->o.type == FT_FT_FULL || !m->o.freeze_trainable_modules)
		return 1;
	return lin >= 0 && (m->o.freeze_trainable_modules >> lin & 1);
}

/* Qwen3's self_attn.q_norm / k_norm: trainable where the layer's norms
 * are, or where freeze_trainable_modules names all of self_attn (their
 * names are under it, as llamafactory's substring match sees them). */
static void add_qk_norm_params(ft_model *m, size_t *cap, int l)
{
	ftp_layer *y = &m->layers[l];
	unsigned mods = m->o.freeze_trainable_modules;
	int tn = module_trainable(m, l, -1) || extra_trainable(m, FT_EXTRA_NORM) ||
		 (layer_trainable(m, l) && (mods & FT_MOD_SELF_ATTN) == FT_MOD_SELF_ATTN);
	char nm[160];
	snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_norm.weight", l);
	add_param(m, cap, nm, &y->qn, 1, m->c.head_dim, 0, tn, 0);
	snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_norm.weight", l);
	add_param(m, cap, nm, &y->kn, 1, m->c.head_dim, 0, tn, 0);
}

void ftp_model_free_params(ft_model *m)
{
	for (size_t i = 0; i < m->nparams; i++)
		free(m->params[i].name);
	free(m->params);
	free(m->grads);
	m->params = NULL;
	m->grads = NULL;
	m->nparams = m->ngrads = 0;
}

int ftp_model_build_params(ft_model *m)
{
	const ft_config *c = &m->c;
	int D = c->hidden_size, full = m->o.type == FT_FT_FULL;
	int emb = ftp_emb_trains(m);
	int head = full || m->o.modules_to_save || extra_trainable(m, FT_EXTRA_HEAD);
	int norms = extra_trainable(m, FT_EXTRA_NORM);
	size_t cap = 0;
	char nm[160];
	ftp_model_free_params(m);
	add_param(m, &cap, "model.embed_tokens.weight", &m->wte, 2, c->vocab_size, D, emb, 1);
	for (int l = 0; l < c->num_hidden_layers; l++) {
		ftp_layer *y = &m->layers[l];
		for (int j = 0; j < L_NLIN; j++) {
			int in, out, tr = module_trainable(m, l, j), lead = ftp_fused_lead(c, j);
			const char *grp = j < L_GATE ? "self_attn" : "mlp";
			ftp_lin_dims(c, j, &in, &out);
			if (lead != j) {   /* a row block of its lead's tensor */
				size_t off = (size_t)ftp_fused_row(c, j) * in;
				y->lin[j].g = y->lin[lead].g ? y->lin[lead].g + off : NULL;
				continue;
			}
			snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.weight", l, grp, ftp_module_name(c, j));
			add_param(m, &cap, nm, &y->lin[j], 2, ftp_fused_rows(c, j), in, tr, decays(nm));
			if (j <= L_V && c->attention_bias) {
				snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.bias", l, grp, ft_lin_names[j]);
				add_param(m, &cap, nm, &y->bias[j], 1, out, 0, tr, 0);
			}
			if (j == L_O && c->qk_norm)
				add_qk_norm_params(m, &cap, l);
		}
		int tn = module_trainable(m, l, -1) || norms;
		snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
		add_param(m, &cap, nm, &y->ln1, 1, D, 0, tn, 0);
		snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
		add_param(m, &cap, nm, &y->ln2, 1, D, 0, tn, 0);
		if (c->gemma) {
			snprintf(nm, sizeof nm, "model.layers.%d.pre_feedforward_layernorm.weight", l);
			add_param(m, &cap, nm, &y->ln3, 1, D, 0, tn, 0);
			snprintf(nm, sizeof nm, "model.layers.%d.post_feedforward_layernorm.weight", l);
			add_param(m, &cap, nm, &y->ln4, 1, D, 0, tn, 0);
		}
	}
	add_param(m, &cap, "model.norm.weight", &m->norm, 1, D, 0, full || norms, 0);
	if (c->tie_word_embeddings)
		m->lm_head = m->wte;
	else
		add_param(m, &cap, "lm_head.weight", &m->lm_head, 2, c->vocab_size, D, head, 1);
	for (int l = 0; l < c->num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_lora *a = &m->layers[l].lora[j], *lead = &m->layers[l].lora[ftp_fused_lead(c, j)];
			int in, out;
			if (!a->on)
				continue;
			ftp_lin_dims(c, j, &in, &out);
			if (lead != a) {   /* Phi-3: views of the fused module's adapter */
				a->A.g = lead->A.g;
				a->B.g = lead->B.g + (size_t)ftp_fused_row(c, j) * a->r;
				continue;
			}
			const char *grp = j < L_GATE ? "self_attn" : "mlp";
			snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.lora_A.weight",
				 l, grp, ftp_module_name(c, j));
			add_param(m, &cap, nm, &a->A, 2, a->r, in, 1, 1);
			snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.lora_B.weight",
				 l, grp, ftp_module_name(c, j));
			add_param(m, &cap, nm, &a->B, 2, ftp_fused_rows(c, j), a->r, 1, 1);
			if (ftp_dora_of(m, l, j)) {   /* lib/model/lora_dora.c */
				snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.lora_magnitude_vector",
					 l, grp, ftp_module_name(c, j));
				add_param(m, &cap, nm, &ftp_dora_of(m, l, j)->mag, 1, out, 0, 1, decays(nm));
			}
		}
	for (int l = 0; l < c->num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_oft *o = ftp_oft_of(m, l, j);
			if (!o) continue;
			snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.oft_R.weight", l,
				 j < L_GATE ? "self_attn" : "mlp", ftp_module_name(c, j));
			add_param(m, &cap, nm, &o->R, 2, o->r, (int64_t)o->b * (o->b - 1) / 2, 1, decays(nm));
		}
	m->grads = ft_xcalloc(m->nparams ? m->nparams : 1, sizeof *m->grads);
	for (size_t i = 0; i < m->nparams; i++)
		if (m->params[i].g)
			m->grads[m->ngrads++] = &m->params[i];
	return 0;
}

static void lora_free(ftp_lora *a)
{
	free(a->A.w); free(a->A.g); free(a->B.w); free(a->B.g);
	memset(a, 0, sizeof *a);
}

/* A fused member's adapter is views of its lead's: forgotten, not freed. */
static void lora_release(const ft_config *c, int j, ftp_lora *a)
{
	if (ftp_fused_lead(c, j) == j) lora_free(a);
	else memset(a, 0, sizeof *a);
}

/* Adapters on the `targets` modules of every layer: A kaiming-uniform
 * (a=sqrt(5)) as torch's nn.Linear default, i.e. U(-1/sqrt(in), 1/sqrt(in)),
 * B zero, as PEFT's init_lora_weights=True.  Does not rebuild the list. */
void ftp_lora_setup(ft_model *m, int rank, double alpha, int rslora, unsigned targets)
{
	m->o.lora_rank = rank;
	m->o.lora_alpha = alpha;
	m->o.use_rslora = rslora;
	m->o.lora_targets = targets;
	ftp_dora_free(m);   /* new adapters: DoRA is turned on again by its caller */
	char nm[160];
	for (int l = 0; l < m->c.num_hidden_layers; l++) {
		for (int j = L_NLIN - 1; j >= 0; j--)   /* members before their lead */
			lora_release(&m->c, j, &m->layers[l].lora[j]);
		for (int j = 0; j < L_NLIN; j++) {
			ftp_lora *a = &m->layers[l].lora[j], *lead = &m->layers[l].lora[ftp_fused_lead(&m->c, j)];
			if (!(targets >> j & 1))
				continue;
			int in, out;
			ftp_lin_dims(&m->c, j, &in, &out);
			a->on = 1;
			a->r = rank;
			a->scale = (float)(rslora ? alpha / sqrt(rank) : alpha / rank);
			if (lead != a) {   /* Phi-3: the fused module's one A, B's row block */
				a->A.w = lead->A.w;
				a->B.w = lead->B.w + (size_t)ftp_fused_row(&m->c, j) * rank;
				continue;
			}
			a->A.w = ft_xmalloc((size_t)rank * in * sizeof(float));
			a->B.w = ft_xcalloc((size_t)ftp_fused_rows(&m->c, j) * rank, sizeof(float));
			snprintf(nm, sizeof nm, "layers.%d.%s.lora_A", l, ftp_module_name(&m->c, j));
			fill_uniform(a->A.w, (size_t)rank * in, 1.0f / sqrtf((float)in), m->o.seed, nm);
		}
	}
}

static float *wnew(size_t n) { return ft_xmalloc(n * sizeof(float)); }

/* Allocates every base weight (uninitialised) for configuration c. */
static ft_model *model_alloc(const ft_config *c, const ft_tune_opts *o, const char *what)
{
	if (c->num_hidden_layers <= 0 || c->hidden_size <= 0 || c->vocab_size <= 0 ||
	    c->num_key_value_heads <= 0 || c->num_attention_heads % c->num_key_value_heads ||
	    c->head_dim <= 0 || c->head_dim % 2) {
		ft_fail("model config: inconsistent sizes");
		return NULL;
	}
	if ((o && o->quantization_bit ? ftp_quant_memory_plan(c, o, what)
	     : ftp_config_memory_plan(c, what)) < 0) return NULL;
	ft_config cc = *c;
	const char *why;
	if (o && o->rope_scaling &&
	    ft_config_rope_override(&cc, o->rope_scaling, o->model_max_length, &why) < 0)
		return NULL;
	ft_model *m = ft_xcalloc(1, sizeof *m);
	m->c = cc;
	if (o)
		m->o = *o;
	else
		m->o.type = FT_FT_LORA;
	if (m->o.lora_rank <= 0)
		m->o.lora_rank = 8;
	if (m->o.lora_alpha <= 0)
		m->o.lora_alpha = 2.0 * m->o.lora_rank;
	if (!m->o.lora_targets)   /* Phi-3: qkv_proj holds q_proj and v_proj */
		m->o.lora_targets = c->fused ? FT_MOD_Q | FT_MOD_K | FT_MOD_V : FT_MOD_Q | FT_MOD_V;
	if (m->o.type == FT_FT_OFT && (c->fused || (m->o.oft_rank != 0) == (m->o.oft_block_size != 0) ||
				       m->o.oft_rank < 0 || m->o.oft_block_size < 0)) {
		if (c->fused)
			ft_fail("OFT on Phi-3's fused modules (qkv_proj, gate_up_proj) is not implemented in ft yet");
		else
			ft_fail("OFT: give either oft_rank (%d) or oft_block_size (%d), as PEFT's OFTConfig",
				m->o.oft_rank, m->o.oft_block_size);
		free(m);
		return NULL;
	}
	if ((m->o.type == FT_FT_LORA || m->o.type == FT_FT_OFT) && ftp_check_targets(c, m->o.lora_targets) < 0) {
		free(m);
		return NULL;
	}
	int D = c->hidden_size, V = c->vocab_size;
	m->wte.w = wnew((size_t)V * D);
	m->norm.w = wnew(D);
	if (!c->tie_word_embeddings)
		m->lm_head.w = wnew((size_t)V * D);
	m->layers = ft_xcalloc(c->num_hidden_layers, sizeof *m->layers);
	if (c->gemma)   /* (1 + weight) of one norm at a time */
		m->norm_eff = wnew(D > c->head_dim ? D : c->head_dim);
	for (int l = 0; l < c->num_hidden_layers; l++) {
		ftp_layer *y = &m->layers[l];
		y->ln1.w = wnew(D);
		y->ln2.w = wnew(D);
		if (c->qk_norm) {
			y->qn.w = wnew(c->head_dim);
			y->kn.w = wnew(c->head_dim);
		}
		if (c->gemma) {
			y->ln3.w = wnew(D);
			y->ln4.w = wnew(D);
		}
		for (int j = 0; j < L_NLIN; j++) {
			int in, out, lead = ftp_fused_lead(c, j);
			ftp_lin_dims(c, j, &in, &out);
			/* Phi-3: members are row blocks of their group's tensor */
			y->lin[j].w = lead != j ? y->lin[lead].w + (size_t)ftp_fused_row(c, j) * in
				    : wnew((size_t)in * ftp_fused_rows(c, j));
			if (j <= L_V && c->attention_bias)
				y->bias[j].w = ft_xcalloc(out, sizeof(float));
		}
	}
	return m;
}

/* Finishes a model whose base weights are set: adapters, parameter list. */
static ft_model *model_finish(ft_model *m)
{
	m->lora0_rank = m->o.lora_rank;
	m->lora0_alpha = m->o.lora_alpha;
	m->lora0_rslora = m->o.use_rslora;
	m->lora0_targets = m->o.lora_targets;
	if (m->o.type == FT_FT_LORA) {
		ftp_lora_setup(m, m->o.lora_rank, m->o.lora_alpha, m->o.use_rslora,
			      m->o.lora_targets);
		m->lora_dropout_on = m->o.lora_dropout > 0;
	}
	if (m->o.type == FT_FT_OFT)   /* PEFT's default: 5 Cayley-Neumann terms; checked in model_alloc */
		(void)ftp_oft_setup(m, m->o.oft_rank, m->o.oft_block_size, m->o.lora_targets, 5);
	ftp_model_build_params(m);
	return m;
}

ft_model *ft_model_from_config(const ft_config *c, const ft_tune_opts *o)
{
	if (ftp_check_freeze_extra(c, o) < 0)
		return NULL;
	if (c->gemma) {   /* its config.json would lose the Gemma fields */
		ft_fail("model config: training Gemma from scratch is not supported; start from "
			"a Gemma checkpoint (--model_name_or_path)");
		return NULL;
	}
	ft_model *m = model_alloc(c, o, "model config");
	if (!m)
		return NULL;
	/* transformers' _init_weights: normal(0, initializer_range), norms 1,
	 * biases 0 */
	uint64_t seed = m->o.seed;
	float std = c->initializer_range > 0 ? (float)c->initializer_range : 0.02f;
	int D = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
	for (int d = 0; d < D; d++)
		m->norm.w[d] = 1;
	for (int l = 0; l < L; l++) {
		ftp_layer *y = &m->layers[l];
		for (int d = 0; d < D; d++)
			y->ln1.w[d] = y->ln2.w[d] = 1;
		for (int d = 0; c->qk_norm && d < c->head_dim; d++)
			y->qn.w[d] = y->kn.w[d] = 1;
	}
	/* Each matrix draws from its own stream, seeded by its name, so they
	 * fill in parallel and the weights do not depend on the thread count
	 * (a 7B shape is 6.7e9 draws: minutes on one core, which the device
	 * check's 7B throughput rows cannot wait for). */
	int ntask = 2 + L * L_NLIN;
#pragma omp parallel for schedule(dynamic)
	for (int t = 0; t < ntask; t++) {
		if (t == 0) {
			ftp_fill_normal(m->wte.w, (size_t)V * D, std, seed, "embed_tokens");
		} else if (t == 1) {
			if (!c->tie_word_embeddings)
				ftp_fill_normal(m->lm_head.w, (size_t)V * D, std, seed, "lm_head");
		} else {
			int l = (t - 2) / L_NLIN, j = (t - 2) % L_NLIN, in, out;
			char nm[64];
			ftp_lin_dims(c, j, &in, &out);
			snprintf(nm, sizeof nm, "layers.%d.%s", l, ft_lin_names[j]);
			ftp_fill_normal(m->layers[l].lin[j].w, (size_t)in * out, std, seed, nm);
		}
	}
	return ftp_model_quantize(model_finish(m));
}

/* lib/model/model_io.c */
int ft_model_read_weights(ft_model *m, const char *dir);

ft_model *ft_model_load(const char *model_dir, const ft_tune_opts *o)
{
	char *path = ft_xasprintf("%s/config.json", model_dir);
	json_t *j = ft_json_load_file(path);
	ft_config c;
	if (!j || config_from_json(j, &c, path) < 0) {
		free(path);
		json_decref(j);
		return NULL;
	}
	free(path);
	ft_model *m = ftp_check_freeze_extra(&c, o) < 0 || ftp_config_check_weights(&c, model_dir) < 0
		? NULL : model_alloc(&c, o, model_dir);
	if (!m) {
		json_decref(j);
		return NULL;
	}
	m->config_json = j;
	if (o && o->rope_scaling && (strcmp(m->c.rope_type, c.rope_type) ||
				     m->c.rope_factor != c.rope_factor ||
				     m->c.max_position_embeddings != c.max_position_embeddings)) {
		/* --rope_scaling: saved configs carry it, as llamafactory's do */
		ft_config_rope_to_json(j, &m->c);
	}
	m->model_dir = ft_xstrdup(model_dir);
	model_finish(m);
	if (ft_model_read_weights(m, model_dir) < 0) {
		ft_model_free(m);
		return NULL;
	}
	return ftp_model_quantize(m);
}

/* A base tensor's weights, unless borrowed from another model
 * (ft_model_share_base). */
static void free_base(const ft_model *m, float *w)
{
	if (!m->base_borrowed)
		free(w);
}

void ft_model_free(ft_model *m)
{
	if (!m)
		return;
	ftp_model_free_buffers(m);
	ftp_model_quant_free(m);
	ftp_model_free_params(m);
	ftp_oft_free(m);
	ftp_fp8_free(m);
	free_base(m, m->wte.w); free(m->wte.g);
	free(m->wte0); free(m->head0);
	if (!m->c.tie_word_embeddings) {
		free_base(m, m->lm_head.w);
		free(m->lm_head.g);
	}
	free_base(m, m->norm.w); free(m->norm.g);
	for (int l = 0; m->layers && l < m->c.num_hidden_layers; l++) {
		ftp_layer *y = &m->layers[l];
		free_base(m, y->ln1.w); free(y->ln1.g); free_base(m, y->ln2.w); free(y->ln2.g);
		free_base(m, y->qn.w); free(y->qn.g); free_base(m, y->kn.w); free(y->kn.g);
		free_base(m, y->ln3.w); free(y->ln3.g); free_base(m, y->ln4.w); free(y->ln4.g);
		for (int j = 0; j < L_NLIN; j++) {
			if (ftp_fused_lead(&m->c, j) == j) {   /* members share their lead's */
				free_base(m, y->lin[j].w);
				free(y->lin[j].g);
			}
			lora_release(&m->c, j, &y->lora[j]);
		}
		for (int j = 0; j < 3; j++) {
			free_base(m, y->bias[j].w);
			free(y->bias[j].g);
		}
	}
	ftp_dora_free(m);
	free(m->layers);
	free(m->norm_eff);
	json_decref(m->config_json);
	free(m->model_dir);
	free(m);
}

const ft_config *ft_model_config(const ft_model *m) { return &m->c; }
size_t ft_model_nparams(const ft_model *m) { return m->nparams; }

ft_param *ft_model_param(ft_model *m, size_t i)
{
	return i < m->nparams ? &m->params[i] : NULL;
}

ft_param *ft_model_find_param(ft_model *m, const char *name)
{
	for (size_t i = 0; i < m->nparams; i++)
		if (!strcmp(m->params[i].name, name))
			return &m->params[i];
	return NULL;
}

/* Every base tensor of m, in one order for two models of one shape. */
static size_t base_tensors(ft_model *m, ftp_wg **out)
{
	size_t n = 0;
	out[n++] = &m->wte;
	if (!m->c.tie_word_embeddings) out[n++] = &m->lm_head;
	out[n++] = &m->norm;
	for (int l = 0; l < m->c.num_hidden_layers; l++) {
		ftp_layer *y = &m->layers[l];
		ftp_wg *t[] = { &y->ln1, &y->ln2, &y->qn, &y->kn, &y->ln3, &y->ln4, &y->bias[0], &y->bias[1],
				&y->bias[2] };
		for (size_t k = 0; k < sizeof t / sizeof *t; k++) out[n++] = t[k];
		for (int j = 0; j < L_NLIN; j++) out[n++] = &y->lin[j];
	}
	return n;
}

int ft_model_share_base(ft_model *dst, const ft_model *src)
{
	const ft_config *a = &dst->c, *b = &src->c;
	if (a->arch != b->arch || a->vocab_size != b->vocab_size || a->hidden_size != b->hidden_size ||
	    a->intermediate_size != b->intermediate_size || a->num_hidden_layers != b->num_hidden_layers ||
	    a->num_attention_heads != b->num_attention_heads ||
	    a->num_key_value_heads != b->num_key_value_heads || a->head_dim != b->head_dim ||
	    a->tie_word_embeddings != b->tie_word_embeddings || a->attention_bias != b->attention_bias)
		return ft_fail("the two models differ in shape");
	if (a->fused || dst->qw || src->qw || dst->oft || src->oft)
		return ft_fail("fused, quantized or OFT-folded weights are not shared");
	if (src->o.pissa_init || dst->o.pissa_init)
		return ft_fail("PiSSA changed a base");
	if (dst->o.type != FT_FT_LORA || src->o.type != FT_FT_LORA)
		return ft_fail("only LoRA models keep their bases frozen");
	size_t cap = 16 + (size_t)a->num_hidden_layers * (9 + L_NLIN);
	ftp_wg **td = ft_xmalloc(cap * sizeof *td), **ts = ft_xmalloc(cap * sizeof *ts);
	size_t n = base_tensors(dst, td);
	base_tensors((ft_model *)src, ts);
	int ok = 1;
	for (size_t k = 0; k < n && ok; k++)
		ok = !td[k]->g && !ts[k]->g && !td[k]->w == !ts[k]->w;
	if (ok) {
		for (size_t k = 0; k < n; k++) {
			free(td[k]->w);
			td[k]->w = ts[k]->w;
		}
		if (a->tie_word_embeddings) dst->lm_head.w = dst->wte.w;
		dst->base_borrowed = 1;
		free(dst->wmean);   /* derived from the old head: recomputed */
		dst->wmean = NULL;
	}
	free(td);
	free(ts);
	if (!ok) return ft_fail("a base tensor trains or is missing in one of the models");
	return ftp_model_build_params(dst);
}

long ft_model_param_index(ft_model *m, const ft_param *p)
{
	for (size_t i = 0; i < m->nparams; i++)
		if (&m->params[i] == p)
			return (long)i;
	return -1;
}

void ft_model_set_dropout_position(ft_model *m, uint64_t calls)
{
	m->dropout_calls = calls;
}

void ft_model_set_grads_ready(ft_model *m, ft_grads_ready_fn fn, void *ctx)
{
	m->grads_ready = fn;
	m->grads_ready_ctx = ctx;
}

uint64_t ft_model_dropout_position(const ft_model *m)
{
	return m->dropout_calls;
}

size_t ft_params_elements(ft_param *const *ps, size_t n)
{
	size_t total = 0;
	for (size_t k = 0; k < n; k++) total += ps[k]->n;
	return total;
}

void ft_params_slice(ft_param *const *ps, size_t n, size_t total, int t, int nt,
		     ft_param_part_fn fn, void *ctx)
{
	size_t lo = total * (size_t)t / (size_t)nt, hi = total * (size_t)(t + 1) / (size_t)nt;
	size_t base = 0;
	for (size_t k = 0; k < n && base < hi; k++) {
		size_t end = base + ps[k]->n;
		if (end > lo) {
			size_t i0 = lo > base ? lo - base : 0, i1 = (hi < end ? hi : end) - base;
			fn(ps[k], k, i0, i1, ctx);
		}
		base = end;
	}
}

static void zero_part(ft_param *p, size_t k, size_t i0, size_t i1, void *ctx)
{
	(void)k; (void)ctx;
	memset(p->g + i0, 0, (i1 - i0) * sizeof(float));
}

void ft_model_zero_grad(ft_model *m)
{
	size_t total = ft_params_elements(m->grads, m->ngrads);
#pragma omp parallel if (total > FT_PARAMS_SPLIT)
	ft_params_slice(m->grads, m->ngrads, total, omp_get_thread_num(), omp_get_num_threads(),
			zero_part, NULL);
}
