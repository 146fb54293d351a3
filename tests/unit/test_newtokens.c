/* test_newtokens.c - LLaMA-Factory's vocabulary extension, the tokenizer
 * side: ft_tokenizer_add_tokens against transformers' add_tokens on the
 * cases of tests/fixtures/newtokens/tokenizer.jsonl (made by
 * tests/reference/make_newtokens_fixtures.py): how many are added, the
 * ids given, encode (with and without special tokens), decode; the saved
 * tokenizer.json loads to the same tokenizer; and the argument parsing
 * of add_tokens / add_special_tokens / new_special_tokens_config. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "tap.h"
#include "util/error.h"
#include "util/sha256.h"
#include "text/tokenizer.h"
#include "cli/newtokens.h"

#define FIX "tests/fixtures/newtokens"

static const char *shared(void)
{
	const char *s = getenv("FT_SHARED");
	return s ? s : "../shared";
}

static int ids_equal(const ft_i32vec *got, const json_t *want)
{
	if (!json_is_array(want) || json_array_size(want) != got->n) return 0;
	for (size_t i = 0; i < got->n; i++)
		if (json_integer_value(json_array_get(want, i)) != got->v[i]) return 0;
	return 1;
}

static const char **strings(const json_t *a, size_t *n)
{
	*n = json_array_size(a);
	const char **v = calloc(*n + 1, sizeof *v);
	for (size_t i = 0; i < *n; i++) v[i] = json_string_value(json_array_get(a, i));
	return v;
}

/* encode and decode every case with t; returns the failures */
static int cases_match(const char *name, const ft_tokenizer *t, const json_t *cases)
{
	size_t i;
	json_t *c;
	int bad = 0;
	json_array_foreach(cases, i, c) {
		const char *text = json_string_value(json_object_get(c, "text"));
		ft_i32vec a = {0}, b = {0};
		if (ft_tokenizer_encode(t, text, strlen(text), 0, &a) < 0 ||
		    ft_tokenizer_encode(t, text, strlen(text), 1, &b) < 0) {
			printf("# %s: %s\n", name, ft_errmsg());
			bad++;
			continue;
		}
		if (!ids_equal(&a, json_object_get(c, "ids")) || !ids_equal(&b, json_object_get(c, "ids_special"))) {
			printf("# %s: case %zu (%s):", name, i, text);
			for (size_t k = 0; k < a.n; k++) printf(" %d", a.v[k]);
			printf("\n");
			bad++;
		}
		char *d = ft_tokenizer_decode(t, a.v, a.n, 0);
		const char *want = json_string_value(json_object_get(c, "decoded"));
		if (!d || strcmp(d, want)) {
			printf("# %s: decode case %zu: got '%s' want '%s'\n", name, i, d ? d : "(null)", want);
			bad++;
		}
		free(d);
		ft_i32vec_free(&a);
		ft_i32vec_free(&b);
	}
	return bad;
}

/* the saved added_tokens: same ids, contents and settings as tokenizers' */
static int saved_matches(const char *path, const json_t *want)
{
	json_error_t e;
	json_t *j = json_load_file(path, 0, &e);
	json_t *got = json_object_get(j, "added_tokens");
	int same = json_equal(got, want);
	json_decref(j);
	return same;
}

static void one(const json_t *row)
{
	const char *name = json_string_value(json_object_get(row, "name"));
	const char *rel = json_string_value(json_object_get(row, "path"));
	char path[4096];
	if (json_is_true(json_object_get(row, "shared")))
		snprintf(path, sizeof path, "%s/%s", shared(), rel);
	else
		snprintf(path, sizeof path, "%s", rel);
	struct stat st;
	if (stat(path, &st) < 0) {
		skip("%s: %s is absent", name, path);
		return;
	}
	ft_tokenizer *t = ft_tokenizer_load(path);
	if (!ok(t != NULL, "%s: load", name)) return;
	ok(ft_tokenizer_vocab_size(t) == (size_t)json_integer_value(json_object_get(row, "len_before")),
	   "%s: len(tokenizer) before", name);
	char *id0 = strdup(ft_tokenizer_identity(t));
	size_t na, ns;
	const char **add = strings(json_object_get(row, "add"), &na);
	const char **sp = strings(json_object_get(row, "special"), &ns);
	int a = ft_tokenizer_add_tokens(t, add, na, 0), b = ft_tokenizer_add_tokens(t, sp, ns, 1);
	ok(a >= 0 && b >= 0 && a + b == json_integer_value(json_object_get(row, "n_added")),
	   "%s: %d + %d added, as transformers counts", name, a, b);
	ok(ft_tokenizer_vocab_size(t) == (size_t)json_integer_value(json_object_get(row, "len")),
	   "%s: len(tokenizer) %zu after", name, ft_tokenizer_vocab_size(t));
	const char *k;
	json_t *v;
	int bad = 0;
	json_object_foreach(json_object_get(row, "ids"), k, v)
		if (ft_tokenizer_token_to_id(t, k) != json_integer_value(v)) {
			printf("# %s: %s is %d, want %lld\n", name, k, ft_tokenizer_token_to_id(t, k),
			       (long long)json_integer_value(v));
			bad++;
		}
	ok(!bad, "%s: the ids transformers gives", name);
	ok(!cases_match(name, t, json_object_get(row, "cases")), "%s: encode and decode", name);
	ok(strcmp(id0, ft_tokenizer_identity(t)) != 0, "%s: the identity changes", name);
	/* saved, reloaded: the same tokenizer, and its file's sha is the identity's */
	char dir[] = "/tmp/ft-newtok-XXXXXX", file[64], hex[65];
	ok(mkdtemp(dir) != NULL, "tmp dir");
	snprintf(file, sizeof file, "%s/tokenizer.json", dir);
	ok(ft_tokenizer_save_json(t, file) == 0, "%s: save", name);
	ok(saved_matches(file, json_object_get(row, "added_tokens")), "%s: saved added_tokens as tokenizers'", name);
	ok(ft_sha256_file(file, hex) == 0 && strstr(ft_tokenizer_identity(t), hex), "%s: identity = sha256 of the file",
	   name);
	ft_tokenizer *r = ft_tokenizer_load(file);
	ok(r && ft_tokenizer_vocab_size(r) == ft_tokenizer_vocab_size(t) &&
	   !cases_match(name, r, json_object_get(row, "cases")), "%s: the saved file reloads the same", name);
	ft_tokenizer_free(r);
	unlink(file);
	rmdir(dir);
	free(id0);
	free(add);
	free(sp);
	ft_tokenizer_free(t);
}

