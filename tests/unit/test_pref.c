/* test_pref.c - the preference stages (lib/train/pref*.c, model_pref.c)
 * against tests/reference/make_pref_fixtures.py: for a tiny Llama and
 * Qwen2 with a LoRA adapter, one batch of each case (dpo sigmoid with and
 * without label smoothing + ftx, hinge, ipo, orpo, simpo; kto plain and
 * weighted + ftx; rm with a value head; --ld_alpha with sigmoid, ipo and
 * simpo, --pref_bco_weight with sigmoid and with hinge + ld_alpha + ftx,
 * make_pref_fixtures.py --dpo-extras): the loss, every metric and the
 * gradient of every trainable parameter.  bco's baseline over several
 * calls: check_bco_moments, and ft-train-pref.bats's 5-step runs.
 *
 * Tolerances: loss and metrics 1e-5 relative (floor 1e-3), or 1e-5
 * absolute: both sides sum float32 log-probs in different orders (torch's
 * reductions, ours in double), and a reward is beta times the difference
 * of two such sums of size ~50, whose float32 ulp is 4e-6; gradients 1e-4 of the tensor's largest entry, the bound the
 * model's own sft parity holds (tests/unit/test_model.c).  Batch 0 has no
 * padding; batch 1 is padded: its logits/... metrics average the logits
 * of the padding positions too, which see the row's real tokens only
 * (the batch's lengths, HF's attention_mask), as in HF.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "format/safetensors.h"
#include "format/trainlog.h"
#include "model/model.h"
#include "model/model_pref.h"
#include "train/pref.h"
#include "util/error.h"

#define DIR "tests/fixtures/pref"

static int32_t *ints(json_t *a, size_t *n)
{
	*n = json_array_size(a);
	int32_t *v = calloc(*n ? *n : 1, sizeof *v);
	for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
	return v;
}

/* Record k (0-based) of a JSON-lines batch stream. */
static int read_batch(const char *path, int k, ft_batch *b)
{
	FILE *f = fopen(path, "r");
	if (!f) return -1;
	char *line = NULL;
	size_t cap = 0;
	int rc = -1;
	for (int i = 0; i <= k + 1; i++)
		if (getline(&line, &cap, f) < 0) goto out;
	json_t *j = json_loads(line, 0, NULL);
	if (!j) goto out;
	memset(b, 0, sizeof *b);
	size_t n;
	b->B = (int)json_integer_value(json_object_get(j, "B"));
	b->T = (int)json_integer_value(json_object_get(j, "T"));
	b->input_ids = ints(json_object_get(j, "input_ids"), &n);
	b->labels = ints(json_object_get(j, "labels"), &n);
	if (json_object_get(j, "kto_tags")) b->kto_tags = ints(json_object_get(j, "kto_tags"), &n);
	if (json_object_get(j, "lengths")) b->lengths = ints(json_object_get(j, "lengths"), &n);
	b->index = k;
	json_decref(j);
	rc = 0;
out:
	free(line);
	fclose(f);
	return rc;
}

static double scalar(ft_st *st, const char *name)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return NAN;
	double v;
	if (t->dtype == FT_F64) memcpy(&v, t->data, sizeof v);
	else { float f; ft_st_read_f32(t, &f); v = f; }
	return v;
}

typedef struct {
	const char *name;
	ft_pref_opts o;
} tcase;

/* The evaluation pass on the same batch (no step was taken, dropout is
 * off): every eval_ metric, the logits/ ones of padded batches included,
 * is the fixture's training value. */
static void eval_metrics(const char *kind, const tcase *tc, int bi, ft_train_model *tm,
			 const ft_batch *b, ft_st *st)
{
	double el;
	int64_t n;
	const char *keys[FT_MAX_METRICS];
	double vals[FT_MAX_METRICS];
	int rc = tm->forward(tm->self, b, &el, &n);
	size_t nm = rc == 0 ? tm->metrics(tm->self, 1, keys, vals, FT_MAX_METRICS) : 0;
	int bad = rc != 0 || nm == 0, nlog = 0;
	for (size_t i = 0; i < nm; i++) {
		char key[128];
		if (strncmp(keys[i], "eval_", 5)) { bad = 1; continue; }
		snprintf(key, sizeof key, "m.%s", keys[i] + 5);
		double w = scalar(st, key);
		nlog += !strncmp(keys[i] + 5, "logits/", 7);
		if (!(fabs(vals[i] - w) < 1e-5 || rel_err(vals[i], w, 1e-3) < 1e-5)) {
			printf("# %s %.8g vs %.8g\n", keys[i], vals[i], w);
			bad = 1;
		}
	}
	ok(!bad && nlog == 2, "%s %s b%d: %zu eval_ metrics (eval_logits/ included) = the fixture's",
	   kind, tc->name, bi, nm);
}

