/* bench_pref.c - a DPO step with LoRA against an sft step on the same
 * tokens, on the CPU, through the same library calls ft-train makes:
 *
 *   sft: ft_model_forward_backward over the 2P rows (chosen and rejected
 *        rows as plain sft rows), then zero_grad;
 *   dpo: the preference binding's forward_backward (lib/train/pref.c): one
 *        no-graph reference forward with the adapters disabled, the
 *        policy's forward with activations kept, one backward pass.
 *
 * The AdamW update is the same in both and left out.  Random tokens, a
 * prompt of T/4 tokens without labels, every row full length.
 *
 *   bench_pref HIDDEN LAYERS HEADS KV INTER VOCAB PAIRS T STEPS
 * prints one JSON line: best step seconds of each and their ratio.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model/model.h"
#include "train/pref.h"
#include "util/error.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 10) {
		fprintf(stderr, "usage: bench_pref HIDDEN LAYERS HEADS KV INTER VOCAB PAIRS T STEPS\n");
		return 2;
	}
	ft_config c = { .arch = FT_ARCH_LLAMA, .hidden_size = atoi(argv[1]),
			.num_hidden_layers = atoi(argv[2]), .num_attention_heads = atoi(argv[3]),
			.num_key_value_heads = atoi(argv[4]), .intermediate_size = atoi(argv[5]),
			.vocab_size = atoi(argv[6]), .max_position_embeddings = 4096,
			.rms_norm_eps = 1e-5, .rope_theta = 10000, .rope_type = "default",
			.rope_factor = 1, .torch_dtype = "float32" };
	c.head_dim = c.hidden_size / c.num_attention_heads;
	int P = atoi(argv[7]), T = atoi(argv[8]), steps = atoi(argv[9]);
	ft_tune_opts o = { .type = FT_FT_LORA, .lora_rank = 8, .lora_alpha = 16,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = ft_model_from_config(&c, &o);
	if (!m) {
		fprintf(stderr, "bench_pref: %s\n", ft_errmsg());
		return 1;
	}
	/* LoRA B is zero at init: give it values so policy != reference */
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (strstr(p->name, "lora_B"))
			for (size_t k = 0; k < p->n; k++) p->w[k] = 0.01f * (float)((k * 7919) % 13) - 0.06f;
	}
	int B = 2 * P;
	size_t N = (size_t)B * T;
	ft_batch b = { .B = B, .T = T, .pairwise = 1 };
	b.input_ids = malloc(N * sizeof(int32_t));
	b.labels = malloc(N * sizeof(int32_t));
	srand(7);
	for (size_t i = 0; i < N; i++) {
		b.input_ids[i] = rand() % c.vocab_size;
		b.labels[i] = (int)(i % T) < T / 4 ? -100 : b.input_ids[i];
	}
	for (int r = 1; r < B; r += 2)   /* a pair shares its prompt */
		memcpy(b.input_ids + (size_t)r * T, b.input_ids + (size_t)(r - 1) * T, (T / 4) * sizeof(int32_t));
	ft_pref_opts po;
	ft_pref_opts_default(&po, FT_PREF_DPO);
	ft_pref *pf = ft_pref_new(m, NULL, &po);
	ft_train_model tm = ft_pref_train_model(pf);
	double best_sft = 1e30, best_dpo = 1e30, ls;
	int64_t n;
	for (int s = 0; s < steps + 1; s++) {   /* the first round warms up */
		double t = now();
		ft_model_forward_backward(m, &b, 1.0f / 1000, &ls, &n);
		ft_model_zero_grad(m);
		t = now() - t;
		if (s && t < best_sft) best_sft = t;
		t = now();
		if (tm.forward_backward(tm.self, &b, 1.0f, &ls, &n) < 0) {
			fprintf(stderr, "bench_pref: %s\n", ft_errmsg());
			return 1;
		}
		tm.zero_grad(tm.self);
		t = now() - t;
		if (s && t < best_dpo) best_dpo = t;
	}
	printf("{\"pairs\": %d, \"T\": %d, \"sft_s\": %.4f, \"dpo_s\": %.4f, \"ratio\": %.3f}\n", P, T,
	       best_sft, best_dpo, best_dpo / best_sft);
	ft_pref_free(pf);
	ft_model_free(m);
	free(b.input_ids);
	free(b.labels);
	return 0;
}
