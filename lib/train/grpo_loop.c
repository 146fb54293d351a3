/* grpo_loop.c - the GRPO stage's loop (grpo_loop.h). */
#include "train/grpo_internal.h"
#include "format/trainlog.h"
#include "model/model_pref.h"
#include "train/ppo_model.h"
#include "train/trainer_internal.h"   /* ftp_dist_reduce: the gradient sum as ft_train's */
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* TRL's metrics, each the mean of the values recorded in the logging
 * window (generation metrics once per generation batch, loss metrics
 * once per micro-batch); a key with no value in the window is left out. */
enum {
	M_MEAN_LEN, M_MIN_LEN, M_MAX_LEN, M_CLIPPED, M_MEAN_TERM, M_MIN_TERM, M_MAX_TERM,
	M_REWARD, M_REWARD_STD, M_FRAC_ZERO, M_KL, M_LOW_MEAN, M_LOW_MIN, M_HIGH_MEAN, M_HIGH_MAX,
	M_REGION, M_ENTROPY, M_FIXED
};
static const char *const metric_keys[M_FIXED] = {
	"completions/mean_length", "completions/min_length", "completions/max_length",
	"completions/clipped_ratio", "completions/mean_terminated_length",
	"completions/min_terminated_length", "completions/max_terminated_length", "reward", "reward_std",
	"frac_reward_zero_std", "kl", "clip_ratio/low_mean", "clip_ratio/low_min", "clip_ratio/high_mean",
	"clip_ratio/high_max", "clip_ratio/region_mean", "entropy",
};

static void metrics_init(ftp_grpo_metrics *mt, const ft_grpo_loop_opts *o)
{
	mt->n = M_FIXED + 2 * o->n_rewards;
	mt->sum = ft_xcalloc((size_t)mt->n, sizeof *mt->sum);
	mt->cnt = ft_xcalloc((size_t)mt->n, sizeof *mt->cnt);
	mt->keys = ft_xcalloc((size_t)mt->n, sizeof *mt->keys);
	for (int i = 0; i < M_FIXED; i++) mt->keys[i] = ft_xstrdup(metric_keys[i]);
	for (int k = 0; k < o->n_rewards; k++) {
		mt->keys[M_FIXED + 2 * k] = ft_xasprintf("rewards/%s/mean", o->reward_names[k]);
		mt->keys[M_FIXED + 2 * k + 1] = ft_xasprintf("rewards/%s/std", o->reward_names[k]);
	}
}

static void metrics_free(ftp_grpo_metrics *mt)
{
	for (int i = 0; i < mt->n; i++) free(mt->keys[i]);
	free(mt->keys);
	free(mt->sum);
	free(mt->cnt);
}

static void put(ftp_grpo_metrics *mt, int k, double v)
{
	if (isnan(v)) return;   /* TRL's log() drops NaN values before averaging */
	mt->sum[k] += v;
	mt->cnt[k]++;
}

/* mean and unbiased std of x[0..n) (nanstd) */
static void mean_std(const double *x, size_t n, double *mean, double *std)
{
	double s = 0, v = 0;
	for (size_t i = 0; i < n; i++) s += x[i];
	*mean = s / n;
	for (size_t i = 0; i < n; i++) v += (x[i] - *mean) * (x[i] - *mean);
	*std = n > 1 ? sqrt(v / (n - 1)) : NAN;
}

void ftp_grpo_gen_free(ftp_grpo_gen *g)
{
	for (int i = 0; g->comp && i < g->N; i++) ft_i32vec_free(&g->comp[i]);
	free(g->comp); free(g->pidx); free(g->ids); free(g->labels); free(g->len);
	free(g->mask); free(g->adv); free(g->old); free(g->ref); free(g->rows);
	memset(g, 0, sizeof *g);
}

/* TRL's completion: the tokens up to and including the first eos (ft's
 * generator drops the stop token: put it back when it stopped early). */
static void fix_completion(const ft_grpo_loop_opts *o, ft_i32vec *c)
{
	if ((int)c->n < o->max_completion_length && o->eos_id >= 0) ft_i32vec_push(c, o->eos_id);
}

/* TRL's is_truncated: the last token is neither eos nor pad */
static int truncated(const ft_grpo_loop_opts *o, const ft_i32vec *c)
{
	int32_t last = c->n ? c->v[c->n - 1] : o->pad_id;
	return last != o->eos_id && last != o->pad_id;
}

