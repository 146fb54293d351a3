/* test_cuda_view.c - the fused projections' column layout
 * (ft_cuda_view_group, lib/model/cuda_view.c) and the algebra
 * lib/cuda/layer.cu builds on it, on the host with ft_sgemm: one GEMM over
 * the stacked [Wq; Wk; Wv; Aq; Av] with the biases and LoRA B products
 * written into the fused [N, tot] buffer with strides, and the backward
 * (LoRA dh into the LoRA columns, one dx GEMM over all rows, the stacked
 * weight and A gradients) against ft_linear_* and ft_lora_* per module.
 * The same GEMM arguments as layer.cu's lin_fwd_group / lin_bwd_group
 * (the device calls themselves need a GPU: tests/gpu).
 * Tolerance 1e-5 of the largest element: fp32 both ways, only the
 * blocking of the products differs (a wrong offset or stride is O(1)). */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "model/cuda_view.h"
#include "model/model.h"
#include "model/layers.h"
#include "util/error.h"

static unsigned rng = 12345;
static float *rnd(size_t n)
{
	float *x = malloc(n * sizeof *x);
	for (size_t i = 0; i < n; i++) {
		rng = rng * 1103515245u + 12345u;
		x[i] = ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
	}
	return x;
}

static double err(const float *a, int lda, const float *ref, int N, int w)
{
	double d = 0, s = 1e-3;
	for (int n = 0; n < N; n++)
		for (int c = 0; c < w; c++) {
			double r = ref[(size_t)n * w + c], e = a[(size_t)n * lda + c] - r;
			if (e < 0) e = -e;
			if (e > d || e != e) d = e != e ? 1e30 : e;
			if (r > s) s = r;
			if (-r > s) s = -r;
		}
	return d / s;
}

