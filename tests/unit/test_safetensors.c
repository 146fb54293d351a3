/* test_safetensors.c - lib/format/safetensors.c: Python-written fixture read
 * exactly, our writer byte-identical to the Python package, round trips,
 * sharded models, every header validation error, and a fuzz loop.
 * Fixtures: tests/fixtures/safetensors/ (make_safetensors_fixture.py).
 * With FT_ST_EXPORT_DIR set, also writes ours.safetensors and
 * ours_stream.safetensors there for the script to load with Python. */
#define _GNU_SOURCE
#include "format/safetensors.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "tap.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/safetensors"

static char tmpdir[] = "/tmp/test_safetensors.XXXXXX";

static char *tpath(const char *name) { return ft_xasprintf("%s/%s", tmpdir, name); }

static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *b = ft_xmalloc((size_t)len + 1);
	*n = fread(b, 1, (size_t)len, f);
	fclose(f);
	return b;
}

static void spit(const char *path, const void *b, size_t n)
{
	FILE *f = fopen(path, "wb");
	fwrite(b, 1, n, f);
	fclose(f);
}

/* ---------- the fixture's tensors (mirrors TENSORS in the script) ---------- */

typedef struct {
	const char *name;
	ft_dtype dtype;
	int ndim;
	int64_t shape[3];
	unsigned char data[64];
	size_t nbytes;
} ref_t;

static ref_t refs[15];
static int nrefs;

static float fval(int i) { return (float)(i - 3) * 0.375f; }

static ref_t *ref(const char *name, ft_dtype t, int ndim, int64_t a, int64_t b, int64_t c)
{
	ref_t *r = &refs[nrefs++];
	r->name = name; r->dtype = t; r->ndim = ndim;
	r->shape[0] = a; r->shape[1] = b; r->shape[2] = c;
	size_t n = 1;
	for (int i = 0; i < ndim; i++) n *= (size_t)r->shape[i];
	r->nbytes = n * ft_dtype_size(t);
	return r;
}

static void make_refs(void)
{
	float f[8];
	for (int i = 0; i < 8; i++) f[i] = fval(i);
	ft_convert_from_f32(ref("f32", FT_F32, 2, 2, 3, 0)->data, FT_F32, f, 6);
	ft_convert_from_f32(ref("f16", FT_F16, 1, 4, 0, 0)->data, FT_F16, f, 4);
	ft_convert_from_f32(ref("bf16", FT_BF16, 2, 2, 2, 0)->data, FT_BF16, f, 4);
	ft_convert_from_f32(ref("f64", FT_F64, 1, 3, 0, 0)->data, FT_F64, f, 3);
	int8_t *i8 = (int8_t *)ref("i8", FT_I8, 1, 5, 0, 0)->data;
	for (int i = 0; i < 5; i++) i8[i] = (int8_t)(i * 37 - 90);
	uint8_t *u8 = ref("u8", FT_U8, 1, 4, 0, 0)->data;
	for (int i = 0; i < 4; i++) u8[i] = (uint8_t)(i * 70);
	int16_t i16[3];
	for (int i = 0; i < 3; i++) i16[i] = (int16_t)(i * 1000 - 1000);
	memcpy(ref("i16", FT_I16, 1, 3, 0, 0)->data, i16, sizeof i16);
	int32_t i32[3];
	for (int i = 0; i < 3; i++) i32[i] = i * 1000003 - 2000000;
	memcpy(ref("i32", FT_I32, 1, 3, 0, 0)->data, i32, sizeof i32);
	int64_t i64[2] = {-(1LL << 40) - 1, (1LL << 62) + 5};
	memcpy(ref("i64", FT_I64, 1, 2, 0, 0)->data, i64, sizeof i64);
	uint8_t *bo = ref("bool", FT_BOOL, 1, 5, 0, 0)->data;
	for (int i = 0; i < 5; i++) bo[i] = i % 3 == 0;
	float sc = 3.5f;
	memcpy(ref("scalar", FT_F32, 0, 0, 0, 0)->data, &sc, 4);
	ref("empty", FT_F16, 2, 0, 4, 0);
	ft_convert_from_f32(ref("deep.3d", FT_F32, 3, 2, 1, 2)->data, FT_F32, f, 4);
	uint32_t sp[6] = {0x7f800000, 0xff800000, 0x7fc00000, 0x80000000, 0x00000001, 0x7f7fffff};
	memcpy(ref("special", FT_F32, 1, 6, 0, 0)->data, sp, sizeof sp);
	ref("quote\"back\\slash \xc3\xa9", FT_U8, 1, 1, 0, 0)->data[0] = 7;
}

