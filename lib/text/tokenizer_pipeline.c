/* tokenizer_pipeline.c - encode as Tokenizer::encode in `tokenizers`:
 *   1. added tokens that are not `normalized` are cut out of the raw text
 *      (leftmost-longest, with single_word / lstrip / rstrip);
 *   2. each remaining piece is normalized on its own, then the `normalized`
 *      added tokens are cut out of it;
 *   3. the pre-tokenizer steps split the pieces into words;
 *   4. each word goes through the model; 5. the post-processor adds
 *      bos/eos when asked.
 * Also the steps that finish loading (tries, byte-level vocabulary). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "util/error.h"
#include "text/tokenizer_internal.h"

void ftp_tk_span_push(ftp_tk_spanvec *v, size_t s, size_t e, int32_t tok)
{
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 32;
		v->v = ft_xrealloc(v->v, v->cap * sizeof *v->v);
	}
	v->v[v->n++] = (ftp_tk_span){ s, e, tok };
}

/* ---- scratch pool ---- */
static ftp_tk_work *work_new(const ft_tokenizer *t)
{
	ftp_tk_work *w = ft_xcalloc(1, sizeof *w);
	w->bpe = ftp_tk_bpe_scratch_new();
	w->md = pcre2_match_data_create(16, NULL);
	w->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
	w->mctx = pcre2_match_context_create(NULL);
	if (!w->md || !w->jit || !w->mctx) abort();
	pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
	w->npre = t->npre;
	w->pbuf = ft_xcalloc(t->npre + 1, sizeof *w->pbuf);
	w->pspan = ft_xcalloc(t->npre + 1, sizeof *w->pspan);
	return w;
}

void ftp_tk_work_free(ftp_tk_work *w)
{
	if (!w) return;
	ftp_tk_bpe_scratch_free(w->bpe);
	ftp_tk_spm_scratch_free(w->spm);
	pcre2_match_data_free(w->md);
	pcre2_match_context_free(w->mctx);
	pcre2_jit_stack_free(w->jit);
	ftp_tk_buf_free(&w->nb[0]); ftp_tk_buf_free(&w->nb[1]);
	free(w->added1.v); free(w->added2.v);
	for (size_t i = 0; i <= w->npre; i++) { ftp_tk_buf_free(&w->pbuf[i]); free(w->pspan[i].v); }
	free(w->pbuf); free(w->pspan);
	free(w);
}

static ftp_tk_work *work_get(const ft_tokenizer *tc)
{
	ft_tokenizer *t = (ft_tokenizer *)tc;   /* the pool is the one mutable part */
	ftp_tk_work *w = NULL;
	pthread_mutex_lock(&t->lock);
	if (t->npool) w = t->pool[--t->npool];
	pthread_mutex_unlock(&t->lock);
	return w ? w : work_new(t);
}

static void work_put(const ft_tokenizer *tc, ftp_tk_work *w)
{
	ft_tokenizer *t = (ft_tokenizer *)tc;
	pthread_mutex_lock(&t->lock);
	if (t->npool == t->cappool) {
		t->cappool = t->cappool ? t->cappool * 2 : 8;
		t->pool = ft_xrealloc(t->pool, t->cappool * sizeof *t->pool);
	}
	t->pool[t->npool++] = w;
	pthread_mutex_unlock(&t->lock);
}

/* ---- regex matching ---- */
int ftp_tk_find_matches(ftp_tk_work *w, const pcre2_code *re, const char *s, size_t n,
		    ftp_tk_spanvec *out)
{
	size_t prev = 0, at = 0;
	out->n = 0;
	while (at <= n) {
		int rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, w->md, w->mctx);
		if (rc == PCRE2_ERROR_NOMATCH) break;
		if (rc < 0) {
			PCRE2_UCHAR msg[256];
			pcre2_get_error_message(rc, msg, sizeof msg);
			return ft_fail("regex match failed: %s", (char *)msg);
		}
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
		size_t ms = ov[0], me = ov[1];
		if (me == ms) {   /* empty match: step over one character */
			if (ms >= n) break;
			at = ms + (size_t)ftp_tk_u8len((unsigned char)s[ms]);
			continue;
		}
		if (prev != ms) ftp_tk_span_push(out, prev, ms, 0);
		ftp_tk_span_push(out, ms, me, 1);
		prev = at = me;
	}
	if (prev != n) ftp_tk_span_push(out, prev, n, 0);
	return 0;
}

