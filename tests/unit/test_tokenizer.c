/* test_tokenizer.c - parity with the `tokenizers` / `sentencepiece`
 * packages on the cases in tests/fixtures/tokenizer (made by
 * tests/reference/make_tokenizer_fixtures.py): ids without and with
 * special tokens, decode, skip_special_tokens, round trips; plus loading
 * errors, settings from tokenizer_config.json, identity, threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "tap.h"
#include "util/error.h"
#include "text/tokenizer.h"

#define FIX "tests/fixtures/tokenizer"

static const char *shared(void)
{
	const char *s = getenv("FT_SHARED");
	return s ? s : "../shared";
}

static int is_dir(const char *p)
{
	struct stat st;
	return !stat(p, &st) && S_ISDIR(st.st_mode);
}

static json_t **read_jsonl(const char *path, size_t *n)
{
	FILE *f = fopen(path, "r");
	json_t **v = NULL;
	char *line = NULL;
	size_t cap = 0;
	*n = 0;
	if (!f) return NULL;
	while (getline(&line, &cap, f) > 0) {
		json_error_t e;
		v = realloc(v, (*n + 1) * sizeof *v);
		v[(*n)++] = json_loads(line, JSON_ALLOW_NUL, &e);
	}
	free(line);
	fclose(f);
	return v;
}

static void free_jsonl(json_t **v, size_t n)
{
	for (size_t i = 0; i < n; i++) json_decref(v[i]);
	free(v);
}

static int ids_equal(const ft_i32vec *got, const json_t *want)
{
	if (!json_is_array(want) || json_array_size(want) != got->n) return 0;
	for (size_t i = 0; i < got->n; i++)
		if (json_integer_value(json_array_get(want, i)) != got->v[i]) return 0;
	return 1;
}

static void show(const char *what, size_t i, const char *text, const ft_i32vec *got, const json_t *want)
{
	char *w = json_dumps(want, JSON_COMPACT);
	printf("# %s case %zu %.60s\n#   got ", what, i, text);
	for (size_t k = 0; k < got->n && k < 40; k++) printf("%d,", got->v[k]);
	printf("\n#  want %.300s\n", w ? w : "?");
	free(w);
}

/* NUL-safe: decode returns a C string, so compare up to the expected length */
static int same(const char *got, const char *want, size_t n)
{
	return !memcmp(got, want, n) && got[n] == 0;
}

/* Every case of one tokenizer against its expected file (which may cover
 * only the first cases).  Missing fields: text = the input, text_skip =
 * text, ids_special = ids (see make_tokenizer_fixtures.py). */
static void fill_defaults(json_t *e, json_t *c)
{
	if (!json_object_get(e, "ids_special"))
		json_object_set(e, "ids_special", json_object_get(e, "ids"));
	if (!json_object_get(e, "text")) json_object_set(e, "text", json_object_get(c, "text"));
	if (!json_object_get(e, "text_skip")) json_object_set(e, "text_skip", json_object_get(e, "text"));
}

