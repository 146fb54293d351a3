/* trainer_ckpt.c - checkpoint-N directories, trainer_state.json, resume,
 * save_total_limit, results files; see trainer.h and docs/FORMAT.md 4. */
#define _GNU_SOURCE
#include "train/trainer.h"
#include "train/trainer_internal.h"
#include "train/optim_ext.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "format/trainlog.h"
#include "train/dist.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* As transformers' save_metrics: json.dump(indent=4, sort_keys=True),
 * numbers as Python writes floats. */
int ft_save_results(const char *dir, const char *name, const char *const *keys, const double *vals, size_t n)
{
	size_t *ord = ft_xcalloc(n ? n : 1, sizeof *ord);
	for (size_t i = 0; i < n; i++) ord[i] = i;
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && strcmp(keys[ord[j - 1]], keys[ord[j]]) > 0; j--) {
			size_t t = ord[j]; ord[j] = ord[j - 1]; ord[j - 1] = t;
		}
	char *path = ft_xasprintf("%s/%s", dir, name);
	ft_atomic a;
	int rc = -1;
	if (ft_atomic_open(&a, path) < 0) goto out;
	fputs("{\n", a.fp);
	for (size_t i = 0; i < n; i++) {
		const char *k = keys[ord[i]];
		double v = vals[ord[i]];
		char num[40];
		ft_fmt_double_repr(num, sizeof num, v);   /* all floats in transformers too */
		fprintf(a.fp, "    \"%s\": %s%s\n", k, num, i + 1 < n ? "," : "");
	}
	fputs("}", a.fp);
	rc = ft_atomic_commit(&a);
out:
	free(path);
	free(ord);
	return rc;
}

/* ---- trainer_state.json -------------------------------------------------- */

json_t *ftp_trainer_state_json(const ft_train_opts *o, const ft_train_plan *p, const ftp_tstate *st)
{
	char tr_loss[40];
	snprintf(tr_loss, sizeof tr_loss, "%a", (double)st->tr_loss);
	json_t *ft = json_pack("{s:I, s:I, s:s, s:f, s:I, s:I, s:I, s:I, s:I, s:s}",
			       "epoch_idx", (json_int_t)st->epoch_idx,
			       "batches_done", (json_int_t)st->batches_done,
			       "tr_loss", tr_loss,
			       "total_loss", st->total_loss,
			       "last_logged", (json_int_t)st->last_logged,
			       "n_batches", (json_int_t)o->n_batches,
			       "gradient_accumulation_steps", (json_int_t)o->gradient_accumulation_steps,
			       "warmup_steps", (json_int_t)p->warmup_steps,
			       "seed", (json_int_t)o->seed,
			       "lr_scheduler_type", ft_sched_name(o->lr_scheduler_type));
	char total_loss[40];
	snprintf(total_loss, sizeof total_loss, "%a", st->total_loss);
	json_object_set_new(ft, "total_loss_hex", json_string(total_loss));
	json_object_set_new(ft, "data_epochs", json_integer(ft_data_runs(o)));
	/* data parallel: ranks and ZeRO stage of the run (the state saved is
	 * whole either way, so any number of ranks resumes it) */
	json_object_set_new(ft, "world_size", json_integer(ft_dist_size(o->dist)));
	json_object_set_new(ft, "zero", json_integer(o->zero));
	if (o->device)
		json_object_set_new(ft, "device", json_string(o->device));
	if (st->peak_bytes)
		json_object_set_new(ft, "peak_memory_bytes", json_integer((json_int_t)st->peak_bytes));
	int64_t eval_steps = o->eval_steps > 0 ? o->eval_steps : o->logging_steps;
	json_t *ts = json_pack("{s:n, s:n, s:n, s:f, s:I, s:I, s:b, s:b, s:b, s:O, s:I, s:I, s:I, "
			 "s:I, s:I, s:{}, s:f, s:I, s:n, s:n, s:o}",
			 "best_global_step", "best_metric", "best_model_checkpoint",
			 "epoch", st->epoch,
			 "eval_steps", (json_int_t)eval_steps,
			 "global_step", (json_int_t)st->global_step,
			 "is_hyper_param_search", 0, "is_local_process_zero", 1, "is_world_process_zero", 1,
			 "log_history", st->log_history,
			 "logging_steps", (json_int_t)o->logging_steps,
			 "max_steps", (json_int_t)p->total_steps,
			 "num_input_tokens_seen", (json_int_t)st->tokens_seen,
			 "num_train_epochs", (json_int_t)p->num_epochs,
			 "save_steps", (json_int_t)o->save_steps,
			 "stateful_callbacks",
			 "total_flos", st->total_flos,
			 "train_batch_size", (json_int_t)o->train_batch_size,
			 "trial_name", "trial_params",
			 "ft", ft);
	ftp_best_state_json(o, st, ts);
	return ts;
}

