/* pack_batch.c - seeded split and shuffle, batches from rows; see pack.h */
#include "data/pack.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- split --------------------------------------------------------- */

int64_t ft_val_count(double val_size, int64_t n_units)
{
	if (val_size <= 1e-6) return 0;        /* LLaMA-Factory's threshold */
	if (val_size < 1) return (int64_t)ceil(val_size * (double)n_units);
	return (int64_t)val_size;
}

void ft_split_units(uint64_t seed, int64_t n_units, int64_t n_val,
		    int64_t **train, int64_t *n_train, int64_t **val)
{
	int64_t *perm = ft_xmalloc((size_t)(n_units ? n_units : 1) * sizeof *perm);
	for (int64_t i = 0; i < n_units; i++) perm[i] = i;
	if (n_val > 0) {
		/* A stream of its own, so a split does not change the shuffle. */
		ft_rng g;
		ft_rng_seed(&g, seed ^ 0x76616c5f73706c74ULL);
		ft_shuffle_i64(&g, perm, (size_t)n_units);
	}
	if (n_val > n_units) n_val = n_units;
	*val = ft_xmalloc((size_t)(n_val ? n_val : 1) * sizeof **val);
	memcpy(*val, perm, (size_t)n_val * sizeof *perm);
	*n_train = n_units - n_val;
	*train = ft_xmalloc((size_t)(*n_train ? *n_train : 1) * sizeof **train);
	memcpy(*train, perm + n_val, (size_t)*n_train * sizeof *perm);
	/* The training order is shuffled by the caller; keep validation in
	 * input order as an evaluation sampler reads it sequentially. */
	free(perm);
}

/* ---- group by length ----------------------------------------------- */

typedef struct { int64_t unit, len; size_t pos; } unit_len;

