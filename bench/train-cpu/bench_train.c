/* bench_train.c - times full fine-tuning steps of a Llama-shaped model on
 * the CPU through lib/model/model.h (forward + backward) and lib/train/optim.h (the
 * AdamW step ft-train takes, as torch.optim.AdamW),
 * or measures the machine's sgemm rate.  Built and run by run.sh.
 *
 *   bench_train sgemm N REPS
 *   bench_train train HIDDEN LAYERS HEADS KV_HEADS INTER VOCAB B T STEPS WARMUP [lora]
 * prints one JSON line.  "lora": LoRA rank 8, alpha 16 on every linear
 * module (LLaMA-Factory's lora_target all) instead of full fine-tuning;
 * GFLOP/s are then counted as 4N (forward and input gradients of the
 * frozen weights) instead of 6N.
 */
#include <cblas.h>   /* built with -iquote lib, so <sched.h> is the system's */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "util/error.h"
#include "model/layers.h"
#include "model/model.h"
#include "train/optim.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int sgemm_rate(int n, int reps)
{
	float *a = malloc((size_t)n * n * 4), *b = malloc((size_t)n * n * 4), *c = malloc((size_t)n * n * 4);
	for (size_t i = 0; i < (size_t)n * n; i++)
		a[i] = b[i] = (float)(i % 7) * 0.1f;
	/* OpenBLAS's own threading (ft_sgemm would split over OpenMP) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
	double best = 1e30;   /* the machine may be shared: best of reps */
	for (int r = 0; r < reps; r++) {
		double t = now();
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
		t = now() - t;
		if (t < best)
			best = t;
	}
	printf("{\"sgemm_n\": %d, \"gflops\": %.1f}\n", n, 2.0 * n * n * n / best / 1e9);
	free(a); free(b); free(c);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "sgemm"))
		return sgemm_rate(atoi(argv[2]), atoi(argv[3]));
	int lora = argc == 13 && !strcmp(argv[12], "lora");
	if ((argc != 12 && !lora) || strcmp(argv[1], "train")) {
		fprintf(stderr, "usage: bench_train sgemm N REPS | train HIDDEN LAYERS HEADS "
			"KV INTER VOCAB B T STEPS WARMUP [lora]\n");
		return 2;
	}
	ft_config c = { .arch = FT_ARCH_LLAMA, .hidden_size = atoi(argv[2]),
			.num_hidden_layers = atoi(argv[3]), .num_attention_heads = atoi(argv[4]),
			.num_key_value_heads = atoi(argv[5]), .intermediate_size = atoi(argv[6]),
			.vocab_size = atoi(argv[7]), .max_position_embeddings = 4096,
			.rms_norm_eps = 1e-5, .rope_theta = 10000, .rope_type = "default",
			.rope_factor = 1, .torch_dtype = "float32" };
	c.head_dim = c.hidden_size / c.num_attention_heads;
	int B = atoi(argv[8]), T = atoi(argv[9]), steps = atoi(argv[10]), warm = atoi(argv[11]);
	ft_tune_opts o = { .type = FT_FT_FULL, .seed = 1 };
	if (lora)
		o = (ft_tune_opts){ .type = FT_FT_LORA, .lora_rank = 8, .lora_alpha = 16,
				    .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = ft_model_from_config(&c, &o);
	if (!m) {
		fprintf(stderr, "bench_train: %s\n", ft_errmsg());
		return 1;
	}
	size_t np = 0, nemb = (size_t)c.vocab_size * c.hidden_size;
	/* the optimizer ft-train uses (lib/train/optim.c), as torch.optim.AdamW */
	ft_param **train = calloc(ft_model_nparams(m), sizeof *train);
	size_t nt = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		np += p->n;
		if (p->trainable) train[nt++] = p;
	}
	ft_adamw_opts ao;
	ft_adamw_opts_default(&ao);
	ao.weight_decay = 0.01;
	ft_adamw *opt = ft_adamw_new(train, nt, &ao);
	ft_batch b = { .B = B, .T = T };
	b.input_ids = malloc((size_t)B * T * 4);
	b.labels = malloc((size_t)B * T * 4);
	unsigned s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 1103515245u + 12345u;
		b.input_ids[i] = b.labels[i] = (int32_t)((s >> 8) % (unsigned)c.vocab_size);
	}
	b.n_label_tokens = (int64_t)B * (T - 1);
	double loss = 0, *times = malloc(steps * sizeof(double));
	for (int st = 0; st < warm + steps; st++) {
		double t0 = now();
		ft_model_zero_grad(m);
		if (ft_model_forward_backward(m, &b, 1.0f / b.n_label_tokens, &loss, NULL) < 0) {
			fprintf(stderr, "bench_train: %s\n", ft_errmsg());
			return 1;
		}
		ft_clip_grad_norm(train, nt, 1.0);   /* max_grad_norm, as ft-train */
		ft_adamw_step(opt, 1e-5);
		if (st >= warm)
			times[st - warm] = now() - t0;
	}
	/* fastest step: the machine may be shared with other work */
	qsort(times, steps, sizeof *times, cmp_double);
	double dt = times[0], tps = B * T / dt;
	free(times);
	printf("{\"impl\": \"ft\", \"params\": %zu, \"params_no_emb\": %zu, \"tokens_per_s\": %.1f, "
	       "\"step_s\": %.4f, \"gflops\": %.1f, \"loss\": %.4f}\n", np,
	       np - nemb * (c.tie_word_embeddings ? 1 : 2), tps, dt, (lora ? 4.0 : 6.0) * np * tps / 1e9,
	       loss / b.n_label_tokens);
	ft_adamw_free(opt);
	free(train); free(b.input_ids); free(b.labels);
	ft_model_free(m);
	return 0;
}
