/* model_fwd.c - whole-model forward and backward on the CPU.
 *
 * The residual stream of every layer boundary is kept (xs); each layer
 * keeps its activations unless gradient checkpointing is on, in which case
 * one set is recomputed per layer during the backward pass (the same
 * deterministic code, so the gradients are identical).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"

#define HEAD_BUDGET (1 << 24)   /* floats of LM-head logits at once (64 MiB) */

static int max_in(const ft_config *c)
{
	int mx = c->hidden_size, a = c->num_attention_heads * c->head_dim;
	if (a > mx) mx = a;
	if (c->intermediate_size > mx) mx = c->intermediate_size;
	return mx;
}

void ftp_model_free_buffers(ft_model *m)
{
	for (int i = 0; m->acts && i < m->n_acts; i++)
		free(m->acts[i].block);
	free(m->acts);
	m->acts = NULL;
	float **f[] = { &m->xs, &m->cos_t, &m->sin_t, &m->inv_freq, &m->cos_l, &m->sin_l,
			&m->inv_freq_l, &m->lnf, &m->rstdf,
			&m->d_a, &m->d_b, &m->d_ln, &m->d_att, &m->dq, &m->dk, &m->dv,
			&m->hbuf, &m->dh, &m->dgate, &m->dup, &m->tmp, &m->drop, &m->ddrop,
			&m->lhs, &m->head_x, &m->head_dx, &m->head_scratch };
	for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
		free(*f[i]);
		*f[i] = NULL;
	}
	free(m->dora_dy);
	m->dora_dy = NULL;
	m->dora_dy_n = 0;
	free(m->pos); free(m->targets); free(m->rows);
	free(m->keep); free(m->keep_sum); free(m->wmean);   /* model_pref.c */
	m->keep = NULL; m->keep_sum = NULL; m->wmean = NULL;
	m->keep_cap = 0; m->keep_n = 0;
	m->pos = m->targets = m->rows = NULL;
	m->cap_N = 0;
}

static float *fa(size_t n) { return ft_xmalloc((n ? n : 1) * sizeof(float)); }

static void acts_alloc(ft_model *m, ftp_acts *a, size_t N)
{
	const ft_config *c = &m->c;
	size_t D = c->hidden_size, qd = (size_t)c->num_attention_heads * c->head_dim;
	size_t kd = (size_t)c->num_key_value_heads * c->head_dim, F = c->intermediate_size;
	size_t r = m->o.type == FT_FT_LORA ? (size_t)m->o.lora_rank : 0;
	size_t qn = c->qk_norm ? 1 : 0;   /* Qwen3: raw q, k and their rstd */
	size_t gm = c->gemma ? 1 : 0;     /* Gemma: outputs before the post norms */
	size_t sz[] = { N * D, N, N * qd, N * kd, N * kd, N * c->num_attention_heads,
			N * qd, N * D, N * D, N, N * F, N * F,
			qn * N * qd, qn * N * kd, qn * N * c->num_attention_heads,
			qn * N * c->num_key_value_heads, gm * N * D, gm * N, gm * N * D, gm * N };
	float **dst[] = { &a->ln1, &a->rstd1, &a->q, &a->k, &a->v, &a->lse, &a->att,
			  &a->xmid, &a->ln2, &a->rstd2, &a->gate, &a->up,
			  &a->qr, &a->kr, &a->rstdq, &a->rstdk, &a->ao, &a->rstd_ao, &a->mo, &a->rstd_mo };
	size_t tot = N * r * L_NLIN;
	for (size_t i = 0; i < sizeof sz / sizeof *sz; i++)
		tot += sz[i];
	a->block = fa(tot);
	float *p = a->block;
	for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
		*dst[i] = p;
		p += sz[i];
	}
	for (int j = 0; j < L_NLIN; j++) {
		a->lh[j] = p;
		p += N * r;
	}
}

