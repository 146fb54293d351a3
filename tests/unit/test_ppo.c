/* test_ppo.c - TRL 0.9's PPO arithmetic (train/ppo.h) against the torch
 * transcription in tests/reference/make_ppo_fixtures.py, and the reward
 * filter (train/ppo_reward.h) on sh, awk and jq commands.
 *
 * Tolerances: both sides compute in float32 but torch sums whole tensors
 * in its own order and the C side accumulates in double, so results agree
 * to float rounding of sums of ~20 terms (a few 1e-7 relative); 1e-5
 * relative with a 1e-6 floor leaves room for the whitening's rsqrt, and is
 * well inside the 1e-4. */
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "train/ppo.h"
#include "train/ppo_reward.h"
#include "train/ppo_model.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "model/model_pref.h"
#include "util/error.h"
#include "util/json.h"

#define TOL 1e-5

static float *arr(const json_t *c, const char *k, size_t *n)
{
	json_t *a = json_object_get(c, k);
	*n = json_array_size(a);
	float *v = malloc((*n ? *n : 1) * sizeof *v);
	for (size_t i = 0; i < *n; i++) v[i] = (float)json_number_value(json_array_get(a, i));
	return v;
}

static double worst(const float *a, const float *ref, size_t n)
{
	double w = 0;
	for (size_t i = 0; i < n; i++) {
		double e = rel_err(a[i], ref[i], 1e-6);
		if (e > w || e != e) w = e != e ? INFINITY : e;
	}
	return w;
}

static void check_case(const json_t *c, int k)
{
	int B = (int)ft_json_int(c, "B", 0), T = (int)ft_json_int(c, "T", 0);
	size_t n, m;
	ft_ppo_opts o;
	ft_ppo_opts_default(&o);
	o.whiten_rewards = ft_json_bool(c, "whiten_rewards", 0);
	float *mask = arr(c, "mask", &n), *score = arr(c, "scores", &m), *logp = arr(c, "logp", &m);
	float *ref = arr(c, "ref_logp", &m), *values = arr(c, "values", &m);
	float *w_rew = arr(c, "rewards", &m), *w_adv = arr(c, "advantages", &m);
	float *w_ret = arr(c, "returns", &m), *nlogp = arr(c, "new_logp", &m);
	float *vpred = arr(c, "vpred", &m), *w_dl = arr(c, "dlogp", &m), *w_dv = arr(c, "dvpred", &m);
	float *rew = calloc(n, sizeof *rew), *adv = calloc(n, sizeof *adv), *ret = calloc(n, sizeof *ret);
	float *dl = calloc(n, sizeof *dl), *dv = calloc(n, sizeof *dv), *mv = calloc(n, sizeof *mv);
	int rc = ft_ppo_rewards(score, logp, ref, mask, B, T, ft_json_num(c, "kl_coef", 0), rew, NULL);
	ok(rc == 0 && worst(rew, w_rew, n) < TOL,
	   "case %d: KL-penalised rewards, score at the last token (%.2g)", k, worst(rew, w_rew, n));
	ok(ft_ppo_advantages(&o, values, rew, mask, B, T, adv, ret) == 0, "case %d: advantages", k);
	ok(worst(adv, w_adv, n) < TOL, "case %d: GAE advantages, whitened%s (%.2g)", k,
	   o.whiten_rewards ? ", rewards whitened" : "", worst(adv, w_adv, n));
	ok(worst(ret, w_ret, n) < TOL, "case %d: returns (%.2g)", k, worst(ret, w_ret, n));
	/* TRL's loss sees the masked values compute_advantages returns */
	for (size_t i = 0; i < n; i++) mv[i] = values[i] * mask[i];
	ft_ppo_loss_stats st;
	ok(ft_ppo_loss(&o, logp, mv, nlogp, vpred, mask, w_adv, w_ret, n, &st, dl, dv) == 0, "case %d: loss", k);
	const json_t *s = json_object_get(c, "stats");
	struct { const char *k; double v; } want[] = {
		{"loss_policy", st.loss_policy}, {"loss_value", st.loss_value}, {"loss_total", st.loss_total},
		{"policy_approxkl", st.policy_approxkl}, {"policy_policykl", st.policy_policykl},
		{"policy_clipfrac", st.policy_clipfrac}, {"policy_advantages_mean", st.policy_advantages_mean},
		{"returns_mean", st.returns_mean}, {"returns_var", st.returns_var}, {"val_vpred", st.val_vpred},
		{"val_error", st.val_error}, {"val_clipfrac", st.val_clipfrac}, {"val_mean", st.val_mean},
		{"val_var", st.val_var},
	};
	int all = 1;
	for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
		/* whitened advantages have mean ~1e-8: compared absolutely */
		double floor_ = strcmp(want[i].k, "policy_advantages_mean") ? 1e-6 : 1.0;
		double e = rel_err(want[i].v, ft_json_num(s, want[i].k, NAN), floor_);
		if (!(e < TOL)) {
			all = 0;
			printf("# %s: %.9g vs %.9g\n", want[i].k, want[i].v, ft_json_num(s, want[i].k, NAN));
		}
	}
	ok(all && !st.skipped, "case %d: the 14 loss statistics", k);
	ok(worst(dl, w_dl, n) < TOL, "case %d: d loss / d logprobs, clipped ratios included (%.2g)", k,
	   worst(dl, w_dl, n));
	ok(worst(dv, w_dv, n) < TOL, "case %d: d loss / d value predictions, clipped included (%.2g)", k,
	   worst(dv, w_dv, n));
	float *bl[] = { mask, score, logp, ref, values, w_rew, w_adv, w_ret, nlogp, vpred, w_dl, w_dv,
			rew, adv, ret, dl, dv, mv };
	for (size_t i = 0; i < sizeof bl / sizeof *bl; i++) free(bl[i]);
}

