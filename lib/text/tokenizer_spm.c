/* tokenizer_spm.c - SentencePiece tokenizer.model files (ModelProto) read
 * directly from the protobuf wire format, and encoded as sentencepiece's
 * BPE model does: the normalizer spec (dummy prefix, extra whitespace,
 * whitespace escaped to U+2581), then pairs merged highest piece score
 * first (leftmost on ties), user-defined pieces kept whole, unused pieces
 * resegmented, unknown pieces spelled as <0xNN> bytes under byte_fallback.
 * Control and unknown pieces (<s>, </s>, <unk>) are matched in the text as
 * special tokens, as the `tokenizers` conversion (LlamaTokenizerFast) does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "text/tokenizer_internal.h"

enum { SP_NORMAL = 1, SP_UNKNOWN, SP_CONTROL, SP_USER, SP_UNUSED, SP_BYTE };

/* ---- protobuf wire format ---- */
typedef struct { const unsigned char *p, *end; } pb;

static int pb_varint(pb *b, uint64_t *v)
{
	uint64_t r = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (b->p >= b->end) return -1;
		unsigned char c = *b->p++;
		r |= (uint64_t)(c & 0x7F) << shift;
		if (!(c & 0x80)) { *v = r; return 0; }
	}
	return -1;
}

/* Next field: number, wire type, and for LEN fields the payload. */
static int pb_field(pb *b, uint32_t *num, int *wt, uint64_t *val, pb *sub)
{
	uint64_t key;
	if (pb_varint(b, &key)) return -1;
	*num = (uint32_t)(key >> 3); *wt = (int)(key & 7);
	switch (*wt) {
	case 0: return pb_varint(b, val);
	case 1: if (b->end - b->p < 8) return -1; memcpy(val, b->p, 8); b->p += 8; return 0;
	case 5: {
		uint32_t x;
		if (b->end - b->p < 4) return -1;
		memcpy(&x, b->p, 4); b->p += 4; *val = x; return 0;
	}
	case 2:
		if (pb_varint(b, val) || *val > (uint64_t)(b->end - b->p)) return -1;
		sub->p = b->p; sub->end = b->p + *val; b->p += *val;
		return 0;
	default: return -1;
	}
}

typedef struct {
	int model_type, byte_fallback, ws_suffix;
	int32_t unk, bos, eos, pad;
	int dummy, remove_ws, escape_ws;
	const unsigned char *charsmap; size_t ncharsmap;
	char *name;
} spec;

static int parse_trainer(pb b, spec *s)
{
	uint32_t num; int wt; uint64_t v; pb sub;
	while (b.p < b.end) {
		if (pb_field(&b, &num, &wt, &v, &sub)) return -1;
		if (wt != 0) continue;
		switch (num) {
		case 3: s->model_type = (int)v; break;
		case 24: s->ws_suffix = (int)v; break;
		case 35: s->byte_fallback = (int)v; break;
		case 40: s->unk = (int32_t)v; break;
		case 41: s->bos = (int32_t)v; break;
		case 42: s->eos = (int32_t)v; break;
		case 43: s->pad = (int32_t)v; break;
		}
	}
	return 0;
}

static int parse_normalizer(pb b, spec *s)
{
	uint32_t num; int wt; uint64_t v; pb sub;
	while (b.p < b.end) {
		if (pb_field(&b, &num, &wt, &v, &sub)) return -1;
		if (num == 1 && wt == 2) {
			free(s->name);
			s->name = ft_xmalloc(v + 1);
			memcpy(s->name, sub.p, v); s->name[v] = 0;
		}
		if (num == 2 && wt == 2) { s->charsmap = sub.p; s->ncharsmap = v; }
		if (wt != 0) continue;
		if (num == 3) s->dummy = (int)v;
		if (num == 4) s->remove_ws = (int)v;
		if (num == 5) s->escape_ws = (int)v;
	}
	return 0;
}

