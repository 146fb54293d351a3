/* tokenizer_json.c - read a Hugging Face tokenizer.json (model type BPE)
 * into ft_tokenizer: vocabulary, merges, added tokens, normalizer,
 * pre-tokenizer, post-processor and decoder.  Anything this tokenizer
 * cannot reproduce exactly is refused with a message naming it. */
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "util/json.h"
#include "text/tokenizer_internal.h"

static const char *jstr(const json_t *o, const char *k)
{
	const json_t *v = json_object_get(o, k);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(const json_t *o, const char *k, int def)
{
	const json_t *v = json_object_get(o, k);
	return json_is_boolean(v) ? json_is_true(v) : def;
}

/* {"String": s} or {"Regex": r}: a compiled regex (literal for String). */
static pcre2_code *pattern(const json_t *p, const char **str)
{
	const char *s;
	if ((s = jstr(p, "String"))) { if (str) *str = s; return ftp_tk_regex(s, 1); }
	if ((s = jstr(p, "Regex"))) { if (str) *str = NULL; return ftp_tk_regex(s, 0); }
	ft_fail("pattern is neither String nor Regex");
	return NULL;
}

static int add_norm(ft_tokenizer *t, const json_t *n)
{
	if (json_is_null(n) || !n) return 0;
	const char *type = jstr(n, "type");
	if (!type) return ft_fail("normalizer without a type");
	if (!strcmp(type, "Sequence")) {
		const json_t *a = json_object_get(n, "normalizers"), *x;
		size_t i;
		json_array_foreach(a, i, x) if (add_norm(t, x)) return -1;
		return 0;
	}
	ftp_tk_norm m = {0};
	if (!strcmp(type, "NFC")) m.kind = N_NFC;
	else if (!strcmp(type, "NFKC")) m.kind = N_NFKC;
	else if (!strcmp(type, "NFD")) m.kind = N_NFD;
	else if (!strcmp(type, "NFKD")) m.kind = N_NFKD;
	else if (!strcmp(type, "Lowercase")) m.kind = N_LOWER;
	else if (!strcmp(type, "Strip")) {
		m.kind = N_STRIP;
		m.left = jbool(n, "strip_left", 1);
		m.right = jbool(n, "strip_right", 1);
	} else if (!strcmp(type, "Prepend")) {
		const char *p = jstr(n, "prepend");
		if (!p) return ft_fail("Prepend normalizer without 'prepend'");
		m.kind = N_PREPEND;
		m.a = ft_xstrdup(p); m.alen = strlen(p);
	} else if (!strcmp(type, "Replace")) {
		const char *s = NULL, *c = jstr(n, "content");
		if (!c) return ft_fail("Replace normalizer without 'content'");
		m.kind = N_REPLACE;
		if (!(m.re = pattern(json_object_get(n, "pattern"), &s)))
			return ft_fail_ctx("Replace normalizer: ");
		if (s) { m.a = ft_xstrdup(s); m.alen = strlen(s); }
		m.b = ft_xstrdup(c); m.blen = strlen(c);
	} else
		return ft_fail("normalizer type '%s' is not supported", type);
	t->norm = ft_xrealloc(t->norm, (t->nnorm + 1) * sizeof *t->norm);
	t->norm[t->nnorm++] = m;
	return 0;
}

static int prepend_scheme(const json_t *n)
{
	const char *s = jstr(n, "prepend_scheme");
	if (!s) return jbool(n, "add_prefix_space", 1) ? PS_ALWAYS : PS_NEVER;
	if (!strcmp(s, "first")) return PS_FIRST;
	if (!strcmp(s, "never")) return PS_NEVER;
	return PS_ALWAYS;
}

static int replacement(const json_t *n, char *rep, int *len)
{
	const char *r = jstr(n, "replacement");
	if (!r) r = "\xE2\x96\x81";
	int k = 0;
	if (*r) ftp_tk_u8dec(r, &k);
	if (!k || (size_t)k != strlen(r)) return ft_fail("Metaspace replacement must be one character");
	memcpy(rep, r, (size_t)k); rep[k] = 0; *len = k;
	return 0;
}

static const char GPT2_RE[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_pre(ft_tokenizer *t, const json_t *n)
{
	if (json_is_null(n) || !n) return 0;
	const char *type = jstr(n, "type");
	if (!type) return ft_fail("pre_tokenizer without a type");
	if (!strcmp(type, "Sequence")) {
		const json_t *a = json_object_get(n, "pretokenizers"), *x;
		size_t i;
		json_array_foreach(a, i, x) if (add_pre(t, x)) return -1;
		return 0;
	}
	ftp_tk_pre p = {0};
	if (!strcmp(type, "Split")) {
		static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious",
					       "MergedWithNext", "Contiguous" };
		const char *b = jstr(n, "behavior");
		p.kind = P_SPLIT;
		p.behavior = -1;
		for (int i = 0; b && i < 5; i++) if (!strcmp(b, names[i])) p.behavior = i;
		if (p.behavior < 0) return ft_fail("Split behavior '%s' is not known", b ? b : "");
		p.invert = jbool(n, "invert", 0);
		if (!(p.re = pattern(json_object_get(n, "pattern"), NULL)))
			return ft_fail_ctx("Split pre_tokenizer: ");
	} else if (!strcmp(type, "ByteLevel")) {
		p.kind = P_BYTELEVEL;
		p.add_prefix_space = jbool(n, "add_prefix_space", 1);
		p.use_regex = jbool(n, "use_regex", 1);
		if (p.use_regex && !(p.re = ftp_tk_regex(GPT2_RE, 0))) return -1;
	} else if (!strcmp(type, "Metaspace")) {
		p.kind = P_METASPACE;
		if (replacement(n, p.rep, &p.replen)) return -1;
		p.prepend_scheme = prepend_scheme(n);
		p.split = jbool(n, "split", 1);
	} else if (!strcmp(type, "Digits")) {
		/* split(char::is_numeric, Isolated or Contiguous) */
		p.kind = P_SPLIT;
		p.behavior = jbool(n, "individual_digits", 0) ? B_ISOLATED : B_CONTIG;
		if (!(p.re = ftp_tk_regex("\\p{N}", 0))) return -1;
	} else if (!strcmp(type, "WhitespaceSplit")) {
		p.kind = P_SPLIT;               /* split(char::is_whitespace, Removed) */
		p.behavior = B_REMOVED;
		if (!(p.re = ftp_tk_regex("\\s", 0))) return -1;
	} else if (!strcmp(type, "Whitespace")) {
		p.kind = P_SPLIT;               /* \w+|[^\w\s]+, inverted, Removed */
		p.behavior = B_REMOVED;
		p.invert = 1;
		if (!(p.re = ftp_tk_regex("\\w+|[^\\w\\s]+", 0))) return -1;
	} else
		return ft_fail("pre_tokenizer type '%s' is not supported", type);
	t->pre = ft_xrealloc(t->pre, (t->npre + 1) * sizeof *t->pre);
	t->pre[t->npre++] = p;
	return 0;
}

static int add_dec(ft_tokenizer *t, const json_t *n)
{
	if (json_is_null(n) || !n) return 0;
	const char *type = jstr(n, "type");
	if (!type) return ft_fail("decoder without a type");
	t->have_decoder = 1;
	if (!strcmp(type, "Sequence")) {
		const json_t *a = json_object_get(n, "decoders"), *x;
		size_t i;
		json_array_foreach(a, i, x) if (add_dec(t, x)) return -1;
		return 0;
	}
	ftp_tk_dec d = {0};
	if (!strcmp(type, "ByteLevel")) d.kind = D_BYTELEVEL;
	else if (!strcmp(type, "ByteFallback")) d.kind = D_BYTEFALLBACK;
	else if (!strcmp(type, "Fuse")) d.kind = D_FUSE;
	else if (!strcmp(type, "Strip")) {
		const char *c = jstr(n, "content");
		int k = 0;
		d.kind = D_STRIP;
		d.ch = c && *c ? ftp_tk_u8dec(c, &k) : ' ';
		d.start = (int)json_integer_value(json_object_get(n, "start"));
		d.stop = (int)json_integer_value(json_object_get(n, "stop"));
	} else if (!strcmp(type, "Replace")) {
		const json_t *p = json_object_get(n, "pattern");
		const char *s = jstr(p, "String"), *c = jstr(n, "content");
		if (!s || !c) return ft_fail("Replace decoder supports String patterns only");
		d.kind = D_REPLACE;
		d.a = ft_xstrdup(s); d.alen = strlen(s);
		d.b = ft_xstrdup(c); d.blen = strlen(c);
	} else if (!strcmp(type, "Metaspace")) {
		d.kind = D_METASPACE;
		if (replacement(n, d.rep, &d.replen)) return -1;
		d.prepend_scheme = prepend_scheme(n);
	} else
		return ft_fail("decoder type '%s' is not supported", type);
	t->dec = ft_xrealloc(t->dec, (t->ndec + 1) * sizeof *t->dec);
	t->dec[t->ndec++] = d;
	return 0;
}

static void post_push(int32_t **v, size_t *n, int32_t id)
{
	*v = ft_xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[(*n)++] = id;
}

/* Only the single-sequence template matters: ids before and after A. */
static int add_post(ft_tokenizer *t, const json_t *n)
{
	if (json_is_null(n) || !n) return 0;
	const char *type = jstr(n, "type");
	if (!type) return ft_fail("post_processor without a type");
	if (!strcmp(type, "Sequence")) {
		const json_t *a = json_object_get(n, "processors"), *x;
		size_t i;
		json_array_foreach(a, i, x) if (add_post(t, x)) return -1;
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) return 0;
	if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
		const json_t *cls = json_object_get(n, "cls"), *sep = json_object_get(n, "sep");
		if (!json_is_array(cls) || !json_is_array(sep))
			return ft_fail("%s without cls/sep", type);
		post_push(&t->post_pre, &t->npost_pre,
			  (int32_t)json_integer_value(json_array_get(cls, 1)));
		post_push(&t->post_post, &t->npost_post,
			  (int32_t)json_integer_value(json_array_get(sep, 1)));
		return 0;
	}
	if (strcmp(type, "TemplateProcessing"))
		return ft_fail("post_processor type '%s' is not supported", type);
	const json_t *single = json_object_get(n, "single"), *sp = json_object_get(n, "special_tokens"), *it;
	size_t i;
	int seen_a = 0;
	json_array_foreach(single, i, it) {
		const json_t *st = json_object_get(it, "SpecialToken");
		if (json_object_get(it, "Sequence")) { seen_a = 1; continue; }
		if (!st) return ft_fail("TemplateProcessing item is neither SpecialToken nor Sequence");
		const char *name = jstr(st, "id");
		const json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids"), *x;
		size_t k;
		if (!json_is_array(ids))
			return ft_fail("TemplateProcessing special token '%s' has no ids", name ? name : "");
		json_array_foreach(ids, k, x) {
			int32_t id = (int32_t)json_integer_value(x);
			if (seen_a) post_push(&t->post_post, &t->npost_post, id);
			else post_push(&t->post_pre, &t->npost_pre, id);
		}
	}
	return 0;
}