/* Does st hold exactly the reference tensors? */
static int matches_refs(const ft_st *st, const char *what)
{
	int good = ft_st_count(st) == (size_t)nrefs;
	for (int i = 0; i < nrefs && good; i++) {
		const ref_t *r = &refs[i];
		const ft_st_tensor *t = ft_st_find(st, r->name);
		good = t && t->dtype == r->dtype && t->ndim == r->ndim && t->nbytes == r->nbytes &&
		       memcmp(t->data, r->data, r->nbytes) == 0;
		for (int d = 0; good && d < r->ndim; d++) good = t->shape[d] == r->shape[d];
		if (!good) printf("# %s: tensor \"%s\" differs\n", what, r->name);
	}
	return good;
}

static ft_st_writer *refs_writer(int with_data)
{
	ft_st_writer *w = ft_st_writer_new();
	/* declared in table order, not file order */
	for (int i = 0; i < nrefs; i++)
		ft_st_writer_add(w, refs[i].name, refs[i].dtype, refs[i].ndim, refs[i].shape,
				 with_data ? refs[i].data : NULL);
	ft_st_writer_meta(w, "format", "pt");
	return w;
}

static int stream_refs(const char *path)
{
	ft_st_writer *w = refs_writer(0);
	int rc = ft_st_stream_begin(w, path);
	for (int i = 0; i < nrefs && rc == 0; i++)
		rc = ft_st_stream_put(w, refs[i].data, refs[i].nbytes);
	if (rc == 0) rc = ft_st_stream_end(w);
	ft_st_writer_free(w);
	return rc;
}

static void test_python_fixture(void)
{
	ft_st *st = ft_st_open(FIX "/python.safetensors");
	if (!ok(st != NULL, "open Python-written fixture: %s", st ? "" : ft_errmsg())) return;
	ok(matches_refs(st, "python"), "all %d tensors (every dtype, 0-d, empty, escaped name) read exactly", nrefs);
	const json_t *m = ft_st_metadata(st);
	ok(m && json_object_size(m) == 1 && strcmp(ft_json_str(m, "format", ""), "pt") == 0, "__metadata__ {\"format\":\"pt\"}");
	const ft_st_tensor *t = ft_st_find(st, "scalar");
	ok(t && t->ndim == 0 && t->numel == 1, "0-d tensor has one element");
	t = ft_st_find(st, "empty");
	ok(t && t->numel == 0 && t->nbytes == 0, "empty tensor: no elements");
	int sorted = 1, aligned = 1;
	for (size_t i = 0; i < ft_st_count(st); i++) {
		t = ft_st_at(st, i);
		if (i && strcmp(ft_st_at(st, i - 1)->name, t->name) >= 0) sorted = 0;
		if ((uintptr_t)t->data % ft_dtype_size(t->dtype)) aligned = 0;
	}
	ok(sorted && ft_st_at(st, ft_st_count(st)) == NULL, "ft_st_at: sorted by name, NULL past the end");
	ok(aligned, "every tensor's data aligned to its element size");
	ok(!ft_st_find(st, "nope") && !ft_st_find(st, ""), "missing names not found");
	float bf[4], want[4] = {fval(0), fval(1), fval(2), fval(3)};
	ok(ft_st_read_f32(ft_st_find(st, "bf16"), bf) == 0 && memcmp(bf, want, sizeof bf) == 0, "read_f32 of BF16");
	int bad = ft_st_read_f32(ft_st_find(st, "i8"), bf);
	ok(bad < 0 && strstr(ft_errmsg(), "\"i8\""), "read_f32 of I8 refused naming it: %s", ft_errmsg());
	ft_st_close(st);

	/* Our writer must produce the Python package's bytes exactly */
	size_t na, nb;
	unsigned char *a = slurp(FIX "/python.safetensors", &na);
	char *p = tpath("ours.safetensors");
	ft_st_writer *w = refs_writer(1);
	int rc = ft_st_writer_write(w, p);
	ft_st_writer_free(w);
	unsigned char *b = rc == 0 ? slurp(p, &nb) : NULL;
	ok(b && na == nb && memcmp(a, b, na) == 0, "our writer is byte-identical to the Python package");
	free(b);
	rc = stream_refs(p);
	b = rc == 0 ? slurp(p, &nb) : NULL;
	ok(b && na == nb && memcmp(a, b, na) == 0, "streaming writer (put in declaration order) too");
	free(b); free(p);

	/* the realistic truncation: a file cut short by one byte */
	p = tpath("cut.safetensors");
	spit(p, a, na - 1);
	st = ft_st_open(p);
	ok(!st && strstr(ft_errmsg(), "beyond the") && strstr(ft_errmsg(), "truncated file?") &&
	   strstr(ft_errmsg(), "\"bool\""), "file cut by one byte: %s", ft_errmsg());
	free(p); free(a);
	/* an empty tensor read as f32 with no buffer at all */
	st = ft_st_open(FIX "/python.safetensors");
	ok(st && ft_st_read_f32(ft_st_find(st, "empty"), NULL) == 0, "read_f32 of an empty tensor into NULL");
	ft_st_close(st);

	const char *exp = getenv("FT_ST_EXPORT_DIR");
	if (exp) {
		char *p1 = ft_xasprintf("%s/ours.safetensors", exp), *p2 = ft_xasprintf("%s/ours_stream.safetensors", exp);
		w = refs_writer(1);
		ok(ft_st_writer_write(w, p1) == 0 && stream_refs(p2) == 0, "exported to %s for the Python check", exp);
		ft_st_writer_free(w);
		free(p1); free(p2);
	}
}