/* ---- save ------------------------------------------------------------------ */

int ftp_ckpt_save(const ft_train_opts *o, const ft_train_plan *p, ft_train_model *m,
		 const ft_adamw *opt, const ft_sched *s, const ftp_tstate *st, char *out, size_t outsz)
{
	char *dir = ft_xasprintf("%s/checkpoint-%lld", o->output_dir, (long long)st->global_step);
	ft_atomic a;
	int rc = -1;
	char *f = NULL;
	json_t *j = NULL;
	if (ft_atomic_dir_open(&a, dir) < 0) goto out;
	if (m->save(m->self, a.tmp) < 0) {
		ft_fail_ctx("%s: saving the model: ", dir);
		goto abort;
	}
	f = ft_xasprintf("%s/optimizer.safetensors", a.tmp);
	if (ft_adamw_save(opt, f) < 0) goto abort;
	if (o->optim_ext && o->optim_ext->save && o->optim_ext->save(o->optim_ext->self, a.tmp) < 0)
		goto abort;
	if (m->ckpt_save && m->ckpt_save(m->self, a.tmp) < 0) goto abort;
	free(f);
	j = json_pack("{s:s, s:f, s:I, s:I, s:I, s:[f]}",
		      "lr_scheduler_type", ft_sched_name(s->type), "learning_rate", s->lr,
		      "warmup_steps", (json_int_t)s->warmup_steps, "total_steps", (json_int_t)s->total_steps,
		      "last_epoch", (json_int_t)st->global_step,
		      "_last_lr", ft_sched_lr(s, st->global_step));
	f = ft_xasprintf("%s/scheduler.json", a.tmp);
	if (ft_json_save_file_sorted(j, f, 2) < 0) goto abort;
	free(f);
	json_decref(j);
	/* The only randomness left in training is LoRA dropout, derived by
	 * the model from the seed; the data order is fixed by ft-pack. */
	j = json_pack("{s:I, s:I, s:I}", "seed", (json_int_t)o->seed,
		      "epoch", (json_int_t)st->epoch_idx, "batches_done", (json_int_t)st->batches_done);
	f = ft_xasprintf("%s/rng_state.json", a.tmp);
	if (ft_json_save_file_sorted(j, f, 2) < 0) goto abort;
	free(f);
	json_decref(j);
	j = ftp_trainer_state_json(o, p, st);
	f = ft_xasprintf("%s/trainer_state.json", a.tmp);
	if (ft_json_save_file_sorted(j, f, 2) < 0) goto abort;
	free(f);
	f = NULL;
	json_decref(j);
	j = NULL;
	for (const char *const *x = o->extra_files; x && *x; x++)
		if (ft_copy_into(*x, a.tmp) < 0) goto abort;
	if (ft_atomic_dir_commit(&a, 1) < 0) goto out;
	snprintf(out, outsz, "%s", dir);
	rc = 0;
	goto out;
abort:
	ft_atomic_dir_abort(&a);
out:
	free(f);
	json_decref(j);
	free(dir);
	return rc;
}

/* ---- load ------------------------------------------------------------------ */

static int hexnum(const json_t *o, const char *key, double *out)
{
	const char *s = json_string_value(json_object_get(o, key));
	if (!s) return -1;
	char *end;
	*out = strtod(s, &end);
	return *end ? -1 : 0;
}

