/* infer.h - incremental decoding with a KV cache, for generation.
 *
 * The same layer functions as training (layers.h), in the same order,
 * with the keys and values of past tokens kept per row so each new token
 * costs one position instead of the whole sequence.  Rows are independent
 * sequences of different lengths (no padding): a call feeds any number of
 * tokens for any rows, in order within each row.  LoRA adapters attached
 * to the model are applied on the fly (no dropout at inference).
 */
#ifndef FT_INFER_H
#define FT_INFER_H

#include <stdint.h>
#include "model/model.h"

typedef struct ft_kvcache ft_kvcache;

/* Room for `rows` sequences of up to `cap` tokens each. */
ft_kvcache *ft_kvcache_new(const ft_model *m, int rows, int cap);
void ft_kvcache_free(ft_kvcache *c);
void ft_kvcache_reset(ft_kvcache *c, int row);     /* forget a row's tokens */
int ft_kvcache_len(const ft_kvcache *c, int row);
int ft_kvcache_cap(const ft_kvcache *c);
/* Row dst[i] takes what row src[i] holds (its keys, values and length),
 * for i < n, all as they were before the call (beam search's reorder). */
void ft_kvcache_copy_rows(ft_kvcache *c, const int *dst, const int *src, int n);

/* Feed N tokens: tokens[i] belongs to row rows[i] and takes the next
 * position of that row.  For each i with want[i] != 0 (want NULL: every
 * token) the logits [vocab] are written to `logits`, one row after the
 * other in the order of i.  -1 with a message when a row would exceed
 * the cache or a token id is out of range. */
int ft_infer_forward(ft_model *m, ft_kvcache *c, const int32_t *tokens,
		     const int *rows, int N, const int *want, float *logits);

/* Where the forward passes run: per group of prompts a KV cache of `rows`
 * sequences of `cap` tokens is opened and fed as ft_infer_forward
 * (above) does; logits come back to the host, where sampling
 * stays.  gen/generate.h's ft_generate uses the CPU's (ft_kvcache above),
 * ft_generate_on any other: the GPU's is lib/cuda/decoder.h (ft-generate
 * --device cuda, ft-train --stage grpo|ppo's rollouts on the device). */
typedef struct {
	void *ctx;
	int vocab;
	void *(*open)(void *ctx, int rows, int cap);            /* NULL after ft_fail */
	int (*forward)(void *ctx, void *cache, const int32_t *tokens, const int *rows, int N,
		       const int *want, float *logits);
	void (*close)(void *ctx, void *cache);
} ft_decoder;

#endif
