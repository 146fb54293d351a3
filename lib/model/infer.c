/* infer.c - KV-cache decoding over the layer functions; see infer.h */
#include "model/infer.h"
#include "model/infer_batch.h"
#include "model/vexp.h"
#include "model/model_internal.h"
#include "util/error.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ft_kvcache {
	int rows, cap, L, kvdim;
	float *k, *v;            /* [L][rows][cap][kvdim], rotated keys */
	int *len;
	uint64_t forwards;       /* NEFTune's stream while sampling (ft_model_set_gen_neftune) */
};

ft_kvcache *ft_kvcache_new(const ft_model *m, int rows, int cap)
{
	const ft_config *c = &m->c;
	ft_kvcache *kv = ft_xcalloc(1, sizeof *kv);
	kv->rows = rows, kv->cap = cap, kv->L = c->num_hidden_layers;
	kv->kvdim = c->num_key_value_heads * c->head_dim;
	size_t n = (size_t)kv->L * rows * cap * kv->kvdim;
	kv->k = ft_xmalloc(n * sizeof(float));
	kv->v = ft_xmalloc(n * sizeof(float));
	kv->len = ft_xcalloc(rows, sizeof(int));
	return kv;
}

void ft_kvcache_free(ft_kvcache *c)
{
	if (!c) return;
	free(c->k);
	free(c->v);
	free(c->len);
	free(c);
}

void ft_kvcache_reset(ft_kvcache *c, int row) { c->len[row] = 0; }
int ft_kvcache_len(const ft_kvcache *c, int row) { return c->len[row]; }
int ft_kvcache_cap(const ft_kvcache *c) { return c->cap; }

static float *kv_at(const ft_kvcache *c, float *base, int l, int row, int pos)
{
	return base + (((size_t)l * c->rows + row) * c->cap + pos) * c->kvdim;
}

/* Every read before any write, so a row may be both a source and a
 * destination (beam search's reordering). */
void ft_kvcache_copy_rows(ft_kvcache *c, const int *dst, const int *src, int n)
{
	int moved = 0, longest = 0;
	for (int i = 0; i < n; i++)
		if (dst[i] != src[i]) {
			moved++;
			if (c->len[src[i]] > longest) longest = c->len[src[i]];
		}
	if (moved == 0) return;
	size_t row = (size_t)longest * c->kvdim;
	float *tmp = ft_xmalloc(2 * (size_t)c->L * n * row * sizeof *tmp);
	int *len = ft_xmalloc(n * sizeof *len);
	for (int i = 0; i < n; i++) len[i] = c->len[src[i]];
	for (int pass = 0; pass < 2; pass++)
		for (int l = 0; l < c->L; l++)
			for (int i = 0; i < n; i++) {
				if (dst[i] == src[i]) continue;
				float *t = tmp + ((size_t)l * n + i) * 2 * row;
				size_t bytes = (size_t)len[i] * c->kvdim * sizeof(float);
				if (pass == 0) {
					memcpy(t, kv_at(c, c->k, l, src[i], 0), bytes);
					memcpy(t + row, kv_at(c, c->v, l, src[i], 0), bytes);
				} else {
					memcpy(kv_at(c, c->k, l, dst[i], 0), t, bytes);
					memcpy(kv_at(c, c->v, l, dst[i], 0), t + row, bytes);
				}
			}
	for (int i = 0; i < n; i++) c->len[dst[i]] = len[i];
	free(tmp);
	free(len);
}

static int max_lora_rank(const ft_model *m)
{
	int r = 1;
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (m->layers[l].lora[j].on && m->layers[l].lora[j].r > r) r = m->layers[l].lora[j].r;
	return r;
}

/* Per-call working memory, sized for N tokens. */
typedef struct {
	int N, *pos;
	float *x, *ln, *q, *k, *v, *att, *tmp, *gate, *up, *h, *lh, *cos_t, *sin_t, *inv_freq, *scores;
	float *cos_l, *sin_l;   /* Gemma's sliding layers */
	float *xr;              /* OFT: a module's rotated input (NULL without) */
} infer_buf;

