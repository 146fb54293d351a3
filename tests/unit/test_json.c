/* test_json.c - lib/util/json.c: error positions, JSON lines, getters, atomic
 * save and exact round trips of doubles. */
#define _GNU_SOURCE
#include "util/json.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "tap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/test_json.XXXXXX";

static char *tpath(const char *name) { return ft_xasprintf("%s/%s", tmpdir, name); }

static void spit(const char *path, const char *s)
{
	FILE *f = fopen(path, "wb");
	fputs(s, f);
	fclose(f);
}

static void test_load(void)
{
	const char *bad = "{\n  \"a\": 1,\n  \"b\" 2\n}\n";
	json_t *v = ft_json_load_string(bad, strlen(bad), "cfg.json");
	ok(!v && strncmp(ft_errmsg(), "cfg.json:3:", 11) == 0, "string error has name:line:col: %s", ft_errmsg());
	char *p = tpath("bad.json");
	spit(p, bad);
	v = ft_json_load_file(p);
	char *want = ft_xasprintf("%s:3:7: ", p);
	ok(!v && strncmp(ft_errmsg(), want, strlen(want)) == 0, "file error has path:3:7: %s", ft_errmsg());
	free(want);
	spit(p, "{\"a\": 1, \"a\": 2}");
	v = ft_json_load_file(p);
	ok(v && ft_json_int(v, "a", 0) == 2, "a repeated key keeps its last value, as Python's json does");
	json_decref(v);
	spit(p, "");
	v = ft_json_load_file(p);
	ok(!v && strstr(ft_errmsg(), p), "empty file is an error naming it: %s", ft_errmsg());
	free(p);
	v = ft_json_load_file("/nonexistent/x.json");
	ok(!v && strstr(ft_errmsg(), "/nonexistent/x.json") && strstr(ft_errmsg(), "No such file"),
	   "missing file: %s", ft_errmsg());
	v = ft_json_load_string("[1, 2.5, \"x\"]", 13, NULL);
	ok(v && json_array_size(v) == 3, "arrays load");
	json_decref(v);
	v = ft_json_load_string("{\"a\":1} trailing", 16, "t");
	ok(!v && strncmp(ft_errmsg(), "t:1:", 4) == 0, "trailing text is an error: %s", ft_errmsg());
}

static void test_jsonl(void)
{
	char *p = tpath("log.jsonl");
	/* blank lines, a bad line in the middle, CRLF, no final newline */
	spit(p, "{\"step\": 1}\n\n   \n{\"step\": 2}\r\n{\"step\": tru}\n{\"a\":1} {\"b\":2}\n{\"step\": 4}");
	ft_jsonl *r = ft_jsonl_open(p);
	json_t *v;
	int rc = ft_jsonl_next(r, &v);
	ok(rc == 1 && ft_json_int(v, "step", 0) == 1 && ft_jsonl_line(r) == 1, "line 1");
	json_decref(v);
	rc = ft_jsonl_next(r, &v);
	ok(rc == 1 && ft_json_int(v, "step", 0) == 2 && ft_jsonl_line(r) == 4, "blank lines skipped; CRLF line 4");
	json_decref(v);
	rc = ft_jsonl_next(r, &v);
	char *want = ft_xasprintf("%s:5:", p);
	ok(rc == -1 && !v && strncmp(ft_errmsg(), want, strlen(want)) == 0 && ft_jsonl_line(r) == 5,
	   "bad line 5 reported as path:line:col: %s", ft_errmsg());
	free(want);
	rc = ft_jsonl_next(r, &v);
	want = ft_xasprintf("%s:6:", p);
	ok(rc == -1 && strncmp(ft_errmsg(), want, strlen(want)) == 0, "two values on line 6 is an error: %s", ft_errmsg());
	free(want);
	rc = ft_jsonl_next(r, &v);
	ok(rc == 1 && ft_json_int(v, "step", 0) == 4 && ft_jsonl_line(r) == 7, "reading continues after errors; last line without newline");
	json_decref(v);
	ok(ft_jsonl_next(r, &v) == 0 && !v, "then EOF");
	ok(ft_jsonl_next(r, &v) == 0, "EOF again");
	ft_jsonl_close(r);
	free(p);

	ok(ft_jsonl_open("/nonexistent/log.jsonl") == NULL && strstr(ft_errmsg(), "/nonexistent/log.jsonl"),
	   "missing JSONL file named");
	char text[] = "[1]\n\"s\"\n";
	FILE *f = fmemopen(text, strlen(text), "r");
	r = ft_jsonl_open_fp(f, "<mem>");
	int n = 0;
	while (ft_jsonl_next(r, &v) == 1) { n++; json_decref(v); }
	ok(n == 2, "any JSON value per line, from a FILE*");
	ft_jsonl_close(r);
	fclose(f);   /* open_fp does not own it */
}

