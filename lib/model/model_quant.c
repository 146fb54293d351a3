/* model_quant.c - a model whose decoder linears are held quantized
 * (QLoRA, lib/model/quant.h), on the CPU.
 *
 * Each base linear y = x W^T runs a tile of W's rows at a time: the rows
 * are dequantized into one scratch buffer (float32, as bnb's compute
 * dtype) and multiplied with ft_sgemm, so no dequantized copy of a whole
 * layer is ever resident.  The backward pass does the same for
 * dx += dy W; quantized weights get no gradient.  Gradient checkpointing
 * recomputes through the same tiles.
 *
 * bnb's CPU paths, which these follow: Linear4bit in training dequantizes
 * in float32 and calls F.linear; Linear8bitLt in training (MatMul8bitFp)
 * dequantizes CB * (SCB / 127) and calls F.linear; Linear8bitLt in eval
 * (MatMul8bitLt) is LLM.int8(), ftp_qlin_forward's int8 branch.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "util/dtype.h"
#include "util/error.h"
#include "model/model_internal.h"
#include "model/quant.h"
#include "model/quant_kernels.h"

#define TILE_FLOATS (1 << 21)   /* 8 MiB of dequantized rows per product: wide tiles, few parallel regions */

static ft_qweight *qw_of(const ft_model *m, int l, int j)
{
	return &m->qw[(size_t)l * L_NLIN + j];
}

int ft_model_is_quantized(const ft_model *m) { return m->qw != NULL; }

void ftp_model_quant_free(ft_model *m)
{
	if (!m->qw)
		return;
	for (size_t i = 0; i < (size_t)m->c.num_hidden_layers * L_NLIN; i++)
		ft_qweight_free(&m->qw[i]);
	free(m->qw);
	free(m->qscratch);
	m->qw = NULL;
	m->qscratch = NULL;
}

/* Linear j of layer l: quantized, its float32 weight freed.  Pages of a
 * weight malloc never touched are not resident, so a model quantized
 * tensor by tensor as it is read never holds its float32 linears at once. */
static void quantize_lin(ft_model *m, int l, int j)
{
	const ft_config *c = &m->c;
	if (!m->qw)
		m->qw = ft_xcalloc((size_t)c->num_hidden_layers * L_NLIN, sizeof *m->qw);
	ftp_wg *w = &m->layers[l].lin[j];
	if (!w->w)
		return;   /* already quantized */
	int in, out;
	ftp_lin_dims(c, j, &in, &out);
	ft_qweight_make(qw_of(m, l, j), w->w, out, in, m->o.quantization_bit, m->o.quantization_fp4,
			m->o.double_quantization);
	free(w->w);
	free(w->g);
	w->w = w->g = NULL;
}

/* After the weight of p was read (lib/model/model_io.c): quantized now if
 * it is a decoder linear. */
void ftp_model_quantize_param(ft_model *m, ft_param *p)
{
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (m->layers[l].lin[j].w == p->w && p->w) {
				quantize_lin(m, l, j);
				p->w = NULL;
				return;
			}
}

/* The memory plan of a quantized model: its resident bytes, not float32. */
int ftp_quant_memory_plan(const ft_config *c, const ft_tune_opts *o, const char *what)
{
	char kind[48];
	snprintf(kind, sizeof kind, "%d-bit quantized", o->quantization_bit);
	return ftp_memory_plan_check(ft_config_weight_bytes_quant(c, o->quantization_bit,
								  o->double_quantization), kind, what);
}

/* Quantizes every decoder linear not yet quantized as o.quantization_*
 * say; returns m, or NULL (m freed) on failure. */
ft_model *ftp_model_quantize(ft_model *m)
{
	if (!m || !m->o.quantization_bit)
		return m;
	const ft_config *c = &m->c;
	if (c->fused) {   /* q|k|v share one tensor there: quantize_lin works per module */
		ft_fail("--quantization_bit on Phi-3's fused qkv_proj/gate_up_proj is not implemented in ft yet");
		ft_model_free(m);
		return NULL;
	}
	int mx = 0, L = c->num_hidden_layers;
	for (int j = 0; j < L_NLIN; j++) {
		int in, out;
		ftp_lin_dims(c, j, &in, &out);
		if (in > mx)
			mx = in;
	}
	/* each matrix quantizes alone into its own qweight: in parallel (a 7B
	 * base is 224 matrices, ~1.5 minutes on one core) */
	if (!m->qw)
		m->qw = ft_xcalloc((size_t)L * L_NLIN, sizeof *m->qw);
#pragma omp parallel for schedule(dynamic)
	for (int t = 0; t < L * L_NLIN; t++)
		quantize_lin(m, t / L_NLIN, t % L_NLIN);
	m->qscratch_n = (size_t)TILE_FLOATS > (size_t)mx ? TILE_FLOATS : (size_t)mx;
	m->qscratch = ft_xmalloc(m->qscratch_n * sizeof(float));
	ftp_model_build_params(m);   /* the base linears' pointers are now NULL */
	return m;
}