static int no_temps(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		if (strstr(e->d_name, ".tmp.")) n++;
	closedir(d);
	return n == 0;
}

static void test_roundtrip(void)
{
	/* every dtype, odd sizes, multi-key metadata with escapes, names out of order */
	unsigned char buf[10][40];
	for (int t = 0; t < 10; t++)
		for (int i = 0; i < 40; i++) buf[t][i] = (unsigned char)(t * 31 + i * 7);
	ft_st_writer *w = ft_st_writer_new();
	int rc = 0;
	for (int t = FT_DTYPE_COUNT - 1; t >= 0; t--) {
		char name[32];
		snprintf(name, sizeof name, "t.%s", ft_dtype_name(t));
		int64_t shape[2] = {3, 40 / 8 / (int64_t)ft_dtype_size(t) + 1};
		rc |= ft_st_writer_add(w, name, t, 2, shape, buf[t]);
	}
	int64_t none[1] = {0};
	rc |= ft_st_writer_add(w, "z.empty", FT_BF16, 1, none, NULL);
	rc |= ft_st_writer_add(w, "z.scalar", FT_I64, 0, NULL, buf[9]);
	ft_st_writer_meta(w, "format", "pt");
	ft_st_writer_meta(w, "b", "line\nbreak \"q\" \x01 \xe2\x82\xac");
	ft_st_writer_meta(w, "a", "replaced");
	ft_st_writer_meta(w, "a", "first");
	char *p = tpath("rt.safetensors");
	rc |= ft_st_writer_write(w, p);
	ft_st_writer_free(w);
	ok(rc == 0, "write all dtypes, 0-d and empty tensors: %s", rc ? ft_errmsg() : "");
	ok(no_temps(), "no temporary file left behind");
	ft_st *st = ft_st_open(p);
	if (!ok(st != NULL, "read back: %s", st ? "" : ft_errmsg())) { free(p); return; }
	ok(ft_st_count(st) == 12, "12 tensors");
	int good = 1;
	for (int t = 0; t < FT_DTYPE_COUNT; t++) {
		char name[32];
		snprintf(name, sizeof name, "t.%s", ft_dtype_name(t));
		const ft_st_tensor *x = ft_st_find(st, name);
		size_t n = 3 * (size_t)(40 / 8 / ft_dtype_size(t) + 1);
		good &= x && x->dtype == (ft_dtype)t && x->numel == n && x->ndim == 2 &&
			x->nbytes == n * ft_dtype_size(t) && memcmp(x->data, buf[t], x->nbytes) == 0 &&
			(uintptr_t)x->data % ft_dtype_size(t) == 0;
	}
	ok(good, "every dtype's bytes, shape and alignment survive");
	const ft_st_tensor *e = ft_st_find(st, "z.empty"), *s = ft_st_find(st, "z.scalar");
	ok(e && e->numel == 0 && e->ndim == 1 && s && s->ndim == 0 && s->numel == 1 &&
	   memcmp(s->data, buf[9], 8) == 0, "empty and 0-d tensors survive");
	const json_t *m = ft_st_metadata(st);
	ok(m && json_object_size(m) == 3 && strcmp(ft_json_str(m, "a", ""), "first") == 0 &&
	   strcmp(ft_json_str(m, "b", ""), "line\nbreak \"q\" \x01 \xe2\x82\xac") == 0,
	   "metadata with escapes and a replaced key survives");
	ft_st_close(st);
	size_t n;
	unsigned char *raw = slurp(p, &n);
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
	ok(hl % 8 == 0 && (raw[8 + hl - 1] == ' ' || raw[8 + hl - 1] == '}'), "header padded with spaces to 8 bytes");
	ok(memcmp(raw + 8, "{\"__metadata__\":{\"a\":", 21) == 0, "__metadata__ first, keys sorted");
	free(raw);
	free(p);
}