static void buf_alloc(infer_buf *b, const ft_model *m, int N, int maxlen)
{
	const ft_config *c = &m->c;
	size_t D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
	size_t qd = (size_t)c->num_attention_heads * hd, kvd = (size_t)c->num_key_value_heads * hd;
	size_t wide = I > qd ? I : qd;
	if (wide < D) wide = D;
	b->N = N;
	b->pos = ft_xmalloc(N * sizeof(int));
	b->x = ft_xmalloc(N * D * sizeof(float));
	b->ln = ft_xmalloc(N * D * sizeof(float));
	b->q = ft_xmalloc(N * qd * sizeof(float));
	b->k = ft_xmalloc(N * kvd * sizeof(float));
	b->v = ft_xmalloc(N * kvd * sizeof(float));
	b->att = ft_xmalloc(N * qd * sizeof(float));
	b->tmp = ft_xmalloc(N * wide * sizeof(float));
	b->gate = ft_xmalloc(N * I * sizeof(float));
	b->up = ft_xmalloc(N * I * sizeof(float));
	b->h = ft_xmalloc(N * I * sizeof(float));
	b->lh = ft_xmalloc((size_t)N * max_lora_rank(m) * sizeof(float));
	b->cos_t = ft_xmalloc(N * (hd / 2) * sizeof(float));
	b->sin_t = ft_xmalloc(N * (hd / 2) * sizeof(float));
	b->inv_freq = ft_xmalloc((hd / 2) * sizeof(float));
	b->cos_l = ft_xmalloc(N * (hd / 2) * sizeof(float));
	b->sin_l = ft_xmalloc(N * (hd / 2) * sizeof(float));
	b->scores = ft_xmalloc((size_t)omp_get_max_threads() * maxlen * sizeof(float));
	b->xr = m->oft ? ft_xmalloc(N * wide * sizeof(float)) : NULL;   /* every module input */
}

static void buf_free(infer_buf *b)
{
	float *f[] = {b->x, b->ln, b->q, b->k, b->v, b->att, b->tmp, b->gate, b->up, b->h,
		      b->lh, b->cos_t, b->sin_t, b->inv_freq, b->scores, b->cos_l, b->sin_l, b->xr};
	for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
	free(b->pos);
}

/* A linear module of layer l with its LoRA branch, or OFT's rotation of
 * its input (a policy trained with OFT decoding its rollouts: grpo/ppo;
 * ft-generate merges OFT at load), as training's lin_fwd without
 * dropout. */
static void lin(ft_model *m, int l, int j, float *y, const float *x, int N, const infer_buf *b)
{
	ftp_layer *ly = &m->layers[l];
	float *lh = b->lh;
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	x = ftp_oft_rotate(m, l, j, x, N, b->xr);
	if (m->qw)
		ftp_qlin_forward(m, l, j, y, x, N, 1);
	else
		ft_linear_forward(y, x, ly->lin[j].w, j <= L_V ? ly->bias[j].w : NULL, N, in, out);
	ftp_lora *lo = &ly->lora[j];
	if (lo->on)
		ft_lora_forward(y, lh, x, lo->A.w, lo->B.w, N, in, out, lo->r, lo->scale);
	if (lo->on && ftp_dora_of(m, l, j))
		ftp_dora_infer(m, l, j, y, N);
}

/* Attention of each new token over its row's cached keys and values
 * (itself included), GQA and the sliding window as in training. */
static void cached_attention(const ft_model *m, const ft_kvcache *c, int l,
			     const int *rows, infer_buf *b, int maxlen)
{
	const ft_config *cf = &m->c;
	int Hq = cf->num_attention_heads, Hk = cf->num_key_value_heads, hd = cf->head_dim;
	int group = Hq / Hk, window = cf->sliding_window;
	float scale = 1.0f / sqrtf((float)hd), cap = (float)cf->attn_softcap;
	if (cf->gemma) {   /* per layer window, query_pre_attn_scalar */
		window = ftp_layer_sliding(cf, l) ? cf->sliding_window : 0;
		scale = (float)(1.0 / sqrt(cf->query_pre_attn_scalar));
	}
#pragma omp parallel for collapse(2) schedule(static)
	for (int i = 0; i < b->N; i++)
		for (int h = 0; h < Hq; h++) {
			int p = b->pos[i], first = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
			const float *q = b->q + ((size_t)i * Hq + h) * hd;
			float *s = b->scores + (size_t)omp_get_thread_num() * maxlen, mx = -INFINITY;
			int kvh = h / group;
			for (int t = first; t <= p; t++) {
				const float *k = kv_at(c, c->k, l, rows[i], t) + kvh * hd;
				float d = 0;
				for (int e = 0; e < hd; e++) d += q[e] * k[e];
				s[t] = d * scale;
				if (cap > 0) s[t] = tanhf(s[t] / cap) * cap;
				if (s[t] > mx) mx = s[t];
			}
			float z = 0;
			for (int t = first; t <= p; t++) z += s[t] = ft_vexpf(s[t] - mx);
			float *o = b->att + ((size_t)i * Hq + h) * hd;
			memset(o, 0, hd * sizeof(float));
			for (int t = first; t <= p; t++) {
				const float *v = kv_at(c, c->v, l, rows[i], t) + kvh * hd;
				float w = s[t] / z;
				for (int e = 0; e < hd; e++) o[e] += w * v[e];
			}
		}
}

