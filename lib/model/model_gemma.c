/* model_gemma.c - Gemma 2 and Gemma 3 (text) decoder layers on the CPU,
 * as transformers' Gemma2DecoderLayer / Gemma3DecoderLayer:
 *
 *   h = x + post_attention_layernorm(attn(input_layernorm(x)))
 *   y = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
 *
 * every RMSNorm scaling by (1 + weight), the MLP GeGLU with
 * gelu_pytorch_tanh, attention scores scaled by query_pre_attn_scalar^-0.5
 * and (Gemma 2) soft-capped, sliding-window layers with their own RoPE
 * (Gemma 3: rope_local_base_freq), q_norm/k_norm (Gemma 3).  The same
 * linear/LoRA helpers and layer functions as model_fwd.c, in the order of
 * the forward pass; the backward mirrors it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "util/json.h"
#include "model/model_internal.h"

int ftp_layer_sliding(const ft_config *c, int l)
{
	return c->gemma && l < 256 && (c->sliding_layers[l / 64] >> (l % 64) & 1);
}

/* The sliding layers' RoPE: the default type with their own base (one
 * definition for training, decoding and the CUDA view). */
void ftp_rope_local_params(const ft_config *c, ft_rope_params *p)
{
	ft_rope_params lp = { "default", c->rope_local_theta, 1, 1, 4, c->max_position_embeddings,
			      c->max_position_embeddings, 0, 0, 0, 0, NULL, NULL };
	*p = lp;
}

/* Gemma's (1 + weight) as the weight the layer functions take: written to
 * m->norm_eff, valid until the next call. */
const float *ftp_norm_w(ft_model *m, const float *w, int n)
{
	if (!m->c.gemma) return w;
	for (int i = 0; i < n; i++) m->norm_eff[i] = 1.0f + w[i];
	return m->norm_eff;
}

/* layer_types, else Gemma 2's alternation or Gemma 3's sliding_window_pattern */
static int gemma_layers(const json_t *j, ft_config *c, const char *path)
{
	const json_t *lt = json_object_get(j, "layer_types");
	int L = c->num_hidden_layers, pattern = (int)ft_json_int(j, "sliding_window_pattern", 6);
	if (L > 256) return ft_fail("%s: %d layers: ft's Gemma supports 256", path, L);
	if (lt && (!json_is_array(lt) || (int)json_array_size(lt) != L))
		return ft_fail("%s: layer_types must list the %d layers", path, L);
	memset(c->sliding_layers, 0, sizeof c->sliding_layers);
	for (int l = 0; l < L; l++) {
		int sl;
		if (lt) {
			const char *s = json_string_value(json_array_get(lt, l));
			if (!s || (strcmp(s, "sliding_attention") && strcmp(s, "full_attention")))
				return ft_fail("%s: layer_types[%d] is not sliding_attention or "
					       "full_attention", path, l);
			sl = !strcmp(s, "sliding_attention");
		} else {
			sl = c->gemma == 2 ? l % 2 == 0 : pattern > 0 && (l + 1) % pattern != 0;
		}
		if (sl) c->sliding_layers[l / 64] |= 1ULL << (l % 64);
	}
	return 0;
}

/* Gemma 3's rope_parameters per layer type (transformers 5), or
 * rope_local_base_freq (4.x); sliding layers use the default RoPE. */
static int gemma_rope(const json_t *j, ft_config *c, const char *path)
{
	const json_t *rp = json_object_get(j, "rope_parameters");
	const json_t *full = json_is_object(rp) ? json_object_get(rp, "full_attention") : NULL;
	c->rope_local_theta = c->rope_theta;
	if (json_is_object(full)) {
		json_t *t = json_deep_copy(j);
		json_object_set(t, "rope_parameters", (json_t *)full);
		int rc = ftp_config_rope(t, c, path);
		json_decref(t);
		if (rc < 0) return -1;
		const json_t *sl = json_object_get(rp, "sliding_attention");
		if (json_is_object(sl)) {
			const char *ty = ft_json_str(sl, "rope_type", "default");
			if (strcmp(ty, "default"))
				return ft_fail("%s: sliding_attention rope type '%s' is not supported "
					       "(default)", path, ty);
			c->rope_local_theta = ft_json_num(sl, "rope_theta", 10000.0);
		}
	} else if (c->gemma == 3) {
		c->rope_local_theta = ft_json_num(j, "rope_local_base_freq", 10000.0);
	}
	return 0;
}