/* ---- normalizers ---- */
static int is_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) if ((unsigned char)s[i] >= 0x80) return 0;
	return 1;
}

static int unicode_norm(int kind, const char *s, size_t n, ftp_tk_buf *out)
{
	if (is_ascii(s, n)) { ftp_tk_buf_add(out, s, n); return 0; }
	int opt = UTF8PROC_STABLE;
	if (kind == N_NFC || kind == N_NFKC) opt |= UTF8PROC_COMPOSE;
	else opt |= UTF8PROC_DECOMPOSE;
	if (kind == N_NFKC || kind == N_NFKD) opt |= UTF8PROC_COMPAT;
	utf8proc_uint8_t *r = NULL;
	utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
					    &r, (utf8proc_option_t)opt);
	if (len < 0) return ft_fail("unicode normalization failed: %s", utf8proc_errmsg(len));
	ftp_tk_buf_add(out, r, (size_t)len);
	free(r);
	return 0;
}

static void replace_all(ftp_tk_work *w, const ftp_tk_norm *m, const char *s, size_t n, ftp_tk_buf *out)
{
	size_t prev = 0;
	if (m->a) {   /* literal: non-overlapping, left to right */
		if (!m->alen) { ftp_tk_buf_add(out, s, n); return; }
		for (size_t i = 0; i + m->alen <= n;) {
			if (!memcmp(s + i, m->a, m->alen)) {
				ftp_tk_buf_add(out, s + prev, i - prev);
				ftp_tk_buf_add(out, m->b, m->blen);
				i += m->alen; prev = i;
			} else i++;
		}
	} else {
		ftp_tk_spanvec sp = {0};
		if (!ftp_tk_find_matches(w, m->re, s, n, &sp))
			for (size_t i = 0; i < sp.n; i++)
				if (sp.v[i].tok) {
					ftp_tk_buf_add(out, s + prev, sp.v[i].s - prev);
					ftp_tk_buf_add(out, m->b, m->blen);
					prev = sp.v[i].e;
				}
		free(sp.v);
	}
	ftp_tk_buf_add(out, s + prev, n - prev);
}

static void lowercase(const char *s, size_t n, ftp_tk_buf *out)
{
	char tmp[8];
	for (size_t i = 0; i < n;) {
		int k;
		int32_t c = ftp_tk_u8dec(s + i, &k);
		i += (size_t)k;
		if (c == 0x130) { ftp_tk_buf_add(out, "i\xCC\x87", 3); continue; }  /* full mapping */
		ftp_tk_buf_add(out, tmp, (size_t)ftp_tk_u8enc(utf8proc_tolower(c), tmp));
	}
}

static void strip(const ftp_tk_norm *m, const char *s, size_t n, ftp_tk_buf *out, int *keep)
{
	size_t a = 0, b = n;
	int k;
	while (m->left && a < b && ftp_tk_is_space(ftp_tk_u8dec(s + a, &k))) a += (size_t)k;
	while (m->right && b > a) {
		size_t p = b - 1;
		while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
		if (!ftp_tk_is_space(ftp_tk_u8dec(s + p, &k))) break;
		b = p;
	}
	if (a) *keep = 0;
	ftp_tk_buf_add(out, s + a, b - a);
}

/* Normalize s[0..n) with every normalizer; the result is in w->nb.
 * *keep stays 1 while the result still starts at the input's first
 * character (HF's offsets_original().0 == 0 for Metaspace "first"). */