static void add_to(float *x, const float *y, size_t n)
{
	for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* Gemma's post-attention / post-MLP norm of b->tmp, in place (b->gate,
 * free at both points, holds the rstd). */
static void post_norm(ft_model *m, const float *w, infer_buf *b)
{
	int D = m->c.hidden_size;
	if (!m->c.gemma) return;
	ft_rmsnorm_forward(b->ln, b->gate, b->tmp, ftp_norm_w(m, w, D), b->N, D, (float)m->c.rms_norm_eps);
	memcpy(b->tmp, b->ln, (size_t)b->N * D * sizeof(float));
}

static void layer_step(ft_model *m, ft_kvcache *c, int l, const int *rows, infer_buf *b, int maxlen)
{
	const ft_config *cf = &m->c;
	int N = b->N, D = cf->hidden_size, hd = cf->head_dim;
	float eps = (float)cf->rms_norm_eps;
	ftp_layer *ly = &m->layers[l];
	const float *cs = ftp_layer_sliding(cf, l) ? b->cos_l : b->cos_t;
	const float *sn = ftp_layer_sliding(cf, l) ? b->sin_l : b->sin_t;
	ft_rmsnorm_forward(b->ln, b->tmp, b->x, ftp_norm_w(m, ly->ln1.w, D), N, D, eps);
	lin(m, l, L_Q, b->q, b->ln, N, b);
	lin(m, l, L_K, b->k, b->ln, N, b);
	lin(m, l, L_V, b->v, b->ln, N, b);
	if (cf->qk_norm)   /* Qwen3: in place, each row read before it is written */
		ftp_qk_norm_forward(m, ly, b->q, b->k, b->q, b->k, b->tmp,
				    b->tmp + (size_t)N * cf->num_attention_heads, N);
	ft_rope_forward(b->q, cs, sn, N, cf->num_attention_heads, hd, ftp_rotary_dim(cf));
	ft_rope_forward(b->k, cs, sn, N, cf->num_key_value_heads, hd, ftp_rotary_dim(cf));
	for (int i = 0; i < N; i++) {
		memcpy(kv_at(c, c->k, l, rows[i], b->pos[i]), b->k + (size_t)i * c->kvdim, c->kvdim * sizeof(float));
		memcpy(kv_at(c, c->v, l, rows[i], b->pos[i]), b->v + (size_t)i * c->kvdim, c->kvdim * sizeof(float));
	}
	cached_attention(m, c, l, rows, b, maxlen);
	lin(m, l, L_O, b->tmp, b->att, N, b);
	post_norm(m, ly->ln2.w, b);   /* Gemma */
	add_to(b->x, b->tmp, (size_t)N * D);
	ft_rmsnorm_forward(b->ln, b->tmp, b->x, ftp_norm_w(m, (cf->gemma ? ly->ln3 : ly->ln2).w, D), N, D, eps);
	lin(m, l, L_GATE, b->gate, b->ln, N, b);
	lin(m, l, L_UP, b->up, b->ln, N, b);
	if (cf->gemma) ft_geglu_forward(b->h, b->gate, b->up, (size_t)N * cf->intermediate_size);
	else ft_swiglu_forward(b->h, b->gate, b->up, (size_t)N * cf->intermediate_size);
	lin(m, l, L_DOWN, b->tmp, b->h, N, b);
	post_norm(m, ly->ln4.w, b);
	add_to(b->x, b->tmp, (size_t)N * D);
}

