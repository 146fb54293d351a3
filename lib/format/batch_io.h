/* batch_io.h - batch streams as written by ft-pack (stream kind
 * "batches") and the manifest.json that describes them; see
 * docs/FORMAT.md section 3.  The batch itself is format/batch.h.
 */
#ifndef FT_BATCH_IO_H
#define FT_BATCH_IO_H

#include <stdint.h>
#include <jansson.h>
#include "format/batch.h"
#include "format/stream.h"

/* Reading reuses b's buffers; start from a zeroed ft_batch and free it
 * with ft_batch_free() (batch.h).  The stream must be of kind "batches";
 * records are checked (sizes, B*T lengths) and a bad one is an error
 * naming it. */
int ft_batch_read(ft_reader *r, ft_batch *b);          /* 1, 0 at EOF, -1 */
int ft_batch_write(ft_writer *w, const ft_batch *b);

/* The version of the batch records and of manifest.json (docs/FORMAT.md
 * 3.3): 2 added extra_columns.  Readers take this one or older. */
#define FT_BATCH_FORMAT_VERSION 2

/* A row's extra dataset columns (token records' and batch records'
 * extra_columns, docs/FORMAT.md 2.2): an object of at most this many bytes
 * as compact JSON, nested at most this deep (within the record format's
 * 30 levels), else -1 with a message saying which. */
#define FT_EXTRA_COLUMNS_MAX_BYTES (1 << 20)
#define FT_EXTRA_COLUMNS_MAX_DEPTH 24
int ft_extra_columns_check(const json_t *v);

typedef struct ft_manifest {
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
