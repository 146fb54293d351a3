/* pref.c - the preference stages behind the trainer's model interface.
 *
 * A micro-batch goes: batch -> sequences (seq_map) -> the reference
 * model's log-probs, once, with no graph (a frozen model, or the LoRA
 * policy with its adapters disabled) -> the policy's log-probs with the
 * activations kept -> per-sequence sums -> the loss and dL/d(sequence
 * log-prob) (pref_loss.c) -> one backward pass from dL/d(token log-prob).
 * rm replaces the log-probs by the value head's score at each sequence's
 * last label position.
 *
 * Losses and metrics follow TRL as LLaMA-Factory calls it: the step's loss
 * is the mean of its micro-batches' mean losses (model_accepts_loss_kwargs
 * = False), metrics are stored per micro-batch and averaged (dpo) or summed
 * and divided by counts (kto) when the trainer logs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format/safetensors.h"
#include "format/trainlog.h"
#include "model/model_pref.h"
#include "train/pref.h"
#include "train/dist.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "util/rng.h"

/* ---- metrics ------------------------------------------------------------ */

#define NKEYS 12
/* dpo keys in TRL's order; kto reuses the first eight names; rm has
 * accuracy (eval only) */
static const char *const keys_train[NKEYS] = {
	"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
	"logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
	"sft_loss", "odds_ratio_loss", "kl", "accuracy",
};
static const char *const keys_eval[NKEYS] = {
	"eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/accuracies",
	"eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected",
	"eval_logits/chosen", "eval_logits/rejected", "eval_sft_loss",
	"eval_odds_ratio_loss", "eval_kl", "eval_accuracy",
};
enum { K_RC, K_RR, K_ACC, K_MARGIN, K_LC, K_LR, K_GC, K_GR, K_SFT, K_ODDS, K_KL, K_RMACC };

typedef struct {
	double sum[NKEYS], cnt[NKEYS];
} metrics;
/* summed over the ranks as one array */
_Static_assert(sizeof(metrics) == 2 * NKEYS * sizeof(double), "metrics is two packed arrays");

static void put(metrics *m, int k, double v, double cnt)
{
	m->sum[k] += v;
	m->cnt[k] += cnt;
}

/* ---- the binding's state ------------------------------------------------- */

struct ft_pref {
	ft_pref_model pm, rm;     /* the policy, and the reference when has_ref */
	int has_ref;
	ft_pref_opts o;
	size_t np_model;
	ft_param vh[2];           /* rm: v_head.summary.weight [1, D], .bias [1] */
	metrics mt[2];            /* [0] training since the last log, [1] the last evaluation */
	uint64_t drop_calls;      /* value-head dropout masks, one per call */
	ft_pref_moments bco;      /* --pref_bco_weight: TRL's RunningMoments, checkpointed */
	/* per batch, grown on demand */
	size_t cap_n, cap_s;
	float *lp, *lp_ref, *lmean, *dlp, *hd, *ldw;
	int32_t *seq_of;          /* target position -> sequence, -1 none */
	int32_t *last;            /* sequence -> last label position (rm) */
	double *sum, *sum_ref, *len, *lsum, *nlog, *buf;
	int nseq;
};

static void grow(ft_pref *p, size_t n, size_t s, int D)
{
	if (n > p->cap_n) {
		p->cap_n = n;
		p->lp = ft_xrealloc(p->lp, n * sizeof(float));
		p->lp_ref = ft_xrealloc(p->lp_ref, n * sizeof(float));
		p->lmean = ft_xrealloc(p->lmean, n * sizeof(float));
		p->dlp = ft_xrealloc(p->dlp, n * sizeof(float));
		p->ldw = ft_xrealloc(p->ldw, n * sizeof(float));
		p->seq_of = ft_xrealloc(p->seq_of, n * sizeof(int32_t));
	}
	if (s > p->cap_s) {
		p->cap_s = s;
		p->last = ft_xrealloc(p->last, s * sizeof(int32_t));
		double **d[] = { &p->sum, &p->sum_ref, &p->len, &p->lsum, &p->nlog };
		for (size_t i = 0; i < sizeof d / sizeof *d; i++)
			*d[i] = ft_xrealloc(*d[i], s * sizeof(double));
		p->buf = ft_xrealloc(p->buf, 8 * s * sizeof(double));
		p->hd = ft_xrealloc(p->hd, s * (size_t)D * sizeof(float));
	}
}

/* Segments (pairs) in row r: 1 without segment ids, else its largest id. */
static int row_segments(const ft_batch *b, int r)
{
	if (!b->segment_ids) return 1;
	int mx = 0;
	for (int t = 0; t < b->T; t++)
		if (b->segment_ids[r * b->T + t] > mx) mx = b->segment_ids[r * b->T + t];
	return mx;
}

