/* tokenizer_bpe.c - the BPE model of `tokenizers` (models/bpe): a word's
 * characters become symbols (unknown ones through byte_fallback or unk,
 * fused when fuse_unk), then pairs are merged lowest rank first, leftmost
 * on ties, with a linked list and a binary heap as Word::merge_all does,
 * including its rule for stale heap entries.  Words shorter than 256 bytes
 * are cached per scratch space (HF caches the same way). */
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "text/tokenizer_internal.h"

#define CACHE_SLOTS 65536          /* power of two */
#define CACHE_MAX   (CACHE_SLOTS / 2)
#define CACHE_WORD  256            /* HF's MAX_LENGTH for cached words */

typedef struct { int32_t rank, pos, id; } heap_ent;
typedef struct { uint64_t hash; uint32_t koff, klen, ioff, nids; } cache_ent;

struct ftp_tk_bpe_scratch {
	int32_t *sym, *prev, *next;
	size_t cap;
	ftp_tk_heap heap;           /* of heap_ent */
	/* word cache */
	uint32_t *slot;
	cache_ent *ent;
	size_t nent;
	ftp_tk_buf keys;
	ft_i32vec ids;
};

ftp_tk_bpe_scratch *ftp_tk_bpe_scratch_new(void)
{
	ftp_tk_bpe_scratch *s = ft_xcalloc(1, sizeof *s);
	s->slot = ft_xcalloc(CACHE_SLOTS, sizeof *s->slot);
	s->ent = ft_xmalloc(CACHE_MAX * sizeof *s->ent);
	return s;
}

void ftp_tk_bpe_scratch_free(ftp_tk_bpe_scratch *s)
{
	if (!s) return;
	free(s->sym); free(s->prev); free(s->next); free(s->heap.v);
	free(s->slot); free(s->ent);
	ftp_tk_buf_free(&s->keys);
	ft_i32vec_free(&s->ids);
	free(s);
}

static void sym_reserve(ftp_tk_bpe_scratch *s, size_t n)
{
	if (n <= s->cap) return;
	size_t cap = s->cap ? s->cap : 64;
	while (cap < n) cap *= 2;
	s->sym = ft_xrealloc(s->sym, cap * sizeof *s->sym);
	s->prev = ft_xrealloc(s->prev, cap * sizeof *s->prev);
	s->next = ft_xrealloc(s->next, cap * sizeof *s->next);
	s->cap = cap;
}

