/* test_stream.c - record streams: round trips across shards, concatenation,
 * skippable frames, headers, truncation at every length, byte flips,
 * hostile lengths, JSON lines.  zstd is used directly only to build
 * hostile inputs and to find frame boundaries. */
#define _GNU_SOURCE
#include "tap.h"
#include "format/stream.h"
#include "util/sha256.h"
#include "util/error.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

static char tmpdir[] = "/tmp/ft-test-stream-XXXXXX";

static char *tpath(const char *name)
{
	return ft_xasprintf("%s/%s", tmpdir, name);
}

static json_t *test_header(const char *kind, int v)
{
	return json_pack("{s:s, s:s, s:{s:i, s:s, s:{s:i}}}", "kind", kind, "producer", "test_stream",
			 "meta", "vocab_size", v, "template", "t", "counts", "records", 7);
}

/* Record i: deterministic, varied sizes. */
static void put_record(ft_writer *w, uint64_t i)
{
	int32_t ids[64];
	size_t n = (size_t)((i * 7) % 60);
	for (size_t k = 0; k < n; k++) ids[k] = (int32_t)(i * 31 + k * 1000003u) - 5000;
	char s[32];
	snprintf(s, sizeof s, "record %llu", (unsigned long long)i);
	ft_w_begin(w, 4);
	ft_w_int(w, "i", (int64_t)i);
	ft_w_i32s(w, "ids", ids, n);
	ft_w_float(w, "w", (double)i / 3.0);
	ft_w_str(w, "s", s);
}

static int check_record(const ft_rec *rec, uint64_t i)
{
	int64_t got;
	double w;
	ft_i32vec ids = {0};
	int good = ft_rec_int(rec, "i", &got) == 0 && got == (int64_t)i &&
		   ft_rec_float(rec, "w", &w) == 0 && w == (double)i / 3.0 &&
		   ft_rec_i32s(rec, "ids", &ids) == 0 && ids.n == (i * 7) % 60;
	for (size_t k = 0; good && k < ids.n; k++)
		good = ids.v[k] == (int32_t)(i * 31 + k * 1000003u) - 5000;
	const char *s;
	size_t len;
	char want[32];
	snprintf(want, sizeof want, "record %llu", (unsigned long long)i);
	good = good && ft_rec_str(rec, "s", &s, &len) == 0 && len == strlen(want) && !memcmp(s, want, len);
	ft_i32vec_free(&ids);
	return good;
}

static int write_stream(const ft_writer_opts *o, const json_t *h, uint64_t n)
{
	ft_writer *w = ft_writer_open(o, h);
	if (!w) return -1;
	for (uint64_t i = 0; i < n; i++) {
		put_record(w, i);
		if (ft_w_end(w) < 0) {
			ft_writer_abort(w);
			return -1;
		}
	}
	return ft_writer_close(w);
}

/* Read all records: count of good ones in order, -1 on a mismatch; *rc
 * gets the final ft_reader_next() result (or -2: open failed). */
static long read_all(const char *const *paths, size_t np, int *rc)
{
	ft_reader *r = ft_reader_open_many(paths, np);
	if (!r) {
		*rc = -2;
		return 0;
	}
	long n = 0;
	ft_rec *rec;
	while ((*rc = ft_reader_next(r, &rec)) > 0) {
		if (!check_record(rec, (uint64_t)n) || ft_reader_index(r) != (uint64_t)n) {
			n = -1;
			break;
		}
		n++;
	}
	ft_reader_close(r);
	return n;
}

static long read_one(const char *path, int *rc)
{
	return read_all(&path, 1, rc);
}

static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) return NULL;
	fseek(f, 0, SEEK_END);
	*n = (size_t)ftell(f);
	rewind(f);
	unsigned char *b = ft_xmalloc(*n + 1);
	if (fread(b, 1, *n, f) != *n) *n = 0;
	fclose(f);
	return b;
}

static void spit(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fwrite(p, 1, n, f);
		fclose(f);
	}
}