/* Sequence 2u+k is sequence k (0 chosen / example, 1 rejected / KL) of
 * unit u; units are the row pairs, or with segment ids the segments of a
 * row pair.  Fills seq_of, last, len, lsum (the sum over the sequence's
 * rows of its logit means, for logits/...) once lmean is known. */
static int seq_map(ft_pref *p, const ft_batch *b)
{
	if (b->B % 2)
		return ft_fail("batch %lld: %d rows; a %s batch holds rows in pairs", (long long)b->index,
			       b->B, p->o.stage == FT_PREF_KTO ? "kto" : "pairwise");
	if (!b->labels)
		return ft_fail("batch %lld: no labels", (long long)b->index);
	int T = b->T, units = 0;
	int32_t *base = ft_xmalloc((size_t)(b->B / 2) * sizeof *base);
	for (int i = 0; i < b->B / 2; i++) {
		int s0 = row_segments(b, 2 * i), s1 = row_segments(b, 2 * i + 1);
		if (s0 != s1) {
			free(base);
			return ft_fail("batch %lld: rows %d and %d hold %d and %d sequences; a pair's rows "
				       "must hold the same examples", (long long)b->index, 2 * i, 2 * i + 1, s0, s1);
		}
		base[i] = units;
		units += s0;
	}
	size_t N = (size_t)b->B * T;
	grow(p, N, (size_t)units * 2, p->pm.hidden_size);
	p->nseq = units * 2;
	for (int s = 0; s < p->nseq; s++) {
		p->last[s] = -1;
		p->len[s] = 0;
	}
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < T; t++) {
			size_t i = (size_t)r * T + t;
			int sg = b->segment_ids ? b->segment_ids[i] : 1;
			int s = sg > 0 ? 2 * (base[r / 2] + sg - 1) + (r & 1) : -1;
			if (s >= 0 && b->labels[i] != FT_IGNORE_INDEX)
				p->last[s] = (int32_t)i;
			p->seq_of[i] = -1;
			if (t + 1 < T && b->labels[i + 1] != FT_IGNORE_INDEX) {
				int sg1 = b->segment_ids ? b->segment_ids[i + 1] : 1;
				if (sg1 > 0) {
					p->seq_of[i] = 2 * (base[r / 2] + sg1 - 1) + (r & 1);
					p->len[p->seq_of[i]] += 1;
				}
			}
		}
	free(base);
	/* LLaMA-Factory would divide by a zero label count (dpo, kto) or score
	 * the prompt's last token (rm): refused instead */
	for (int s = 0; s < p->nseq; s++)
		if (p->last[s] < 0 || (p->o.stage != FT_PREF_RM && p->len[s] == 0))
			return ft_fail("batch %lld: the %s sequence of %s %d has no response tokens "
				       "(labels all -100)", (long long)b->index,
				       p->o.stage == FT_PREF_KTO ? ((s & 1) ? "KL" : "example")
								 : ((s & 1) ? "rejected" : "chosen"),
				       p->o.stage == FT_PREF_KTO ? "example" : "pair", s / 2);
	return 0;
}

/* Per-sequence sums of per-position values v (by seq_of) into out, each
 * times w[i] when w is given. */
static void seq_sums(const ft_pref *p, const ft_batch *b, const float *v, const float *w, double *out)
{
	for (int s = 0; s < p->nseq; s++) out[s] = 0;
	size_t N = (size_t)b->B * b->T;
	for (size_t i = 0; i < N; i++)
		if (p->seq_of[i] >= 0) out[p->seq_of[i]] += w ? (double)w[i] * v[i] : v[i];
}

/* LD-DPO's weights (LLaMA-Factory's get_batch_logps with ld_alpha) into
 * ldw, after seq_map: a pair's public length is the shorter response's
 * label count; a target position t of a sequence weighs 1 while t <
 * (its first target position) + that length, else ld_alpha (by position,
 * as LLaMA-Factory's ld_mask: prompt holes inside a response still
 * advance).  Per segment with neat packing (t from the row's start). */
static void ld_weights(ft_pref *p, const ft_batch *b)
{
	int T = b->T, ns = p->nseq;
	int32_t *first = p->last;   /* seq_map's last positions are not needed by dpo */
	for (int s = 0; s < ns; s++) first[s] = -1;
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < T; t++) {
			int q = p->seq_of[(size_t)r * T + t];
			if (q >= 0 && first[q] < 0) first[q] = t;
		}
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < T; t++) {
			size_t i = (size_t)r * T + t;
			int q = p->seq_of[i];
			if (q < 0) { p->ldw[i] = 0; continue; }
			double m = fmin(p->len[q & ~1], p->len[q | 1]);
			p->ldw[i] = t < first[q] + m ? 1.0f : (float)p->o.ld_alpha;
		}
}