/* Buffers for N tokens (reallocated only when N grows or LoRA rank changes). */
int ftp_model_prepare(ft_model *m, int N)
{
	if (N <= m->cap_N && m->buf_rank == m->o.lora_rank)
		return 0;
	ftp_model_free_buffers(m);
	m->buf_rank = m->o.lora_rank;
	const ft_config *c = &m->c;
	size_t D = c->hidden_size, qd = (size_t)c->num_attention_heads * c->head_dim;
	size_t kd = (size_t)c->num_key_value_heads * c->head_dim, F = c->intermediate_size;
	size_t L = c->num_hidden_layers, V = c->vocab_size, n = N, mi = max_in(c);
	int na = m->o.gradient_checkpointing ? 1 : (int)L;
	m->acts = ft_xcalloc(na, sizeof *m->acts);
	m->n_acts = na;
	for (int i = 0; i < na; i++)
		acts_alloc(m, &m->acts[i], n);
	m->xs = fa((L + 1) * n * D);
	m->cos_t = fa(n * c->head_dim / 2);
	m->sin_t = fa(n * c->head_dim / 2);
	m->inv_freq = fa(c->head_dim / 2);
	if (c->gemma) {   /* the sliding layers' RoPE */
		m->cos_l = fa(n * c->head_dim / 2);
		m->sin_l = fa(n * c->head_dim / 2);
		m->inv_freq_l = fa(c->head_dim / 2);
	}
	m->lnf = fa(n * D);
	m->rstdf = fa(n);
	m->d_a = fa(n * D); m->d_b = fa(n * D); m->d_ln = fa(n * D);
	m->d_att = fa(n * qd); m->dq = fa(n * qd); m->dk = fa(n * kd); m->dv = fa(n * kd);
	m->hbuf = fa(n * F); m->dh = fa(n * F); m->dgate = fa(n * F); m->dup = fa(n * F);
	m->tmp = fa(n * (mi > D ? mi : D));
	/* dropped-out LoRA inputs and their gradient; OFT's rotated input and its gradient */
	if (m->lora_dropout_on || m->o.type == FT_FT_OFT) {
		m->drop = fa(n * mi);
		m->ddrop = fa(n * mi);
	}
	m->lhs = fa(n * (size_t)(m->o.lora_rank > 0 ? m->o.lora_rank : 1));
	m->head_x = fa(n * D);
	m->head_dx = fa(n * D);
	size_t chunk = HEAD_BUDGET / V;
	if (chunk < 1) chunk = 1;
	if (chunk > n) chunk = n;
	m->head_chunk = (int)chunk;
	m->head_scratch = fa(chunk * V);
	m->pos = ft_xmalloc(n * sizeof(int32_t));
	m->targets = ft_xmalloc(n * sizeof(int32_t));
	m->rows = ft_xmalloc(n * sizeof(int32_t));
	m->cap_N = N;
	return 0;
}

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The dropout mask of module j in layer l for the current call. */
static uint64_t drop_seed(const ft_model *m, int l, int j)
{
	j = ftp_fused_lead(&m->c, j);   /* Phi-3: one dropout on a fused module's input */
	return mix64(m->o.seed ^ mix64(m->dropout_calls * 0x9e3779b97f4a7c15ULL +
				       (uint64_t)(l * L_NLIN + j + 1)));
}

/* The input the LoRA branch sees: x, or x after dropout (in m->drop). */
static const float *lora_input(ft_model *m, int l, int j, const float *x, size_t n)
{
	if (!m->training || !m->lora_dropout_on)
		return x;
	ft_dropout_apply(m->drop, x, n, (float)m->o.lora_dropout, drop_seed(m, l, j));
	return m->drop;
}

/* Linear modules js[0..n) of layer l on the same input x (q, k, v; gate,
 * up): the base products together (ft_linear_forward_many runs small ones
 * side by side), then each module's LoRA branch. */