static void parity(const char *name, const char *path, const char *expected)
{
	size_t nc, ne;
	json_t **cases = read_jsonl(FIX "/cases.jsonl", &nc);
	json_t **exp = read_jsonl(expected, &ne);
	size_t nc0 = nc;
	ft_tokenizer *t = ft_tokenizer_load(path);
	if (!ok(t && cases && exp && ne <= nc && ne >= 150, "%s: load tokenizer and %zu cases", name, ne)) {
		if (!t) printf("# %s\n", ft_errmsg());
		free_jsonl(cases, nc0); free_jsonl(exp, ne); ft_tokenizer_free(t);
		return;
	}
	size_t bad_ids = 0, bad_sp = 0, bad_dec = 0, bad_skip = 0, lossless = 0, bad_rt = 0, errs = 0;
	nc = ne;
	for (size_t i = 0; i < nc; i++) fill_defaults(exp[i], cases[i]);
	for (size_t i = 0; i < nc; i++) {
		const json_t *tx = json_object_get(cases[i], "text");
		const char *text = json_string_value(tx);
		size_t len = json_string_length(tx);
		ft_i32vec a = {0}, b = {0};
		if (ft_tokenizer_encode(t, text, len, 0, &a) || ft_tokenizer_encode(t, text, len, 1, &b)) {
			errs++;
			printf("# encode error %s\n", ft_errmsg());
		}
		if (!ids_equal(&a, json_object_get(exp[i], "ids")) && ++bad_ids <= 3)
			show(name, i, text, &a, json_object_get(exp[i], "ids"));
		if (!ids_equal(&b, json_object_get(exp[i], "ids_special")) && ++bad_sp <= 3)
			show(name, i, text, &b, json_object_get(exp[i], "ids_special"));
		/* decode the expected ids, so a decode bug is not hidden by encode */
		const json_t *ei = json_object_get(exp[i], "ids"), *es = json_object_get(exp[i], "ids_special");
		size_t n1 = json_array_size(ei), n2 = json_array_size(es);
		int32_t *v1 = malloc((n1 + 1) * 4), *v2 = malloc((n2 + 1) * 4);
		for (size_t k = 0; k < n1; k++) v1[k] = (int32_t)json_integer_value(json_array_get(ei, k));
		for (size_t k = 0; k < n2; k++) v2[k] = (int32_t)json_integer_value(json_array_get(es, k));
		char *d1 = ft_tokenizer_decode(t, v1, n1, 0), *d2 = ft_tokenizer_decode(t, v2, n2, 1);
		const json_t *j1 = json_object_get(exp[i], "text"), *j2 = json_object_get(exp[i], "text_skip");
		const char *w1 = json_string_value(j1), *w2 = json_string_value(j2);
		if (!w1 || !w2) { printf("# bad expected line %zu\n", i); errs++; continue; }
		if ((!d1 || !same(d1, w1, json_string_length(j1))) && ++bad_dec <= 3)
			printf("# %s decode case %zu\n#   got  %.80s\n#   want %.80s\n", name, i, d1 ? d1 : ft_errmsg(), w1);
		if ((!d2 || !same(d2, w2, json_string_length(j2))) && ++bad_skip <= 3)
			printf("# %s skip decode case %zu\n#   got  %.80s\n#   want %.80s\n", name, i, d2 ? d2 : ft_errmsg(), w2);
		/* round trip where the reference is lossless */
		if (json_string_length(j1) == len && !memcmp(w1, text, len)) {
			lossless++;
			char *r = ft_tokenizer_decode(t, a.v, a.n, 0);
			if (!r || !same(r, text, len)) bad_rt++;
			free(r);
		}
		free(d1); free(d2); free(v1); free(v2);
		ft_i32vec_free(&a); ft_i32vec_free(&b);
	}
	ok(!errs, "%s: no encode errors", name);
	ok(!bad_ids, "%s: ids equal the reference on all %zu cases (%zu differ)", name, nc, bad_ids);
	ok(!bad_sp, "%s: ids with add_special_tokens equal (%zu differ)", name, bad_sp);
	ok(!bad_dec, "%s: decode equals (%zu differ)", name, bad_dec);
	ok(!bad_skip, "%s: decode with skip_special_tokens equals (%zu differ)", name, bad_skip);
	ok(lossless >= 1 && !bad_rt, "%s: decode(encode(x)) == x on the %zu lossless cases (%zu differ)",
	   name, lossless, bad_rt);

	/* the same ids from 2 threads at once */
	size_t bad_thr = 0;
	#pragma omp parallel for num_threads(2) reduction(+:bad_thr) schedule(dynamic, 4)
	for (size_t i = 0; i < nc; i++) {
		const json_t *tx = json_object_get(cases[i], "text");
		ft_i32vec a = {0};
		if (ft_tokenizer_encode(t, json_string_value(tx), json_string_length(tx), 0, &a) ||
		    !ids_equal(&a, json_object_get(exp[i], "ids")))
			bad_thr++;
		ft_i32vec_free(&a);
	}
	ok(!bad_thr, "%s: 2 threads sharing the tokenizer give the same ids", name);
	free_jsonl(cases, nc0); free_jsonl(exp, ne);
	ft_tokenizer_free(t);
}