static int normalize(const ft_tokenizer *t, ftp_tk_work *w, const char *s, size_t n,
		     const char **res, size_t *rlen, int *keep)
{
	int cur = 0;
	ftp_tk_buf_clear(&w->nb[0]);
	ftp_tk_buf_add(&w->nb[0], s, n);
	for (size_t i = 0; i < t->nnorm; i++) {
		const ftp_tk_norm *m = &t->norm[i];
		ftp_tk_buf *in = &w->nb[cur], *out = &w->nb[!cur];
		ftp_tk_buf_clear(out);
		switch (m->kind) {
		case N_NFC: case N_NFKC: case N_NFD: case N_NFKD:
			if (unicode_norm(m->kind, in->p, in->n, out)) return -1;
			break;
		case N_PREPEND:
			if (in->n) ftp_tk_buf_add(out, m->a, m->alen);
			ftp_tk_buf_add(out, in->p, in->n);
			break;
		case N_REPLACE:
			replace_all(w, m, in->p, in->n, out);
			if (!m->blen && in->n && (!out->n || out->p[0] != in->p[0])) *keep = 0;
			break;
		case N_LOWER: lowercase(in->p, in->n, out); break;
		case N_STRIP: strip(m, in->p, in->n, out, keep); break;
		}
		cur = !cur;
	}
	*res = w->nb[cur].p ? w->nb[cur].p : "";
	*rlen = w->nb[cur].n;
	return 0;
}

/* ---- added tokens (AddedVocabulary::find_matches) ---- */
static int ends_with_word(const char *s, size_t n)
{
	if (!n) return 0;
	size_t p = n - 1;
	int k;
	while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
	return ftp_tk_is_word(ftp_tk_u8dec(s + p, &k));
}

static void find_added(const ftp_tk_trie *tr, ftp_tk_added *const *toks, const char *s, size_t n,
		       ftp_tk_spanvec *out)
{
	size_t start_offset = 0;
	const unsigned char *u = (const unsigned char *)s;
	out->n = 0;
	for (size_t i = 0; i < n && !tr->empty;) {
		size_t mlen = 0;
		int ti;
		if (!tr->first[u[i]] || (ti = ftp_tk_trie_match(tr, s + i, n - i, &mlen)) < 0) {
			i++;
			continue;
		}
		const ftp_tk_added *a = toks[ti];
		size_t start = i, stop = i + mlen;
		i = stop;   /* the automaton resumes after the raw match */
		if (a->single_word) {
			int k;
			int start_space = start == 0 || !ends_with_word(s, start);
			int stop_space = stop == n || !ftp_tk_is_word(ftp_tk_u8dec(s + stop, &k));
			if (!start_space || !stop_space) continue;
		}
		if (a->lstrip) {
			size_t ns = start;
			while (ns > 0) {
				size_t p = ns - 1;
				int k;
				while (p > 0 && (u[p] & 0xC0) == 0x80) p--;
				if (!ftp_tk_is_space(ftp_tk_u8dec(s + p, &k))) break;
				ns = p;
			}
			start = ns > start_offset ? ns : start_offset;
		}
		if (a->rstrip) {
			int k;
			while (stop < n && ftp_tk_is_space(ftp_tk_u8dec(s + stop, &k))) stop += (size_t)k;
		}
		if (start_offset < start) ftp_tk_span_push(out, start_offset, start, -1);
		ftp_tk_span_push(out, start, stop, a->id);
		start_offset = stop;
	}
	if (start_offset != n) ftp_tk_span_push(out, start_offset, n, -1);
}

/* ---- pre-tokenizers ---- */
static int model_word(const ft_tokenizer *t, ftp_tk_work *w, const char *s, size_t n, ft_i32vec *out)
{
	return ftp_tk_bpe_word(t, w->bpe, s, n, out);
}