static void run_case(const char *kind, const tcase *tc, int bi)
{
	char model[256], adapter[256], fx[256], data[256];
	snprintf(model, sizeof model, "tests/fixtures/models/tiny-%s", kind);
	snprintf(adapter, sizeof adapter, DIR "/%s-lora", kind);
	snprintf(fx, sizeof fx, DIR "/%s-%s-b%d.safetensors", kind, tc->name, bi);
	snprintf(data, sizeof data, DIR "/%s.jsonl",
		 tc->o.stage == FT_PREF_RM ? "rm" : tc->o.stage == FT_PREF_KTO ? "kto" : "dpo");
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			    .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = ft_model_load(model, &to);
	ft_st *st = ft_st_open(fx);
	ft_batch b;
	if (!m || ft_model_load_adapter(m, adapter) < 0 || !st || read_batch(data, bi, &b) < 0) {
		ok(0, "%s %s b%d: fixtures load (%s)", kind, tc->name, bi, ft_errmsg());
		return;
	}
	ft_pref *p = ft_pref_new(m, NULL, &tc->o);
	ok(p != NULL, "%s %s: binding", kind, tc->name);
	if (tc->o.stage == FT_PREF_RM) ok(ft_pref_load_value_head(p, adapter) == 0, "value head loads");
	ft_train_model tm = ft_pref_train_model(p);
	tm.zero_grad(tm.self);
	double loss;
	int64_t n;
	int rc = tm.forward_backward(tm.self, &b, 1.0f, &loss, &n);
	ok(rc == 0 && n == 1, "%s %s b%d: forward_backward (%s)", kind, tc->name, bi, rc ? ft_errmsg() : "");
	double want = scalar(st, "loss");
	ok(rel_err(loss, want, 1e-3) < 1e-5, "%s %s b%d: loss %.8g vs %.8g", kind, tc->name, bi, loss, want);
	const char *keys[FT_MAX_METRICS];
	double vals[FT_MAX_METRICS];
	size_t nm = tm.metrics(tm.self, 0, keys, vals, FT_MAX_METRICS);
	if (tc->o.stage == FT_PREF_RM) {   /* accuracy is an evaluation metric */
		double el;
		tm.forward(tm.self, &b, &el, &n);
		nm = tm.metrics(tm.self, 1, keys, vals, FT_MAX_METRICS);
		ok(nm == 1 && !strcmp(keys[0], "eval_accuracy"), "rm: eval_accuracy only");
		ok(rel_err(el, want, 1e-3) < 1e-5, "rm: eval loss = train loss without dropout");
	}
	size_t want_n = 0;
	for (size_t i = 0; i < ft_st_count(st); i++)
		if (!strncmp(ft_st_at(st, i)->name, "m.", 2)) want_n++;
	ok(nm == want_n, "%s %s b%d: %zu metrics (fixture %zu)", kind, tc->name, bi, nm, want_n);
	for (size_t i = 0; i < nm; i++) {
		const char *k = keys[i];
		if (!strncmp(k, "eval_", 5)) k += 5;
		char key[128];
		snprintf(key, sizeof key, "m.%s", k);
		double w = scalar(st, key);
		ok(fabs(vals[i] - w) < 1e-5 || rel_err(vals[i], w, 1e-3) < 1e-5, "%s %s b%d: %s %.8g vs %.8g",
		   kind, tc->name, bi, keys[i], vals[i], w);
	}
	int ng = 0;
	double worst = 0;
	for (size_t i = 0; i < ft_st_count(st); i++) {
		const ft_st_tensor *t = ft_st_at(st, i);
		if (strncmp(t->name, "grad.", 5)) continue;
		ft_param *q = NULL;
		for (size_t j = 0; j < tm.nparams(tm.self); j++)
			if (!strcmp(tm.param(tm.self, j)->name, t->name + 5)) q = tm.param(tm.self, j);
		if (!q || !q->g) {
			ok(0, "%s: no trainable %s", tc->name, t->name + 5);
			continue;
		}
		float *ref = malloc(q->n * sizeof *ref);
		ft_st_read_f32(t, ref);
		double e = max_rel(q->g, ref, q->n), s = 0;
		for (size_t j = 0; j < q->n; j++) s = fmax(s, fabs(ref[j]));
		/* the value head's bias has an exact gradient of 0 (the loss sees
		 * score differences only): torch's is rounding, so an absolute floor */
		if (s < 1e-3) e = e * s / 1e-3;
		if (e > worst) worst = e;
		if (e >= 1e-4) printf("# %s: %.2e (got %g want %g)\n", q->name, e, q->g[0], ref[0]);
		free(ref);
		ng++;
	}
	size_t ntr = 0;
	for (size_t j = 0; j < tm.nparams(tm.self); j++) ntr += tm.param(tm.self, j)->trainable;
	ok(ng > 0 && (size_t)ng == ntr, "%s %s b%d: %d gradients, every trainable parameter (%zu)", kind,
	   tc->name, bi, ng, ntr);
	ok(worst < 1e-4, "%s %s b%d: gradients within 1e-4 (worst %.2e)", kind, tc->name, bi, worst);
	if (tc->o.stage != FT_PREF_RM)
		eval_metrics(kind, tc, bi, &tm, &b, st);
	ft_pref_free(p);
	ft_model_free(m);
	ft_st_close(st);
	ft_batch_free(&b);
}

