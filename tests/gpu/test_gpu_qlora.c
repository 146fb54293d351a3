/* test_gpu_qlora.c - QLoRA on the device model (lib/cuda/quant.cu)
 * against the bitsandbytes + PEFT fixtures of tests/fixtures/quant (the
 * ones tests/unit/test_quant.c holds the CPU path to) and the CPU path.
 * Built by `make gpu-tests`, run by tests/gpu/run.sh; without a CUDA
 * device it prints a TAP skip and exits 0.
 *
 * Tolerances (max |ours - ref| / max |ref| per tensor):
 *   fp32: logits, LoRA gradients 1e-4 and summed loss relative 1e-5, as
 *         the CPU test: the dequantized weights are bit-equal (the
 *         kernels' source is checked bit for bit in tests/emu/
 *         test_quant_emu.cc), the GEMMs sum in cuBLAS's order;
 *   bf16: logits 3e-2, loss relative 1e-2, gradients 1e-1 (the
 *         unquantized bf16 bounds of test_gpu_parity.c: the dequantized
 *         tile is rounded to bf16 as an unquantized weight would be);
 *   fp32 LLM.int8() eval logits: 1e-3.  LLM.int8() is discontinuous in
 *         its input: x is rounded to fp16, then each row to int8 steps of
 *         absmax/127.  The device sums its GEMMs in another order than the
 *         CPU/PyTorch (cuBLAS, the fused q|k|v), which moves x by ~1e-7
 *         relative and so moves an fp16 rounding with probability ~2^11 *
 *         1e-7 per element: over the ~10^5 inputs of the layers a few
 *         inputs land one int8 step (up to 1/127 of their row's absmax)
 *         away from bnb's, each moving the logits by ~1e-4 of their
 *         largest (measured on the host emulation: llama 1.97e-4, qwen2
 *         4e-7, i.e. no flip; the CPU path, summing as PyTorch does on
 *         the same BLAS, 4.9e-7).  The loss keeps 1e-5: a flip moves it
 *         by ~1e-7 relative (measured 1.9e-7);
 *   gradient checkpointing: the same GEMMs recomputed, 1e-6;
 *   KV-cache decoding (ft_cuda_infer) vs the CPU's ft_infer_forward,
 *         same calls (so LLM.int8() sees the same rows): 1e-4.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "st_test.h"
#include "gpu_test.h"
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "model/infer.h"
#include "model/model.h"
#include "util/error.h"
#include "format/safetensors.h"

#define FX "tests/fixtures/quant/"
#define PAR "tests/fixtures/parity/"

static int32_t *i32(const ft_st *st, const char *name, int *B, int *T)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t)
		return NULL;
	*B = (int)t->shape[0], *T = (int)t->shape[1];
	int32_t *v = malloc(t->nbytes);
	memcpy(v, t->data, t->nbytes);
	return v;
}

static ft_model *qmodel(const char *kind, int bits, int fp4, int dbl, int ckpt)
{
	char dir[128], ad[128];
	snprintf(dir, sizeof dir, "tests/fixtures/models/tiny-%s", kind);
	snprintf(ad, sizeof ad, PAR "%s-lora-grad", kind);
	ft_tune_opts o = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 7, .quantization_bit = bits,
			   .quantization_fp4 = fp4, .double_quantization = dbl,
			   .gradient_checkpointing = ckpt };
	ft_model *m = ft_model_load(dir, &o);
	if (m && ft_model_load_adapter(m, ad) < 0) {
		ft_model_free(m);
		return NULL;
	}
	return m;
}


/* The LoRA gradients now in m's g arrays against the fixture's (worst). */
static double grads_err(ft_model *m, const ft_st *st, int *n)
{
	double worst = 0;
	*n = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->trainable)
			continue;
		char k[256];
		snprintf(k, sizeof k, "grad.%s", p->name);
		float *r = tensor_f32(st, k, p->n);
		worst = fmax(worst, r ? max_rel(p->g, r, p->n) : INFINITY);
		free(r);
		(*n)++;
	}
	return worst;
}

/* As test_quant.c's test_model, on the device: eval logits and loss
 * (LLM.int8() for int8_eval), and for train fixtures the training loss
 * and every LoRA gradient. */