/* trainer_state.json into st, checked against this run's settings */
static int read_state(const ft_train_opts *o, const ft_train_plan *p, ftp_tstate *st)
{
	char *path = ft_xasprintf("%s/trainer_state.json", o->resume_dir);
	json_t *ts = ft_json_load_file(path);
	int rc = -1;
	if (!ts) goto out;
	json_t *ft = json_object_get(ts, "ft");
	json_t *hist = json_object_get(ts, "log_history");
	double tr_loss, total_loss;
	if (!json_is_object(ft) || !json_is_array(hist) || hexnum(ft, "tr_loss", &tr_loss) ||
	    hexnum(ft, "total_loss_hex", &total_loss) || !json_is_integer(json_object_get(ts, "global_step"))) {
		ft_fail("%s: not written by ft-train (no \"ft\" state, log_history or global_step)", path);
		goto out;
	}
	long long nb = json_integer_value(json_object_get(ft, "n_batches"));
	long long ga = json_integer_value(json_object_get(ft, "gradient_accumulation_steps"));
	long long ms = json_integer_value(json_object_get(ts, "max_steps"));
	/* the global batch in micro-batches must be the same; ranks x
	 * accumulation may be split another way (absent: one rank) */
	long long ws = json_integer_value(json_object_get(ft, "world_size"));
	if (ws < 1) ws = 1;
	int world = ft_dist_size(o->dist);
	if (nb != o->n_batches || ga * ws != (long long)o->gradient_accumulation_steps * world) {
		if (ws == 1 && world == 1)
			ft_fail("%s: the checkpoint was made with %lld batches per epoch and "
				"gradient_accumulation_steps %lld; this run has %lld and %d: resume with the "
				"same data and settings", o->resume_dir, nb, ga, (long long)o->n_batches,
				o->gradient_accumulation_steps);
		else
			ft_fail("%s: the checkpoint was made with %lld batches per epoch and %lld rank%s x "
				"gradient_accumulation_steps %lld; this run has %lld and %d x %d: keep the "
				"data and ranks x gradient_accumulation_steps (the global batch) the same",
				o->resume_dir, nb, ws, ws == 1 ? "" : "s", ga, (long long)o->n_batches, world,
				o->gradient_accumulation_steps);
		goto out;
	}
	/* absent in checkpoints of before ft-pack --num_train_epochs: one */
	long long de = json_integer_value(json_object_get(ft, "data_epochs"));
	if (de < 1) de = 1;
	if (de != ft_data_runs(o)) {
		ft_fail("%s: the checkpoint was made on batches packed for %lld epochs; these hold %lld: "
			"resume with the same ft-pack output", o->resume_dir, de, (long long)ft_data_runs(o));
		goto out;
	}
	if (ms != p->total_steps) {
		ft_fail("%s: the checkpoint was made for %lld total steps; this run has %lld "
			"(num_train_epochs/max_steps differ): the schedule would not continue",
			o->resume_dir, ms, (long long)p->total_steps);
		goto out;
	}
	st->global_step = json_integer_value(json_object_get(ts, "global_step"));
	st->epoch = json_number_value(json_object_get(ts, "epoch"));
	st->tokens_seen = json_integer_value(json_object_get(ts, "num_input_tokens_seen"));
	st->total_flos = json_number_value(json_object_get(ts, "total_flos"));
	st->epoch_idx = json_integer_value(json_object_get(ft, "epoch_idx"));
	st->batches_done = json_integer_value(json_object_get(ft, "batches_done"));
	st->last_logged = json_integer_value(json_object_get(ft, "last_logged"));
	st->tr_loss = (float)tr_loss;
	st->total_loss = total_loss;
	json_array_extend(st->log_history, hist);
	ftp_best_state_read(o, st, ts);
	rc = 0;
out:
	json_decref(ts);
	free(path);
	return rc;
}

int ftp_ckpt_load(const ft_train_opts *o, const ft_train_plan *p, ft_adamw *opt, ftp_tstate *st,
		  ftp_opt_load load, void *ctx)
{
	/* under mpirun every rank checks the same bytes; rank 0 reports */
	if (ft_dist_rank0_verdict(o->dist, read_state(o, p, st)) < 0) return -1;
	int rc = -1;
	char *path = ft_xasprintf("%s/optimizer.safetensors", o->resume_dir);
	if ((load ? load(ctx, opt, path) : ft_dist_adamw_load(o->dist, opt, path)) < 0) goto out;
	if (o->optim_ext && o->optim_ext->load && o->optim_ext->load(o->optim_ext->self, o->resume_dir) < 0)
		goto out;
	/* fp16 on the GPU skips the update of a step whose gradients
	 * overflowed (as torch's GradScaler), so the optimizer may be behind */
	if (ft_adamw_steps(opt) > st->global_step || ft_adamw_steps(opt) < 0) {
		ft_fail("%s: optimizer step %lld but global_step %lld", path,
			(long long)ft_adamw_steps(opt), (long long)st->global_step);
		goto out;
	}
	rc = 0;
out:
	free(path);
	return rc;
}

/* ---- checkpoint listing ----------------------------------------------------- */

