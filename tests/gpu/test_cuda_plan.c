/* test_cuda_plan.c - the CUDA backend's memory plan, host only (runs
 * without a GPU): the byte counts of ft_cuda_plan_memory against the
 * formula in docs/CUDA.md, computed independently here, for the tiny
 * fixture model and for a Llama-2-7B-shaped view.  Each device buffer is
 * rounded up to 256 bytes, so a category may exceed the formula by at
 * most 256 bytes per buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "cuda/ft_cuda.h"
#include "util/error.h"
#include "model/model.h"
#include "model/kernels.h"
#include "model/quant.h"
#include "plan_fused.h"
#include <math.h>

#define GIB (1024.0 * 1024 * 1024)
#define FAKE() ((float *)(next += 64))   /* a host pointer never dereferenced */

typedef struct { double weights, master, grads, optim, acts, scratch; } want_t;

/* docs/CUDA.md's formula; nmat/nvec: matrix / vector+LoRA params,
 * tmat/tvec: the trainable ones. */
static want_t formula(const ft_cuda_view *v, const ft_cuda_opts *o, double nmat,
		      double nvec, double tmat, double tvec, double ntens)
{
	double N = o->max_tokens, D = v->D, F = v->F, L = v->L, V = v->V;
	double qd = (double)v->Hq * v->hd, mi = D;
	if (qd > mi) mi = qd;
	if (F > mi) mi = F;
	double r = 0;
	for (int l = 0; l < v->L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++)
			if (v->layers[l].lora[j].on && v->layers[l].lora[j].r > r)
				r = v->layers[l].lora[j].r;
	int half = o->precision != FT_CUDA_F32;
	double chunk = (double)(((size_t)1 << 26) / (size_t)V);
	if (chunk < 1) chunk = 1;
	if (chunk > N) chunk = N;
	double sets = v->gradient_checkpointing ? 1 : L;
	fused_terms f = fused_of(v);
	double wy = mi > f.wq ? mi : f.wq;
	if (f.wg > wy) wy = f.wg;
	/* ln1 and ln2 (the normed inputs of q|k|v and gate|up) and the MLP
	 * hidden in the activation type: 2 bytes in the half modes */
	double s = half ? 2 : 4;
	want_t w;
	w.weights = half ? 2 * (nmat + f.fa) + 4 * (nvec - f.fa) : 4 * (nmat + nvec);
	w.master = half ? 4 * (tmat + f.fat) : 0;
	w.grads = 4 * (tmat + tvec);
	w.optim = 8 * (tmat + tvec);
	/* the q|k|v and gate|up outputs and attention's output in the half
	 * type when training in the half modes (ft_cu_proj_type) */
	w.acts = sets * N * (2 * s * D + s * (qd + f.wq + f.wg) + 4 * (D + v->Hq + 2 + 2 * r)) +
		 4 * (L + 1) * N * D + 4 * N * (D + 1);
	/* the MLP hidden (F) in the activation type, its gradient (F) fp32 */
	/* dqkv: also gate|up's gradients with half outputs */
	double wd = half && f.wg > f.wq ? f.wg : f.wq;
	w.scratch = 4 * N * (5 * D + qd + wd + F + 3 * mi + (r > 1 ? r : 1) + v->Hq +
			     v->hd + 8) + s * N * F +
		    4 * chunk * V + (half ? 2 * chunk * V + 2 * (N * mi + (N * wy > r * mi ? N * wy : r * mi)) : 0) +
		    32.0 * 1024 * 1024 + 1024 * ntens + 4.0 * FT_COLSUM_CHUNKS * mi;
	return w;
}

static void check(const char *what, const ft_cuda_view *v, const ft_cuda_opts *o,
		  double nmat, double nvec, double tmat, double tvec, double ntens, int nbuf)
{
	ft_cuda_plan p;
	int rc = ft_cuda_plan_memory(v, o, &p);
	if (!ok(rc == 0, "%s: plan%s%s", what, rc ? ": " : "", rc ? ft_errmsg() : ""))
		return;
	want_t w = formula(v, o, nmat, nvec, tmat, tvec, ntens);
	double got[6] = { p.weights, p.master, p.grads, p.optim, p.acts, p.scratch };
	double exp_[6] = { w.weights, w.master, w.grads, w.optim, w.acts, w.scratch };
	const char *nm[6] = { "weights", "masters", "grads", "AdamW", "activations", "scratch" };
	double slack = 256.0 * nbuf;
	int good = 1;
	for (int i = 0; i < 6; i++)
		if (got[i] < exp_[i] || got[i] > exp_[i] + slack) {
			printf("# %s: %s %.0f, formula %.0f\n", what, nm[i], got[i], exp_[i]);
			good = 0;
		}
	size_t sum = p.weights + p.master + p.grads + p.optim + p.acts + p.scratch;
	char s[300];
	ft_cuda_plan_format(&p, s, sizeof s);
	ok(good && sum == p.total, "%s: plan matches docs/CUDA.md: %s", what, s);
}