static void test_writer_errors(void)
{
	ft_st_writer *w = ft_st_writer_new();
	int64_t sh[2] = {2, -1};
	float x[2] = {1, 2};
	int rc = ft_st_writer_add(w, "neg", FT_F32, 2, sh, x);
	ok(rc < 0 && strstr(ft_errmsg(), "shape"), "negative dimension refused: %s", ft_errmsg());
	rc = ft_st_writer_add(w, "__metadata__", FT_F32, 1, sh, x);
	ok(rc < 0, "\"__metadata__\" as a tensor name refused");
	rc = ft_st_writer_add(w, "deep", FT_F32, 9, sh, x);
	ok(rc < 0 && strstr(ft_errmsg(), "dimensions"), "9 dimensions refused");
	ft_st_writer_add(w, "a", FT_F32, 1, sh, x);
	ft_st_writer_add(w, "a", FT_F16, 1, sh, x);
	char *p = tpath("dup.safetensors");
	rc = ft_st_writer_write(w, p);
	ok(rc < 0 && strstr(ft_errmsg(), "added twice"), "duplicate name refused: %s", ft_errmsg());
	ok(access(p, F_OK) != 0 && no_temps(), "nothing written, no temporary left");
	ft_st_writer_free(w);

	w = ft_st_writer_new();
	ft_st_writer_add(w, "a", FT_F32, 1, sh, NULL);
	rc = ft_st_writer_write(w, p);
	ok(rc < 0 && strstr(ft_errmsg(), "no data"), "one-shot write of a declared-only tensor refused");
	ok(ft_st_writer_write(w, "/nonexistent-dir/x.safetensors") < 0, "unwritable path: error");
	ft_st_writer_add(w, "b", FT_F32, 1, sh, NULL);
	ok(ft_st_stream_begin(w, p) == 0, "stream begins");
	rc = ft_st_writer_add(w, "c", FT_F32, 1, sh, NULL);
	ok(rc < 0, "add after begin refused");
	rc = ft_st_stream_put(w, x, 4);
	ok(rc < 0 && strstr(ft_errmsg(), "declared"), "wrong byte count refused: %s", ft_errmsg());
	ok(ft_st_stream_put(w, x, 8) == 0, "put first tensor");
	rc = ft_st_stream_end(w);
	ok(rc < 0 && strstr(ft_errmsg(), "1 of 2"), "end before all put refused: %s", ft_errmsg());
	ok(access(p, F_OK) != 0 && no_temps(), "unfinished stream left no file");
	ft_st_writer_free(w);

	w = ft_st_writer_new();
	ft_st_writer_add(w, "a", FT_F32, 1, sh, NULL);
	ft_st_stream_begin(w, p);
	ft_st_writer_free(w);   /* abandoned mid-stream */
	ok(access(p, F_OK) != 0 && no_temps(), "freeing a writer mid-stream removes its temporary");
	free(p);
}