/* Each sequence's sum of its rows' logit means over every position
 * (padding and prompt included, as the logits tensor LLaMA-Factory
 * averages), with the count of positions in nlog.  A neat-packed row's
 * positions go to the segment they belong to. */
static void logit_sums(ft_pref *p, const ft_batch *b)
{
	for (int s = 0; s < p->nseq; s++) p->lsum[s] = p->nlog[s] = 0;
	int T = b->T, u = 0;
	for (int r = 0; r < b->B; r += 2) {
		int ns = row_segments(b, r);
		for (int k = 0; k < 2; k++)
			for (int t = 0; t < T; t++) {
				size_t i = (size_t)(r + k) * T + t;
				int sg = b->segment_ids ? b->segment_ids[i] : 1;
				if (sg <= 0) sg = 1;   /* padding of a packed row: its first pair */
				int s = 2 * (u + sg - 1) + k;
				p->lsum[s] += p->lmean[i];
				p->nlog[s] += 1;
			}
		u += ns;
	}
}

/* The reference's log-probs into lp_ref: no graph, no dropout. */
static int ref_logps(ft_pref *p, const ft_batch *b)
{
	if (p->has_ref)
		return p->rm.logps_forward(p->rm.base.self, b, 0, p->lp_ref, NULL);
	void *pol = p->pm.base.self;
	p->pm.set_adapters(pol, 0);
	int rc = p->pm.logps_forward(pol, b, 0, p->lp_ref, NULL);
	p->pm.set_adapters(pol, 1);
	return rc;
}

/* ---- dpo ------------------------------------------------------------------ */

static int dpo_step(ft_pref *p, const ft_batch *b, int train, float scale, double *loss)
{
	int ref = ft_pref_uses_ref(&p->o), avg = ft_pref_avg_logps(&p->o);
	if (seq_map(p, b) < 0) return -1;
	if (ref && ref_logps(p, b) < 0) return -1;
	if (p->pm.logps_forward(p->pm.base.self, b, train, p->lp, p->lmean) < 0) return -1;
	/* ld_alpha weighs the policy's log-probs only (is_ref_model: None) */
	const float *w = p->o.ld ? p->ldw : NULL;
	if (w) ld_weights(p, b);
	seq_sums(p, b, p->lp, w, p->sum);
	if (ref) seq_sums(p, b, p->lp_ref, NULL, p->sum_ref);
	logit_sums(p, b);
	int n = p->nseq / 2;
	double *pc = p->buf, *pr = pc + n, *rc = pr + n, *rr = rc + n, *lc = rr + n;
	double *dc = lc + n, *dr = dc + n, *ls = dr + n, *rwc = p->sum, *rwr = p->sum_ref;
	for (int i = 0; i < n; i++) {
		double l0 = p->len[2 * i] > 0 ? p->len[2 * i] : 1, l1 = p->len[2 * i + 1] > 0 ? p->len[2 * i + 1] : 1;
		pc[i] = p->sum[2 * i] / (avg ? l0 : 1);
		pr[i] = p->sum[2 * i + 1] / (avg ? l1 : 1);
		rc[i] = ref ? p->sum_ref[2 * i] / (avg ? l0 : 1) : 0;
		rr[i] = ref ? p->sum_ref[2 * i + 1] / (avg ? l1 : 1) : 0;
		lc[i] = p->len[2 * i];
	}
	/* the rewards overwrite sum / sum_ref, no longer needed */
	/* bco's baseline moves with every batch, evaluation's too (LLaMA-Factory
	 * computes the same loss there) */
	*loss = ft_pref_dpo_loss(&p->o, n, pc, pr, rc, rr, lc, &p->bco, ls, dc, dr, rwc, rwr);
	metrics *m = &p->mt[!train];
	double s[8] = { 0 }, gc = 0, gr = 0, nc = 0, nr = 0, sft = 0;
	for (int i = 0; i < n; i++) {
		s[K_RC] += rwc[i];
		s[K_RR] += rwr[i];
		s[K_ACC] += rwc[i] > rwr[i];
		s[K_MARGIN] += rwc[i] - rwr[i];
		s[K_LC] += pc[i];
		s[K_LR] += pr[i];
		gc += p->lsum[2 * i]; nc += p->nlog[2 * i];
		gr += p->lsum[2 * i + 1]; nr += p->nlog[2 * i + 1];
		sft += avg ? -pc[i] : -pc[i] / (lc[i] > 0 ? lc[i] : 1);
	}
	for (int k = 0; k < 6; k++) put(m, k, n ? s[k] / n : 0, 1);
	put(m, K_GC, nc ? gc / nc : 0, 1);
	put(m, K_GR, nr ? gr / nr : 0, 1);
	if (p->o.loss == FT_PREF_ORPO) {
		put(m, K_SFT, n ? sft / n : 0, 1);
		double odds = 0;
		for (int i = 0; i < n; i++) odds += (ls[i] - (-pc[i])) / p->o.beta;
		put(m, K_ODDS, n ? odds / n : 0, 1);
	}
	if (!train) return 0;
	size_t N = (size_t)b->B * b->T;
	for (size_t i = 0; i < N; i++) {
		int q = p->seq_of[i];
		float g = 0;
		if (q >= 0) {
			double d = (q & 1) ? dr[q / 2] : dc[q / 2];
			if (avg) d /= p->len[q] > 0 ? p->len[q] : 1;
			if (w) d *= w[i];
			g = (float)(d * scale);
		}
		p->dlp[i] = g;
	}
	return p->pm.logps_backward(p->pm.base.self, b, p->dlp);
}

