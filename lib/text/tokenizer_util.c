/* tokenizer_util.c - hash maps, buffers, UTF-8 helpers, the GPT-2 byte
 * mapping and the added-token trie used by the tokenizer files. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "util/error.h"
#include "text/tokenizer_internal.h"

/* ---- hashing: FNV-1a over 8-byte words, good enough for short keys ---- */
uint64_t ftp_tk_hash(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 0xcbf29ce484222325ull ^ (n * 0x9E3779B97F4A7C15ull);
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
		s += 8; n -= 8;
	}
	while (n--) h = (h ^ *s++) * 0x100000001b3ull;
	h ^= h >> 32;
	return h * 0x9E3779B97F4A7C15ull;
}

void ftp_tk_strmap_init(ftp_tk_strmap *m)
{
	memset(m, 0, sizeof *m);
	m->cap = 64;
	m->slot = ft_xcalloc(m->cap, sizeof *m->slot);
}

void ftp_tk_strmap_free(ftp_tk_strmap *m)
{
	for (size_t i = 0; i < m->n; i++) free(m->key[i]);
	free(m->key); free(m->klen); free(m->val); free(m->slot);
	memset(m, 0, sizeof *m);
}

static size_t strmap_find(const ftp_tk_strmap *m, const char *k, size_t len)
{
	size_t mask = m->cap - 1, i = ftp_tk_hash(k, len) & mask;
	for (;;) {
		uint32_t e = m->slot[i];
		if (!e) return i;
		e--;
		if (m->klen[e] == len && !memcmp(m->key[e], k, len)) return i;
		i = (i + 1) & mask;
	}
}

static void strmap_grow(ftp_tk_strmap *m)
{
	free(m->slot);
	m->cap *= 2;
	m->slot = ft_xcalloc(m->cap, sizeof *m->slot);
	for (size_t e = 0; e < m->n; e++)
		m->slot[strmap_find(m, m->key[e], m->klen[e])] = (uint32_t)e + 1;
}

void ftp_tk_strmap_put(ftp_tk_strmap *m, const char *k, size_t len, int32_t v)
{
	size_t i = strmap_find(m, k, len);
	if (m->slot[i]) { m->val[m->slot[i] - 1] = v; return; }
	if (m->n == m->ncap) {
		m->ncap = m->ncap ? m->ncap * 2 : 256;
		m->key = ft_xrealloc(m->key, m->ncap * sizeof *m->key);
		m->klen = ft_xrealloc(m->klen, m->ncap * sizeof *m->klen);
		m->val = ft_xrealloc(m->val, m->ncap * sizeof *m->val);
	}
	char *c = ft_xmalloc(len + 1);
	memcpy(c, k, len); c[len] = 0;
	m->key[m->n] = c; m->klen[m->n] = (uint32_t)len; m->val[m->n] = v;
	m->slot[i] = (uint32_t)++m->n;
	if (m->n * 2 > m->cap) strmap_grow(m);
}

int32_t ftp_tk_strmap_get(const ftp_tk_strmap *m, const char *k, size_t len)
{
	if (!m->slot) return -1;
	uint32_t e = m->slot[strmap_find(m, k, len)];
	return e ? m->val[e - 1] : -1;
}

void ftp_tk_mergemap_init(ftp_tk_mergemap *m, size_t expect)
{
	m->cap = 64;
	while (m->cap < expect * 2 + 2) m->cap *= 2;
	m->key = ft_xcalloc(m->cap, sizeof *m->key);
	m->rank = ft_xmalloc(m->cap * sizeof *m->rank);
	m->id = ft_xmalloc(m->cap * sizeof *m->id);
	m->n = 0;
}

void ftp_tk_mergemap_free(ftp_tk_mergemap *m)
{
	free(m->key); free(m->rank); free(m->id);
	memset(m, 0, sizeof *m);
}

