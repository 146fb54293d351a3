/* batch.h - the trainer's input: one fixed-shape micro-batch, as ft-pack
 * writes it.  Only the struct, so model.h and the training loop need not
 * see the stream format; reading and writing batch streams and their
 * manifests is format/batch_io.h.
 */
#ifndef FT_BATCH_H
#define FT_BATCH_H

#include <stdint.h>
#include <stddef.h>

/* A label the loss skips (torch's CrossEntropyLoss ignore_index): every
 * layer that reads labels compares with this name, never the number. */
#define FT_IGNORE_INDEX (-100)

typedef struct {
	int B, T;                 /* rows, tokens per row */
	int32_t *input_ids;       /* [B*T] */
	int32_t *labels;          /* [B*T], FT_IGNORE_INDEX = ignored */
	int32_t *position_ids;    /* [B*T] or NULL (then 0..T-1 per row) */
	int32_t *segment_ids;     /* [B*T] or NULL; 0 = padding, attention only
				     within equal non-zero ids (neat packing) */
	int32_t *lengths;         /* [B] or NULL; row r's real tokens are positions
				     [0, lengths[r]), the rest right padding that
				     no query attends to (HF's attention_mask);
				     NULL: every position is attended as a token */
	int pairwise;             /* rm/dpo: rows 2i (chosen) and 2i+1 (rejected) */
	int64_t n_label_tokens;   /* labels != FT_IGNORE_INDEX */
	int64_t index;            /* batch number in the stream */
	/* Added by ft-pack (optional in records; 0/NULL when absent): */
	int32_t *kto_tags;        /* [B] kto: 1 desirable, 0 undesirable; or NULL */
	int64_t n_tokens;         /* real (non-padding) tokens */
	int64_t n_examples;       /* units: examples, packed rows, or pairs */
	size_t cap_;              /* elements allocated in the [B*T] arrays */
} ft_batch;

/* Free b's arrays and zero it (a zeroed batch is empty and reusable). */
void ft_batch_free(ft_batch *b);
/* dst := a deep copy of src (dst's old arrays freed first; every array
 * src has, dst owns its own copy of). */
void ft_batch_copy(ft_batch *dst, const ft_batch *src);

#endif