static tcase mk(const char *name, int stage, int loss, double beta)
{
	tcase t = { name, { 0 } };
	ft_pref_opts_default(&t.o, stage);
	t.o.loss = loss;
	t.o.beta = beta;
	t.o.value_dropout = 0;   /* the fixture's model config sets summary_dropout_prob 0 */
	return t;
}

/* The losses' gradients against central differences of the losses. */
static void check_loss_grads(void)
{
	ft_pref_opts o;
	ft_pref_opts_default(&o, FT_PREF_DPO);
	double pc[2] = { -3.1, -0.7 }, pr[2] = { -2.2, -1.9 }, rc[2] = { -3.0, -1.0 }, rr[2] = { -2.0, -2.5 };
	double lc[2] = { 5, 3 }, l[2], dc[2], dr[2], a[2], b2[2];
	for (int loss = FT_PREF_SIGMOID; loss <= FT_PREF_SIMPO; loss++) {
		o.loss = loss;
		o.ftx = loss == FT_PREF_SIGMOID ? 0.5 : 0;
		o.label_smoothing = loss == FT_PREF_SIGMOID ? 0.1 : 0;
		ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, NULL, l, dc, dr, a, b2);
		double worst = 0;
		for (int i = 0; i < 2; i++)
			for (int w = 0; w < 2; w++) {
				double *x = w ? pr : pc, h = 1e-6, save = x[i];
				x[i] = save + h;
				double up = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, NULL, l, a, a, a, a);
				x[i] = save - h;
				double dn = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, NULL, l, a, a, a, a);
				x[i] = save;
				double g = (w ? dr : dc)[i], e = fabs((up - dn) / (2 * h) - g);
				if (e > worst) worst = e;
			}
		ok(worst < 1e-6, "dpo %s: gradient = central difference (%.1e)", ft_pref_loss_name(loss), worst);
	}
}

/* BCO mixed in: the gradient against central differences with the
 * baseline held (it carries none: a copy with a large count, so that the
 * update moves it by less than 1e-12), and TRL's RunningMoments sequence. */