static int pre_step(const ft_tokenizer *t, ftp_tk_work *w, size_t step, const char *s,
		    size_t n, int origin, ft_i32vec *out);

/* Apply a Split behaviour to match spans (SplitDelimiterBehavior in HF)
 * and recurse into the kept pieces. */
static int split_behave(const ft_tokenizer *t, ftp_tk_work *w, size_t step, const char *s,
			int origin, ftp_tk_spanvec *m, int behavior, int invert, ft_i32vec *out)
{
	size_t k = 0;
	int prevm = 0;
	if (invert) for (size_t i = 0; i < m->n; i++) m->v[i].tok = !m->v[i].tok;
	switch (behavior) {
	case B_ISOLATED:
		for (size_t i = 0; i < m->n; i++) m->v[i].tok = 0;
		k = m->n;
		break;
	case B_REMOVED:
		k = m->n;
		break;
	case B_CONTIG:
		for (size_t i = 0; i < m->n; i++) {
			int im = m->v[i].tok;
			if (k && im == prevm) m->v[k - 1].e = m->v[i].e;
			else m->v[k++] = (ftp_tk_span){ m->v[i].s, m->v[i].e, 0 };
			prevm = im;
		}
		break;
	case B_PREV:
		for (size_t i = 0; i < m->n; i++) {
			int im = m->v[i].tok;
			if (im && !prevm && k) m->v[k - 1].e = m->v[i].e;
			else m->v[k++] = (ftp_tk_span){ m->v[i].s, m->v[i].e, 0 };
			prevm = im;
		}
		break;
	case B_NEXT: {
		/* right to left, then the kept spans are in reverse order */
		size_t j = m->n;
		while (j--) {
			int im = m->v[j].tok;
			ftp_tk_span sp = m->v[j];
			if (im && !prevm && k) m->v[m->n - k].s = sp.s;
			else { k++; m->v[m->n - k] = (ftp_tk_span){ sp.s, sp.e, 0 }; }
			prevm = im;
		}
		memmove(m->v, m->v + (m->n - k), k * sizeof *m->v);
		break;
	}
	}
	for (size_t i = 0; i < k; i++) {
		if (m->v[i].tok) continue;   /* removed delimiter */
		if (pre_step(t, w, step + 1, s + m->v[i].s, m->v[i].e - m->v[i].s,
			     origin && m->v[i].s == 0, out))
			return -1;
	}
	return 0;
}

static int pre_step(const ft_tokenizer *t, ftp_tk_work *w, size_t step, const char *s,
		    size_t n, int origin, ft_i32vec *out)
{
	if (!n) return 0;
	if (step == t->npre) return model_word(t, w, s, n, out);
	const ftp_tk_pre *p = &t->pre[step];
	ftp_tk_spanvec *m = &w->pspan[step];
	ftp_tk_buf *b = &w->pbuf[step];
	switch (p->kind) {
	case P_SPLIT:
		if (ftp_tk_find_matches(w, p->re, s, n, m)) return -1;
		return split_behave(t, w, step, s, origin, m, p->behavior, p->invert, out);
	case P_BYTELEVEL:
		if (p->add_prefix_space && s[0] != ' ') {
			ftp_tk_buf_clear(b);
			ftp_tk_buf_add(b, " ", 1);
			ftp_tk_buf_add(b, s, n);
			s = b->p; n = b->n;
		}
		if (!p->use_regex) return pre_step(t, w, step + 1, s, n, origin, out);
		if (ftp_tk_find_matches(w, p->re, s, n, m)) return -1;
		return split_behave(t, w, step, s, origin, m, B_ISOLATED, 0, out);
	case P_METASPACE: {
		ftp_tk_buf_clear(b);
		if (p->prepend_scheme == PS_ALWAYS || (p->prepend_scheme == PS_FIRST && origin)) {
			/* prepend unless the text (after replacement) starts with it */
			if (!(s[0] == ' ' || ((size_t)p->replen <= n && !memcmp(s, p->rep, (size_t)p->replen))))
				ftp_tk_buf_add(b, p->rep, (size_t)p->replen);
		}
		for (size_t i = 0; i < n; i++) {
			if (s[i] == ' ') ftp_tk_buf_add(b, p->rep, (size_t)p->replen);
			else ftp_tk_buf_add(b, s + i, 1);
		}
		s = b->p; n = b->n;
		if (!p->split) return pre_step(t, w, step + 1, s, n, origin, out);
		m->n = 0;
		size_t prev = 0;
		for (size_t i = 0; i + (size_t)p->replen <= n;) {
			if (!memcmp(s + i, p->rep, (size_t)p->replen)) {
				if (prev != i) ftp_tk_span_push(m, prev, i, 0);
				ftp_tk_span_push(m, i, i + (size_t)p->replen, 1);
				i += (size_t)p->replen; prev = i;
			} else i++;
		}
		if (prev != n) ftp_tk_span_push(m, prev, n, 0);
		return split_behave(t, w, step, s, origin, m, B_NEXT, 0, out);
	}
	}
	return ft_fail("unknown pre-tokenizer step");
}