int main(void)
{
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			    .lora_targets = FT_MOD_Q | FT_MOD_V | FT_MOD_GATE, .seed = 1 };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-qwen2", &to);
	ft_cuda_view v;
	if (!ok(m && ft_cuda_view_of(m, &v) == 0, "tiny-qwen2 view: %s", m ? "" : ft_errmsg()))
		return tap_done();
	int qd = v.Hq * v.hd, kd = v.Hk * v.hd, r = 4, D = v.D, N = 13;
	ft_cv_group g, u;
	ft_cuda_view_group(&v, 0, 0, &g);
	ft_cuda_view_group(&v, 0, 1, &u);
	ok(g.n == 3 && g.off[0] == 0 && g.off[1] == qd && g.off[2] == qd + kd &&
	   g.base == qd + 2 * kd && g.loff[0] == g.base && g.loff[1] == -1 &&
	   g.loff[2] == g.base + r && g.tot == g.base + 2 * r && g.in == D,
	   "q|k|v columns: q, k, v, then the LoRA hiddens of q and v (tot %d)", g.tot);
	ok(u.n == 2 && u.off[1] == v.F && u.base == 2 * v.F && u.loff[0] == 2 * v.F &&
	   u.loff[1] == -1 && u.tot == 2 * v.F + r, "gate|up columns: gate, up, gate's LoRA hidden");
	ft_cv_layer *y = &v.layers[0];
	int tot = g.tot, base = g.base, outs[3] = { qd, kd, kd };
	for (int i = 0; i < 3; i++)      /* PEFT starts B at 0: give it values */
		if (y->lora[i].on) {
			float *b = rnd((size_t)outs[i] * r);
			memcpy(y->lora[i].B.w, b, (size_t)outs[i] * r * 4);
			free(b);
		}
	float *Wf = malloc((size_t)tot * D * 4), *x = rnd((size_t)N * D);
	float *Y = calloc((size_t)N * tot, 4), *dY = calloc((size_t)N * tot, 4);
	size_t row = 0;
	for (int i = 0; i < 3; i++) {
		memcpy(Wf + row * D, y->lin[i].w, (size_t)outs[i] * D * 4);
		row += outs[i];
	}
	for (int i = 0; i < 3; i++)
		if (y->lora[i].on) {
			memcpy(Wf + row * D, y->lora[i].A.w, (size_t)r * D * 4);
			row += r;
		}
	/* forward, as lin_fwd_group */
	ft_sgemm(0, 1, N, tot, D, 1, x, D, Wf, D, 0, Y, tot);
	for (int i = 0; i < 3; i++) {
		float *yi = Y + g.off[i];
		for (int n = 0; n < N; n++)
			for (int c = 0; c < outs[i]; c++)
				yi[(size_t)n * tot + c] += y->bias[i].w[c];
		if (y->lora[i].on)
			ft_sgemm(0, 1, N, outs[i], r, y->lora[i].scale, Y + g.loff[i], tot,
				 y->lora[i].B.w, r, 1, yi, tot);
	}
	double ef = 0, eb = 0;
	float *dx = calloc((size_t)N * D, 4), *dxr = calloc((size_t)N * D, 4);
	float *dWf = calloc((size_t)base * D, 4), *dAf = calloc((size_t)2 * r * D, 4);
	float *dy[3], *dAr[3] = { 0 }, *dBr[3] = { 0 };
	for (int i = 0; i < 3; i++) {
		float *ref = malloc((size_t)N * outs[i] * 4), *h = malloc((size_t)N * r * 4);
		ft_linear_forward(ref, x, y->lin[i].w, y->bias[i].w, N, D, outs[i]);
		if (y->lora[i].on) {
			ft_lora_forward(ref, h, x, y->lora[i].A.w, y->lora[i].B.w, N, D, outs[i], r,
					y->lora[i].scale);
			double e = err(Y + g.loff[i], tot, h, N, r);
			ef = e > ef ? e : ef;
		}
		double e = err(Y + g.off[i], tot, ref, N, outs[i]);
		ef = e > ef ? e : ef;
		/* backward reference, module by module */
		dy[i] = rnd((size_t)N * outs[i]);
		float *dW = calloc((size_t)outs[i] * D, 4), *hs = malloc((size_t)N * r * 4);
		ft_linear_backward(dxr, dW, NULL, dy[i], x, y->lin[i].w, N, D, outs[i]);
		for (int n = 0; n < N; n++)
			memcpy(dY + (size_t)n * tot + g.off[i], dy[i] + (size_t)n * outs[i],
			       (size_t)outs[i] * 4);
		if (y->lora[i].on) {
			dAr[i] = calloc((size_t)r * D, 4);
			dBr[i] = calloc((size_t)outs[i] * r, 4);
			ft_lora_backward(dxr, dAr[i], dBr[i], hs, dy[i], x, h, y->lora[i].A.w,
					 y->lora[i].B.w, N, D, outs[i], r, y->lora[i].scale);
		}
		free(ref); free(h); free(hs); free(dW);
	}
	/* backward, as lin_bwd_group */
	for (int i = 0; i < 3; i++)
		if (y->lora[i].on) {
			float *dBg = calloc((size_t)outs[i] * r, 4);
			ft_sgemm(1, 0, outs[i], r, N, y->lora[i].scale, dY + g.off[i], tot, Y + g.loff[i],
				 tot, 1, dBg, r);
			double e = err(dBg, r, dBr[i], outs[i], r);
			eb = e > eb ? e : eb;
			ft_sgemm(0, 0, N, r, outs[i], y->lora[i].scale, dY + g.off[i], tot,
				 y->lora[i].B.w, r, 0, dY + g.loff[i], tot);
			free(dBg);
		}
	ft_sgemm(0, 0, N, D, tot, 1, dY, tot, Wf, D, 1, dx, D);
	ft_sgemm(1, 0, base, D, N, 1, dY, tot, x, D, 1, dWf, D);
	ft_sgemm(1, 0, tot - base, D, N, 1, dY + base, tot, x, D, 1, dAf, D);
	double e = err(dx, D, dxr, N, D);
	eb = e > eb ? e : eb;
	for (int i = 0; i < 3; i++) {   /* dW of module i: rows off[i].. of dWf */
		float *dW = calloc((size_t)outs[i] * D, 4), *none = calloc((size_t)N * D, 4);
		ft_linear_backward(none, dW, NULL, dy[i], x, y->lin[i].w, N, D, outs[i]);
		e = err(dWf + (size_t)g.off[i] * D, D, dW, outs[i], D);
		eb = e > eb ? e : eb;
		if (y->lora[i].on) {
			e = err(dAf + (size_t)(g.loff[i] - base) * D, D, dAr[i], r, D);
			eb = e > eb ? e : eb;
		}
		free(dW); free(none); free(dy[i]); free(dAr[i]); free(dBr[i]);
	}
	ok(ef <= 1e-5, "fused forward: every module's output and LoRA hidden as per module (%.2g)",
	   ef);
	ok(eb <= 1e-5, "fused backward: dx, stacked dW and dA, dB as per module (%.2g)", eb);
	free(Wf); free(x); free(Y); free(dY); free(dx); free(dxr); free(dWf); free(dAf);
	ft_cuda_view_free(&v);
	ft_model_free(m);
	return tap_done();
}
