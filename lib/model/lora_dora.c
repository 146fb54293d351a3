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
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"

/* Rows of W + s B A and their norms (double sums, float results as
 * torch.linalg.norm's float32 output).  When merged != NULL it gets
 * W + s B A. */
static void delta_norm(ft_model *m, int l, int j, float *norm, float *merged)
{
	ftp_lora *lo = &m->layers[l].lora[j];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	float *w = merged ? merged : ft_xmalloc((size_t)out * in * sizeof *w);
	memcpy(w, m->layers[l].lin[j].w, (size_t)out * in * sizeof *w);
	/* lora_weight = B @ A, then weight + scaling * lora_weight */
	float *lw = ft_xmalloc((size_t)out * in * sizeof *lw);
	ft_sgemm(0, 0, out, in, lo->r, 1.0f, lo->B.w, lo->r, lo->A.w, in, 0.0f, lw, in);
	for (size_t i = 0; i < (size_t)out * in; i++) w[i] += lo->scale * lw[i];
	free(lw);
	for (int o = 0; o < out; o++) {
		double s = 0;
		const float *row = w + (size_t)o * in;
		for (int i = 0; i < in; i++) s += (double)row[i] * row[i];
		norm[o] = (float)sqrt(s);
	}
	if (!merged) free(w);
}

void ftp_dora_scale(ft_model *m, int l, int j)
{
	ftp_dora *lo = ftp_dora_of(m, l, j);
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	delta_norm(m, l, j, lo->dnorm, NULL);
	for (int o = 0; o < out; o++) lo->dscale[o] = lo->mag.w[o] / lo->dnorm[o];
}

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
	ft_linear_forward(wxd, xd, m->layers[l].lin[j].w, NULL, N, in, out);
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
	ft_linear_backward(dxd, NULL, NULL, m->dora_dy, xd, m->layers[l].lin[j].w, N, in, out);
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
	m->dora = NULL;
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