static double num_or_zero(const json_t *j, const char *k, double dflt)
{
	const json_t *v = json_object_get(j, k);
	return !v ? dflt : json_is_number(v) ? json_number_value(v) : 0;   /* null: off */
}

int ftp_gemma_config(const json_t *j, ft_config *c, const char *path)
{
	c->gemma = c->arch == FT_ARCH_GEMMA2 ? 2 : 3;
	c->qk_norm = c->gemma == 3;
	const char *act = ft_json_str(j, "hidden_activation", ft_json_str(j, "hidden_act", "gelu_pytorch_tanh"));
	if (strcmp(act, "gelu_pytorch_tanh"))
		return ft_fail("%s: Gemma hidden_activation %s is not supported (gelu_pytorch_tanh)", path, act);
	c->query_pre_attn_scalar = ft_json_num(j, "query_pre_attn_scalar", 256);
	c->attn_softcap = num_or_zero(j, "attn_logit_softcapping", c->gemma == 2 ? 50.0 : 0);
	c->final_softcap = num_or_zero(j, "final_logit_softcapping", c->gemma == 2 ? 30.0 : 0);
	const json_t *sw = json_object_get(j, "sliding_window");
	c->sliding_window = json_is_integer(sw) ? (int)json_integer_value(sw) : 4096;
	if (!(c->query_pre_attn_scalar > 0) || c->attn_softcap < 0 || c->final_softcap < 0 ||
	    c->sliding_window <= 0)
		return ft_fail("%s: query_pre_attn_scalar, soft-capping or sliding_window out of range", path);
	if (ft_json_bool(j, "use_bidirectional_attention", 0))
		return ft_fail("%s: Gemma use_bidirectional_attention true is not supported", path);
	if (gemma_layers(j, c, path) < 0 || gemma_rope(j, c, path) < 0) return -1;
	return 0;
}

static ft_attn_shape shape_of(const ft_model *m, int l, const ft_batch *b)
{
	const ft_config *c = &m->c;
	ft_attn_shape s = { b->B, b->T, c->num_attention_heads, c->num_key_value_heads, c->head_dim,
			    ftp_layer_sliding(c, l) ? c->sliding_window : 0, b->segment_ids,
			    (float)(1.0 / sqrt(c->query_pre_attn_scalar)), (float)c->attn_softcap,
			    b->lengths };
	return s;
}

static void add_into(float *dst, const float *a, const float *b, size_t n)
{
	for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

void ftp_gemma_layer_forward(ft_model *m, int l, ftp_acts *a, const float *x_in, float *x_out,
			     const ft_batch *b)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, hd = c->head_dim;
	float eps = (float)c->rms_norm_eps;
	ftp_layer *y = &m->layers[l];
	ft_attn_shape s = shape_of(m, l, b);
	const float *cs = ftp_layer_sliding(c, l) ? m->cos_l : m->cos_t;
	const float *sn = ftp_layer_sliding(c, l) ? m->sin_l : m->sin_t;
	ft_rmsnorm_forward(a->ln1, a->rstd1, x_in, ftp_norm_w(m, y->ln1.w, D), N, D, eps);
	float *qo = c->qk_norm ? a->qr : a->q, *ko = c->qk_norm ? a->kr : a->k;
	ftp_lin_forward_many(m, l, (const int[]){ L_Q, L_K, L_V }, (float *const[]){ qo, ko, a->v },
			     3, a, a->ln1, N);
	if (c->qk_norm)
		ftp_qk_norm_forward(m, y, a->q, a->k, a->qr, a->kr, a->rstdq, a->rstdk, N);
	ft_rope_forward(a->q, cs, sn, N, c->num_attention_heads, hd, ftp_rotary_dim(c));
	ft_rope_forward(a->k, cs, sn, N, c->num_key_value_heads, hd, ftp_rotary_dim(c));
	ft_attention_forward(a->att, a->lse, a->q, a->k, a->v, &s);
	ftp_lin_forward_many(m, l, (const int[]){ L_O }, (float *const[]){ a->ao }, 1, a, a->att, N);
	ft_rmsnorm_forward(m->tmp, a->rstd_ao, a->ao, ftp_norm_w(m, y->ln2.w, D), N, D, eps);
	add_into(a->xmid, x_in, m->tmp, (size_t)N * D);
	ft_rmsnorm_forward(a->ln2, a->rstd2, a->xmid, ftp_norm_w(m, y->ln3.w, D), N, D, eps);
	ftp_lin_forward_many(m, l, (const int[]){ L_GATE, L_UP }, (float *const[]){ a->gate, a->up },
			     2, a, a->ln2, N);
	ft_geglu_forward(m->hbuf, a->gate, a->up, (size_t)N * c->intermediate_size);
	ftp_lin_forward_many(m, l, (const int[]){ L_DOWN }, (float *const[]){ a->mo }, 1, a, m->hbuf, N);
	ft_rmsnorm_forward(m->tmp, a->rstd_mo, a->mo, ftp_norm_w(m, y->ln4.w, D), N, D, eps);
	add_into(x_out, a->xmid, m->tmp, (size_t)N * D);
}