static void test_sharded(void)
{
	const char *idx = FIX "/sharded/model.safetensors.index.json";
	const char *paths[2] = {FIX "/sharded", idx};
	for (int k = 0; k < 2; k++) {
		ft_st *st = ft_st_open(paths[k]);
		if (!ok(st != NULL, "open sharded model via %s: %s", paths[k], st ? "" : ft_errmsg())) continue;
		const ft_st_tensor *a = ft_st_find(st, "a.weight"), *b = ft_st_find(st, "b.weight"),
				   *c = ft_st_find(st, "c.bias");
		float fa[4], fb[3], fc[2];
		int good = ft_st_count(st) == 3 && a && b && c &&
			   ft_st_read_f32(a, fa) == 0 && ft_st_read_f32(b, fb) == 0 && ft_st_read_f32(c, fc) == 0;
		for (int i = 0; good && i < 4; i++) good = fa[i] == fval(i) && (i >= 3 || fb[i] == fval(i));
		good = good && fc[0] == 1.5f && fc[1] == -2.0f;
		ok(good, "3 tensors across 2 shards, values exact");
		ok(a && strstr(a->file, "model-00001-of-00002") && c && strstr(c->file, "model-00002-of-00002"),
		   "each tensor knows its shard");
		const json_t *m = ft_st_metadata(st);
		ok(m && strcmp(ft_json_str(m, "format", ""), "pt") == 0, "metadata of the first shard");
		ft_st_close(st);
	}
	/* ft_st_write_index reproduces transformers' index byte for byte */
	char *n1 = ft_st_shard_name(1, 2), *n2 = ft_st_shard_name(2, 2);
	ok(strcmp(n1, "model-00001-of-00002.safetensors") == 0, "shard name %s", n1);
	json_t *wm = json_object();
	json_object_set_new(wm, "c.bias", json_string(n2));
	json_object_set_new(wm, "a.weight", json_string(n1));
	json_object_set_new(wm, "b.weight", json_string(n2));
	ok(ft_st_write_index(tmpdir, wm, 30, 9) == 0, "write index");
	size_t na, nb;
	char *p = tpath("model.safetensors.index.json");
	unsigned char *x = slurp(idx, &na), *y = slurp(p, &nb);
	ok(x && y && na == nb && memcmp(x, y, na) == 0, "index identical to transformers' save_pretrained");
	free(x); free(y); free(p); free(n1); free(n2);
	json_decref(wm);
}

/* An index in tmpdir naming shards; returns its path. */
static char *write_index(const char *name, const char *json)
{
	char *p = tpath(name);
	spit(p, json, strlen(json));
	return p;
}

static void expect_open_fail(const char *path, const char *frag, const char *what)
{
	ft_st *st = ft_st_open(path);
	const char *msg = ft_errmsg();
	ok(!st && strstr(msg, frag) != NULL, "%s: %s", what, st ? "opened!" : msg);
	ft_st_close(st);
}