static int load_model(ft_tokenizer *t, const json_t *m)
{
	const char *type = jstr(m, "type");
	if (type && strcmp(type, "BPE"))
		return ft_fail("model type '%s' is not supported (only BPE)", type);
	const json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
	if (!json_is_object(vocab)) return ft_fail("model has no vocab object");
	const char *pre = jstr(m, "continuing_subword_prefix"), *suf = jstr(m, "end_of_word_suffix");
	if ((pre && *pre) || (suf && *suf))
		return ft_fail("BPE continuing_subword_prefix/end_of_word_suffix are not supported");
	const json_t *drop = json_object_get(m, "dropout");
	if (json_is_number(drop) && json_number_value(drop) > 0)
		return ft_fail("BPE dropout is not supported");

	const char *k; json_t *v;
	json_object_foreach((json_t *)vocab, k, v) {
		if (!json_is_integer(v)) return ft_fail("vocab entry '%s' is not an integer", k);
		int32_t id = (int32_t)json_integer_value(v);
		size_t len = strlen(k);
		if (ftp_tk_add_token(t, k, len, id) < 0) return ft_fail_ctx("vocab entry '%s': ", k);
		ftp_tk_strmap_put(&t->vocab, k, len, id);
	}
	t->fuse_unk = jbool(m, "fuse_unk", 0);
	t->byte_fallback = jbool(m, "byte_fallback", 0);
	t->ignore_merges = jbool(m, "ignore_merges", 0);
	const char *unk = jstr(m, "unk_token");
	t->unk_id = -1;
	if (unk && (t->unk_id = ftp_tk_strmap_get(&t->vocab, unk, strlen(unk))) < 0)
		return ft_fail("unk_token '%s' is not in the vocabulary", unk);

	size_t nm = json_array_size(merges);
	ftp_tk_mergemap_init(&t->merges, nm);
	ftp_tk_buf b = {0};
	for (size_t i = 0; i < nm; i++) {
		const json_t *e = json_array_get(merges, i);
		const char *l, *r;
		size_t ll, rl;
		if (json_is_string(e)) {
			/* "a b": split at the first space, as tokenizers does */
			l = json_string_value(e);
			const char *sp = strchr(l, ' ');
			if (!sp || strchr(sp + 1, ' ')) {
				ftp_tk_buf_free(&b);   /* found by make fuzz: b held an earlier merge */
				return ft_fail("merge %zu '%s' is not two tokens", i, l);
			}
			ll = (size_t)(sp - l); r = sp + 1; rl = strlen(r);
		} else if (json_is_array(e) && json_array_size(e) == 2 &&
			   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
			l = json_string_value(json_array_get(e, 0)); ll = strlen(l);
			r = json_string_value(json_array_get(e, 1)); rl = strlen(r);
		} else {
			ftp_tk_buf_free(&b);
			return ft_fail("merge %zu is neither \"a b\" nor [a, b]", i);
		}
		int32_t a = ftp_tk_strmap_get(&t->vocab, l, ll), c = ftp_tk_strmap_get(&t->vocab, r, rl);
		ftp_tk_buf_clear(&b);
		ftp_tk_buf_add(&b, l, ll); ftp_tk_buf_add(&b, r, rl);
		int32_t id = ftp_tk_strmap_get(&t->vocab, b.p, b.n);
		if (a < 0 || c < 0 || id < 0) {
			ftp_tk_buf_free(&b);
			return ft_fail("merge %zu (%.*s %.*s) uses a token not in the vocabulary",
				       i, (int)ll, l, (int)rl, r);
		}
		ftp_tk_mergemap_put(&t->merges, a, c, (int32_t)i, id);
	}
	ftp_tk_buf_free(&b);
	return 0;
}