static void check_bco_moments(void)
{
	ft_pref_opts o;
	ft_pref_opts_default(&o, FT_PREF_DPO);
	double pc[2] = { -3.1, -0.7 }, pr[2] = { -2.2, -1.9 }, rc[2] = { -3.0, -1.0 }, rr[2] = { -2.0, -2.5 };
	double lc[2] = { 5, 3 }, l[2], dc[2], dr[2], a[2], b2[2];
	ft_pref_moments m0 = { 0.03, 0.5, 1e12 }, m;
	for (int loss = FT_PREF_SIGMOID; loss <= FT_PREF_IPO; loss++) {
		o.loss = loss;
		o.bco_weight = 0.7;
		m = m0;
		double base = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, &m, l, dc, dr, a, b2);
		m = m0;
		o.bco_weight = 0;
		double plain = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, &m, l, a, a, a, a);
		o.bco_weight = 0.7;
		double worst = 0;
		for (int i = 0; i < 2; i++)
			for (int w = 0; w < 2; w++) {
				double *x = w ? pr : pc, h = 1e-6, save = x[i];
				x[i] = save + h;
				m = m0;
				double up = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, &m, l, a, a, a, a);
				x[i] = save - h;
				m = m0;
				double dn = ft_pref_dpo_loss(&o, 2, pc, pr, rc, rr, lc, &m, l, a, a, a, a);
				x[i] = save;
				double g = (w ? dr : dc)[i], e = fabs((up - dn) / (2 * h) - g);
				if (e > worst) worst = e;
			}
		ok(worst < 1e-6 && fabs(base - plain) > 1e-3, "dpo %s + bco: gradient = central difference "
		   "(%.1e), the loss moved (%g vs %g)", ft_pref_loss_name(loss), worst, base, plain);
	}
	/* RunningMoments from its defaults: mean = the running average of the
	 * batch means, var their population variance (1e-24 of the prior) */
	ft_pref_moments_init(&m);
	double xs[3] = { 0.25, -0.5, 1.0 };
	for (int i = 0; i < 3; i++) ft_pref_moments_update(&m, xs[i], 0, 1);
	double mu = 0.25, var = ((0.25 - mu) * (0.25 - mu) + (-0.5 - mu) * (-0.5 - mu) + (1 - mu) * (1 - mu)) / 3;
	ok(fabs(m.mean - mu) < 1e-15 && fabs(m.var - var) < 1e-15 && m.count == 3,
	   "RunningMoments: mean %.17g var %.17g count %g", m.mean, m.var, m.count);
	o.loss = FT_PREF_ORPO;
	ok(!ft_pref_uses_bco(&o), "orpo: no bco (no reference)");
}

/* Full fine-tuning with a frozen base as the reference (loaded as the
 * tool does: LoRA, merged): the gradients of every weight, embeddings and
 * the LM head included (tied in Qwen2). */
static void run_full(const char *kind)
{
	char model[256], fx[256];
	snprintf(model, sizeof model, "tests/fixtures/models/tiny-%s", kind);
	snprintf(fx, sizeof fx, DIR "/%s-full_sigmoid-b1.safetensors", kind);
	ft_model *m = ft_model_load(model, &(ft_tune_opts){ .type = FT_FT_FULL, .seed = 1 });
	ft_model *ref = ft_model_load(model, &(ft_tune_opts){ .type = FT_FT_LORA, .lora_rank = 8,
						     .lora_alpha = 16, .lora_targets = FT_MOD_Q, .seed = 1 });
	ft_st *st = ft_st_open(fx);
	ft_batch b;
	if (!m || !ref || ft_model_merge_lora(ref) < 0 || !st || read_batch(DIR "/dpo.jsonl", 1, &b) < 0) {
		ok(0, "%s full: fixtures load (%s)", kind, ft_errmsg());
		return;
	}
	ft_pref_opts o;
	ft_pref_opts_default(&o, FT_PREF_DPO);
	ft_pref *p = ft_pref_new(m, ref, &o);
	ft_train_model tm = ft_pref_train_model(p);
	tm.zero_grad(tm.self);
	double loss;
	int64_t n;
	ok(tm.forward_backward(tm.self, &b, 1.0f, &loss, &n) == 0, "%s full: forward_backward", kind);
	ok(fabs(loss - log(2)) < 1e-6 && rel_err(loss, scalar(st, "loss"), 1e-3) < 1e-5,
	   "%s full: loss %.8g = log 2 (policy = reference)", kind, loss);
	double worst = 0;
	int ng = 0;
	for (size_t i = 0; i < ft_st_count(st); i++) {
		const ft_st_tensor *t = ft_st_at(st, i);
		if (strncmp(t->name, "grad.", 5)) continue;
		ft_param *q = ft_model_find_param(m, t->name + 5);
		if (!q || !q->g) { ok(0, "%s full: no trainable %s", kind, t->name + 5); continue; }
		float *r = malloc(q->n * sizeof *r);
		ft_st_read_f32(t, r);
		double e = max_rel(q->g, r, q->n);
		if (e > worst) worst = e;
		free(r);
		ng++;
	}
	ok(ng > 10 && worst < 1e-4, "%s full: %d gradients within 1e-4 (worst %.2e)", kind, ng, worst);
	ft_pref_free(p);
	ft_model_free(m);
	ft_model_free(ref);
	ft_st_close(st);
	ft_batch_free(&b);
}

