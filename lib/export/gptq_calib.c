/* gptq_calib.c - the calibration windows of a GPTQ export (gptq.h).
 *
 * LLaMA-Factory's _get_quantization_dataset (model/model_utils/
 * quantization.py) draws them with Python's random module, which its
 * export never seeds (each run differs); ft seeds it (--seed, default 42)
 * and reproduces the module bit for bit, so random.seed(42) before
 * LLaMA-Factory's export picks the same texts and offsets.
 *
 * The file is read as datasets' "json" builder reads a data file: JSON
 * lines, or one JSON array of records; each record's "text" is a string.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "util/json.h"
#include "export/gptq.h"

/* ---- CPython's random.randint over util/rng.h's MT19937 ---- */

/* getrandbits(k), 0 < k <= 64: 32-bit words from the least significant
 * up, the last one's surplus low bits dropped. */
static uint64_t getrandbits(ft_pyrandom *g, int k)
{
	if (k <= 32) return ft_mt_next(g) >> (32 - k);
	uint64_t lo = ft_mt_next(g);
	return lo | (uint64_t)(ft_mt_next(g) >> (64 - k)) << 32;
}

/* randint(a, b) = a + _randbelow(b - a + 1): getrandbits(n.bit_length())
 * until below n (b - a < 2^63). */
int64_t ft_pyrandom_randint(ft_pyrandom *g, int64_t a, int64_t b)
{
	uint64_t n = (uint64_t)(b - a) + 1;
	int k = 0;
	while (k < 64 && (n >> k)) k++;
	uint64_t r;
	do
		r = getrandbits(g, k);
	while (r >= n);
	return a + (int64_t)r;
}

/* ---- the texts ---- */

typedef struct {
	json_t *doc;        /* array of records */
	size_t n;
	int32_t *ntok;      /* token counts, -1 until a text is first drawn */
} texts;

static int load_texts(const char *path, texts *t)
{
	FILE *f = fopen(path, "rb");
	if (!f) return ft_fail("%s:", path);
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len = getdelim(&buf, &cap, 0, f);
	int bad = ferror(f);
	fclose(f);
	if (len < 0 || bad) {
		free(buf);
		return len < 0 && !bad ? ft_fail("%s: empty file", path) : ft_fail("%s: read error", path);
	}
	const char *p = buf;
	while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
	if (*p == '[') {
		t->doc = ft_json_load_string(buf, (size_t)len, path);
	} else {   /* JSON lines */
		t->doc = json_array();
		long line = 0;
		for (char *save, *s = strtok_r(buf, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
			line++;
			size_t l = strlen(s);
			while (l && (s[l - 1] == '\r' || s[l - 1] == ' ')) l--;
			if (!l) continue;
			json_error_t e;
			json_t *v = json_loadb(s, l, 0, &e);
			if (!v) {
				json_decref(t->doc);
				t->doc = NULL;
				free(buf);
				return ft_fail("%s:%ld: not JSON: %s", path, line, e.text);
			}
			json_array_append_new(t->doc, v);
		}
	}
	free(buf);
	if (!t->doc) return -1;
	if (!json_is_array(t->doc)) return ft_fail("%s: expected JSON lines or an array of records", path);
	t->n = json_array_size(t->doc);
	for (size_t i = 0; i < t->n; i++) {
		json_t *r = json_array_get(t->doc, i);
		if (!json_is_string(json_object_get(r, "text")))
			return ft_fail("%s: record %zu has no \"text\" string", path, i + 1);
	}
	if (t->n == 0) return ft_fail("%s: no records", path);
	t->ntok = ft_xmalloc(t->n * sizeof *t->ntok);
	for (size_t i = 0; i < t->n; i++) t->ntok[i] = -1;
	return 0;
}

/* The tokens of text i into ids (its count cached). */
static int encode_text(texts *t, size_t i, ft_gptq_encode_fn encode, void *ctx, ft_i32vec *ids)
{
	json_t *s = json_object_get(json_array_get(t->doc, i), "text");
	ids->n = 0;
	if (encode(ctx, json_string_value(s), json_string_length(s), ids) < 0) return -1;
	t->ntok[i] = (int32_t)ids->n;
	return 0;
}

int ft_gptq_calibration(const char *path, int nsamples, int maxlen, uint64_t seed, ft_gptq_encode_fn encode,
			void *ctx, int32_t *windows)
{
	if (nsamples <= 0 || maxlen <= 0) return ft_fail("export_quantization_nsamples and _maxlen must be positive");
	texts t = { 0 };
	if (load_texts(path, &t) < 0) {
		json_decref(t.doc);
		return -1;
	}
	ft_pyrandom g;
	ft_pyrandom_seed(&g, seed);
	ft_i32vec ids = { 0 };
	int rc = 0;
	size_t held = (size_t)-1;   /* the text whose ids are in ids */
	for (int s = 0; s < nsamples && rc == 0; s++) {
		size_t idx = 0;
		int tries = 0, found = 0;
		while (!found) {
			if (tries > 100) {
				rc = ft_fail("%s: no text longer than %d tokens in 101 draws (LLaMA-Factory: \"Cannot find "
					     "satisfying example\"): decrease export_quantization_maxlen", path, maxlen);
				break;
			}
			idx = (size_t)ft_pyrandom_randint(&g, 0, (int64_t)t.n - 1);
			tries++;
			if (t.ntok[idx] < 0) {
				if (encode_text(&t, idx, encode, ctx, &ids) < 0) {
					rc = ft_fail_ctx("%s: record %zu: ", path, idx + 1);
					break;
				}
				held = idx;
			}
			found = t.ntok[idx] > maxlen;
		}
		if (rc < 0) break;
		if (held != idx) {
			if (encode_text(&t, idx, encode, ctx, &ids) < 0) {
				rc = ft_fail_ctx("%s: record %zu: ", path, idx + 1);
				break;
			}
			held = idx;
		}
		int64_t off = ft_pyrandom_randint(&g, 0, t.ntok[idx] - maxlen - 1);
		memcpy(windows + (size_t)s * maxlen, ids.v + off, (size_t)maxlen * sizeof *windows);
	}
	free(ids.v);
	free(t.ntok);
	json_decref(t.doc);
	return rc;
}