static void parsing(void)
{
	ft_new_tokens nt;
	ok(ft_new_tokens_parse(&nt, " <a> ,<b>,, c ", "<x>, <y>", NULL) == 0 && nt.n_add == 4 &&
	   !strcmp(nt.add[0], "<a>") && !strcmp(nt.add[1], "<b>") && !strcmp(nt.add[2], "") &&
	   !strcmp(nt.add[3], "c") && nt.n_special == 2 && !strcmp(nt.special[1], "<y>") && !nt.desc,
	   "add_tokens / add_special_tokens: split on commas, stripped");
	ft_new_tokens_free(&nt);
	const char *cfg = "tests/fixtures/lf-examples/extras/multi_tokens/tokens_cfg.yaml";
	ok(ft_new_tokens_parse(&nt, NULL, "<x>", cfg) == 0 && nt.n_special == 16 && nt.both &&
	   !strcmp(nt.special[0], "<|START_OF_SVG|>") && !strcmp(nt.desc[0], "Marks the beginning of an SVG document") &&
	   !strcmp(nt.special[15], "<|end_of_style|>"),
	   "new_special_tokens_config: the example's 16 tokens in order, replacing add_special_tokens");
	ft_new_tokens_free(&nt);
	char dir[] = "/tmp/ft-newcfg-XXXXXX", p[64];
	mkdtemp(dir);
	snprintf(p, sizeof p, "%s/c.yaml", dir);
	FILE *f = fopen(p, "w");
	fputs("\"<a>\": one\n\"<a>\": two\n", f);
	fclose(f);
	ok(ft_new_tokens_parse(&nt, NULL, NULL, p) < 0 && strstr(ft_errmsg(), "c.yaml:2") &&
	   strstr(ft_errmsg(), "second entry"), "a repeated token is refused with its line: %s", ft_errmsg());
	f = fopen(p, "w");
	fputs("\"<a>\": one\n\"<b>\":\n", f);
	fclose(f);
	ok(ft_new_tokens_parse(&nt, NULL, NULL, p) < 0 && strstr(ft_errmsg(), "no value for '<b>'"),
	   "a token without a description is refused: %s", ft_errmsg());
	f = fopen(p, "w");
	fputs("- a\n", f);
	fclose(f);
	ok(ft_new_tokens_parse(&nt, NULL, NULL, p) < 0, "a list is not a token config: %s", ft_errmsg());
	unlink(p);
	rmdir(dir);
	ft_tokenizer *t = ft_tokenizer_load("tests/fixtures/tokenizer/small-sp.model");
	const char *x = "<z>";
	ok(t && ft_tokenizer_add_tokens(t, &x, 1, 1) < 0 && strstr(ft_errmsg(), "tokenizer.json"),
	   "a tokenizer.model cannot be extended: %s", ft_errmsg());
	ft_tokenizer_free(t);
	char sp[4096];
	snprintf(sp, sizeof sp, "%s/tokenizers/mistral-sp", shared());
	struct stat st;
	if (stat(sp, &st) == 0) {
		t = ft_tokenizer_load(sp);
		ok(t && ft_tokenizer_add_tokens(t, &x, 1, 0) < 0 && strstr(ft_errmsg(), "SentencePiece-style"),
		   "non-special tokens on a Prepend + Replace normalizer are refused: %s", ft_errmsg());
		ft_tokenizer_free(t);
	} else {
		skip("%s is absent", sp);
	}
}

int main(void)
{
	FILE *f = fopen(FIX "/tokenizer.jsonl", "r");
	char *line = NULL;
	size_t cap = 0;
	if (!ok(f != NULL, "fixture")) return tap_done();
	while (getline(&line, &cap, f) > 0) {
		json_error_t e;
		json_t *row = json_loads(line, 0, &e);
		if (ok(row != NULL, "fixture line")) one(row);
		json_decref(row);
	}
	free(line);
	fclose(f);
	parsing();
	return tap_done();
}