static void check_klctl_moments(const json_t *root)
{
	ft_ppo_opts o;
	ft_ppo_opts_default(&o);
	ft_ppo_klctl k;
	ft_ppo_klctl_init(&k, &o);
	const json_t *tr = json_object_get(root, "klctl");
	int good = k.value == 0.2;
	for (size_t i = 0; i < json_array_size(tr); i++) {
		const json_t *e = json_array_get(tr, i);
		ft_ppo_klctl_update(&k, ft_json_num(e, "current", 0), ft_json_num(e, "n_steps", 0));
		good &= rel_err(k.value, ft_json_num(e, "value", 0), 1e-12) < 1e-12;
	}
	ok(good, "adaptive KL controller: clipped proportional error over the horizon");
	o.adap_kl_ctrl = 0;
	ft_ppo_klctl_init(&k, &o);
	ft_ppo_klctl_update(&k, 100, 1000);
	ok(k.value == 0.2, "fixed KL controller keeps init_kl_coef");

	const json_t *mo = json_object_get(root, "moments");
	const json_t *bs = json_object_get(mo, "batches"), *ns = json_object_get(mo, "normalized");
	ft_ppo_moments rm;
	ft_ppo_moments_init(&rm);
	double w = 0;
	for (size_t i = 0; i < json_array_size(bs); i++) {
		float x[4], want[4];
		for (int j = 0; j < 4; j++) {
			x[j] = (float)json_number_value(json_array_get(json_array_get(bs, i), j));
			want[j] = (float)json_number_value(json_array_get(json_array_get(ns, i), j));
		}
		ft_ppo_normalize_scores(&rm, x, 4);
		double e = worst(x, want, 4);
		if (e > w) w = e;
	}
	ok(w < TOL && rel_err(rm.mean, ft_json_num(mo, "mean", 0), 1e-9) < 1e-6 &&
	   rel_err(rm.std, ft_json_num(mo, "std", 0), 1e-9) < 1e-6,
	   "running moments and --ppo_score_norm's normalised scores (%.2g)", w);
	float one = 1;
	ok(ft_ppo_moments_update(&rm, &one, 1) < 0, "score norm refuses a batch of one score");
}