static void test_sharded_errors(void)
{
	char *s1 = ft_xasprintf("%s/s1.safetensors", tmpdir), *s2 = ft_xasprintf("%s/s2.safetensors", tmpdir);
	ft_st_writer *w = ft_st_writer_new();
	int64_t sh[1] = {2};
	float x[2] = {1, 2};
	ft_st_writer_add(w, "a", FT_F32, 1, sh, x);
	ft_st_writer_write(w, s1);
	ft_st_writer_write(w, s2);  /* same tensor "a" in both */
	ft_st_writer_free(w);

	char *p = write_index("i1.json", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"gone.safetensors\"}}");
	expect_open_fail(p, "tensor \"b\" is in", "shard file missing: names the tensor");
	ft_st *st = ft_st_open(p);
	ok(!st && strstr(ft_errmsg(), "gone.safetensors"), "... and the file");
	free(p);
	p = write_index("i2.json", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"z\":\"s1.safetensors\"}}");
	expect_open_fail(p, "tensor \"z\" listed in weight_map is not in", "tensor missing from its shard");
	free(p);
	p = write_index("i3.json", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
	expect_open_fail(p, "appears in both", "same tensor in two shards");
	free(p);
	p = write_index("i4.json", "{\"metadata\":{}}");
	expect_open_fail(p, "weight_map", "no weight_map");
	free(p);
	p = write_index("i5.json", "{\"weight_map\":{\n\"a\": 3}}");
	expect_open_fail(p, "weight_map \"a\" must be a file name", "weight_map value not a string");
	free(p);
	p = write_index("i6.json", "{\"weight_map\":\n  {\"a\" \"s1\"}}");
	expect_open_fail(p, "i6.json:2:", "index JSON error has path:line:col");
	free(p);
	p = write_index("i7.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
	st = ft_st_open(p);
	ok(st && ft_st_count(st) == 1, "index naming one shard of two files: ok");
	ft_st_close(st);
	free(p);

	/* directories */
	char *d = tpath("adapter");
	mkdir(d, 0777);
	char *ad = ft_xasprintf("%s/adapter_model.safetensors", d);
	rename(s1, ad);
	st = ft_st_open(d);
	ok(st && ft_st_find(st, "a"), "directory with adapter_model.safetensors");
	ft_st_close(st);
	unlink(ad);
	expect_open_fail(d, "no model.safetensors", "directory without weights");
	rmdir(d);
	free(ad); free(d); free(s1); free(s2);
	expect_open_fail("/nonexistent/model.safetensors", "/nonexistent/model.safetensors", "missing file");
}

/* ---------- header validation ---------- */

/* A file: u64 header length, header text, then `data` zero bytes. */
static char *craftn(const char *header, size_t hl, size_t data)
{
	static int n;
	char name[32];
	snprintf(name, sizeof name, "bad%d.safetensors", n++);
	char *p = tpath(name);
	unsigned char *b = ft_xcalloc(8 + hl + data, 1);
	for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
	memcpy(b + 8, header, hl);
	spit(p, b, 8 + hl + data);
	free(b);
	return p;
}

static char *craft(const char *header, size_t data) { return craftn(header, strlen(header), data); }

static void bad_headern(const char *header, size_t hl, size_t data, const char *frag, const char *what)
{
	char *p = craftn(header, hl, data);
	ft_st *st = ft_st_open(p);
	const char *msg = ft_errmsg();
	ok(!st && strstr(msg, frag) && strstr(msg, p), "%s: %s", what, st ? "opened!" : msg);
	ft_st_close(st);
	free(p);
}

static void bad_header(const char *header, size_t data, const char *frag, const char *what)
{
	bad_headern(header, strlen(header), data, frag, what);
}

#define T(body) "{\"t\":{" body "}}"

static void test_validation(void)
{
	char *p = tpath("short.safetensors");
	spit(p, "\x10\0\0", 3);
	expect_open_fail(p, "truncated", "3-byte file");
	spit(p, "", 0);
	expect_open_fail(p, "truncated", "empty file");
	spit(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
	expect_open_fail(p, "header length 18446744073709551615 but only 2 bytes follow", "header length beyond the file");
	spit(p, "\x01\0\0\0\0\0\0\0{", 9);
	expect_open_fail(p, "too small", "1-byte header");
	/* over the 100 MB limit: a sparse file, so this costs no disk */
	FILE *f = fopen(p, "wb");
	fwrite("\x01\xe1\xf5\x05\0\0\0\0", 1, 8, f);   /* 100000001 */
	fclose(f);
	truncate(p, 100000016);
	expect_open_fail(p, "exceeds the 100000000-byte limit", "header over 100 MB");
	free(p);

	bad_header("{\"t\":", 0, "not valid JSON", "unterminated JSON");
	bad_header("{\"t\":{}} x", 0, "not valid JSON", "trailing garbage after JSON");
	bad_header("[1,2]", 0, "not a JSON object", "array header");
	bad_header("{\"t\":1}", 0, "entry must be an object", "entry not an object");
	bad_header(T("\"shape\":[1],\"data_offsets\":[0,4]"), 4, "\"dtype\" missing", "no dtype");
	bad_header(T("\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]"), 4, "\"dtype\" missing or not a string", "dtype not a string");
	bad_header(T("\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]"), 1, "unknown dtype \"F8_E4M3\"", "unknown dtype");
	bad_header(T("\"dtype\":\"F32\",\"data_offsets\":[0,4]"), 4, "\"shape\" missing", "no shape");
	bad_header(T("\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]"), 4, "\"shape\" missing or not an array", "shape not an array");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]"), 4, "shape[0] is not a non-negative integer", "negative dimension");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]"), 4, "shape[0] is not a non-negative integer", "fractional dimension");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]"), 4, "9 dimensions", "too many dimensions");
	bad_header(T("\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]"), 4,
		   "overflows the element count", "element count overflow");
	bad_header(T("\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]"), 4,
		   "overflows the byte size", "byte size overflow");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1]"), 4, "\"data_offsets\" must be", "no data_offsets");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]"), 4, "\"data_offsets\" must be", "data_offsets of length 1");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]"), 4, "\"data_offsets\" must be", "negative offset");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]"), 4, "\"data_offsets\" must be", "offset not an integer");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]"), 4, "begin 4 > end 0", "begin > end");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), 4, "end 8 beyond the 4-byte data region", "offsets past the end (truncated)");
	bad_header(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]"), 4, "span 4 bytes but F32 shape needs 8", "size mismatch");
	bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		   "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlap", "overlapping tensors");
	bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "duplicate", "duplicate tensor name");
	bad_header("{\"__metadata__\":[1]}", 0, "__metadata__ must be an object", "__metadata__ not an object");
	bad_header("{\"__metadata__\":{\"format\":1}}", 0, "__metadata__ \"format\" must be a string", "__metadata__ value not a string");
	static const char nulpad[] = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\0\0";
	bad_headern(nulpad, sizeof nulpad - 1, 4, "NUL byte at header byte 54", "NUL padding");

	/* Accepted: gaps, empty tensors sharing an offset, unknown fields,
	 * null metadata, an empty header object, space padding */
	const char *okh[] = {
		"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
		"\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}}",
		"{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]},"
		"\"b\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[2,2]},"
		"\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],\"extra\":1}}",
		"{\"__metadata__\":null}",
		"{}      ",
	};
	for (int i = 0; i < 4; i++) {
		p = craft(okh[i], 4);
		ft_st *st = ft_st_open(p);
		ok(st != NULL, "accepted: %s", okh[i]);
		ft_st_close(st);
		free(p);
	}
}

