/* test_grpo.c - TRL 1.16 GRPOTrainer's advantages and loss (train/grpo.h)
 * against tests/reference/make_grpo_fixtures.py, which runs TRL's own
 * _compute_loss on the tiny Llama with the preference fixtures' LoRA: per
 * loss_type (and one with temperature 0.7, one with
 * mask_truncated_completions, one with top_entropy_quantile 0.3), the
 * advantages, the log-probabilities, the loss, the logged kl, entropy and
 * clip ratios, d loss / d logp per token, and every LoRA gradient; and a
 * full fine-tuning case (every weight trained, the reference a separate
 * frozen copy of the base) with the gradients of all 21 weights.
 *
 * Tolerances: the advantages and the arithmetic on given log-probabilities
 * are float32 both sides (a few ulps; 1e-5).  The model's log-probabilities
 * and gradients come from a float32 forward and backward whose BLAS order
 * differs from torch's: 1e-4, as test_ppo and test_pref. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "train/grpo.h"
#include "train/ppo_model.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "model/model_pref.h"
#include "util/error.h"
#include "util/json.h"

typedef struct {
	int N, T, C;            /* rows, grid width, TRL's completion width */
	int *lp, *lc;           /* prompt and completion lengths */
	ft_batch b;
	float *mask;
} grid;

static void grid_build(grid *g, const json_t *root)
{
	const json_t *P = json_object_get(root, "prompts"), *Cs = json_object_get(root, "completions");
	int G = (int)ft_json_int(root, "G", 0);
	memset(g, 0, sizeof *g);
	g->N = (int)json_array_size(Cs);
	g->lp = calloc(g->N, sizeof(int));
	g->lc = calloc(g->N, sizeof(int));
	for (int i = 0; i < g->N; i++) {
		g->lp[i] = (int)json_array_size(json_array_get(P, i / G));
		g->lc[i] = (int)json_array_size(json_array_get(Cs, i));
		if (g->lp[i] + g->lc[i] > g->T) g->T = g->lp[i] + g->lc[i];
		if (g->lc[i] > g->C) g->C = g->lc[i];
	}
	g->b.B = g->N;
	g->b.T = g->T;
	g->b.input_ids = calloc((size_t)g->N * g->T, sizeof(int32_t));
	g->b.labels = malloc((size_t)g->N * g->T * sizeof(int32_t));
	for (int i = 0; i < g->N; i++) {
		const json_t *p = json_array_get(P, i / G), *c = json_array_get(Cs, i);
		for (int t = 0; t < g->T; t++) {
			size_t k = (size_t)i * g->T + t;
			int lp = g->lp[i], lc = g->lc[i];
			int id = t < lp ? (int)json_integer_value(json_array_get(p, t))
			       : t < lp + lc ? (int)json_integer_value(json_array_get(c, t - lp)) : 0;
			g->b.input_ids[k] = id;
			g->b.labels[k] = t >= lp && t < lp + lc ? id : -100;
			g->b.n_label_tokens += t >= lp && t < lp + lc;
		}
	}
	g->mask = calloc((size_t)g->N * g->T, sizeof(float));
	ft_ppo_mask(&g->b, g->mask);
}

/* TRL's [N, C] completion tensor into the grid (position lp - 1 + j) */
static float *to_grid(const grid *g, const ft_st *st, const char *name)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return NULL;
	float *w = malloc((size_t)g->N * g->C * sizeof *w), *out = calloc((size_t)g->N * g->T, sizeof *out);
	ft_st_read_f32(t, w);
	for (int i = 0; i < g->N; i++)
		for (int j = 0; j < g->lc[i]; j++) out[(size_t)i * g->T + g->lp[i] - 1 + j] = w[(size_t)i * g->C + j];
	free(w);
	return out;
}

static double grid_err(const grid *g, const float *got, const float *want)
{
	size_t n = (size_t)g->N * g->T;
	float *a = malloc(n * sizeof *a);
	for (size_t i = 0; i < n; i++) a[i] = g->mask[i] ? got[i] : 0;
	double e = max_rel(a, want, n);
	free(a);
	return e;
}

static double grads_err(ft_model *m, const ft_st *st, int *ng)
{
	double worst = 0;
	*ng = 0;
	for (size_t j = 0; j < ft_model_nparams(m); j++) {
		ft_param *q = ft_model_param(m, j);
		if (!q->trainable) continue;
		char key[256];
		snprintf(key, sizeof key, "grad.%s", q->name);
		const ft_st_tensor *t = ft_st_find(st, key);
		if (!t) continue;
		float *w = malloc(q->n * sizeof *w);
		ft_st_read_f32(t, w);
		double e = max_rel(q->g, w, q->n);
		if (e > worst || e != e) worst = e != e ? INFINITY : e;
		free(w);
		(*ng)++;
	}
	return worst;
}