/* ---- kto ------------------------------------------------------------------ */

static int kto_step(ft_pref *p, const ft_batch *b, int train, float scale, double *loss)
{
	if (!b->kto_tags)
		return ft_fail("batch %lld: kto batches need kto_tags (re-pack with this ft-pack)",
			       (long long)b->index);
	if (b->segment_ids)
		return ft_fail("batch %lld: kto batches must be padded (no neat packing)", (long long)b->index);
	if (seq_map(p, b) < 0 || ref_logps(p, b) < 0) return -1;
	if (p->pm.logps_forward(p->pm.base.self, b, train, p->lp, p->lmean) < 0) return -1;
	seq_sums(p, b, p->lp, NULL, p->sum);
	seq_sums(p, b, p->lp_ref, NULL, p->sum_ref);
	logit_sums(p, b);
	int n = p->nseq / 2;
	/* KL estimate from the mismatched completions: the policy's KL
	 * log-probs come from the same pass but carry no gradient (TRL runs
	 * them under no_grad), mean over the batch, clamped at 0 */
	double kl = 0;
	for (int i = 0; i < n; i++) kl += p->sum[2 * i + 1] - p->sum_ref[2 * i + 1];
	kl = n ? kl / n : 0;
	if (kl < 0) kl = 0;
	double *pol = p->buf, *ref = pol + n, *len = ref + n, *dpol = len + n, *rew = dpol + n;
	int *des = ft_xmalloc((size_t)(n ? n : 1) * sizeof *des);
	for (int i = 0; i < n; i++) {
		pol[i] = p->sum[2 * i];
		ref[i] = p->sum_ref[2 * i];
		len[i] = p->len[2 * i];
		des[i] = b->kto_tags[2 * i] != 0;
	}
	*loss = ft_pref_kto_loss(&p->o, n, des, pol, ref, len, kl, dpol, rew);
	metrics *m = &p->mt[!train];
	for (int i = 0; i < n; i++) {
		int c = des[i];
		/* sums and counts: logged as sum / count over the window */
		put(m, c ? K_RC : K_RR, rew[i], 1);
		put(m, c ? K_LC : K_LR, pol[i], 1);
		put(m, c ? K_GC : K_GR, p->lsum[2 * i] * p->pm.vocab_size, 1);
	}
	put(m, K_KL, kl, 1);   /* logged as the sum over the window, as TRL */
	free(des);
	if (!train) return 0;
	size_t N = (size_t)b->B * b->T;
	for (size_t i = 0; i < N; i++) {
		int q = p->seq_of[i];
		p->dlp[i] = q >= 0 && !(q & 1) ? (float)(dpol[q / 2] * scale) : 0.0f;
	}
	return p->pm.logps_backward(p->pm.base.self, b, p->dlp);
}

/* ---- rm ------------------------------------------------------------------- */

/* After seq_map: the scores of the chosen (c) and rejected (r) sequences. */
static int rm_scores(ft_pref *p, const ft_batch *b, int train, double *c, double *r)
{
	int ns = p->nseq;
	float *sc = ft_xmalloc((size_t)ns * sizeof *sc);
	if (train)   /* one mask per training micro-batch, so a resume continues them */
		p->drop_calls++;
	int rc = p->pm.value_forward(p->pm.base.self, b, train, p->last, ns, p->vh[0].w, p->vh[1].w[0],
					(float)p->o.value_dropout, p->o.seed ^ (p->drop_calls * 0x9e3779b97f4a7c15ULL),
					p->hd, sc);
	for (int i = 0; rc == 0 && i < ns / 2; i++) {
		c[i] = sc[2 * i];
		r[i] = sc[2 * i + 1];
	}
	free(sc);
	return rc;
}