static void test_sharded(void)
{
	json_t *h = test_header("test", 100);
	char *dir = tpath("by-records");
	ft_writer_opts o = {.dir = dir, .shard_records = 700};
	ft_writer *w = ft_writer_open(&o, h);
	ok(w != NULL, "open a shard directory writer");
	int bad = 0;
	for (uint64_t i = 0; i < 3000; i++) {
		put_record(w, i);
		bad |= ft_w_end(w) < 0;
	}
	ok(!bad, "3000 records written");
	ok(ft_writer_finish(w) == 0, "finish");
	ok(ft_writer_nshards(w) == 5, "5 shards of 700 records (got %zu)", ft_writer_nshards(w));
	uint64_t total = 0;
	int sums = 1, names = 1;
	for (size_t i = 0; i < ft_writer_nshards(w); i++) {
		total += ft_writer_shard_records(w, i);
		char want[64], hex[65];
		snprintf(want, sizeof want, "/shard-%05zu.ftb.zst", i);
		const char *p = ft_writer_shard_path(w, i);
		names &= strlen(p) > strlen(want) && !strcmp(p + strlen(p) - strlen(want), want);
		sums &= ft_sha256_file(p, hex) == 0 && !strcmp(hex, ft_writer_shard_sha256(w, i));
	}
	ok(names, "shards are named shard-NNNNN.ftb.zst");
	ok(total == 3000 && ft_writer_shard_records(w, 4) == 200, "per-shard record counts add up");
	ok(sums, "per-shard sha256 matches the files");
	ok(ft_writer_records(w) == 3000, "writer counts records");
	ok(ft_writer_close(w) == 0, "close after finish");

	int rc;
	ok(read_one(dir, &rc) == 3000 && rc == 0, "directory reads back as one stream (%s)", rc ? ft_errmsg() : "");
	char *s3 = tpath("by-records/shard-00003.ftb.zst");
	ft_reader *r = ft_reader_open(s3);
	ft_rec *rec;
	ok(r && ft_reader_next(r, &rec) == 1 && check_record(rec, 0) == 0, "a shard alone is a stream with its own header");
	int64_t first;
	ok(r && ft_rec_int(rec, "i", &first) == 0 && first == 2100, "shard 3 starts at record 2100");
	ok(r && strcmp(ft_reader_kind(r), "test") == 0, "shard header carries the kind");
	ft_reader_close(r);
	free(s3);

	/* the same records, rotated by compressed size */
	char *dir2 = tpath("by-bytes");
	ft_writer_opts o2 = {.dir = dir2, .shard_bytes = 8000};
	w = ft_writer_open(&o2, h);
	for (uint64_t i = 0; i < 3000; i++) {
		put_record(w, i);
		ft_w_end(w);
	}
	ok(ft_writer_finish(w) == 0, "finish the byte-rotated writer");
	size_t ns = ft_writer_nshards(w);
	int sizes = 1;
	for (size_t i = 0; i < ns; i++) {
		struct stat st;
		stat(ft_writer_shard_path(w, i), &st);
		if (i + 1 < ns) sizes &= st.st_size >= 8000 && st.st_size < 2 * 8000 + 1024;
	}
	ok(ns >= 5 && sizes, "%zu shards of about 8000 compressed bytes each", ns);
	ft_writer_close(w);
	ok(read_one(dir2, &rc) == 3000 && rc == 0, "byte-rotated shards read back");

	/* several operands: the two directories in a row, then the shards of one */
	const char *both[] = {dir, dir2};
	ft_reader *r2 = ft_reader_open_many(both, 2);
	long n = 0;
	int good = 1;
	while ((rc = ft_reader_next(r2, &rec)) > 0) good &= check_record(rec, (uint64_t)(n++ % 3000));
	ok(r2 && good && n == 6000 && rc == 0, "two directories with compatible headers read as one stream");
	/* the first header stays valid after its file is closed */
	char *text = NULL;
	size_t tlen = 0;
	FILE *mem = open_memstream(&text, &tlen);
	ft_reader_write_header_json(r2, mem);
	fclose(mem);
	ok(text && strstr(text, "\"kind\":\"test\"") && strstr(text, "\"vocab_size\":100"),
	   "header JSON after the last shard: %s", text);
	free(text);
	ft_reader_close(r2);

	/* a writer must not mix with old shards unless told to */
	ok(ft_writer_open(&o, h) == NULL && strstr(ft_errmsg(), "already holds shards"),
	   "a directory with shards is refused: %s", ft_errmsg());
	o.replace = 1;
	o.shard_records = 0;
	ok(write_stream(&o, h, 10) == 0, "replace: rewrite the directory with one shard");
	char *stale = tpath("by-records/shard-00001.ftb.zst");
	ok(access(stale, F_OK) != 0, "stale higher shards are removed");
	ok(read_one(dir, &rc) == 10 && rc == 0, "the replaced directory holds just the new stream");
	free(stale);
	free(dir);
	free(dir2);
	json_decref(h);
}

/* A skippable frame: magic 0x184D2A5?, little-endian length, payload. */
static size_t skippable(unsigned char *out, size_t len)
{
	unsigned char hdr[8] = {0x5a, 0x2a, 0x4d, 0x18, (unsigned char)len, (unsigned char)(len >> 8), 0, 0};
	memcpy(out, hdr, 8);
	memset(out + 8, 0xab, len);
	return 8 + len;
}