/* mask_truncated_completions: the rows whose completion ends in neither
 * eos (2) nor pad (0) leave the mask (TRL zeroes their completion_mask) */
static float *case_mask(const grid *g, const json_t *root, int on)
{
	size_t n = (size_t)g->N * g->T;
	float *mk = malloc(n * sizeof *mk);
	memcpy(mk, g->mask, n * sizeof *mk);
	const json_t *Cs = json_object_get(root, "completions");
	for (int i = 0; on && i < g->N; i++) {
		const json_t *c = json_array_get(Cs, i);
		long long last = json_integer_value(json_array_get(c, json_array_size(c) - 1));
		if (last != 2 && last != 0) memset(mk + (size_t)i * g->T, 0, g->T * sizeof *mk);
	}
	return mk;
}

static void check_case(ft_model *m, const json_t *root, const json_t *c, grid *g, ft_model *refm)
{
	const char *name = ft_json_str(c, "name", "?");
	int full = ft_json_bool(c, "full", 0);
	float *gmask = g->mask, *cmask = case_mask(g, root, ft_json_bool(c, "mask_truncated", 0));
	g->mask = cmask;   /* the grid's mask for this case, put back at the end */
	ft_grpo_opts o;
	ft_grpo_opts_default(&o);
	o.loss_type = ft_grpo_loss_type(ft_json_str(c, "loss_type", ""));
	o.scale_rewards = ft_grpo_scale(ft_json_str(c, "scale_rewards", ""));
	o.beta = ft_json_num(c, "beta", 0);
	o.epsilon_low = ft_json_num(c, "epsilon", 0);
	o.epsilon_high = ft_json_num(c, "epsilon_high", 0);
	o.max_completion_length = (int)ft_json_int(c, "max_completion_length", 0);
	o.top_entropy_quantile = ft_json_num(c, "top_entropy_quantile", 1.0);
	int N = g->N, K = (int)json_array_size(json_object_get(root, "weights"));
	double temp = ft_json_num(c, "temperature", 1);
	if (ft_model_set_logp_temperature(m, (float)temp) < 0 || (refm && ft_model_set_logp_temperature(refm, (float)temp) < 0)) {
		ok(0, "%s: %s", name, ft_errmsg());
		return;
	}
	float *pf = malloc((size_t)N * K * sizeof *pf), w[8], rew[64], adv[64], wadv[64];
	for (int k = 0; k < K; k++) w[k] = (float)json_number_value(json_array_get(json_object_get(root, "weights"), k));
	for (int i = 0; i < N; i++)
		for (int k = 0; k < K; k++)
			pf[i * K + k] = (float)json_number_value(json_array_get(json_array_get(json_object_get(root, "per_func"), i), k));
	int rc = ft_grpo_advantages(&o, pf, w, K, N, (int)ft_json_int(root, "G", 0), rew, adv, NULL);
	for (int i = 0; i < N; i++) wadv[i] = (float)json_number_value(json_array_get(json_object_get(c, "advantages"), i));
	double ea = max_rel(adv, wadv, N);
	ok(rc == 0 && ea < 1e-5, "%s: advantages (scale_rewards %s) within 1e-5 (%.2g)", name,
	   ft_json_str(c, "scale_rewards", ""), ea);
	char path[256];
	snprintf(path, sizeof path, "tests/fixtures/grpo/llama-%s.safetensors", name);
	ft_st *st = ft_st_open(path);
	if (!st) { ok(0, "%s: %s", path, ft_errmsg()); free(pf); return; }
	size_t n = (size_t)N * g->T;
	float *lp = calloc(n, sizeof *lp), *dl = calloc(n, sizeof *dl), *ref = NULL, *ent = calloc(n, sizeof *ent);
	float *wlp = to_grid(g, st, "logp"), *wdl = to_grid(g, st, "dlogp"), *old = to_grid(g, st, "old_logp");
	if (o.beta != 0) {
		ref = calloc(n, sizeof *ref);
		if (refm) {
			rc = ft_model_logps_forward(refm, &g->b, 0, ref, NULL);
		} else {
			ft_model_set_adapters(m, 0);
			rc = ft_model_logps_forward(m, &g->b, 0, ref, NULL);
			ft_model_set_adapters(m, 1);
		}
		float *wref = to_grid(g, st, "ref_logp");
		double er = grid_err(g, ref, wref);
		ok(rc == 0 && er < 1e-4, "%s: reference log-probabilities (%s) within 1e-4 (%.2g)", name,
		   refm ? "a frozen copy of the base" : "adapters off", er);
		free(wref);
	}
	ft_model_zero_grad(m);
	ft_model_set_logp_entropy(m, ent);
	rc = ft_model_logps_forward(m, &g->b, 1, lp, NULL);
	ft_model_set_logp_entropy(m, NULL);
	double el = grid_err(g, lp, wlp);
	ok(rc == 0 && el < 1e-4, "%s: log-probabilities (temperature %g) within 1e-4 (%.2g)", name, temp, el);
	double items = 0;
	for (size_t i = 0; i < n; i++) items += g->mask[i];
	ft_grpo_loss_stats ls;
	rc = ft_grpo_loss(&o, lp, old, ref, ent, g->mask, adv, N, g->T, ft_json_num(c, "accum", 1), items, &ls, dl);
	double wl = ft_json_num(c, "loss", NAN);
	ok(rc == 0 && rel_err(ls.loss, wl, 1e-3) < 1e-4, "%s: loss %.8g vs TRL's %.8g", name, ls.loss, wl);
	const json_t *mt = json_object_get(c, "metrics");
	double em = 0;
	const char *keys[] = { "kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
			       "clip_ratio/low_min", "clip_ratio/high_max", "entropy" };
	double got[] = { ls.kl, ls.low_mean, ls.high_mean, ls.region_mean, ls.low_min, ls.high_max, ls.entropy };
	for (int k = 0; k < 7; k++) {
		const json_t *v = json_object_get(mt, keys[k]);
		if (!v) continue;
		double e = rel_err(got[k], json_number_value(v), 1e-3);
		if (e > em) em = e;
	}
	ok(em < 1e-4 && json_object_get(mt, "entropy"), "%s: kl, entropy and clip_ratio statistics within 1e-4 (%.2g)",
	   name, em);
	double ed = grid_err(g, dl, wdl);
	ok(ed < 1e-4, "%s: d loss / d logp per token within 1e-4 (%.2g)", name, ed);
	rc = ft_model_logps_backward(m, &g->b, dl);
	int ng;
	double eg = grads_err(m, st, &ng);
	ok(rc == 0 && ng == (full ? 21 : 28) && eg < 1e-4, "%s: %d %s gradients within 1e-4 (worst %.2e)", name, ng,
	   full ? "model" : "LoRA", eg);
	free(pf); free(lp); free(dl); free(ref); free(wlp); free(wdl); free(old); free(ent);
	ft_st_close(st);
	ft_model_set_logp_temperature(m, 1);
	if (refm) ft_model_set_logp_temperature(refm, 1);
	g->mask = gmask;
	free(cmask);
}