static int rm_step(ft_pref *p, const ft_batch *b, int train, float scale, double *loss)
{
	if (seq_map(p, b) < 0) return -1;
	int n = p->nseq / 2;
	double *c = p->buf, *r = c + n, *dc = r + n, *dr = dc + n;
	if (rm_scores(p, b, train, c, r) < 0) return -1;
	*loss = ft_pref_rm_loss(n, c, r, dc, dr);
	if (!train) {
		for (int i = 0; i < n; i++) put(&p->mt[1], K_RMACC, c[i] > r[i], 1);
		return 0;
	}
	float *ds = ft_xmalloc((size_t)(2 * n) * sizeof *ds);
	for (int i = 0; i < n; i++) {
		ds[2 * i] = (float)(dc[i] * scale);
		ds[2 * i + 1] = (float)(dr[i] * scale);
	}
	double db = 0;
	int rc = p->pm.value_backward(p->pm.base.self, b, p->last, 2 * n, p->vh[0].w, (float)p->o.value_dropout,
					 p->o.seed ^ (p->drop_calls * 0x9e3779b97f4a7c15ULL), p->hd, ds,
					 p->vh[0].g, &db);
	p->vh[1].g[0] += (float)db;
	free(ds);
	return rc;
}

static int step(ft_pref *p, const ft_batch *b, int train, float scale, double *loss)
{
	switch (p->o.stage) {
	case FT_PREF_RM: return rm_step(p, b, train, scale, loss);
	case FT_PREF_KTO: return kto_step(p, b, train, scale, loss);
	default: return dpo_step(p, b, train, scale, loss);
	}
}

/* ---- the trainer's interface --------------------------------------------- */

static size_t pf_nparams(void *self)
{
	ft_pref *p = self;
	return p->np_model + (p->o.stage == FT_PREF_RM ? 2 : 0);
}

static ft_param *pf_param(void *self, size_t i)
{
	ft_pref *p = self;
	return i < p->np_model ? p->pm.base.param(p->pm.base.self, i) : &p->vh[i - p->np_model];
}

static void pf_zero_grad(void *self)
{
	ft_pref *p = self;
	p->pm.base.zero_grad(p->pm.base.self);
	if (p->o.stage == FT_PREF_RM)
		for (int k = 0; k < 2; k++) memset(p->vh[k].g, 0, p->vh[k].n * sizeof(float));
}

static int pf_fwd_bwd(void *self, const ft_batch *b, float scale, double *ls, int64_t *n)
{
	*n = 1;
	return step(self, b, 1, scale, ls);
}

static int pf_fwd(void *self, const ft_batch *b, double *ls, int64_t *n)
{
	*n = 1;
	return step(self, b, 0, 0, ls);
}

static int save_value_head(ft_pref *p, const char *dir)
{
	ft_st_writer *w = ft_st_writer_new();
	int64_t sw[2] = { 1, (int64_t)p->vh[0].n }, sb[1] = { 1 };
	ft_st_writer_add(w, "v_head.summary.weight", FT_F32, 2, sw, p->vh[0].w);
	ft_st_writer_add(w, "v_head.summary.bias", FT_F32, 1, sb, p->vh[1].w);
	ft_st_writer_meta(w, "format", "pt");
	char *path = ft_xasprintf("%s/value_head.safetensors", dir);
	int rc = ft_st_writer_write(w, path);
	free(path);
	ft_st_writer_free(w);
	return rc;
}

static int pf_save(void *self, const char *dir)
{
	ft_pref *p = self;
	if (p->pm.base.save(p->pm.base.self, dir) < 0) return -1;
	return p->o.stage == FT_PREF_RM ? save_value_head(p, dir) : 0;
}

static void pf_set_position(void *self, int64_t n)
{
	ft_pref *p = self;
	if (p->pm.base.set_position) p->pm.base.set_position(p->pm.base.self, n);
	p->drop_calls = (uint64_t)n;
}

/* Drain the metrics gathered since the last call: dpo means of the
 * per-batch values, kto sums over counts (kl summed), rm accuracy. */