static void model_case(const char *kind, const char *tag, int bits, int fp4, int dbl, int train,
		       ft_cuda_precision prec)
{
	double tl = prec == FT_CUDA_F32 ? (bits == 8 && !train ? 1e-3 : 1e-4) : 3e-2, tloss = prec == FT_CUDA_F32 ? 1e-5 : 1e-2;
	double tg = prec == FT_CUDA_F32 ? 1e-4 : 1e-1;
	char path[160];
	snprintf(path, sizeof path, FX "%s-%s.safetensors", kind, tag);
	ft_st *st = ft_st_open(path);
	snprintf(path, sizeof path, PAR "%s-lora-grads.safetensors", kind);
	ft_st *bs = ft_st_open(path);
	ft_model *m = qmodel(kind, bits, fp4, dbl, 0);
	ft_cuda_batch b = { 0 };
	int32_t *ids = bs ? i32(bs, "batch.input_ids", &b.B, &b.T) : NULL;
	int32_t *lab = bs ? i32(bs, "batch.labels", &b.B, &b.T) : NULL;
	b.input_ids = ids, b.labels = lab;
	ft_cuda_model *dm = NULL;
	if (!ok(st && bs && m && ids && lab, "%s %s: fixtures and quantized model%s%s", kind, tag,
		m ? "" : ": ", m ? "" : ft_errmsg()))
		goto out;
	size_t N = (size_t)b.B * b.T, V = ft_model_config(m)->vocab_size;
	ft_cuda_opts o = { .precision = prec, .max_tokens = (int)N, .max_seq = b.T };
	dm = ft_cuda_model_new(m, &o);
	if (!ok(dm != NULL, "%s %s %s: device model%s%s", kind, tag, pname(prec), dm ? "" : ": ",
		dm ? "" : ft_errmsg()))
		goto out;
	float want = 0, *lg = malloc(N * V * sizeof(float));
	const ft_st_tensor *tw = ft_st_find(st, "loss_sum");
	if (tw)
		ft_st_read_f32(tw, &want);
	double loss = 0;
	int64_t nt = 0;
	if (!train || bits == 4) {   /* 8-bit train-mode logits are MatMul8bitFp's: via the loss */
		int rc = ft_cuda_forward(dm, &b, lg, &loss, &nt);
		float *ref = tensor_f32(st, "logits", N * V);
		double e = rc == 0 && ref ? max_rel(lg, ref, N * V) : INFINITY;
		ok(e <= tl && rel_err(loss, want, 1e-6) <= tloss,
		   "%s %s %s: eval logits within %g of bnb (max rel %.3g), loss %.6f vs %.6f%s%s", kind,
		   tag, pname(prec), tl, e, loss, want, rc ? ": " : "", rc ? ft_errmsg() : "");
		free(ref);
	}
	if (train) {
		int n = 0, rc = ft_cuda_zero_grad(dm) || ft_cuda_forward_backward(dm, &b, 1.0f, &loss, &nt) ||
			    ft_cuda_copy_grads_to_host(dm);
		double e = rc ? INFINITY : grads_err(m, st, &n);
		ok(rc == 0 && rel_err(loss, want, 1e-6) <= tloss && e <= tg && n == 28,
		   "%s %s %s: training loss %.6f vs %.6f, %d LoRA gradients within %g of PEFT on bnb "
		   "(max rel %.3g)%s%s", kind, tag, pname(prec), loss, want, n, tg, e, rc ? ": " : "",
		   rc ? ft_errmsg() : "");
	}
	free(lg);
out:
	ft_cuda_model_free(dm);
	ft_model_free(m);
	free(ids);
	free(lab);
	if (st) ft_st_close(st);
	if (bs) ft_st_close(bs);
}

/* Gradient checkpointing recomputes each layer through the same
 * quantized products: the gradients of the two runs agree. */