static void test_concat_and_frames(void)
{
	json_t *h = test_header("test", 100);
	char *a = tpath("a.zst");
	ft_writer_opts o = {.path = a, .frame_bytes = 500};
	ok(write_stream(&o, h, 200) == 0, "write a multi-frame stream");
	size_t n;
	unsigned char *buf = slurp(a, &n);
	size_t frames = 0;
	for (size_t off = 0; off < n; frames++) off += ZSTD_findFrameCompressedSize(buf + off, n - off);
	ok(frames > 5, "frames are closed every frame_bytes (%zu frames)", frames);

	/* a a: the repeated header is skipped */
	unsigned char *cat = ft_xmalloc(3 * n + 200);
	size_t m = 0;
	m += skippable(cat + m, 40);
	memcpy(cat + m, buf, n), m += n;
	m += skippable(cat + m, 7);
	memcpy(cat + m, buf, n), m += n;
	m += skippable(cat + m, 0);
	char *ab = tpath("aa.zst");
	spit(ab, cat, m);
	ft_reader *r = ft_reader_open(ab);
	ft_rec *rec;
	long cnt = 0;
	int rc, good = 1;
	while ((rc = ft_reader_next(r, &rec)) > 0) good &= check_record(rec, (uint64_t)(cnt++ % 200));
	ok(r && good && cnt == 400 && rc == 0, "concatenated streams with skippable frames: 400 records");
	ok(r && ft_reader_index(r) == 399, "record index counts across the concatenation");
	ft_reader_close(r);

	/* a second stream with the same meta but other counts is compatible */
	json_t *h2 = test_header("test", 100);
	json_object_set_new(json_object_get(h2, "meta"), "counts", json_pack("{s:i}", "records", 99));
	json_object_set_new(h2, "producer", json_string("other"));
	char *b = tpath("b.zst");
	ft_writer_opts ob = {.path = b};
	write_stream(&ob, h2, 5);
	ok(ft_headers_compatible(h, h2), "headers differing in meta.counts and producer are compatible");
	const char *ops[] = {a, b};
	ok(read_all(ops, 2, &rc) == -1, "two streams read in order (the record check fails at record 200)");

	/* incompatible meta and kind */
	json_t *h3 = test_header("test", 101);
	char *c = tpath("c.zst");
	ft_writer_opts oc = {.path = c};
	write_stream(&oc, h3, 5);
	ok(!ft_headers_compatible(h, h3), "meta.vocab_size differs: incompatible");
	const char *ops2[] = {a, c};
	long got = read_all(ops2, 2, &rc);
	ok(rc == -1 && got == 200 && strstr(ft_errmsg(), "meta.vocab_size differs") && strstr(ft_errmsg(), "c.zst"),
	   "mixing incompatible headers is an error after the first stream: %s", ft_errmsg());
	json_t *h4 = test_header("other", 100);
	ok(!ft_headers_compatible(h, h4), "another kind is incompatible");
	free(buf);
	free(cat);
	free(a);
	free(ab);
	free(b);
	free(c);
	json_decref(h);
	json_decref(h2);
	json_decref(h3);
	json_decref(h4);
}

/* Every prefix: an error naming the cut (or a clean end exactly at a
 * frame boundary), the records before it returned, nothing else. */
static void test_truncation(void)
{
	json_t *h = test_header("test", 100);
	char *a = tpath("t.zst");
	ft_writer_opts o = {.path = a, .frame_bytes = 300};
	write_stream(&o, h, 16);
	size_t n;
	unsigned char *buf = slurp(a, &n);
	char *cut = tpath("cut.zst");
	int all_ok = 1, monotone = 1, msgs = 1, clean_ends = 0;
	long prev = 0;
	for (size_t len = 0; len < n; len++) {
		spit(cut, buf, len);
		int at_frame_end = 0;
		for (size_t off = 0; off < len;) {
			off += ZSTD_findFrameCompressedSize(buf + off, n - off);
			if (off == len) at_frame_end = 1;
		}
		int rc;
		long got = read_one(cut, &rc);
		if (got < 0) all_ok = 0;
		if (rc == 0 && !at_frame_end) all_ok = 0;
		if (rc == 0) clean_ends++;
		if (rc == -1 && (!strstr(ft_errmsg(), "cut.zst: byte ") || !strstr(ft_errmsg(), "truncated")))
			msgs = 0;
		if (got < prev) monotone = 0;
		if (got >= 0) prev = got;
	}
	ok(all_ok, "every prefix of %zu bytes: an error or a clean end at a frame boundary, good records only", n);
	ok(msgs, "truncation messages name the file, byte offset and 'truncated' (last: %s)", ft_errmsg());
	ok(monotone, "longer prefixes never return fewer records");
	ok(clean_ends > 3, "prefixes ending at frame boundaries read cleanly (%d)", clean_ends);

	/* cut in the last frame: everything decoded before the cut comes out */
	spit(cut, buf, n - 1);
	int rc;
	long got = read_one(cut, &rc);
	ok(rc == -1 && got >= 13, "cut before the end of the last frame: %ld of 16 records first", got);
	char want[64];
	snprintf(want, sizeof want, "byte %zu, record %ld: truncated", n - 1, got);
	ok(strstr(ft_errmsg(), want) != NULL, "message names byte %zu and record %ld: %s", n - 1, got, ft_errmsg());
	free(buf);
	free(a);
	free(cut);
	json_decref(h);
}

