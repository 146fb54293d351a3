/* pack.h - token examples -> fixed-shape micro-batches (ft-pack's logic).
 *
 * The pipeline, in LLaMA-Factory's order so that rows equal its rows:
 *   1. examples are held in memory, compactly (ft_examples: two int32
 *      arenas, ids and labels, plus one offset per sequence);
 *   2. rows are built in input order, window by window
 *      (--preprocessing_batch_size examples, 1000 as LLaMA-Factory):
 *      padded (one example per row), pt blocks (texts concatenated and cut
 *      into cutoff_len blocks, the window's tail dropped as LLaMA-Factory
 *      does), or knapsack packing (LLaMA-Factory's greedy_knapsack);
 *   3. rows are grouped into units (one row, or the chosen/rejected pair of
 *      rows for rm/dpo) which are split into train/validation and shuffled
 *      with a seeded generator;
 *   4. units are cut into batches of --per_device_train_batch_size and each
 *      batch is materialised into an ft_batch.
 * Nothing here prints; every count a tool reports is in ft_pack_stats.
 */
#ifndef FT_PACK_H
#define FT_PACK_H

#include <stddef.h>
#include <stdint.h>
#include "data/stage.h"
#include "format/batch.h"
#include "util/vec.h"

enum { FT_LAYOUT_PADDED, FT_LAYOUT_PACKED, FT_LAYOUT_NEAT };
const char *ft_layout_name(int layout);

/* ---- examples ------------------------------------------------------ */

/* Every example has `nseq` sequences (1, or 2 for pairwise: chosen then
 * rejected; kto: example then KL).  Memory: 8 bytes per token (id + label;
 * 4 with ids_only) and 8 bytes per sequence, plus 1 byte per example for
 * kto tags. */
typedef struct {
	int nseq;
	int ids_only;          /* labels not stored (pt computes them from ids) */
	ft_i32vec ids, labels;
	int64_t *off;          /* sequence s is [off[s], off[s+1]) */
	size_t n_seq, cap_seq;
	int8_t *tags;          /* per example (kto), NULL when none */
	size_t cap_tags;
	struct json_t **extra; /* per example (ppo): its extra dataset columns, an
				  object or NULL; NULL when no input has them */
	size_t cap_extra;
} ft_examples;

void ft_examples_init(ft_examples *e, int nseq);
void ft_examples_free(ft_examples *e);
/* Append one sequence; labels NULL means labels = ids (ignored when
 * ids_only is set). */
void ft_examples_add_seq(ft_examples *e, const int32_t *ids, const int32_t *labels, size_t n);
/* Tag of the example whose sequences were added last. */
void ft_examples_set_tag(ft_examples *e, size_t example, int tag);
/* The extra columns of an example (takes the reference; NULL: none).
 * Padded batches carry them as extra_columns, one object per row. */
void ft_examples_set_extra(ft_examples *e, size_t example, struct json_t *columns);
static inline size_t ft_examples_count(const ft_examples *e) { return e->n_seq / (size_t)e->nseq; }
static inline size_t ft_examples_seq_len(const ft_examples *e, size_t s)
{ return (size_t)(e->off[s + 1] - e->off[s]); }

/* ---- rows ---------------------------------------------------------- */

/* A span is a run of tokens of one sequence of one example. */
typedef struct {
	int64_t seq;           /* sequence index into ft_examples */
	int32_t start, len;    /* token range inside the sequence */
} ft_span;

/* Rows as lists of spans.  Rows come in units of `nseq` consecutive rows
 * (row u*nseq+k holds sequence k of the examples in unit u). */
typedef struct {
	int nseq;
	ft_span *spans;
	size_t n_spans, cap_spans;
	int64_t *row_off;      /* row r is spans [row_off[r], row_off[r+1]) */
	size_t n_rows, cap_rows;
} ft_rows;

void ft_rows_free(ft_rows *r);
static inline size_t ft_rows_units(const ft_rows *r) { return r->n_rows / (size_t)r->nseq; }
int64_t ft_rows_row_tokens(const ft_rows *r, size_t row);

typedef struct {
	int stage, layout;
	int cutoff_len;
	int window;            /* examples per packing window (>= 1) */
} ft_rows_opts;