static void lin_fwd_many(ft_model *m, int l, const int *js, float *const *ys, int n, ftp_acts *a,
			 const float *x, int N)
{
	ftp_layer *y_ = &m->layers[l];
	ft_linear_out o[3] = { { 0 } };
	int in = 0, out;
	if (m->o.type == FT_FT_OFT) {   /* each module on its own rotated input */
		for (int i = 0; n > 1 && i < n; i++)
			lin_fwd_many(m, l, &js[i], &ys[i], 1, a, x, N);
		if (n > 1)
			return;
		x = ftp_oft_input(m, l, js[0], x, N);
	}
	for (int i = 0; i < n; i++) {
		ftp_lin_dims(&m->c, js[i], &in, &out);
		o[i] = (ft_linear_out){ ys[i], y_->lin[js[i]].w, js[i] <= L_V ? y_->bias[js[i]].w : NULL, out };
	}
	if (m->qw)
		for (int i = 0; i < n; i++)
			ftp_qlin_forward(m, l, js[i], ys[i], x, N, !m->training);
	else if (m->fp8)   /* Float8Linear modules and the ones left as they were */
		for (int i = 0; i < n; i++)
			if (ftp_fp8_of(m, l, js[i]))
				ftp_fp8_forward(m, l, js[i], ys[i], x, N);
			else
				ft_linear_forward(o[i].y, x, o[i].W, o[i].b, N, in, o[i].out);
	else
		ft_linear_forward_many(o, n, x, N, in);
	for (int i = 0; i < n; i++) {
		ftp_lora *lo = &y_->lora[js[i]];
		if (!lo->on)
			continue;
		const float *xd = lora_input(m, l, js[i], x, (size_t)N * in);
		if (xd != x && ftp_dora_of(m, l, js[i])) {   /* PEFT's dropped-input DoRA */
			ftp_dora_forward_dropped(m, l, js[i], ys[i], a->lh[js[i]], xd, N);
			continue;
		}
		ft_lora_forward(ys[i], a->lh[js[i]], xd, lo->A.w, lo->B.w, N, in, o[i].out, lo->r,
				lo->scale);
		if (ftp_dora_of(m, l, js[i]))
			ftp_dora_forward(m, l, js[i], ys[i], N);
	}
}

void ftp_lin_forward_many(ft_model *m, int l, const int *js, float *const *ys, int n,
			  ftp_acts *a, const float *x, int N)
{
	lin_fwd_many(m, l, js, ys, n, a, x, N);
}

static void lin_fwd(ft_model *m, int l, int j, ftp_acts *a, float *y,
		    const float *x, int N)
{
	lin_fwd_many(m, l, &j, &y, 1, a, x, N);
}

/* dx += dy d(y)/dx (dx may be NULL), parameter gradients accumulated. */
static void lin_bwd(ft_model *m, int l, int j, ftp_acts *a, float *dx,
		    const float *dy, const float *x, int N)
{
	ftp_layer *y_ = &m->layers[l];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	int dora = y_->lora[j].on && ftp_dora_of(m, l, j);
	int dropped = m->training && m->lora_dropout_on;
	if (dora && !dropped)   /* dropped: the base's dy is unscaled (lora_dora.c) */
		dy = ftp_dora_backward(m, l, j, dy, N);
	if (ftp_oft_of(m, l, j)) {   /* the frozen base's input gradient, then OFT's */
		memset(m->ddrop, 0, (size_t)N * in * sizeof(float));
		if (m->qw)
			ftp_qlin_backward(m, l, j, m->ddrop, dy, N);
		else
			ft_linear_backward(m->ddrop, NULL, NULL, dy, x, y_->lin[j].w, N, in, out);
		ftp_oft_backward(m, l, j, x, m->ddrop, dx, N);
		return;
	}
	if (m->qw)   /* frozen (LoRA only): the input gradient alone */
		ftp_qlin_backward(m, l, j, dx, dy, N);
	else if (ftp_fp8_of(m, l, j))
		ftp_fp8_backward(m, l, j, dx, dy, x, N);
	else
		ft_linear_backward(dx, y_->lin[j].g, j <= L_V ? y_->bias[j].g : NULL, dy, x,
				   y_->lin[j].w, N, in, out);
	ftp_lora *lo = &y_->lora[j];
	if (!lo->on)
		return;
	size_t n = (size_t)N * in;
	const float *xd = lora_input(m, l, j, x, n);
	float *dxd = xd == x ? dx : dx ? m->ddrop : NULL;
	if (dxd && xd != x)
		memset(m->ddrop, 0, n * sizeof(float));
	if (dora && dropped)
		ftp_dora_backward_dropped(m, l, j, dxd, dy, xd, a->lh[j], N);
	else
		ft_lora_backward(dxd, lo->A.g, lo->B.g, m->lhs, dy, xd, a->lh[j], lo->A.w,
				 lo->B.w, N, in, out, lo->r, lo->scale);
	if (xd == x || !dx)
		return;
	ft_dropout_apply(m->ddrop, m->ddrop, n, (float)m->o.lora_dropout, drop_seed(m, l, j));
	for (size_t i = 0; i < n; i++)
		dx[i] += m->ddrop[i];
}

