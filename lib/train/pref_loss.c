/* pref_loss.c - the preference losses on per-sequence log-probabilities,
 * with their gradients, as LLaMA-Factory's CustomDPOTrainer /
 * CustomKTOTrainer / PairwiseTrainer compute them over TRL's dpo_loss and
 * kto_loss (LLaMA-Factory 0.9.x, TRL 0.9-0.12 semantics).  Everything here
 * is in double; the model's log-probabilities arrive as float sums. */
#include <math.h>
#include <string.h>
#include "train/pref.h"
#include "util/error.h"

static const char *const loss_names[] = { "sigmoid", "hinge", "ipo", "orpo", "simpo" };

void ft_pref_opts_default(ft_pref_opts *o, int stage)
{
	memset(o, 0, sizeof *o);
	o->stage = stage;
	o->loss = FT_PREF_SIGMOID;
	o->beta = 0.1;
	o->simpo_gamma = 0.5;
	o->kto_chosen_weight = o->kto_rejected_weight = 1.0;
	o->value_dropout = 0.1;
	o->seed = 42;
}

int ft_pref_loss_parse(const char *name)
{
	for (int i = 0; i < (int)(sizeof loss_names / sizeof *loss_names); i++)
		if (!strcmp(name, loss_names[i]))
			return i;
	return ft_fail("--pref_loss: '%s' is not a loss (sigmoid, hinge, ipo, orpo, simpo)", name);
}

const char *ft_pref_loss_name(int loss)
{
	return loss >= 0 && loss <= FT_PREF_SIMPO ? loss_names[loss] : "?";
}

int ft_pref_uses_ref(const ft_pref_opts *o)
{
	if (o->stage == FT_PREF_RM) return 0;
	if (o->stage == FT_PREF_KTO) return 1;
	return o->loss != FT_PREF_ORPO && o->loss != FT_PREF_SIMPO;
}

int ft_pref_avg_logps(const ft_pref_opts *o)
{
	return o->stage == FT_PREF_DPO &&
	       (o->loss == FT_PREF_IPO || o->loss == FT_PREF_ORPO || o->loss == FT_PREF_SIMPO);
}

int ft_pref_uses_bco(const ft_pref_opts *o)
{
	return o->stage == FT_PREF_DPO && ft_pref_uses_ref(o) && o->bco_weight > 1e-6;
}

void ft_pref_moments_init(ft_pref_moments *m)
{
	m->mean = 0;
	m->var = 1;
	m->count = 1e-24;
}

/* TRL 0.18-0.24's RunningMoments.update (one process), in double: TRL
 * keeps mean, var and count as Python floats and does the arithmetic on
 * float32 tensors; the baseline it hands the loss is float32(mean). */
void ft_pref_moments_update(ft_pref_moments *m, double xs_mean, double xs_var, double xs_count)
{
	double delta = xs_mean - m->mean, tot = m->count + xs_count;
	double new_sum = xs_var * xs_count;
	/* the old sum of squares, corrected for the new mean */
	double old_sum = m->var * m->count + delta * delta * m->count * xs_count / tot;
	m->mean += delta * xs_count / tot;
	m->var = (old_sum + new_sum) / tot;
	m->count = tot;
}