/* Random byte flips: never a crash (ASan), never a wrong record. */
static void test_flips(void)
{
	json_t *h = test_header("test", 100);
	char *a = tpath("f.zst");
	ft_writer_opts o = {.path = a, .frame_bytes = 400};
	write_stream(&o, h, 80);
	size_t n;
	unsigned char *buf = slurp(a, &n);
	unsigned char *bad = ft_xmalloc(n);
	char *p = tpath("flip.zst");
	srand(12345);
	int wrong = 0, errors = 0, intact = 0, quiet_loss = 0;
	for (int it = 0; it < 400; it++) {
		memcpy(bad, buf, n);
		int flips = 1 + rand() % 3;
		for (int k = 0; k < flips; k++) bad[rand() % n] ^= (unsigned char)(1 + rand() % 255);
		size_t len = it % 5 == 4 ? (size_t)rand() % n : n;   /* sometimes cut too */
		spit(p, bad, len);
		int rc;
		long got = read_one(p, &rc);
		if (got < 0) wrong++;
		else if (rc != 0) errors++;
		else if (got == 80) intact++;
		else if (len == n) quiet_loss++;
	}
	ok(wrong == 0, "400 corrupted streams: no wrong record returned (%d)", wrong);
	ok(quiet_loss == 0, "no full-length corrupted stream ends early without an error (%d)", quiet_loss);
	ok(errors > 300, "corruption is reported as an error (%d errors, %d intact)", errors, intact);
	free(buf);
	free(bad);
	free(a);
	free(p);
	json_decref(h);
}

/* A valid stream followed by a frame holding raw (hostile) msgpack. */
static int hostile(const unsigned char *mp, size_t mlen, long *got)
{
	json_t *h = test_header("test", 100);
	char *a = tpath("h.zst");
	ft_writer_opts o = {.path = a};
	write_stream(&o, h, 3);
	size_t n;
	unsigned char *buf = slurp(a, &n);
	size_t cap = ZSTD_compressBound(mlen);
	buf = ft_xrealloc(buf, n + cap);
	ZSTD_CCtx *c = ZSTD_createCCtx();
	ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
	size_t z = ZSTD_compress2(c, buf + n, cap, mp, mlen);
	ZSTD_freeCCtx(c);
	spit(a, buf, n + z);
	int rc;
	*got = read_one(a, &rc);
	free(buf);
	free(a);
	json_decref(h);
	return rc;
}