double ft_model_resident_bytes(const ft_model *m)
{
	double b = 0;
	for (size_t i = 0; i < m->nparams; i++)
		if (m->params[i].w && strncmp(m->params[i].name, "base_model.", 11))
			b += 4.0 * m->params[i].n;   /* base weights, not adapters */
	if (m->qw)
		for (size_t i = 0; i < (size_t)m->c.num_hidden_layers * L_NLIN; i++)
			b += (double)ft_qweight_bytes(&m->qw[i]);
	return b;
}

static int tile_rows(const ft_model *m, int in, int out)
{
	size_t r = m->qscratch_n / (size_t)in;
	return r < 1 ? 1 : r > (size_t)out ? out : (int)r;
}

/* Rows [r0, r1) of W dequantized, split over threads by rows. */
static void dequant_rows(const ft_qweight *q, int r0, int r1, float *dst)
{
	int n = r1 - r0;
#pragma omp parallel if ((size_t)n * q->in >= 65536)
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		int a = r0 + (int)((long)n * t / nt), b = r0 + (int)((long)n * (t + 1) / nt);
		if (a < b)
			ft_qweight_rows(q, a, b, dst + (size_t)(a - r0) * q->in);
	}
}

/* The activations as LLM.int8() quantizes them (MatMul8bitLt): rounded to
 * float16; input columns holding any |x| >= 6 are the outliers (listed in
 * cols); each row scaled to int8 by 127 / its absmax over the rest, the
 * outlier elements (and, with several rows, whole outlier columns) zero.
 * The int8 values are stored as floats for the product. */
static int int8_activations(const float *x, int N, int in, float *caf, float *sca, int *cols)
{
	char *outl = ft_xcalloc(in, 1);
	int nc = 0;
	for (size_t i = 0; i < (size_t)N * in; i++)
		if (ft_k_int8_outlier(ft_f16_to_f32(ft_f32_to_f16(x[i]))))
			outl[i % in] = 1;
	for (int k = 0; k < in; k++)
		if (outl[k])
			cols[nc++] = k;   /* few: the outlier features of LLM.int8() */
	for (int n = 0; n < N; n++) {
		const float *xr = x + (size_t)n * in;
		float am = 0;
		for (int k = 0; k < in; k++) {
			float h = ft_f16_to_f32(ft_f32_to_f16(xr[k]));
			if (!ft_k_int8_outlier(h))
				am = fmaxf(am, fabsf(h));
		}
		sca[n] = am;
		float s = am == 0 ? 0 : ft_k_int8_row_scale(am);
		for (int k = 0; k < in; k++) {
			float h = ft_f16_to_f32(ft_f32_to_f16(xr[k]));
			int zero = am == 0 || ft_k_int8_outlier(h) || (N > 1 && outl[k]);
			caf[(size_t)n * in + k] = zero ? 0 : ft_k_int8_act(h, s);
		}
	}
	free(outl);
	return nc;
}

/* LLM.int8() as bnb's MatMul8bitLt with llm_int8_threshold 6 (eval): the
 * int8 product CA CB^T accumulated exactly in int32, scaled by SCA * SCB
 * / 127^2, plus the outlier columns multiplied in float32 with their
 * dequantized weight columns.  The integer product runs through sgemm on
 * int-valued floats in chunks of K_EXACT inputs: every partial sum is an
 * integer below 1024 * 127 * 127 < 2^24, so float32 holds it exactly in any
 * order, and the chunks add up in int32. */