static int parse_piece(ft_tokenizer *t, pb b, int32_t id)
{
	uint32_t num; int wt; uint64_t v; pb sub;
	const char *piece = ""; size_t plen = 0;
	float score = 0; int type = SP_NORMAL;
	while (b.p < b.end) {
		if (pb_field(&b, &num, &wt, &v, &sub)) return ft_fail("bad protobuf data in piece %d", id);
		if (num == 1 && wt == 2) { piece = (const char *)sub.p; plen = v; }
		else if (num == 2 && wt == 5) { uint32_t x = (uint32_t)v; memcpy(&score, &x, 4); }
		else if (num == 3 && wt == 0) type = (int)v;
	}
	if (ftp_tk_u8invalid(piece, plen) >= 0) return ft_fail("piece %d is not UTF-8", id);
	ftp_tk_add_token(t, piece, plen, id);
	if (ftp_tk_strmap_get(&t->vocab, piece, plen) < 0)   /* the first one wins */
		ftp_tk_strmap_put(&t->vocab, piece, plen, id);
	if (t->capscore < t->captok) {
		t->score = ft_xrealloc(t->score, t->captok * sizeof *t->score);
		t->ptype = ft_xrealloc(t->ptype, t->captok);
		t->capscore = t->captok;
	}
	t->score[id] = score;
	t->ptype[id] = (uint8_t)type;
	return 0;
}

static void add_special(ft_tokenizer *t, int32_t id, int special)
{
	ftp_tk_added *a = &t->added[t->nadded++];
	memset(a, 0, sizeof *a);
	a->content = ft_xstrdup(t->tok[id]); a->len = t->toklen[id];
	a->id = id; a->special = special;
}

/* precompiled_charsmap: uint32 trie size, a darts-clone double array,
 * then the NUL-terminated replacement strings its values point into. */