/* ---------- fuzz ---------- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void)
{
	rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
	return rng;
}

static void test_fuzz(void)
{
	size_t n;
	unsigned char *orig = slurp(FIX "/python.safetensors", &n);
	if (!orig) { ok(0, "fixture for fuzzing"); return; }
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--) hl = hl << 8 | orig[i];
	size_t data0 = 8 + (size_t)hl;
	/* each tensor's offset in the data region, from the original header */
	json_t *hdr = ft_json_load_string((const char *)orig + 8, (size_t)hl, "header");
	unsigned char *buf = ft_xmalloc(n);
	char *p = tpath("fuzz.safetensors");
	int errors = 0, opened = 0, unnamed = 0, trunc_opened = 0, bad_data = 0, data_cases = 0;
	/* FT_ST_FUZZ_ITERS runs a longer soak by hand */
	int iters = getenv("FT_ST_FUZZ_ITERS") ? atoi(getenv("FT_ST_FUZZ_ITERS")) : 400;
	for (int it = 0; it < iters; it++) {
		memcpy(buf, orig, n);
		size_t len = n;
		int kind = (int)(next_rand() % 4), data_only = 1;
		if (kind == 0) {
			len = (size_t)(next_rand() % n);     /* truncation */
		} else {
			int flips = 1 + (int)(next_rand() % 4);
			for (int k = 0; k < flips; k++) {
				/* kind 1: anywhere; 2: in the header; 3: in the data */
				size_t at = kind == 1 ? next_rand() % n : kind == 2 ? next_rand() % data0
					  : data0 + next_rand() % (n - data0);
				buf[at] ^= (unsigned char)(1u << (next_rand() % 8));
				if (at < data0) data_only = 0;
			}
		}
		spit(p, buf, len);
		ft_st *st = ft_st_open(p);
		if (!st) {
			errors++;
			if (!strstr(ft_errmsg(), p)) unnamed++;   /* every error names the file */
			continue;
		}
		opened++;
		if (kind == 0) trunc_opened++;
		/* read every byte of every tensor: must stay inside the mapping */
		volatile unsigned sum = 0;
		for (size_t i = 0; i < ft_st_count(st); i++) {
			const ft_st_tensor *t = ft_st_at(st, i);
			for (size_t j = 0; j < t->nbytes; j++) sum += ((const unsigned char *)t->data)[j];
			if (t->nbytes != t->numel * ft_dtype_size(t->dtype)) bad_data++;
		}
		(void)sum;
		/* header untouched: every tensor is exactly the (flipped) file bytes */
		if (data_only) {
			data_cases++;
			if (ft_st_count(st) != (size_t)nrefs) bad_data++;
			for (size_t i = 0; i < ft_st_count(st); i++) {
				const ft_st_tensor *t = ft_st_at(st, i);
				json_t *off = json_object_get(json_object_get(hdr, t->name), "data_offsets");
				size_t b = (size_t)json_integer_value(json_array_get(off, 0));
				if (!off || memcmp(t->data, buf + data0 + b, t->nbytes) != 0) bad_data++;
			}
		}
		ft_st_close(st);
	}
	ok(trunc_opened == 0, "fuzz: every truncation is an error");
	ok(unnamed == 0, "fuzz: every error names the file");
	ok(data_cases > iters / 8, "fuzz: %d cases corrupted only data", data_cases);
	ok(bad_data == 0, "fuzz: data-only corruptions read back as the file's bytes");
	ok(errors > iters / 4 && opened > iters / 8, "fuzz: %d cases, %d errors, %d opened, no crash", iters, errors, opened);
	json_decref(hdr);
	free(p); free(buf); free(orig);
}