#define K_EXACT 1024
#define R_INT8 1024
void ft_qweight_int8_forward(const ft_qweight *q, float *y, const float *x, int N)
{
	int in = q->in, out = q->out;
	float *caf = ft_xmalloc((size_t)N * in * sizeof(float));
	float *sca = ft_xmalloc((size_t)N * sizeof(float));
	int *cols = ft_xmalloc((size_t)in * sizeof(int));
	int nc = int8_activations(x, N, in, caf, sca, cols);
	float *wt = ft_xmalloc((size_t)R_INT8 * K_EXACT * sizeof(float));
	float *tmp = ft_xmalloc((size_t)N * R_INT8 * sizeof(float));
	int32_t *acc = ft_xmalloc((size_t)N * R_INT8 * sizeof(int32_t));
	for (int r0 = 0; r0 < out; r0 += R_INT8) {
		int R = r0 + R_INT8 < out ? R_INT8 : out - r0;
		memset(acc, 0, (size_t)N * R * sizeof(int32_t));
		for (int k0 = 0; k0 < in; k0 += K_EXACT) {
			int K = k0 + K_EXACT < in ? K_EXACT : in - k0;
			for (int r = 0; r < R; r++)
				for (int k = 0; k < K; k++)
					wt[(size_t)r * K + k] = q->cb[(size_t)(r0 + r) * in + k0 + k];
			ft_sgemm(0, 1, N, R, K, 1, caf + k0, in, wt, K, 0, tmp, R);
			for (size_t i = 0; i < (size_t)N * R; i++)
				acc[i] += (int32_t)tmp[i];
		}
#pragma omp parallel for schedule(static) if ((size_t)N * R >= 16384)
		for (int n = 0; n < N; n++)
			for (int r = 0; r < R; r++) {
				int o = r0 + r;
				const int8_t *b = q->cb + (size_t)o * in;
				float v = ft_k_int8_out(acc[(size_t)n * R + r], sca[n], q->scb[o]);
				for (int c = 0; c < nc; c++)   /* outlier columns, float32 */
					v = ft_k_int8_outlier_add(v, x[(size_t)n * in + cols[c]], b[cols[c]],
								  q->scb[o]);
				y[(size_t)n * out + o] = v;
			}
	}
	free(caf); free(sca); free(cols); free(wt); free(tmp); free(acc);
}

int ftp_qlin_tile_rows(const ft_model *m, int l, int j)
{
	const ft_qweight *q = qw_of(m, l, j);
	return tile_rows(m, q->in, q->out);
}

void ftp_qlin_rows(const ft_model *m, int l, int j, int r0, int r1, float *dst)
{
	dequant_rows(qw_of(m, l, j), r0, r1, dst);
}

/* y = x W^T through the dequantized tiles, no bias: the training form
 * (bnb's F.linear on the float32 dequantized weight), also DoRA's base
 * product of its dropped-out input (lib/model/lora_dora.c). */
void ftp_qlin_product(ft_model *m, int l, int j, float *y, const float *x, int N)
{
	const ft_qweight *q = qw_of(m, l, j);
	int in = q->in, out = q->out;
	for (int r0 = 0, R = tile_rows(m, in, out); r0 < out; r0 += R) {
		int r1 = r0 + R < out ? r0 + R : out;
		dequant_rows(q, r0, r1, m->qscratch);
		ft_sgemm(0, 1, N, r1 - r0, in, 1, x, in, m->qscratch, in, 0, y + r0, out);
	}
}

void ftp_qlin_forward(ft_model *m, int l, int j, float *y, const float *x, int N, int eval)
{
	const ft_qweight *q = qw_of(m, l, j);
	int out = q->out;
	if (q->bits == 8 && eval)
		ft_qweight_int8_forward(q, y, x, N);
	else
		ftp_qlin_product(m, l, j, y, x, N);
	const float *b = j <= L_V ? m->layers[l].bias[j].w : NULL;
	if (b)
#pragma omp parallel for schedule(static) if ((size_t)N * out >= 65536)
		for (int n = 0; n < N; n++)
			for (int o = 0; o < out; o++)
				y[(size_t)n * out + o] += b[o];
}

/* dx += dy W through the dequantized tiles (the weight is frozen). */
void ftp_qlin_backward(ft_model *m, int l, int j, float *dx, const float *dy, int N)
{
	if (!dx)
		return;
	const ft_qweight *q = qw_of(m, l, j);
	int in = q->in, out = q->out;
	for (int r0 = 0, R = tile_rows(m, in, out); r0 < out; r0 += R) {
		int r1 = r0 + R < out ? r0 + R : out;
		dequant_rows(q, r0, r1, m->qscratch);
		ft_sgemm(0, 0, N, in, r1 - r0, 1, dy + r0, out, m->qscratch, in, 1, dx, in);
	}
}

/* ---- LLaMA-Factory's arguments and the memory plan ------------------- */

static int is_true(const char *v, int *out)
{
	if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "1")) *out = 1;
	else if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "0")) *out = 0;
	else return -1;
	return 0;
}

