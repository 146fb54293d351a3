/* ppo_loop.c - the PPO stage's loop (ppo_loop.h). */
#include "train/ppo_loop.h"
#include "format/trainlog.h"
#include "model/model_pref.h"
#include "train/ppo_model.h"
#include "train/trainer_internal.h"   /* ftp_rl_ckpt_save, ftp_dist_reduce: as ft_train's */
#include "util/error.h"
#include "util/json.h"
#include "util/rng.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One rollout: N rows of prompt + response in a right-padded [N, T] grid
 * of ids; the float grids are TRL's [N, Tc], Tc = T - 1 (position t holds
 * token t+1's log-probability: the last position predicts nothing), so
 * the whole-tensor statistics (returns/mean, returns/var) see the same
 * positions as TRL's. */
typedef struct {
	int N, T, Tc;
	int32_t *ids, *labels;
	int32_t *len;            /* [N] query + response: the rest is padding */
	float *score, *logp, *ref, *val, *mask, *rew, *adv, *ret;
} rollout;

static void rollout_free(rollout *r)
{
	free(r->ids); free(r->labels); free(r->len); free(r->score); free(r->logp); free(r->ref);
	free(r->val); free(r->mask); free(r->rew); free(r->adv); free(r->ret);
	memset(r, 0, sizeof *r);
}

/* get_inputs on what HF's generate() returns (the tokens, then the eos
 * when it stopped; ft's generator drops the stop token): the response up
 * to its last non-pad token, one more (the eos) when eos is the pad
 * token, and one token when all are pad. */
static void fix_response(const ft_ppo_loop_opts *o, ft_i32vec *r)
{
	if ((int)r->n < o->max_new_tokens && o->eos_id >= 0) ft_i32vec_push(r, o->eos_id);
	int last = (int)r->n - 1;
	while (last >= 0 && r->v[last] == o->pad_id) last--;
	size_t len = last < 0 ? 1 : o->eos_id == o->pad_id ? (size_t)last + 2 : (size_t)last + 1;
	if (len > r->n) len = r->n;
	if (r->n == 0) ft_i32vec_push(r, o->pad_id);
	else r->n = len;
}

static void rollout_grid(rollout *r, const ft_ppo_loop_opts *o, const ft_i32vec *q, const ft_i32vec *a, int N)
{
	int T = 0;
	for (int i = 0; i < N; i++)
		if ((int)(q[i].n + a[i].n) > T) T = (int)(q[i].n + a[i].n);
	r->N = N;
	r->T = T;
	size_t n = (size_t)N * T;
	r->ids = ft_xmalloc(n * sizeof *r->ids);
	r->labels = ft_xmalloc(n * sizeof *r->labels);
	float **f[] = { &r->logp, &r->ref, &r->val, &r->mask, &r->rew, &r->adv, &r->ret };
	for (size_t k = 0; k < sizeof f / sizeof *f; k++) *f[k] = ft_xcalloc(n, sizeof(float));
	r->score = ft_xcalloc((size_t)N, sizeof(float));
	r->len = ft_xmalloc((size_t)N * sizeof *r->len);
	for (int i = 0; i < N; i++)
		r->len[i] = (int32_t)(q[i].n + a[i].n);
	for (int i = 0; i < N; i++)
		for (int t = 0; t < T; t++) {
			size_t k = (size_t)i * T + t, lq = q[i].n, la = a[i].n;
			r->ids[k] = t < (int)lq ? q[i].v[t] : t < (int)(lq + la) ? a[i].v[t - lq] : o->pad_id;
			r->labels[k] = t >= (int)lq && t < (int)(lq + la) ? a[i].v[t - lq] : FT_IGNORE_INDEX;
		}
}

/* x [rows, T] -> [rows, T - 1] in place: the last column dropped. */
static void cols_drop(float *x, int rows, int T)
{
	for (int i = 0; i < rows; i++) memmove(x + (size_t)i * (T - 1), x + (size_t)i * T, (T - 1) * sizeof *x);
}

/* The inverse, the new last column 0 (x has room for rows * T). */
static void cols_add(float *x, int rows, int T)
{
	for (int i = rows - 1; i >= 0; i--) {
		memmove(x + (size_t)i * T, x + (size_t)i * (T - 1), (T - 1) * sizeof *x);
		x[(size_t)i * T + T - 1] = 0;
	}
}

/* The rows rows[0..n) of the grid as a batch, and of the [N, Tc] float
 * grids src into dst. */