/* Positions of the new tokens (the bookkeeping the CUDA decoder shares,
 * infer_batch.h). */
static int place_tokens(const ft_model *m, const ft_kvcache *c, const int32_t *tokens,
			const int *rows, infer_buf *b, int *maxpos)
{
	ft_infer_batch p;
	if (ft_infer_batch_plan(&p, c->len, c->rows, c->cap, m->c.vocab_size, tokens, rows,
				b->N, NULL) < 0)
		return -1;
	memcpy(b->pos, p.pos, b->N * sizeof *b->pos);
	*maxpos = p.maxpos;
	ft_infer_batch_free(&p);
	return 0;
}

static int rope_setup(const ft_model *m, infer_buf *b, int maxpos)
{
	const ft_config *c = &m->c;
	ft_rope_params rp;
	ft_rope_params_of(c, &rp);
	int rd = ftp_rotary_dim(c);
	if (ft_rope_inv_freq(b->inv_freq, rd, &rp, maxpos + 1) < 0) return -1;
	int32_t *pos32 = ft_xmalloc(b->N * sizeof *pos32);
	for (int i = 0; i < b->N; i++) pos32[i] = b->pos[i];
	ft_rope_tables(b->cos_t, b->sin_t, pos32, b->N, b->inv_freq, rd);
	ft_rope_scale_tables(b->cos_t, b->sin_t, (size_t)b->N * (rd / 2), &rp);
	if (c->gemma) {   /* sliding layers: default RoPE with their base */
		ft_rope_params lp;
		ftp_rope_local_params(c, &lp);
		float *inv = ft_xmalloc((c->head_dim / 2) * sizeof(float));
		ft_rope_inv_freq(inv, rd, &lp, maxpos + 1);
		ft_rope_tables(b->cos_l, b->sin_l, pos32, b->N, inv, rd);
		free(inv);
	}
	free(pos32);
	return 0;
}

static void head_logits(ft_model *m, infer_buf *b, const int *want, float *logits)
{
	const ft_config *c = &m->c;
	int D = c->hidden_size, n = 0;
	for (int i = 0; i < b->N; i++) {
		if (want && !want[i]) continue;
		memmove(b->x + (size_t)n * D, b->x + (size_t)i * D, D * sizeof(float));
		n++;
	}
	ft_rmsnorm_forward(b->ln, b->tmp, b->x, ftp_norm_w(m, m->norm.w, D), n, D, (float)c->rms_norm_eps);
	ft_linear_forward(logits, b->ln, m->lm_head.w, NULL, n, D, c->vocab_size);
	float cap = (float)c->final_softcap;   /* Gemma 2 */
	for (size_t i = 0; cap > 0 && i < (size_t)n * c->vocab_size; i++)
		logits[i] = tanhf(logits[i] / cap) * cap;
}

int ft_infer_forward(ft_model *m, ft_kvcache *c, const int32_t *tokens,
		     const int *rows, int N, const int *want, float *logits)
{
	if (N <= 0) return 0;
	int maxpos;
	infer_buf b;
	buf_alloc(&b, m, N, c->cap);
	m->training = 0;
	int rc = place_tokens(m, c, tokens, rows, &b, &maxpos);
	if (rc == 0) rc = rope_setup(m, &b, maxpos);
	if (rc == 0) {
		ft_embedding_forward(b.x, tokens, m->wte.w, N, m->c.hidden_size);
		for (size_t i = 0; m->c.gemma && i < (size_t)N * m->c.hidden_size; i++)
			b.x[i] *= (float)sqrt((double)m->c.hidden_size);   /* Gemma */
		if (m->gen_neft_on && m->o.neftune_noise_alpha > 0)   /* after Gemma's scale, as training's */
			ft_neftune_tokens(b.x, rows, N, c->rows, m->o.neftune_noise_alpha, m->c.hidden_size,
					  m->gen_neft_stream, c->forwards++);
		for (int l = 0; l < m->c.num_hidden_layers; l++)
			layer_step(m, c, l, rows, &b, c->cap);
		for (int i = 0; i < N; i++)
			if (b.pos[i] + 1 > c->len[rows[i]]) c->len[rows[i]] = b.pos[i] + 1;
		head_logits(m, &b, want, logits);
	}
	buf_free(&b);
	return rc;
}