/* The grid is TRL's width: its prompt_completion_ids are the prompts
 * left-padded to the longest one beside the completions right-padded to
 * the longest one, so every forward of TRL sees T = max prompt + max
 * completion.  ft keeps each row's tokens from position 0 (RoPE is
 * relative, the pads are masked), but the width must be TRL's: NEFTune's
 * noise is alpha / sqrt(T * d), T the width (output.size(1)). */
void ftp_grpo_build_grid(ftp_grpo_gen *g, const ft_i32vec *prompts, const ft_grpo_loop_opts *o)
{
	int maxq = 0, maxc = 0;
	for (int i = 0; i < g->N; i++) {
		if ((int)prompts[g->pidx[i]].n > maxq) maxq = (int)prompts[g->pidx[i]].n;
		if ((int)g->comp[i].n > maxc) maxc = (int)g->comp[i].n;
	}
	int T = maxq + maxc;
	g->T = T;
	size_t n = (size_t)g->N * T;
	g->ids = ft_xcalloc(n, sizeof *g->ids);
	g->labels = ft_xmalloc(n * sizeof *g->labels);
	g->mask = ft_xcalloc(n, sizeof *g->mask);
	g->len = ft_xmalloc((size_t)g->N * sizeof *g->len);
	for (int i = 0; i < g->N; i++) {
		const ft_i32vec *q = &prompts[g->pidx[i]], *a = &g->comp[i];
		g->len[i] = (int32_t)(q->n + a->n);
		for (int t = 0; t < T; t++) {
			size_t k = (size_t)i * T + t, lq = q->n, la = a->n;
			g->ids[k] = t < (int)lq ? q->v[t] : t < (int)(lq + la) ? a->v[t - lq] : 0;
			g->labels[k] = t >= (int)lq && t < (int)(lq + la) ? a->v[t - lq] : FT_IGNORE_INDEX;
		}
	}
	ft_batch b = { .B = g->N, .T = T, .input_ids = g->ids, .labels = g->labels };
	ft_ppo_mask(&b, g->mask);
	for (int i = 0; o->mask_truncated && i < g->N; i++)   /* before num_items_in_batch, as TRL */
		if (truncated(o, &g->comp[i])) memset(g->mask + (size_t)i * T, 0, T * sizeof(float));
	g->num_items = 0;
	for (size_t k = 0; k < n; k++) g->num_items += g->mask[k];
}

/* Rows rows[0..n) of the grid as a batch (ids and labels copied). */
static void sub_batch(const ftp_grpo_gen *g, const int *rows, int n, ft_batch *b)
{
	memset(b, 0, sizeof *b);
	b->B = n;
	b->T = g->T;
	b->input_ids = ft_xmalloc((size_t)n * g->T * sizeof(int32_t));
	b->labels = ft_xmalloc((size_t)n * g->T * sizeof(int32_t));
	b->lengths = ft_xmalloc((size_t)n * sizeof(int32_t));   /* HF's attention_mask */
	for (int i = 0; i < n; i++) {
		size_t s = (size_t)rows[i] * g->T, d = (size_t)i * g->T;
		b->lengths[i] = g->len[rows[i]];
		memcpy(b->input_ids + d, g->ids + s, g->T * sizeof(int32_t));
		memcpy(b->labels + d, g->labels + s, g->T * sizeof(int32_t));
		for (int t = 0; t < g->T; t++) b->n_label_tokens += g->labels[d + t] != FT_IGNORE_INDEX;
	}
}

static void gather_rows(const ftp_grpo_gen *g, const float *src, const int *rows, int n, float *dst)
{
	for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * g->T, src + (size_t)rows[i] * g->T, g->T * sizeof(float));
}

/* logp of rows[0..n) into out rows (train: dropout on, as TRL's model in train mode) */
static int logps_rows(const ft_pref_model *pm, const ftp_grpo_gen *g, const int *rows, int n, int train,
		      float *out)
{
	ft_batch b;
	sub_batch(g, rows, n, &b);
	float *lp = ft_xmalloc((size_t)n * g->T * sizeof *lp);
	int rc = pm->logps_forward(pm->base.self, &b, train, lp, NULL);
	for (int i = 0; rc == 0 && i < n; i++)
		memcpy(out + (size_t)rows[i] * g->T, lp + (size_t)i * g->T, g->T * sizeof(float));
	free(lp);
	ft_batch_free(&b);
	return rc;
}