typedef struct {
	int64_t examples;          /* examples read */
	int64_t truncated;         /* sequences cut to fit cutoff_len */
	int64_t truncated_tokens;  /* tokens removed by that */
	int64_t dropped_tokens;    /* pt blocks: window tails, as LLaMA-Factory */
	int64_t rows, units;
	int64_t capacity;          /* tokens a packed row can hold */
} ft_rows_stats;

/* Build rows in input order.  Sequences longer than the row capacity are
 * truncated (counted, never silently).  Padded rows hold one example;
 * with pt and layout packed, rows are cutoff_len blocks; otherwise rows
 * are knapsacks of capacity cutoff_len - 1 (LLaMA-Factory decrements
 * cutoff_len when packing and always pads at least one token). */
int ft_rows_build(const ft_examples *e, const ft_rows_opts *o, ft_rows *out, ft_rows_stats *st);

/* LLaMA-Factory's greedy_knapsack on one window: lengths[i] <= capacity.
 * Writes bins as item indices, bin b = items[bin_off[b] .. bin_off[b+1]),
 * in the order LLaMA-Factory places them (its length2indexes .pop()).
 * Returns the number of bins.  items: n entries; bin_off: n+1 entries. */
size_t ft_greedy_knapsack(const int32_t *lengths, size_t n, int32_t capacity,
			  size_t *items, size_t *bin_off);

/* ---- split, shuffle, batches --------------------------------------- */

/* Shuffles use lib/util/rng.h (splitmix64-seeded xoshiro256**). */
#include "util/rng.h"

/* Validation size: a fraction in (0, 1) or a count >= 1 (as LLaMA-Factory's
 * val_size); the number of units that go to validation, as
 * datasets.train_test_split rounds it (ceil of fraction * n). */
int64_t ft_val_count(double val_size, int64_t n_units);

/* Split units 0..n-1: a seeded permutation, its first n_val units are the
 * validation set (kept in permutation order), the rest the training set.
 * Arrays are allocated; free() them. */
void ft_split_units(uint64_t seed, int64_t n_units, int64_t n_val,
		    int64_t **train, int64_t *n_train, int64_t **val);

/* HF's group_by_length in spirit: after shuffling, units are sorted by
 * length (descending) inside mega-batches of 50 * batch_size. */
void ft_group_by_length(const ft_rows *r, int64_t *units, size_t n, int batch_size);

/* The training order of one epoch, as the HF Trainer's sampler makes it:
 * the split's units (base, n) reshuffled with a generator seeded by
 * seed + epoch (accelerate's set_epoch), then grouped by length when
 * asked.  Epoch 0 is the order ft-pack has always written.  out: n. */
void ft_epoch_order(uint64_t seed, int shuffle, int group_by_length, int batch_size,
		    const ft_rows *r, const int64_t *base, size_t n, int64_t epoch, int64_t *out);

typedef struct {
	int stage, layout;
	int batch_size;            /* units per batch */
	int pad_to_multiple_of;    /* padded layout, 1 = none */
	int seq_len;               /* packed layouts: row length */
	int32_t pad_id;
	int32_t bos_id;            /* pt blocks: first token becomes bos, or -1 */
	int drop_last;
} ft_batch_opts;

/* Fill batch `b` from units[0..n) (n <= batch_size): rows, T, ids, labels,
 * position/segment ids per layout, kto tags, and (padded layout, examples
 * with extra columns) extra_columns, {} for a row whose example has none.
 * Reuses b's buffers. */
void ft_batch_fill(const ft_examples *e, const ft_rows *r, const int64_t *units, size_t n,
		   const ft_batch_opts *o, ft_batch *b);

/* Totals over one split, computed before writing so headers carry them. */
typedef struct {
	int64_t batches, units, rows;
	int64_t tokens, label_tokens, pad_tokens, positions;
	int64_t source_examples;   /* distinct examples with tokens here */
	int seq_len_max;
} ft_pack_totals;

void ft_pack_totals_compute(const ft_examples *e, const ft_rows *r, const int64_t *units,
			    size_t n, const ft_batch_opts *o, ft_pack_totals *t);
/* Number of batches for n units. */
int64_t ft_pack_n_batches(size_t n, const ft_batch_opts *o);

#endif