static int64_t ckpt_step(const char *name)
{
	if (strncmp(name, "checkpoint-", 11) != 0) return -1;
	char *end;
	long long n = strtoll(name + 11, &end, 10);
	return *end || end == name + 11 || n < 0 ? -1 : n;
}

static int64_t *list_ckpts(const char *dir, size_t *n)
{
	*n = 0;
	DIR *d = opendir(dir);
	if (!d) return NULL;
	int64_t *v = NULL;
	size_t cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		int64_t s = ckpt_step(e->d_name);
		if (s < 0) continue;
		if (*n == cap) v = ft_xrealloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v);
		v[(*n)++] = s;
	}
	closedir(d);
	for (size_t i = 1; i < *n; i++)   /* few entries: insertion sort */
		for (size_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
			int64_t t = v[j]; v[j] = v[j - 1]; v[j - 1] = t;
		}
	return v;
}

char *ft_last_checkpoint(const char *dir)
{
	size_t n;
	int64_t *v = list_ckpts(dir, &n);
	char *r = NULL;
	if (n == 0) ft_fail("%s: no checkpoint-N directory to resume from", dir);
	else r = ft_xasprintf("%s/checkpoint-%lld", dir, (long long)v[n - 1]);
	free(v);
	return r;
}

int ftp_ckpt_rotate(const char *output_dir, int64_t limit)
{
	return ftp_ckpt_rotate_best(output_dir, limit, -1);
}

int ftp_ckpt_rotate_best(const char *output_dir, int64_t limit, int64_t best)
{
	size_t n;
	int64_t *v = list_ckpts(output_dir, &n);
	int rc = 0;
	size_t b = n;
	for (size_t i = 0; i < n; i++)
		if (v[i] == best) b = i;
	/* the best moves up to the second newest, so it is deleted last */
	for (size_t i = b; b < n && i + 2 < n; i++) {
		int64_t t = v[i]; v[i] = v[i + 1]; v[i + 1] = t;
	}
	if (b < n && limit == 1 && v[n - 1] != best) limit = 2;
	for (size_t i = 0; limit > 0 && i + (size_t)limit < n && rc == 0; i++) {
		char *d = ft_xasprintf("%s/checkpoint-%lld", output_dir, (long long)v[i]);
		rc = ft_remove_tree(d);
		free(d);
	}
	free(v);
	return rc;
}

int ftp_rl_ckpt_save(const ftp_rl_ckpt *c, json_t *state)
{
	char *dir = ft_xasprintf("%s/checkpoint-%lld", c->output_dir, (long long)c->step);
	char *f = NULL, *g = NULL;
	ft_atomic a;
	int rc = -1;
	if (ft_atomic_dir_open(&a, dir) < 0) goto out;
	f = ft_xasprintf("%s/optimizer.safetensors", a.tmp);
	g = ft_xasprintf("%s/%s", a.tmp, c->state_name);
	if (c->save_model(c->save_ctx, a.tmp) < 0 || ft_adamw_save(c->opt, f) < 0 ||
	    (c->extra && c->extra(c->extra_ctx, a.tmp) < 0) || ft_json_save_file_sorted(state, g, 2) < 0) {
		ft_fail_ctx("%s: ", dir);
		ft_atomic_dir_abort(&a);
		goto out;
	}
	if (ft_atomic_dir_commit(&a, 1) < 0) goto out;
	rc = c->save_total_limit > 0 ? ftp_ckpt_rotate(c->output_dir, c->save_total_limit) : 0;
out:
	json_decref(state);
	free(f);
	free(g);
	free(dir);
	return rc;
}

json_t *ftp_rl_ckpt_state(const char *dir, const char *name, const char *format, const char *what)
{
	char *path = ft_xasprintf("%s/%s", dir, name);
	json_t *j = ft_json_load_file(path);
	const char *fmt = j ? json_string_value(json_object_get(j, "format")) : NULL;
	if (j && (!fmt || strcmp(fmt, format))) {
		ft_fail("%s: not an ft-train %s state", path, what);
		json_decref(j);
		j = NULL;
	}
	free(path);
	return j;
}

int64_t ftp_rl_ckpt_step(const char *dir, const char *name, const char *format, const char *what)
{
	json_t *j = ftp_rl_ckpt_state(dir, name, format, what);
	int64_t step = j ? json_integer_value(json_object_get(j, "global_step")) : -1;
	json_decref(j);
	return step;
}