/* Old (num_iterations > 1) and reference (beta != 0) log-probabilities,
 * in micro-batches of batch_size rows as TRL chunks them.  TRL computes
 * both inside training_step, after its model.train(): the old pass and
 * LoRA's reference (the same model, adapters disabled by use_adapter,
 * which leaves the mode alone) run in train mode, so NEFTune's hook
 * noises them (and, with the adapters off, no LoRA dropout remains); a
 * separate reference model is prepared in eval mode and has no hook. */
static int old_ref_passes(ftp_grpo_state *s, ftp_grpo_gen *g, const ft_grpo_loop_opts *o)
{
	const ft_pref_model *pm = &s->pm;
	int rc = 0, *rows = ft_xmalloc((size_t)g->N * sizeof *rows);
	for (int i = 0; i < g->N; i++) rows[i] = i;
	size_t n = (size_t)g->N * g->T;
	if (o->num_iterations > 1) g->old = ft_xcalloc(n, sizeof(float));
	if (o->grpo.beta != 0) g->ref = ft_xcalloc(n, sizeof(float));
	for (int i = 0; rc == 0 && i < g->N; i += o->batch_size) {
		int k = g->N - i < o->batch_size ? g->N - i : o->batch_size;
		if (g->old) rc = logps_rows(pm, g, rows + i, k, 1, g->old);
		if (rc == 0 && g->ref && o->ref) {
			rc = logps_rows(&s->rm, g, rows + i, k, 0, g->ref);
		} else if (rc == 0 && g->ref) {
			pm->set_adapters(pm->base.self, 0);
			rc = logps_rows(pm, g, rows + i, k, 1, g->ref);
			pm->set_adapters(pm->base.self, 1);
		}
	}
	free(rows);
	return rc;
}

/* TRL's completions/... over the whole generation batch: len[i] and
 * trunc[i] (0 or 1) of its N completions. */
static void length_metrics(ftp_grpo_state *s, const double *len, const double *trunc, int N)
{
	double sum = 0, mn = INFINITY, mx = 0, tsum = 0, tmn = INFINITY, tmx = 0;
	int clipped = 0, nterm = 0;
	for (int i = 0; i < N; i++) {
		double l = len[i];
		sum += l; if (l < mn) mn = l; if (l > mx) mx = l;
		if (trunc[i] != 0) { clipped++; continue; }
		nterm++;
		tsum += l; if (l < tmn) tmn = l; if (l > tmx) tmx = l;
	}
	if (nterm == 0) tsum = tmn = tmx = 0, nterm = 1;   /* TRL: zeros(1) */
	const double v[7] = { sum / N, mn, mx, (double)clipped / N, tsum / nterm, tmn, tmx };
	for (int k = 0; k < 7; k++) put(&s->mt, M_MEAN_LEN + k, v[k]);
}

static int world(const ft_grpo_loop_opts *o) { return ft_dist_size(o->dist); }

/* This rank's rows of the generation batch: [first, first + N) of W N */
static int first_row(const ft_grpo_loop_opts *o) { return ft_dist_rank(o->dist) * o->batch_size * o->grad_accum; }

/* The generation metrics of the whole batch (every rank's rows gathered,
 * as TRL's accelerator.gather): lengths, rewards, frac_reward_zero_std. */
static int generation_metrics(ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ftp_grpo_gen *g, const float *pf,
			      const float *rew, double fz, int Nw)
{
	int K = o->n_rewards, r0 = first_row(o);
	double *len = ft_xcalloc((size_t)Nw * 2, sizeof *len), *trunc = len + Nw;
	for (int i = 0; i < g->N; i++) {
		len[r0 + i] = (double)g->comp[i].n;
		trunc[r0 + i] = truncated(o, &g->comp[i]);
	}
	int rc = ft_dist_sum_f64(o->dist, len, (size_t)Nw * 2, "completion lengths");
	if (rc == 0) length_metrics(s, len, trunc, Nw);
	free(len);
	if (rc < 0) return -1;
	double *x = ft_xmalloc((size_t)Nw * sizeof *x), mean, sd;
	for (int k = 0; k < K; k++) {
		for (int i = 0; i < Nw; i++) x[i] = pf[(size_t)i * K + k];
		mean_std(x, (size_t)Nw, &mean, &sd);
		put(&s->mt, M_FIXED + 2 * k, mean);
		put(&s->mt, M_FIXED + 2 * k + 1, sd);
	}
	for (int i = 0; i < Nw; i++) x[i] = rew[i];
	mean_std(x, (size_t)Nw, &mean, &sd);
	put(&s->mt, M_REWARD, mean);
	put(&s->mt, M_REWARD_STD, sd);
	put(&s->mt, M_FRAC_ZERO, fz);
	free(x);
	return 0;
}

