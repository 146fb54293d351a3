/* tokenizer_add.c - tokens added to a loaded tokenizer.json tokenizer, as
 * transformers' tokenizer.add_tokens(tokens, special_tokens=...) adds
 * them (LLaMA-Factory's add_tokens / add_special_tokens), and the
 * extended tokenizer.json; see tokenizer.h. */
#include <stdlib.h>
#include <string.h>
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "util/sha256.h"
#include "text/tokenizer_internal.h"

/* The entry of t->added whose text as written is s, or -1. */
static long added_index(const ft_tokenizer *t, const char *s)
{
	for (size_t i = 0; i < t->nadded; i++) {
		const ftp_tk_added *a = &t->added[i];
		if (!strcmp(a->orig ? a->orig : a->content, s)) return (long)i;
	}
	return -1;
}

/* AddedVocabulary::add_tokens' id for a token that is neither an added
 * token nor in the model's vocabulary: the model's vocabulary size while
 * every added id lies inside it, else one past the largest added id. */
static int32_t next_id(const ft_tokenizer *t)
{
	int32_t max = -1, v = (int32_t)t->vocab.n;
	for (size_t i = 0; i < t->nadded; i++)
		if (t->added[i].id > max) max = t->added[i].id;
	return max < 0 ? v : max >= v ? max + 1 : v;
}

static void drop_added(ft_tokenizer *t, size_t k)
{
	free(t->added[k].content);
	free(t->added[k].orig);
	memmove(&t->added[k], &t->added[k + 1], (t->nadded - k - 1) * sizeof *t->added);
	t->nadded--;
}

/* One token: 1 when it counts as added (HF's return value), 0 ignored. */
static int add_one(ft_tokenizer *t, const char *s, int special, size_t *first)
{
	/* AddedToken(s, special): not single_word, no strips, normalized
	 * unless special; an equal added token (every field) is ignored */
	int normalized = !special;
	long k = added_index(t, s);
	if (!*s) return 0;
	if (k >= 0) {
		const ftp_tk_added *a = &t->added[k];
		if (!a->single_word && !a->lstrip && !a->rstrip && a->normalized == normalized &&
		    a->special == special)
			return 0;
	}
	int32_t id = k >= 0 ? t->added[k].id : ftp_tk_strmap_get(&t->vocab, s, strlen(s));
	if (id < 0) id = next_id(t);
	if (k >= 0) {   /* the token gets its new settings, keeping its id */
		drop_added(t, (size_t)k);
		if ((size_t)k < *first) (*first)--;
	}
	t->added = ft_xrealloc(t->added, (t->nadded + 1) * sizeof *t->added);
	ftp_tk_added *a = &t->added[t->nadded++];
	memset(a, 0, sizeof *a);
	a->content = ft_xstrdup(s);
	a->len = strlen(s);
	a->id = id;
	a->normalized = normalized;
	a->special = special;
	if (ftp_tk_add_token(t, a->content, a->len, id) < 0) return -1;
	t->extra = ft_xrealloc(t->extra, (t->nextra + 1) * sizeof *t->extra);
	t->extra[t->nextra++] = (struct ftp_tk_new){ ft_xstrdup(s), id, special };
	return 1;
}

static char *dump(const ft_tokenizer *t, size_t *len);

int ft_tokenizer_add_tokens(ft_tokenizer *t, const char *const *tokens, size_t n, int special)
{
	if (!t->json_file)
		return ft_fail("%s: adding tokens needs a tokenizer.json (this is a sentencepiece "
			       "tokenizer.model; save it with transformers first)", t->path);
	/* transformers 5 runs a Prepend("▁") + Replace(" ", "▁") normalizer
	 * (LlamaTokenizer's tokenizer.json) as its own Metaspace pipeline,
	 * where normalized added tokens split the text differently from
	 * ft's (special ones, never normalized, match the same) */
	if (!special && n && t->nnorm == 2 && t->norm[0].kind == N_PREPEND && t->norm[1].kind == N_REPLACE)
		return ft_fail("%s: adding non-special tokens to a SentencePiece-style tokenizer.json "
			       "(Prepend + Replace normalizer) is not implemented in ft yet: transformers "
			       "splits the text around them its own way (add them as special tokens)", t->path);
	size_t first = t->nadded;
	int added = 0;
	for (size_t i = 0; i < n; i++) {
		int rc = add_one(t, tokens[i], special != 0, &first);
		if (rc < 0) return -1;
		added += rc;
	}
	if (ftp_tk_added_refresh(t, first) < 0) return -1;
	/* the identity is that of the tokenizer.json these tokens make */
	size_t len;
	char *s = dump(t, &len), hex[65];
	if (!s) return -1;
	ft_sha256_hex(s, len, hex);
	free(s);
	free(t->identity);
	t->identity = ft_xasprintf("%s:%s", t->name, hex);
	return added;
}

size_t ft_tokenizer_n_added_later(const ft_tokenizer *t) { return t->nextra; }

static int by_id(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "id"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "id"));
	return (x > y) - (x < y);
}

/* tokenizer.json with the added tokens, as `tokenizers` serializes its
 * AddedVocabulary: one entry per token (a re-added one replaced), sorted
 * by id. */
static char *dump(const ft_tokenizer *t, size_t *len)
{
	json_t *j = ft_json_load_file(t->json_file);
	if (!j) return NULL;
	json_t *arr = json_object_get(j, "added_tokens");
	if (!json_is_array(arr)) {
		arr = json_array();
		json_object_set_new(j, "added_tokens", arr);
	}
	for (size_t e = 0; e < t->nextra; e++) {
		const struct ftp_tk_new *x = &t->extra[e];
		for (size_t i = json_array_size(arr); i-- > 0;) {
			const char *c = json_string_value(json_object_get(json_array_get(arr, i), "content"));
			if (c && !strcmp(c, x->content)) json_array_remove(arr, i);
		}
		json_array_append_new(arr, json_pack("{s:I, s:s, s:b, s:b, s:b, s:b, s:b}", "id",
						     (json_int_t)x->id, "content", x->content, "single_word", 0,
						     "lstrip", 0, "rstrip", 0, "normalized", !x->special,
						     "special", x->special));
	}
	size_t n = json_array_size(arr);
	json_t **v = ft_xcalloc(n ? n : 1, sizeof *v);
	for (size_t i = 0; i < n; i++) v[i] = json_incref(json_array_get(arr, i));
	qsort(v, n, sizeof *v, by_id);
	json_array_clear(arr);
	for (size_t i = 0; i < n; i++) json_array_append_new(arr, v[i]);
	free(v);
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
	json_decref(j);
	if (!s) {
		ft_fail("%s: cannot serialize the extended tokenizer", t->json_file);
		return NULL;
	}
	*len = strlen(s);
	return s;
}

int ft_tokenizer_save_json(const ft_tokenizer *t, const char *path)
{
	size_t len;
	char *s = dump(t, &len);
	if (!s) return -1;
	ft_atomic a = { 0 };
	int rc = ft_atomic_open(&a, path);
	if (rc == 0 && fwrite(s, 1, len, a.fp) != len) {
		ft_atomic_abort(&a);
		rc = ft_fail("%s: write error:", path);
	} else if (rc == 0) {
		rc = ft_atomic_commit(&a);
	}
	free(s);
	return rc;
}