void ftp_lin_backward(ft_model *m, int l, int j, ftp_acts *a, float *dx, const float *dy,
		      const float *x, int N)
{
	lin_bwd(m, l, j, a, dx, dy, x, N);
}

static ft_attn_shape attn_shape(const ft_model *m, const ft_batch *b)
{
	ft_attn_shape s = { b->B, b->T, m->c.num_attention_heads, m->c.num_key_value_heads,
			    m->c.head_dim, m->c.sliding_window, b->segment_ids, 0, 0, b->lengths };
	return s;
}

static void add_into(float *dst, const float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= 4096)
	for (size_t i = 0; i < n; i++)
		dst[i] = a[i] + b[i];
}

static void layer_forward(ft_model *m, int l, ftp_acts *a, const float *x_in,
			  float *x_out, const ft_batch *b)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, hd = c->head_dim;
	ftp_layer *y = &m->layers[l];
	ft_attn_shape s = attn_shape(m, b);
	if (c->gemma) {
		ftp_gemma_layer_forward(m, l, a, x_in, x_out, b);
		return;
	}
	ft_rmsnorm_forward(a->ln1, a->rstd1, x_in, y->ln1.w, N, D, (float)c->rms_norm_eps);
	float *qo = c->qk_norm ? a->qr : a->q, *ko = c->qk_norm ? a->kr : a->k;
	lin_fwd_many(m, l, (const int[]){ L_Q, L_K, L_V }, (float *const[]){ qo, ko, a->v }, 3,
		     a, a->ln1, N);
	if (c->qk_norm)
		ftp_qk_norm_forward(m, y, a->q, a->k, a->qr, a->kr, a->rstdq, a->rstdk, N);
	ft_rope_forward(a->q, m->cos_t, m->sin_t, N, c->num_attention_heads, hd, ftp_rotary_dim(c));
	ft_rope_forward(a->k, m->cos_t, m->sin_t, N, c->num_key_value_heads, hd, ftp_rotary_dim(c));
	ft_attention_forward(a->att, a->lse, a->q, a->k, a->v, &s);
	lin_fwd(m, l, L_O, a, m->tmp, a->att, N);
	add_into(a->xmid, x_in, m->tmp, (size_t)N * D);
	ft_rmsnorm_forward(a->ln2, a->rstd2, a->xmid, y->ln2.w, N, D, (float)c->rms_norm_eps);
	lin_fwd_many(m, l, (const int[]){ L_GATE, L_UP }, (float *const[]){ a->gate, a->up }, 2,
		     a, a->ln2, N);
	ft_swiglu_forward(m->hbuf, a->gate, a->up, (size_t)N * c->intermediate_size);
	lin_fwd(m, l, L_DOWN, a, m->tmp, m->hbuf, N);
	add_into(x_out, a->xmid, m->tmp, (size_t)N * D);
}

/* m->d_a holds dL/dx_out on entry and dL/dx_in on return (unless
 * need_dx is 0: then the input gradient is not computed). */
