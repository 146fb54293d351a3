/* trainer.c - the training loop; see trainer.h.
 *
 * The structure follows transformers' Trainer._inner_training_loop (5.x):
 * an epoch is ceil(n_batches / accum) optimizer steps, the last one taking
 * the remaining micro-batches; the micro-batches of a step are read first
 * so the loss can be divided by the label tokens of the whole step
 * (num_items_in_batch); then clip, AdamW with the scheduled lr, scheduler
 * advance, and log / evaluate / save as DefaultFlowCallback decides.
 */
#define _GNU_SOURCE
#include "train/trainer.h"
#include "train/trainer_internal.h"
#include "train/dist.h"
#include "train/optim_ext.h"
#include "util/error.h"
#include "util/atomicfile.h"
#include "util/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void ft_train_opts_default(ft_train_opts *o)
{
	memset(o, 0, sizeof *o);
	o->learning_rate = 5e-5;
	o->adam_beta1 = 0.9;
	o->adam_beta2 = 0.999;
	o->adam_epsilon = 1e-8;
	o->max_grad_norm = 1.0;
	o->lr_scheduler_type = FT_SCHED_LINEAR;
	o->gradient_accumulation_steps = 1;
	o->num_train_epochs = 3.0;
	o->max_steps = -1;
	o->logging_steps = 500;
	o->save_steps = 500;
	o->train_batch_size = 1;
	o->seed = 42;
}

int ft_train_plan_make(const ft_train_opts *o, ft_train_plan *p)
{
	memset(p, 0, sizeof *p);
	int64_t ga = o->gradient_accumulation_steps;
	if (ga < 1) return ft_fail("gradient_accumulation_steps must be >= 1");
	ga = ft_dist_step_batches((int)ga, ft_dist_size(o->dist));   /* the global batch */
	if (o->n_batches < 1) return ft_fail("the training data holds no batches");
	p->steps_per_epoch = o->n_batches / ga + (o->n_batches % ga > 0);
	if (p->steps_per_epoch < 1) p->steps_per_epoch = 1;
	if (o->max_steps > 0) {
		p->total_steps = o->max_steps;
		p->num_epochs = o->max_steps / p->steps_per_epoch + (o->max_steps % p->steps_per_epoch > 0);
	} else {
		if (!(o->num_train_epochs > 0))
			return ft_fail("num_train_epochs must be > 0 (or give max_steps)");
		p->total_steps = (int64_t)ceil(o->num_train_epochs * (double)p->steps_per_epoch);
		p->num_epochs = (int64_t)ceil(o->num_train_epochs);
	}
	p->warmup_steps = ft_sched_warmup_steps(o->warmup, p->total_steps);
	return 0;
}

int ft_strategy_parse(const char *name)
{
	static const char *const names[] = { "steps", "epoch", "no" };
	for (int i = 0; i < 3; i++)
		if (!strcmp(name, names[i])) return i;
	return ft_fail("'%s' is not a strategy (steps, epoch, no)", name);
}