static size_t pf_metrics(void *self, int eval, const char **keys, double *vals, size_t cap)
{
	ft_pref *p = self;
	metrics *m = &p->mt[eval != 0];
	const char *const *names = eval ? keys_eval : keys_train;
	size_t k = 0;
	/* the global batch's sums and counts, as one process would have them;
	 * a failed sum leaves this rank's (the job is ending: the next
	 * collective fails too) */
	if (ft_dist_size(p->o.dist) > 1)
		(void)ft_dist_sum_f64(p->o.dist, m->sum, 2 * NKEYS, "metrics all-reduce");
	int have[NKEYS] = { 0 };
	double v[NKEYS];
	for (int i = 0; i < NKEYS; i++) {
		have[i] = m->cnt[i] > 0;
		v[i] = i == K_KL ? m->sum[i] : have[i] ? m->sum[i] / m->cnt[i] : 0;
	}
	if (p->o.stage == FT_PREF_KTO) {
		have[K_ACC] = 0;
		have[K_MARGIN] = have[K_RC] && have[K_RR];
		v[K_MARGIN] = v[K_RC] - v[K_RR];
		/* TRL's order: the chosen metrics, the rejected ones, the margin, kl */
		static const int order[] = { K_RC, K_LC, K_GC, K_RR, K_LR, K_GR, K_MARGIN, K_KL };
		for (size_t i = 0; i < sizeof order / sizeof *order && k < cap; i++)
			if (have[order[i]]) { keys[k] = names[order[i]]; vals[k++] = v[order[i]]; }
	} else {
		for (int i = 0; i < NKEYS && k < cap; i++)
			if (have[i]) { keys[k] = names[i]; vals[k++] = v[i]; }
	}
	memset(m, 0, sizeof *m);
	/* the policy's own (the device's fp16 loss scale) after TRL's */
	if (p->pm.base.metrics)
		k += p->pm.base.metrics(p->pm.base.self, eval, keys + k, vals + k, cap - k);
	return k;
}

/* A device optimizer steps the model's own weights: passed through. */
static int pf_step(void *self, const ft_adamw_opts *o, double lr, double max_norm, double *gn)
{
	ft_pref *p = self;
	return p->pm.base.step(p->pm.base.self, o, lr, max_norm, gn);
}
static int pf_ext_step(void *self, const struct ft_optim_ext *x, const ft_adamw_opts *o, double lr,
		       double lambda, double max_norm, double *gn)
{
	ft_pref *p = self;
	return p->pm.base.ext_step(p->pm.base.self, x, o, lr, lambda, max_norm, gn);
}
static int pf_state_out(void *self, ft_adamw *opt)
{
	ft_pref *p = self;
	return p->pm.base.state_out(p->pm.base.self, opt);
}
static int pf_state_in(void *self, const ft_adamw *opt)
{
	ft_pref *p = self;
	return p->pm.base.state_in(p->pm.base.self, opt);
}
/* --pref_bco_weight: the baseline's RunningMoments in bco_moments.json
 * (TRL's save_to_json fields but std, which is derived; %.17g doubles
 * read back exactly); then the policy's own (fp16's loss scaler). */
static int pf_ckpt_save(void *self, const char *dir)
{
	ft_pref *p = self;
	if (ft_pref_uses_bco(&p->o)) {
		json_t *j = json_pack("{s:f,s:f,s:f}", "mean", p->bco.mean, "var", p->bco.var,
				      "count", p->bco.count);
		char *f = ft_xasprintf("%s/bco_moments.json", dir);
		int rc = ft_json_save_file_sorted(j, f, 2);
		free(f);
		json_decref(j);
		if (rc < 0) return -1;
	}
	return p->pm.base.ckpt_save ? p->pm.base.ckpt_save(p->pm.base.self, dir) : 0;
}
static int pf_ckpt_load(void *self, const char *dir)
{
	ft_pref *p = self;
	if (ft_pref_uses_bco(&p->o)) {
		char *f = ft_xasprintf("%s/bco_moments.json", dir);
		json_t *j = ft_json_load_file(f);
		ft_pref_moments m;
		int rc = j && ft_json_req_num(j, "mean", &m.mean) == 0 && ft_json_req_num(j, "var", &m.var) == 0 &&
			 ft_json_req_num(j, "count", &m.count) == 0 ? 0 : -1;
		json_decref(j);
		if (rc < 0) {
			ft_fail("%s: %s (a checkpoint of a run with --pref_bco_weight has it)", f, ft_errmsg());
			free(f);
			return -1;
		}
		free(f);
		p->bco = m;
	}
	return p->pm.base.ckpt_load ? p->pm.base.ckpt_load(p->pm.base.self, dir) : 0;
}
/* Data parallel on the policy's device: its gradient groups summed there
 * (NCCL) in place of the trainer's MPI sums of the params' g. */