static void sub_batch(const rollout *r, const int64_t *rows, int n, ft_batch *b, float *const *src,
		      float *const *dst, int nf)
{
	memset(b, 0, sizeof *b);
	b->B = n;
	b->T = r->T;
	b->input_ids = ft_xmalloc((size_t)n * r->T * sizeof(int32_t));
	b->labels = ft_xmalloc((size_t)n * r->T * sizeof(int32_t));
	b->lengths = ft_xmalloc((size_t)n * sizeof(int32_t));   /* HF's attention_mask */
	for (int i = 0; i < n; i++) {
		size_t s = (size_t)rows[i] * r->T, d = (size_t)i * r->T;
		b->lengths[i] = r->len[rows[i]];
		memcpy(b->input_ids + d, r->ids + s, r->T * sizeof(int32_t));
		memcpy(b->labels + d, r->labels + s, r->T * sizeof(int32_t));
		for (int k = 0; k < nf; k++)
			memcpy(dst[k] + (size_t)i * r->Tc, src[k] + (size_t)rows[i] * r->Tc, r->Tc * sizeof(float));
		for (int t = 0; t < r->T; t++) b->n_label_tokens += r->labels[d + t] != FT_IGNORE_INDEX;
	}
}

static void batch_release(ft_batch *b)
{
	free(b->input_ids);
	free(b->labels);
	free(b->lengths);
	memset(b, 0, sizeof *b);
}

/* Old logprobs and values (train mode, as TRL's step() after
 * model.train()), reference logprobs from ref, or with the adapters off. */
static int old_passes(const ft_pref_model *pm, const ft_pref_model *ref, rollout *r, const float *vw, float vb,
		      float pd, uint64_t seed)
{
	ft_batch b = { .B = r->N, .T = r->T, .input_ids = r->ids, .labels = r->labels,
		       .lengths = r->len };
	ft_ppo_mask(&b, r->mask);
	for (size_t k = 0; k < (size_t)r->N * r->T; k++) b.n_label_tokens += r->labels[k] != FT_IGNORE_INDEX;
	if (ft_ppo_forward_on(pm, &b, 1, vw, vb, pd, seed, r->logp, r->val) < 0) return -1;
	/* the reference's log-probs only (its values would be unused) */
	if (!ref) pm->set_adapters(pm->base.self, 0);
	int rc = ft_ppo_forward_on(ref ? ref : pm, &b, 0, vw, vb, 0, 0, r->ref, NULL);
	if (!ref) pm->set_adapters(pm->base.self, 1);
	return rc;
}

typedef struct {
	ft_param **ps;
	size_t np;
	ft_adamw *opt;
	ft_param vh[2];
	int64_t step;            /* PPO steps done */
	int clipped;             /* max_grad_norm has clipped once (see update()) */
	int64_t perm_next;       /* the next of o->perms */
	double loss_sum, reward_sum;
	int n_logged;
	ft_rng rng;
	ft_pref_model pm, rm;    /* the policy's and the reference's operations (rm: with o->ref) */
} loop_state;

/* The 14 mini-batch statistics (means over the step's mini-batches, as
 * TRL's stack_dicts then mean), then record_step_stats' step-level ones
 * in TRL 0.9.6's names.  Not logged: the per-token distributions
 * (objective/logprobs, tokens/responses_dist, ...), which are arrays. */
#define NMB 15
#define NSTAT (NMB + 11)
static const char *const stat_keys[NSTAT] = {
	"ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/approxkl",
	"ppo/policy/policykl", "ppo/policy/clipfrac", "ppo/policy/advantages_mean",
	"ppo/returns/mean", "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac",
	"ppo/val/mean", "ppo/val/var", "ppo/policy/entropy", "ppo/val/var_explained", "objective/kl", "objective/kl_coef",
	"objective/entropy", "ppo/mean_non_score_reward", "ppo/mean_scores", "ppo/std_scores",
	"tokens/queries_len_mean", "tokens/queries_len_std", "tokens/responses_len_mean",
	"tokens/responses_len_std",
};