static void test_hostile(void)
{
	long got;
	/* {"a": [<4 billion elements>]} */
	const unsigned char big_array[] = {0x81, 0xa1, 'a', 0xdd, 0xff, 0xff, 0xff, 0xf0, 1, 2, 3};
	int rc = hostile(big_array, sizeof big_array, &got);
	ok(rc == -1 && got == 3 && strstr(ft_errmsg(), "over the record size limit"),
	   "array claiming 4e9 elements: error, no allocation: %s", ft_errmsg());
	const unsigned char big_str[] = {0x81, 0xa1, 'a', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
	rc = hostile(big_str, sizeof big_str, &got);
	ok(rc == -1 && got == 3 && strstr(ft_errmsg(), "size limit"), "string claiming 2 GiB: %s", ft_errmsg());
	const unsigned char map_big[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
	rc = hostile(map_big, sizeof map_big, &got);
	ok(rc == -1 && got == 3, "map claiming 4e9 pairs: %s", ft_errmsg());
	const unsigned char reserved[] = {0x81, 0xa1, 'a', 0xc1};
	rc = hostile(reserved, sizeof reserved, &got);
	ok(rc == -1 && strstr(ft_errmsg(), "0xc1"), "reserved byte 0xc1: %s", ft_errmsg());
	const unsigned char not_map[] = {0x93, 1, 2, 3};
	rc = hostile(not_map, sizeof not_map, &got);
	ok(rc == -1 && strstr(ft_errmsg(), "not a msgpack map"), "a record that is not a map: %s", ft_errmsg());
	unsigned char deep[80];
	size_t k = 0;
	deep[k++] = 0x81, deep[k++] = 0xa1, deep[k++] = 'a';
	for (int i = 0; i < 40; i++) deep[k++] = 0x91;
	deep[k++] = 0x01;
	rc = hostile(deep, k, &got);
	ok(rc == -1 && strstr(ft_errmsg(), "nested too deeply"), "40 nested arrays: %s", ft_errmsg());
	const unsigned char partial[] = {0x82, 0xa1, 'a', 0x01};
	rc = hostile(partial, sizeof partial, &got);
	ok(rc == -1 && got == 3 && strstr(ft_errmsg(), "inside a record"), "a record cut inside a complete frame: %s", ft_errmsg());
	const unsigned char bin[] = {0x81, 0xa1, 'a', 0xc4, 0x02, 0, 1, 0x81, 0xa1, 'b', 0xc0};
	rc = hostile(bin, sizeof bin, &got);
	ok(rc == 1 && got == -1, "bin values frame correctly (the record check then fails on field 'i')");

	/* not a stream at all */
	char *p = tpath("plain.txt");
	spit(p, "hello world\n", 12);
	ok(ft_reader_open(p) == NULL && strstr(ft_errmsg(), "not an ft stream"), "plain text: %s", ft_errmsg());
	spit(p, "", 0);
	ok(ft_reader_open(p) == NULL && strstr(ft_errmsg(), "empty input"), "empty file: %s", ft_errmsg());
	free(p);
}

static void test_headers_and_api(void)
{
	/* a msgpack stream whose first record is not a header */
	char *p = tpath("nohdr.zst");
	const unsigned char raw[] = {0x81, 0xa1, 'a', 0x01};
	unsigned char z[64];
	size_t zn = ZSTD_compress(z, sizeof z, raw, sizeof raw, 3);
	spit(p, z, zn);
	ok(ft_reader_open(p) == NULL && strstr(ft_errmsg(), "not an ft stream"), "no header: %s", ft_errmsg());
	/* a newer version */
	const unsigned char v2[] = {0x83, 0xa6, 'f', 'o', 'r', 'm', 'a', 't', 0xa9, 'f', 't', '-', 's', 't', 'r', 'e', 'a', 'm',
				    0xa7, 'v', 'e', 'r', 's', 'i', 'o', 'n', 0x02, 0xa4, 'k', 'i', 'n', 'd', 0xa1, 'x'};
	zn = ZSTD_compress(z, sizeof z, v2, sizeof v2, 3);
	spit(p, z, zn);
	ok(ft_reader_open(p) == NULL && strstr(ft_errmsg(), "version 2 is newer"), "version 2: %s", ft_errmsg());

	/* every field type through the builder and the accessors */
	json_t *h = json_pack("{s:s, s:s, s:{}}", "kind", "api", "producer", "t", "meta");
	ft_writer_opts o = {.path = p};
	ft_writer *w = ft_writer_open(&o, h);
	float f32[3] = {0.1f, -2.5f, 1e30f};
	int32_t ids[3] = {INT32_MIN, 0, INT32_MAX};
	json_t *nested = json_pack("{s:[i,f,s,b,n], s:{}}", "x", 1, 2.5, "s", 1, "y");
	ft_w_begin(w, 10);
	ft_w_int(w, "int", INT64_MIN);
	ft_w_float(w, "float", -0.0);
	ft_w_bool(w, "bool", 1);
	ft_w_nil(w, "nil");
	ft_w_str(w, "str", "h\xc3\xa9llo");
	ft_w_strn(w, "strn", "a\0b", 3);
	ft_w_i32s(w, "i32s", ids, 3);
	ft_w_f32s(w, "f32s", f32, 3);
	ft_w_json(w, "json", nested);
	ft_w_int(w, "big", INT64_MAX);
	ok(ft_w_end(w) == 0, "a record with every field type");
	ft_w_begin(w, 2);
	ft_w_int(w, "only", 1);
	ok(ft_w_end(w) == -1 && strstr(ft_errmsg(), "field count"), "too few fields: %s", ft_errmsg());
	json_t *r2 = json_pack("{s:[i, I]}", "ids", 1, (json_int_t)1 << 31);
	ok(ft_writer_put_json(w, r2) == 0, "put_json");
	/* nesting: 30 levels inside a record is the most both ends accept */
	json_t *deep = json_integer(1), *deeper;
	for (int k = 0; k < 29; k++) deep = json_pack("[o]", deep);
	deeper = json_pack("[O]", deep);
	json_t *drec = json_pack("{s:O}", "d", deep), *drec2 = json_pack("{s:O}", "d", deeper);
	ok(ft_writer_put_json(w, drec) == 0, "30 nested levels are written");
	ok(ft_writer_put_json(w, drec2) == -1 && strstr(ft_errmsg(), "nested"), "31 are refused: %s", ft_errmsg());
	ft_w_begin(w, 1);
	ft_w_json(w, "d", deeper);
	ok(ft_w_end(w) == -1, "ft_w_json refuses 31 levels too");
	json_decref(deep);
	json_decref(deeper);
	json_decref(drec2);
	json_t *notobj = json_pack("[i]", 1);
	ok(ft_writer_put_json(w, notobj) == -1, "put_json refuses a non-object");
	char tmpname_seen = 0;
	DIR *d = opendir(tmpdir);
	struct dirent *e;
	while ((e = readdir(d)))
		if (strstr(e->d_name, "nohdr.zst.tmp")) tmpname_seen = 1;
	closedir(d);
	ok(tmpname_seen, "the writer works under a temporary name");
	ok(ft_writer_close(w) == 0, "close");

	ft_reader *r = ft_reader_open(p);
	ft_rec *rec;
	ok(r && ft_reader_next(r, &rec) == 1, "read back");
	int64_t i;
	double f;
	int b;
	const char *s;
	size_t len;
	ft_i32vec iv = {0};
	ft_f32vec fv = {0};
	ok(ft_rec_int(rec, "int", &i) == 0 && i == INT64_MIN, "int64 min");
	ok(ft_rec_int(rec, "big", &i) == 0 && i == INT64_MAX, "int64 max");
	ok(ft_rec_float(rec, "float", &f) == 0 && f == 0 && signbit(f), "-0.0");
	ok(ft_rec_bool(rec, "bool", &b) == 0 && b == 1, "bool");
	ok(ft_rec_has(rec, "nil") && !ft_rec_has(rec, "absent"), "has");
	ok(ft_rec_str(rec, "str", &s, &len) == 0 && len == 6 && !memcmp(s, "h\xc3\xa9llo", 6), "utf-8 string");
	ok(ft_rec_str(rec, "strn", &s, &len) == 0 && len == 3 && s[1] == 0, "string with NUL");
	ok(ft_rec_i32s(rec, "i32s", &iv) == 0 && iv.n == 3 && iv.v[0] == INT32_MIN && iv.v[2] == INT32_MAX, "i32s");
	ok(ft_rec_f32s(rec, "f32s", &fv) == 0 && fv.n == 3 && fv.v[0] == 0.1f && fv.v[2] == 1e30f, "f32s exact");
	json_t *jn = ft_rec_get_json(rec, "json");
	ok(jn && json_equal(jn, nested), "nested JSON value round-trips");
	json_decref(jn);
	ok(ft_rec_int(rec, "str", &i) == -1 && strstr(ft_errmsg(), "'str' is not an integer"), "wrong type: %s", ft_errmsg());
	ok(ft_rec_int(rec, "absent", &i) == -1 && strstr(ft_errmsg(), "'absent' is missing"), "missing: %s", ft_errmsg());
	ok(ft_rec_i32s(rec, "f32s", &iv) == -1, "floats are not i32s");
	ok(ft_reader_next(r, &rec) == 1 && ft_rec_i32s(rec, "ids", &iv) == -1 && strstr(ft_errmsg(), "element 1"),
	   "2^31 is not a 32-bit integer: %s", ft_errmsg());
	json_t *back = NULL;
	ok(ft_reader_next(r, &rec) == 1 && (back = ft_rec_to_json(rec)) && json_equal(back, drec),
	   "30 nested levels read back");
	json_decref(back);
	json_decref(drec);
	ok(ft_reader_next(r, &rec) == 0, "end");
	ft_reader_close(r);
	ft_i32vec_free(&iv);
	ft_f32vec_free(&fv);

	/* header checks in the writer */
	json_t *nokind = json_pack("{s:s}", "producer", "x");
	ok(ft_writer_open(&o, nokind) == NULL && strstr(ft_errmsg(), "kind"), "a header needs a kind");
	json_t *v9 = json_pack("{s:s, s:i}", "kind", "x", "version", 9);
	ok(ft_writer_open(&o, v9) == NULL && strstr(ft_errmsg(), "version"), "a header with another version is refused");
	ft_writer_opts rot = {.path = p, .shard_records = 5};
	ok(ft_writer_open(&rot, h) == NULL && strstr(ft_errmsg(), "directory"), "rotation needs a directory");
	/* abort leaves nothing */
	char *q = tpath("aborted.zst");
	ft_writer_opts oq = {.path = q};
	w = ft_writer_open(&oq, h);
	ft_w_begin(w, 0);
	ft_w_end(w);
	ft_writer_abort(w);
	int leftovers = access(q, F_OK) == 0;
	d = opendir(tmpdir);
	while ((e = readdir(d)))
		if (strstr(e->d_name, "aborted")) leftovers = 1;
	closedir(d);
	ok(!leftovers, "abort removes the temporary and creates nothing");
	/* an empty stream: just the header */
	w = ft_writer_open(&oq, h);
	ok(ft_writer_close(w) == 0, "header-only stream");
	r = ft_reader_open(q);
	ok(r && ft_reader_next(r, &rec) == 0 && !strcmp(ft_reader_kind(r), "api"), "reads as zero records");
	ft_reader_close(r);

	json_decref(h);
	json_decref(nested);
	json_decref(r2);
	json_decref(notobj);
	json_decref(nokind);
	json_decref(v9);
	free(p);
	free(q);
}

/* Doubles through JSON lines come back bit-identical. */
static void test_json_lines(void)
{
	json_t *h = json_pack("{s:s, s:s}", "kind", "floats", "producer", "t");
	char *p = tpath("floats.zst");
	ft_writer_opts o = {.path = p};
	ft_writer *w = ft_writer_open(&o, h);
	srand(7);
	double special[] = {0.1, -0.0, 1e300, 5e-324, 1.0, 123456789012345678.0, 2.0 / 3, NAN};
	enum { N = 2000 };
	double vals[N];
	for (int i = 0; i < N; i++) {
		uint64_t bits = 0;
		double d;
		do {
			for (int k = 0; k < 4; k++) bits = bits << 16 | (uint64_t)(rand() & 0xffff);
			memcpy(&d, &bits, 8);
		} while (!isfinite(d));
		vals[i] = i < 8 ? special[i] : d;
		ft_w_begin(w, 1);
		ft_w_float(w, "d", vals[i]);
		ft_w_end(w);
	}
	ft_writer_close(w);
	ft_reader *r = ft_reader_open(p);
	char *text = NULL;
	size_t tlen = 0;
	FILE *mem = open_memstream(&text, &tlen);
	ft_reader_write_header_json(r, mem);
	ft_rec *rec;
	while (ft_reader_next(r, &rec) > 0) ft_rec_write_json(rec, mem);
	fclose(mem);
	ft_reader_close(r);
	ok(!strncmp(text, "{\"format\":\"ft-stream\",\"version\":1,\"kind\":\"floats\",\"producer\":\"t\"}\n", 66),
	   "header line first, format and version leading");
	char *line = strchr(text, '\n') + 1;
	int exact = 1, reals = 1;
	for (int i = 0; i < N && line; i++) {
		char *end = strchr(line, '\n');
		json_error_t err;
		json_t *v = json_loadb(line, (size_t)(end - line), 0, &err);
		json_t *d = json_object_get(v, "d");
		if (i == 7) exact &= json_is_null(d);
		else if (!json_is_real(d)) reals = 0;
		else {
			double got = json_real_value(d);
			exact &= memcmp(&got, &vals[i], 8) == 0;
		}
		json_decref(v);
		line = end + 1;
	}
	ok(exact, "2000 doubles print and parse back bit-identical (NaN as null)");
	ok(reals, "floats always print as JSON reals");
	ok(strstr(text, "{\"d\":0.1}\n") && strstr(text, "{\"d\":-0.0}\n") && strstr(text, "{\"d\":1.0}\n"),
	   "shortest forms: 0.1, -0.0, 1.0");
	free(text);
	free(p);
	json_decref(h);

	/* strings: escapes and invalid UTF-8 */
	h = json_pack("{s:s, s:s}", "kind", "strings", "producer", "t");
	p = tpath("strings.zst");
	ft_writer_opts o2 = {.path = p};
	w = ft_writer_open(&o2, h);
	ft_w_begin(w, 2);
	ft_w_strn(w, "s", "q\"\\\n\t\x01\x7f\xff\xc3\xa9\0", 11);
	ft_w_int(w, "u", -1);
	ft_w_end(w);
	ft_writer_close(w);
	r = ft_reader_open(p);
	mem = open_memstream(&text, &tlen);
	ft_reader_next(r, &rec);
	ft_rec_write_json(rec, mem);
	fclose(mem);
	ok(!strcmp(text, "{\"s\":\"q\\\"\\\\\\n\\t\\u0001\x7f\xef\xbf\xbd\xc3\xa9\\u0000\",\"u\":-1}\n"),
	   "escapes, U+FFFD for invalid UTF-8: %s", text);
	json_t *j = ft_rec_to_json(rec);
	ok(j && json_string_length(json_object_get(j, "s")) == 13, "ft_rec_to_json agrees");
	json_decref(j);
	ft_reader_close(r);
	free(text);
	free(p);
	json_decref(h);
}

/* Another writer's framing: records split across frames at odd places,
 * frames without checksums. */
static void test_foreign_frames(void)
{
	json_t *h = test_header("test", 100);
	char *a = tpath("plain.zst");
	ft_writer_opts o = {.path = a};
	write_stream(&o, h, 50);
	size_t n;
	unsigned char *z = slurp(a, &n);
	size_t cap = (size_t)ZSTD_getFrameContentSize(z, n);
	unsigned char *raw = NULL;
	size_t rn = 0;
	if (cap == ZSTD_CONTENTSIZE_UNKNOWN || cap == ZSTD_CONTENTSIZE_ERROR) {
		/* streamed frame: decompress with the streaming API */
		ZSTD_DCtx *d = ZSTD_createDCtx();
		raw = ft_xmalloc(1 << 20);
		ZSTD_inBuffer in = {z, n, 0};
		ZSTD_outBuffer out = {raw, 1 << 20, 0};
		while (in.pos < in.size) ZSTD_decompressStream(d, &out, &in);
		rn = out.pos;
		ZSTD_freeDCtx(d);
	}
	unsigned char *re = ft_xmalloc(2 * rn + 4096);
	size_t m = 0;
	for (size_t off = 0; off < rn; off += 37) {
		size_t len = rn - off < 37 ? rn - off : 37;
		m += ZSTD_compress(re + m, 2 * rn + 4096 - m, raw + off, len, 1);
	}
	char *b = tpath("split.zst");
	spit(b, re, m);
	int rc;
	ok(rn > 0 && read_one(b, &rc) == 50 && rc == 0, "records split across 37-byte frames without checksums read back");
	free(z);
	free(raw);
	free(re);
	free(a);
	free(b);
	json_decref(h);
}

/* ft_w_i32s's own encoder writes the bytes msgpack-c would. */
static void test_i32_encoding(void)
{
	static const int32_t v[] = {0, 1, 127, 128, 255, 256, 65535, 65536, INT32_MAX, -1, -32, -33,
				    -128, -129, -32768, -32769, INT32_MIN};
	size_t n = sizeof v / sizeof *v;
	json_t *h = json_pack("{s:s, s:s}", "kind", "ints", "producer", "t");
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(v[i]));
	json_t *rec = json_pack("{s:o}", "a", arr);
	char *p1 = tpath("i1.zst"), *p2 = tpath("i2.zst");
	ft_writer_opts o1 = {.path = p1}, o2 = {.path = p2};
	ft_writer *w = ft_writer_open(&o1, h);
	ft_w_begin(w, 1);
	ft_w_i32s(w, "a", v, n);
	ft_w_end(w);
	ft_writer_close(w);
	w = ft_writer_open(&o2, h);
	ft_writer_put_json(w, rec);
	ft_writer_close(w);
	size_t n1, n2;
	unsigned char *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
	ok(n1 == n2 && !memcmp(b1, b2, n1), "ft_w_i32s encodes boundary values as msgpack_pack_int64 does");
	ft_reader *r = ft_reader_open(p1);
	ft_rec *rr;
	ft_i32vec got = {0};
	ok(r && ft_reader_next(r, &rr) == 1 && ft_rec_i32s(rr, "a", &got) == 0 && got.n == n &&
	   !memcmp(got.v, v, sizeof v), "and they read back");
	ft_reader_close(r);
	ft_i32vec_free(&got);
	free(b1);
	free(b2);
	free(p1);
	free(p2);
	json_decref(rec);
	json_decref(h);
}

static void cleanup(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d) return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
		char *p = ft_xasprintf("%s/%s", dir, e->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) cleanup(p);
		else unlink(p);
		free(p);
	}
	closedir(d);
	rmdir(dir);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	test_sharded();
	test_concat_and_frames();
	test_truncation();
	test_flips();
	test_hostile();
	test_headers_and_api();
	test_json_lines();
	test_i32_encoding();
	test_foreign_frames();
	cleanup(tmpdir);
	return tap_done();
}