static int pf_sum_group(void *self, struct ft_dist *d, int group)
{
	ft_pref *p = self;
	return p->pm.base.sum_group(p->pm.base.self, d, group);
}
static int pf_sum_wait(void *self, struct ft_dist *d)
{
	ft_pref *p = self;
	return p->pm.base.sum_wait(p->pm.base.self, d);
}
/* ZeRO-1 on the device: a resume's moments streamed into its slice */
static int pf_zero_load(void *self, ft_adamw *opt, const char *path)
{
	ft_pref *p = self;
	return p->pm.base.zero_load(p->pm.base.self, opt, path);
}
/* The policy's device memory, plus a reference model's of its own. */
static size_t pf_peak(void *self)
{
	ft_pref *p = self;
	size_t n = p->pm.base.peak_bytes(p->pm.base.self);
	if (p->has_ref && p->rm.base.self != p->pm.base.self && p->rm.base.peak_bytes)
		n += p->rm.base.peak_bytes(p->rm.base.self);
	return n;
}

ft_train_model ft_pref_train_model(ft_pref *p)
{
	ft_train_model t = { .self = p, .nparams = pf_nparams, .param = pf_param,
			     .zero_grad = pf_zero_grad, .forward_backward = pf_fwd_bwd,
			     .forward = pf_fwd, .save = pf_save, .set_position = pf_set_position,
			     .batch_mean = 1, .metrics = pf_metrics };
	if (p->pm.base.step) {
		t.step = pf_step;
		t.state_out = pf_state_out;
		t.state_in = pf_state_in;
		if (p->pm.base.ext_step) t.ext_step = pf_ext_step;
	}
	if (p->pm.base.ckpt_save || ft_pref_uses_bco(&p->o)) {   /* fp16's loss scaler, bco's moments */
		t.ckpt_save = pf_ckpt_save;
		t.ckpt_load = pf_ckpt_load;
	}
	if (p->pm.base.peak_bytes) t.peak_bytes = pf_peak;
	if (p->pm.base.sum_group) {
		t.sum_group = pf_sum_group;
		t.sum_wait = pf_sum_wait;
		t.grad_layers = p->pm.base.grad_layers;
	}
	if (p->pm.base.zero_load) t.zero_load = pf_zero_load;
	return t;
}

/* ---- construction --------------------------------------------------------- */

void ft_pref_set_dist(ft_pref *p, struct ft_dist *d) { p->o.dist = d; }

ft_pref *ft_pref_new(ft_model *policy, ft_model *ref, const ft_pref_opts *o)
{
	ft_pref_model pm = ft_pref_model_of(policy), rm;
	if (ref) rm = ft_pref_model_of(ref);
	return ft_pref_new_with(&pm, ref ? &rm : NULL, o);
}

ft_pref *ft_pref_new_with(const ft_pref_model *policy, const ft_pref_model *ref,
			  const ft_pref_opts *o)
{
	if (ft_pref_uses_ref(o) && !ref && !policy->has_adapters) {
		ft_fail("a reference model is needed: LoRA (whose reference is the model with its "
			"adapters disabled), or --ref_model");
		return NULL;
	}
	if (o->stage == FT_PREF_RM && policy->base.step && !policy->own_value_head) {
		ft_fail("rm on a model that steps itself needs it to keep the value head (own_value_head)");
		return NULL;
	}
	if (o->bco_weight > 1e-6 && !ft_pref_uses_bco(o)) {
		ft_fail("pref_bco_weight: the BCO loss is mixed into dpo's losses with a reference model "
			"(sigmoid, hinge, ipo), not %s%s", o->stage == FT_PREF_DPO ? "--pref_loss " : "stage ",
			o->stage == FT_PREF_DPO ? ft_pref_loss_name(o->loss) : o->stage == FT_PREF_RM ? "rm" : "kto");
		return NULL;
	}
	if (ft_pref_uses_bco(o) && ft_dist_size(o->dist) > 1) {
		ft_fail("pref_bco_weight under mpirun: TRL's RunningMoments gathers the batch rewards of "
			"every rank at each micro-batch (get_global_statistics), which ft does not; run it "
			"in one process");
		return NULL;
	}
	if (o->ld && o->stage != FT_PREF_DPO) {
		ft_fail("ld_alpha: LD-DPO weighs dpo's log-probs (LLaMA-Factory's CustomDPOTrainer), not "
			"stage %s's", o->stage == FT_PREF_RM ? "rm" : "kto");
		return NULL;
	}
	ft_pref *p = ft_xcalloc(1, sizeof *p);
	p->pm = *policy;
	ft_pref_moments_init(&p->bco);
	p->has_ref = ref && ft_pref_uses_ref(o);
	if (p->has_ref) p->rm = *ref;
	p->o = *o;
	p->np_model = policy->base.nparams(policy->base.self);
	if (o->stage == FT_PREF_RM) {
		int D = policy->hidden_size;
		const char *names[2] = { "v_head.summary.weight", "v_head.summary.bias" };
		size_t ns[2] = { (size_t)D, 1 };
		ft_rng g;
		ft_rng_seed(&g, o->seed ^ 0x76686561645f7631ULL);   /* "vhead_v1" */
		double bound = 1 / sqrt((double)D);   /* nn.Linear's kaiming_uniform(a=sqrt(5)) */
		for (int k = 0; k < 2; k++) {
			ft_param *q = &p->vh[k];
			q->name = ft_xstrdup(names[k]);
			q->n = ns[k];
			q->w = ft_xmalloc(ns[k] * sizeof(float));
			q->g = ft_xcalloc(ns[k], sizeof(float));
			q->ndim = k ? 1 : 2;
			q->shape[0] = 1;
			q->shape[1] = k ? 0 : D;
			q->trainable = 1;
			q->decay = k == 0;
			for (size_t i = 0; i < ns[k]; i++)
				q->w[i] = (float)((2 * ft_rng_uniform(&g) - 1) * bound);
		}
		if (policy->own_value_head) policy->own_value_head(policy->base.self, p->vh);
	}
	return p;
}