static void tiny(void)
{
	ft_tune_opts o = { .type = FT_FT_FULL };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &o);
	ft_cuda_view v;
	if (!m || ft_cuda_view_of(m, &v) < 0) {
		ok(0, "tiny-llama view: %s", ft_errmsg());
		return;
	}
	double nmat = 0, nvec = 0;
	for (size_t i = 0; i < v.nparams; i++) {
		/* matrices: embeddings and linear weights */
		int mat = strstr(v.params[i].name, "proj.weight") || strstr(v.params[i].name, "embed") ||
			  strstr(v.params[i].name, "lm_head");
		*(mat ? &nmat : &nvec) += v.params[i].n;
	}
	ft_cuda_opts co = { .precision = FT_CUDA_F32, .max_tokens = 32, .max_seq = 16 };
	int nbuf = (int)v.nparams * 4 + 100;
	check("tiny-llama full fp32", &v, &co, nmat, nvec, nmat, nvec, (double)v.nparams, nbuf);
	co.precision = FT_CUDA_BF16;
	check("tiny-llama full bf16", &v, &co, nmat, nvec, nmat, nvec, (double)v.nparams, nbuf);
	v.gradient_checkpointing = 1;
	check("tiny-llama full bf16 checkpointing", &v, &co, nmat, nvec, nmat, nvec, (double)v.nparams, nbuf);
	co.max_seq = 64;
	ft_cuda_plan p;
	ok(ft_cuda_plan_memory(&v, &co, &p) < 0 && strstr(ft_errmsg(), "max_seq"),
	   "rows longer than max_tokens refused: %s", ft_errmsg());
	ft_cuda_view_free(&v);
	ft_model_free(m);
}

/* The Llama-2-7B shape (D 4096, F 11008, 32 layers of 32 heads of 128,
 * vocabulary 32000) with fake pointers taken from *next for the
 * embeddings, head and final norm, and its layers allocated (zeroed). */
static void llama7b_view(ft_cuda_view *v, int ckpt, uintptr_t *np)
{
	static const int in[7] = { 4096, 4096, 4096, 4096, 4096, 4096, 11008 };
	static const int out[7] = { 4096, 4096, 4096, 4096, 11008, 11008, 4096 };
	uintptr_t next = *np;
	memset(v, 0, sizeof *v);
	v->V = 32000; v->D = 4096; v->F = 11008; v->L = 32; v->Hq = 32; v->Hk = 32; v->hd = 128;
	v->eps = 1e-5f;
	v->gradient_checkpointing = ckpt;
	memcpy(v->lin_in, in, sizeof in);
	memcpy(v->lin_out, out, sizeof out);
	v->wte.w = FAKE();
	v->lm_head.w = FAKE();
	v->norm.w = FAKE();
	v->layers = calloc(v->L, sizeof *v->layers);
	*np = next;
}

/* a trainable LoRA r=8, alpha 16 adapter on one module, fake pointers */
static void lora8(ft_cv_lora *lo, uintptr_t *np)
{
	uintptr_t next = *np;
	lo->on = 1;
	lo->r = 8;
	lo->scale = 2;
	lo->A.w = FAKE();
	lo->A.g = FAKE();
	lo->B.w = FAKE();
	lo->B.g = FAKE();
	*np = next;
}

/* A Llama-2-7B-shaped view with fake (never dereferenced) pointers:
 * LoRA r=8 on q_proj, v_proj, bf16, batch 4 x 1024. */
