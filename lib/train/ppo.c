/* ppo.c - TRL 0.9's PPO arithmetic (ppo.h): rewards, GAE, whitening,
 * the clipped losses with their autograd gradients, the KL controller and
 * the running score moments. */
#include "train/ppo.h"
#include "util/error.h"

#include <float.h>
#include <math.h>

void ft_ppo_opts_default(ft_ppo_opts *o)
{
	/* trl 0.9.6 PPOConfig defaults; target from LLaMA-Factory's ppo_target */
	o->gamma = 1.0;
	o->lam = 0.95;
	o->cliprange = 0.2;
	o->cliprange_value = 0.2;
	o->vf_coef = 0.1;
	o->ratio_threshold = 10.0;
	o->init_kl_coef = 0.2;
	o->target = 6.0;
	o->horizon = 10000;
	o->adap_kl_ctrl = 1;
	o->whiten_rewards = 0;
	o->score_norm = 0;
}

static double mask_sum(const float *mask, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++) s += mask[i];
	return s;
}

double ft_ppo_masked_mean(const float *x, const float *mask, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++) s += (double)x[i] * mask[i];
	return s / mask_sum(mask, n);
}

int ft_ppo_masked_var(const float *x, const float *mask, size_t n, double *var)
{
	double ms = mask_sum(mask, n);
	/* TRL raises on an empty mask; with one token its Bessel factor is
	 * 1/0 and every whitened value inf, refused here instead */
	if (ms < 2) return ft_fail("PPO: %g response tokens in the batch; whitening needs at least 2", ms);
	double mean = ft_ppo_masked_mean(x, mask, n), s = 0;
	for (size_t i = 0; i < n; i++) {
		double c = x[i] - mean;
		s += c * c * mask[i];
	}
	*var = s / ms * (ms / (ms - 1));
	return 0;
}

int ft_ppo_masked_whiten(float *x, const float *mask, size_t n, int shift_mean)
{
	double var;
	if (ft_ppo_masked_var(x, mask, n, &var) < 0) return -1;
	double mean = ft_ppo_masked_mean(x, mask, n), r = 1.0 / sqrt(var + 1e-8);
	for (size_t i = 0; i < n; i++) {
		double w = (x[i] - mean) * r;
		x[i] = (float)(shift_mean ? w : w + mean);
	}
	return 0;
}

int ft_ppo_rewards(const float *score, const float *logp, const float *ref_logp,
		   const float *mask, int B, int T, double kl_coef, float *rewards, float *kl_out)
{
	for (int b = 0; b < B; b++) {
		int last = -1;
		for (int t = 0; t < T; t++) {
			size_t i = (size_t)b * T + t;
			float kl = logp[i] - ref_logp[i];
			if (kl_out) kl_out[i] = kl;
			rewards[i] = (float)(-kl_coef * kl);
			if (mask[i] != 0) last = t;
		}
		if (last < 0) return ft_fail("PPO: response %d has no tokens", b);
		rewards[(size_t)b * T + last] += score[b];
	}
	return 0;
}

int ft_ppo_advantages(const ft_ppo_opts *o, const float *values, const float *rewards,
		      const float *mask, int B, int T, float *adv, float *returns)
{
	size_t n = (size_t)B * T;
	/* returns is the scratch for the masked (and maybe whitened) rewards */
	for (size_t i = 0; i < n; i++) returns[i] = rewards[i] * mask[i];
	if (o->whiten_rewards && ft_ppo_masked_whiten(returns, mask, n, 0) < 0) return -1;
	for (int b = 0; b < B; b++) {
		const float *v = values + (size_t)b * T, *m = mask + (size_t)b * T;
		float *r = returns + (size_t)b * T, *a = adv + (size_t)b * T;
		float last = 0;
		for (int t = T - 1; t >= 0; t--) {
			float next = t < T - 1 ? v[t + 1] * m[t + 1] : 0.0f;
			float delta = r[t] + (float)o->gamma * next - v[t] * m[t];
			last = delta + (float)(o->gamma * o->lam) * last;
			a[t] = last;
		}
		for (int t = 0; t < T; t++) r[t] = a[t] + v[t] * m[t];
	}
	return ft_ppo_masked_whiten(adv, mask, n, 1);
}

/* d max(a, b) / da as torch.maximum's backward: 1, 0.5 on a tie, 0 */
static double dmax_a(float a, float b)
{
	return a > b ? 1.0 : a == b ? 0.5 : 0.0;
}

/* clip_by_value(x, lo, hi) = max(min(x, hi), lo) and its derivative */
static float clip_value(float x, float lo, float hi, double *dx)
{
	float m = x < hi ? x : hi, c = m > lo ? m : lo;
	double dm = x < hi ? 1.0 : x == hi ? 0.5 : 0.0, dc = m > lo ? 1.0 : m == lo ? 0.5 : 0.0;
	*dx = dm * dc;
	return c;
}

/* masked_var as a statistic: NaN with one token (TRL's 0 * 1/0) */
static double stat_var(const float *x, const float *mask, size_t n)
{
	double v;
	return ft_ppo_masked_var(x, mask, n, &v) < 0 ? (ft_errclear(), NAN) : v;
}