int ft_pref_load_value_head(ft_pref *p, const char *dir)
{
	if (p->o.stage != FT_PREF_RM) return 0;
	char *path = ft_xasprintf("%s/value_head.safetensors", dir);
	ft_st *st = ft_st_open(path);
	int rc = -1;
	if (!st) goto out;
	const char *names[2] = { "v_head.summary.weight", "v_head.summary.bias" };
	for (int k = 0; k < 2; k++) {
		const ft_st_tensor *t = ft_st_find(st, names[k]);
		if (!t) { ft_fail("%s: no tensor %s", path, names[k]); goto out; }
		size_t numel = 1;
		for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
		if (numel != p->vh[k].n) {
			ft_fail("%s: %s has %zu elements, the model's hidden size needs %zu", path, names[k],
				numel, p->vh[k].n);
			goto out;
		}
		if (ft_st_read_f32(t, p->vh[k].w) < 0) goto out;
	}
	if (p->pm.own_value_head) p->pm.own_value_head(p->pm.base.self, p->vh);
	rc = 0;
out:
	if (st) ft_st_close(st);
	free(path);
	return rc;
}

/* Python's round(x, 2) then json.dumps: the decimal rounding of the
 * exact binary value (printf's %.2f is exact too), written as repr. */
static void fmt_round2(char *buf, size_t n, double x)
{
	char t[64];
	snprintf(t, sizeof t, "%.2f", x);
	ft_fmt_double_repr(buf, n, strtod(t, NULL));
}

int ft_pref_predict(ft_pref *p, ft_batch_source *src, const char *path, int64_t *n_pairs)
{
	if (p->o.stage != FT_PREF_RM)
		return ft_fail("predictions are written for --stage rm only");
	if (src->rewind(src->self) < 0) return -1;
	ft_atomic a;
	if (ft_atomic_open(&a, path) < 0) return -1;
	ft_batch b = {0};
	int rc, first = 1;
	int64_t np = 0;
	while ((rc = src->next(src->self, &b)) == 1) {
		if (seq_map(p, &b) < 0) { rc = -1; break; }
		int n = p->nseq / 2;
		double *c = p->buf, *r = c + n;
		if (rm_scores(p, &b, 0, c, r) < 0) { rc = -1; break; }
		for (int i = 0; i < n; i++) {
			char sc[64], sr[64];
			fmt_round2(sc, sizeof sc, (float)c[i]);
			fmt_round2(sr, sizeof sr, (float)r[i]);
			fprintf(a.fp, "%s{\"chosen\": %s, \"rejected\": %s}", first ? "" : "\n", sc, sr);
			first = 0;
			np++;
		}
	}
	ft_batch_free(&b);
	if (rc < 0) {
		ft_atomic_abort(&a);
		return -1;
	}
	if (n_pairs) *n_pairs = np;
	return ft_atomic_commit(&a);
}

void ft_pref_free(ft_pref *p)
{
	if (!p) return;
	for (int k = 0; k < 2; k++) {
		free(p->vh[k].name);
		free(p->vh[k].w);
		free(p->vh[k].g);
	}
	void *bufs[] = { p->lp, p->lp_ref, p->lmean, p->dlp, p->ldw, p->hd, p->seq_of, p->last, p->sum,
			 p->sum_ref, p->len, p->lsum, p->nlog, p->buf };
	for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
	free(p);
}