/* The full fine-tuning case: the peaky Llama with every weight trainable,
 * the tiny Llama (its base) frozen as the reference. */
static void check_full(const json_t *root, const json_t *c, grid *g)
{
	ft_tune_opts to = { .type = FT_FT_FULL, .seed = 1 };
	ft_tune_opts tf = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = FT_MOD_Q, .seed = 1 };
	ft_model *pol = ft_model_load("tests/fixtures/grpo/peaky-llama", &to);
	ft_model *ref = pol ? ft_model_load("tests/fixtures/models/tiny-llama", &tf) : NULL;
	if (!pol || !ref) {
		ok(0, "full: the models load (%s)", ft_errmsg());
	} else {
		check_case(pol, root, c, g, ref);
	}
	if (pol) ft_model_free(pol);
	if (ref) ft_model_free(ref);
}

/* Temperature 1 after another one: the same bits as never set (the
 * division is skipped, not done by 1), forward and gradients. */
static void check_temperature_one(ft_model *m, grid *g)
{
	size_t n = (size_t)g->N * g->T, np = ft_model_nparams(m);
	float *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b), *dl = calloc(n, sizeof *dl);
	for (size_t i = 0; i < n; i++) dl[i] = g->mask[i] * (float)(i % 7) * 0.1f;
	size_t ng = 0;
	for (size_t j = 0; j < np; j++) if (ft_model_param(m, j)->trainable) ng += ft_model_param(m, j)->n;
	float *ga = malloc(ng * sizeof *ga);
	int same = 1;
	for (int pass = 0; pass < 2; pass++) {
		if (pass) { ft_model_set_logp_temperature(m, 0.5f); ft_model_set_logp_temperature(m, 1); }
		ft_model_zero_grad(m);
		int rc = ft_model_logps_forward(m, &g->b, 1, pass ? b : a, NULL);
		if (rc == 0) rc = ft_model_logps_backward(m, &g->b, dl);
		same &= rc == 0;
		size_t k = 0;
		for (size_t j = 0; j < np; j++) {
			ft_param *q = ft_model_param(m, j);
			if (!q->trainable) continue;
			if (!pass) memcpy(ga + k, q->g, q->n * sizeof(float));
			else same &= !memcmp(ga + k, q->g, q->n * sizeof(float));
			k += q->n;
		}
	}
	ok(same && !memcmp(a, b, n * sizeof *a), "temperature 1: log-probabilities and gradients bit-identical");
	int rc0 = ft_model_set_logp_temperature(m, 0);
	ok(rc0 < 0, "temperature 0 refused: %s", ft_errmsg());
	free(a); free(b); free(dl); free(ga);
}

