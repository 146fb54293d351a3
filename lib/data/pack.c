/* pack.c - examples, rows (padded, pt blocks, knapsacks); see pack.h */
#include "data/pack.h"
#include "util/error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

const char *ft_layout_name(int layout)
{
	switch (layout) {
	case FT_LAYOUT_PADDED: return "padded";
	case FT_LAYOUT_PACKED: return "packed";
	case FT_LAYOUT_NEAT: return "neat_packed";
	}
	return "?";
}

/* ---- examples ------------------------------------------------------ */

void ft_examples_init(ft_examples *e, int nseq)
{
	memset(e, 0, sizeof *e);
	e->nseq = nseq;
	e->cap_seq = 64;
	e->off = ft_xmalloc((e->cap_seq + 1) * sizeof *e->off);
	e->off[0] = 0;
}

void ft_examples_free(ft_examples *e)
{
	ft_i32vec_free(&e->ids);
	ft_i32vec_free(&e->labels);
	free(e->off);
	free(e->tags);
	for (size_t i = 0; i < e->cap_extra; i++) json_decref(e->extra[i]);
	free(e->extra);
	memset(e, 0, sizeof *e);
}

void ft_examples_add_seq(ft_examples *e, const int32_t *ids, const int32_t *labels, size_t n)
{
	if (e->n_seq == e->cap_seq) {
		e->cap_seq *= 2;
		e->off = ft_xrealloc(e->off, (e->cap_seq + 1) * sizeof *e->off);
	}
	ft_i32vec_append(&e->ids, ids, n);
	if (!e->ids_only) ft_i32vec_append(&e->labels, labels ? labels : ids, n);
	e->n_seq++;
	e->off[e->n_seq] = (int64_t)e->ids.n;
}

void ft_examples_set_tag(ft_examples *e, size_t example, int tag)
{
	if (example >= e->cap_tags) {
		size_t cap = e->cap_tags ? e->cap_tags : 64;
		while (cap <= example) cap *= 2;
		e->tags = ft_xrealloc(e->tags, cap);
		memset(e->tags + e->cap_tags, 0, cap - e->cap_tags);
		e->cap_tags = cap;
	}
	e->tags[example] = (int8_t)(tag != 0);
}

void ft_examples_set_extra(ft_examples *e, size_t example, json_t *columns)
{
	if (example >= e->cap_extra) {
		size_t cap = e->cap_extra ? e->cap_extra : 64;
		while (cap <= example) cap *= 2;
		e->extra = ft_xrealloc(e->extra, cap * sizeof *e->extra);
		memset(e->extra + e->cap_extra, 0, (cap - e->cap_extra) * sizeof *e->extra);
		e->cap_extra = cap;
	}
	json_decref(e->extra[example]);
	e->extra[example] = columns;
}

/* ---- rows ---------------------------------------------------------- */

void ft_rows_free(ft_rows *r)
{
	free(r->spans);
	free(r->row_off);
	memset(r, 0, sizeof *r);
}

static void rows_init(ft_rows *r, int nseq)
{
	memset(r, 0, sizeof *r);
	r->nseq = nseq;
	r->cap_rows = 64;
	r->row_off = ft_xmalloc((r->cap_rows + 1) * sizeof *r->row_off);
	r->row_off[0] = 0;
}

static void rows_add_span(ft_rows *r, int64_t seq, int32_t start, int32_t len)
{
	if (len <= 0) return;
	if (r->n_spans == r->cap_spans) {
		r->cap_spans = r->cap_spans ? r->cap_spans * 2 : 256;
		r->spans = ft_xrealloc(r->spans, r->cap_spans * sizeof *r->spans);
	}
	r->spans[r->n_spans++] = (ft_span){ seq, start, len };
}

/* Close the row whose spans were added since the last close. */
static void rows_end_row(ft_rows *r)
{
	if (r->n_rows == r->cap_rows) {
		r->cap_rows *= 2;
		r->row_off = ft_xrealloc(r->row_off, (r->cap_rows + 1) * sizeof *r->row_off);
	}
	r->n_rows++;
	r->row_off[r->n_rows] = (int64_t)r->n_spans;
}

