/* tokenizer_decode.c - ids to text as Tokenizer::decode in `tokenizers`:
 * ids become token strings (added tokens first, special ones dropped when
 * asked), then each decoder's decode_chain runs over the list in turn
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace) and the
 * results are concatenated.  Without a decoder tokens are joined by " ". */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "util/error.h"
#include "text/tokenizer_internal.h"

typedef struct { ftp_tk_buf *v; size_t n, cap; } toklist;

static ftp_tk_buf *tl_push(toklist *l)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = ft_xrealloc(l->v, l->cap * sizeof *l->v);
	}
	memset(&l->v[l->n], 0, sizeof l->v[0]);
	return &l->v[l->n++];
}

static void tl_free(toklist *l)
{
	for (size_t i = 0; i < l->n; i++) ftp_tk_buf_free(&l->v[i]);
	free(l->v);
	memset(l, 0, sizeof *l);
}

static void tl_add(toklist *l, const char *s, size_t n)
{
	ftp_tk_buf *b = tl_push(l);
	ftp_tk_buf_add(b, s, n);
}

static void dec_bytelevel(toklist *in, toklist *out)
{
	ftp_tk_buf raw = {0};
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->v[i].p ? in->v[i].p : "";
		size_t n = in->v[i].n, k = 0, mark = raw.n;
		while (k < n) {
			int l;
			int b = ftp_tk_cp2byte(ftp_tk_u8dec(s + k, &l));
			if (b < 0) break;
			char c = (char)b;
			ftp_tk_buf_add(&raw, &c, 1);
			k += (size_t)l;
		}
		if (k < n) {   /* a character outside the mapping: the token as is */
			raw.n = mark;
			ftp_tk_buf_add(&raw, s, n);
		}
	}
	ftp_tk_buf *o = tl_push(out);
	ftp_tk_u8lossy(o, raw.p ? raw.p : "", raw.n);
	ftp_tk_buf_free(&raw);
}

static void dec_replace(const ftp_tk_dec *d, toklist *in, toklist *out)
{
	for (size_t i = 0; i < in->n; i++) {
		ftp_tk_buf *o = tl_push(out);
		const char *s = in->v[i].p ? in->v[i].p : "";
		size_t n = in->v[i].n, prev = 0;
		ftp_tk_buf_add(o, "", 0);
		for (size_t k = 0; d->alen && k + d->alen <= n;) {
			if (!memcmp(s + k, d->a, d->alen)) {
				ftp_tk_buf_add(o, s + prev, k - prev);
				ftp_tk_buf_add(o, d->b, d->blen);
				k += d->alen; prev = k;
			} else k++;
		}
		ftp_tk_buf_add(o, s + prev, n - prev);
	}
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static void flush_bytes(ftp_tk_buf *bytes, toklist *out)
{
	if (!bytes->n) return;
	if (ftp_tk_u8invalid(bytes->p, bytes->n) < 0) tl_add(out, bytes->p, bytes->n);
	else for (size_t k = 0; k < bytes->n; k++) tl_add(out, "\xEF\xBF\xBD", 3);
	bytes->n = 0;
}

static void dec_bytefallback(toklist *in, toklist *out)
{
	ftp_tk_buf bytes = {0};
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->v[i].p ? in->v[i].p : "";
		int hi, lo;
		if (in->v[i].n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' &&
		    (hi = hexval(s[3])) >= 0 && (lo = hexval(s[4])) >= 0) {
			char c = (char)(hi * 16 + lo);
			ftp_tk_buf_add(&bytes, &c, 1);
			continue;
		}
		flush_bytes(&bytes, out);
		tl_add(out, s, in->v[i].n);
	}
	flush_bytes(&bytes, out);
	ftp_tk_buf_free(&bytes);
}

static void dec_fuse(toklist *in, toklist *out)
{
	ftp_tk_buf *o = tl_push(out);
	ftp_tk_buf_add(o, "", 0);
	for (size_t i = 0; i < in->n; i++) ftp_tk_buf_add(o, in->v[i].p, in->v[i].n);
}

