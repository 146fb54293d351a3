/* grpo.c - TRL 1.16 GRPOTrainer's advantages and loss (grpo.h). */
#include "train/grpo.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const loss_names[] = { "grpo", "bnpo", "dr_grpo", "dapo" };

void ft_grpo_opts_default(ft_grpo_opts *o)
{
	memset(o, 0, sizeof *o);
	o->loss_type = FT_GRPO_LOSS_DAPO;
	o->scale_rewards = FT_GRPO_SCALE_GROUP;
	o->epsilon_low = o->epsilon_high = 0.2;
	o->beta = 0.0;
	o->max_completion_length = 512;
	o->bias_correction_kl = 1;
	o->top_entropy_quantile = 1.0;
}

int ft_grpo_loss_type(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, loss_names[i])) return i;
	return -1;
}

const char *ft_grpo_loss_name(int t)
{
	return t >= 0 && t < 4 ? loss_names[t] : "?";
}

int ft_grpo_scale(const char *s)
{
	/* GRPOConfig maps True to "group" and False to "none" */
	if (!strcmp(s, "group") || !strcmp(s, "true") || !strcmp(s, "True")) return FT_GRPO_SCALE_GROUP;
	if (!strcmp(s, "batch")) return FT_GRPO_SCALE_BATCH;
	if (!strcmp(s, "none") || !strcmp(s, "false") || !strcmp(s, "False")) return FT_GRPO_SCALE_NONE;
	return -1;
}

/* mean and unbiased std (nanstd's Bessel correction) of x[0..n) */
static void mean_std(const float *x, int n, float *mean, float *std)
{
	double s = 0;
	for (int i = 0; i < n; i++) s += x[i];
	float m = (float)(s / n);
	double v = 0;
	for (int i = 0; i < n; i++) {
		float d = x[i] - m;
		v += (double)(d * d);
	}
	*mean = m;
	*std = n > 1 ? (float)sqrt((double)(float)(v / n) * n / (n - 1)) : NAN;
}

int ft_grpo_advantages(const ft_grpo_opts *o, const float *per_func, const float *w, int K, int N,
		       int G, float *rewards, float *adv, double *frac_zero_std)
{
	if (G < 2) return ft_fail("GRPO needs at least 2 generations per prompt (got %d)", G);
	if (N < G || N % G) return ft_fail("%d completions are not whole groups of %d", N, G);
	for (int i = 0; i < N; i++) {
		double s = 0;
		for (int k = 0; k < K; k++) s += (double)(per_func[(size_t)i * K + k] * w[k]);
		rewards[i] = (float)s;
	}
	float bmean, bstd;
	mean_std(rewards, N, &bmean, &bstd);
	int zero = 0;
	for (int g = 0; g < N; g += G) {
		float m, sd;
		mean_std(rewards + g, G, &m, &sd);
		if (o->scale_rewards == FT_GRPO_SCALE_BATCH) sd = bstd;
		for (int i = g; i < g + G; i++) {
			float a = rewards[i] - m;
			if (o->scale_rewards != FT_GRPO_SCALE_NONE) a = a / (sd + 1e-4f);
			adv[i] = a;
			/* torch.isclose(std, 0): |std| <= 1e-8 */
			zero += fabsf(sd) <= 1e-8f;
		}
	}
	if (frac_zero_std) *frac_zero_std = (double)zero / N;
	return 0;
}

/* d(-min(c A, clamp(c, lo, hi) A)) / dc as autograd gives it */
static float clip_grad(float c, float A, float lo, float hi)
{
	float c2 = c < lo ? lo : c > hi ? hi : c;
	float l1 = c * A, l2 = c2 * A;
	float g1 = l1 < l2 ? 1.0f : l1 > l2 ? 0.0f : 0.5f;
	float dclamp = c >= lo && c <= hi ? 1.0f : 0.0f;
	return -(g1 * A + (1.0f - g1) * A * dclamp);
}