static void layer_backward(ft_model *m, int l, ftp_acts *a, const float *x_in,
			   const ft_batch *b, int need_dx)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, hd = c->head_dim;
	size_t nF = (size_t)N * c->intermediate_size;
	size_t nq = (size_t)N * c->num_attention_heads * hd;
	ftp_layer *y = &m->layers[l];
	ft_attn_shape s = attn_shape(m, b);
	if (c->gemma) {
		ftp_gemma_layer_backward(m, l, a, x_in, b, need_dx);
		return;
	}
	ft_swiglu_forward(m->hbuf, a->gate, a->up, nF);
	memset(m->dh, 0, nF * sizeof(float));
	lin_bwd(m, l, L_DOWN, a, m->dh, m->d_a, m->hbuf, N);
	ft_swiglu_backward(m->dgate, m->dup, m->dh, a->gate, a->up, nF);
	memset(m->d_ln, 0, (size_t)N * D * sizeof(float));
	lin_bwd(m, l, L_GATE, a, m->d_ln, m->dgate, a->ln2, N);
	lin_bwd(m, l, L_UP, a, m->d_ln, m->dup, a->ln2, N);
	ft_rmsnorm_backward(m->d_a, y->ln2.g, m->d_ln, a->xmid, y->ln2.w, a->rstd2, N, D);
	memset(m->d_att, 0, nq * sizeof(float));
	lin_bwd(m, l, L_O, a, m->d_att, m->d_a, a->att, N);
	ft_attention_backward(m->dq, m->dk, m->dv, m->d_att, a->q, a->k, a->v, a->att,
			      a->lse, &s);
	ft_rope_backward(m->dq, m->cos_t, m->sin_t, N, c->num_attention_heads, hd, ftp_rotary_dim(c));
	ft_rope_backward(m->dk, m->cos_t, m->sin_t, N, c->num_key_value_heads, hd, ftp_rotary_dim(c));
	/* Qwen3: through q_norm/k_norm into d_att (free once attention's
	 * backward has read it) and tmp (unused in the backward pass) */
	float *dq = m->dq, *dk = m->dk;
	if (c->qk_norm) {
		ftp_qk_norm_backward(m, y, m->d_att, m->tmp, m->dq, m->dk, a, N);
		dq = m->d_att;
		dk = m->tmp;
	}
	float *dln = need_dx || y->ln1.g ? m->d_ln : NULL;
	if (dln)
		memset(dln, 0, (size_t)N * D * sizeof(float));
	lin_bwd(m, l, L_Q, a, dln, dq, a->ln1, N);
	lin_bwd(m, l, L_K, a, dln, dk, a->ln1, N);
	lin_bwd(m, l, L_V, a, dln, m->dv, a->ln1, N);
	if (dln)
		ft_rmsnorm_backward(m->d_a, y->ln1.g, dln, x_in, y->ln1.w, a->rstd1, N, D);
}

static int layer_has_grad(const ft_model *m, int l)
{
	const ftp_layer *y = &m->layers[l];
	if (y->ln1.g || y->ln2.g || y->qn.g || y->kn.g || y->ln3.g || y->ln4.g)
		return 1;
	for (int j = 0; j < L_NLIN; j++)
		if (y->lin[j].g || y->lora[j].on || ftp_oft_of(m, l, j) || (j <= L_V && y->bias[j].g))
			return 1;
	return 0;
}

static int check_batch(const ft_model *m, const ft_batch *b)
{
	if (b->B <= 0 || b->T <= 0)
		return ft_fail("batch %lld: empty shape %dx%d", (long long)b->index, b->B, b->T);
	size_t N = (size_t)b->B * b->T;
	int V = m->c.vocab_size;
	for (size_t i = 0; i < N; i++) {
		if (b->input_ids[i] < 0 || b->input_ids[i] >= V)
			return ft_fail("batch %lld: token id %d at %zu is outside the "
				       "vocabulary (%d)", (long long)b->index, b->input_ids[i], i, V);
		if (b->labels && b->labels[i] != FT_IGNORE_INDEX && (b->labels[i] < 0 || b->labels[i] >= V))
			return ft_fail("batch %lld: label %d at %zu is outside the "
				       "vocabulary (%d)", (long long)b->index, b->labels[i], i, V);
		if (b->position_ids && b->position_ids[i] < 0)
			return ft_fail("batch %lld: negative position id at %zu",
				       (long long)b->index, i);
	}
	return 0;
}

void ft_model_embed(ft_model *m, const int32_t *ids, int B, int T, int noised, float *x)
{
	size_t N = (size_t)B * T, D = m->c.hidden_size;
	ft_embedding_forward(x, ids, m->wte.w, (int)N, (int)D);
	if (m->c.gemma)   /* Gemma: embeddings times sqrt(hidden), in float32 as the weights */
		for (size_t i = 0; i < N * D; i++) x[i] *= (float)sqrt((double)D);
	/* NEFTune noises the embedding module's output: Gemma's is scaled
	 * (transformers' Gemma{2,3}TextScaledWordEmbedding, docs/EXTRAS.md) */
	if (noised && m->o.neftune_noise_alpha > 0)
		ftp_neftune_apply(m, x, B, T);
}