int64_t ft_rows_row_tokens(const ft_rows *r, size_t row)
{
	int64_t n = 0;
	for (int64_t i = r->row_off[row]; i < r->row_off[row + 1]; i++) n += r->spans[i].len;
	return n;
}

/* Length of sequence s after truncation to cap (counted in st). */
static int32_t clipped_len(const ft_examples *e, size_t s, int32_t cap, ft_rows_stats *st)
{
	size_t n = ft_examples_seq_len(e, s);
	if (n <= (size_t)cap) return (int32_t)n;
	st->truncated++;
	st->truncated_tokens += (int64_t)(n - (size_t)cap);
	return cap;
}

static void build_padded(const ft_examples *e, int32_t cap, ft_rows *r, ft_rows_stats *st)
{
	size_t n = ft_examples_count(e);
	for (size_t i = 0; i < n; i++)
		for (int k = 0; k < e->nseq; k++) {
			size_t s = i * (size_t)e->nseq + (size_t)k;
			rows_add_span(r, (int64_t)s, 0, clipped_len(e, s, cap, st));
			rows_end_row(r);
		}
}

/* LLaMA-Factory's pt packing: per window, concatenate and cut into blocks
 * of exactly `block` tokens; the window's last partial block is dropped
 * (total_length // block_size * block_size). */
static void build_pt_blocks(const ft_examples *e, int32_t block, int window,
			    ft_rows *r, ft_rows_stats *st)
{
	size_t n = ft_examples_count(e);
	for (size_t w0 = 0; w0 < n; w0 += (size_t)window) {
		size_t w1 = w0 + (size_t)window < n ? w0 + (size_t)window : n;
		int32_t fill = 0;
		size_t row_first_span = r->n_spans;
		for (size_t s = w0; s < w1; s++) {
			int32_t len = (int32_t)ft_examples_seq_len(e, s), at = 0;
			while (at < len) {
				int32_t take = len - at < block - fill ? len - at : block - fill;
				rows_add_span(r, (int64_t)s, at, take);
				at += take;
				fill += take;
				if (fill == block) {
					rows_end_row(r);
					fill = 0;
					row_first_span = r->n_spans;
				}
			}
		}
		st->dropped_tokens += fill;
		r->n_spans = row_first_span;   /* forget the partial block */
	}
}

/* ---- LLaMA-Factory's greedy_knapsack -------------------------------- */

/* Fenwick tree over lengths 0..cap (index L+1) counting remaining items. */
typedef struct { int64_t *t; size_t n; } fenwick;

static void fw_add(fenwick *f, size_t i, int64_t d)
{
	for (i++; i <= f->n; i += i & -i) f->t[i] += d;
}

static int64_t fw_prefix(const fenwick *f, size_t i)   /* items with length <= i */
{
	int64_t s = 0;
	for (i++; i > 0; i -= i & -i) s += f->t[i];
	return s;
}

static size_t fw_kth(const fenwick *f, int64_t k)     /* smallest length with prefix >= k */
{
	size_t pos = 0, step = 1;
	while (step * 2 <= f->n) step *= 2;
	for (; step; step /= 2)
		if (pos + step <= f->n && f->t[pos + step] < k) {
			pos += step;
			k -= f->t[pos];
		}
	return pos;   /* 1-based pos+1 is the answer, i.e. length pos */
}