static void llama7b(int ckpt)
{
	ft_cuda_view v;
	uintptr_t next = 4096;
	llama7b_view(&v, ckpt, &next);
	const int *in = v.lin_in, *out = v.lin_out;
	double nmat = 2.0 * v.V * v.D, nvec = v.D, tvec = 0;
	for (int l = 0; l < v.L; l++) {
		ft_cv_layer *y = &v.layers[l];
		y->ln1.w = FAKE();
		y->ln2.w = FAKE();
		nvec += 2 * v.D;
		for (int j = 0; j < 7; j++) {
			y->lin[j].w = FAKE();
			nmat += (double)in[j] * out[j];
			if (j == 0 || j == 2) {
				lora8(&y->lora[j], &next);
				nvec += 8.0 * (in[j] + out[j]);
				tvec += 8.0 * (in[j] + out[j]);
			}
		}
	}
	ft_cuda_opts co = { .precision = FT_CUDA_BF16, .max_tokens = 4096, .max_seq = 1024 };
	check(ckpt ? "llama-2-7b lora r8 bf16 4x1024, checkpointing" : "llama-2-7b lora r8 bf16 4x1024",
	      &v, &co, nmat, nvec, 0, tvec, 3 + 32 * 13, 2000);
	ft_cuda_plan p;
	ft_cuda_plan_memory(&v, &co, &p);
	ok(p.weights > 12.5 * GIB && p.weights < 13 * GIB && p.total < (ckpt ? 30 : 60) * GIB,
	   "7B bf16 weights %.2f GiB, total %.2f GiB fits an 80 GiB card", p.weights / GIB,
	   p.total / GIB);
	/* flash attention: no [T, T] scratch, so one 4096-token row needs
	 * what four rows of 1024 do (the cuBLAS attention it replaced took
	 * 8 Hk T^2 bytes more: 4 GiB here) */
	ft_cuda_plan p4;
	co.max_seq = 4096;
	int rc = ft_cuda_plan_memory(&v, &co, &p4);
	ok(rc == 0 && p4.scratch == p.scratch && p4.total == p.total,
	   "attention scratch does not grow with T: 1x4096 scratch %.2f GiB = 4x1024 %.2f GiB",
	   p4.scratch / GIB, p.scratch / GIB);
	free(v.layers);
}

/* QLoRA: a Llama-2-7B-shaped view whose base linears are quantized
 * (fake host pointers; LoRA r=8 on all seven modules, gradient
 * checkpointing, 1 x 512 tokens, LLaMA-Factory's hardware table's run).
 * The weights category holds exactly the quantized bytes (each buffer
 * rounded up to 256) plus the embeddings, head, norms and adapters;
 * the dequantized tile and LLM.int8()'s buffers are scratch.  The
 * issue's bounds: <= 6 GB with 4-bit, <= 10 GB with 8-bit, in fp32 and
 * bf16, and lib/model's ft_quant_plan (the --help note) within 10% of it. */
