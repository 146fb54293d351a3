/* test_grpo_neftune.c - where ft's GRPO loop (train/grpo_loop.h) adds
 * NEFTune's noise, against tests/reference/make_grpo_neftune_fixtures.py:
 * TRL 1.16's GRPOTrainer noises every pass of the policy (its
 * training_step puts the model in train mode before generating), LoRA's
 * reference (the same model, adapters disabled) included, and not a
 * separate reference model (part 1 of the script, observed on a real
 * GRPOTrainer.train).  Part 2 is one step of TRL's own log-prob passes and
 * _compute_loss with ft's draws injected at TRL's positions; here the loop
 * runs the same step (fixed completions and rewards through its generate
 * and score callbacks) and its logged kl, entropy, clip ratios and loss
 * must be TRL's.  The kl of a noise-free reference is 35% lower: a loop
 * that skipped the reference's noise fails.  Part 3: the sampling
 * forwards, TRL's generate in train mode, against ft's CPU decoder with
 * the noise on (ft_model_set_gen_neftune), and the width rule.
 *
 * Tolerances: the log-probabilities come from a float32 forward whose
 * BLAS order differs from torch's (~1e-6 on |logp| <= log 256; the noise
 * is the same floats on both sides); the kl is a mean of
 * exp(ref - logp) - (ref - logp) - 1 over ~|ref - logp| < 1, whose
 * derivative |exp(d) - 1| < 2 passes a 1e-6 log-prob difference on as
 * < 2e-6 absolute, 1e-4 of the kl's 0.022; the entropy likewise (a mean of
 * 5.5).  The clip ratios are counts of tokens over 22: exact unless a
 * ratio sits within 1e-6 of 1 +- epsilon.  The logged loss is rounded to
 * 4 decimals (LLaMA-Factory's round): within 1e-4. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "train/grpo_loop.h"
#include "model/infer.h"
#include "model/model.h"
#include "util/error.h"
#include "util/json.h"

typedef struct {
	const json_t *root;
	int G;
} fix;

static void i32_of(const json_t *a, ft_i32vec *v)
{
	memset(v, 0, sizeof *v);
	for (size_t k = 0; k < json_array_size(a); k++)
		ft_i32vec_push(v, (int32_t)json_integer_value(json_array_get(a, k)));
}

static int same_tokens(const json_t *a, const ft_i32vec *v)
{
	if (json_array_size(a) != v->n) return 0;
	for (size_t k = 0; k < v->n; k++)
		if (json_integer_value(json_array_get(a, k)) != v->v[k]) return 0;
	return 1;
}

/* The fixture's completions of each prompt, in order within the group,
 * without the eos ft's generator drops (the loop puts it back). */
static int gen(void *ctx, ft_model *m, const ft_i32vec *q, size_t n, uint64_t seed, uint64_t first, ft_i32vec *outs)
{
	const fix *f = ctx;
	const json_t *P = json_object_get(f->root, "prompts"), *C = json_object_get(f->root, "completions");
	(void)m, (void)seed, (void)first;
	for (size_t i = 0; i < n; i++) {
		size_t p = 0;
		while (p < json_array_size(P) && !same_tokens(json_array_get(P, p), &q[i])) p++;
		if (p == json_array_size(P)) return ft_fail("prompt %zu is not the fixture's", i);
		i32_of(json_array_get(C, p * f->G + i % f->G), &outs[i]);
		if (outs[i].n && outs[i].v[outs[i].n - 1] == 2) outs[i].n--;
	}
	return 0;
}

/* The fixture's rewards of each completion (found by its tokens). */
static int score(void *ctx, const size_t *pidx, const ft_i32vec *comp, size_t n, float *per_func)
{
	const fix *f = ctx;
	const json_t *C = json_object_get(f->root, "completions"), *R = json_object_get(f->root, "per_func");
	(void)pidx;
	for (size_t i = 0; i < n; i++) {
		size_t k = 0;
		while (k < json_array_size(C) && !same_tokens(json_array_get(C, k), &comp[i])) k++;
		if (k == json_array_size(C)) return ft_fail("completion %zu is not the fixture's", i);
		for (int j = 0; j < 2; j++)
			per_func[i * 2 + j] = (float)json_real_value(json_array_get(json_array_get(R, k), j));
	}
	return 0;
}