/* ---- encode ---- */
static int encode_piece(const ft_tokenizer *t, ftp_tk_work *w, const char *s, size_t n,
			int origin, ft_i32vec *out)
{
	if (t->model == M_SPM) return ftp_tk_spm_encode_piece(t, w, s, n, out);
	const char *ns; size_t nn;
	int keep = 1;
	if (normalize(t, w, s, n, &ns, &nn, &keep)) return -1;
	origin = origin && keep;
	if (t->trie_norm.empty) return pre_step(t, w, 0, ns, nn, origin, out);
	/* the normalized string lives in w->nb: copy it before reusing those */
	char *copy = ft_xmalloc(nn + 1);
	memcpy(copy, ns, nn);
	ftp_tk_spanvec sp = {0};
	find_added(&t->trie_norm, t->norm_tok, copy, nn, &sp);
	int rc = 0;
	for (size_t i = 0; i < sp.n && !rc; i++) {
		if (sp.v[i].tok >= 0) ft_i32vec_push(out, sp.v[i].tok);
		else rc = pre_step(t, w, 0, copy + sp.v[i].s, sp.v[i].e - sp.v[i].s,
				   origin && sp.v[i].s == 0, out);
	}
	free(sp.v);
	free(copy);
	return rc;
}

int ft_tokenizer_encode(const ft_tokenizer *t, const char *text, size_t len,
			int add_special, ft_i32vec *out)
{
	long bad = ftp_tk_u8invalid(text, len);
	if (bad >= 0) return ft_fail("invalid UTF-8 at byte %ld", bad);
	size_t start = out->n;
	if (add_special) ft_i32vec_append(out, t->post_pre, t->npost_pre);
	ftp_tk_work *w = work_get(t);
	int rc = 0;
	find_added(&t->trie_raw, t->raw_tok, text, len, &w->added1);
	for (size_t i = 0; i < w->added1.n && !rc; i++) {
		const ftp_tk_span *sp = &w->added1.v[i];
		if (sp->tok >= 0) ft_i32vec_push(out, sp->tok);
		else rc = encode_piece(t, w, text + sp->s, sp->e - sp->s, sp->s == 0, out);
	}
	work_put(t, w);
	if (rc) { out->n = start; return -1; }
	if (add_special) ft_i32vec_append(out, t->post_post, t->npost_post);
	return 0;
}

