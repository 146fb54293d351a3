/* ft-pack.h - shared between ft-pack's main, input and output files */
#ifndef FT_PACK_TOOL_H
#define FT_PACK_TOOL_H

#include <stdint.h>
#include <jansson.h>
#include "data/pack.h"
#include "data/stage.h"

typedef struct {
	/* inputs */
	const char **inputs;
	size_t n_inputs;
	int stage;                 /* -1 until known (or --stage) */
	int64_t max_samples;       /* per input stream, -1: all */
	/* layout */
	int packing;               /* -1: default (pt: on) */
	int neat_packing;
	int cutoff_len;
	int batch_size;
	int eval_batch_size;
	int pad_to_multiple_of;
	int group_by_length;
	int window;
	int drop_last;
	int shuffle;
	int epochs;                /* --num_train_epochs, rounded up */
	uint64_t seed;
	int64_t data_seed;         /* HF's data_seed: the order's seed; -1: seed */
	double val_size;
	/* outputs */
	const char *output;        /* file or "-" */
	const char *output_dir;
	const char *val_output;
	uint64_t shard_bytes, shard_batches;
	int force, overwrite;
} pack_opts;

/* The seed of the training order: data_seed when given (the HF Trainer's
 * sampler seed), else seed, which also draws the split. */
static inline uint64_t order_seed(const pack_opts *o)
{
	return o->data_seed >= 0 ? (uint64_t)o->data_seed : o->seed;
}

/* What the input headers said (all inputs agree). */
typedef struct {
	int stage;
	char *tokenizer;
	json_t *meta;              /* first input's meta, for template etc. */
	int32_t pad_id, eos_id, bos_id;
	int add_bos;
	int cutoff_len;            /* ft-tokenize's, 0 when unknown */
	int64_t records;           /* read, after max_samples */
} input_info;

/* input.c: read every input into e (initialised here); dies on bad input. */
void read_inputs(const pack_opts *o, ft_examples *e, input_info *info);

/* output.c */
typedef struct {
	const char *split;         /* "train" | "val" */
	const ft_examples *e;
	const ft_rows *rows;
	const ft_rows_stats *rst;
	const int64_t *units;      /* the first epoch's order */
	size_t n_units;
	const ft_batch_opts *bo;
	const ft_pack_totals *tot; /* of the first epoch */
	const int64_t *base;       /* the split's order before shuffling */
	int epochs;                /* epochs written, each reshuffled from base */
} split_out;

/* Write one split to a stream file/stdout (path) or a shard directory
 * (dir) with manifest.json; dies on failure. */
void write_split(const pack_opts *o, const input_info *in, const split_out *s,
		 const char *path, const char *dir, const char *val_rel);
/* The header meta both the stream and manifest.json carry. */
json_t *split_meta(const pack_opts *o, const input_info *in, const split_out *s);

#endif
