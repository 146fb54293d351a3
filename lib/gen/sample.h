/* sample.h - choosing the next token from logits, as transformers'
 * generate() does: repetition penalty, then (when sampling) temperature,
 * top-k and top-p, then a draw from the softmax; greedy takes the argmax
 * after the repetition penalty.  Defaults follow LLaMA-Factory's
 * generating arguments (do_sample, temperature 0.95, top_p 0.7, top_k 50).
 *
 * Draws use ft's own seeded generator (xoshiro256**), so the same seed
 * gives the same tokens on the same device; they do not reproduce torch's
 * multinomial draws.  Greedy decoding is exact.
 */
#ifndef FT_SAMPLE_H
#define FT_SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include "util/rng.h"

typedef struct {
	int do_sample;               /* 0: greedy */
	double temperature;          /* > 0 */
	double top_p;                /* (0, 1]; 1 disables */
	int top_k;                   /* 0 disables */
	double repetition_penalty;   /* 1 disables */
} ft_sampling;

void ft_sampling_defaults(ft_sampling *s);  /* LLaMA-Factory's */
/* -1 with a message for out-of-range values. */
int ft_sampling_check(const ft_sampling *s);

/* Apply transformers' RepetitionPenaltyLogitsProcessor in place: every id
 * in context[0..n) has its logit divided (positive) or multiplied
 * (negative) by the penalty, once per distinct id. */
void ft_apply_repetition_penalty(float *logits, const int32_t *context, size_t n, double penalty);

/* Pick the next token from logits[vocab] (modified in place).  `scratch`
 * holds 2*vocab floats + vocab ints worth of space (ft_sample_scratch_size). */
size_t ft_sample_scratch_size(size_t vocab);
int32_t ft_sample_next(const ft_sampling *s, float *logits, size_t vocab,
		       const int32_t *context, size_t n_context, ft_rng *rng, void *scratch);

#endif