static void llama7b_quant(int bits, ft_cuda_precision prec)
{
	ft_cuda_view v;
	uintptr_t next = 4096;
	llama7b_view(&v, 1, &next);
	const int *in = v.lin_in, *out = v.lin_out;
	ft_cv_qweight *qw = calloc((size_t)v.L * FT_CV_NLIN, sizeof *qw);
	v.qw = qw;
	double qbytes = 0, lora = 0, lin32 = 0;
	for (int l = 0; l < v.L; l++) {
		ft_cv_layer *y = &v.layers[l];
		y->ln1.w = FAKE();
		y->ln2.w = FAKE();
		for (int j = 0; j < 7; j++) {
			ft_cv_qweight *q = &qw[l * FT_CV_NLIN + j];
			double n = (double)in[j] * out[j], nb = ceil(n / 64);
			q->bits = bits, q->in = in[j], q->out = out[j];
			if (bits == 4)
				q->packed = (uint8_t *)FAKE(), q->qabsmax = (uint8_t *)FAKE();
			else
				q->cb = (int8_t *)FAKE(), q->scb = FAKE();
			qbytes += bits == 4 ? n / 2 + nb + 4 * ceil(nb / 256) : n + 4.0 * out[j];
			lin32 += 4 * n;
			lora8(&y->lora[j], &next);
			lora += 8.0 * (in[j] + out[j]);
		}
	}
	const char *pn = prec == FT_CUDA_BF16 ? "bf16" : "fp32";
	ft_cuda_opts co = { .precision = prec, .max_tokens = 512, .max_seq = 512 };
	ft_cuda_plan p;
	int rc = ft_cuda_plan_memory(&v, &co, &p);
	if (!ok(rc == 0, "7B %d-bit %s plan%s%s", bits, pn, rc ? ": " : "", rc ? ft_errmsg() : "")) {
		free(qw);
		free(v.layers);
		return;
	}
	double es = prec == FT_CUDA_BF16 ? 2 : 4, rest = es * (2.0 * v.V * v.D);
	double vec = 4.0 * (v.D + 2.0 * v.L * v.D), nbuf = 7.0 * v.L * 3 + 4 * 7 * v.L + 10;
	/* LoRA: fp32 weights; in bf16 the A of q,k,v,gate,up as half (their
	 * fp32 masters are the masters category) */
	double fa = fused_of(&v).fa, ad = prec == FT_CUDA_BF16 ? 4 * (lora - fa) + 2 * fa : 4 * lora;
	double want = qbytes + rest + vec + ad + 4 * 288;
	ok(p.weights >= want && p.weights <= want + 256 * nbuf,
	   "7B %d-bit %s: weights %.3f GiB = quantized linears %.3f GiB (float32: %.2f) + the "
	   "rest and adapters (%.3f GiB expected)", bits, pn, p.weights / GIB, qbytes / GIB,
	   lin32 / GIB, want / GIB);
	/* the scratch: the same view unquantized plans the dequantized tile
	 * (2^24 elements of the operand type) and, for 8-bit, LLM.int8()'s
	 * buffers (mi = F: outlier flags and columns; N: row scales; N x mi
	 * activations; N x 4096 rows of product and int32 sums) less, and
	 * the grad-norm partials of the 7 L float32 linears more */
	ft_cuda_view u = v;
	u.qw = NULL;
	for (int l = 0; l < v.L; l++)
		for (int j = 0; j < 7; j++)
			v.layers[l].lin[j].w = FAKE();
	ft_cuda_plan p0;
	rc = ft_cuda_plan_memory(&u, &co, &p0);
	double N = 512, q8 = bits == 8 ? 4 * (2.0 * v.F + 1 + N + N * v.F + 2 * N * 4096) : 0;
	double dsc = (double)p.scratch - (double)p0.scratch + 7.0 * v.L * 1024;   /* 128 doubles each */
	double tile = (double)(1 << 24) * (prec == FT_CUDA_BF16 ? 2 : 4);
	ok(rc == 0 && dsc >= tile + q8 && dsc <= tile + q8 + 256 * 8,
	   "7B %d-bit %s: scratch holds the %.0f MiB dequantized tile%s (%.1f MiB more than unquantized)",
	   bits, pn, tile / (1 << 20), bits == 8 ? " and LLM.int8()'s buffers" : "", dsc / (1 << 20));
	for (int l = 0; l < v.L; l++)
		for (int j = 0; j < 7; j++)
			v.layers[l].lin[j].w = NULL;
	double bound = bits == 4 ? 6e9 : 10e9;
	char s[300];
	ft_cuda_plan_format(&p, s, sizeof s);
	ok(p.total <= bound, "Llama-2-7B LoRA r=8 1x512 %d-bit %s plans %.2f GB <= %.0f GB: %s", bits,
	   pn, p.total / 1e9, bound / 1e9, s);
	ft_config c = { .arch = FT_ARCH_LLAMA, .vocab_size = 32000, .hidden_size = 4096,
			.intermediate_size = 11008, .num_hidden_layers = 32, .num_attention_heads = 32,
			.num_key_value_heads = 32, .head_dim = 128 };
	ft_quant_plan_t mp;
	ft_quant_plan(&c, bits, bits == 4, 8, FT_MOD_ALL_LINEAR, 512, 1, prec == FT_CUDA_BF16, &mp);
	ok(fabs(mp.total - (double)p.total) <= 0.1 * p.total,
	   "7B %d-bit %s: ft_quant_plan's %.2f GB (the --help note) within 10%% of the device plan "
	   "%.2f GB", bits, pn, mp.total / 1e9, p.total / 1e9);
	free(qw);
	free(v.layers);
}

int main(void)
{
	tiny();
	llama7b(0);
	llama7b(1);
	llama7b_quant(4, FT_CUDA_F32);
	llama7b_quant(4, FT_CUDA_BF16);
	llama7b_quant(8, FT_CUDA_F32);
	llama7b_quant(8, FT_CUDA_BF16);
	return tap_done();
}
