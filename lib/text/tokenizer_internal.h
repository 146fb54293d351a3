/* tokenizer_internal.h - the parts of ft_tokenizer shared by its files:
 * loading (tokenizer_json.c, tokenizer_spm.c), the encode pipeline
 * (tokenizer_pipeline.c), BPE (tokenizer_bpe.c), decoding
 * (tokenizer_decode.c) and small helpers (tokenizer_util.c).
 *
 * The pipeline mirrors the `tokenizers` crate: added tokens are cut out of
 * the raw text, the rest is normalized piece by piece, pre-tokenized into
 * words, and each word goes through the model (BPE by merge rank, or
 * SentencePiece BPE by piece score for tokenizer.model).
 */
#ifndef FT_TOKENIZER_INTERNAL_H
#define FT_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include "text/tokenizer.h"
#include "util/error.h"

/* ---- string -> id hash map (keys copied into the map) ---- */
typedef struct {
	uint32_t *slot;        /* entry index + 1, 0 = empty */
	size_t cap;            /* power of two */
	char **key;
	uint32_t *klen;
	int32_t *val;
	size_t n, ncap;
} ftp_tk_strmap;

void ftp_tk_strmap_init(ftp_tk_strmap *m);
void ftp_tk_strmap_free(ftp_tk_strmap *m);
/* Insert or overwrite. */
void ftp_tk_strmap_put(ftp_tk_strmap *m, const char *k, size_t len, int32_t v);
/* -1 when absent. */
int32_t ftp_tk_strmap_get(const ftp_tk_strmap *m, const char *k, size_t len);
uint64_t ftp_tk_hash(const void *p, size_t n);

/* ---- (id, id) -> (rank, new id) merge map ---- */
typedef struct {
	uint64_t *key;         /* (a << 32 | b) + 1, 0 = empty */
	int32_t *rank, *id;
	size_t cap, n;
} ftp_tk_mergemap;

void ftp_tk_mergemap_init(ftp_tk_mergemap *m, size_t expect);
void ftp_tk_mergemap_free(ftp_tk_mergemap *m);
void ftp_tk_mergemap_put(ftp_tk_mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t id);
/* 1 and *rank, *id when present. */
static inline int ftp_tk_mergemap_get(const ftp_tk_mergemap *m, int32_t a, int32_t b,
				  int32_t *rank, int32_t *id)
{
	uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
	uint64_t h = k * 0x9E3779B97F4A7C15ull;
	size_t mask = m->cap - 1, i = (h >> 29) & mask;
	for (;;) {
		if (m->key[i] == k) { *rank = m->rank[i]; *id = m->id[i]; return 1; }
		if (!m->key[i]) return 0;
		i = (i + 1) & mask;
	}
}

/* ---- binary heap: the merge queues of BPE (tokenizer_bpe.c, by rank) and
 * SentencePiece (tokenizer_spm.c, by score) ----
 * Elements of `size` bytes; the top is one that no other is before().
 * static inline so that each caller's size and before() are constants
 * folded into its merge loop, the hot loop of encoding. */
typedef struct { char *v; size_t n, cap; } ftp_tk_heap;
typedef int (*ftp_tk_before)(const void *a, const void *b);

static inline void ftp_tk_heap_push(ftp_tk_heap *h, const void *e, size_t size, ftp_tk_before before)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 64;
		h->v = ft_xrealloc(h->v, h->cap * size);
	}
	size_t i = h->n++;
	while (i) {
		size_t p = (i - 1) / 2;
		if (!before(e, h->v + p * size)) break;
		memcpy(h->v + i * size, h->v + p * size, size);
		i = p;
	}
	memcpy(h->v + i * size, e, size);
}

/* The top into *top, off the heap (h->n > 0). */
static inline void ftp_tk_heap_pop(ftp_tk_heap *h, void *top, size_t size, ftp_tk_before before)
{
	memcpy(top, h->v, size);
	size_t n = --h->n, i = 0;
	const char *last = h->v + n * size;   /* moves into the hole; not overwritten below */
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n) break;
		if (c + 1 < n && before(h->v + (c + 1) * size, h->v + c * size)) c++;
		if (!before(h->v + c * size, last)) break;
		memcpy(h->v + i * size, h->v + c * size, size);
		i = c;
	}
	if (n) memcpy(h->v + i * size, last, size);
}

/* ---- growable byte buffer ---- */
typedef struct { char *p; size_t n, cap; } ftp_tk_buf;
void ftp_tk_buf_reserve(ftp_tk_buf *b, size_t need);
void ftp_tk_buf_add(ftp_tk_buf *b, const void *p, size_t n);
static inline void ftp_tk_buf_clear(ftp_tk_buf *b) { b->n = 0; }
void ftp_tk_buf_free(ftp_tk_buf *b);