static void settings(void)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/tokenizers/mistral-sp", shared());
	ft_tokenizer *t = ft_tokenizer_load(p);
	if (!ok(t != NULL, "mistral-sp directory loads")) return;
	const ft_tokenizer_info *in = ft_tokenizer_info_get(t);
	ok(in->bos_id == 1 && in->eos_id == 2 && in->unk_id == 0 && in->pad_id == -1,
	   "mistral-sp: bos 1, eos 2, unk 0, no pad (got %d %d %d %d)", in->bos_id, in->eos_id, in->unk_id, in->pad_id);
	ok(in->add_bos == 1 && in->add_eos == 0, "mistral-sp: add_bos_token, no add_eos_token");
	ok(in->model_max_length > (long long)1e18, "mistral-sp: huge model_max_length clamps (%lld)", in->model_max_length);
	ok(in->bos_token && !strcmp(in->bos_token, "<s>") && !in->pad_token, "mistral-sp: token strings");
	const char *id = ft_tokenizer_identity(t);
	ok(id && !strncmp(id, "mistral-sp:", 11) && strlen(id) == 11 + 64, "identity is name:sha256 (%s)", id);
	ok(ft_tokenizer_vocab_size(t) == 32000, "mistral-sp: vocab size 32000");
	ok(ft_tokenizer_token_to_id(t, "</s>") == 2 && !strcmp(ft_tokenizer_id_to_token(t, 2), "</s>") &&
	   ft_tokenizer_is_special(t, 2) && !ft_tokenizer_is_special(t, 100) &&
	   ft_tokenizer_token_to_id(t, "no such token") == -1 && !ft_tokenizer_id_to_token(t, 32000),
	   "mistral-sp: token_to_id, id_to_token, is_special");
	ft_tokenizer_free(t);

	snprintf(p, sizeof p, "%s/tokenizers/qwen3/tokenizer.json", shared());
	t = ft_tokenizer_load(p);
	if (!ok(t != NULL, "qwen3 tokenizer.json loads")) return;
	in = ft_tokenizer_info_get(t);
	ok(in->eos_id == 151645 && in->pad_id == 151643 && in->bos_id == -1 && !in->add_bos,
	   "qwen3: eos <|im_end|>, pad <|endoftext|>, no bos (got %d %d %d)", in->eos_id, in->pad_id, in->bos_id);
	ok(!strncmp(ft_tokenizer_identity(t), "qwen3:", 6), "identity of dir/tokenizer.json names the dir");
	ok(ft_tokenizer_vocab_size(t) == 151669, "qwen3: vocab size with added tokens (%zu)", ft_tokenizer_vocab_size(t));
	int32_t bad = 999999;
	char *d = ft_tokenizer_decode(t, &bad, 1, 0);
	ok(!d && strstr(ft_errmsg(), "999999"), "decode of an unknown id fails naming it");
	/* as transformers decodes sampled ids: unknown ids dropped, a lone
	 * byte of a two-byte character (byte-level "\xC3" is "Ã") as U+FFFD */
	int32_t half = ft_tokenizer_token_to_id(t, "\xC3\x83"), hi[4] = { 0, bad, -1, 0 };
	ft_i32vec hv = {0};
	ft_tokenizer_encode(t, "hi", 2, 0, &hv);
	hi[0] = hv.n == 1 ? hv.v[0] : -1;
	hi[3] = half;
	d = ft_tokenizer_decode_lossy(t, hi, 4, 1);
	ok(half >= 0 && d && !strcmp(d, "hi\xEF\xBF\xBD"), "decode_lossy: unknown ids dropped, a broken "
	   "UTF-8 byte becomes U+FFFD (%s)", d ? d : "NULL");
	free(d);
	ft_i32vec_free(&hv);
	ft_i32vec v = {0};
	ok(ft_tokenizer_encode(t, "a\xff" "b", 3, 0, &v) == -1 && strstr(ft_errmsg(), "UTF-8"),
	   "invalid UTF-8 is refused");
	ft_i32vec_free(&v);
	ft_tokenizer_free(t);
}

/* mistral-sp with its added tokens marked normalized: they are matched
 * as the normalizer writes them ("▁<s>"), and HF reports that text back
 * (values from tokenizers 0.23.3). */