/* ---- finishing a load ---- */
static int byte_level_vocab(ft_tokenizer *t)
{
	ftp_tk_buf b = {0};
	for (size_t e = 0; e < t->vocab.n; e++) {
		const char *k = t->vocab.key[e];
		size_t n = t->vocab.klen[e], i = 0;
		ftp_tk_buf_clear(&b);
		while (i < n) {
			int l;
			int byte = ftp_tk_cp2byte(ftp_tk_u8dec(k + i, &l));
			if (byte < 0) break;
			char c = (char)byte;
			ftp_tk_buf_add(&b, &c, 1);
			i += (size_t)l;
		}
		if (i == n) ftp_tk_strmap_put(&t->enc, b.p ? b.p : "", b.n, t->vocab.val[e]);
	}
	ftp_tk_buf_free(&b);
	for (int c = 0; c < 256; c++) {
		char tmp[8];
		int l = ftp_tk_u8enc(ftp_tk_byte2cp[c], tmp);
		t->byte_id[c] = ftp_tk_strmap_get(&t->vocab, tmp, (size_t)l);
	}
	return 0;
}

/* The added-token tries and is_special from t->added; entries from
 * `first` on are new and get their normalized form (the earlier ones
 * have theirs).  AddedVocabulary::refresh_added_tokens: raw ones match
 * as written, normalized ones as the normalizer would write them. */
int ftp_tk_added_refresh(ft_tokenizer *t, size_t first)
{
	free(t->raw_tok); free(t->norm_tok); free(t->is_special);
	ftp_tk_trie_free(&t->trie_raw); ftp_tk_trie_free(&t->trie_norm);
	size_t nr = 0, nn = 0;
	t->raw_tok = ft_xcalloc(t->nadded + 1, sizeof *t->raw_tok);
	t->norm_tok = ft_xcalloc(t->nadded + 1, sizeof *t->norm_tok);
	ftp_tk_work *w = work_new(t);
	for (size_t i = 0; i < t->nadded; i++) {
		ftp_tk_added *a = &t->added[i];
		if (a->normalized && t->model == M_BPE && t->nnorm && i >= first) {
			const char *ns; size_t nl;
			int keep;
			if (normalize(t, w, a->content, a->len, &ns, &nl, &keep)) { ftp_tk_work_free(w); return -1; }
			/* HF then also reports the normalized text as the token
			 * (id_to_token, decode); token_to_id takes the original */
			ftp_tk_added *c = &t->added[i];
			if (nl != c->len || memcmp(ns, c->content, nl)) {
				c->orig = c->content;
				c->content = ft_xmalloc(nl + 1);
				memcpy(c->content, ns, nl); c->content[nl] = 0; c->len = nl;
				ftp_tk_add_token(t, c->content, c->len, c->id);
			}
			t->norm_tok[nn++] = c;
		} else if (a->normalized && t->model == M_BPE)
			t->norm_tok[nn++] = a;
		else
			t->raw_tok[nr++] = a;
	}
	ftp_tk_work_free(w);
	ftp_tk_trie_build(&t->trie_raw, t->raw_tok, nr);
	ftp_tk_trie_build(&t->trie_norm, t->norm_tok, nn);
	t->is_special = ft_xcalloc(t->ntok + 1, 1);
	for (size_t i = 0; i < t->nadded; i++)
		if (t->added[i].special && (size_t)t->added[i].id < t->ntok)
			t->is_special[t->added[i].id] = 1;
	return 0;
}

int ftp_tk_finish_load(ft_tokenizer *t)
{
	for (size_t i = 0; i < t->npre; i++)
		if (t->pre[i].kind == P_BYTELEVEL) {
			if (i + 1 != t->npre)
				return ft_fail("a ByteLevel pre-tokenizer must be the last step");
			t->bytelevel = 1;
		}
	if (t->bytelevel && t->model == M_BPE) byte_level_vocab(t);
	t->have_fallback = 1;
	for (int c = 0; c < 256; c++) {
		char name[8];
		snprintf(name, sizeof name, "<0x%02X>", c);
		t->fallback_id[c] = ftp_tk_strmap_get(&t->vocab, name, 6);
		if (t->fallback_id[c] < 0) t->have_fallback = 0;
	}
	return ftp_tk_added_refresh(t, 0);
}

