/* lora_dora.c - DoRA (Liu et al. 2024) on the LoRA linears as PEFT's
 * DoraLinearLayer (use_dora):
 *   norm = ||W + s B A||  per output row, detached (no gradient)
 *   y    = bias + (mag / norm) * (x W^T + s B A x)
 * PEFT writes it as base + (mag/norm - 1) * (x W^T) + mag/norm * s B A x;
 * the same sum in another order.  Backward, with g = mag / norm:
 *   d(x W^T + s B A x) = g * dy   (then the usual base and LoRA backward)
 *   d mag_j            = sum_t dy_tj (x W^T + s B A x)_tj / norm_j
 * With LoRA dropout (training), PEFT keeps the base output of x and
 * recomputes the base product on the dropped-out input xd:
 *   y    = x W^T + bias + (g - 1) * (xd W^T) + g * s B A xd
 *   d mag_j = sum_t dy_tj (xd W^T + s B A xd)_tj / norm_j
 *   dx   = dy W + mask(g dy through the LoRA branch + ((g - 1) dy) W)
 * (ftp_dora_forward_dropped / ftp_dora_backward_dropped).
 * The magnitude starts at the norm (PEFT's update_layer: ||W + s B A||,
 * which is ||W|| with B = 0) and is saved as PEFT names it,
 * "...<module>.lora_magnitude_vector" [out].  Merging (PEFT's merge_safe):
 *   W' = (mag / ||W + s B A||) (W + s B A).
 * On a quantized base (QDoRA, --quantization_bit) W is the dequantized
 * weight wherever it appears (PEFT's dequantize_module_weight): the norms
 * take its rows a tile at a time, and the dropped-input product runs
 * through model_quant.c's tiles; the base output of x is the quantized
 * layer's own (LLM.int8() for 8-bit in eval, as bnb's).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"

/* *buf with room for n floats (its old contents dropped) */
static float *room(float **buf, size_t *cap, size_t n)
{
	if (*cap < n) {
		free(*buf);
		*buf = ft_xmalloc(n * sizeof **buf);
		*cap = n;
	}
	return *buf;
}

#define NORM_TILE_FLOATS (1 << 21)   /* rows of W + s B A per product, as model_quant.c's */

/* Rows of W + s B A and their norms (double sums, float results as
 * torch.linalg.norm's float32 output), a tile of rows at a time.  W is
 * the float32 weight, or on a quantized base (QDoRA) its rows dequantized
 * as the forward uses them (PEFT's dequantize_module_weight), so no
 * dequantized layer is resident.  When merged != NULL (float32 base
 * only) it gets W + s B A. */
static void delta_norm(ft_model *m, int l, int j, float *norm, float *merged)
{
	ftp_lora *lo = &m->layers[l].lora[j];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	int R = m->qw ? ftp_qlin_tile_rows(m, l, j)
		      : (int)fmin(out, fmax(1, NORM_TILE_FLOATS / in));
	float *lw = room(&m->dora_lw, &m->dora_lw_n, (size_t)R * in);
	for (int r0 = 0; r0 < out; r0 += R) {
		int n = r0 + R < out ? R : out - r0;
		const float *w = m->qscratch;
		if (m->qw)
			ftp_qlin_rows(m, l, j, r0, r0 + n, m->qscratch);
		else
			w = m->layers[l].lin[j].w + (size_t)r0 * in;
		/* lora_weight = B @ A, then weight + scaling * lora_weight */
		ft_sgemm(0, 0, n, in, lo->r, 1.0f, lo->B.w + (size_t)r0 * lo->r, lo->r, lo->A.w, in,
			 0.0f, lw, in);
		for (int o = 0; o < n; o++) {
			double s = 0;
			float *row = lw + (size_t)o * in;
			for (int i = 0; i < in; i++) {
				row[i] = w[(size_t)o * in + i] + lo->scale * row[i];
				s += (double)row[i] * row[i];
			}
			norm[r0 + o] = (float)sqrt(s);
		}
		if (merged)
			memcpy(merged + (size_t)r0 * in, lw, (size_t)n * in * sizeof *merged);
	}
}