static void test_getters(void)
{
	json_t *o = json_pack("{s:s, s:I, s:f, s:b, s:n, s:I}", "s", "str", "i", (json_int_t)42,
			      "f", 2.5, "b", 1, "nul", "big", (json_int_t)1 << 60);
	ok(strcmp(ft_json_str(o, "s", "d"), "str") == 0 && strcmp(ft_json_str(o, "i", "d"), "d") == 0 &&
	   strcmp(ft_json_str(o, "missing", "d"), "d") == 0, "ft_json_str with default on missing or wrong type");
	ok(ft_json_int(o, "i", -1) == 42 && ft_json_int(o, "f", -1) == -1 && ft_json_int(o, "big", 0) == 1LL << 60,
	   "ft_json_int (64-bit)");
	ok(ft_json_num(o, "f", 0) == 2.5 && ft_json_num(o, "i", 0) == 42.0 && ft_json_num(o, "s", 7) == 7,
	   "ft_json_num takes integers too");
	ok(ft_json_bool(o, "b", 0) == 1 && ft_json_bool(o, "nul", 5) == 5, "ft_json_bool");
	ok(ft_json_str(NULL, "s", "d")[0] == 'd', "getters accept a NULL object");
	const char *s;
	long long i;
	double d;
	ok(ft_json_req_str(o, "s", &s) == 0 && strcmp(s, "str") == 0, "req_str");
	ok(ft_json_req_int(o, "i", &i) == 0 && i == 42, "req_int");
	ok(ft_json_req_num(o, "i", &d) == 0 && d == 42.0, "req_num");
	int rc = ft_json_req_str(o, "nope", &s);
	ok(rc < 0 && strstr(ft_errmsg(), "missing \"nope\""), "req names a missing key: %s", ft_errmsg());
	rc = ft_json_req_int(o, "f", &i);
	ok(rc < 0 && strstr(ft_errmsg(), "\"f\" must be an integer"), "req names a wrong type: %s", ft_errmsg());
	rc = ft_json_req_num(o, "s", &d);
	ok(rc < 0 && strstr(ft_errmsg(), "\"s\" must be a number"), "req_num wrong type");
	json_decref(o);
}

static void test_save(void)
{
	/* doubles must come back bit-identical */
	json_t *a = json_array();
	double vals[] = {0.1, 1.0 / 3, 1e-300, 5e-324, 1.7976931348623157e308, -2.5e-5, 123456789.123456789};
	for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) json_array_append_new(a, json_real(vals[i]));
	uint64_t x = 88172645463325252ULL;
	for (int i = 0; i < 1000; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		double d;
		uint64_t bits = x & 0x7fefffffffffffffULL;  /* finite */
		memcpy(&d, &bits, 8);
		json_array_append_new(a, json_real(d));
	}
	json_t *o = json_pack("{s:o, s:s, s:I}", "vals", a, "name", "caf\xc3\xa9 \"q\"", "n", (json_int_t)-7);
	char *p = tpath("out.json");
	ok(ft_json_save_file(o, p, 2) == 0, "save");
	json_t *back = ft_json_load_file(p);
	int same = back != NULL;
	json_t *b = json_object_get(back, "vals");
	for (size_t i = 0; same && i < json_array_size(a); i++) {
		double u = json_real_value(json_array_get(a, i)), w = json_number_value(json_array_get(b, i));
		same = memcmp(&u, &w, 8) == 0;
	}
	ok(same && json_equal(o, back), "1007 doubles and strings round-trip bit-exactly");
	json_decref(back);
	FILE *f = fopen(p, "rb");
	char head[16] = {0};
	fread(head, 1, 15, f);
	fseek(f, -1, SEEK_END);
	int last = fgetc(f);
	fclose(f);
	ok(strncmp(head, "{\n  \"vals\"", 10) == 0 && last == '\n', "indented, insertion order, final newline");
	int rc = ft_json_save_file(o, "/nonexistent/out.json", 2);
	ok(rc < 0 && strstr(ft_errmsg(), "/nonexistent/"), "unwritable path: %s", ft_errmsg());

	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	json_t *small = json_pack("{s:i, s:[f]}", "a", 1, "b", 0.1);
	ok(ft_json_write_line(small, m) == 0 && ft_json_write_line(json_object_get(small, "a"), m) == 0,
	   "write_line");
	fclose(m);
	ok(strcmp(buf, "{\"a\":1,\"b\":[0.10000000000000001]}\n1\n") == 0, "compact lines, 17 digits");
	free(buf);
	f = fopen("/dev/full", "w");
	if (f) {
		setvbuf(f, NULL, _IONBF, 0);
		rc = ft_json_write_line(small, f);
		ok(rc < 0, "write_line to /dev/full fails: %s", ft_errmsg());
		fclose(f);
	} else {
		skip("no /dev/full");
	}
	json_decref(small);
	json_decref(o);
	free(p);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
	test_load();
	test_jsonl();
	test_getters();
	test_save();
	ft_remove_tree(tmpdir);
	return tap_done();
}