size_t ft_greedy_knapsack(const int32_t *lengths, size_t n, int32_t capacity,
			  size_t *items, size_t *bin_off)
{
	/* Items of each length, by index: LLaMA-Factory's length2indexes,
	 * whose .pop() takes the highest index first. */
	size_t nl = (size_t)capacity + 1;
	size_t *start = ft_xcalloc(nl + 1, sizeof *start);
	for (size_t i = 0; i < n; i++) start[lengths[i] + 1]++;
	for (size_t L = 0; L < nl; L++) start[L + 1] += start[L];
	size_t *byidx = ft_xmalloc((n ? n : 1) * sizeof *byidx);
	size_t *top = ft_xmalloc(nl * sizeof *top);
	memcpy(top, start, nl * sizeof *top);
	for (size_t i = 0; i < n; i++) byidx[top[lengths[i]]++] = i;
	fenwick f = { ft_xcalloc(nl + 1, sizeof *f.t), nl };
	for (size_t L = 0; L < nl; L++)
		if (top[L] > start[L]) fw_add(&f, L, (int64_t)(top[L] - start[L]));

	size_t nb = 0, placed = 0;
	bin_off[0] = 0;
	while (placed < n) {
		int32_t rem = capacity;
		for (;;) {
			int64_t k = fw_prefix(&f, (size_t)rem);
			if (k == 0) break;
			size_t L = fw_kth(&f, k);   /* the largest length <= rem */
			items[placed++] = byidx[--top[L]];
			fw_add(&f, L, -1);
			rem -= (int32_t)L;
		}
		bin_off[++nb] = placed;
	}
	free(start); free(byidx); free(top); free(f.t);
	return nb;
}

/* Knapsack packing per window; an item is one example (all its
 * sequences), sized by its longest sequence, so the pairs of a pairwise
 * example share a bin and their rows are aligned segment by segment. */
static void build_knapsacks(const ft_examples *e, int32_t cap, int window,
			    ft_rows *r, ft_rows_stats *st)
{
	size_t n = ft_examples_count(e), nseq = (size_t)e->nseq;
	size_t wmax = (size_t)window < n ? (size_t)window : n;
	int32_t *lens = ft_xmalloc((wmax ? wmax : 1) * nseq * sizeof *lens);
	int32_t *item_len = ft_xmalloc((wmax ? wmax : 1) * sizeof *item_len);
	size_t *items = ft_xmalloc((wmax ? wmax : 1) * sizeof *items);
	size_t *bin_off = ft_xmalloc((wmax + 1) * sizeof *bin_off);
	for (size_t w0 = 0; w0 < n; w0 += (size_t)window) {
		size_t m = w0 + (size_t)window < n ? (size_t)window : n - w0;
		for (size_t i = 0; i < m; i++) {
			item_len[i] = 0;
			for (size_t k = 0; k < nseq; k++) {
				int32_t l = clipped_len(e, (w0 + i) * nseq + k, cap, st);
				lens[i * nseq + k] = l;
				if (l > item_len[i]) item_len[i] = l;
			}
		}
		size_t nb = ft_greedy_knapsack(item_len, m, cap, items, bin_off);
		for (size_t b = 0; b < nb; b++)
			for (size_t k = 0; k < nseq; k++) {
				for (size_t j = bin_off[b]; j < bin_off[b + 1]; j++) {
					size_t i = items[j];
					rows_add_span(r, (int64_t)((w0 + i) * nseq + k), 0, lens[i * nseq + k]);
				}
				rows_end_row(r);
			}
	}
	free(lens); free(item_len); free(items); free(bin_off);
}

int ft_rows_build(const ft_examples *e, const ft_rows_opts *o, ft_rows *out, ft_rows_stats *st)
{
	memset(st, 0, sizeof *st);
	if (o->cutoff_len < 2) return ft_fail("cutoff_len must be at least 2 (got %d)", o->cutoff_len);
	if (o->window < 1) return ft_fail("packing window must be at least 1 example");
	rows_init(out, e->nseq);
	st->examples = (int64_t)ft_examples_count(e);
	if (o->layout == FT_LAYOUT_PADDED) {
		st->capacity = o->cutoff_len;
		build_padded(e, o->cutoff_len, out, st);
	} else if (o->layout == FT_LAYOUT_PACKED && o->stage == FT_STAGE_PT) {
		if (e->nseq != 1) return ft_fail("pt blocks need one sequence per example");
		st->capacity = o->cutoff_len;
		build_pt_blocks(e, o->cutoff_len, o->window, out, st);
	} else {
		st->capacity = o->cutoff_len - 1;
		build_knapsacks(e, o->cutoff_len - 1, o->window, out, st);
	}
	st->rows = (int64_t)out->n_rows;
	st->units = (int64_t)ft_rows_units(out);
	return 0;
}