/* One step of the loop on the LoRA policy; its log line into *line. */
static int run_step(ft_model *m, const fix *f, json_t **line)
{
	const json_t *r = f->root, *P = json_object_get(r, "prompts");
	ft_i32vec q[2];
	for (int i = 0; i < 2; i++) i32_of(json_array_get(P, i), &q[i]);
	static const float w[2] = { 1.0f, 0.5f };
	static const char *const names[2] = { "a", "b" };
	ft_grpo_loop_opts o;
	memset(&o, 0, sizeof o);
	ft_grpo_opts_default(&o.grpo);
	o.grpo.loss_type = FT_GRPO_LOSS_GRPO;
	o.grpo.beta = ft_json_num(r, "beta", 0);
	o.grpo.max_completion_length = o.max_completion_length = (int)ft_json_int(r, "max_completion_length", 0);
	o.batch_size = 6, o.grad_accum = 1, o.num_generations = f->G, o.num_iterations = 2;
	o.max_steps = 1, o.steps_per_epoch = 1, o.logging_steps = 1;
	o.generate = gen, o.gen_ctx = (void *)f, o.score = score, o.score_ctx = (void *)f;
	o.pad_id = 0, o.eos_id = 2, o.n_rewards = 2, o.reward_weights = w, o.reward_names = names;
	ft_adamw_opts_default(&o.adamw);
	ft_sched_init(&o.sched, FT_SCHED_CONSTANT, 1e-3, 0, 1);
	o.seed = (uint64_t)ft_json_int(r, "seed", 0);
	char *buf = NULL;
	size_t len = 0;
	o.log = open_memstream(&buf, &len);
	int rc = ft_grpo_train(m, q, 2, &o);
	fclose(o.log);
	*line = rc == 0 ? ft_json_load_string(buf, len, "trainer log") : NULL;
	free(buf);
	for (int i = 0; i < 2; i++) ft_i32vec_free(&q[i]);
	return rc == 0 && *line ? 0 : -1;
}

static double num(const json_t *o, const char *k) { return ft_json_num(o, k, NAN); }

/* max |got - want| over the rows of a [rows][V] JSON array, over max |want| */
static double logits_err(const float *got, const json_t *want, int V)
{
	double d = 0, s = 0;
	for (size_t r = 0; r < json_array_size(want); r++)
		for (int v = 0; v < V; v++) {
			double w = json_real_value(json_array_get(json_array_get(want, r), v));
			if (fabs(got[r * V + v] - w) > d) d = fabs(got[r * V + v] - w);
			if (fabs(w) > s) s = fabs(w);
		}
	return d / s;
}

/* The CPU decoder's prefill of the two prompts (packed row after row,
 * the last position's logits) and one new token per row, into lg[4][V]. */
static int decode2(ft_model *m, const json_t *r, float *lg, int V)
{
	const json_t *P = json_object_get(r, "prompts"), *nt = json_object_get(json_object_get(r, "generation"),
									       "new_tokens");
	int32_t toks[64];
	int rows[64], want[64], n = 0;
	for (int i = 0; i < 2; i++)
		for (size_t t = 0; t < json_array_size(json_array_get(P, i)); t++, n++) {
			toks[n] = (int32_t)json_integer_value(json_array_get(json_array_get(P, i), t));
			rows[n] = i;
			want[n] = t + 1 == json_array_size(json_array_get(P, i));
		}
	ft_kvcache *c = ft_kvcache_new(m, 2, 16);
	int rc = ft_infer_forward(m, c, toks, rows, n, want, lg);
	int32_t nx[2] = { (int32_t)json_integer_value(json_array_get(nt, 0)),
			  (int32_t)json_integer_value(json_array_get(nt, 1)) };
	int r2[2] = { 0, 1 };
	if (rc == 0) rc = ft_infer_forward(m, c, nx, r2, 2, NULL, lg + 2 * (size_t)V);
	ft_kvcache_free(c);
	return rc;
}

/* TRL's sampling forwards (part 3): with ft_model_set_gen_neftune the
 * CPU decoder adds the noise at HF's widths (the prompts' 4 in the
 * prefill, 1 per new token); off (every generation but GRPO's), none.
 * Tolerance: float32 logits of |l| < 1 in another BLAS order, 1e-4 of the
 * largest as test_families; the noise itself moves them by > 10%. */