static int cmp_len_desc(const void *a, const void *b)
{
	const unit_len *x = a, *y = b;
	if (x->len != y->len) return x->len < y->len ? 1 : -1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int64_t unit_tokens(const ft_rows *r, int64_t u)
{
	int64_t m = 0;
	for (int k = 0; k < r->nseq; k++) {
		int64_t t = ft_rows_row_tokens(r, (size_t)(u * r->nseq + k));
		if (t > m) m = t;
	}
	return m;
}

void ft_group_by_length(const ft_rows *r, int64_t *units, size_t n, int batch_size)
{
	size_t mega = (size_t)batch_size * 50;
	unit_len *tmp = ft_xmalloc((mega ? mega : 1) * sizeof *tmp);
	for (size_t m0 = 0; m0 < n; m0 += mega) {
		size_t m = n - m0 < mega ? n - m0 : mega;
		for (size_t i = 0; i < m; i++)
			tmp[i] = (unit_len){ units[m0 + i], unit_tokens(r, units[m0 + i]), i };
		qsort(tmp, m, sizeof *tmp, cmp_len_desc);
		for (size_t i = 0; i < m; i++) units[m0 + i] = tmp[i].unit;
	}
	free(tmp);
}

void ft_epoch_order(uint64_t seed, int shuffle, int group_by_length, int batch_size,
		    const ft_rows *r, const int64_t *base, size_t n, int64_t epoch, int64_t *out)
{
	memcpy(out, base, n * sizeof *out);
	if (shuffle) {
		ft_rng g;
		ft_rng_seed(&g, seed + (uint64_t)epoch);
		ft_shuffle_i64(&g, out, n);
	}
	if (group_by_length) ft_group_by_length(r, out, n, batch_size);
}

/* ---- batches ------------------------------------------------------- */

int64_t ft_pack_n_batches(size_t n, const ft_batch_opts *o)
{
	size_t bs = (size_t)o->batch_size;
	return (int64_t)(o->drop_last ? n / bs : (n + bs - 1) / bs);
}

static void *grow(void *p, size_t n)
{
	return ft_xrealloc(p, n ? n : 1);
}

static void batch_reserve(ft_batch *b, size_t need, int pos, int seg, int tags, int lens)
{
	/* The buffers are sized to the largest batch seen; cap_ remembers it. */
	if (need > b->cap_) {
		b->input_ids = grow(b->input_ids, need * sizeof(int32_t));
		b->labels = grow(b->labels, need * sizeof(int32_t));
		free(b->position_ids); b->position_ids = NULL;
		free(b->segment_ids); b->segment_ids = NULL;
		b->cap_ = need;
	}
	if (pos && !b->position_ids) b->position_ids = grow(NULL, b->cap_ * sizeof(int32_t));
	if (seg && !b->segment_ids) b->segment_ids = grow(NULL, b->cap_ * sizeof(int32_t));
	if (!pos) { free(b->position_ids); b->position_ids = NULL; }
	if (!seg) { free(b->segment_ids); b->segment_ids = NULL; }
	free(b->kto_tags); b->kto_tags = NULL;
	if (tags) b->kto_tags = grow(NULL, (size_t)b->B * sizeof(int32_t));
	free(b->lengths); b->lengths = NULL;
	if (lens) b->lengths = grow(NULL, (size_t)b->B * sizeof(int32_t));
}

/* Returns the row's real tokens (the rest is padding). */
static int fill_row(const ft_examples *e, const ft_rows *r, size_t row, const ft_batch_opts *o,
		    ft_batch *b, int32_t *ids, int32_t *lab, int32_t *pos, int32_t *seg)
{
	int T = b->T, t = 0, segno = 0;
	for (int64_t i = r->row_off[row]; i < r->row_off[row + 1]; i++) {
		const ft_span *sp = &r->spans[i];
		const int32_t *src = e->ids.v + e->off[sp->seq] + sp->start;
		const int32_t *lsrc = e->ids_only ? src : e->labels.v + e->off[sp->seq] + sp->start;
		segno++;
		for (int32_t j = 0; j < sp->len && t < T; j++, t++) {
			ids[t] = src[j];
			lab[t] = lsrc[j];
			if (pos) pos[t] = sp->start + j;
			if (seg) seg[t] = segno;
		}
	}
	b->n_tokens += t;
	int len = t;
	if (o->stage == FT_STAGE_PT && o->bos_id >= 0 && o->layout == FT_LAYOUT_PACKED && t > 0)
		ids[0] = o->bos_id;   /* LLaMA-Factory with add_bos_token */
	for (; t < T; t++) {
		ids[t] = o->pad_id;
		lab[t] = FT_IGNORE_INDEX;
		if (pos) pos[t] = 0;
		if (seg) seg[t] = 0;
	}
	if (o->stage == FT_STAGE_PT)   /* DataCollatorForLanguageModeling */
		for (t = 0; t < T; t++) lab[t] = ids[t] == o->pad_id ? FT_IGNORE_INDEX : ids[t];
	for (t = 0; t < T; t++) b->n_label_tokens += lab[t] != FT_IGNORE_INDEX;
	return len;
}

void ft_batch_fill(const ft_examples *e, const ft_rows *r, const int64_t *units, size_t n,
		   const ft_batch_opts *o, ft_batch *b)
{
	int nseq = r->nseq;
	b->B = (int)n * nseq;
	if (o->layout == FT_LAYOUT_PADDED) {
		int64_t m = 0;
		for (size_t j = 0; j < n; j++) {
			int64_t t = unit_tokens(r, units[j]);
			if (t > m) m = t;
		}
		int mult = o->pad_to_multiple_of > 0 ? o->pad_to_multiple_of : 1;
		if (m == 0) m = 1;
		b->T = (int)((m + mult - 1) / mult * mult);
	} else {
		b->T = o->seq_len;
	}
	/* pt blocks are plain causal rows; other packed rows restart
	 * positions per example as LLaMA-Factory does. */
	int pos = o->layout == FT_LAYOUT_NEAT || (o->layout == FT_LAYOUT_PACKED && o->stage != FT_STAGE_PT);
	int seg = o->layout == FT_LAYOUT_NEAT;
	int tags = e->tags != NULL && o->layout == FT_LAYOUT_PADDED;
	/* Padded rows carry their lengths: HF's collator pads with
	 * attention_mask 0 there.  Packed rows have none: LLaMA-Factory's
	 * packing pads with attention_mask 1 (plain causal over the row) and
	 * neat packing's segment id 0 is its own mask. */
	int lens = o->layout == FT_LAYOUT_PADDED;
	batch_reserve(b, (size_t)b->B * (size_t)b->T, pos, seg, tags, lens);
	b->pairwise = ft_stage_pairwise(o->stage);
	b->n_label_tokens = 0;
	b->n_tokens = 0;
	b->n_examples = (int64_t)n;
	for (size_t j = 0; j < n; j++)
		for (int k = 0; k < nseq; k++) {
			size_t row = (size_t)units[j] * (size_t)nseq + (size_t)k, br = j * (size_t)nseq + (size_t)k;
			size_t at = br * (size_t)b->T;
			int len = fill_row(e, r, row, o, b, b->input_ids + at, b->labels + at,
					   pos ? b->position_ids + at : NULL,
					   seg ? b->segment_ids + at : NULL);
			if (lens)
				b->lengths[br] = len;
			if (tags) {
				int64_t s = r->spans[r->row_off[row]].seq;
				size_t ex = (size_t)s / (size_t)nseq;
				b->kto_tags[br] = ex < e->cap_tags ? e->tags[ex] : 0;
			}
		}
}

void ft_pack_totals_compute(const ft_examples *e, const ft_rows *r, const int64_t *units,
			    size_t n, const ft_batch_opts *o, ft_pack_totals *t)
{
	memset(t, 0, sizeof *t);
	size_t n_ex = ft_examples_count(e), bs = (size_t)o->batch_size;
	uint8_t *seen = ft_xcalloc(n_ex ? n_ex : 1, 1);
	ft_batch b = { 0 };
	int64_t nb = ft_pack_n_batches(n, o);
	for (int64_t i = 0; i < nb; i++) {
		size_t j0 = (size_t)i * bs, m = n - j0 < bs ? n - j0 : bs;
		ft_batch_fill(e, r, units + j0, m, o, &b);
		t->batches++;
		t->units += (int64_t)m;
		t->rows += b.B;
		t->tokens += b.n_tokens;
		t->label_tokens += b.n_label_tokens;
		t->positions += (int64_t)b.B * b.T;
		if (b.T > t->seq_len_max) t->seq_len_max = b.T;
		for (size_t j = j0; j < j0 + m; j++)
			for (int k = 0; k < r->nseq; k++) {
				size_t row = (size_t)units[j] * (size_t)r->nseq + (size_t)k;
				for (int64_t s = r->row_off[row]; s < r->row_off[row + 1]; s++) {
					size_t ex = (size_t)r->spans[s].seq / (size_t)r->nseq;
					t->source_examples += !seen[ex];
					seen[ex] = 1;
				}
			}
	}
	t->pad_tokens = t->positions - t->tokens;
	ft_batch_free(&b);
	free(seen);
}