/* A repeated pair overwrites: the `tokenizers` merge map is a HashMap
 * collected from the ordered list, where the last duplicate wins. */
void ftp_tk_mergemap_put(ftp_tk_mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
	if ((m->n + 1) * 2 > m->cap) {
		ftp_tk_mergemap old = *m;
		ftp_tk_mergemap_init(m, old.cap);
		for (size_t i = 0; i < old.cap; i++)
			if (old.key[i]) {
				uint64_t k = old.key[i] - 1;
				ftp_tk_mergemap_put(m, (int32_t)(k >> 32), (int32_t)(uint32_t)k,
						old.rank[i], old.id[i]);
			}
		ftp_tk_mergemap_free(&old);
	}
	uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
	uint64_t h = k * 0x9E3779B97F4A7C15ull;
	size_t mask = m->cap - 1, i = (h >> 29) & mask;
	while (m->key[i] && m->key[i] != k) i = (i + 1) & mask;
	if (m->key[i]) {
		m->rank[i] = rank; m->id[i] = id;
		return;
	}
	m->key[i] = k; m->rank[i] = rank; m->id[i] = id; m->n++;
}

void ftp_tk_buf_reserve(ftp_tk_buf *b, size_t need)
{
	if (need <= b->cap) return;
	size_t cap = b->cap ? b->cap * 2 : 256;
	while (cap < need) cap *= 2;
	b->p = ft_xrealloc(b->p, cap);
	b->cap = cap;
}

void ftp_tk_buf_add(ftp_tk_buf *b, const void *p, size_t n)
{
	ftp_tk_buf_reserve(b, b->n + n + 1);
	if (n) memcpy(b->p + b->n, p, n);
	b->n += n;
	b->p[b->n] = 0;
}

void ftp_tk_buf_free(ftp_tk_buf *b) { free(b->p); memset(b, 0, sizeof *b); }

/* ---- UTF-8 ---- */
int32_t ftp_tk_u8dec(const char *s, int *n)
{
	const unsigned char *u = (const unsigned char *)s;
	if (u[0] < 0x80) { *n = 1; return u[0]; }
	if (u[0] < 0xE0) { *n = 2; return ((u[0] & 0x1F) << 6) | (u[1] & 0x3F); }
	if (u[0] < 0xF0) {
		*n = 3;
		return ((u[0] & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F);
	}
	*n = 4;
	return ((u[0] & 0x07) << 18) | ((u[1] & 0x3F) << 12) | ((u[2] & 0x3F) << 6) | (u[3] & 0x3F);
}

int ftp_tk_u8enc(int32_t cp, char *out)
{
	unsigned char *o = (unsigned char *)out;
	if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
	if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
	if (cp < 0x10000) {
		o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F);
		o[2] = 0x80 | (cp & 0x3F); return 3;
	}
	o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
	o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
	return 4;
}

/* Length of the valid prefix of a UTF-8 sequence at s (Unicode table 3-7):
 * returns the full length when valid, else -(bytes of the maximal subpart). */
static int u8_check(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	int len; unsigned char lo = 0x80, hi = 0xBF;
	if (c < 0x80) return 1;
	if (c >= 0xC2 && c <= 0xDF) len = 2;
	else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		if (c == 0xE0) lo = 0xA0;
		if (c == 0xED) hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		if (c == 0xF0) lo = 0x90;
		if (c == 0xF4) hi = 0x8F;
	} else return -1;
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n) return -i;
		unsigned char d = s[i];
		unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
		if (d < l || d > h) return -i;
	}
	return len;
}

long ftp_tk_u8invalid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		if (u[i] < 0x80) { i++; continue; }
		int k = u8_check(u + i, n - i);
		if (k < 0) return (long)i;
		i += (size_t)k;
	}
	return -1;
}

