/* bench_gpu.c - the ft side of bench/train-gpu: training steps of a
 * Llama-shaped model through the CUDA backend (lib/cuda/ft_cuda.h) on
 * random tokens; prints one JSON line like torch_gpu.py.
 *
 * usage: bench_gpu MODE PREC HIDDEN LAYERS HEADS KV INTER VOCAB B T STEPS WARMUP CKPT
 *   MODE lora (r=8, alpha 16, q_proj,v_proj), qlora4 / qlora8 (the same LoRA on
 *   a base quantized as --quantization_bit 4 (NF4, double quantization) or
 *   8), or full; PREC fp32 bf16 fp16.
 * It stands in for `ft-train --device cuda` until the trainer drives the
 * backend: the same calls per step (zero_grad, forward_backward, step).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cuda/ft_cuda.h"
#include "util/error.h"
#include "model/model.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc != 14) {
		fprintf(stderr, "usage: bench_gpu lora|qlora4|qlora8|full fp32|bf16|fp16 HIDDEN LAYERS HEADS KV "
			"INTER VOCAB B T STEPS WARMUP CKPT\n");
		return 2;
	}
	int qbits = !strcmp(argv[1], "qlora4") ? 4 : !strcmp(argv[1], "qlora8") ? 8 : 0;
	int lora = !strcmp(argv[1], "lora") || qbits;
	ft_cuda_precision prec = !strcmp(argv[2], "bf16") ? FT_CUDA_BF16 :
				 !strcmp(argv[2], "fp16") ? FT_CUDA_F16 : FT_CUDA_F32;
	ft_config c = { .arch = FT_ARCH_LLAMA, .hidden_size = atoi(argv[3]),
			.num_hidden_layers = atoi(argv[4]), .num_attention_heads = atoi(argv[5]),
			.num_key_value_heads = atoi(argv[6]), .intermediate_size = atoi(argv[7]),
			.vocab_size = atoi(argv[8]), .max_position_embeddings = 4096,
			.rms_norm_eps = 1e-5, .rope_theta = 10000, .rope_type = "default",
			.rope_factor = 1, .torch_dtype = "bfloat16" };
	c.head_dim = c.hidden_size / c.num_attention_heads;
	int B = atoi(argv[9]), T = atoi(argv[10]), steps = atoi(argv[11]), warm = atoi(argv[12]);
	ft_tune_opts o = { .type = lora ? FT_FT_LORA : FT_FT_FULL, .lora_rank = 8,
			   .lora_alpha = 16, .lora_targets = FT_MOD_Q | FT_MOD_V, .seed = 1,
			   .gradient_checkpointing = atoi(argv[13]), .quantization_bit = qbits,
			   .double_quantization = 1 };
	double t0 = now();
	ft_model *m = ft_model_from_config(&c, &o);
	if (!m) {
		fprintf(stderr, "bench_gpu: %s\n", ft_errmsg());
		return 1;
	}
	double t_init = now() - t0;
	ft_cuda_opts co = { .precision = prec, .max_tokens = B * T, .max_seq = T };
	t0 = now();
	ft_cuda_model *dm = ft_cuda_model_new(m, &co);
	if (!dm) {
		fprintf(stderr, "bench_gpu: %s\n", ft_errmsg());
		return 1;
	}
	double t_up = now() - t0;
	char plan[300];
	ft_cuda_plan_format(ft_cuda_model_plan(dm), plan, sizeof plan);
	fprintf(stderr, "bench_gpu: host init %.1fs, upload %.1fs, plan %s\n", t_init, t_up, plan);
	size_t np = 0, ntrain = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		np += p->n;
		ntrain += p->trainable ? p->n : 0;
	}
	int32_t *ids = malloc((size_t)B * T * 4);
	unsigned s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 1103515245u + 12345u;
		ids[i] = (int32_t)((s >> 8) % (unsigned)c.vocab_size);
	}
	ft_cuda_batch b = { B, T, ids, ids, NULL, NULL, NULL };
	float gs = 1.0f / ((float)B * (T - 1));
	ft_cuda_adamw_opts ao = { 0.9, 0.999, 1e-8, 0.01 };
	double loss = 0, *times = malloc(steps * sizeof(double));
	for (int st = 0; st < warm + steps; st++) {
		double ts = now(), gn;
		int skipped;
		if (ft_cuda_zero_grad(dm) < 0 || ft_cuda_forward_backward(dm, &b, gs, &loss, NULL) < 0 ||
		    ft_cuda_step(dm, &ao, 1e-5, 1.0, &gn, &skipped) < 0 || ft_cuda_sync(dm) < 0) {
			fprintf(stderr, "bench_gpu: step %d: %s\n", st, ft_errmsg());
			return 1;
		}
		if (st >= warm)
			times[st - warm] = now() - ts;
	}
	qsort(times, steps, sizeof *times, cmp_double);
	double dt = times[steps / 2];   /* median step */
	printf("{\"impl\": \"ft\", \"params\": %zu, \"trainable\": %zu, \"tokens_per_s\": %.1f, "
	       "\"step_s\": %.4f, \"peak_bytes\": %zu, \"loss\": %.4f}\n", np, ntrain,
	       B * T / dt, dt, ft_cuda_peak_bytes(dm), loss * gs);
	free(times);
	free(ids);
	ft_cuda_model_free(dm);
	ft_model_free(m);
	return 0;
}