static void normalized_added(void)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/tokenizers/mistral-sp/tokenizer.json", shared());
	json_t *j = json_load_file(p, 0, NULL), *a;
	size_t i;
	if (!ok(j != NULL, "read mistral-sp tokenizer.json")) return;
	json_array_foreach(json_object_get(j, "added_tokens"), i, a)
		json_object_set_new(a, "normalized", json_true());
	json_dump_file(j, "build/test-tok-normalized.json", JSON_COMPACT);
	json_decref(j);
	ft_tokenizer *t = ft_tokenizer_load("build/test-tok-normalized.json");
	remove("build/test-tok-normalized.json");
	if (!ok(t != NULL, "normalized added tokens: loads")) return;
	ft_i32vec v = {0};
	const char *x = "a<s>b </s>";
	ft_tokenizer_encode(t, x, strlen(x), 0, &v);
	int32_t want[] = { 264, 28789, 28713, 28767, 28726, 2 };
	ok(v.n == 6 && !memcmp(v.v, want, sizeof want), "normalized added tokens: ids as HF");
	int32_t ids[] = { 1, 1, 2 };
	char *d = ft_tokenizer_decode(t, ids, 3, 0);
	ok(d && !strcmp(d, "<s> <s> </s>"), "normalized added tokens: decode as HF (%s)", d ? d : "");
	ok(!strcmp(ft_tokenizer_id_to_token(t, 1), "\xE2\x96\x81<s>") &&
	   ft_tokenizer_token_to_id(t, "<s>") == 1, "normalized added tokens: id_to_token / token_to_id");
	free(d);
	ft_i32vec_free(&v);
	ft_tokenizer_free(t);
}

/* tokenizer.model files compared on ids only (no tokenizers twin):
 * small-sp-nfkc (precompiled nmt_nfkc charsmap), small-sp-nobf (no
 * byte_fallback: runs of unknown pieces become one <unk>) */
