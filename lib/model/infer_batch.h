/* infer_batch.h - the host-side bookkeeping of one KV-cache forward call
 * (ft_infer_forward, lib/model/infer.h), shared by the CPU decoder and the
 * CUDA one (lib/cuda/infer.cu calls it back in the executable), so both
 * place tokens, validate and choose logits rows the same way.
 *
 * A call feeds N tokens; token i belongs to row row_of[i] and takes that
 * row's next position.  When every row the call names starts empty it is
 * a prefill: the tokens also get a slot in a right-padded [B, T] layout
 * (B = distinct rows in order of first appearance, T = the longest run),
 * which is what a whole-sequence attention kernel wants.  Right padding
 * with a causal mask keeps every real token from seeing a pad.
 */
#ifndef FT_INFER_BATCH_H
#define FT_INFER_BATCH_H

#include <stdint.h>

typedef struct {
	int N;
	int *pos;          /* [N] position of token i in its row */
	int maxpos;        /* largest position (RoPE scaling looks at it) */
	int prefill;       /* every row named starts empty: slot/brow are valid */
	int B, T;          /* the padded layout */
	int *slot;         /* [N] b * T + pos */
	int *brow;         /* [B] the cache row of padded row b */
	int nwant;
	int *want_idx;     /* [nwant] token index of each logits row, in order */
} ft_infer_batch;

/* Plan a call against a cache of `rows` rows of `cap` tokens whose rows
 * hold len[r] tokens now.  want NULL: logits for every token.  -1 with a
 * message naming the token when a row is out of range, a token id is
 * outside [0, vocab) or a row would exceed the cache; *p is then empty. */
int ft_infer_batch_plan(ft_infer_batch *p, const int *len, int rows, int cap, int vocab,
			const int32_t *tokens, const int *row_of, int N, const int *want);
void ft_infer_batch_free(ft_infer_batch *p);
/* The prefill's padded batch, B * T slots: each slot's token id and RoPE
 * position (pads: id 0 and their column, never read by a real token),
 * and the cache row and position its key and value go to (pads: -1).
 * Only for p->prefill. */
void ft_infer_batch_prefill_maps(const ft_infer_batch *p, const int32_t *tokens,
				 const int *row_of, int32_t *ids, int32_t *rope_pos,
				 int32_t *cache_row, int32_t *cache_pos);
/* len[r] after the call (positions placed). */
void ft_infer_batch_commit(const ft_infer_batch *p, const int *row_of, int *len);

#endif