void ftp_dora_scale(ft_model *m, int l, int j)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	delta_norm(m, l, j, lo->dnorm, NULL);
	for (int o = 0; o < out; o++) lo->dscale[o] = lo->mag.w[o] / lo->dnorm[o];
}

void ftp_dora_forward(ft_model *m, int l, int j, float *y, int N)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	const float *bias = j <= L_V ? m->layers[l].bias[j].w : NULL;
	ftp_dora_scale(m, l, j);
	room(&lo->pre, &lo->pre_n, (size_t)N * out);
	for (int t = 0; t < N; t++) {
		float *yt = y + (size_t)t * out, *pt = lo->pre + (size_t)t * out;
		for (int o = 0; o < out; o++) {
			float b = bias ? bias[o] : 0.0f;
			pt[o] = yt[o] - b;
			yt[o] = b + lo->dscale[o] * pt[o];
		}
	}
}

/* Inference (lib/model/infer.c): the factor as last computed (at load),
 * since the weights do not change while generating. */
void ftp_dora_infer(ft_model *m, int l, int j, float *y, int N)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	const float *bias = j <= L_V ? m->layers[l].bias[j].w : NULL;
	for (int t = 0; t < N; t++) {
		float *yt = y + (size_t)t * out;
		for (int o = 0; o < out; o++) {
			float b = bias ? bias[o] : 0.0f;
			yt[o] = b + lo->dscale[o] * (yt[o] - b);
		}
	}
}

/* y = xd W^T without the bias, as PEFT's F.linear(x, weight) on the
 * (dequantized) weight: on a quantized base the training form of the
 * product (8-bit: the dequantized CB * SCB / 127, not LLM.int8()). */
static void base_product(ft_model *m, int l, int j, float *y, const float *xd, int N)
{
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	if (m->qw)
		ftp_qlin_product(m, l, j, y, xd, N);
	else
		ft_linear_forward(y, xd, m->layers[l].lin[j].w, NULL, N, in, out);
}

/* dxd += dy W, the frozen base's input gradient of base_product. */
static void base_input_grad(ft_model *m, int l, int j, float *dxd, const float *dy,
			    const float *xd, int N)
{
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	if (m->qw)
		ftp_qlin_backward(m, l, j, dxd, dy, N);
	else
		ft_linear_backward(dxd, NULL, NULL, dy, xd, m->layers[l].lin[j].w, N, in, out);
}

/* y holds x W^T + bias; the LoRA branch on the dropped input xd (its
 * hidden A xd into h) and DoRA's terms are added: y += g * pre - xd W^T
 * with pre = xd W^T + s B A xd, kept for the backward.  The frozen base
 * product of xd goes through m->dora_dy, free until the backward. */
void ftp_dora_forward_dropped(ft_model *m, int l, int j, float *y, float *h, const float *xd,
			      int N)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	const ftp_lora *lr = &m->layers[l].lora[j];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	ftp_dora_scale(m, l, j);
	size_t n = (size_t)N * out;
	float *pre = room(&lo->pre, &lo->pre_n, n), *wxd = room(&m->dora_dy, &m->dora_dy_n, n);
	base_product(m, l, j, wxd, xd, N);
	memcpy(pre, wxd, n * sizeof *pre);
	ft_lora_forward(pre, h, xd, lr->A.w, lr->B.w, N, in, out, lr->r, lr->scale);
	for (int t = 0; t < N; t++)
		for (int o = 0; o < out; o++) {
			size_t i = (size_t)t * out + o;
			y[i] += lo->dscale[o] * pre[i] - wxd[i];
		}
}