static int load_charsmap(ft_tokenizer *t, const unsigned char *p, size_t n)
{
	uint32_t tn;
	if (n < 4) return ft_fail("precompiled_charsmap is truncated");
	tn = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
	if (tn > n - 4 || tn % 4 || !tn) return ft_fail("precompiled_charsmap is malformed");
	t->sp_ntrie = tn / 4;
	t->sp_trie = ft_xmalloc(tn);
	for (size_t i = 0; i < t->sp_ntrie; i++) {
		const unsigned char *u = p + 4 + 4 * i;
		t->sp_trie[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
	}
	t->sp_nnormstr = n - 4 - tn;
	t->sp_normstr = ft_xmalloc(t->sp_nnormstr + 1);
	memcpy(t->sp_normstr, p + 4 + tn, t->sp_nnormstr);
	t->sp_normstr[t->sp_nnormstr] = 0;
	return 0;
}

int ftp_tk_load_spm(ft_tokenizer *t, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) return ft_fail("%s:", path);
	ftp_tk_buf data = {0};
	char chunk[1 << 16];
	size_t k;
	while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) ftp_tk_buf_add(&data, chunk, k);
	int bad = ferror(f);
	fclose(f);
	if (bad) { ftp_tk_buf_free(&data); return ft_fail("%s: read error", path); }
	/* found by make fuzz: an empty file left data.p NULL (NULL + 0 below) */
	if (data.n == 0) { ftp_tk_buf_free(&data); return ft_fail("%s: empty file", path); }

	spec s = { .model_type = 1, .unk = 0, .bos = 1, .eos = 2, .pad = -1,
		   .dummy = 1, .remove_ws = 1, .escape_ws = 1 };
	pb b = { (const unsigned char *)data.p, (const unsigned char *)data.p + data.n };
	uint32_t num; int wt; uint64_t v; pb sub;
	int32_t n = 0;
	int rc = -1;
	t->model = M_SPM;
	while (b.p < b.end) {
		if (pb_field(&b, &num, &wt, &v, &sub)) { ft_fail("bad protobuf data"); goto out; }
		if (wt != 2) continue;
		if (num == 1 && parse_piece(t, sub, n++)) goto out;
		if (num == 2 && parse_trainer(sub, &s)) { ft_fail("bad trainer_spec"); goto out; }
		if (num == 3 && parse_normalizer(sub, &s)) { ft_fail("bad normalizer_spec"); goto out; }
	}
	if (!n) { ft_fail("no pieces (not a SentencePiece model?)"); goto out; }
	if (s.model_type != 2) {
		ft_fail("model type %s is not supported (only BPE)",
			s.model_type == 1 ? "unigram" : s.model_type == 3 ? "word" : "char");
		goto out;
	}
	if (s.ncharsmap && load_charsmap(t, s.charsmap, s.ncharsmap)) goto out;
	if (s.ws_suffix) { ft_fail("treat_whitespace_as_suffix is not supported"); goto out; }
	t->sp_dummy_prefix = s.dummy;
	t->sp_remove_ws = s.remove_ws;
	t->sp_escape_ws = s.escape_ws;
	t->byte_fallback = s.byte_fallback;
	t->unk_id = s.unk >= 0 && s.unk < n ? s.unk : -1;

	t->added = ft_xcalloc((size_t)n, sizeof *t->added);
	size_t nuser = 0;
	for (int32_t i = 0; i < n; i++) {
		if (t->ptype[i] == SP_CONTROL || t->ptype[i] == SP_UNKNOWN) add_special(t, i, 1);
		if (t->ptype[i] == SP_USER) nuser++;
	}
	t->sp_user_tok = ft_xcalloc(nuser + 1, sizeof *t->sp_user_tok);
	ftp_tk_added **up = ft_xcalloc(nuser + 1, sizeof *up);
	for (int32_t i = 0; i < n; i++)
		if (t->ptype[i] == SP_USER) {
			ftp_tk_added *a = &t->sp_user_tok[t->sp_nuser];
			a->content = ft_xstrdup(t->tok[i]); a->len = t->toklen[i]; a->id = i;
			up[t->sp_nuser] = a;
			t->sp_nuser++;
		}
	ftp_tk_trie_build(&t->sp_user, up, t->sp_nuser);
	free(up);

	/* the decoder of the tokenizers conversion */
	t->have_decoder = 1;
	t->dec = ft_xcalloc(4, sizeof *t->dec);
	t->dec[0] = (ftp_tk_dec){ .kind = D_REPLACE, .a = ft_xstrdup("\xE2\x96\x81"), .alen = 3,
			      .b = ft_xstrdup(" "), .blen = 1 };
	t->dec[1] = (ftp_tk_dec){ .kind = D_BYTEFALLBACK };
	t->dec[2] = (ftp_tk_dec){ .kind = D_FUSE };
	t->ndec = 3;
	if (s.dummy) t->dec[t->ndec++] = (ftp_tk_dec){ .kind = D_STRIP, .ch = ' ', .start = 1 };

	t->info.add_bos = 1;
	if (s.bos >= 0 && s.bos < n) t->bos_s = ft_xstrdup(t->tok[s.bos]);
	if (s.eos >= 0 && s.eos < n) t->eos_s = ft_xstrdup(t->tok[s.eos]);
	if (s.pad >= 0 && s.pad < n) t->pad_s = ft_xstrdup(t->tok[s.pad]);
	rc = 0;
out:
	free(s.name);
	ftp_tk_buf_free(&data);
	if (rc) ft_fail_ctx("%s: ", path);
	return rc;
}

/* ---- encoding ---- */
typedef struct { uint32_t off, len; int32_t prev, next; int freeze; } sym;
typedef struct { float score; int32_t left, right; uint32_t size; } pair;

struct ftp_tk_spm_scratch {
	ftp_tk_buf norm;
	sym *s; size_t ns, caps;
	ftp_tk_heap h;              /* of pair */
	ftp_tk_strmap rev;          /* unused piece -> length of its left part */
	int prev_unk;
};

void ftp_tk_spm_scratch_free(ftp_tk_spm_scratch *s)
{
	if (!s) return;
	ftp_tk_buf_free(&s->norm);
	free(s->s); free(s->h.v);
	if (s->rev.slot) ftp_tk_strmap_free(&s->rev);
	free(s);
}

/* Longest charsmap rule matching a prefix of s (darts-clone
 * commonPrefixSearch): its length, and *val the replacement's offset. */
