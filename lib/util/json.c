/* json.c - jansson with "path:line:col: message" errors; see json.h */
#define _GNU_SOURCE
#include "util/json.h"
#include "util/atomicfile.h"
#include "util/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Doubles are written with 17 significant digits so they read back
 * bit-identical.  A repeated object key keeps its last value, as Python's
 * json module does (the references read these files with it); any value,
 * not only objects and arrays, is accepted at the top level. */
#define LOAD_FLAGS (JSON_DECODE_ANY)
#define DUMP_PREC JSON_REAL_PRECISION(17)

static void *fail_at(const char *name, const json_error_t *e)
{
	ft_fail("%s:%d:%d: %s", name, e->line, e->column, e->text);
	return NULL;
}

json_t *ft_json_load_string(const char *text, size_t len, const char *name)
{
	json_error_t e;
	json_t *v = json_loadb(text, len, LOAD_FLAGS, &e);
	return v ? v : fail_at(name ? name : "<string>", &e);
}

json_t *ft_json_load_file(const char *path)
{
	int is_stdin = strcmp(path, "-") == 0;
	const char *name = is_stdin ? "<stdin>" : path;
	FILE *fp = is_stdin ? stdin : fopen(path, "rb");
	if (!fp) {
		ft_fail("%s:", path);
		return NULL;
	}
	json_error_t e;
	json_t *v = json_loadf(fp, LOAD_FLAGS, &e);
	int rerr = ferror(fp);
	if (!is_stdin) fclose(fp);
	if (!v && rerr) {
		ft_fail("%s: read error", name);
		return NULL;
	}
	return v ? v : fail_at(name, &e);
}

struct ft_jsonl {
	FILE *fp;
	int own;
	char *name;
	char *buf;
	size_t cap;
	long line;      /* lines read so far */
	long value_line;
};

ft_jsonl *ft_jsonl_open_fp(FILE *fp, const char *name)
{
	ft_jsonl *r = ft_xcalloc(1, sizeof *r);
	r->fp = fp;
	r->name = ft_xstrdup(name);
	return r;
}

ft_jsonl *ft_jsonl_open(const char *path)
{
	if (strcmp(path, "-") == 0)
		return ft_jsonl_open_fp(stdin, "<stdin>");
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		ft_fail("%s:", path);
		return NULL;
	}
	ft_jsonl *r = ft_jsonl_open_fp(fp, path);
	r->own = 1;
	return r;
}

static int blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
			return 0;
	return 1;
}

int ft_jsonl_next(ft_jsonl *r, json_t **out)
{
	*out = NULL;
	for (;;) {
		errno = 0;
		ssize_t n = getline(&r->buf, &r->cap, r->fp);
		if (n < 0) {
			if (ferror(r->fp))
				return ft_fail("%s:%ld: read error:", r->name, r->line + 1);
			return 0;
		}
		r->line++;
		if (blank(r->buf, (size_t)n))
			continue;
		r->value_line = r->line;
		json_error_t e;
		/* jansson reports line 1 for a single line; use the file's line */
		json_t *v = json_loadb(r->buf, (size_t)n, LOAD_FLAGS, &e);
		if (!v)
			return ft_fail("%s:%ld:%d: %s", r->name, r->line, e.column, e.text);
		*out = v;
		return 1;
	}
}

long ft_jsonl_line(const ft_jsonl *r) { return r->value_line; }

void ft_jsonl_close(ft_jsonl *r)
{
	if (!r) return;
	if (r->own) fclose(r->fp);
	free(r->buf);
	free(r->name);
	free(r);
}

const char *ft_json_str(const json_t *obj, const char *key, const char *def)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : def;
}

long long ft_json_int(const json_t *obj, const char *key, long long def)
{
	json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? json_integer_value(v) : def;
}

double ft_json_num(const json_t *obj, const char *key, double def)
{
	json_t *v = json_object_get(obj, key);
	return json_is_number(v) ? json_number_value(v) : def;
}

int ft_json_bool(const json_t *obj, const char *key, int def)
{
	json_t *v = json_object_get(obj, key);
	return json_is_boolean(v) ? json_is_true(v) : def;
}

static json_t *req(const json_t *obj, const char *key, const char *what)
{
	json_t *v = json_object_get(obj, key);
	if (!v)
		ft_fail("missing \"%s\" (%s)", key, what);
	return v;
}

int ft_json_req_str(const json_t *obj, const char *key, const char **out)
{
	json_t *v = req(obj, key, "a string");
	if (!v) return -1;
	if (!json_is_string(v))
		return ft_fail("\"%s\" must be a string", key);
	*out = json_string_value(v);
	return 0;
}

int ft_json_req_int(const json_t *obj, const char *key, long long *out)
{
	json_t *v = req(obj, key, "an integer");
	if (!v) return -1;
	if (!json_is_integer(v))
		return ft_fail("\"%s\" must be an integer", key);
	*out = json_integer_value(v);
	return 0;
}

int ft_json_req_num(const json_t *obj, const char *key, double *out)
{
	json_t *v = req(obj, key, "a number");
	if (!v) return -1;
	if (!json_is_number(v))
		return ft_fail("\"%s\" must be a number", key);
	*out = json_number_value(v);
	return 0;
}

static int dump_cb(const char *buf, size_t size, void *data)
{
	return fwrite(buf, 1, size, data) == size ? 0 : -1;
}

static int save_file(const json_t *v, const char *path, int indent, size_t flags)
{
	ft_atomic a;
	if (ft_atomic_open(&a, path) < 0)
		return -1;
	flags |= DUMP_PREC | JSON_ENCODE_ANY;
	if (indent > 0) flags |= JSON_INDENT(indent > 31 ? 31 : indent);
	else flags |= JSON_COMPACT;
	if (json_dump_callback(v, dump_cb, a.fp, flags) != 0 || fputc('\n', a.fp) == EOF) {
		ft_fail("%s: write failed:", path);
		ft_atomic_abort(&a);
		return -1;
	}
	return ft_atomic_commit(&a);
}

int ft_json_save_file(const json_t *v, const char *path, int indent)
{
	return save_file(v, path, indent, 0);
}

int ft_json_save_file_sorted(const json_t *v, const char *path, int indent)
{
	return save_file(v, path, indent, JSON_SORT_KEYS);
}

int ft_json_write_line(const json_t *v, FILE *fp)
{
	char *s = json_dumps(v, DUMP_PREC | JSON_COMPACT | JSON_ENCODE_ANY);
	if (!s)
		return ft_fail("cannot encode JSON value");
	size_t n = strlen(s);
	int bad = fwrite(s, 1, n, fp) != n || fputc('\n', fp) == EOF;
	free(s);
	return bad ? ft_fail("write failed:") : 0;
}