void ftp_tk_u8lossy(ftp_tk_buf *out, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0;
	while (i < n) {
		int k = u[i] < 0x80 ? 1 : u8_check(u + i, n - i);
		if (k > 0) { i += (size_t)k; continue; }
		ftp_tk_buf_add(out, s + run, i - run);
		ftp_tk_buf_add(out, "\xEF\xBF\xBD", 3);
		i += (size_t)-k;
		run = i;
	}
	ftp_tk_buf_add(out, s + run, n - run);
}

int ftp_tk_is_space(int32_t c)
{
	return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
	       c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int ftp_tk_is_word(int32_t c)
{
	if (c < 0x80)
		return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		       (c >= 'A' && c <= 'Z') || c == '_';
	if (c == 0x200C || c == 0x200D) return 1;
	switch (utf8proc_category(c)) {
	case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC:
	case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_PC:
		return 1;
	default:
		return 0;
	}
}

/* ---- GPT-2 bytes_to_unicode ---- */
#define R(a) a, a + 1, a + 2, a + 3, a + 4, a + 5, a + 6, a + 7
const uint16_t ftp_tk_byte2cp[256] = {
	/* 0..32 -> 256..288 */
	R(256), R(264), R(272), R(280), 288,
	/* 33..126 -> themselves */
	33, 34, 35, 36, 37, 38, 39, R(40), R(48), R(56), R(64), R(72), R(80),
	R(88), R(96), R(104), R(112), 120, 121, 122, 123, 124, 125, 126,
	/* 127..160 -> 289..322 */
	289, R(290), R(298), R(306), 314, 315, 316, 317, 318, 319, 320, 321, 322,
	/* 161..172 themselves, 173 -> 323, 174..255 themselves */
	161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 323,
	174, 175, R(176), R(184), R(192), R(200), R(208), R(216), R(224),
	R(232), R(240), R(248),
};
#undef R

static int16_t cp_inv[324];

static void cp_inv_init(void)
{
	for (int i = 0; i < 324; i++) cp_inv[i] = -1;
	for (int b = 0; b < 256; b++) cp_inv[ftp_tk_byte2cp[b]] = (int16_t)b;
}

int ftp_tk_cp2byte(int32_t cp)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, cp_inv_init);
	return cp >= 0 && cp < 324 ? cp_inv[cp] : -1;
}

/* ---- vocabulary ---- */
int32_t ftp_tk_add_token(ft_tokenizer *t, const char *s, size_t len, int32_t id)
{
	if (id < 0 || id > 50000000) return ft_fail("token id %d out of range", id);
	if ((size_t)id >= t->ntok) {
		size_t n = (size_t)id + 1;
		if (n > t->captok) {   /* geometric: ids mostly arrive in order */
			size_t cap = t->captok ? t->captok * 2 : 1024;
			while (cap < n) cap *= 2;
			t->tok = ft_xrealloc(t->tok, cap * sizeof *t->tok);
			t->toklen = ft_xrealloc(t->toklen, cap * sizeof *t->toklen);
			t->captok = cap;
		}
		for (size_t i = t->ntok; i < n; i++) { t->tok[i] = NULL; t->toklen[i] = 0; }
		t->ntok = n;
	}
	free(t->tok[id]);
	t->tok[id] = ft_xmalloc(len + 1);
	memcpy(t->tok[id], s, len);
	t->tok[id][len] = 0;
	t->toklen[id] = (uint32_t)len;
	return id;
}

/* ---- added-token trie ---- */
static int32_t trie_node(ftp_tk_trie *tr)
{
	if (tr->n == tr->cap) {
		tr->cap = tr->cap ? tr->cap * 2 : 64;
		tr->next = ft_xrealloc(tr->next, tr->cap * sizeof *tr->next);
		tr->tok = ft_xrealloc(tr->tok, tr->cap * sizeof *tr->tok);
	}
	memset(tr->next[tr->n], 0, sizeof tr->next[0]);
	tr->tok[tr->n] = -1;
	return (int32_t)tr->n++;
}