/* mean and unbiased std (torch.std) of n numbers; std NaN for n < 2 */
static void mean_std(const double *x, int n, double *mean, double *std)
{
	double m = 0, v = 0;
	for (int i = 0; i < n; i++) m += x[i] / n;
	for (int i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
	*mean = m;
	*std = n > 1 ? sqrt(v / (n - 1)) : NAN;
}

/* record_step_stats: v[NMB..NSTAT) from the step's rollout (scores as
 * normalised for the step), the KL per token klv and its coefficient. */
static void step_stats(const rollout *r, const ft_i32vec *q, const ft_i32vec *a, const float *klv,
		       double coef, double *v)
{
	int N = r->N;
	size_t n = (size_t)N * r->Tc;
	double *x = ft_xmalloc((size_t)N * sizeof *x), kl = 0, ent = 0, nsr = 0, cnt = 0;
	for (size_t k = 0; k < n; k++) {
		kl += klv[k] * r->mask[k];
		ent -= r->logp[k] * r->mask[k];
		nsr += (float)(-coef * klv[k]) * r->mask[k];   /* -kl_ctl.value * kl, float32 */
		cnt += r->mask[k];
	}
	v[NMB] = 1 - v[10] / v[8];   /* ppo/val/var_explained: 1 - val/error / returns/var */
	v[NMB + 1] = kl / N;
	v[NMB + 2] = coef;
	v[NMB + 3] = ent / N;
	v[NMB + 4] = nsr / cnt;
	for (int i = 0; i < N; i++) x[i] = r->score[i];
	mean_std(x, N, &v[NMB + 5], &v[NMB + 6]);
	for (int i = 0; i < N; i++) x[i] = (double)q[i].n;
	mean_std(x, N, &v[NMB + 7], &v[NMB + 8]);
	for (int i = 0; i < N; i++) x[i] = (double)a[i].n;
	mean_std(x, N, &v[NMB + 9], &v[NMB + 10]);
	free(x);
}

static void stats_add(double *acc, const ft_ppo_loss_stats *s, double entropy)
{
	const double v[14] = { s->loss_policy, s->loss_value, s->loss_total, s->policy_approxkl,
			       s->policy_policykl, s->policy_clipfrac, s->policy_advantages_mean,
			       s->returns_mean, s->returns_var, s->val_vpred, s->val_error,
			       s->val_clipfrac, s->val_mean, s->val_var };
	for (int k = 0; k < 14; k++) acc[k] += v[k];
	acc[14] += entropy;   /* ppo/policy/entropy: masked_mean(entropy_from_logits) */
}

static int world(const ft_ppo_loop_opts *o) { return ft_dist_size(o->dist); }

/* One mini-batch: forward, loss, backward (scaled 1/grad_accum as
 * accelerate's backward under accumulate()). */
static int minibatch(loop_state *s, const ft_ppo_loop_opts *o, const rollout *r,
		     const int64_t *rows, int n, double *acc, uint64_t seed)
{
	size_t cnt = (size_t)n * r->T;
	float *buf = ft_xcalloc(cnt * 10, sizeof(float)), *ent = buf + 9 * cnt;
	float *old = buf, *val = buf + cnt, *mask = buf + 2 * cnt, *adv = buf + 3 * cnt,
	      *ret = buf + 4 * cnt, *lp = buf + 5 * cnt, *vp = buf + 6 * cnt, *dl = buf + 7 * cnt,
	      *dv = buf + 8 * cnt;
	float *const src[5] = { r->logp, r->val, r->mask, r->adv, r->ret };
	float *const dst[5] = { old, val, mask, adv, ret };
	ft_batch b;
	sub_batch(r, rows, n, &b, src, dst, 5);
	ft_ppo_loss_stats st;
	float *vw = s->vh[0].w, vb = s->vh[1].w[0];
	const ft_pref_model *pm = &s->pm;
	pm->set_logp_entropy(pm->base.self, ent);
	int rc = ft_ppo_forward_on(pm, &b, 1, vw, vb, o->value_dropout, seed, lp, vp);
	pm->set_logp_entropy(pm->base.self, NULL);
	if (rc == 0) {
		cols_drop(lp, n, r->T);
		cols_drop(vp, n, r->T);
		cols_drop(ent, n, r->T);
		rc = ft_ppo_loss(&o->ppo, old, val, lp, vp, mask, adv, ret, (size_t)n * r->Tc, &st, dl, dv);
	}
	if (rc == 0) {
		stats_add(acc, &st, ft_ppo_masked_mean(ent, mask, (size_t)n * r->Tc));
		/* DDP's mean over the ranks as a sum of gradients scaled by 1 / W
		 * (exact for W a power of two; the device sums over NCCL) */
		float scale = (float)(o->grad_accum * world(o));
		for (size_t k = 0; k < (size_t)n * r->Tc; k++) {
			dl[k] /= scale;
			dv[k] /= scale;
		}
		cols_add(dl, n, r->T);
		cols_add(dv, n, r->T);
		double dvb = 0;
		rc = ft_ppo_backward_on(pm, &b, vw, vb, o->value_dropout, seed, dl, dv, s->vh[0].g, &dvb);
		s->vh[1].g[0] += (float)dvb;
	}
	batch_release(&b);
	free(buf);
	return rc;
}

static void zero_grads(loop_state *s)
{
	s->pm.base.zero_grad(s->pm.base.self);
	memset(s->vh[0].g, 0, s->vh[0].n * sizeof(float));
	s->vh[1].g[0] = 0;
}

/* One AdamW step, clipping only the run's first (see update()); on the
 * device when the binding steps itself (max_grad_norm 0: norm only). */
static int opt_step(loop_state *s, const ft_ppo_loop_opts *o, double lr)
{
	double clip = o->max_grad_norm > 0 && !s->clipped ? o->max_grad_norm : 0, gn;
	s->clipped = 1;
	if (s->pm.base.step)
		return s->pm.base.step(s->pm.base.self, &o->adamw, lr, clip, &gn) < 0 ? -1 : 0;
	if (clip > 0) ft_clip_grad_norm(s->ps, s->np, clip);
	ft_adamw_step(s->opt, lr);
	return 0;
}

/* accelerate's backward under DDP: every rank's gradients (scaled by
 * 1 / W in minibatch()) summed before the step, the value head's too;
 * on a device the policy sums its own (NCCL), else the params' g. */
static int sum_grads(loop_state *s, const ft_ppo_loop_opts *o)
{
	if (world(o) < 2) return 0;
	ft_train_opts to = { .dist = o->dist };
	ft_train_model tm = s->pm.base.sum_group ? s->pm.base : (ft_train_model){ 0 };
	double ls[1] = { 0 };
	ft_dist_set_step(o->dist, s->step + 1);
	return ftp_dist_reduce(&to, &tm, s->ps, s->np, ls, 0, 0);
}

/* ppo_epochs epochs, each a permutation cut into backward batches of
 * batch * accumulation rows and mini-batches of batch rows.
 * max_grad_norm clips the run's first optimizer step only: TRL 0.9.6
 * keeps the parameters to clip as `filter(lambda p: p.requires_grad,
 * model.parameters())`, an iterator that its first clip_grad_norm_
 * consumes, so every later clip sees no parameters (measured with TRL
 * 0.9.6 itself: tests/reference/make_ppo_step_fixture.py). */
static int update(loop_state *s, const ft_ppo_loop_opts *o, const rollout *r, double lr,
		  double *acc, int *nmb)
{
	int64_t *perm = ft_xmalloc((size_t)r->N * sizeof *perm);
	int rc = 0;
	for (int e = 0; e < o->ppo_epochs && rc == 0; e++) {
		if (o->perms && s->perm_next < o->n_perms) {
			memcpy(perm, o->perms + s->perm_next++ * r->N, (size_t)r->N * sizeof *perm);
		} else if (o->perms) {
			rc = ft_fail("the replayed row orders ran out after %lld", (long long)o->n_perms);
			break;
		} else {
			for (int i = 0; i < r->N; i++) perm[i] = i;
			ft_shuffle_i64(&s->rng, perm, (size_t)r->N);
		}
		zero_grads(s);
		int k = 0;
		for (int i = 0; i < r->N && rc == 0; i += o->batch_size) {
			int n = r->N - i < o->batch_size ? r->N - i : o->batch_size;
			rc = minibatch(s, o, r, perm + i, n, acc, ft_rng_next(&s->rng));
			(*nmb)++;
			if (rc == 0 && ++k % o->grad_accum == 0) {
				rc = sum_grads(s, o);
				if (rc == 0) rc = opt_step(s, o, lr);
				zero_grads(s);
			}
		}
	}
	free(perm);
	return rc;
}

static void write_log(const ft_ppo_loop_opts *o, loop_state *s, double lr, const double *v)
{
	ft_trainlog_entry e;
	ft_trainlog_entry_init(&e);
	e.current_steps = s->step;
	e.total_steps = o->max_steps;
	/* LLaMA-Factory: round(x, 4), epoch round(x, 2) */
	e.loss = round(s->loss_sum / s->n_logged * 1e4) / 1e4;
	e.lr = lr;
	e.epoch = round((s->step - 1) / o->steps_per_epoch * 1e2) / 1e2;   /* its 0-based step */
	e.percentage = round(s->step * 1e4 / o->max_steps) / 1e2;
	double w[NSTAT + 1 + FT_MAX_METRICS];
	const char *k[NSTAT + 1 + FT_MAX_METRICS];
	k[0] = "reward";
	w[0] = round(s->reward_sum / s->n_logged * 1e4) / 1e4;
	for (int i = 0; i < NSTAT; i++) {
		k[i + 1] = stat_keys[i];
		w[i + 1] = v[i];
	}
	size_t nk = NSTAT + 1;
	/* the policy binding's own (the device's fp16 loss scale), after the stats */
	if (o->policy && o->policy->base.metrics)
		nk += o->policy->base.metrics(o->policy->base.self, 0, k + nk, w + nk, FT_MAX_METRICS);
	ft_trainlog_write_extra(o->log, &e, k, w, nk);
	fflush(o->log);
	s->loss_sum = s->reward_sum = 0;
	s->n_logged = 0;
}

/* A binding that steps itself: its trainable weights and value head
 * (and, with opt, AdamW's moments and step) into m, vw and vb. */
static int to_host(loop_state *s, ft_adamw *opt)
{
	return s->pm.base.state_out ? s->pm.base.state_out(s->pm.base.self, opt) : 0;
}

/* RunningMoments.update under several processes: get_global_statistics'
 * mean of every rank's scores (sum and count all-reduced), then the sum
 * of squared deviations from it all-reduced; one process: as before. */
static int normalize_scores(const ft_ppo_loop_opts *o, ft_ppo_moments *mom, float *score, int N)
{
	if (world(o) < 2) return ft_ppo_normalize_scores(mom, score, (size_t)N);
	double sc[2] = { 0, N }, sv = 0;
	for (int i = 0; i < N; i++) sc[0] += score[i];
	if (ft_dist_sum_f64(o->dist, sc, 2, "score moments") < 0) return -1;
	double mean = sc[0] / sc[1];
	for (int i = 0; i < N; i++) sv += (score[i] - mean) * (score[i] - mean);
	if (ft_dist_sum_f64(o->dist, &sv, 1, "score moments") < 0) return -1;
	if (sc[1] < 2) return ft_fail("--ppo_score_norm: %g scores in the batch; it needs at least 2", sc[1]);
	ft_ppo_moments_fold(mom, mean, sv / sc[1], sc[1]);
	ft_ppo_scale_scores(mom, score, (size_t)N);
	return 0;
}

/* TRL's gather_stats: every tensor statistic summed over the processes
 * and divided by their number; objective/kl_coef (a float) and the
 * tokens/ lengths (numpy values) stay this process's. */
static int gather_stats(const ft_ppo_loop_opts *o, double *v)
{
	int W = world(o), n = NMB + 7;
	if (W < 2) return 0;
	double kc = v[NMB + 2];
	if (ft_dist_sum_f64(o->dist, v, (size_t)n, "PPO statistics") < 0) return -1;
	for (int k = 0; k < n; k++) v[k] /= W;
	v[NMB + 2] = kc;
	return 0;
}

/* One PPO step on the rows q[0..N), prompts qi[0..N) of the run's array. */
static int ppo_step(ft_model *m, loop_state *s, const ft_ppo_loop_opts *o, const ft_i32vec *q,
		    const size_t *qi, int N, ft_ppo_klctl *kl, ft_ppo_moments *mom)
{
	ft_i32vec *a = ft_xcalloc((size_t)N, sizeof *a);
	rollout r = { 0 };
	int rc = to_host(s, NULL);   /* m samples with the weights trained so far */
	if (rc == 0) ft_model_dora_refresh(m);   /* and DoRA's scales of them (the decoder only reads those) */
	if (rc == 0) rc = o->generate(o->gen_ctx, m, q, (size_t)N, o->seed + (uint64_t)s->step * 1000003u, a);
	if (rc == 0) {
		for (int i = 0; i < N; i++) fix_response(o, &a[i]);
		rollout_grid(&r, o, q, a, N);
		rc = o->score(o->score_ctx, qi, q, a, (size_t)N, r.score);
	}
	if (rc == 0)
		rc = old_passes(&s->pm, o->ref ? &s->rm : NULL, &r, s->vh[0].w, s->vh[1].w[0], o->value_dropout,
				ft_rng_next(&s->rng));
	if (rc == 0) {
		r.Tc = r.T - 1;
		float *g[] = { r.logp, r.ref, r.val, r.mask };
		for (size_t k = 0; k < sizeof g / sizeof *g; k++) cols_drop(g[k], N, r.T);
		for (size_t k = 0; k < (size_t)N * r.Tc; k++) r.val[k] *= r.mask[k];   /* compute_advantages' */
	}
	double mean_score = 0;
	for (int i = 0; rc == 0 && i < N; i++) mean_score += r.score[i] / N;
	if (rc == 0 && o->ppo.score_norm) rc = normalize_scores(o, mom, r.score, N);
	float *klv = rc == 0 ? ft_xcalloc((size_t)N * r.Tc, sizeof(float)) : NULL;
	if (rc == 0) rc = ft_ppo_rewards(r.score, r.logp, r.ref, r.mask, N, r.Tc, kl->value, r.rew, klv);
	if (rc == 0) rc = ft_ppo_advantages(&o->ppo, r.val, r.rew, r.mask, N, r.Tc, r.adv, r.ret);
	if (rc == 0 && o->inspect) o->inspect(o->inspect_ctx, N, r.Tc, r.mask, r.adv, r.ret);
	double v[NSTAT] = { 0 };
	int nmb = 0;
	double lr = ft_sched_lr(&o->sched, s->step);
	if (rc == 0) rc = update(s, o, &r, lr, v, &nmb);
	if (rc == 0) {
		for (int k = 0; k < NMB; k++) v[k] /= nmb ? nmb : 1;
		step_stats(&r, q, a, klv, kl->value, v);
		rc = gather_stats(o, v);
	}
	if (rc == 0) {
		/* kl_ctl.update(objective/kl, batch_size * num_processes): after
		 * the stats took the coefficient */
		ft_ppo_klctl_update(kl, v[NMB + 1], (double)N * world(o));
		s->step++;
		s->loss_sum += v[2];
		s->reward_sum += mean_score;   /* LLaMA-Factory's reward_meter: this rank's rewards, not reduced */
		s->n_logged++;
		if (o->log && s->step % o->logging_steps == 0)   /* LLaMA-Factory: (step + 1) % logging_steps */
			write_log(o, s, lr, v);
	}
	free(klv);
	rollout_free(&r);
	for (int i = 0; i < N; i++) ft_i32vec_free(&a[i]);
	free(a);
	return rc;
}

/* ---- checkpoints ----------------------------------------------------------
 * Doubles as C99 hex floats and 64-bit words as decimal strings, so the
 * state reads back bit for bit. */

static json_t *jhex(double x)
{
	char b[40];
	snprintf(b, sizeof b, "%a", x);
	return json_string(b);
}

static json_t *ju64(uint64_t x)
{
	char b[24];
	snprintf(b, sizeof b, "%" PRIu64, x);
	return json_string(b);
}

static int get_hex(const json_t *o, const char *k, double *x)
{
	const char *s = json_string_value(json_object_get(o, k));
	char *end;
	if (s) *x = strtod(s, &end);
	return s && !*end ? 0 : -1;
}

static int get_u64(const json_t *v, uint64_t *x)
{
	const char *s = json_string_value(v);
	char *end;
	if (s) *x = strtoull(s, &end, 10);
	return s && !*end ? 0 : -1;
}

static json_t *state_json(ft_model *m, const loop_state *s, const ft_ppo_loop_opts *o, const ft_ppo_klctl *kl,
			  const ft_ppo_moments *mom, int N)
{
	json_t *j = json_object(), *rng = json_array(), *mo = json_object();
	for (int i = 0; i < 4; i++) json_array_append_new(rng, ju64(s->rng.s[i]));
	json_object_set_new(mo, "mean", jhex(mom->mean));
	json_object_set_new(mo, "std", jhex(mom->std));
	json_object_set_new(mo, "var", jhex(mom->var));
	json_object_set_new(mo, "count", jhex(mom->count));
	json_object_set_new(j, "format", json_string("ft-ppo-state"));
	json_object_set_new(j, "version", json_integer(1));
	json_object_set_new(j, "global_step", json_integer(s->step));
	json_object_set_new(j, "max_steps", json_integer(o->max_steps));
	json_object_set_new(j, "rows_per_step", json_integer(N));
	json_object_set_new(j, "processes", json_integer(world(o)));
	json_object_set_new(j, "seed", ju64(o->seed));
	json_object_set_new(j, "kl_coef", jhex(kl->value));
	json_object_set_new(j, "running_moments", mo);
	json_object_set_new(j, "rng", rng);
	json_object_set_new(j, "clipped", json_boolean(s->clipped));
	json_object_set_new(j, "perm_next", json_integer(s->perm_next));
	json_object_set_new(j, "loss_sum", jhex(s->loss_sum));
	json_object_set_new(j, "reward_sum", jhex(s->reward_sum));
	json_object_set_new(j, "n_logged", json_integer(s->n_logged));
	json_object_set_new(j, "dropout_position", ju64(ft_model_dropout_position(m)));
	return j;
}

/* ftp_rl_ckpt's extra: a device's fp16 loss scaler (scaler.json) */
static int save_scaler(void *ctx, const char *dir)
{
	const ft_train_model *t = ctx;
	return t->ckpt_save ? t->ckpt_save(t->self, dir) : 0;
}

/* checkpoint-<step>: the caller's model files, optimizer.safetensors, ppo_state.json
 * (a device's weights, head and moments copied out first) */
static int ckpt_save(ft_model *m, loop_state *s, const ft_ppo_loop_opts *o, const ft_ppo_klctl *kl,
		     const ft_ppo_moments *mom, int N)
{
	if (to_host(s, s->opt) < 0) return -1;
	ftp_rl_ckpt c = { .output_dir = o->output_dir, .step = s->step, .save_total_limit = o->save_total_limit,
			  .save_model = o->save_model, .save_ctx = o->save_ctx, .opt = s->opt,
			  .state_name = "ppo_state.json", .extra = save_scaler, .extra_ctx = &s->pm.base };
	return ftp_rl_ckpt_save(&c, state_json(m, s, o, kl, mom, N));
}

static json_t *load_state(const char *dir)
{
	return ftp_rl_ckpt_state(dir, "ppo_state.json", "ft-ppo-state", "PPO");
}

int64_t ft_ppo_checkpoint_step(const char *dir)
{
	return ftp_rl_ckpt_step(dir, "ppo_state.json", "ft-ppo-state", "PPO");
}

/* ppo_state.json against this run, into the loop's state; *drop the
 * dropout position.  Every rank reads the same bytes (rank 0's, shared by
 * ft_dist_ckpt_share under mpirun). */
static int read_state(ft_model *m, loop_state *s, const ft_ppo_loop_opts *o, ft_ppo_klctl *kl,
		      ft_ppo_moments *mom, int N, uint64_t *drop_out)
{
	json_t *j = load_state(o->resume_dir), *mo = j ? json_object_get(j, "running_moments") : NULL;
	if (!j) return -1;
	int rc = -1;
	uint64_t seed = 0, drop = 0;
	long long n = json_integer_value(json_object_get(j, "rows_per_step"));
	long long ms = json_integer_value(json_object_get(j, "max_steps"));
	const json_t *pw = json_object_get(j, "processes");   /* older checkpoints: one */
	long long w = pw ? json_integer_value(pw) : 1;
	if (get_u64(json_object_get(j, "seed"), &seed) < 0 || n != N || ms != o->max_steps || seed != o->seed) {
		ft_fail("%s: the checkpoint was made with %lld responses per step, %lld steps and seed %" PRIu64
			"; this run has %d, %lld and %" PRIu64 ": resume with the same settings",
			o->resume_dir, n, ms, seed, N, (long long)o->max_steps, o->seed);
		goto out;
	}
	if (w != world(o)) {   /* each rank's prompts and the reduced statistics depend on it */
		ft_fail("%s: the checkpoint was made by %lld process%s; this run has %d: resume with as many",
			o->resume_dir, w, w == 1 ? "" : "es", world(o));
		goto out;
	}
	int bad = get_hex(j, "kl_coef", &kl->value) || get_hex(mo, "mean", &mom->mean) ||
		  get_hex(mo, "std", &mom->std) || get_hex(mo, "var", &mom->var) ||
		  get_hex(mo, "count", &mom->count) || get_hex(j, "loss_sum", &s->loss_sum) ||
		  get_hex(j, "reward_sum", &s->reward_sum) ||
		  get_u64(json_object_get(j, "dropout_position"), &drop);
	for (size_t i = 0; i < 4; i++) bad |= get_u64(json_array_get(json_object_get(j, "rng"), i), &s->rng.s[i]);
	if (bad) {
		ft_fail("%s/ppo_state.json: a field is missing or malformed", o->resume_dir);
		goto out;
	}
	s->step = json_integer_value(json_object_get(j, "global_step"));
	s->clipped = json_is_true(json_object_get(j, "clipped"));
	s->perm_next = json_integer_value(json_object_get(j, "perm_next"));
	s->n_logged = (int)json_integer_value(json_object_get(j, "n_logged"));
	ft_model_set_dropout_position(m, drop);
	*drop_out = drop;
	rc = 0;
out:
	json_decref(j);
	return rc;
}

static int ckpt_load(ft_model *m, loop_state *s, const ft_ppo_loop_opts *o, ft_ppo_klctl *kl,
		     ft_ppo_moments *mom, int N)
{
	uint64_t drop = 0;
	/* a checkpoint that does not fit the run: one line, from rank 0 */
	if (ft_dist_rank0_verdict(o->dist, read_state(m, s, o, kl, mom, N, &drop)) < 0) return -1;
	char *f = ft_xasprintf("%s/optimizer.safetensors", o->resume_dir);
	/* the weights, the value head's too, and the moments: rank 0's file */
	int rc = ft_dist_adamw_load(o->dist, s->opt, f);
	free(f);
	ft_train_model *t = &s->pm.base;   /* then onto the device */
	if (rc == 0 && t->state_in) {
		rc = t->state_in(t->self, s->opt);
		t->set_position(t->self, (int64_t)drop);
	}
	if (rc == 0 && t->ckpt_load) rc = t->ckpt_load(t->self, o->resume_dir);
	return rc;
}

int ft_ppo_train(ft_model *m, const ft_i32vec *prompts, size_t n, float *vw, float *vb,
		 const ft_ppo_loop_opts *o)
{
	if (n == 0) return ft_fail("no prompts");
	if (o->policy && o->policy->base.step && !o->policy->own_value_head)
		return ft_fail("PPO: a policy that steps itself must keep the value head");
	if (o->policy && world(o) > 1 && !o->policy->base.sum_group)
		return ft_fail("PPO: under mpirun a policy that steps itself must sum its gradients (sum_group)");
	loop_state s;
	memset(&s, 0, sizeof s);
	ft_rng_seed(&s.rng, o->seed);
	int D = ft_model_config(m)->hidden_size;
	s.vh[0] = (ft_param){ .name = "v_head.summary.weight", .w = vw, .g = ft_xcalloc((size_t)D, sizeof(float)),
			      .n = (size_t)D, .ndim = 2, .shape = { 1, D }, .trainable = 1, .decay = 1 };
	s.vh[1] = (ft_param){ .name = "v_head.summary.bias", .w = vb, .g = ft_xcalloc(1, sizeof(float)),
			      .n = 1, .ndim = 1, .shape = { 1 }, .trainable = 1 };
	size_t np = ft_model_nparams(m);
	s.ps = ft_xmalloc((np + 2) * sizeof *s.ps);
	for (size_t i = 0; i < np; i++)
		if (ft_model_param(m, i)->trainable) s.ps[s.np++] = ft_model_param(m, i);
	s.ps[s.np++] = &s.vh[0];
	s.ps[s.np++] = &s.vh[1];
	s.opt = ft_adamw_new(s.ps, s.np, &o->adamw);
	s.pm = o->policy ? *o->policy : ft_pref_model_of(m);
	if (o->ref) s.rm = o->ref_ops ? *o->ref_ops : ft_pref_model_of(o->ref);
	if (s.pm.own_value_head) s.pm.own_value_head(s.pm.base.self, s.vh);
	ft_ppo_klctl kl;
	ft_ppo_klctl_init(&kl, &o->ppo);
	ft_ppo_moments mom;
	ft_ppo_moments_init(&mom);
	int N = o->batch_size * o->grad_accum * o->buffer_size, rc = 0;
	if (o->resume_dir) rc = ckpt_load(m, &s, o, &kl, &mom, N);
	ft_i32vec *q = ft_xmalloc((size_t)N * sizeof *q);
	size_t *qi = ft_xmalloc((size_t)N * sizeof *qi);
	/* the prompts are taken in order, W N per step, rank r the r-th N of
	 * them (accelerate's BatchSamplerShard: batch k to process k % W) */
	int W = world(o), rank = ft_dist_rank(o->dist);
	while (rc == 0 && s.step < o->max_steps) {
		size_t next = ((size_t)s.step * W + rank) * (size_t)N;
		for (int i = 0; i < N; i++) {
			qi[i] = next++ % n;
			q[i] = prompts[qi[i]];   /* borrowed */
		}
		rc = ppo_step(m, &s, o, q, qi, N, &kl, &mom);
		if (rc == 0 && o->save_steps > 0 && o->save_model && s.step % o->save_steps == 0 && rank == 0)
			rc = ckpt_save(m, &s, o, &kl, &mom, N);   /* every rank holds the same state */
	}
	if (rc == 0) rc = to_host(&s, NULL);   /* the trained weights and head, for the caller's outputs */
	free(q);
	free(qi);
	ft_adamw_free(s.opt);
	free(s.ps);
	free(s.vh[0].g);
	free(s.vh[1].g);
	return rc;
}