int ft_ppo_loss(const ft_ppo_opts *o, const float *old_logp, const float *values,
		const float *logp, const float *vpred, const float *mask, const float *adv,
		const float *returns, size_t n, ft_ppo_loss_stats *st, float *dlogp,
		float *dvpred)
{
	double ms = mask_sum(mask, n);
	if (ms < 1) return ft_fail("PPO: no response token in the mini-batch");
	double vf = 0, vclipn = 0, pg = 0, pgclipn = 0, ratio_s = 0, akl = 0, pkl = 0, verr = 0;
	/* element-wise in float as torch's float32 tensors, so the max and
	 * the clip fractions pick the same branch on near-ties; sums in double */
	float lo = (float)(1 - o->cliprange), hi = (float)(1 + o->cliprange), cv = (float)o->cliprange_value;
	for (size_t i = 0; i < n; i++) {
		double m = mask[i];
		double dvc;
		float vc = clip_value(vpred[i], values[i] - cv, values[i] + cv, &dvc);
		float e1 = vpred[i] - returns[i], e2 = vc - returns[i];
		float l1 = e1 * e1, l2 = e2 * e2;
		vf += m * (l1 > l2 ? l1 : l2);
		vclipn += m * (l2 > l1);
		verr += m * l1;
		float dl = logp[i] - old_logp[i], ratio = expf(dl);
		float rc = ratio < lo ? lo : ratio > hi ? hi : ratio;
		float p1 = -adv[i] * ratio, p2 = -adv[i] * rc;
		pg += m * (p1 > p2 ? p1 : p2);
		pgclipn += m * (p2 > p1);
		ratio_s += m * ratio;
		akl += m * (double)dl * dl;
		pkl += m * -dl;
		if (dvpred) {
			/* d (0.5 max(l1, l2)) with ties halved, then the clip's chain */
			double g = dmax_a(l1, l2) * 2.0 * e1 + dmax_a(l2, l1) * 2.0 * e2 * dvc;
			dvpred[i] = (float)(o->vf_coef * 0.5 * m / ms * g);
		}
		if (dlogp) {
			double dr = ratio >= lo && ratio <= hi ? 1.0 : 0.0;
			double g = (dmax_a(p1, p2) + dmax_a(p2, p1) * dr) * -(double)adv[i] * ratio;
			dlogp[i] = (float)(m / ms * g);
		}
	}
	st->loss_value = 0.5 * vf / ms;
	st->loss_policy = pg / ms;
	st->loss_total = st->loss_policy + o->vf_coef * st->loss_value;
	st->ratio_mean = ratio_s / ms;
	st->skipped = st->ratio_mean > o->ratio_threshold;
	if (st->skipped) {
		/* TRL multiplies the losses by 0 (and warns): nothing is learned */
		st->loss_policy = st->loss_value = st->loss_total = 0;
		for (size_t i = 0; i < n; i++) {
			if (dlogp) dlogp[i] = 0;
			if (dvpred) dvpred[i] = 0;
		}
	}
	st->policy_clipfrac = pgclipn / ms;
	st->val_clipfrac = vclipn / ms;
	st->policy_approxkl = 0.5 * akl / ms;
	st->policy_policykl = pkl / ms;
	st->policy_advantages_mean = ft_ppo_masked_mean(adv, mask, n);
	st->returns_mean = ft_ppo_masked_mean(returns, mask, n);   /* 0.9.6: masked, as the values' */
	st->returns_var = stat_var(returns, mask, n);
	st->val_vpred = ft_ppo_masked_mean(vpred, mask, n);
	st->val_error = verr / ms;
	st->val_mean = ft_ppo_masked_mean(values, mask, n);
	st->val_var = stat_var(values, mask, n);
	return 0;
}

void ft_ppo_klctl_init(ft_ppo_klctl *k, const ft_ppo_opts *o)
{
	k->value = o->init_kl_coef;
	k->target = o->target;
	k->horizon = o->horizon;
	k->adaptive = o->adap_kl_ctrl;
}

void ft_ppo_klctl_update(ft_ppo_klctl *k, double current, double n_steps)
{
	if (!k->adaptive) return;
	double e = current / k->target - 1;
	if (e < -0.2) e = -0.2;
	if (e > 0.2) e = 0.2;
	k->value *= 1 + e * n_steps / k->horizon;
}

void ft_ppo_moments_init(ft_ppo_moments *m)
{
	m->mean = 0;
	m->std = 1;
	m->var = 1;
	m->count = 1e-24;
}

int ft_ppo_moments_update(ft_ppo_moments *m, const float *x, size_t n)
{
	if (n < 2) return ft_fail("--ppo_score_norm: %zu scores in the batch; it needs at least 2", n);
	double mean = 0, var = 0;
	for (size_t i = 0; i < n; i++) mean += x[i];
	mean /= (double)n;
	for (size_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
	var /= (double)n;                         /* unbiased=False */
	ft_ppo_moments_fold(m, mean, var, (double)n);
	return 0;
}

void ft_ppo_moments_fold(ft_ppo_moments *m, double mean, double var, double cnt)
{
	double delta = mean - m->mean, tot = m->count + cnt;
	double old_sum = m->var * m->count + delta * delta * m->count * cnt / tot;
	m->mean += delta * cnt / tot;
	m->var = (old_sum + var * cnt) / tot;
	m->std = sqrt(m->var * tot / (tot - 1));
	m->count = tot;
}

int ft_ppo_normalize_scores(ft_ppo_moments *m, float *score, size_t n)
{
	if (ft_ppo_moments_update(m, score, n) < 0) return -1;
	ft_ppo_scale_scores(m, score, n);
	return 0;
}

void ft_ppo_scale_scores(const ft_ppo_moments *m, float *score, size_t n)
{
	/* TRL: float32 eps; the moments are float32 tensors there, so the
	 * division is done in float */
	float f = (float)m->std + FLT_EPSILON, mean = (float)m->mean;
	for (size_t i = 0; i < n; i++) score[i] = (score[i] - mean) / f;
}