void ftp_tk_trie_build(ftp_tk_trie *tr, ftp_tk_added **toks, size_t n)
{
	memset(tr, 0, sizeof *tr);
	trie_node(tr);
	for (size_t i = 0; i < n; i++) {
		const unsigned char *s = (const unsigned char *)toks[i]->content;
		size_t len = toks[i]->len;
		if (!len) continue;   /* aho-corasick never reports empty patterns usefully */
		int32_t node = 0;
		for (size_t k = 0; k < len; k++) {
			if (!tr->next[node][s[k]]) {
				int32_t c = trie_node(tr);
				tr->next[node][s[k]] = c;
			}
			node = tr->next[node][s[k]];
		}
		if (tr->tok[node] < 0) tr->tok[node] = (int32_t)i;  /* first pattern wins */
		tr->first[s[0]] = 1;
		tr->empty = 0;
	}
	tr->empty = tr->n == 1;
}

void ftp_tk_trie_free(ftp_tk_trie *tr)
{
	free(tr->next); free(tr->tok);
	memset(tr, 0, sizeof *tr);
}

int ftp_tk_trie_match(const ftp_tk_trie *tr, const char *s, size_t n, size_t *mlen)
{
	const unsigned char *u = (const unsigned char *)s;
	int32_t node = 0, best = -1;
	for (size_t k = 0; k < n; k++) {
		node = tr->next[node][u[k]];
		if (!node) break;
		if (tr->tok[node] >= 0) { best = tr->tok[node]; *mlen = k + 1; }
	}
	return best;
}

/* `tokenizers` runs these patterns with Oniguruma, whose Unicode \\w is
 * Letter | Mark | Number | Connector_Punctuation; PCRE2 10.42's UCP \\w
 * lacks marks and Pc, so \\w (and \\W outside a class) are spelled out. */
static char *onig_compat(const char *p)
{
	static const char W[] = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
	ftp_tk_buf b = {0};
	int in_class = 0;
	for (size_t i = 0; p[i]; i++) {
		if (p[i] == '\\' && p[i + 1]) {
			if (p[i + 1] == 'w') {
				if (!in_class) ftp_tk_buf_add(&b, "[", 1);
				ftp_tk_buf_add(&b, W, sizeof W - 1);
				if (!in_class) ftp_tk_buf_add(&b, "]", 1);
			} else if (p[i + 1] == 'W' && !in_class) {
				ftp_tk_buf_add(&b, "[^", 2);
				ftp_tk_buf_add(&b, W, sizeof W - 1);
				ftp_tk_buf_add(&b, "]", 1);
			} else
				ftp_tk_buf_add(&b, p + i, 2);
			i++;
			continue;
		}
		if (p[i] == '[' && !in_class) {
			in_class = 1;
			ftp_tk_buf_add(&b, p + i, 1);
			/* a ']' right after '[' or '[^' is literal */
			if (p[i + 1] == '^') ftp_tk_buf_add(&b, p + ++i, 1);
			if (p[i + 1] == ']') ftp_tk_buf_add(&b, p + ++i, 1);
			continue;
		}
		if (p[i] == ']' && in_class) in_class = 0;
		ftp_tk_buf_add(&b, p + i, 1);
	}
	ftp_tk_buf_add(&b, "", 0);
	return b.p;
}

pcre2_code *ftp_tk_regex(const char *pattern, int literal)
{
	int err; PCRE2_SIZE off;
	char *conv = literal ? NULL : onig_compat(pattern);
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)(conv ? conv : pattern), PCRE2_ZERO_TERMINATED,
				       literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP,
				       &err, &off, NULL);
	free(conv);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(err, msg, sizeof msg);
		ft_fail("bad regex /%s/ at offset %zu: %s", pattern, (size_t)off, (char *)msg);
		return NULL;
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* falls back to the interpreter */
	return re;
}