/* Embedding, every layer and the final norm; positions, targets, rope. */
int ftp_model_forward_body(ft_model *m, const ft_batch *b)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, L = c->num_hidden_layers;
	if (check_batch(m, b) < 0 || ftp_model_prepare(m, N) < 0)
		return -1;
	int maxpos = 0;
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < b->T; t++) {
			int i = r * b->T + t;
			m->pos[i] = b->position_ids ? b->position_ids[i] : t;
			if (m->pos[i] > maxpos)
				maxpos = m->pos[i];
			m->targets[i] = t + 1 < b->T && b->labels ? b->labels[i + 1] : FT_IGNORE_INDEX;
		}
	ft_rope_params rp;
	ft_rope_params_of(c, &rp);
	int rd = ftp_rotary_dim(c);
	if (ft_rope_inv_freq(m->inv_freq, rd, &rp, maxpos + 1) < 0)
		return -1;
	ft_rope_tables(m->cos_t, m->sin_t, m->pos, N, m->inv_freq, rd);
	ft_rope_scale_tables(m->cos_t, m->sin_t, (size_t)N * (rd / 2), &rp);
	if (c->gemma) {   /* sliding layers: default RoPE, their own base */
		ft_rope_params lp;
		ftp_rope_local_params(c, &lp);
		ft_rope_inv_freq(m->inv_freq_l, rd, &lp, maxpos + 1);
		ft_rope_tables(m->cos_l, m->sin_l, m->pos, N, m->inv_freq_l, rd);
	}
	ft_model_embed(m, b->input_ids, b->B, b->T, m->training, m->xs);
	for (int l = 0; l < L; l++) {
		ftp_acts *a = &m->acts[m->o.gradient_checkpointing ? 0 : l];
		layer_forward(m, l, a, m->xs + (size_t)l * N * D, m->xs + (size_t)(l + 1) * N * D, b);
	}
	ft_rmsnorm_forward(m->lnf, m->rstdf, m->xs + (size_t)L * N * D, ftp_norm_w(m, m->norm.w, D),
			   N, D, (float)c->rms_norm_eps);
	return 0;
}

void ft_model_set_accuracy(ft_model *m, int on)
{
	m->acc_on = on;
	m->acc_sum = 0;
	m->acc_rows = 0;
}

void ft_model_accuracy_take(ft_model *m, double *sum, int64_t *rows)
{
	*sum = m->acc_sum;
	*rows = m->acc_rows;
	m->acc_sum = 0;
	m->acc_rows = 0;
}

/* LLaMA-Factory's ComputeAccuracy on one batch: per row, the mean over its
 * label tokens of argmax == label (pred[k] of the k-th target, at batch
 * position m->rows[k]); rows without a label token are left out. */
static void accuracy_add(ft_model *m, const ft_batch *b, const int32_t *pred, int n)
{
	int64_t *hit = ft_xcalloc((size_t)b->B * 2, sizeof *hit), *cnt = hit + b->B;
	for (int k = 0; k < n; k++) {
		int r = m->rows[k] / b->T;
		cnt[r]++;
		hit[r] += pred[k] == m->targets[k];
	}
	for (int r = 0; r < b->B; r++)
		if (cnt[r]) {
			m->acc_sum += (double)hit[r] / (double)cnt[r];
			m->acc_rows++;
		}
	free(hit);
}

int ft_model_forward(ft_model *m, const ft_batch *b, float *logits,
		     double *loss_sum, int64_t *n_tokens)
{
	if (m->o.sft_loss == FT_SFT_LOSS_ASFT && !logits)
		return ftp_asft_forward(m, b, loss_sum, n_tokens);
	if (m->o.sft_loss && !logits)
		return ftp_tokloss_forward(m, b, loss_sum, n_tokens);
	m->training = 0;
	if (ftp_model_forward_body(m, b) < 0)
		return -1;
	int N = b->B * b->T, D = m->c.hidden_size;
	int64_t nt = 0;
	const float *x = m->lnf;
	if (!logits) {   /* the loss needs only the rows that have a target */
		int n = 0;
		for (int i = 0; i < N; i++)
			if (m->targets[i] != FT_IGNORE_INDEX) {
				memcpy(m->head_x + (size_t)n * D, m->lnf + (size_t)i * D, D * sizeof(float));
				m->rows[n] = i;
				m->targets[n++] = m->targets[i];
			}
		N = n;
		x = m->head_x;
	}
	int32_t *pred = !logits && m->acc_on ? ft_xmalloc((size_t)(N ? N : 1) * sizeof *pred) : NULL;
	double loss = ft_lm_head_loss_cap(NULL, NULL, logits, x, m->lm_head.w, m->targets, N, D,
					  m->c.vocab_size, 1, m->head_scratch, m->head_chunk, &nt,
					  (float)m->c.final_softcap, (float)m->o.label_smoothing, pred);
	if (pred)
		accuracy_add(m, b, pred, N);
	free(pred);
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = nt;
	return 0;
}