/* ---- the merge queue: lowest (rank, pos) first ---- */
static int ent_before(const void *a, const void *b)
{
	const heap_ent *x = a, *y = b;
	return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(ftp_tk_bpe_scratch *s, int32_t rank, int32_t pos, int32_t id)
{
	heap_ent e = { rank, pos, id };
	ftp_tk_heap_push(&s->heap, &e, sizeof e, ent_before);
}

static heap_ent heap_pop(ftp_tk_bpe_scratch *s)
{
	heap_ent top;
	ftp_tk_heap_pop(&s->heap, &top, sizeof top, ent_before);
	return top;
}

size_t ftp_tk_bpe_merge(const ft_tokenizer *t, ftp_tk_bpe_scratch *s, int32_t *sym, size_t n)
{
	if (n < 2) return n;
	sym_reserve(s, n);
	int32_t *prev = s->prev, *next = s->next;
	int32_t rank, id;
	s->heap.n = 0;
	for (size_t i = 0; i < n; i++) {
		prev[i] = (int32_t)i - 1;
		next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
		if (i + 1 < n && ftp_tk_mergemap_get(&t->merges, sym[i], sym[i + 1], &rank, &id))
			heap_push(s, rank, (int32_t)i, id);
	}
	while (s->heap.n) {
		heap_ent top = heap_pop(s);
		int32_t p = top.pos;
		if (sym[p] < 0 || next[p] < 0) continue;
		int32_t r = next[p];
		/* an entry is stale unless the pair there still merges to its id */
		if (!ftp_tk_mergemap_get(&t->merges, sym[p], sym[r], &rank, &id) || id != top.id)
			continue;
		sym[p] = top.id;
		sym[r] = -1;
		next[p] = next[r];
		if (next[r] >= 0) prev[next[r]] = p;
		if (prev[p] >= 0 && ftp_tk_mergemap_get(&t->merges, sym[prev[p]], sym[p], &rank, &id))
			heap_push(s, rank, prev[p], id);
		if (next[p] >= 0 && ftp_tk_mergemap_get(&t->merges, sym[p], sym[next[p]], &rank, &id))
			heap_push(s, rank, p, id);
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) if (sym[i] >= 0) sym[k++] = sym[i];
	return k;
}

/* ---- cache ---- */
static const cache_ent *cache_get(const ftp_tk_bpe_scratch *s, const char *w, size_t n, uint64_t h)
{
	size_t i = h & (CACHE_SLOTS - 1);
	for (;;) {
		uint32_t e = s->slot[i];
		if (!e) return NULL;
		const cache_ent *c = &s->ent[e - 1];
		if (c->hash == h && c->klen == n && !memcmp(s->keys.p + c->koff, w, n)) return c;
		i = (i + 1) & (CACHE_SLOTS - 1);
	}
}

static void cache_put(ftp_tk_bpe_scratch *s, const char *w, size_t n, uint64_t h,
		      const int32_t *ids, size_t nids)
{
	if (s->nent == CACHE_MAX) {   /* full: start over rather than evict */
		memset(s->slot, 0, CACHE_SLOTS * sizeof *s->slot);
		s->nent = 0;
		s->keys.n = 0;
		s->ids.n = 0;
	}
	cache_ent *c = &s->ent[s->nent];
	c->hash = h; c->klen = (uint32_t)n; c->koff = (uint32_t)s->keys.n;
	c->ioff = (uint32_t)s->ids.n; c->nids = (uint32_t)nids;
	ftp_tk_buf_add(&s->keys, w, n);
	ft_i32vec_append(&s->ids, ids, nids);
	size_t i = h & (CACHE_SLOTS - 1);
	while (s->slot[i]) i = (i + 1) & (CACHE_SLOTS - 1);
	s->slot[i] = (uint32_t)++s->nent;
}

static inline int32_t enc_get(const ft_tokenizer *t, const char *s, size_t n)
{
	return ftp_tk_strmap_get(t->bytelevel ? &t->enc : &t->vocab, s, n);
}

/* Symbols of a word as BPE::merge_word makes them, appended to out. */
static void initial_symbols(const ft_tokenizer *t, const char *w, size_t n, ft_i32vec *out)
{
	int unk = 0;   /* a pending unk (HF keeps it pending to fuse) */
	char tmp[8];
	for (size_t i = 0; i < n;) {
		const char *c; size_t clen, adv;
		int32_t id;
		if (t->bytelevel) {
			unsigned char b = (unsigned char)w[i];
			id = t->byte_id[b];
			adv = 1;
			c = tmp; clen = (size_t)ftp_tk_u8enc(ftp_tk_byte2cp[b], tmp);
		} else {
			adv = clen = (size_t)ftp_tk_u8len((unsigned char)w[i]);
			if (i + clen > n) adv = clen = n - i;
			c = w + i;
			id = ftp_tk_strmap_get(&t->vocab, c, clen);
		}
		i += adv;
		if (id >= 0) {
			if (unk) { ft_i32vec_push(out, t->unk_id); unk = 0; }
			ft_i32vec_push(out, id);
			continue;
		}
		if (t->byte_fallback) {
			size_t k;
			for (k = 0; k < clen && t->fallback_id[(unsigned char)c[k]] >= 0; k++) ;
			if (k == clen) {
				for (k = 0; k < clen; k++)
					ft_i32vec_push(out, t->fallback_id[(unsigned char)c[k]]);
				continue;
			}
		}
		if (t->unk_id >= 0) {
			if (unk && !t->fuse_unk) ft_i32vec_push(out, t->unk_id);
			unk = 1;
		}
	}
	if (unk) ft_i32vec_push(out, t->unk_id);
}

int ftp_tk_bpe_word(const ft_tokenizer *t, ftp_tk_bpe_scratch *s, const char *w, size_t n,
		ft_i32vec *out)
{
	if (!n) return 0;
	if (t->ignore_merges) {
		int32_t id = enc_get(t, w, n);
		if (id >= 0) { ft_i32vec_push(out, id); return 0; }
	}
	uint64_t h = 0;
	if (n < CACHE_WORD) {
		h = ftp_tk_hash(w, n);
		const cache_ent *c = cache_get(s, w, n, h);
		if (c) { ft_i32vec_append(out, s->ids.v + c->ioff, c->nids); return 0; }
	}
	size_t start = out->n;
	initial_symbols(t, w, n, out);
	size_t k = ftp_tk_bpe_merge(t, s, out->v + start, out->n - start);
	out->n = start + k;
	if (n < CACHE_WORD) cache_put(s, w, n, h, out->v + start, k);
	return 0;
}
