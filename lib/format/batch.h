/* batch.h - the trainer's input: fixed-shape micro-batches as written by
 * ft-pack (stream kind "batches") and described by manifest.json.
 */
#ifndef FT_BATCH_H
#define FT_BATCH_H

#include <stdint.h>
#include "format/stream.h"

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
	/* Added by ft-pack (optional in records; 0/NULL when absent): */
	int32_t *kto_tags;        /* [B] kto: 1 desirable, 0 undesirable; or NULL */
	int64_t n_tokens;         /* real (non-padding) tokens */
	int64_t n_examples;       /* units: examples, packed rows, or pairs */
	size_t cap_;              /* elements allocated in the [B*T] arrays */
} ft_batch;

/* Reading reuses b's buffers; start from a zeroed ft_batch and free it
 * with ft_batch_free().  The stream must be of kind "batches"; records
 * are checked (sizes, B*T lengths) and a bad one is an error naming it. */
int ft_batch_read(ft_reader *r, ft_batch *b);          /* 1, 0 at EOF, -1 */
int ft_batch_write(ft_writer *w, const ft_batch *b);
void ft_batch_free(ft_batch *b);

typedef struct {
	int64_t n_batches, n_examples, n_tokens, n_label_tokens;
	int batch_size, seq_len;
	char layout[16];          /* "padded" | "packed" | "neat_packed" */
	char stage[8];            /* pt sft rm dpo kto ppo */
	uint64_t seed;
	/* Added by ft-pack: */
	int rows_per_batch;       /* batch_size, or 2 * batch_size when pairwise */
	int pairwise;
	int kto_kl;               /* kto: rows 2i/2i+1 are an example and its KL sequence */
	int cutoff_len;
	int64_t n_pad_tokens;
	int32_t pad_id;
	char split[8];            /* "train" | "val" */
	int epochs;               /* the records are epochs runs of n_batches,
				     each reshuffled (absent: 1) */
	char tokenizer[256];      /* identity carried from the token stream */
} ft_manifest;

/* The manifest of a pack output: a directory with manifest.json, or a
 * stream whose header meta carries the counts. */
int ft_manifest_load(const char *path, ft_manifest *m);
/* The same fields from a JSON object (manifest.json, or a header's meta). */
int ft_manifest_from_json(const json_t *obj, ft_manifest *m);

#endif