int ft_model_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
			      double *loss_sum, int64_t *n_tokens)
{
	if (m->o.sft_loss == FT_SFT_LOSS_ASFT)
		return ftp_asft_forward_backward(m, b, grad_scale, loss_sum, n_tokens);
	if (m->o.sft_loss)
		return ftp_tokloss_forward_backward(m, b, grad_scale, loss_sum, n_tokens);
	const ft_config *c = &m->c;
	m->training = 1;
	m->dropout_calls++;
	if (ftp_model_forward_body(m, b) < 0)
		return -1;
	int N = b->B * b->T, D = c->hidden_size;
	/* Only rows with a target reach the LM head (prompt and padding rows
	 * have zero gradient there). */
	int n = 0;
	for (int i = 0; i < N; i++)
		if (m->targets[i] != FT_IGNORE_INDEX) {
			m->rows[n] = i;
			memcpy(m->head_x + (size_t)n * D, m->lnf + (size_t)i * D, D * sizeof(float));
			m->targets[n++] = m->targets[i];
		}
	int64_t nt = 0;
	double loss = ft_lm_head_loss_cap(m->head_dx, m->lm_head.g, NULL, m->head_x, m->lm_head.w,
					  m->targets, n, D, c->vocab_size, grad_scale,
					  m->head_scratch, m->head_chunk, &nt, (float)c->final_softcap,
					  (float)m->o.label_smoothing, NULL);
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = nt;
	memset(m->d_ln, 0, (size_t)N * D * sizeof(float));
	for (int k = 0; k < n; k++)
		memcpy(m->d_ln + (size_t)m->rows[k] * D, m->head_dx + (size_t)k * D, D * sizeof(float));
	ftp_model_backward_body(m, b);
	return 0;
}

static void grads_ready(ft_model *m, int group)
{
	if (m->grads_ready) m->grads_ready(m->grads_ready_ctx, group);
}

/* From m->d_ln = dL/d(final norm output) [N, D] back through the layers
 * that have a gradient (the preference stages enter here too). */
void ftp_model_backward_body(ft_model *m, const ft_batch *b)
{
	const ft_config *c = &m->c;
	int N = b->B * b->T, D = c->hidden_size, L = c->num_hidden_layers;
	int stop = L;
	for (int l = 0; l < L; l++)
		if (layer_has_grad(m, l)) {
			stop = l;
			break;
		}
	int emb = m->wte.g && ftp_emb_trains(m);
	if (emb)
		stop = 0;
	if (stop == L && !m->norm.g)
		return;
	memset(m->d_a, 0, (size_t)N * D * sizeof(float));
	ft_rmsnorm_backward(m->d_a, m->norm.g, m->d_ln, m->xs + (size_t)L * N * D,
			    ftp_norm_w(m, m->norm.w, D), m->rstdf, N, D);
	grads_ready(m, L);
	for (int l = L - 1; l >= stop; l--) {
		const float *x_in = m->xs + (size_t)l * N * D;
		ftp_acts *a = &m->acts[m->o.gradient_checkpointing ? 0 : l];
		if (m->o.gradient_checkpointing)
			layer_forward(m, l, a, x_in, m->d_b, b);
		layer_backward(m, l, a, x_in, b, l > stop || emb);
		grads_ready(m, l);
	}
	if (emb && c->gemma)   /* through the sqrt(hidden) scale */
		for (size_t i = 0; i < (size_t)N * D; i++) m->d_a[i] *= (float)sqrt((double)D);
	if (emb)
		ft_embedding_backward(m->wte.g, m->d_a, b->input_ids, N, D);
	grads_ready(m, -1);
}