static void model_ids(const char *name)
{
	size_t nc, ne, bad = 0;
	char mp[256], ip[256];
	snprintf(mp, sizeof mp, FIX "/%s.model", name);
	snprintf(ip, sizeof ip, FIX "/%s.ids.jsonl", name);
	json_t **cases = read_jsonl(FIX "/cases.jsonl", &nc);
	json_t **exp = read_jsonl(ip, &ne);
	ft_tokenizer *t = ft_tokenizer_load(mp);
	if (ok(t && ne == 150 && nc >= ne, "%s.model loads", name)) {
		for (size_t i = 0; i < ne; i++) {
			const json_t *tx = json_object_get(cases[i], "text");
			ft_i32vec a = {0};
			ft_tokenizer_encode(t, json_string_value(tx), json_string_length(tx), 0, &a);
			if (!ids_equal(&a, exp[i]) && ++bad <= 3) show(name, i, json_string_value(tx), &a, exp[i]);
			ft_i32vec_free(&a);
		}
		ok(!bad, "%s.model: ids equal sentencepiece on 150 cases (%zu differ)", name, bad);
	}
	ft_tokenizer_free(t);
	free_jsonl(cases, nc); free_jsonl(exp, ne);
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

/* A tokenizer.model directory with the three config files. */
static void model_dir(void)
{
	mkdir("build/test-tok-spdir", 0755);
	FILE *in = fopen(FIX "/small-sp.model", "rb"), *out = fopen("build/test-tok-spdir/tokenizer.model", "wb");
	char buf[4096];
	size_t k;
	while ((k = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, k, out);
	fclose(in); fclose(out);
	put("build/test-tok-spdir/tokenizer_config.json",
	    "{\"add_bos_token\": false, \"add_eos_token\": true, \"model_max_length\": 4096,"
	    " \"eos_token\": {\"content\": \"</s>\", \"lstrip\": false}}");
	put("build/test-tok-spdir/special_tokens_map.json", "{\"pad_token\": \"<unk>\", \"eos_token\": \"<s>\"}");
	put("build/test-tok-spdir/generation_config.json", "{\"eos_token_id\": [2, 7]}");
	ft_tokenizer *t = ft_tokenizer_load("build/test-tok-spdir/");
	if (ok(t != NULL, "tokenizer.model directory with configs loads")) {
		const ft_tokenizer_info *in = ft_tokenizer_info_get(t);
		ft_i32vec v = {0};
		ft_tokenizer_encode(t, "a", 1, 1, &v);
		ok(v.n == 2 && v.v[0] == 261 && v.v[1] == 2, "add_bos_token false / add_eos_token true applied");
		ok(!in->add_bos && in->add_eos && in->model_max_length == 4096, "add_bos/add_eos/model_max_length reported");
		ok(in->eos_id == 2 && in->pad_id == 0 && in->bos_id == 1,
		   "tokenizer_config wins over special_tokens_map, which fills pad (%d %d %d)", in->eos_id, in->pad_id, in->bos_id);
		ok(in->n_extra_eos == 2 && in->extra_eos_ids[0] == 2 && in->extra_eos_ids[1] == 7,
		   "generation_config eos_token_id list");
		ok(!strncmp(ft_tokenizer_identity(t), "test-tok-spdir:8dc56e6f", 23), "identity of a directory (%s)",
		   ft_tokenizer_identity(t));
		ft_i32vec_free(&v);
	}
	ft_tokenizer_free(t);
	put("build/test-tok-spdir/tokenizer_config.json", "{\"add_bos_token\": tru");
	t = ft_tokenizer_load("build/test-tok-spdir");
	ok(!t && strstr(ft_errmsg(), "tokenizer_config.json:1:"), "a broken tokenizer_config.json is an error (%s)", ft_errmsg());
	remove("build/test-tok-spdir/tokenizer_config.json");
	remove("build/test-tok-spdir/special_tokens_map.json");
	remove("build/test-tok-spdir/generation_config.json");
	remove("build/test-tok-spdir/tokenizer.model");
	rmdir("build/test-tok-spdir");
}

static void errors(void)
{
	ft_tokenizer *t = ft_tokenizer_load("tests/fixtures/tokenizer/no-such-file.json");
	ok(!t && strstr(ft_errmsg(), "no-such-file.json"), "missing file: error names it");
	t = ft_tokenizer_load("tests/fixtures");
	ok(!t && strstr(ft_errmsg(), "no tokenizer.json or tokenizer.model"), "directory without a tokenizer");
	t = ft_tokenizer_load(FIX "/cases.jsonl");
	ok(!t && strstr(ft_errmsg(), "cases.jsonl:"), "not JSON: error with file and position (%s)", ft_errmsg());
	FILE *f = fopen("build/test-tok-wordpiece.json", "w");
	fputs("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", f);
	fclose(f);
	t = ft_tokenizer_load("build/test-tok-wordpiece.json");
	ok(!t && strstr(ft_errmsg(), "WordPiece"), "unsupported model type named (%s)", ft_errmsg());
	f = fopen("build/test-tok-bad.model", "w");
	fputs("\x0a\x05hello", f);
	fclose(f);
	t = ft_tokenizer_load("build/test-tok-bad.model");
	ok(!t && strstr(ft_errmsg(), "test-tok-bad.model"), "corrupt tokenizer.model refused (%s)", ft_errmsg());
	remove("build/test-tok-wordpiece.json");
	remove("build/test-tok-bad.model");
}

int main(void)
{
	char p[4096], e[4096];
	parity("small-sp.model", FIX "/small-sp.model", FIX "/small-sp.expected.jsonl");
	parity("small-sp tokenizer.json", FIX "/small-sp/tokenizer.json", FIX "/small-sp-json.expected.jsonl");
	parity("synth-gpt2", FIX "/synth-gpt2", FIX "/synth-gpt2.expected.jsonl");
	parity("synth-llama3", FIX "/synth-llama3/tokenizer.json", FIX "/synth-llama3.expected.jsonl");
	parity("synth-metaspace", FIX "/synth-metaspace", FIX "/synth-metaspace.expected.jsonl");
	parity("synth-words", FIX "/synth-words", FIX "/synth-words.expected.jsonl");
	errors();
	model_dir();
	model_ids("small-sp-nfkc");
	model_ids("small-sp-nobf");
	if (!is_dir(shared())) {
		skip("../shared is absent: qwen3 and mistral-sp parity");
		return tap_done();
	}
	snprintf(p, sizeof p, "%s/tokenizers/qwen3", shared());
	parity("qwen3", p, FIX "/qwen3.expected.jsonl");
	snprintf(p, sizeof p, "%s/tokenizers/mistral-sp/tokenizer.json", shared());
	snprintf(e, sizeof e, FIX "/mistral-sp.expected.jsonl");
	parity("mistral-sp", p, e);
	settings();
	normalized_added();
	return tap_done();
}