/* Structured fuzz: replace one number (a shape dim or an offset) in the
 * header with an interesting value, fixing up the header length.  Must be
 * an error, or tensors that stay inside the file and do not overlap. */
static void test_fuzz_numbers(void)
{
	static const char *vals[] = {"0", "1", "2", "3", "7", "8", "-1", "100", "156", "157", "1000000",
				     "4294967296", "9223372036854775807", "9223372036854775808",
				     "18446744073709551616", "1e3", "2.0", "null", "\"4\""};
	size_t n;
	unsigned char *orig = slurp(FIX "/python.safetensors", &n);
	if (!orig) { ok(0, "fixture for fuzzing"); return; }
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--) hl = hl << 8 | orig[i];
	const char *hdr = (const char *)orig + 8;
	size_t data_len = n - 8 - (size_t)hl;
	/* positions of digit runs inside "shape" / "data_offsets" arrays */
	size_t starts[256], ends[256], nnum = 0;
	for (size_t i = 0; i < hl && nnum < 256; i++)
		if (hdr[i] >= '0' && hdr[i] <= '9' && (hdr[i - 1] == '[' || hdr[i - 1] == ',')) {
			size_t j = i;
			while (j < hl && hdr[j] >= '0' && hdr[j] <= '9') j++;
			starts[nnum] = i; ends[nnum++] = j;
			i = j;
		}
	char *p = tpath("numfuzz.safetensors");
	int errors = 0, opened = 0, bad = 0;
	for (int it = 0; it < 300; it++) {
		size_t k = next_rand() % nnum;
		const char *v = vals[next_rand() % (sizeof vals / sizeof *vals)];
		char *h = ft_xasprintf("%.*s%s%.*s", (int)starts[k], hdr, v, (int)(hl - ends[k]), hdr + ends[k]);
		size_t nh = strlen(h);
		unsigned char *b = ft_xmalloc(8 + nh + data_len);
		for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)nh >> (8 * i));
		memcpy(b + 8, h, nh);
		memcpy(b + 8 + nh, orig + 8 + hl, data_len);
		spit(p, b, 8 + nh + data_len);
		ft_st *st = ft_st_open(p);
		if (!st) {
			errors++;
		} else {
			opened++;
			const unsigned char *lo = NULL, *hi = NULL;
			for (size_t i = 0; i < ft_st_count(st); i++) {
				const ft_st_tensor *t = ft_st_at(st, i);
				if (!t->nbytes) continue;
				const unsigned char *d = t->data;
				if (!lo || d < lo) lo = d;
				if (!hi || d + t->nbytes > hi) hi = d + t->nbytes;
				for (size_t j = 0; j < ft_st_count(st); j++) {
					const ft_st_tensor *u = ft_st_at(st, j);
					const unsigned char *e = u->data;
					if (j != i && u->nbytes && d < e + u->nbytes && e < d + t->nbytes) bad++;
				}
			}
			if (hi && (size_t)(hi - lo) > data_len) bad++;
			ft_st_close(st);
		}
		free(h); free(b);
	}
	ok(bad == 0, "number fuzz: opened files keep tensors inside the data and apart");
	ok(errors > 50 && opened > 10, "number fuzz: 300 cases over %zu numbers, %d errors, %d opened",
	   nnum, errors, opened);
	free(p); free(orig);
}

static void cleanup(void)
{
	ft_remove_tree(tmpdir);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
	make_refs();
	test_python_fixture();
	test_roundtrip();
	test_writer_errors();
	test_sharded();
	test_sharded_errors();
	test_validation();
	test_fuzz();
	test_fuzz_numbers();
	cleanup();
	return tap_done();
}