static int load_added(ft_tokenizer *t, const json_t *arr)
{
	size_t i; json_t *x;
	t->nadded = json_array_size(arr);
	t->added = ft_xcalloc(t->nadded ? t->nadded : 1, sizeof *t->added);
	json_array_foreach(arr, i, x) {
		ftp_tk_added *a = &t->added[i];
		const char *c = jstr(x, "content");
		if (!c || !json_is_integer(json_object_get(x, "id")))
			return ft_fail("added_tokens[%zu] needs content and id", i);
		a->content = ft_xstrdup(c); a->len = strlen(c);
		a->id = (int32_t)json_integer_value(json_object_get(x, "id"));
		a->single_word = jbool(x, "single_word", 0);
		a->lstrip = jbool(x, "lstrip", 0);
		a->rstrip = jbool(x, "rstrip", 0);
		a->special = jbool(x, "special", 0);
		a->normalized = jbool(x, "normalized", !a->special);
		if (ftp_tk_add_token(t, a->content, a->len, a->id) < 0)
			return ft_fail_ctx("added_tokens[%zu]: ", i);
	}
	return 0;
}

int ftp_tk_load_json(ft_tokenizer *t, const char *path)
{
	json_t *j = ft_json_load_file(path);
	if (!j) return -1;
	int rc = -1;
	if (!json_is_object(j)) { ft_fail("%s: not a JSON object", path); goto out; }
	t->model = M_BPE;
	if (load_model(t, json_object_get(j, "model")) ||
	    load_added(t, json_object_get(j, "added_tokens")) ||
	    add_norm(t, json_object_get(j, "normalizer")) ||
	    add_pre(t, json_object_get(j, "pre_tokenizer")) ||
	    add_post(t, json_object_get(j, "post_processor")) ||
	    add_dec(t, json_object_get(j, "decoder"))) {
		ft_fail_ctx("%s: ", path);
		goto out;
	}
	rc = 0;
out:
	json_decref(j);
	return rc;
}