static void check_generation(ft_model *m, const json_t *r)
{
	const json_t *g = json_object_get(r, "generation");
	int V = ft_model_config(m)->vocab_size;
	float *lg = ft_xmalloc(4 * (size_t)V * sizeof *lg);
	ft_model_set_gen_neftune(m, 1, (uint64_t)ft_json_int(g, "stream", 0));
	int rc = decode2(m, r, lg, V);
	ft_model_set_gen_neftune(m, 0, 0);
	ok(rc == 0, "the CPU decoder with NEFTune (%s)", rc ? ft_errmsg() : "ok");
	double ep = logits_err(lg, json_object_get(g, "prefill_logits"), V);
	double es = logits_err(lg + 2 * (size_t)V, json_object_get(g, "step_logits"), V);
	ok(rc == 0 && ep < 1e-4 && es < 1e-4, "sampling noise: prefill logits within %.2g, new token's within %.2g of "
	   "TRL's generate in train mode", ep, es);
	rc = decode2(m, r, lg, V);
	ep = logits_err(lg, json_object_get(g, "prefill_logits"), V);
	es = logits_err(lg + 2 * (size_t)V, json_object_get(g, "step_logits"), V);
	ok(rc == 0 && ep > 0.05 && es > 0.05, "without ft_model_set_gen_neftune the decoder adds none (%.2g, %.2g off)",
	   ep, es);
	free(lg);
}

/* One decoder forward's width is the most tokens of one row (HF's
 * padded size(1)), not the tokens of the forward. */
static void check_width(void)
{
	float a[5 * 4] = { 0 }, b[5 * 4] = { 0 };
	int rows[5] = { 1, 1, 0, 1, 0 };
	ft_neftune_tokens(a, rows, 5, 2, 2.0, 4, 99, 3);
	ft_neftune_add(b, 20, ft_neftune_magnitude(2.0, 3, 4), ft_neftune_seed(99, 3));
	ok(memcmp(a, b, sizeof a) == 0, "decoder noise: width 3 for rows of 3 and 2 tokens, stream (99, 3)");
}

int main(void)
{
	json_t *root = ft_json_load_file("tests/fixtures/grpo/neftune.json");
	fix f = { root, root ? (int)ft_json_int(root, "G", 0) : 0 };
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = FT_MOD_ALL_LINEAR,
			    .seed = root ? (uint64_t)ft_json_int(root, "seed", 0) : 0,
			    .neftune_noise_alpha = root ? ft_json_num(root, "alpha", 0) : 0 };
	ft_model *m = root ? ft_model_load("tests/fixtures/models/tiny-llama", &to) : NULL;
	if (!m || ft_model_load_adapter(m, "tests/fixtures/pref/llama-lora") < 0) {
		ok(0, "fixtures load (%s)", ft_errmsg());
		return tap_done();
	}
	const json_t *lora = json_object_get(json_object_get(root, "passes"), "lora");
	const json_t *full = json_object_get(json_object_get(root, "passes"), "full");
	ok(json_is_true(json_object_get(json_object_get(lora, "ref"), "noised")) &&
	   json_is_true(json_object_get(json_object_get(lora, "old"), "noised")) &&
	   json_is_true(json_object_get(json_object_get(lora, "generate"), "noised")) &&
	   !json_is_true(json_object_get(json_object_get(full, "ref"), "noised")),
	   "TRL noises generation, the old and LoRA's reference passes, not a separate reference model");
	check_width();
	check_generation(m, root);
	json_t *line = NULL;
	int rc = run_step(m, &f, &line);
	ok(rc == 0, "one GRPO step with NEFTune (%s)", rc ? ft_errmsg() : "ok");
	const json_t *want = json_object_get(root, "step"), *clean = json_object_get(root, "ref_noise_free");
	if (rc == 0) {
		double kl = num(line, "kl");
		ok(rel_err(kl, num(want, "kl"), 1e-30) < 1e-4, "kl %.9g, TRL's %.9g (a noise-free reference: %.6g)", kl,
		   num(want, "kl"), num(clean, "kl"));
		ok(rel_err(kl, num(clean, "kl"), 1e-30) > 0.1, "the kl tells a noised reference from a noise-free one");
		ok(rel_err(num(line, "entropy"), num(want, "entropy"), 1e-30) < 1e-4, "entropy %.9g, TRL's %.9g",
		   num(line, "entropy"), num(want, "entropy"));
		static const char *const clips[] = { "clip_ratio/low_mean", "clip_ratio/high_mean",
						     "clip_ratio/region_mean", "clip_ratio/high_max" };
		for (int k = 0; k < 4; k++)
			ok(fabs(num(line, clips[k]) - num(want, clips[k])) < 1e-6, "%s %.6g, TRL's %.6g", clips[k],
			   num(line, clips[k]), num(want, clips[k]));
		ok(fabs(num(line, "loss") - num(want, "loss")) < 1e-4 + 1e-9, "loss %.4f, TRL's %.6f", num(line, "loss"),
		   num(want, "loss"));
	}
	json_decref(line);
	ft_model_free(m);
	json_decref(root);
	return tap_done();
}
