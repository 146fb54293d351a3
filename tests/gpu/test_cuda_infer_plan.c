/* test_cuda_infer_plan.c - the memory plan of the GPU decoder
 * (ft_cuda_infer_plan_memory, lib/cuda/infer.cu), host only (runs without
 * a GPU, like test_cuda_plan): its byte counts against the formula in
 * docs/CUDA-STAGES.md ("KV-cache decoding"), computed independently here, for
 * the tiny fixture model with a LoRA adapter (whose gradients the
 * inference plan must not reserve) and for a Llama-2-7B-shaped view.  Each
 * device buffer is rounded up to 256 bytes, so a category may exceed the
 * formula by at most 256 bytes per buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "plan_fused.h"
#include "tap.h"
#include "cuda/ft_cuda.h"
#include "util/error.h"
#include "model/model.h"
#include "model/kernels.h"

#define GIB (1024.0 * 1024 * 1024)

typedef struct { double weights, acts, scratch, kv, decode; } want_t;

/* docs/CUDA-STAGES.md: N = rows * max_prompt, T = max_prompt. */
static want_t formula(const ft_cuda_view *v, const ft_cuda_infer_opts *o, double nmat,
		      double nvec, double ntens)
{
	double N = (double)o->rows * o->max_prompt, D = v->D, F = v->F;
	double V = v->V, qd = (double)v->Hq * v->hd, kd = (double)v->Hk * v->hd, mi = D;
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
	fused_terms f = fused_of(v);
	double wy = mi > f.wq ? mi : f.wq;
	if (f.wg > wy) wy = f.wg;
	/* ln1, ln2, the MLP hidden, the q|k|v and gate|up outputs, attention's
	 * output and the KV cache: the activation type */
	double s = half ? 2 : 4;
	want_t w;
	w.weights = half ? 2 * (nmat + f.fa) + 4 * (nvec - f.fa) : 4 * (nmat + nvec);
	w.acts = N * (2 * s * D + s * (qd + f.wq + f.wg) + 4 * (D + v->Hq + 2 + 2 * r)) + 4 * 2 * N * D +
		 4 * N * (D + 1);
	w.scratch = 4 * N * (D + mi + v->Hq + v->hd + 8) + s * N * F + 4 * chunk * V +
		    (half ? 2 * chunk * V + 2 * N * (mi + wy) : 0) +
		    32.0 * 1024 * 1024 + 1024 * ntens + 4.0 * FT_COLSUM_CHUNKS * mi;
	w.kv = 2 * s * v->L * o->rows * o->cap * kd;
	w.decode = 4.0 * o->rows * v->Hq * o->cap + 2 * 4 * N;
	return w;
}

static void check(const char *what, const ft_cuda_view *v, const ft_cuda_infer_opts *o,
		  double nmat, double nvec, double ntens, int nbuf)
{
	ft_cuda_infer_plan p;
	int rc = ft_cuda_infer_plan_memory(v, o, &p);
	if (!ok(rc == 0, "%s: plan%s%s", what, rc ? ": " : "", rc ? ft_errmsg() : ""))
		return;
	want_t w = formula(v, o, nmat, nvec, ntens);
	double got[5] = { p.model.weights, p.model.acts, p.model.scratch, p.kv, p.decode };
	double exp_[5] = { w.weights, w.acts, w.scratch, w.kv, w.decode };
	const char *nm[5] = { "weights", "activations", "scratch", "KV cache", "decode" };
	double slack = 256.0 * nbuf;
	int good = p.model.master == 0 && p.model.grads == 0 && p.model.optim == 0;
	if (!good)
		printf("# %s: masters %zu, grads %zu, AdamW %zu reserved\n", what, p.model.master,
		       p.model.grads, p.model.optim);
	for (int i = 0; i < 5; i++)
		if (got[i] < exp_[i] || got[i] > exp_[i] + slack) {
			printf("# %s: %s %.0f, formula %.0f\n", what, nm[i], got[i], exp_[i]);
			good = 0;
		}
	size_t sum = p.model.total + p.kv + p.decode;
	char s[300];
	ft_cuda_infer_plan_format(&p, s, sizeof s);
	ok(good && sum == p.total && strstr(s, "KV cache"), "%s: plan matches docs/CUDA.md: %s",
	   what, s);
}

