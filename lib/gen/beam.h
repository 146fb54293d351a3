/* beam.h - beam search (num_beams > 1), as transformers 5.25's
 * GenerationMixin._beam_search with do_sample=False:
 *
 * - each step, a beam's logits become log-probabilities (log_softmax),
 *   the repetition penalty acts on them (the only logits processor of
 *   greedy beam search: temperature, top-k and top-p are sampling
 *   warpers), the beam's running score is added, and the best
 *   K = max(2, 1 + n_stop) * num_beams of the num_beams * vocab
 *   continuations are kept (ties: the lower beam, then the lower id);
 * - a continuation ending in a stop id, or reaching max_new_tokens, is a
 *   finished hypothesis, kept (among the best num_beams finished ones)
 *   only if it is among the first num_beams of the K, scored
 *   sum(logp) / len^length_penalty with len the generated tokens, the stop
 *   token included; the best num_beams unfinished continuations run on;
 * - early_stopping false (the default): a prompt stops once all
 *   num_beams hypotheses are finished and the best running score divided
 *   by (tokens generated)^length_penalty cannot beat the worst of them;
 *   true: as soon as num_beams are finished; never: as false, but with
 *   max_new_tokens as the length when length_penalty > 0;
 * - the answer is the best finished hypothesis (num_return_sequences 1).
 *
 * Scores are float32 as transformers' are.  Each prompt's beams are
 * independent of the other prompts', so the output does not depend on
 * the batch size.  Beam sampling (do_sample with num_beams > 1) is
 * refused: its torch.multinomial draws cannot be reproduced.
 */
#ifndef FT_BEAM_H
#define FT_BEAM_H

#include "gen/generate.h"

enum { FT_EARLY_HEURISTIC = 0, FT_EARLY_TRUE = 1, FT_EARLY_NEVER = 2 };

/* "true", "false" or "never" as transformers' early_stopping; -1 with a
 * message for anything else. */
int ft_early_stopping_parse(const char *s, int *out);
const char *ft_early_stopping_name(int e);

/* The beam options of o (num_beams >= 1, not with do_sample, a finite
 * length_penalty, a known early_stopping): -1 with a message. */
int ft_beam_check(const ft_gen_opts *o);

/* Makes row dst[i] of the decoder's cache what row src[i] was, for
 * i < n, all as before the call.  -1 with a message on failure. */
typedef int (*ft_kv_copy_fn)(void *ctx, void *cache, const int *dst, const int *src, int n);

/* Beam search for n prompts, o->batch_size prompts (each num_beams rows)
 * at a time; outs[i] receives the best hypothesis' tokens (without a
 * final stop token), scores[i] (scores may be NULL) its score.  on_token
 * (may be NULL) sees each answer's tokens once it is chosen.  copy NULL:
 * refused (the decoder cannot reorder its cache). */
int ft_beam_search_on(const ft_decoder *d, ft_kv_copy_fn copy, const ft_i32vec *prompts, size_t n,
		      const ft_gen_opts *o, ft_i32vec *outs, float *scores,
		      ft_gen_token_fn on_token, void *ctx);
/* On the CPU (ft_cpu_decoder, ft_kvcache_copy_rows). */
int ft_beam_search(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_gen_opts *o,
		   ft_i32vec *outs, float *scores, ft_gen_token_fn on_token, void *ctx);

#endif
