/* bench_qlora.c - a QLoRA training step against a LoRA step of the same
 * model on the CPU (lib/model: forward + backward, clipping and AdamW on
 * the adapters, as ft-train steps).  Built and run by run.sh.
 *
 *   bench_qlora HIDDEN LAYERS HEADS KV INTER VOCAB B T STEPS WARMUP MODE
 * MODE: lora, nf4 (4-bit NF4 with double quantization, LLaMA-Factory's
 * default), fp4, int8.
 *   bench_qlora dequant OUT IN N REPS
 * times dequantizing one weight against the sgemm it feeds.  Prints one JSON line; the fastest step counts (the
 * machine may be shared).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "util/error.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/layers.h"
#include "train/optim.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The dequantization alone against the product it feeds: one [out, in]
 * weight, N tokens; both timed in the same loop, so a shared machine slows
 * both alike (the ratio is what the QLoRA step adds per linear). */
static int dequant_cost(int out, int in, int N, int reps)
{
	float *w = malloc((size_t)out * in * sizeof(float)), *d = malloc((size_t)out * in * sizeof(float));
	float *x = malloc((size_t)N * in * sizeof(float)), *y = malloc((size_t)N * out * sizeof(float));
	for (size_t i = 0; i < (size_t)out * in; i++)
		w[i] = (float)((i * 2654435761u) % 1000) / 1000 - 0.5f;
	for (size_t i = 0; i < (size_t)N * in; i++)
		x[i] = (float)(i % 13) / 13;
	const char *names[3] = { "nf4", "fp4", "int8" };
	for (int v = 0; v < 3; v++) {
		ft_qweight q;
		ft_qweight_make(&q, w, out, in, v == 2 ? 8 : 4, v == 1, v == 0);
		double bd = 1e30, bg = 1e30;
		for (int r = 0; r < reps; r++) {
			double t = now();
			ft_qweight_rows(&q, 0, out, d);
			t = now() - t;
			if (t < bd) bd = t;
			t = now();
			ft_sgemm(0, 1, N, out, in, 1, x, in, d, in, 0, y, out);
			t = now() - t;
			if (t < bg) bg = t;
		}
		printf("{\"dequant\": \"%s\", \"out\": %d, \"in\": %d, \"N\": %d, \"dequant_s\": %.5f, "
		       "\"sgemm_s\": %.5f, \"ratio\": %.3f, \"weights_per_ns\": %.2f}\n", names[v], out, in, N,
		       bd, bg, bd / bg, (double)out * in / bd / 1e9);
		ft_qweight_free(&q);
	}
	free(w); free(d); free(x); free(y);
	return 0;
}

typedef struct {
	const char *mode;
	ft_model *m;
	ft_param **train;
	size_t nt;
	ft_adamw *opt;
	double best;
} runner;

static int runner_new(runner *r, const ft_config *c, const char *mode)
{
	ft_tune_opts o = { .type = FT_FT_LORA, .lora_rank = 8, .lora_alpha = 16,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	o.quantization_bit = !strcmp(mode, "int8") ? 8 : strcmp(mode, "lora") ? 4 : 0;
	o.quantization_fp4 = !strcmp(mode, "fp4");
	o.double_quantization = !strcmp(mode, "nf4");
	memset(r, 0, sizeof *r);
	r->mode = mode;
	r->best = 1e30;
	r->m = ft_model_from_config(c, &o);
	if (!r->m) {
		fprintf(stderr, "bench_qlora: %s\n", ft_errmsg());
		return -1;
	}
	r->train = calloc(ft_model_nparams(r->m), sizeof *r->train);
	for (size_t i = 0; i < ft_model_nparams(r->m); i++)
		if (ft_model_param(r->m, i)->trainable) r->train[r->nt++] = ft_model_param(r->m, i);
	ft_adamw_opts ao;
	ft_adamw_opts_default(&ao);
	r->opt = ft_adamw_new(r->train, r->nt, &ao);
	return 0;
}

/* One step as ft-train takes it; the fastest after warm-up counts. */
static int runner_step(runner *r, const ft_batch *b, int timed, double *loss)
{
	double t0 = now();
	ft_model_zero_grad(r->m);
	if (ft_model_forward_backward(r->m, b, 1.0f / b->n_label_tokens, loss, NULL) < 0) {
		fprintf(stderr, "bench_qlora: %s\n", ft_errmsg());
		return -1;
	}
	ft_clip_grad_norm(r->train, r->nt, 1.0);
	ft_adamw_step(r->opt, 1e-4);
	double dt = now() - t0;
	if (timed && dt < r->best)
		r->best = dt;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "dequant"))
		return dequant_cost(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	if (argc != 11) {
		fprintf(stderr, "usage: bench_qlora HIDDEN LAYERS HEADS KV INTER VOCAB B T STEPS WARMUP\n"
			"       bench_qlora dequant OUT IN N REPS\n");
		return 2;
	}
	ft_config c = { .arch = FT_ARCH_LLAMA, .hidden_size = atoi(argv[1]),
			.num_hidden_layers = atoi(argv[2]), .num_attention_heads = atoi(argv[3]),
			.num_key_value_heads = atoi(argv[4]), .intermediate_size = atoi(argv[5]),
			.vocab_size = atoi(argv[6]), .max_position_embeddings = 4096,
			.rms_norm_eps = 1e-5, .rope_theta = 10000, .rope_type = "default",
			.rope_factor = 1, .torch_dtype = "float32" };
	c.head_dim = c.hidden_size / c.num_attention_heads;
	int B = atoi(argv[7]), T = atoi(argv[8]), steps = atoi(argv[9]), warm = atoi(argv[10]);
	const char *modes[4] = { "lora", "nf4", "fp4", "int8" };
	runner r[4];
	for (int k = 0; k < 4; k++)
		if (runner_new(&r[k], &c, modes[k]) < 0)
			return 1;
	ft_batch b = { .B = B, .T = T };
	b.input_ids = malloc((size_t)B * T * 4);
	b.labels = malloc((size_t)B * T * 4);
	unsigned s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 1103515245u + 12345u;
		b.input_ids[i] = b.labels[i] = (int32_t)((s >> 8) % (unsigned)c.vocab_size);
	}
	b.n_label_tokens = (int64_t)B * (T - 1);
	/* the modes take turns step by step, so a shared machine's load falls
	 * on all of them alike */
	double loss[4] = { 0 };
	for (int st = 0; st < warm + steps; st++)
		for (int k = 0; k < 4; k++)
			if (runner_step(&r[k], &b, st >= warm, &loss[k]) < 0)
				return 1;
	for (int k = 0; k < 4; k++) {
		printf("{\"mode\": \"%s\", \"step_s\": %.4f, \"tokens_per_s\": %.1f, \"vs_lora\": %.3f, "
		       "\"resident_bytes\": %.0f, \"fp32_bytes\": %.0f, \"loss\": %.4f}\n", modes[k], r[k].best,
		       B * T / r[k].best, r[k].best / r[0].best, ft_model_resident_bytes(r[k].m),
		       ft_config_weight_bytes(&c), loss[k] / b.n_label_tokens);
		ft_adamw_free(r[k].opt);
		free(r[k].train);
		ft_model_free(r[k].m);
	}
	free(b.input_ids); free(b.labels);
	return 0;
}