/* A binding that steps itself: its trainable weights (and, with opt,
 * AdamW's moments and step) into the host model m; nothing on the CPU. */
static int to_host(ftp_grpo_state *s, ft_adamw *opt)
{
	return s->pm.base.state_out ? s->pm.base.state_out(s->pm.base.self, opt) : 0;
}

/* Sample and score this rank's rows, gather every rank's rewards, the
 * group advantages over the whole batch (TRL gathers the rewards and
 * takes its process slice of the advantages); nothing of the model
 * changes here. */
static int generation(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts,
		      const size_t *uniq, int P, ftp_grpo_gen *g)
{
	if (to_host(s, NULL) < 0)   /* m samples with the weights trained so far */
		return -1;
	ft_model_dora_refresh(m);   /* and DoRA's scales of them (the decoder only reads those) */
	int G = o->num_generations, K = o->n_rewards, Nw = P * G, r0 = first_row(o);
	g->N = Nw / world(o);
	g->pidx = ft_xmalloc((size_t)g->N * sizeof *g->pidx);
	g->comp = ft_xcalloc((size_t)g->N, sizeof *g->comp);
	ft_i32vec *q = ft_xmalloc((size_t)g->N * sizeof *q);
	for (int i = 0; i < g->N; i++) {
		g->pidx[i] = uniq[(r0 + i) / G];
		q[i] = prompts[g->pidx[i]];   /* borrowed */
	}
	/* TRL samples inside training_step, after model.train(): NEFTune's
	 * hook noises model.generate's forwards too (a stream per generation
	 * batch, so a resumed run draws the same) */
	ft_model_set_gen_neftune(m, 1, o->seed ^ (0x67656e0000000000ULL + (uint64_t)s->gen * 0xbf58476d1ce4e5b9ULL));
	int rc = o->generate(o->gen_ctx, m, q, (size_t)g->N, o->seed + (uint64_t)s->gen * 1000003u, (uint64_t)r0,
			     g->comp);
	ft_model_set_gen_neftune(m, 0, 0);
	free(q);
	if (rc < 0) return -1;
	for (int i = 0; i < g->N; i++) fix_completion(o, &g->comp[i]);
	float *pf = ft_xcalloc((size_t)Nw * K, sizeof *pf), *rew = ft_xmalloc((size_t)Nw * sizeof *rew);
	float *adv = ft_xmalloc((size_t)Nw * sizeof *adv);
	double fz = 0;
	rc = o->score(o->score_ctx, g->pidx, g->comp, (size_t)g->N, pf + (size_t)r0 * K);
	/* the others' rows are 0 here: the sum is the gather */
	if (rc == 0) rc = ft_dist_sum_f32(o->dist, pf, (size_t)Nw * K, "rewards");
	if (rc == 0) rc = ft_grpo_advantages(&o->grpo, pf, o->reward_weights, K, Nw, G, rew, adv, &fz);
	if (rc == 0) {
		g->adv = ft_xmalloc((size_t)g->N * sizeof *g->adv);
		memcpy(g->adv, adv + r0, (size_t)g->N * sizeof *g->adv);
	}
	if (rc == 0 && o->on_samples)
		rc = o->on_samples(o->samples_ctx, s->step, g->pidx, g->comp, (size_t)g->N, pf + (size_t)r0 * K, g->adv);
	if (rc == 0) {
		ftp_grpo_build_grid(g, prompts, o);
		rc = ft_dist_sum_f64(o->dist, &g->num_items, 1, "completion tokens");   /* num_items_in_batch */
	}
	if (rc == 0) rc = old_ref_passes(s, g, o);
	if (rc == 0) rc = generation_metrics(s, o, g, pf, rew, fz, Nw);
	free(pf);
	free(rew);
	free(adv);
	return rc;
}

/* TRL's micro-batch metrics over every process's micro-batch of the same
 * position: global_masked_mean (sums and token counts reduced) and the
 * gathered rows' nanmin / nanmax. */
