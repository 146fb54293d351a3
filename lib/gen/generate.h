/* generate.h - batched generation over the KV cache (infer.h) with the
 * sampler (sample.h): prompts of different lengths are prefilled
 * together, then every unfinished row advances one token per step, until
 * a stop id or max_new_tokens.  Each row draws from its own generator,
 * seeded from (seed, prompt index), so outputs do not depend on batching.
 */
#ifndef FT_GENERATE_H
#define FT_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "model/infer.h"
#include "model/model.h"
#include "gen/sample.h"
#include "util/vec.h"

typedef struct {
	ft_sampling sampling;
	int max_new_tokens;          /* default 1024, as LLaMA-Factory */
	const int32_t *stop_ids;     /* eos ids and single-token stop words */
	size_t n_stop;
	uint64_t seed;
	int batch_size;              /* prompts decoded together */
	uint64_t first_index;        /* the index prompts[0] seeds with (0): a part of a larger set
				      * draws what the whole would (grpo's ranks) */
	/* beam search (gen/beam.h) when num_beams > 1 */
	int num_beams;               /* default 1 */
	double length_penalty;       /* default 1.0: a hypothesis scores sum(logp) / len^lp */
	int early_stopping;          /* ft_early_stopping (gen/beam.h); default false */
} ft_gen_opts;

void ft_gen_defaults(ft_gen_opts *o);

/* Called for every generated token (stop ids excluded) as it is chosen;
 * prompt is the index into the prompts array. */
typedef void (*ft_gen_token_fn)(void *ctx, size_t prompt, int32_t token);

/* Generate for n prompts; outs[i] receives the new tokens (without the
 * stop token).  on_token may be NULL.  -1 with a message on failure.
 * num_beams > 1: ft_beam_search (gen/beam.h), on_token called with the
 * chosen hypothesis once it is known. */
int ft_generate(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_gen_opts *o,
		ft_i32vec *outs, ft_gen_token_fn on_token, void *ctx);

/* The CPU decoder (ft_kvcache, ft_infer_forward) as an ft_decoder. */
ft_decoder ft_cpu_decoder(ft_model *m);

/* ft_generate on a decoder (model/infer.h: ft_decoder); num_beams > 1
 * is refused (an ft_decoder cannot copy KV-cache rows between beams:
 * gen/beam.h's ft_beam_search_on takes that as its own callback). */
int ft_generate_on(const ft_decoder *d, const ft_i32vec *prompts, size_t n,
		   const ft_gen_opts *o, ft_i32vec *outs, ft_gen_token_fn on_token, void *ctx);

#endif