static size_t charsmap_match(const ft_tokenizer *t, const char *s, size_t n, uint32_t *val)
{
	const uint32_t *a = t->sp_trie;
	size_t best = 0, id = 0;
	uint32_t u = a[0];
	id ^= (u >> 10) << ((u & (1u << 9)) >> 6);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		id ^= c;
		if (id >= t->sp_ntrie) break;
		u = a[id];
		if ((u & ((1u << 31) | 0xFF)) != c) break;
		id ^= (u >> 10) << ((u & (1u << 9)) >> 6);
		if (id >= t->sp_ntrie) break;
		if ((u >> 8) & 1) { best = i + 1; *val = a[id] & ((1u << 31) - 1); }
	}
	return best;
}

/* Normalizer::NormalizePrefix: a user-defined piece as is, else the
 * longest charsmap rule, else one character. */
static size_t norm_prefix(const ft_tokenizer *t, const char *s, size_t n,
			  const char **out, size_t *olen)
{
	size_t ml = 0;
	if (!t->sp_user.empty && ftp_tk_trie_match(&t->sp_user, s, n, &ml) >= 0) {
		*out = s; *olen = ml;
		return ml;
	}
	uint32_t v = 0;
	if (t->sp_trie && (ml = charsmap_match(t, s, n, &v)) > 0 && v < t->sp_nnormstr) {
		*out = t->sp_normstr + v; *olen = strlen(*out);
		return ml;
	}
	ml = (size_t)ftp_tk_u8len((unsigned char)s[0]);
	if (ml > n) ml = n;
	*out = s; *olen = ml;
	return ml;
}

static void sp_normalize(const ft_tokenizer *t, const char *s, size_t n, ftp_tk_buf *out)
{
	const char *ws = t->sp_escape_ws ? "\xE2\x96\x81" : " ";
	size_t wl = t->sp_escape_ws ? 3 : 1, i = 0;
	const char *p; size_t pl;
	ftp_tk_buf_clear(out);
	ftp_tk_buf_add(out, "", 0);
	if (t->sp_remove_ws)   /* leading spaces, after normalization */
		while (i < n) {
			size_t k = norm_prefix(t, s + i, n - i, &p, &pl);
			if (!(pl == 1 && p[0] == ' ')) break;
			i += k;
		}
	if (i == n) return;
	if (t->sp_dummy_prefix) ftp_tk_buf_add(out, ws, wl);
	int prev_space = t->sp_remove_ws;
	while (i < n) {
		i += norm_prefix(t, s + i, n - i, &p, &pl);
		while (prev_space && pl && p[0] == ' ') { p++; pl--; }
		if (pl) {
			for (size_t k = 0; k < pl; k++) {
				if (p[k] == ' ' && t->sp_escape_ws) ftp_tk_buf_add(out, ws, wl);
				else ftp_tk_buf_add(out, p + k, 1);
			}
			prev_space = p[pl - 1] == ' ';
		}
		if (!t->sp_remove_ws) prev_space = 0;
	}
	if (t->sp_remove_ws)
		while (out->n >= wl && !memcmp(out->p + out->n - wl, ws, wl)) out->n -= wl;
}

/* The merge queue: highest score first, leftmost on ties. */
static int pair_before(const void *a, const void *b)
{
	const pair *x = a, *y = b;
	return x->score > y->score || (x->score == y->score && x->left < y->left);
}

static void heap_push(ftp_tk_spm_scratch *w, pair e)
{
	ftp_tk_heap_push(&w->h, &e, sizeof e, pair_before);
}

static pair heap_pop(ftp_tk_spm_scratch *w)
{
	pair top;
	ftp_tk_heap_pop(&w->h, &top, sizeof top, pair_before);
	return top;
}

/* An id in sentencepiece's pieces_ (normal, user-defined, unused), or -1. */
static int32_t piece_id(const ft_tokenizer *t, const char *p, size_t n)
{
	int32_t id = ftp_tk_strmap_get(&t->vocab, p, n);
	if (id < 0) return -1;
	int ty = t->ptype[id];
	return ty == SP_NORMAL || ty == SP_USER || ty == SP_UNUSED ? id : -1;
}