static int reduce_stats(const ft_grpo_loop_opts *o, ft_grpo_loss_stats *st)
{
	int W = world(o), r = ft_dist_rank(o->dist);
	double *x = ft_xcalloc(6 + 2 * (size_t)W, sizeof *x);
	memcpy(x, st->sums, sizeof st->sums);
	x[5] = st->n_tokens;
	/* one slot per rank; a rank without a row's mean adds +-inf, not NaN */
	x[6 + r] = isnan(st->low_min) ? INFINITY : st->low_min;
	x[6 + W + r] = isnan(st->high_max) ? -INFINITY : st->high_max;
	int rc = ft_dist_sum_f64(o->dist, x, 6 + 2 * (size_t)W, "GRPO metrics");
	if (rc == 0) {
		double n = x[5] > 1 ? x[5] : 1, mn = INFINITY, mx = -INFINITY;
		st->kl = x[0] / n;
		st->entropy = x[1] / n;
		st->low_mean = x[2] / n;
		st->high_mean = x[3] / n;
		st->region_mean = x[4] / n;
		for (int k = 0; k < W; k++) {
			if (x[6 + k] < mn) mn = x[6 + k];
			if (x[6 + W + k] > mx) mx = x[6 + W + k];
		}
		st->low_min = isfinite(mn) ? mn : NAN;
		st->high_max = isfinite(mx) ? mx : NAN;
	}
	free(x);
	return rc;
}

/* One micro-batch: forward, loss, backward. */
static int microbatch(ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ftp_grpo_gen *g,
		      const int *rows, int n)
{
	size_t cnt = (size_t)n * g->T;
	float *buf = ft_xcalloc(cnt * 6, sizeof(float));
	float *lp = buf, *dl = buf + cnt, *mask = buf + 2 * cnt, *ent = buf + 5 * cnt;
	float *old = g->old ? buf + 3 * cnt : NULL, *ref = g->ref ? buf + 4 * cnt : NULL;
	float *adv = ft_xmalloc((size_t)n * sizeof *adv);
	gather_rows(g, g->mask, rows, n, mask);
	if (old) gather_rows(g, g->old, rows, n, old);
	if (ref) gather_rows(g, g->ref, rows, n, ref);
	for (int i = 0; i < n; i++) adv[i] = g->adv[rows[i]];
	ft_batch b;
	sub_batch(g, rows, n, &b);
	ft_grpo_loss_stats st;
	const ft_pref_model *pm = &s->pm;
	pm->set_logp_entropy(pm->base.self, ent);   /* TRL's entropy metric, from the training forward */
	int rc = pm->logps_forward(pm->base.self, &b, 1, lp, NULL);
	pm->set_logp_entropy(pm->base.self, NULL);
	/* the ranks' gradients are summed, not averaged as DDP's: the
	 * accumulation normaliser counts every rank's micro-batches, dapo's
	 * the whole batch's tokens (TRL's num_items / num_processes, then
	 * DDP's mean, is the same) */
	double accum = (double)o->grad_accum * world(o);
	if (rc == 0)
		rc = ft_grpo_loss(&o->grpo, lp, old, ref, ent, mask, adv, n, g->T, accum, g->num_items, &st, dl);
	if (rc == 0) rc = pm->logps_backward(pm->base.self, &b, dl);
	if (rc == 0 && world(o) > 1) rc = reduce_stats(o, &st);
	if (rc == 0) {
		s->loss_step += st.loss;
		if (o->grpo.beta != 0) put(&s->mt, M_KL, st.kl);
		put(&s->mt, M_LOW_MEAN, st.low_mean);
		put(&s->mt, M_LOW_MIN, st.low_min);
		put(&s->mt, M_HIGH_MEAN, st.high_mean);
		put(&s->mt, M_HIGH_MAX, st.high_max);
		put(&s->mt, M_REGION, st.region_mean);
		put(&s->mt, M_ENTROPY, st.entropy);
	}
	ft_batch_free(&b);
	free(adv);
	free(buf);
	return rc;
}

