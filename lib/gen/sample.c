/* sample.c - next-token selection; see sample.h */
#include "gen/sample.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ft_sampling_defaults(ft_sampling *s)
{
	s->do_sample = 1;
	s->temperature = 0.95;
	s->top_p = 0.7;
	s->top_k = 50;
	s->repetition_penalty = 1.0;
}

int ft_sampling_check(const ft_sampling *s)
{
	if (s->do_sample && !(s->temperature > 0))
		return ft_fail("temperature must be > 0 when sampling (got %g)", s->temperature);
	if (!(s->top_p > 0 && s->top_p <= 1))
		return ft_fail("top_p must be in (0, 1] (got %g)", s->top_p);
	if (s->top_k < 0)
		return ft_fail("top_k must be >= 0 (got %d)", s->top_k);
	if (!(s->repetition_penalty > 0))
		return ft_fail("repetition_penalty must be > 0 (got %g)", s->repetition_penalty);
	return 0;
}

void ft_apply_repetition_penalty(float *logits, const int32_t *context, size_t n, double penalty)
{
	if (penalty == 1.0 || n == 0) return;
	/* transformers gathers the scores of the context ids first and then
	 * scatters the penalised values, so a repeated id is penalised once. */
	float *orig = ft_xmalloc(n * sizeof *orig);
	for (size_t i = 0; i < n; i++) orig[i] = logits[context[i]];
	for (size_t i = 0; i < n; i++) {
		float v = orig[i];
		logits[context[i]] = v < 0 ? (float)(v * penalty) : (float)(v / penalty);
	}
	free(orig);
}

static int32_t argmax(const float *x, size_t n)
{
	size_t best = 0;
	for (size_t i = 1; i < n; i++)
		if (x[i] > x[best]) best = i;
	return (int32_t)best;
}

size_t ft_sample_scratch_size(size_t vocab)
{
	return vocab * (sizeof(float) + sizeof(int32_t));
}

static _Thread_local const float *sort_keys;

static int by_logit_desc(const void *a, const void *b)
{
	float x = sort_keys[*(const int32_t *)a], y = sort_keys[*(const int32_t *)b];
	if (x != y) return x > y ? -1 : 1;
	return *(const int32_t *)a - *(const int32_t *)b;
}

/* Indices of logits sorted descending; ties by id so results are stable. */
static void sort_desc(const float *logits, int32_t *idx, size_t n)
{
	for (size_t i = 0; i < n; i++) idx[i] = (int32_t)i;
	sort_keys = logits;
	qsort(idx, n, sizeof *idx, by_logit_desc);
}

/* How many of the sorted candidates survive top-k and top-p, as
 * transformers' TopK (keeps ties with the k-th) then TopP (drops the
 * tail whose ascending cumulative probability is <= 1 - top_p). */
static size_t survivors(const ft_sampling *s, const float *logits, const int32_t *idx,
			size_t n, float *probs)
{
	size_t keep = n;
	if (s->top_k > 0 && (size_t)s->top_k < n) {
		float kth = logits[idx[s->top_k - 1]];
		keep = s->top_k;
		while (keep < n && logits[idx[keep]] >= kth) keep++;
	}
	if (s->top_p < 1.0) {
		double mx = logits[idx[0]], z = 0;
		for (size_t i = 0; i < keep; i++) z += probs[i] = (float)exp(logits[idx[i]] - mx);
		/* ascending cumulative sum from the smallest kept candidate */
		double cum = 0;
		size_t drop = 0;
		for (size_t i = keep; i-- > 1;) {
			cum += probs[i] / z;
			if (cum <= 1.0 - s->top_p) drop++;
			else break;
		}
		keep -= drop;
	}
	return keep;
}

int32_t ft_sample_next(const ft_sampling *s, float *logits, size_t vocab,
		       const int32_t *context, size_t n_context, ft_rng *rng, void *scratch)
{
	ft_apply_repetition_penalty(logits, context, n_context, s->repetition_penalty);
	if (!s->do_sample) return argmax(logits, vocab);
	for (size_t i = 0; i < vocab; i++) logits[i] = (float)(logits[i] / s->temperature);
	float *probs = scratch;
	int32_t *idx = (int32_t *)(probs + vocab);
	sort_desc(logits, idx, vocab);
	size_t keep = survivors(s, logits, idx, vocab, probs);
	double mx = logits[idx[0]], z = 0;
	for (size_t i = 0; i < keep; i++) z += probs[i] = (float)exp(logits[idx[i]] - mx);
	double u = ft_rng_uniform(rng) * z, cum = 0;
	for (size_t i = 0; i < keep; i++) {
		cum += probs[i];
		if (u < cum) return idx[i];
	}
	return idx[keep - 1];
}