int ft_quant_parse(ft_tune_opts *o, const char *bit, const char *type, const char *double_q,
		   const char *method)
{
	o->quantization_bit = 0;
	o->quantization_fp4 = 0;
	o->double_quantization = 1;   /* LLaMA-Factory's default */
	if (method && strcmp(method, "bnb") && strcmp(method, "bitsandbytes")) {
		if (!strcmp(method, "gptq") || !strcmp(method, "awq") || !strcmp(method, "hqq") ||
		    !strcmp(method, "eetq") || !strcmp(method, "aqlm") || !strcmp(method, "quanto"))
			return ft_fail("--quantization_method %s: only bnb (bitsandbytes) "
				       "quantization is implemented", method);
		return ft_fail("--quantization_method '%s': not a quantization method (bnb)", method);
	}
	if (type && strcmp(type, "nf4") && strcmp(type, "fp4"))
		return ft_fail("--quantization_type '%s': use nf4 or fp4", type);
	o->quantization_fp4 = type && !strcmp(type, "fp4");
	if (double_q && is_true(double_q, &o->double_quantization) < 0)
		return ft_fail("--double_quantization '%s': use true or false", double_q);
	if (!bit || !*bit || !strcmp(bit, "null") || !strcmp(bit, "None"))
		return 0;
	char *end;
	long b = strtol(bit, &end, 10);
	if (*end || end == bit || (b != 4 && b != 8))   /* quantization.py's words */
		return ft_fail("--quantization_bit %s: Bitsandbytes only accepts 4-bit or 8-bit "
			       "quantization.", bit);
	if (o->type != FT_FT_LORA && o->type != FT_FT_OFT)   /* hparams/parser.py's check */
		return ft_fail("--quantization_bit: Quantization is only compatible with the LoRA "
			       "or OFT method.");
	o->quantization_bit = (int)b;
	return 0;
}

double ft_config_weight_bytes_quant(const ft_config *c, int bits, int double_quant)
{
	double all = ft_config_weight_bytes(c), lin = 0, q = 0;
	for (int j = 0; j < L_NLIN; j++) {
		int in, out;
		ftp_lin_dims(c, j, &in, &out);
		ft_qweight w = { .bits = bits, .in = in, .out = out };
		uint8_t one;
		if (bits == 4 && double_quant)
			w.qabsmax = &one;   /* only its presence counts */
		lin += 4.0 * in * out;
		q += (double)ft_qweight_bytes(&w);
	}
	if (!bits)
		return all;
	return all - c->num_hidden_layers * (lin - q);
}

/* Bytes of a LoRA run on the model, by purpose: the base weights (the
 * quantized linears packed, the rest in 2-byte bf16 when half, else
 * float32), the adapters (float32 weight, gradient and AdamW's two
 * moments), and the activations of `tokens` tokens: the residual stream of
 * every layer boundary, each layer's saved tensors (one layer's with
 * gradient checkpointing), the backward buffers and the LM head's chunk,
 * in the working precision.  The same sizes as lib/model/model_fwd.c
 * allocates on the CPU. */
void ft_quant_plan(const ft_config *c, int bits, int double_quant, int rank, unsigned targets,
		   int tokens, int checkpointing, int half, ft_quant_plan_t *p)
{
	double L = c->num_hidden_layers, D = c->hidden_size, F = c->intermediate_size;
	double H = c->num_attention_heads, qd = H * c->head_dim;
	double kd = (double)c->num_key_value_heads * c->head_dim, V = c->vocab_size, n = tokens;
	double lin = 0, ad = 0, es = half ? 2 : 4;
	for (int j = 0; j < L_NLIN; j++) {
		int in, out;
		ftp_lin_dims(c, j, &in, &out);
		lin += 4.0 * in * out;
		if (targets >> j & 1)
			ad += ((double)in + out) * rank;
	}
	double rest = ft_config_weight_bytes(c) - L * lin;   /* embeddings, norms, head */
	double qlin = ft_config_weight_bytes_quant(c, bits, double_quant) - rest;
	p->weights = rest * es / 4 + (bits ? qlin : L * lin * es / 4);
	p->adapters = 16.0 * ad * L;
	double layer = 3 * D + 2 + 2 * qd + 2 * kd + H + 2 * F + L_NLIN * rank;
	double scratch = 4 * D + 3 * qd + 2 * kd + 5 * F;
	double head = (double)(1 << 24) < n * V ? (double)(1 << 24) : n * V;
	p->acts = es * (n * ((L + 1) * D + (checkpointing ? 1 : L) * layer + scratch) + head);
	p->total = p->weights + p->adapters + p->acts;
}