static void write_log(const ft_grpo_loop_opts *o, ftp_grpo_state *s, double lr)
{
	ft_trainlog_entry e;
	ft_trainlog_entry_init(&e);
	e.current_steps = s->step;
	e.total_steps = o->max_steps;
	e.loss = round(s->loss_sum / s->n_logged * 1e4) / 1e4;   /* LLaMA-Factory's round(x, 4) */
	e.lr = lr;
	e.epoch = round(s->step / o->steps_per_epoch * 1e2) / 1e2;
	e.percentage = round(s->step * 1e4 / o->max_steps) / 1e2;
	size_t cap = (size_t)s->mt.n + FT_MAX_METRICS;
	const char **k = ft_xmalloc(cap * sizeof *k);
	double *v = ft_xmalloc(cap * sizeof *v);
	size_t nk = 0;
	for (int i = 0; i < s->mt.n; i++) {
		if (!s->mt.cnt[i]) continue;
		k[nk] = s->mt.keys[i];
		v[nk++] = s->mt.sum[i] / s->mt.cnt[i];
		s->mt.sum[i] = 0;
		s->mt.cnt[i] = 0;
	}
	/* the policy binding's own (the device's fp16 loss scale), after TRL's */
	if (o->policy && o->policy->base.metrics)
		nk += o->policy->base.metrics(o->policy->base.self, 0, k + nk, v + nk, cap - nk);
	ft_trainlog_write_extra(o->log, &e, k, v, nk);
	fflush(o->log);
	free(k);
	free(v);
	s->loss_sum = 0;
	s->n_logged = 0;
}

/* One optimizer step: a pass of grad_accum micro-batches over the
 * shuffled generation batch in hand. */
static int update(ftp_grpo_state *s, const ft_grpo_loop_opts *o)
{
	ftp_grpo_gen *g = &s->g;
	double lr = ft_sched_lr(&o->sched, s->step);
	s->pm.base.zero_grad(s->pm.base.self);
	s->loss_step = 0;
	int rc = 0;
	for (int i = 0; i < g->N && rc == 0; i += o->batch_size) {
		int n = g->N - i < o->batch_size ? g->N - i : o->batch_size;
		rc = microbatch(s, o, g, g->rows + i, n);
	}
	if (rc < 0) return -1;
	if (world(o) > 1) {   /* the gradients and the step's loss summed over the ranks */
		ft_train_opts to = { .dist = o->dist };
		/* on a device the policy sums its own (NCCL), else the params' g */
		ft_train_model tm = s->pm.base.sum_group ? s->pm.base : (ft_train_model){ 0 };
		double ls[2] = { s->loss_step, 0 };
		ft_dist_set_step(o->dist, s->step + 1);
		if (ftp_dist_reduce(&to, &tm, s->ps, s->np, ls, 1, 0) < 0) return -1;
		s->loss_step = ls[0];
	}
	if (s->pm.base.step) {   /* clipping and AdamW where the gradients are (a device) */
		double gn;
		if (s->pm.base.step(s->pm.base.self, &o->adamw, lr, o->max_grad_norm, &gn) < 0) return -1;
	} else {
		if (o->max_grad_norm > 0) ft_clip_grad_norm(s->ps, s->np, o->max_grad_norm);
		ft_adamw_step(s->opt, lr);
	}
	s->step++;
	g->it++;
	s->loss_sum += s->loss_step;
	s->n_logged++;
	if (o->log && s->step % o->logging_steps == 0) write_log(o, s, lr);
	return 0;
}

/* The next generation batch (a new pass when this one's prompts run
 * out), then its row order: shuffle_sequence_dict, once for all its
 * num_iterations. */
static int next_generation(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts,
			   int P, size_t *uniq)
{
	if (s->pos + P > s->n) {   /* a new pass: RepeatSampler's seeded shuffle, the tail dropped */
		for (size_t i = 0; i < s->n; i++) s->order[i] = (int64_t)i;
		ft_shuffle_i64(&s->sampler, s->order, s->n);
		s->pos = 0;
	}
	for (int i = 0; i < P; i++) uniq[i] = (size_t)s->order[s->pos++];
	ftp_grpo_gen *g = &s->g;
	int rc = generation(m, s, o, prompts, uniq, P, g);
	s->gen++;
	if (rc < 0) return -1;
	int64_t *perm = ft_xmalloc((size_t)g->N * sizeof *perm);
	for (int i = 0; i < g->N; i++) perm[i] = i;
	ft_shuffle_i64(&s->rng, perm, (size_t)g->N);
	g->rows = ft_xmalloc((size_t)g->N * sizeof *g->rows);
	for (int i = 0; i < g->N; i++) g->rows[i] = (int)perm[i];
	free(perm);
	g->it = 0;
	return 0;
}