static void maybe_pair(const ft_tokenizer *t, ftp_tk_spm_scratch *w, int32_t l, int32_t r)
{
	if (l < 0 || r < 0 || w->s[l].freeze || w->s[r].freeze) return;
	const char *p = w->norm.p + w->s[l].off;
	uint32_t size = w->s[l].len + w->s[r].len;
	int32_t id = piece_id(t, p, size);
	if (id < 0) return;
	heap_push(w, (pair){ t->score[id], l, r, size });
	if (t->ptype[id] == SP_UNUSED) {
		if (!w->rev.slot) ftp_tk_strmap_init(&w->rev);
		ftp_tk_strmap_put(&w->rev, p, size, (int32_t)w->s[l].len);
	}
}

static void emit(const ft_tokenizer *t, ftp_tk_spm_scratch *w, const char *p, size_t n, ft_i32vec *out)
{
	int32_t id = ftp_tk_strmap_get(&t->vocab, p, n);
	if (id >= 0 && t->ptype[id] == SP_UNUSED && w->rev.slot) {
		int32_t left = ftp_tk_strmap_get(&w->rev, p, n);
		if (left > 0) {
			emit(t, w, p, (size_t)left, out);
			emit(t, w, p + left, n - (size_t)left, out);
			return;
		}
	}
	if (id >= 0 && t->ptype[id] != SP_UNKNOWN) { ft_i32vec_push(out, id); w->prev_unk = 0; return; }
	if (t->byte_fallback) {   /* unknown: its UTF-8 bytes as <0xNN> pieces */
		for (size_t k = 0; k < n; k++) {
			int32_t b = t->fallback_id[(unsigned char)p[k]];
			ft_i32vec_push(out, b >= 0 ? b : t->unk_id);
		}
		return;
	}
	/* without byte_fallback a run of unknown pieces is one <unk>, as
	 * SentencePieceProcessor::Encode merges them */
	if (t->unk_id >= 0 && !w->prev_unk) ft_i32vec_push(out, t->unk_id);
	w->prev_unk = 1;
}

int ftp_tk_spm_encode_piece(const ft_tokenizer *t, ftp_tk_work *wk, const char *s, size_t n,
			ft_i32vec *out)
{
	if (!wk->spm) wk->spm = ft_xcalloc(1, sizeof *wk->spm);
	ftp_tk_spm_scratch *w = wk->spm;
	sp_normalize(t, s, n, &w->norm);
	const char *p = w->norm.p;
	size_t len = w->norm.n;
	if (!len) return 0;
	if (w->rev.slot) ftp_tk_strmap_free(&w->rev);
	/* characters, or whole user-defined pieces (frozen) */
	w->ns = 0;
	for (size_t i = 0; i < len;) {
		size_t ml = 0;
		int freeze = !t->sp_user.empty && ftp_tk_trie_match(&t->sp_user, p + i, len - i, &ml) >= 0;
		if (!freeze) ml = (size_t)ftp_tk_u8len((unsigned char)p[i]);
		if (ml > len - i) ml = len - i;
		if (w->ns == w->caps) {
			w->caps = w->caps ? w->caps * 2 : 256;
			w->s = ft_xrealloc(w->s, w->caps * sizeof *w->s);
		}
		w->s[w->ns] = (sym){ (uint32_t)i, (uint32_t)ml, (int32_t)w->ns - 1,
				     (int32_t)w->ns + 1, freeze };
		w->ns++;
		i += ml;
	}
	w->s[w->ns - 1].next = -1;
	w->h.n = 0;
	for (size_t i = 1; i < w->ns; i++) maybe_pair(t, w, (int32_t)i - 1, (int32_t)i);
	while (w->h.n) {
		pair top = heap_pop(w);
		sym *l = &w->s[top.left], *r = &w->s[top.right];
		if (!l->len || !r->len || l->len + r->len != top.size) continue;
		l->len += r->len;
		l->next = r->next;
		if (r->next >= 0) w->s[r->next].prev = top.left;
		r->len = 0;
		maybe_pair(t, w, l->prev, top.left);
		maybe_pair(t, w, top.left, l->next);
	}
	w->prev_unk = 0;
	for (int32_t i = 0; i >= 0; i = w->s[i].next)
		emit(t, w, p + w->s[i].off, w->s[i].len, out);
	return 0;
}