/* ---- UTF-8 ---- */
/* Length of the UTF-8 sequence starting with byte c (1 for bad bytes). */
static inline int ftp_tk_u8len(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* Decode one code point at s (valid UTF-8 assumed); *n gets its length. */
int32_t ftp_tk_u8dec(const char *s, int *n);
int ftp_tk_u8enc(int32_t cp, char *out);
/* Offset of the first invalid byte, or -1 when s is valid UTF-8. */
long ftp_tk_u8invalid(const char *s, size_t n);
/* Append bytes as Rust's String::from_utf8_lossy does (U+FFFD per
 * maximal invalid subpart). */
void ftp_tk_u8lossy(ftp_tk_buf *out, const char *s, size_t n);
/* Unicode White_Space, as Rust's char::is_whitespace. */
int ftp_tk_is_space(int32_t cp);
/* Regex \w as Rust's regex crate (alphabetic, marks, digits, Pc, ZWJ/ZWNJ). */
int ftp_tk_is_word(int32_t cp);

/* ---- GPT-2 byte <-> char mapping ---- */
extern const uint16_t ftp_tk_byte2cp[256];
/* Byte for a code point of the mapping, -1 for others. */
int ftp_tk_cp2byte(int32_t cp);

/* ---- pipeline components ---- */
enum { N_NFC, N_NFKC, N_NFD, N_NFKD, N_PREPEND, N_REPLACE, N_LOWER, N_STRIP };
typedef struct {
	int kind;
	char *a, *b;            /* prepend text; replace pattern/content */
	size_t alen, blen;
	pcre2_code *re;         /* Replace with a Regex pattern */
	int left, right;        /* Strip */
} ftp_tk_norm;

enum { P_SPLIT, P_BYTELEVEL, P_METASPACE, P_DIGITS, P_WSPLIT };
enum { B_REMOVED, B_ISOLATED, B_PREV, B_NEXT, B_CONTIG };
enum { PS_ALWAYS, PS_NEVER, PS_FIRST };
typedef struct {
	int kind;
	pcre2_code *re;         /* Split (regex or escaped string), ByteLevel regex */
	int behavior, invert;
	int add_prefix_space, use_regex;
	char rep[8]; int replen; /* Metaspace replacement (UTF-8) */
	int prepend_scheme, split;
	int individual_digits;
} ftp_tk_pre;

enum { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_METASPACE };
typedef struct {
	int kind;
	char *a, *b; size_t alen, blen;  /* Replace pattern/content */
	int32_t ch; int start, stop;     /* Strip */
	char rep[8]; int replen; int prepend_scheme; /* Metaspace */
} ftp_tk_dec;

typedef struct {
	char *content; size_t len;       /* as matched: normalized if `normalized` */
	char *orig;                      /* as written, when normalizing changed it */
	int32_t id;
	int single_word, lstrip, rstrip, normalized, special;
} ftp_tk_added;

/* Added-token matcher: a byte trie, leftmost-longest as aho-corasick's
 * MatchKind::LeftmostLongest. */
typedef struct {
	int32_t (*next)[256];   /* node -> child, 0 = none (root is 0) */
	int32_t *tok;           /* node -> index into tokens, -1 */
	size_t n, cap;
	uint8_t first[256];     /* bytes that can start a match */
	int empty;
} ftp_tk_trie;

enum { M_BPE, M_SPM };

typedef struct { size_t s, e; int32_t tok; } ftp_tk_span;
typedef struct { ftp_tk_span *v; size_t n, cap; } ftp_tk_spanvec;
typedef struct ftp_tk_bpe_scratch ftp_tk_bpe_scratch;
typedef struct ftp_tk_spm_scratch ftp_tk_spm_scratch;

/* Per-call scratch space, pooled so that threads never share one. */
typedef struct {
	ftp_tk_bpe_scratch *bpe;
	ftp_tk_spm_scratch *spm;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jit;
	ftp_tk_buf nb[2];            /* normalizer ping-pong */
	ftp_tk_spanvec added1, added2;
	ftp_tk_buf *pbuf;            /* one per pre-tokenizer step */
	ftp_tk_spanvec *pspan;
	size_t npre;
} ftp_tk_work;

struct ft_tokenizer {
	char *path, *identity, *name;
	int model;                       /* M_BPE or M_SPM */

	/* vocabulary: id -> token string (model vocab plus added tokens) */
	char **tok; uint32_t *toklen; size_t ntok, captok;
	ftp_tk_strmap vocab;                 /* token string -> id (model vocab) */
	ftp_tk_strmap enc;                   /* what words are looked up in: raw
					    bytes when ByteLevel maps them */
	int bytelevel;                   /* vocab is byte-level mapped */
	int32_t byte_id[256];            /* byte-level: id of each byte's char */
	int32_t fallback_id[256];        /* <0xNN> ids, -1 when absent */
	int have_fallback;               /* all 256 <0xNN> present */

	/* BPE */
	ftp_tk_mergemap merges;
	int32_t unk_id;
	int fuse_unk, byte_fallback, ignore_merges;

	/* SentencePiece (tokenizer.model) */
	float *score;                    /* per id */
	size_t capscore;
	uint8_t *ptype;                  /* per id: 1 normal .. 6 byte */
	int sp_dummy_prefix, sp_remove_ws, sp_escape_ws;
	uint32_t *sp_trie; size_t sp_ntrie;   /* precompiled charsmap (darts) */
	char *sp_normstr; size_t sp_nnormstr;
	ftp_tk_trie sp_user;                 /* USER_DEFINED pieces */
	ftp_tk_added *sp_user_tok; size_t sp_nuser;

	/* added tokens */
	ftp_tk_added *added; size_t nadded;
	/* tokens added after loading (ft_tokenizer_add_tokens, in order) and
	 * the tokenizer.json they extend (tokenizer_add.c) */
	struct ftp_tk_new { char *content; int32_t id; int special; } *extra;
	size_t nextra;
	char *json_file;
	ftp_tk_trie trie_raw, trie_norm;     /* non-normalized / normalized */
	ftp_tk_added **raw_tok, **norm_tok;  /* trie token index -> token */
	uint8_t *is_special;             /* per id */

	ftp_tk_norm *norm; size_t nnorm;
	ftp_tk_pre *pre; size_t npre;
	ftp_tk_dec *dec; size_t ndec; int have_decoder;
	int32_t *post_pre, *post_post; size_t npost_pre, npost_post;

	ft_tokenizer_info info;
	char *bos_s, *eos_s, *pad_s;

	pthread_mutex_t lock;
	ftp_tk_work **pool; size_t npool, cappool;
};

/* tokenizer_util.c */
int32_t ftp_tk_add_token(ft_tokenizer *t, const char *s, size_t len, int32_t id);
void ftp_tk_trie_build(ftp_tk_trie *tr, ftp_tk_added **toks, size_t n);
void ftp_tk_trie_free(ftp_tk_trie *tr);
/* Longest match starting at s[0..n): token index or -1, *mlen its length. */
int ftp_tk_trie_match(const ftp_tk_trie *tr, const char *s, size_t n, size_t *mlen);
pcre2_code *ftp_tk_regex(const char *pattern, int literal);

/* tokenizer_json.c */
int ftp_tk_load_json(ft_tokenizer *t, const char *path);
/* tokenizer_spm.c */
int ftp_tk_load_spm(ft_tokenizer *t, const char *path);
int ftp_tk_spm_encode_piece(const ft_tokenizer *t, ftp_tk_work *w, const char *s,
			size_t n, ft_i32vec *out);
/* tokenizer_pipeline.c */
int ftp_tk_finish_load(ft_tokenizer *t);
/* The added-token tries and is_special again after t->added changed;
 * entries from `first` on are new (not yet normalized). */
int ftp_tk_added_refresh(ft_tokenizer *t, size_t first);
void ftp_tk_work_free(ftp_tk_work *w);
/* Regex matches of re in s[0..n) (spans with tok 1 for a match, 0 for
 * the text between), covering the whole string, as Pattern::find_matches. */
int ftp_tk_find_matches(ftp_tk_work *w, const pcre2_code *re, const char *s, size_t n,
		    ftp_tk_spanvec *out);
void ftp_tk_span_push(ftp_tk_spanvec *v, size_t s, size_t e, int32_t tok);
/* tokenizer_spm.c */
void ftp_tk_spm_scratch_free(ftp_tk_spm_scratch *s);
/* tokenizer_bpe.c */
ftp_tk_bpe_scratch *ftp_tk_bpe_scratch_new(void);
void ftp_tk_bpe_scratch_free(ftp_tk_bpe_scratch *s);
/* One pre-tokenized word through the BPE model. */
int ftp_tk_bpe_word(const ft_tokenizer *t, ftp_tk_bpe_scratch *s, const char *w,
		size_t n, ft_i32vec *out);
/* Merge-rank BPE over initial symbols (in place; returns the new count). */
size_t ftp_tk_bpe_merge(const ft_tokenizer *t, ftp_tk_bpe_scratch *s, int32_t *sym, size_t n);

#endif