/* DefaultFlowCallback: every `every` steps, or at an epoch's end, or never. */
static int strategy_due(int strategy, int64_t every, int64_t step, int epoch_end)
{
	if (strategy == FT_STRATEGY_EPOCH) return epoch_end;
	if (strategy == FT_STRATEGY_NO) return 0;
	return every > 0 && step % every == 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* ---- batches held for one accumulation step ----------------------------- */

typedef struct {
	ft_batch *b;
	int n, cap;
} mbatches;

static int read_step_batches(ft_batch_source *src, mbatches *mb, int want, int64_t *done)
{
	if (want > mb->cap) {
		mb->b = ft_xrealloc(mb->b, want * sizeof *mb->b);
		memset(mb->b + mb->cap, 0, (want - mb->cap) * sizeof *mb->b);
		mb->cap = want;
	}
	mb->n = 0;
	for (int i = 0; i < want; i++) {
		int rc = src->next(src->self, &mb->b[i]);
		if (rc < 0) return -1;
		if (rc == 0)
			return ft_fail("the training data ended after %lld batches of this epoch, "
				       "fewer than its manifest says", (long long)*done);
		mb->n++;
		(*done)++;
	}
	return 0;
}

/* transformers counts num_items_in_batch over labels[..., 1:]: the loss
 * shifts labels, so position 0 of a row is never a target. */
static int64_t shifted_label_count(const ft_batch *b)
{
	int64_t n = 0;
	for (int r = 0; r < b->B; r++) {
		const int32_t *l = b->labels + (size_t)r * b->T;
		for (int t = 1; t < b->T; t++) n += l[t] != FT_IGNORE_INDEX;
	}
	return n;
}

/* LLaMA-Factory's most reported failure, "loss 0 / grad_norm nan", said
 * at the step it happens with what usually causes it. */
static int nonfinite_fail(int64_t step, int64_t batch, double loss, double gnorm)
{
	return ft_fail("step %lld (from batch %lld of the epoch): the %s is %g: stopped before the "
		       "update. Lower --learning_rate, check the model's config (rms_norm_eps, "
		       "dtype) and the data's labels; --skip_nonfinite skips such steps instead",
		       (long long)step, (long long)batch, isfinite(loss) ? "gradient norm" : "loss",
		       isfinite(loss) ? gnorm : loss);
}

static int skip_batches(ft_batch_source *src, int64_t n)
{
	ft_batch b = {0};
	int rc = 0;
	for (int64_t i = 0; i < n && rc == 0; i++) {
		int r = src->next(src->self, &b);
		if (r < 0) rc = -1;
		else if (r == 0) rc = ft_fail("the training data ended while skipping to the checkpoint's "
					      "position (batch %lld): is it the same data?", (long long)n);
	}
	ft_batch_free(&b);
	return rc;
}

static int64_t batch_tokens(const ft_batch *b)
{
	return b->n_tokens > 0 ? b->n_tokens : (int64_t)b->B * b->T;
}

/* ---- evaluation ---------------------------------------------------------- */

/* With ranks, each evaluates every n-th batch and the sums are summed. */
static int evaluate_on(ft_train_model *m, ft_batch_source *val, struct ft_dist *d, double *eval_loss,
		       int64_t *n_batches, int64_t *n_rows)
{
	if (val->rewind(val->self) < 0) return -1;
	ft_batch b = {0};
	double num = 0, rows = 0;
	int64_t nb = 0, idx = 0;
	int rc;
	while ((rc = val->next(val->self, &b)) == 1) {
		double ls;
		int64_t n;
		if (ft_dist_owner(idx++, ft_dist_size(d)) != ft_dist_rank(d)) continue;
		if (m->forward(m->self, &b, &ls, &n) < 0) { rc = -1; break; }
		nb++;
		if (n == 0) continue;   /* no label tokens: nothing to average */
		/* transformers: per-batch mean loss (float32), repeated batch_size
		 * times, then the mean of all of them */
		float lb = (float)(ls / (double)n);
		num += (double)lb * b.B;
		rows += b.B;
	}
	ft_batch_free(&b);
	if (rc < 0) return -1;
	double sums[3] = { num, rows, (double)nb };
	if (ft_dist_sum_f64(d, sums, 3, "evaluation all-reduce") < 0) return -1;
	num = sums[0], rows = sums[1], nb = (int64_t)sums[2];
	if (rows == 0) return ft_fail("the validation data holds no label tokens");
	*eval_loss = (double)(float)(num / rows);
	if (n_batches) *n_batches = nb;
	if (n_rows) *n_rows = (int64_t)rows;
	return 0;
}

int ft_evaluate(ft_train_model *m, ft_batch_source *val, double *eval_loss, int64_t *n_batches,
		int64_t *n_rows)
{
	return evaluate_on(m, val, NULL, eval_loss, n_batches, n_rows);
}

/* ---- logging --------------------------------------------------------------- */

typedef struct {
	const ft_train_opts *o;
	const ft_train_plan *p;
	FILE *log;
	double t0;
	int64_t start_step, start_tokens;
	ft_eval_stats ev;             /* the last evaluation */
	const char *evk[FT_MAX_METRICS];   /* its model metrics (ft_train_model.metrics) */
	double evv[FT_MAX_METRICS];
	size_t nev;
} runctx;

static void fill_entry(const runctx *c, const ftp_tstate *st, ft_trainlog_entry *e)
{
	ft_trainlog_entry_init(e);
	e->current_steps = st->global_step;
	e->total_steps = c->p->total_steps;
	if (ft_dist_size(c->o->dist) > 1) e->world_size = ft_dist_size(c->o->dist);
	if (st->peak_bytes) e->peak_memory_bytes = (int64_t)st->peak_bytes;
	e->epoch = st->epoch;
	e->percentage = c->p->total_steps
		? round((double)st->global_step / c->p->total_steps * 100 * 100) / 100 : 100;
	double el = now_s() - c->t0;
	int64_t done = st->global_step - c->start_step;
	double rem = done > 0 ? (c->p->total_steps - st->global_step) * (el / done) : 0;
	ft_trainlog_timedelta(el, e->elapsed_time);
	ft_trainlog_timedelta(rem, e->remaining_time);
	if (el > 0 && st->tokens_seen > 0) {
		e->throughput = round((st->tokens_seen - c->start_tokens) / el * 100) / 100;
		e->total_tokens = st->tokens_seen;
	}
}

static int write_log(runctx *c, const ft_trainlog_entry *e)
{
	if (!c->log) return 0;
	return ft_trainlog_write(c->log, e);
}

static void history_add(ftp_tstate *st, json_t *obj)
{
	json_object_set_new(obj, "epoch", json_real(st->epoch));
	json_object_set_new(obj, "step", json_integer(st->global_step));
	json_array_append_new(st->log_history, obj);
}

/* The log line with the model's metrics after LLaMA-Factory's fields, and
 * the same metrics in the log_history entry. */
static int write_log_metrics(runctx *c, const ft_trainlog_entry *e, json_t *hist,
			     const char *const *k, const double *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		json_object_set_new(hist, k[i], json_real(v[i]));
	if (!c->log || n == 0) return 0;   /* then the caller writes the plain line */
	return ft_trainlog_write_extra(c->log, e, k, v, n);
}

static int do_log(runctx *c, ftp_tstate *st, double grad_norm, double lr, ft_train_model *m)
{
	ft_trainlog_entry e;
	fill_entry(c, st, &e);
	/* transformers: tr_loss / (global_step - last_logged), in double */
	e.loss = (double)st->tr_loss / (double)(st->global_step - st->last_logged);
	e.lr = lr;
	e.grad_norm = grad_norm;
	st->total_loss += (double)st->tr_loss;
	st->tr_loss = 0;
	st->last_logged = st->global_step;
	json_t *h = json_pack("{s:f, s:f, s:f}", "loss", e.loss, "grad_norm", grad_norm,
			      "learning_rate", lr);
	const char *mk[FT_MAX_METRICS];
	double mv[FT_MAX_METRICS];
	size_t nm = m->metrics ? m->metrics(m->self, 0, mk, mv, FT_MAX_METRICS) : 0;
	if (write_log_metrics(c, &e, h, mk, mv, nm) < 0) {
		json_decref(h);
		return -1;
	}
	history_add(st, h);
	if (!nm && write_log(c, &e) < 0) return -1;
	if (c->o->on_event) c->o->on_event(c->o->ctx, FT_EV_LOG, &e, NULL);
	return 0;
}

static int do_eval(runctx *c, ftp_tstate *st, ft_train_model *m, ft_batch_source *val, double *out)
{
	double t = now_s(), loss;
	int64_t nb, rows;
	if (evaluate_on(m, val, c->o->dist, &loss, &nb, &rows) < 0) return ft_fail_ctx("evaluation: ");
	double rt = now_s() - t;
	*out = loss;
	c->ev = (ft_eval_stats){ loss, rt, nb, rows };
	ft_trainlog_entry e;
	fill_entry(c, st, &e);
	e.eval_loss = loss;
	json_t *h = json_pack("{s:f, s:f}", "eval_loss", loss, "eval_runtime", round(rt * 1e4) / 1e4);
	c->nev = m->metrics ? m->metrics(m->self, 1, c->evk, c->evv, FT_MAX_METRICS) : 0;
	if (write_log_metrics(c, &e, h, c->evk, c->evv, c->nev) < 0) {
		json_decref(h);
		return -1;
	}
	history_add(st, h);
	if (!c->nev && write_log(c, &e) < 0) return -1;
	if (c->o->on_event) c->o->on_event(c->o->ctx, FT_EV_EVAL, &e, NULL);
	return 0;
}

/* ---- the loop ---------------------------------------------------------------- */

static ft_param **trainable_params(ft_train_model *m, size_t *n)
{
	size_t np = m->nparams(m->self), k = 0;
	ft_param **v = ft_xcalloc(np ? np : 1, sizeof *v);
	for (size_t i = 0; i < np; i++) {
		ft_param *p = m->param(m->self, i);
		if (p->trainable && p->g) v[k++] = p;
	}
	*n = k;
	return v;
}

/* trainer_log.jsonl: fresh for a new run; on resume keep only the lines
 * up to the checkpoint's step, so the log reads as one uninterrupted run. */
FILE *ft_train_log_open(const char *output_dir, int resume, int64_t resume_step)
{
	char *path = ft_xasprintf("%s/%s", output_dir, FT_TRAINLOG_NAME);
	FILE *fp = NULL;
	if (resume) {
		FILE *in = fopen(path, "r");
		char *keep = NULL;
		size_t keepn = 0;
		if (in) {
			FILE *mem = open_memstream(&keep, &keepn);
			char *line = NULL;
			size_t cap = 0;
			ssize_t n;
			ft_trainlog_entry e;
			while ((n = getline(&line, &cap, in)) > 0)
				if (ft_trainlog_parse(line, (size_t)n, &e) == 0 && e.current_steps <= resume_step)
					fwrite(line, 1, (size_t)n, mem);
			ft_errclear();
			free(line);
			fclose(in);
			fclose(mem);
		}
		fp = fopen(path, "w");
		if (fp && keepn) fwrite(keep, 1, keepn, fp);
		free(keep);
	} else {
		fp = fopen(path, "w");
	}
	if (!fp) ft_fail("%s:", path);
	free(path);
	return fp;
}

static FILE *open_log(const ft_train_opts *o, int64_t resume_step)
{
	return ft_train_log_open(o->output_dir, o->resume_dir != NULL, resume_step);
}

static int64_t count_nonembed(ft_train_model *m)
{
	int64_t n = 0;
	for (size_t i = 0; i < m->nparams(m->self); i++) {
		ft_param *p = m->param(m->self, i);
		if (!strstr(p->name, "embed_tokens")) n += (int64_t)p->n;
	}
	return n;
}

static int finish(const ft_train_opts *o, const ft_train_plan *p, ft_train_model *m,
		  ft_batch_source *val, runctx *c, ftp_tstate *st, ft_train_result *r,
		  double eval_loss_last, int64_t eval_step);

static int zero1_load(void *z, ft_adamw *opt, const char *path)
{
	return ft_zero1_load(z, opt, path);
}

int ft_train(const ft_train_opts *o, ft_train_model *m, ft_batch_source *train,
	     ft_batch_source *val, ft_train_result *r)
{
	memset(r, 0, sizeof *r);
	r->eval_loss = NAN;
	ft_train_plan p;
	if (ft_train_plan_make(o, &p) < 0) return -1;
	ft_sched sched;
	if (ft_sched_init(&sched, o->lr_scheduler_type, o->learning_rate, p.warmup_steps, p.total_steps) < 0 ||
	    ft_sched_kwargs(&sched, o->lr_scheduler_kwargs) < 0)
		return -1;
	size_t np;
	ft_param **params = trainable_params(m, &np);
	if (np == 0) {
		free(params);
		return ft_fail("the model has no trainable parameters");
	}
	ft_adamw_opts ao = { o->adam_beta1, o->adam_beta2, o->adam_epsilon, o->weight_decay };
	ft_adamw *opt = ft_adamw_new(params, np, &ao);
	/* data parallel: ZeRO-1 keeps this rank's slice of the moments; opt
	 * then only carries the whole state to and from checkpoints */
	const int rank = ft_dist_rank(o->dist), world = ft_dist_size(o->dist);
	if (o->zero && world > 1 && o->optim_ext) {
		free(params);
		ft_adamw_free(opt);
		return ft_fail("--zero 1 shards plain AdamW's state; the extras' optimizers (LoRA+, BAdam, "
			       "Muon, Adam-mini, GaLore) run under mpirun without --zero");
	}
	/* a model that steps itself (the device) keeps its own slice
	 * (ft_cuda_train_zero): its state_out then runs on every rank */
	const int dev_zero = o->zero && world > 1 && m->step;
	ft_zero1 *zero = o->zero && world > 1 && !m->step ? ft_zero1_new(o->dist, params, np, &ao) : NULL;
	/* ... and its moments: the host holds them only from a resume's load
	 * to state_in and from state_out to the checkpoint written, if at all
	 * (state_out may have them fetched as the file is written).  ZeRO-1's
	 * whole optimizer holds none: a save fetches them one tensor at a
	 * time, a resume hands them on as they are read. */
	if (m->step || zero) ft_adamw_drop_moments(opt);
	double *lsv = NULL;   /* a step's micro-batch losses and the stop flag */
	ftp_tstate st = { .log_history = json_array() };
	mbatches mb = {0};
	runctx c = { .o = o, .p = &p };
	int rc = -1;
	int64_t eval_step = -1;
	double eval_loss = NAN;
	const int64_t ga = ft_dist_step_batches(o->gradient_accumulation_steps, world);
	const int64_t eval_every = o->eval_steps > 0 ? o->eval_steps : o->logging_steps;

	if (o->optim_ext && m->step && !m->ext_step) {
		ft_fail("the optimizers of LLaMA-Factory's extras (LoRA+, BAdam, Muon, Adam-mini, GaLore) "
			"run on the CPU only with this stage (--device cpu)");
		goto out;
	}
	if (ft_mkdirs(o->output_dir) < 0) goto out;
	/* ZeRO-1: each rank gets its slice only, from rank 0 (dist.h) */
	ftp_opt_load load = zero ? zero1_load : dev_zero ? m->zero_load : NULL;
	if (o->resume_dir && ftp_ckpt_load(o, &p, opt, &st, load, zero ? (void *)zero : m->self) < 0)
		goto out;
	if (o->resume_dir && m->ckpt_load && m->ckpt_load(m->self, o->resume_dir) < 0) goto out;
	if (o->resume_dir && m->state_in && m->state_in(m->self, opt) < 0) goto out;
	if (m->step) ft_adamw_drop_moments(opt);
	if (o->resume_dir && m->set_position)
		m->set_position(m->self, st.epoch_idx * o->n_batches + st.batches_done);
	if (rank == 0 && !(c.log = open_log(o, st.global_step))) goto out;
	c.t0 = now_s();
	c.start_step = st.global_step;
	c.start_tokens = st.tokens_seen;
	const double flos_per_token = 6.0 * (double)count_nonembed(m);
	m->zero_grad(m->self);

	/* eval_on_start: HF's _evaluate before the epochs, also on resume */
	if (val && o->eval_on_start &&
	    (do_eval(&c, &st, m, val, &eval_loss) < 0 ||
	     ftp_best_start_eval(o, &st, eval_loss, c.evk, c.evv, c.nev) < 0))
		goto out;
	int stop = st.global_step >= p.total_steps;
	const int64_t runs = ft_data_runs(o), first_ep = st.epoch_idx;
	for (int64_t ep = first_ep; ep < p.num_epochs && !stop; ep++) {
		int64_t done = 0, skip = ep == first_ep && !o->ignore_data_skip ? st.batches_done : 0;
		/* Epoch ep reads run ep % runs of the stream: the next run follows
		 * where the last epoch stopped, so the stream is reopened only
		 * to start over or to reach a checkpoint's position. */
		if (ep == first_ep || ep % runs == 0) {
			if (train->rewind(train->self) < 0) goto out;
			if (skip_batches(train, (ep % runs) * o->n_batches + skip) < 0) goto out;
		}
		done = skip;
		st.epoch_idx = ep;
		int64_t first = done / ga;
		int64_t remainder = o->n_batches % ga ? o->n_batches % ga : ga;
		for (int64_t us = first; us < p.steps_per_epoch; us++) {
			int want = (int)(us != p.steps_per_epoch - 1 ? ga : remainder);
			if (read_step_batches(train, &mb, want, &done) < 0) goto out;
			int64_t ntok = 0;
			for (int i = 0; i < mb.n; i++) ntok += shifted_label_count(&mb.b[i]);
			if (m->batch_mean) ntok = mb.n;   /* mean of the micro-batches' means */
			if (m->batch_mean == FT_BATCH_MEAN_SUM) ntok = world;   /* their sum, mean over ranks */
			/* num_items_in_batch: the model divides each micro-batch's
			 * summed loss by the label tokens of the whole step */
			float scale = ntok > 0 ? (float)(1.0 / (double)ntok) : 0.0f;
			float this_step = 0;
			lsv = ft_xrealloc(lsv, (mb.n + 1) * sizeof *lsv);
			ft_dist_set_step(o->dist, st.global_step + 1);
			int last_own = -1, summed = 0;
			for (int i = 0; i < mb.n; i++)
				if (ft_dist_owner(i, world) == rank) last_own = i;
			for (int i = 0; i < mb.n; i++) {
				int64_t n;
				lsv[i] = 0;
				if (ft_dist_owner(i, world) != rank) continue;
				/* dropout masks follow the global micro-batch count,
				 * as on one process */
				if (world > 1 && m->set_position)
					m->set_position(m->self, ep * o->n_batches + done - mb.n + i);
				/* the last backward of the step overlaps the gradient sum */
				ftp_overlap *ov = i == last_own ? ftp_dist_overlap_begin(o, m, params, np) : NULL;
				int fb = m->forward_backward(m->self, &mb.b[i], scale, &lsv[i], &n);
				summed = ov != NULL;
				if (ftp_dist_overlap_end(ov) < 0 || fb < 0) goto out;
			}
			lsv[mb.n] = o->stop && *o->stop;
			if (ftp_dist_reduce(o, m, params, np, lsv, mb.n, summed) < 0) goto out;
			for (int i = 0; i < mb.n; i++) {
				double ls = lsv[i];
				float step_loss = ntok > 0 ? (float)(ls / (double)ntok) : 0.0f;
				/* logging_nan_inf_filter: a nan/inf loss counts as the mean
				 * of the window so far, as transformers does */
				if (!isfinite(step_loss))
					st.tr_loss += st.tr_loss / (float)(1 + st.global_step - st.last_logged);
				else
					st.tr_loss += step_loss;
				this_step += step_loss;
				st.tokens_seen += batch_tokens(&mb.b[i]);
				st.total_flos += flos_per_token * mb.b[i].B * mb.b[i].T;
			}
			double gnorm, lr = ft_sched_lr(&sched, st.global_step);
			int finite;
			if (m->step) {   /* the optimizer lives with the weights (GPU):
					    clipping and the update are one call there */
				int r = o->optim_ext
					? m->ext_step(m->self, o->optim_ext, &ao, lr,
						      ft_sched_lambda(&sched, st.global_step), o->max_grad_norm, &gnorm)
					: m->step(m->self, &ao, lr, o->max_grad_norm, &gnorm);
				if (r < 0) goto out;
				/* an fp16 overflow skip is the loss scaler's business */
				finite = isfinite(this_step) && (r == 1 || isfinite(gnorm));
			} else {
				const ft_optim_ext *x = o->optim_ext;
				if (x && x->pre_clip) x->pre_clip(x->self);
				gnorm = ft_clip_grad_norm(params, np, o->max_grad_norm);
				finite = isfinite(this_step) && isfinite(gnorm);
				if (finite && zero) {   /* skipped: no update from NaN */
					if (ft_zero1_step(zero, lr) < 0) goto out;
				} else if (finite && x) {
					if (x->step(x->self, opt, lr, ft_sched_lambda(&sched, st.global_step)) < 0)
						goto out;
				} else if (finite) {
					ft_adamw_step(opt, lr);
				}
			}
			if (!finite && !o->skip_nonfinite) {
				nonfinite_fail(st.global_step + 1, done - mb.n, this_step, gnorm);
				goto out;
			}
			m->zero_grad(m->self);
			if (m->peak_bytes) st.peak_bytes = m->peak_bytes(m->self);
			st.global_step++;
			st.batches_done = done;
			st.epoch = (double)ep + (double)done / (double)o->n_batches;
			int epoch_end = done == o->n_batches;
			if (epoch_end) {   /* position: start of next epoch */
				st.epoch_idx = ep + 1;
				st.batches_done = 0;
			}
			int last = st.global_step >= p.total_steps;
			if (o->on_event) {
				ft_trainlog_entry e;
				fill_entry(&c, &st, &e);
				e.lr = lr;
				e.grad_norm = gnorm;
				e.loss = this_step;   /* this step's loss, not a window mean */
				o->on_event(o->ctx, FT_EV_STEP, &e, NULL);
			}
			if (strategy_due(o->logging_strategy, o->logging_steps, st.global_step, epoch_end) ||
			    (o->logging_first_step && st.global_step == 1))
				if (do_log(&c, &st, gnorm, lr, m) < 0) goto out;
			/* DefaultFlowCallback: eval_delay <= the step (the epoch) */
			double at = o->eval_strategy == FT_STRATEGY_EPOCH ? st.epoch : (double)st.global_step;
			if (val && o->eval_strategy != FT_STRATEGY_NO && o->eval_delay <= at &&
			    (strategy_due(o->eval_strategy, eval_every, st.global_step, epoch_end) ||
			     (last && (eval_every > 0 || o->eval_strategy == FT_STRATEGY_EPOCH)))) {
				if (do_eval(&c, &st, m, val, &eval_loss) < 0) goto out;
				eval_step = st.global_step;
				if (ftp_best_after_eval(o, &st, eval_loss, c.evk, c.evv, c.nev) < 0) goto out;
			}
			/* all ranks stop together, at the step any rank was asked to */
			int interrupted = world > 1 ? lsv[mb.n] > 0 : o->stop && *o->stop;
			if (strategy_due(o->save_strategy, o->save_steps, st.global_step, epoch_end) ||
			    (last && o->save_strategy != FT_STRATEGY_NO) || interrupted) {
				/* ZeRO-1: the others send rank 0 their slices as it writes */
				if (zero && ft_zero1_save(zero, opt) < 0) goto out;
				/* only rank 0 writes files */
				if ((rank == 0 || dev_zero) && m->state_out && m->state_out(m->self, opt) < 0)
					goto out;
				ftp_best_before_save(o, &st);
				if (rank == 0 &&
				    ftp_ckpt_save(o, &p, m, opt, &sched, &st, r->checkpoint, sizeof r->checkpoint) < 0)
					goto out;
				if (rank == 0 && o->on_event) o->on_event(o->ctx, FT_EV_SAVE, NULL, r->checkpoint);
				if (rank == 0 && o->save_total_limit > 0 &&
				    ftp_ckpt_rotate_best(o->output_dir, o->save_total_limit, ftp_best_ckpt_step(&st)) < 0)
					goto out;
				/* the whole state again only at the next save */
				if (m->step || zero) ft_adamw_drop_moments(opt);
			}
			if (interrupted) {
				r->interrupted = 1;
				stop = 1;
				break;
			}
			if (last || ftp_best_should_stop(o, &st)) {   /* the end, or early stopping */
				stop = 1;
				break;
			}
		}
	}
	if (r->interrupted) {
		r->global_step = st.global_step;
		r->total_steps = p.total_steps;
		r->epoch = st.epoch;
		rc = 0;
		goto out;
	}
	rc = finish(o, &p, m, val, &c, &st, r, eval_loss, eval_step);
out:
	if (c.log) fclose(c.log);
	for (int i = 0; i < mb.cap; i++) ft_batch_free(&mb.b[i]);
	free(mb.b);
	json_decref(st.log_history);
	ft_adamw_free(opt);
	ft_zero1_free(zero);
	free(lsv);
	free(params);
	return rc;
}

/* End of training: the final log line, the model and the results files. */
static int finish(const ft_train_opts *o, const ft_train_plan *p, ft_train_model *m,
		  ft_batch_source *val, runctx *c, ftp_tstate *st, ft_train_result *r,
		  double eval_loss, int64_t eval_step)
{
	double runtime = now_s() - c->t0;
	st->total_loss += (double)st->tr_loss;
	st->tr_loss = 0;
	int64_t steps = st->global_step;
	double train_loss = st->total_loss / (double)(steps > 0 ? steps : 1);
	int64_t run_steps = st->global_step - c->start_step;
	double samples = o->max_steps > 0   /* the global batch: x ranks */
		? (double)p->total_steps * o->train_batch_size * o->gradient_accumulation_steps *
		  ft_dist_size(o->dist)
		: (double)o->n_batches * o->train_batch_size * o->num_train_epochs;
	samples = samples * run_steps / (double)(p->total_steps ? p->total_steps : 1);
	double total_flos = st->total_flos;

	if (val && eval_step != st->global_step) {
		if (do_eval(c, st, m, val, &eval_loss) < 0) return -1;
		eval_step = st->global_step;
	}
	history_add(st, json_pack("{s:f, s:f, s:f, s:f, s:f}", "train_loss", train_loss,
				  "train_runtime", round(runtime * 1e4) / 1e4,
				  "train_samples_per_second", runtime > 0 ? round(samples / runtime * 1e3) / 1e3 : 0.0,
				  "train_steps_per_second", runtime > 0 ? round(run_steps / runtime * 1e3) / 1e3 : 0.0,
				  "total_flos", total_flos));
	ft_trainlog_entry e;
	fill_entry(c, st, &e);
	if (write_log(c, &e) < 0) return -1;
	if (ft_dist_rank(o->dist) != 0) goto result;   /* rank 0 writes the files */

	if (ftp_best_save_model(o, m, st) < 0) return ft_fail_ctx("%s: saving the model: ", o->output_dir);
	/* the best model's evaluation (LLaMA-Factory evaluates the loaded best) */
	if (o->load_best_model_at_end && st->best_ckpt[0] && !isnan(eval_loss))
		ftp_best_eval_entry(st, &eval_loss, c->evk, c->evv, &c->nev, FT_MAX_METRICS);
	for (const char *const *f = o->extra_files; f && *f; f++)
		if (ft_copy_into(*f, o->output_dir) < 0) return -1;
	json_t *ts = ftp_trainer_state_json(o, p, st);
	char *path = ft_xasprintf("%s/trainer_state.json", o->output_dir);
	int rc = ft_json_save_file_sorted(ts, path, 2);
	free(path);
	json_decref(ts);
	if (rc < 0) return -1;

	/* ft extension on device runs: the allocator's high-water mark */
	const char *tk[] = { "epoch", "total_flos", "train_loss", "train_runtime",
			     "train_samples_per_second", "train_steps_per_second", "peak_memory_bytes" };
	double tv[] = { st->epoch, total_flos, train_loss, round(runtime * 1e4) / 1e4,
			runtime > 0 ? round(samples / runtime * 1e3) / 1e3 : 0,
			runtime > 0 ? round(run_steps / runtime * 1e3) / 1e3 : 0, (double)st->peak_bytes };
	const size_t nt = st->peak_bytes ? 7 : 6;
	if (ft_save_results(o->output_dir, "train_results.json", tk, tv, nt) < 0) return -1;
	if (!isnan(eval_loss)) {
		double ert = round(c->ev.runtime * 1e4) / 1e4;
		double esps = c->ev.runtime > 0 ? round(c->ev.rows / c->ev.runtime * 1e3) / 1e3 : 0;
		double ests = c->ev.runtime > 0 ? round(c->ev.batches / c->ev.runtime * 1e3) / 1e3 : 0;
		const char *ek[6 + FT_MAX_METRICS] = { "epoch", "eval_loss", "eval_runtime",
						       "eval_samples_per_second", "eval_steps_per_second",
						       "perplexity" };
		double ev[6 + FT_MAX_METRICS] = { st->epoch, eval_loss, ert, esps, ests, exp(eval_loss) };
		/* the preference stages: no perplexity, their eval_ metrics instead */
		size_t ne = m->batch_mean ? 5 : 6;
		for (size_t i = 0; i < c->nev; i++) {
			ek[ne] = c->evk[i];
			ev[ne++] = c->evv[i];
		}
		if (ft_save_results(o->output_dir, "eval_results.json", ek, ev, ne) < 0) return -1;
		const char *ak[12 + FT_MAX_METRICS];
		double av[12 + FT_MAX_METRICS];
		memcpy(ak, ek, ne * sizeof *ak);
		memcpy(av, ev, ne * sizeof *av);
		const char *tk2[] = { "total_flos", "train_loss", "train_runtime", "train_samples_per_second",
				      "train_steps_per_second" };
		for (size_t i = 0; i < 5; i++) {
			ak[ne + i] = tk2[i];
			av[ne + i] = tv[1 + i];
		}
		if (st->peak_bytes) {
			ak[ne + 5] = tk[6];
			av[ne + 5] = tv[6];
		}
		if (ft_save_results(o->output_dir, "all_results.json", ak, av, ne + nt - 1) < 0) return -1;
	} else if (ft_save_results(o->output_dir, "all_results.json", tk, tv, nt) < 0) {
		return -1;
	}
result:
	r->global_step = st->global_step;
	r->total_steps = p->total_steps;
	r->epoch = st->epoch;
	r->train_loss = train_loss;
	r->train_runtime = runtime;
	r->tokens_seen = st->tokens_seen;
	r->eval_loss = eval_loss;
	return 0;
}