static void dec_strip(const ftp_tk_dec *d, toklist *in, toklist *out)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->v[i].p ? in->v[i].p : "";
		size_t a = 0, b = in->v[i].n;
		int l;
		for (int k = 0; k < d->start && a < b && ftp_tk_u8dec(s + a, &l) == d->ch; k++)
			a += (size_t)l;
		for (int k = 0; k < d->stop && b > a; k++) {
			size_t p = b - 1;
			while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
			if (ftp_tk_u8dec(s + p, &l) != d->ch) break;
			b = p;
		}
		tl_add(out, s + a, b - a);
	}
}

static void dec_metaspace(const ftp_tk_dec *d, toklist *in, toklist *out)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->v[i].p ? in->v[i].p : "";
		size_t n = in->v[i].n, rl = (size_t)d->replen;
		ftp_tk_buf *o = tl_push(out);
		ftp_tk_buf_add(o, "", 0);
		for (size_t k = 0; k < n;) {
			if (k + rl <= n && !memcmp(s + k, d->rep, rl)) {
				if (!(i == 0 && d->prepend_scheme != PS_NEVER)) ftp_tk_buf_add(o, " ", 1);
				k += rl;
			} else { ftp_tk_buf_add(o, s + k, 1); k++; }
		}
	}
}

char *ft_tokenizer_decode(const ft_tokenizer *t, const int32_t *ids, size_t n,
			  int skip_special)
{
	toklist a = {0}, b = {0};
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || (size_t)ids[i] >= t->ntok || !t->tok[ids[i]]) {
			tl_free(&a);
			ft_fail("token id %d is not in the vocabulary (size %zu)", ids[i], t->ntok);
			return NULL;
		}
		if (skip_special && t->is_special[ids[i]]) continue;
		tl_add(&a, t->tok[ids[i]], t->toklen[ids[i]]);
	}
	ftp_tk_buf res = {0};
	if (!t->have_decoder) {
		for (size_t i = 0; i < a.n; i++) {
			if (i) ftp_tk_buf_add(&res, " ", 1);
			ftp_tk_buf_add(&res, a.v[i].p, a.v[i].n);
		}
	} else {
		for (size_t k = 0; k < t->ndec; k++) {
			const ftp_tk_dec *d = &t->dec[k];
			switch (d->kind) {
			case D_BYTELEVEL: dec_bytelevel(&a, &b); break;
			case D_REPLACE: dec_replace(d, &a, &b); break;
			case D_BYTEFALLBACK: dec_bytefallback(&a, &b); break;
			case D_FUSE: dec_fuse(&a, &b); break;
			case D_STRIP: dec_strip(d, &a, &b); break;
			case D_METASPACE: dec_metaspace(d, &a, &b); break;
			}
			tl_free(&a);
			a = b;
			memset(&b, 0, sizeof b);
		}
		for (size_t i = 0; i < a.n; i++) ftp_tk_buf_add(&res, a.v[i].p, a.v[i].n);
	}
	tl_free(&a);
	ftp_tk_buf_add(&res, "", 0);
	return res.p;
}

/* s with each byte that does not start a valid UTF-8 sequence as U+FFFD. */
static char *utf8_lossy(char *s)
{
	size_t n = strlen(s), o = 0;
	char *out = ft_xmalloc(3 * n + 1);
	for (size_t i = 0; i < n;) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
		if (l < 1) {
			memcpy(out + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(out + o, s + i, (size_t)l);
		o += (size_t)l;
		i += (size_t)l;
	}
	out[o] = 0;
	free(s);
	return out;
}

char *ft_tokenizer_decode_lossy(const ft_tokenizer *t, const int32_t *ids, size_t n,
				int skip_special)
{
	int32_t *known = ft_xmalloc((n + 1) * sizeof *known);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (ids[i] >= 0 && (size_t)ids[i] < t->ntok && t->tok[ids[i]]) known[k++] = ids[i];
	char *s = ft_tokenizer_decode(t, known, k, skip_special);
	free(known);
	return utf8_lossy(s ? s : ft_xstrdup(""));
}
