/* batch.h - the trainer's input: fixed-shape micro-batches as written by
 * ft-pack (stream kind "batches") and described by manifest.json.
 */
#ifndef FT_BATCH_H
#define FT_BATCH_H

#include <stdint.h>
#include "stream.h"

typedef struct {
	int B, T;                 /* rows, tokens per row */
	int32_t *input_ids;       /* [B*T] */
	int32_t *labels;          /* [B*T], -100 = ignored */
	int32_t *position_ids;    /* [B*T] or NULL (then 0..T-1 per row) */
	int32_t *segment_ids;     /* [B*T] or NULL; 0 = padding, attention only
				     within equal non-zero ids (neat packing) */
	int pairwise;             /* rm/dpo: rows 2i (chosen) and 2i+1 (rejected) */
	int64_t n_label_tokens;   /* labels != -100 */
	int64_t index;            /* batch number in the stream */
} ft_batch;

int ft_batch_read(ft_reader *r, ft_batch *b);          /* 1, 0 at EOF, -1 */
int ft_batch_write(ft_writer *w, const ft_batch *b);
void ft_batch_free(ft_batch *b);

typedef struct {
	int64_t n_batches, n_examples, n_tokens, n_label_tokens;
	int batch_size, seq_len;
	char layout[16];          /* "padded" | "packed" | "neat_packed" */
	char stage[8];            /* pt sft rm dpo kto ppo */
	uint64_t seed;
} ft_manifest;

/* The manifest of a pack output: a directory with manifest.json, or a
 * stream whose header meta carries the counts. */
int ft_manifest_load(const char *path, ft_manifest *m);

#endif