static void ckpt_case(const char *kind, int bits)
{
	char path[160];
	snprintf(path, sizeof path, PAR "%s-lora-grads.safetensors", kind);
	ft_st *bs = ft_st_open(path);
	ft_cuda_batch b = { 0 };
	int32_t *ids = bs ? i32(bs, "batch.input_ids", &b.B, &b.T) : NULL;
	int32_t *lab = bs ? i32(bs, "batch.labels", &b.B, &b.T) : NULL;
	b.input_ids = ids, b.labels = lab;
	ft_model *m[2] = { qmodel(kind, bits, 0, 1, 0), qmodel(kind, bits, 0, 1, 1) };
	double loss[2] = { 0, 0 };
	int rc = !ids || !lab || !m[0] || !m[1];
	for (int k = 0; !rc && k < 2; k++) {
		ft_cuda_opts o = { .precision = FT_CUDA_F32, .max_tokens = b.B * b.T, .max_seq = b.T };
		ft_cuda_model *dm = ft_cuda_model_new(m[k], &o);
		int64_t nt;
		rc = !dm || ft_cuda_zero_grad(dm) || ft_cuda_forward_backward(dm, &b, 1.0f, &loss[k], &nt) ||
		     ft_cuda_copy_grads_to_host(dm);
		ft_cuda_model_free(dm);
	}
	double worst = 0;
	for (size_t i = 0; !rc && i < ft_model_nparams(m[0]); i++) {
		ft_param *a = ft_model_param(m[0], i), *c = ft_model_param(m[1], i);
		if (a->trainable)
			worst = fmax(worst, max_rel(c->g, a->g, a->n));
	}
	ok(!rc && worst <= 1e-6 && rel_err(loss[1], loss[0], 1e-6) <= 1e-6,
	   "%s %d-bit: gradient checkpointing on the device gives the same loss and LoRA gradients "
	   "(max rel %.3g)%s%s", kind, bits, worst, rc ? ": " : "", rc ? ft_errmsg() : "");
	ft_model_free(m[0]);
	ft_model_free(m[1]);
	free(ids);
	free(lab);
	if (bs) ft_st_close(bs);
}

/* ft-generate's device decoder on a quantized model: one prompt (no
 * padding, so LLM.int8() sees the same rows on both sides) prefilled,
 * then decoded a token at a time, against the CPU's KV cache. */
static void infer_case(const char *kind, int bits)
{
	ft_model *m = qmodel(kind, bits, 0, 1, 0);
	char path[160];
	snprintf(path, sizeof path, PAR "%s-lora-grads.safetensors", kind);
	ft_st *bs = ft_st_open(path);
	int B, T;
	int32_t *ids = bs ? i32(bs, "batch.input_ids", &B, &T) : NULL;
	if (!ok(m && ids && T >= 8, "%s %d-bit: model and prompt for decoding", kind, bits))
		goto out;
	int V = ft_model_config(m)->vocab_size, P = T / 2, row0[64] = { 0 }, want[64] = { 0 };
	if (P <= 64)
		want[P - 1] = 1;   /* the prompt's last logits */
	ft_cuda_infer_opts io = { .precision = FT_CUDA_F32, .rows = 1, .cap = T, .max_prompt = P };
	ft_cuda_infer *c = ft_cuda_infer_new(m, &io);
	ft_kvcache *kv = ft_kvcache_new(m, 1, T);
	float *cpu = malloc(V * sizeof(float)), *gpu = malloc(V * sizeof(float));
	int rc = !c || !kv || P > 64 ||
		 ft_infer_forward(m, kv, ids, row0, P, want, cpu) < 0 ||
		 ft_cuda_infer_forward(c, ids, row0, P, want, gpu) < 0;
	double worst = rc ? INFINITY : max_rel(gpu, cpu, V);
	int z = 0, one = 1;
	for (int t = P; !rc && t < T; t++) {
		rc = ft_infer_forward(m, kv, ids + t, &z, 1, &one, cpu) < 0 ||
		     ft_cuda_infer_forward(c, ids + t, &z, 1, &one, gpu) < 0;
		if (!rc)
			worst = fmax(worst, max_rel(gpu, cpu, V));
	}
	ok(!rc && worst <= 1e-4, "%s %d-bit: device decoding (prefill %d + %d steps) within 1e-4 of "
	   "the CPU's (max rel %.3g)%s%s", kind, bits, P, T - P, worst, rc ? ": " : "",
	   rc ? ft_errmsg() : "");
	free(cpu);
	free(gpu);
	ft_kvcache_free(kv);
	ft_cuda_infer_free(c);
out:
	ft_model_free(m);
	free(ids);
	if (bs) ft_st_close(bs);
}

int main(void)
{
	if (!gpu_test_start())
		return 0;
	const char *kinds[2] = { "llama", "qwen2" };
	for (int k = 0; k < 2; k++)
		for (int p = 0; p < 2; p++) {
			ft_cuda_precision prec = p ? FT_CUDA_BF16 : FT_CUDA_F32;
			model_case(kinds[k], "nf4_dq", 4, 0, 1, 1, prec);
			model_case(kinds[k], "fp4", 4, 1, 0, 1, prec);
			model_case(kinds[k], "int8_train", 8, 0, 0, 1, prec);
			model_case(kinds[k], "int8_eval", 8, 0, 0, 0, prec);
		}
	ckpt_case("llama", 4);
	ckpt_case("qwen2", 8);
	infer_case("llama", 4);
	infer_case("qwen2", 8);
	return tap_done();
}