/* m->d_a: dL/dx_out in, dL/dx_in out (when need_dx).  m->d_b holds the
 * gradient of the attention and MLP outputs before their post norms. */
void ftp_gemma_layer_backward(ft_model *m, int l, ftp_acts *a, const float *x_in,
			      const ft_batch *b, int need_dx)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, hd = c->head_dim;
	size_t nD = (size_t)N * D, nF = (size_t)N * c->intermediate_size;
	size_t nq = (size_t)N * c->num_attention_heads * hd;
	ftp_layer *y = &m->layers[l];
	ft_attn_shape s = shape_of(m, l, b);
	const float *cs = ftp_layer_sliding(c, l) ? m->cos_l : m->cos_t;
	const float *sn = ftp_layer_sliding(c, l) ? m->sin_l : m->sin_t;
	memset(m->d_b, 0, nD * sizeof(float));
	ft_rmsnorm_backward(m->d_b, y->ln4.g, m->d_a, a->mo, ftp_norm_w(m, y->ln4.w, D), a->rstd_mo, N, D);
	ft_geglu_forward(m->hbuf, a->gate, a->up, nF);
	memset(m->dh, 0, nF * sizeof(float));
	ftp_lin_backward(m, l, L_DOWN, a, m->dh, m->d_b, m->hbuf, N);
	ft_geglu_backward(m->dgate, m->dup, m->dh, a->gate, a->up, nF);
	memset(m->d_ln, 0, nD * sizeof(float));
	ftp_lin_backward(m, l, L_GATE, a, m->d_ln, m->dgate, a->ln2, N);
	ftp_lin_backward(m, l, L_UP, a, m->d_ln, m->dup, a->ln2, N);
	ft_rmsnorm_backward(m->d_a, y->ln3.g, m->d_ln, a->xmid, ftp_norm_w(m, y->ln3.w, D), a->rstd2, N, D);
	memset(m->d_b, 0, nD * sizeof(float));
	ft_rmsnorm_backward(m->d_b, y->ln2.g, m->d_a, a->ao, ftp_norm_w(m, y->ln2.w, D), a->rstd_ao, N, D);
	memset(m->d_att, 0, nq * sizeof(float));
	ftp_lin_backward(m, l, L_O, a, m->d_att, m->d_b, a->att, N);
	ft_attention_backward(m->dq, m->dk, m->dv, m->d_att, a->q, a->k, a->v, a->att, a->lse, &s);
	ft_rope_backward(m->dq, cs, sn, N, c->num_attention_heads, hd, ftp_rotary_dim(c));
	ft_rope_backward(m->dk, cs, sn, N, c->num_key_value_heads, hd, ftp_rotary_dim(c));
	float *dq = m->dq, *dk = m->dk;
	if (c->qk_norm) {   /* as model_fwd.c: into d_att and tmp */
		ftp_qk_norm_backward(m, y, m->d_att, m->tmp, m->dq, m->dk, a, N);
		dq = m->d_att;
		dk = m->tmp;
	}
	float *dln = need_dx || y->ln1.g ? m->d_ln : NULL;
	if (dln) memset(dln, 0, nD * sizeof(float));
	ftp_lin_backward(m, l, L_Q, a, dln, dq, a->ln1, N);
	ftp_lin_backward(m, l, L_K, a, dln, dk, a->ln1, N);
	ftp_lin_backward(m, l, L_V, a, dln, m->dv, a->ln1, N);
	if (dln)
		ft_rmsnorm_backward(m->d_a, y->ln1.g, dln, x_in, ftp_norm_w(m, y->ln1.w, D), a->rstd1, N, D);
}