static void check_whiten(void)
{
	float x[5] = { 1, 2, 3, 4, 100 }, m[5] = { 1, 1, 1, 1, 0 };
	ok(ft_ppo_masked_whiten(x, m, 5, 1) == 0 && fabsf(x[0] + x[3]) < 1e-6f &&
	   fabsf(x[0] - (float)(-1.5 / sqrt(5.0 / 3 + 1e-8))) < 1e-6f,
	   "masked whitening: mean 0, unbiased variance over the mask only");
	float y[3] = { 1, 2, 3 }, m1[3] = { 0, 1, 0 };
	ok(ft_ppo_masked_whiten(y, m1, 3, 1) < 0 && strstr(ft_errmsg(), "at least 2"),
	   "whitening one token is refused (TRL's would be inf)");
	ft_errclear();
}

static void check_reward_cmd(void)
{
	const char *p[3] = { "hi", "say \"x\"", "q" }, *r[3] = { "a b", "x\ny", "ccc" };
	float s[3];
	int rc;
	ok(ft_ppo_reward_cmd("jq -r '.response | length'", p, r, NULL, 3, s) == 0 && s[0] == 3 && s[1] == 3 &&
	   s[2] == 3, "jq filter: one JSON line per response, escaped, one number back per line");
	ok(ft_ppo_reward_cmd("awk '{n++} END {for (i = 1; i <= n; i++) print i / 2}'", p, r, NULL, 3, s) == 0 &&
	   s[0] == 0.5f && s[2] == 1.5f, "a filter that answers only at EOF");
	struct { const char *cmd, *want, *what; } bad[] = {
		{ "cat >/dev/null; printf '1\\nx2\\n3\\n'", "line 2", "a non-number names its line" },
		{ "cat >/dev/null; echo 1; echo 2", "2 lines for 3", "fewer lines" },
		{ "echo 1; echo 2; echo 3; exit 3", "status 3", "a command that fails" },
		{ "kill -9 $$", "signal 9", "a command that dies" },
		{ "seq 4", "more lines", "too many lines" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		rc = ft_ppo_reward_cmd(bad[i].cmd, p, r, NULL, 3, s);
		ok(rc < 0 && strstr(ft_errmsg(), bad[i].want), "%s: %s", bad[i].what, ft_errmsg());
		ft_errclear();
	}
	/* extra columns: after prompt and response, in order; their prompt/response never win */
	json_t *x0 = json_loads("{\"prompt\": \"FAKE\", \"answer\": 5, \"response\": \"FAKE\", \"m\": [1, {\"k\": null}]}",
				0, NULL);
	char *line = ft_reward_request_line("hi", "completion", "c", x0);
	ok(line && !strcmp(line, "{\"prompt\":\"hi\",\"completion\":\"c\",\"answer\":5,\"response\":\"FAKE\",\"m\":[1,{\"k\":null}]}"),
	   "request line: prompt, completion, then the columns but prompt: %s", line ? line : ft_errmsg());
	free(line);
	line = ft_reward_request_line("hi", "completion", "c", NULL);
	ok(line && !strcmp(line, "{\"prompt\":\"hi\",\"completion\":\"c\"}"), "no columns: %s", line ? line : "");
	free(line);
	const json_t *xs[3] = { x0, NULL, x0 };
	ok(ft_ppo_reward_cmd("jq -r --unbuffered '(.answer // 0) + (.response | length)'", p, r, xs, 3, s) == 0 &&
	   s[0] == 8 && s[1] == 3 && s[2] == 8, "the filter gets each line's columns (%g %g %g), its response kept", s[0], s[1], s[2]);
	json_decref(x0);
	const char *badp[1] = { "ok" }, *badr[1] = { "\xff\xfe" };
	rc = ft_ppo_reward_cmd("cat", badp, badr, NULL, 1, s);
	ok(rc < 0 && strstr(ft_errmsg(), "response 1: the response is not valid UTF-8"), "%s", ft_errmsg());
	ft_errclear();
	/* a large batch: the pipe buffers fill both ways at once */
	enum { N = 20000 };
	const char **pp = malloc(N * sizeof *pp);
	float *ss = malloc(N * sizeof *ss);
	for (int i = 0; i < N; i++) pp[i] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
	ok(ft_ppo_reward_cmd("awk '{print NR}'", pp, pp, NULL, N, ss) == 0 && ss[N - 1] == N,
	   "20000 responses through a streaming filter without deadlock");
	free(pp);
	free(ss);
}

static int32_t *ints(const json_t *c, const char *k)
{
	json_t *a = json_object_get(c, k);
	int32_t *v = malloc(json_array_size(a) * sizeof *v);
	for (size_t i = 0; i < json_array_size(a); i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
	return v;
}

/* [B, T-1] fixture tensor against the [B*T] grid (last column unused), on
 * the response positions (padding attends differently: torch masks it) */
static double worst_grid(const ft_st *st, const char *name, const float *got, const float *mask,
			 int B, int T)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return INFINITY;
	float *w = malloc((size_t)B * (T - 1) * sizeof *w), *g = malloc((size_t)B * (T - 1) * sizeof *g);
	ft_st_read_f32(t, w);
	for (int b = 0; b < B; b++)
		for (int i = 0; i < T - 1; i++) {
			if (!mask[b * T + i]) w[b * (T - 1) + i] = 0;
			g[b * (T - 1) + i] = mask[b * T + i] ? got[b * T + i] : 0;
		}
	double e = max_rel(g, w, (size_t)B * (T - 1));
	free(w);
	free(g);
	return e;
}

/* One PPO mini-batch on the tiny Llama with LoRA and a value head, as
 * TRL's step() (make_ppo_fixtures.py model_case): the old/ref passes, the
 * advantages, the loss and every gradient.  Tolerance 1e-4: the model's
 * float32 forward and backward run in a different order from torch's
 * (BLAS blocking), as in test_pref. */
static void check_model(const json_t *c)
{
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			    .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &to);
	ft_st *st = ft_st_open("tests/fixtures/ppo/llama-minibatch.safetensors");
	if (!m || !st || ft_model_load_adapter(m, "tests/fixtures/pref/llama-lora") < 0) {
		ok(0, "model fixtures load (%s)", ft_errmsg());
		return;
	}
	ft_batch b = { 0 };
	b.B = (int)ft_json_int(c, "B", 0);
	b.T = (int)ft_json_int(c, "T", 0);
	b.input_ids = ints(c, "input_ids");
	b.labels = ints(c, "labels");
	size_t n = (size_t)b.B * b.T, D;
	float *vw = arr(c, "vh_weight", &D), vb = (float)ft_json_num(c, "vh_bias", 0), *score = arr(c, "scores", &D);
	D = ft_model_config(m)->hidden_size;
	float *mask = calloc(n, 4), *old = calloc(n, 4), *val = calloc(n, 4), *ref = calloc(n, 4);
	float *rew = calloc(n, 4), *adv = calloc(n, 4), *ret = calloc(n, 4), *dl = calloc(n, 4), *dv = calloc(n, 4);
	ft_ppo_mask(&b, mask);
	int rc = ft_ppo_forward(m, &b, 1, vw, vb, 0, 0, old, val);
	ft_model_set_adapters(m, 0);
	float *scratch = calloc(n, 4);
	if (rc == 0) rc = ft_ppo_forward(m, &b, 0, vw, vb, 0, 0, ref, scratch);
	ft_model_set_adapters(m, 1);
	free(scratch);
	ok(rc == 0, "PPO forward passes%s%s", rc ? ": " : "", rc ? ft_errmsg() : "");
	for (size_t i = 0; i < n; i++) {   /* off-mask logps are 0 here, any value in TRL */
		if (!mask[i] && (i + 1) % b.T) old[i] = ref[i] = 0;
	}
	double e1 = worst_grid(st, "values", val, mask, b.B, b.T);
	double e2 = worst_grid(st, "old_logp", old, mask, b.B, b.T);
	double e3 = worst_grid(st, "ref_logp", ref, mask, b.B, b.T);
	ok(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
	   "old values, old and reference (adapters off) logprobs on the responses (%.2g %.2g %.2g)", e1, e2, e3);
	ft_ppo_opts o;
	ft_ppo_opts_default(&o);
	rc = ft_ppo_rewards(score, old, ref, mask, b.B, b.T, ft_json_num(c, "kl_coef", 0), rew, NULL);
	for (size_t i = 0; i < n; i++) val[i] *= mask[i];
	if (rc == 0) rc = ft_ppo_advantages(&o, val, rew, mask, b.B, b.T, adv, ret);
	ft_ppo_loss_stats ls;
	if (rc == 0) rc = ft_ppo_loss(&o, old, val, old, val, mask, adv, ret, n, &ls, dl, dv);
	const ft_st_tensor *lt = ft_st_find(st, "loss");
	float wl = NAN;
	if (lt) ft_st_read_f32(lt, &wl);
	ok(rc == 0 && rel_err(ls.loss_total, wl, 1e-3) < 1e-4, "mini-batch loss %.8g vs %.8g", ls.loss_total, wl);
	float *dvw = calloc(D, 4);
	double dvb = 0;
	ft_model_zero_grad(m);
	rc = ft_ppo_backward(m, &b, vw, vb, 0, 0, dl, dv, dvw, &dvb);
	double worst_g = 0;
	int ng = 0, want_n = 0;
	for (size_t i = 0; i < ft_st_count(st); i++)
		if (!strncmp(ft_st_at(st, i)->name, "grad.", 5)) want_n++;
	for (size_t j = 0; j < ft_model_nparams(m); j++) {
		ft_param *q = ft_model_param(m, j);
		if (!q->trainable) continue;
		char key[256];
		snprintf(key, sizeof key, "grad.%s", q->name);
		const ft_st_tensor *t = ft_st_find(st, key);
		if (!t) { printf("# no fixture gradient %s\n", key); continue; }
		float *w = malloc(q->n * sizeof *w);
		ft_st_read_f32(t, w);
		double e = max_rel(q->g, w, q->n);
		if (e > worst_g) worst_g = e;
		free(w);
		ng++;
	}
	const ft_st_tensor *tw = ft_st_find(st, "grad.v_head.summary.weight");
	const ft_st_tensor *tb = ft_st_find(st, "grad.v_head.summary.bias");
	if (tw && tb) {
		float *w = malloc(D * sizeof *w), wb;
		ft_st_read_f32(tw, w);
		ft_st_read_f32(tb, &wb);
		double e = max_rel(dvw, w, D), eb = rel_err(dvb, wb, 1e-3);
		if (e > worst_g) worst_g = e;
		if (eb > worst_g) worst_g = eb;
		free(w);
		ng += 2;
	}
	ok(rc == 0 && ng == want_n && ng > 2, "%d gradients: every LoRA matrix and the value head (%d in the fixture)",
	   ng, want_n);
	ok(worst_g < 1e-4, "gradients of one PPO mini-batch within 1e-4 (worst %.2e)", worst_g);
	float *bl[] = { vw, score, mask, old, val, ref, rew, adv, ret, dl, dv, dvw };
	for (size_t i = 0; i < sizeof bl / sizeof *bl; i++) free(bl[i]);
	ft_batch_free(&b);
	ft_st_close(st);
	ft_model_free(m);
}

int main(void)
{
	json_t *root = ft_json_load_file("tests/fixtures/ppo/math.json");
	if (!root) {
		ok(0, "fixture: %s", ft_errmsg());
		return tap_done();
	}
	const json_t *cases = json_object_get(root, "cases");
	for (size_t i = 0; i < json_array_size(cases); i++) check_case(json_array_get(cases, i), (int)i);
	check_klctl_moments(root);
	check_model(json_object_get(root, "model"));
	json_decref(root);
	check_whiten();
	check_reward_cmd();
	return tap_done();
}