static void check_refusals(void)
{
	ft_grpo_opts o;
	ft_grpo_opts_default(&o);
	float pf[4] = { 1, 2, 3, 4 }, w[1] = { 1 }, r[4], a[4];
	int rc = ft_grpo_advantages(&o, pf, w, 1, 4, 1, r, a, NULL);
	ok(rc < 0, "one generation per prompt refused: %s", ft_errmsg());
	rc = ft_grpo_advantages(&o, pf, w, 1, 3, 2, r, a, NULL);
	ok(rc < 0, "a partial group refused: %s", ft_errmsg());
	double fz = -1;
	float same[4] = { 1, 1, 0, 1 };
	rc = ft_grpo_advantages(&o, same, w, 1, 4, 2, r, a, &fz);
	ok(rc == 0 && fz == 0.5 && a[0] == 0 && a[1] == 0,
	   "a group of equal rewards has zero advantages (frac_reward_zero_std %.2f)", fz);
	ok(ft_grpo_loss_type("dapo") == FT_GRPO_LOSS_DAPO && ft_grpo_loss_type("cispo") < 0 &&
	   ft_grpo_scale("false") == FT_GRPO_SCALE_NONE && ft_grpo_scale("x") < 0, "loss_type and scale_rewards words");
	ok(o.loss_type == FT_GRPO_LOSS_DAPO && o.beta == 0 && o.epsilon_high == 0.2 && o.top_entropy_quantile == 1.0,
	   "TRL 1.16 defaults: dapo, beta 0, top_entropy_quantile 1");
	float lp1[2] = { -1, -1 }, mk[2] = { 1, 1 }, a1[1] = { 1 }, d1[2];
	ft_grpo_loss_stats ls;
	o.top_entropy_quantile = 0.5;
	rc = ft_grpo_loss(&o, lp1, NULL, NULL, NULL, mk, a1, 1, 2, 1, 2, &ls, d1);
	ok(rc < 0, "top_entropy_quantile without entropies refused: %s", ft_errmsg());
	/* torch.quantile([0, 1, 2, 3], 0.5) = 1.5: the two above it kept */
	float e4[4] = { 3, 0, 2, 1 }, m4[4] = { 1, 1, 1, 1 }, em4[4];
	ft_grpo_entropy_mask(e4, m4, 4, 0.5, em4);
	float m0[4] = { 0, 0, 0, 0 }, em0[4] = { 1, 1, 1, 1 };
	ft_grpo_entropy_mask(e4, m0, 4, 0.5, em0);
	ok(em4[0] == 1 && em4[1] == 0 && em4[2] == 1 && em4[3] == 0 && !em0[0] && !em0[3],
	   "entropy mask: the linear quantile, nothing when nothing is masked in");
}

int main(void)
{
	json_t *root = ft_json_load_file("tests/fixtures/grpo/cases.json");
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			    .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = root ? ft_model_load("tests/fixtures/models/tiny-llama", &to) : NULL;
	if (!m || ft_model_load_adapter(m, "tests/fixtures/pref/llama-lora") < 0) {
		ok(0, "fixtures load (%s)", ft_errmsg());
		return tap_done();
	}
	grid g;
	grid_build(&g, root);
	const json_t *cases = json_object_get(root, "cases");
	for (size_t i = 0; i < json_array_size(cases); i++) {
		const json_t *c = json_array_get(cases, i);
		if (ft_json_bool(c, "full", 0)) check_full(root, c, &g);
		else check_case(m, root, c, &g, NULL);
	}
	check_temperature_one(m, &g);
	check_refusals();
	free(g.lp);
	free(g.lc);
	free(g.mask);
	ft_batch_free(&g.b);
	ft_model_free(m);
	json_decref(root);
	return tap_done();
}
