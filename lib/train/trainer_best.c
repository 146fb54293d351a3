/* trainer_best.c - transformers' best-model tracking and
 * EarlyStoppingCallback (transformers 5.25 trainer.py
 * _determine_best_metric, _save_checkpoint, _sorted_checkpoints,
 * _load_best_model; trainer_callback.py EarlyStoppingCallback with
 * threshold 0): the best metric, its step and checkpoint in
 * trainer_state.json, the patience counter in its stateful_callbacks, the
 * final model taken from the best checkpoint. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/atomicfile.h"
#include "util/error.h"
#include "train/trainer_internal.h"

static int better(const ft_train_opts *o, double v, double best)
{
	return o->greater_is_better ? v > best : v < best;
}

/* The metric among this evaluation's: eval_loss or the model's. */
static int metric_value(const ft_train_opts *o, double loss, const char *const *k, const double *v,
			size_t n, double *out)
{
	const char *want = o->metric_for_best_model;
	if (!strcmp(want, "eval_loss")) {
		*out = loss;
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (!strcmp(k[i], want)) {
			*out = v[i];
			return 0;
		}
	char names[512] = "eval_loss";
	for (size_t i = 0; i < n; i++)
		snprintf(names + strlen(names), sizeof names - strlen(names), ", %s", k[i]);
	return ft_fail("metric_for_best_model '%s' is not among the evaluation metrics (%s)", want, names);
}

/* EarlyStoppingCallback.check_metric_value (threshold 0) */
static void early_stop_update(const ft_train_opts *o, ftp_tstate *st, double x)
{
	if (!o->early_stopping) return;
	if (!st->has_best || (better(o, x, st->best_metric) && fabs(x - st->best_metric) > 0))
		st->es_counter = 0;
	else
		st->es_counter++;
}

int ftp_best_start_eval(const ft_train_opts *o, ftp_tstate *st, double loss, const char *const *k,
			const double *v, size_t n)
{
	double x;
	if (!o->metric_for_best_model) return 0;
	if (metric_value(o, loss, k, v, n, &x) < 0) return -1;
	early_stop_update(o, st, x);
	return 0;
}

int ftp_best_after_eval(const ft_train_opts *o, ftp_tstate *st, double loss, const char *const *k,
			const double *v, size_t n)
{
	if (!o->metric_for_best_model) return 0;
	double x;
	if (metric_value(o, loss, k, v, n, &x) < 0) return -1;
	/* EarlyStoppingCallback.on_evaluate runs first, against the best so far */
	early_stop_update(o, st, x);
	if (!st->has_best || better(o, x, st->best_metric)) {
		st->has_best = 1;
		st->best_metric = x;
		if (o->save_strategy != FT_STRATEGY_NO) st->best_step = st->global_step;
	}
	return 0;
}

int ftp_best_should_stop(const ft_train_opts *o, const ftp_tstate *st)
{
	return o->early_stopping && st->es_counter >= o->early_stopping_patience;
}

/* _save_checkpoint: the best checkpoint named once it exists (the one
 * being written counts: its trainer_state.json names itself) */
void ftp_best_before_save(const ft_train_opts *o, ftp_tstate *st)
{
	if (!st->best_step) return;
	char *d = ft_xasprintf("%s/checkpoint-%lld", o->output_dir, (long long)st->best_step);
	if (st->best_step == st->global_step || access(d, F_OK) == 0)
		snprintf(st->best_ckpt, sizeof st->best_ckpt, "%s", d);
	free(d);
}

static int timing_key(const char *k)
{
	return !strcmp(k, "eval_runtime") || !strcmp(k, "eval_samples_per_second") ||
	       !strcmp(k, "eval_steps_per_second") || !strcmp(k, "eval_loss");
}

int ftp_best_eval_entry(const ftp_tstate *st, double *loss, const char **k, double *v, size_t *n,
			size_t cap)
{
	int64_t step = ftp_best_ckpt_step(st);
	size_t i;
	json_t *e;
	json_array_foreach(st->log_history, i, e) {
		json_t *l = json_object_get(e, "eval_loss");
		if (!l || json_integer_value(json_object_get(e, "step")) != step) continue;
		*loss = json_number_value(l);
		*n = 0;
		const char *key;
		json_t *x;
		json_object_foreach(e, key, x)
			if (!strncmp(key, "eval_", 5) && !timing_key(key) && *n < cap) {
				k[*n] = key;
				v[(*n)++] = json_number_value(x);
			}
		return 1;
	}
	return 0;
}

void ftp_best_state_json(const ft_train_opts *o, const ftp_tstate *st, json_t *ts)
{
	if (st->has_best) {
		json_object_set_new(ts, "best_metric", json_real(st->best_metric));
		if (st->best_step) json_object_set_new(ts, "best_global_step", json_integer(st->best_step));
	}
	if (st->best_ckpt[0]) json_object_set_new(ts, "best_model_checkpoint", json_string(st->best_ckpt));
	if (o->early_stopping)
		json_object_set_new(ts, "stateful_callbacks",
				    json_pack("{s:{s:{s:I, s:f}, s:{s:I}}}", "EarlyStoppingCallback", "args",
					      "early_stopping_patience", (json_int_t)o->early_stopping_patience,
					      "early_stopping_threshold", 0.0, "attributes",
					      "early_stopping_patience_counter", (json_int_t)st->es_counter));
}

/* As transformers' resume: the best so far from the checkpoint's state
 * (a best checkpoint no longer there is forgotten), the patience counter
 * from its EarlyStoppingCallback. */
void ftp_best_state_read(const ft_train_opts *o, ftp_tstate *st, json_t *ts)
{
	json_t *bm = json_object_get(ts, "best_metric");
	if (json_is_number(bm)) {
		st->has_best = 1;
		st->best_metric = json_number_value(bm);
	}
	st->best_step = json_integer_value(json_object_get(ts, "best_global_step"));
	const char *bc = json_string_value(json_object_get(ts, "best_model_checkpoint"));
	if (bc && access(bc, F_OK) == 0) snprintf(st->best_ckpt, sizeof st->best_ckpt, "%s", bc);
	json_t *es = json_object_get(json_object_get(ts, "stateful_callbacks"), "EarlyStoppingCallback");
	st->es_counter = json_integer_value(json_object_get(json_object_get(es, "attributes"),
							    "early_stopping_patience_counter"));
	(void)o;
}

int64_t ftp_best_ckpt_step(const ftp_tstate *st)
{
	const char *s = strrchr(st->best_ckpt, '-');
	return st->best_ckpt[0] && s ? strtoll(s + 1, NULL, 10) : -1;
}

/* Replace dir/name with a copy of src/name. */
static int copy_over(const char *src, const char *dir, const char *name)
{
	char *from = ft_xasprintf("%s/%s", src, name), *to = ft_xasprintf("%s/%s", dir, name);
	int rc = unlink(to) < 0 && access(to, F_OK) == 0 ? ft_fail("%s:", to) : ft_copy_into(from, dir);
	free(from);
	free(to);
	return rc;
}

/* The final model: with load_best_model_at_end and a best checkpoint, the
 * files the model's save writes, taken from that checkpoint (its weights,
 * as _load_best_model then save_model); else the model as trained. */
int ftp_best_save_model(const ft_train_opts *o, ft_train_model *m, const ftp_tstate *st)
{
	if (!o->load_best_model_at_end || !st->best_ckpt[0]) return m->save(m->self, o->output_dir);
	char *probe = ft_xasprintf("%s/.best-files", o->output_dir);
	ft_atomic a;
	if (ft_atomic_dir_open(&a, probe) < 0) {
		free(probe);
		return -1;
	}
	int rc = m->save(m->self, a.tmp);
	DIR *d = rc < 0 ? NULL : opendir(a.tmp);
	for (struct dirent *e; d && rc == 0 && (e = readdir(d));)
		if (e->d_name[0] != '.') rc = copy_over(st->best_ckpt, o->output_dir, e->d_name);
	if (d) closedir(d);
	ft_atomic_dir_abort(&a);
	free(probe);
	return rc;
}