const float *ftp_dora_backward(ft_model *m, int l, int j, const float *dy, int N)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	room(&m->dora_dy, &m->dora_dy_n, (size_t)N * out);
	for (int o = 0; o < out; o++) {
		double dg = 0;
		for (int t = 0; t < N; t++) {
			size_t i = (size_t)t * out + o;
			dg += (double)dy[i] * lo->pre[i];
			m->dora_dy[i] = lo->dscale[o] * dy[i];
		}
		if (lo->mag.g) lo->mag.g[o] += (float)dg / lo->dnorm[o];
	}
	return m->dora_dy;
}

/* The backward of ftp_dora_forward_dropped after the base's (dx += dy W,
 * by the caller): mag's gradient and g dy through the LoRA branch (A's
 * and B's gradients), and into dxd (NULL: none) the gradient at xd,
 * before the caller applies the dropout mask: the LoRA branch's plus
 * ((g - 1) dy) W (m->dora_dy reused once the branch has read g dy). */
void ftp_dora_backward_dropped(ft_model *m, int l, int j, float *dxd, const float *dy,
			       const float *xd, const float *h, int N)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	ftp_lora *lr = &m->layers[l].lora[j];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	const float *dyg = ftp_dora_backward(m, l, j, dy, N);
	ft_lora_backward(dxd, lr->A.g, lr->B.g, m->lhs, dyg, xd, h, lr->A.w, lr->B.w, N, in, out,
			 lr->r, lr->scale);
	if (!dxd)
		return;
	for (int t = 0; t < N; t++)
		for (int o = 0; o < out; o++) {
			size_t i = (size_t)t * out + o;
			m->dora_dy[i] = (lo->dscale[o] - 1.0f) * dy[i];
		}
	base_input_grad(m, l, j, dxd, m->dora_dy, xd, N);
}

void ftp_dora_enable(ft_model *m)
{
	ftp_dora_free(m);
	m->dora = ft_xcalloc((size_t)m->c.num_hidden_layers * L_NLIN, sizeof *m->dora);
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_dora *d = &m->dora[l * L_NLIN + j];
			int in, out;
			if (!m->layers[l].lora[j].on) continue;
			ftp_lin_dims(&m->c, j, &in, &out);
			d->on = 1;
			d->mag.w = ft_xmalloc((size_t)out * sizeof(float));
			d->dnorm = ft_xmalloc((size_t)out * sizeof(float));
			d->dscale = ft_xmalloc((size_t)out * sizeof(float));
			delta_norm(m, l, j, d->mag.w, NULL);
			ftp_dora_scale(m, l, j);
		}
	m->o.use_dora = 1;
}

void ftp_dora_merge(ft_model *m, int l, int j)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	float *w = m->layers[l].lin[j].w;
	delta_norm(m, l, j, lo->dnorm, w);
	for (int o = 0; o < out; o++) {
		float f = lo->mag.w[o] / lo->dnorm[o];   /* dora_factor */
		for (int i = 0; i < in; i++) w[(size_t)o * in + i] *= f;
	}
}

void ftp_dora_free(ft_model *m)
{
	for (int i = 0; m->dora && i < m->c.num_hidden_layers * L_NLIN; i++) {
		ftp_dora *d = &m->dora[i];
		free(d->mag.w);
		free(d->mag.g);
		free(d->dnorm);
		free(d->dscale);
		free(d->pre);
	}
	free(m->dora);
	free(m->dora_lw);
	m->dora = NULL;
	m->dora_lw = NULL;
	m->dora_lw_n = 0;
	m->o.use_dora = 0;
}

int ft_model_dora_init(ft_model *m)
{
	if (m->o.type != FT_FT_LORA) return ft_fail("DoRA needs finetuning type lora");
	if (m->c.fused)   /* one magnitude over q|k|v rows: not written yet */
		return ft_fail("DoRA on Phi-3's fused qkv_proj/gate_up_proj is not implemented in ft yet");
	ftp_dora_enable(m);
	return ftp_model_build_params(m);
}

void ft_model_dora_refresh(ft_model *m)
{
	for (int l = 0; m->dora && l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (ftp_dora_of(m, l, j)) ftp_dora_scale(m, l, j);
}