int ft_grpo_prompts_per_generation(const ft_grpo_loop_opts *o)
{
	int N = o->batch_size * o->grad_accum * world(o);
	return o->num_generations > 0 && N % o->num_generations == 0 ? N / o->num_generations : 0;
}

/* The policy's and the reference's log-probs at temperature t (1: none). */
static int set_models(ftp_grpo_state *s, const ft_grpo_loop_opts *o, float t)
{
	if (!s->pm.set_logp_temperature || !s->pm.set_logp_entropy || (o->ref && !s->rm.set_logp_temperature))
		return ft_fail("GRPO: the model has no log-probabilities at a temperature");
	if (s->pm.set_logp_temperature(s->pm.base.self, t) < 0) return -1;
	return o->ref ? s->rm.set_logp_temperature(s->rm.base.self, t) : 0;
}

/* A checkpoint: the device's weights and moments into m and s->opt
 * first, then the files (ftp_grpo_ckpt_save; fp16's loss scaler beside). */
static int checkpoint(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o)
{
	if (to_host(s, s->opt) < 0) return -1;
	return ftp_grpo_ckpt_save(m, s, o);
}

/* From o->resume_dir into m and s->opt, then onto the device. */
static int resume(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts)
{
	if (ftp_grpo_ckpt_load(m, s, o, prompts) < 0) return -1;
	ft_train_model *b = &s->pm.base;
	if (b->state_in && b->state_in(b->self, s->opt) < 0) return -1;
	if (b->state_in) b->set_position(b->self, (int64_t)ft_model_dropout_position(m));
	return b->ckpt_load ? b->ckpt_load(b->self, o->resume_dir) : 0;
}

int ft_grpo_train(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_grpo_loop_opts *o)
{
	int P = ft_grpo_prompts_per_generation(o);
	if (P == 0) return ft_fail("the generation batch is not whole groups of num_generations");
	if (n < (size_t)P) return ft_fail("%zu prompts: one generation batch needs %d", n, P);
	ftp_grpo_state s;
	memset(&s, 0, sizeof s);
	float t = o->temperature > 0 ? o->temperature : 1;
	s.pm = o->policy ? *o->policy : ft_pref_model_of(m);
	if (o->ref) s.rm = o->ref_ops ? *o->ref_ops : ft_pref_model_of(o->ref);
	if (o->policy && o->dist && !o->policy->base.sum_group)
		return ft_fail("GRPO: under mpirun a policy that steps itself must sum its gradients (sum_group)");
	if (set_models(&s, o, t) < 0) return -1;
	ft_rng_seed(&s.rng, o->seed);       /* shuffle_sequence_dict's (torch's global generator) */
	ft_rng_seed(&s.sampler, o->seed);   /* RepeatSampler's own generator, seeded with args.seed */
	size_t np = ft_model_nparams(m);
	s.ps = ft_xmalloc(np * sizeof *s.ps);
	for (size_t i = 0; i < np; i++)
		if (ft_model_param(m, i)->trainable) s.ps[s.np++] = ft_model_param(m, i);
	s.opt = ft_adamw_new(s.ps, s.np, &o->adamw);
	metrics_init(&s.mt, o);
	s.order = ft_xmalloc(n * sizeof *s.order);
	s.n = s.pos = n;
	size_t *uniq = ft_xmalloc((size_t)P * sizeof *uniq);
	int rc = o->resume_dir ? resume(m, &s, o, prompts) : 0;
	while (rc == 0 && s.step < o->max_steps) {
		if (s.g.N == 0) rc = next_generation(m, &s, o, prompts, P, uniq);
		if (rc == 0) rc = update(&s, o);
		if (s.g.N && (rc < 0 || s.g.it == o->num_iterations)) ftp_grpo_gen_free(&s.g);
		if (rc == 0 && o->save_steps > 0 && o->save_model && s.step % o->save_steps == 0 &&
		    ft_dist_rank(o->dist) == 0)
			rc = checkpoint(m, &s, o);
	}
	if (rc == 0) rc = to_host(&s, NULL);   /* the trained weights, for the caller's outputs */
	ftp_grpo_gen_free(&s.g);
	free(s.order);
	free(uniq);
	metrics_free(&s.mt);
	ft_adamw_free(s.opt);
	free(s.ps);
	set_models(&s, o, 1);
	return rc;
}