/* trainer_log.jsonl lines with the metrics after LLaMA-Factory's fields,
 * read back by the one parser. */
static void check_log_line(void)
{
	ft_trainlog_entry e;
	ft_trainlog_entry_init(&e);
	e.current_steps = 3;
	e.total_steps = 10;
	e.loss = 0.5;
	const char *k[] = { "rewards/chosen", "kl" };
	double v[] = { 0.25, 1e-05 };
	char *s = ft_trainlog_format_extra(&e, k, v, 2);
	ok(!strcmp(s, "{\"current_steps\": 3, \"total_steps\": 10, \"loss\": 0.5, "
		      "\"rewards/chosen\": 0.25, \"kl\": 1e-05}\n"), "log line with metrics: %s", s);
	ft_trainlog_field f[2] = { { .key = "rewards/chosen" }, { .key = "kl" } };
	ft_trainlog_entry back;
	ok(ft_trainlog_parse_fields(s, strlen(s), &back, f, 2) == 0 && f[0].value == 0.25 &&
	   f[1].value == 1e-05 && back.loss == 0.5, "read back");
	free(s);
	ft_trainlog_entry_init(&e);
	s = ft_trainlog_format_extra(&e, k, v, 1);
	ok(!strcmp(s, "{\"rewards/chosen\": 0.25}\n"), "only metrics: %s", s);
	free(s);
}

int main(void)
{
	check_log_line();
	run_full("llama");
	run_full("qwen2");
	check_loss_grads();
	ok(ft_pref_loss_parse("unknown") < 0 && strstr(ft_errmsg(), "sigmoid, hinge"), "unknown loss refused");
	check_bco_moments();
	tcase cases[14];
	cases[0] = mk("sigmoid", FT_PREF_DPO, FT_PREF_SIGMOID, 0.1);
	cases[1] = mk("sigmoid_ls_ftx", FT_PREF_DPO, FT_PREF_SIGMOID, 0.3);
	cases[1].o.label_smoothing = 0.2;
	cases[1].o.ftx = 0.5;
	cases[2] = mk("hinge", FT_PREF_DPO, FT_PREF_HINGE, 0.1);
	cases[3] = mk("ipo", FT_PREF_DPO, FT_PREF_IPO, 0.1);
	cases[4] = mk("orpo", FT_PREF_DPO, FT_PREF_ORPO, 0.1);
	cases[5] = mk("simpo", FT_PREF_DPO, FT_PREF_SIMPO, 2.0);
	cases[6] = mk("kto", FT_PREF_KTO, 0, 0.1);
	cases[7] = mk("kto_weights_ftx", FT_PREF_KTO, 0, 0.2);
	cases[7].o.kto_chosen_weight = 1.5;
	cases[7].o.kto_rejected_weight = 0.5;
	cases[7].o.ftx = 0.3;
	cases[8] = mk("rm", FT_PREF_RM, 0, 0.1);
	/* make_pref_fixtures.py EXTRA_CASES: one call, the baseline from its
	 * defaults (so after the update it is the batch's mean reward) */
	cases[9] = mk("sigmoid_ld", FT_PREF_DPO, FT_PREF_SIGMOID, 0.1);
	cases[9].o.ld = 1;
	cases[9].o.ld_alpha = 0.5;
	cases[10] = mk("ipo_ld", FT_PREF_DPO, FT_PREF_IPO, 0.1);
	cases[10].o.ld = 1;
	cases[10].o.ld_alpha = 0.3;
	cases[11] = mk("simpo_ld", FT_PREF_DPO, FT_PREF_SIMPO, 2.0);
	cases[11].o.ld = 1;
	cases[11].o.ld_alpha = 0.4;
	cases[12] = mk("sigmoid_bco", FT_PREF_DPO, FT_PREF_SIGMOID, 0.1);
	cases[12].o.bco_weight = 0.5;
	cases[13] = mk("hinge_bco_ld_ftx", FT_PREF_DPO, FT_PREF_HINGE, 0.1);
	cases[13].o.bco_weight = 2.0;
	cases[13].o.ld = 1;
	cases[13].o.ld_alpha = 0.7;
	cases[13].o.ftx = 0.3;
	const char *kinds[] = { "llama", "qwen2" };
	for (int k = 0; k < 2; k++)
		for (int c = 0; c < 14; c++)
			for (int bi = 0; bi < 2; bi++)
				run_case(kinds[k], &cases[c], bi);
	return tap_done();
}