static void tiny(void)
{
	ft_tune_opts o = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_Q | FT_MOD_V };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &o);
	ft_cuda_view v;
	if (!m || ft_cuda_view_of(m, &v) < 0) {
		ok(0, "tiny-llama view: %s", ft_errmsg());
		return;
	}
	double nmat = 0, nvec = 0;
	for (size_t i = 0; i < v.nparams; i++) {
		int mat = strstr(v.params[i].name, "proj.weight") || strstr(v.params[i].name, "embed") ||
			  strstr(v.params[i].name, "lm_head");
		*(mat ? &nmat : &nvec) += v.params[i].n;
	}
	ft_cuda_infer_opts io = { .precision = FT_CUDA_F32, .rows = 3, .cap = 40, .max_prompt = 10 };
	int nbuf = (int)v.nparams * 4 + 100;
	check("tiny-llama lora fp32, 3 rows x 40", &v, &io, nmat, nvec, (double)v.nparams, nbuf);
	io.precision = FT_CUDA_BF16;
	check("tiny-llama lora bf16, 3 rows x 40", &v, &io, nmat, nvec, (double)v.nparams, nbuf);
	/* the cache at its element size: half of fp32's in bf16 and fp16 */
	ft_cuda_infer_plan p32, p16;
	for (int k = 0; k < 2; k++) {
		ft_cuda_infer_opts h = io;
		h.precision = k ? FT_CUDA_F16 : FT_CUDA_BF16;
		io.precision = FT_CUDA_F32;
		int e = ft_cuda_infer_plan_memory(&v, &io, &p32) | ft_cuda_infer_plan_memory(&v, &h, &p16);
		ok(e == 0 && p16.kv * 2 == p32.kv && p16.decode == p32.decode,
		   "%s: KV cache %zu bytes, fp32's %zu", k ? "fp16" : "bf16", p16.kv, p32.kv);
	}
	io.precision = FT_CUDA_BF16;
	/* the same shape for training reserves gradients and AdamW state */
	ft_cuda_opts to = { .precision = FT_CUDA_BF16, .max_tokens = 30, .max_seq = 10 };
	ft_cuda_plan tp;
	ft_cuda_infer_plan ip;
	int rc = ft_cuda_plan_memory(&v, &to, &tp) | ft_cuda_infer_plan_memory(&v, &io, &ip);
	ok(rc == 0 && tp.grads > 0 && ip.model.total < tp.total,
	   "the decoder's model part (%zu bytes) is smaller than training's (%zu)", ip.model.total,
	   tp.total);
	io.max_prompt = 41;
	rc = ft_cuda_infer_plan_memory(&v, &io, &ip);
	ok(rc < 0 && strstr(ft_errmsg(), "max_prompt"), "a prompt longer than the cache refused: %s",
	   ft_errmsg());
	io.max_prompt = 10, io.rows = 0;
	rc = ft_cuda_infer_plan_memory(&v, &io, &ip);
	ok(rc < 0 && strstr(ft_errmsg(), "rows 0"), "no rows refused");
	ft_cuda_view_free(&v);
	ft_model_free(m);
}

/* A Llama-2-7B-shaped view with fake (never dereferenced) pointers,
 * a LoRA r=8 on q_proj, v_proj; batch 8, prompts of 512, 128 new tokens. */
static void llama7b(ft_cuda_precision prec)
{
	ft_cuda_view v;
	memset(&v, 0, sizeof v);
	v.V = 32000; v.D = 4096; v.F = 11008; v.L = 32; v.Hq = 32; v.Hk = 32; v.hd = 128;
	v.eps = 1e-5f;
	int in[7] = { 4096, 4096, 4096, 4096, 4096, 4096, 11008 };
	int out[7] = { 4096, 4096, 4096, 4096, 11008, 11008, 4096 };
	memcpy(v.lin_in, in, sizeof in);
	memcpy(v.lin_out, out, sizeof out);
	uintptr_t next = 4096;
#define FAKE() ((float *)(next += 64))
	v.wte.w = FAKE();
	v.lm_head.w = FAKE();
	v.norm.w = FAKE();
	v.layers = calloc(v.L, sizeof *v.layers);
	double nmat = 2.0 * v.V * v.D, nvec = v.D;
	for (int l = 0; l < v.L; l++) {
		ft_cv_layer *y = &v.layers[l];
		y->ln1.w = FAKE();
		y->ln2.w = FAKE();
		nvec += 2 * v.D;
		for (int j = 0; j < 7; j++) {
			y->lin[j].w = FAKE();
			nmat += (double)in[j] * out[j];
			if (j == 0 || j == 2) {
				y->lora[j] = (ft_cv_lora){ 1, 8, 2, { FAKE(), FAKE() }, { FAKE(), FAKE() } };
				nvec += 8.0 * (in[j] + out[j]);
			}
		}
	}
	ft_cuda_infer_opts io = { .precision = prec, .rows = 8, .cap = 640, .max_prompt = 512 };
	check(prec == FT_CUDA_F32 ? "llama-2-7b lora fp32, 8 x (512 + 128)"
				  : "llama-2-7b lora bf16, 8 x (512 + 128)",
	      &v, &io, nmat, nvec, 3 + 32 * 13, 2000);
	ft_cuda_infer_plan p;
	ft_cuda_infer_plan_memory(&v, &io, &p);
	/* K and V: 2 * 32 layers * 8 rows * 640 * 4096 elements = 5 GiB in
	 * fp32, 2.5 GiB in bf16 */
	ok(p.kv == (size_t)2 * 32 * 8 * 640 * 4096 * (prec ? 2 : 4) && p.total < (prec ? 30 : 45) * GIB,
	   "7B: KV cache %.2f GiB, total %.2f GiB fits an 80 GiB card", p.kv / GIB, p.total / GIB);
	free(v.layers);
}

int main(void)
{
	tiny();
	llama7b(FT_CUDA_F32);
	llama7b(FT_CUDA_BF16);
	return tap_done();
}