/* The weight of each position in the reduced loss (loss = sum w * ptl). */
static void weights(const ft_grpo_opts *o, const float *mask, int B, int T, double accum,
		    double num_items, double *row_w, double *all_tok)
{
	double tot = 0;
	for (int b = 0; b < B; b++) {
		double len = 0;
		for (int t = 0; t < T; t++) len += mask[(size_t)b * T + t];
		row_w[b] = len;
		tot += len;
	}
	*all_tok = tot;
	for (int b = 0; b < B; b++) {
		double len = row_w[b];
		switch (o->loss_type) {
		case FT_GRPO_LOSS_GRPO: row_w[b] = 1.0 / (len > 1 ? len : 1) / B / accum; break;
		case FT_GRPO_LOSS_BNPO: row_w[b] = 1.0 / (tot > 1 ? tot : 1) / accum; break;
		case FT_GRPO_LOSS_DR_GRPO: row_w[b] = 1.0 / ((double)B * o->max_completion_length) / accum; break;
		default: row_w[b] = 1.0 / (num_items > 1 ? num_items : 1); break;
		}
	}
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

void ft_grpo_entropy_mask(const float *ent, const float *mask, size_t n, double q, float *emask)
{
	float *v = ft_xmalloc((n ? n : 1) * sizeof *v);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (mask[i] != 0) v[k++] = ent[i];
	memset(emask, 0, n * sizeof *emask);
	if (k == 0) {   /* TRL: zeros_like when nothing is gathered */
		free(v);
		return;
	}
	qsort(v, k, sizeof *v, cmp_float);
	/* torch.quantile: ranks = q (n - 1) in the input's dtype, lerp of the
	 * neighbours with torch's two-sided formula */
	float rank = (float)q * (float)(k - 1);
	size_t lo = (size_t)rank, hi = (size_t)ceilf(rank);
	float w = rank - (float)lo, a = v[lo], b = v[hi];
	float thr = w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
	for (size_t i = 0; i < n; i++) emask[i] = mask[i] != 0 && ent[i] * mask[i] >= thr;
	free(v);
}

int ft_grpo_loss(const ft_grpo_opts *o, const float *logp, const float *old, const float *ref,
		 const float *ent, const float *mask, const float *adv, int B, int T, double accum,
		 double num_items, ft_grpo_loss_stats *st, float *dlogp)
{
	if (B < 1 || T < 1) return ft_fail("GRPO loss: an empty micro-batch");
	int use_em = o->top_entropy_quantile < 1.0;
	if (use_em && !ent) return ft_fail("GRPO loss: top_entropy_quantile needs the entropies");
	float *em = NULL;
	if (use_em) {
		em = ft_xmalloc((size_t)B * T * sizeof *em);
		ft_grpo_entropy_mask(ent, mask, (size_t)B * T, 1.0 - o->top_entropy_quantile, em);
	}
	double *rw = ft_xmalloc((size_t)B * sizeof *rw), ntok, esum = 0;
	weights(o, mask, B, T, accum, num_items, rw, &ntok);
	float lo = (float)(1 - o->epsilon_low), hi = (float)(1 + o->epsilon_high);
	double loss = 0, kl = 0, low = 0, high = 0, reg = 0, low_min = INFINITY, high_max = -INFINITY;
	for (int b = 0; b < B; b++) {
		float A = adv[b];
		double rlow = 0, rhigh = 0, rlen = 0;
		for (int t = 0; t < T; t++) {
			size_t i = (size_t)b * T + t;
			float lp = logp[i], c = old ? expf(lp - old[i]) : 1.0f;
			float c2 = c < lo ? lo : c > hi ? hi : c;
			float l1 = c * A, l2 = c2 * A;
			float ptl = -(l1 < l2 ? l1 : l2);
			float d = clip_grad(c, A, lo, hi) * c;
			if (em) {   /* per_token_loss * entropy_mask, before the KL */
				ptl = ptl * em[i];
				d = d * em[i];
			}
			if (ent) esum += (double)ent[i] * mask[i];
			if (o->beta != 0) {
				float dr = ref[i] - lp, e = expf(dr), k3 = e - dr - 1.0f, dk3 = 1.0f - e;
				float k = k3, dk = dk3;
				if (o->bias_correction_kl) {
					k = k3 * c;
					dk = dk3 * c + k3 * c;
				}
				ptl = ptl + (float)o->beta * k;
				d = d + (float)o->beta * dk;
				kl += (double)k * mask[i];
			}
			int is_low = c < lo && A < 0, is_high = c > hi && A > 0;
			rlow += is_low * mask[i];
			rhigh += is_high * mask[i];
			rlen += mask[i];
			loss += (double)ptl * mask[i] * rw[b];
			if (dlogp) dlogp[i] = (float)(d * mask[i] * rw[b]);
		}
		low += rlow;
		high += rhigh;
		reg += rlow + rhigh;   /* the regions are disjoint */
		if (rlen > 0) {
			if (rlow / rlen < low_min) low_min = rlow / rlen;
			if (rhigh / rlen > high_max) high_max = rhigh / rlen;
		}
	}
	free(rw);
	free(em);
	double n = ntok > 1 ? ntok : 1;
	st->entropy = ent ? esum / n : NAN;
	const double sums[5] = { kl, esum, low, high, reg };
	memcpy(st->sums, sums, sizeof sums);
	st->loss = loss;
	st->kl = kl / n;
	st->low_mean = low / n;
	st->high_mean = high / n;
	st->region_mean = reg / n;
	st->low_min = isfinite(low_min) ? low_min : NAN;
	st->high_max = isfinite(high_max) ? high_max : NAN;
	st->n_tokens = ntok;
	return 0;
}