/* log(sigmoid(x)) without overflow, and sigmoid. */
static double logsig(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sig(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

/* One pair: the loss and its derivatives in the policy's two log-probs. */
static double pair_loss(const ft_pref_opts *o, double pc, double pr, double rc, double rr,
			double *dc, double *dr)
{
	double b = o->beta;
	switch (o->loss) {
	case FT_PREF_ORPO: {
		/* sft term -pc plus beta * -logsigmoid(log odds ratio) */
		double lo = (pc - pr) - (log1p(-exp(pc)) - log1p(-exp(pr)));
		double g = -b * sig(-lo);
		*dc = -1 + g / (1 - exp(pc));   /* d lo / d pc = 1 / (1 - e^pc) */
		*dr = -g / (1 - exp(pr));
		return -pc - b * logsig(lo);
	}
	case FT_PREF_SIMPO: {
		double z = (pc - pr) - o->simpo_gamma / b;
		*dc = -b * sig(-b * z);
		*dr = -*dc;
		return -logsig(b * z);
	}
	default:
		break;
	}
	double z = (pc - pr) - (rc - rr), g, l;
	if (o->loss == FT_PREF_HINGE) {
		l = 1 - b * z;
		g = l > 0 ? -b : 0;   /* relu'(0) = 0, as torch */
		l = l > 0 ? l : 0;
	} else if (o->loss == FT_PREF_IPO) {
		double d = z - 1 / (2 * b);
		l = d * d;
		g = 2 * d;
	} else {   /* sigmoid, with conservative label smoothing */
		double ls = o->label_smoothing;
		l = -logsig(b * z) * (1 - ls) - logsig(-b * z) * ls;
		g = -(1 - ls) * b * sig(-b * z) + ls * b * sig(b * z);
	}
	*dc = g;
	*dr = -g;
	return l;
}

double ft_pref_dpo_loss(const ft_pref_opts *o, int n, const double *pc, const double *pr,
			const double *rc, const double *rr, const double *len_c, ft_pref_moments *bco,
			double *loss, double *dpc, double *dpr, double *rew_c, double *rew_r)
{
	int ref = ft_pref_uses_ref(o), avg = ft_pref_avg_logps(o);
	double tot = 0, b = o->beta, w = o->bco_weight, delta = 0;
	if (!ft_pref_uses_bco(o)) bco = NULL;
	if (bco && n > 0) {   /* the baseline: updated with cat(chosen, rejected rewards).mean() */
		double s = 0;
		for (int i = 0; i < n; i++) s += b * (pc[i] - rc[i]) + b * (pr[i] - rr[i]);
		ft_pref_moments_update(bco, s / (2.0 * n), 0, 1);
		delta = bco->mean;
	}
	for (int i = 0; i < n; i++) {
		double dc, dr;
		double l = pair_loss(o, pc[i], pr[i], ref ? rc[i] : 0, ref ? rr[i] : 0, &dc, &dr);
		if (bco) {   /* (losses + bco_losses * w) / (1 + w) */
			double xc = b * (pc[i] - rc[i]) - delta, xr = b * (pr[i] - rr[i]) - delta;
			double lb = -logsig(xc) - logsig(-xr);
			l = (l + w * lb) / (1 + w);
			dc = (dc + w * -b * sig(-xc)) / (1 + w);
			dr = (dr + w * b * sig(xr)) / (1 + w);
		}
		/* LLaMA-Factory: losses += pref_ftx * -(chosen log-prob per token) */
		if (o->ftx > 1e-6) {
			double lc = avg ? 1 : (len_c[i] > 0 ? len_c[i] : 1);
			l += o->ftx * -pc[i] / lc;
			dc += -o->ftx / lc;
		}
		loss[i] = l;
		dpc[i] = dc / n;
		dpr[i] = dr / n;
		rew_c[i] = o->beta * (ref ? pc[i] - rc[i] : pc[i]);
		rew_r[i] = o->beta * (ref ? pr[i] - rr[i] : pr[i]);
		tot += l;
	}
	return n ? tot / n : 0;
}

double ft_pref_kto_loss(const ft_pref_opts *o, int n, const int *desirable, const double *pol,
			const double *ref, const double *len, double kl, double *dpol,
			double *rewards)
{
	double b = o->beta, tot = 0, ftx_sum = 0;
	int nc = 0;
	for (int i = 0; i < n; i++) {
		double lr = pol[i] - ref[i];
		rewards[i] = b * lr;
		if (desirable[i]) {   /* 1 - sigmoid(beta (logratio - kl)) */
			double s = sig(b * (lr - kl)), w = o->kto_chosen_weight;
			tot += w * (1 - s);
			dpol[i] = -w * b * s * (1 - s) / n;
			nc++;
		} else {              /* 1 - sigmoid(beta (kl - logratio)) */
			double s = sig(b * (kl - lr)), w = o->kto_rejected_weight;
			tot += w * (1 - s);
			dpol[i] = w * b * s * (1 - s) / n;
		}
	}
	double loss = n ? tot / n : 0;
	/* LLaMA-Factory: ftx * nanmean(-chosen logp per token) / chosen * examples */
	if (o->ftx > 1e-6 && nc > 0) {
		double sc = o->ftx / ((double)nc * nc) * n;
		for (int i = 0; i < n; i++)
			if (desirable[i]) {
				double l = len[i] > 0 ? len[i] : 1;
				ftx_sum += -pol[i] / l;
				dpol[i] += -sc / l;
			}
		loss += sc * ftx_sum;
	}
	return loss;
}

double ft_pref_rm_loss(int n, const double *c, const double *r, double *dc, double *dr)
{
	double tot = 0;
	for (int i = 0; i < n; i++) {
		double z = c[i] - r[i];
		tot += -logsig(z);
		dc[i] = -sig(-z) / n;
		dr[i] = -dc[i];
	}
	return n ? tot / n : 0;
}
