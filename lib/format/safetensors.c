/* safetensors.c - the only reader and writer of safetensors; see
 * safetensors.h and docs/FORMAT.md section 6.
 *
 * A file is: u64 little-endian N, N bytes of JSON header, then the data
 * region.  The header maps tensor names to {dtype, shape, data_offsets}
 * (offsets relative to the data region) plus an optional "__metadata__"
 * object of string -> string.  We map the file read-only and point the
 * tensors into the mapping, after checking every header field, so a bad
 * file is an error message and never a stray read.
 */
#define _GNU_SOURCE
#include "format/safetensors.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The Python package refuses headers over 100 MB; so do we. */
#define MAX_HEADER 100000000ULL

typedef struct {
	char *path;
	unsigned char *map;
	size_t size;
} shard;

struct ft_st {
	shard *files;
	size_t nfiles;
	ft_st_tensor *t;      /* sorted by name */
	size_t n, cap;
	json_t *meta;         /* __metadata__ of the first file, or NULL */
};

/* ---------- reading one file ---------- */

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
	return v;
}

static int map_file(shard *s, const char *path)
{
	s->path = ft_xstrdup(path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ft_fail("%s:", path);
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return ft_fail("%s:", path);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return ft_fail("%s: not a regular file", path);
	}
	s->size = (size_t)st.st_size;
	if (s->size < 8) {
		close(fd);
		return ft_fail("%s: truncated: %zu bytes, too short for the 8-byte header length", path, s->size);
	}
	void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return ft_fail("%s: mmap:", path);
	s->map = m;
	return 0;
}

static void push_tensor(ft_st *st, const ft_st_tensor *t)
{
	if (st->n == st->cap) {
		st->cap = st->cap ? 2 * st->cap : 64;
		st->t = ft_xrealloc(st->t, st->cap * sizeof *st->t);
	}
	st->t[st->n++] = *t;
}

static int check_metadata(const char *path, json_t *meta)
{
	if (json_is_null(meta))
		return 0;
	if (!json_is_object(meta))
		return ft_fail("%s: __metadata__ must be an object of strings", path);
	const char *k;
	json_t *v;
	json_object_foreach(meta, k, v)
		if (!json_is_string(v))
			return ft_fail("%s: __metadata__ \"%s\" must be a string", path, k);
	return 0;
}

/* Non-negative JSON integer (jansson integers are signed 64-bit). */
static int get_u64(json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* One header entry -> t (name and file are set by the caller). */
static int parse_entry(const char *path, const char *name, json_t *e,
		       uint64_t data_len, ft_st_tensor *t, uint64_t *begin)
{
	if (!json_is_object(e))
		return ft_fail("%s: tensor \"%s\": entry must be an object", path, name);
	json_t *dt = json_object_get(e, "dtype"), *shape = json_object_get(e, "shape");
	json_t *off = json_object_get(e, "data_offsets");
	if (!json_is_string(dt))
		return ft_fail("%s: tensor \"%s\": \"dtype\" missing or not a string", path, name);
	if (ft_dtype_parse(json_string_value(dt), &t->dtype) < 0)
		return ft_fail_ctx("%s: tensor \"%s\": ", path, name);
	if (!json_is_array(shape))
		return ft_fail("%s: tensor \"%s\": \"shape\" missing or not an array", path, name);
	if (json_array_size(shape) > FT_ST_MAX_DIMS)
		return ft_fail("%s: tensor \"%s\": %zu dimensions, at most %d supported",
			       path, name, json_array_size(shape), FT_ST_MAX_DIMS);
	t->ndim = (int)json_array_size(shape);
	uint64_t numel = 1;
	for (int i = 0; i < t->ndim; i++) {
		uint64_t d;
		if (get_u64(json_array_get(shape, (size_t)i), &d) < 0)
			return ft_fail("%s: tensor \"%s\": shape[%d] is not a non-negative integer", path, name, i);
		if (__builtin_mul_overflow(numel, d, &numel))
			return ft_fail("%s: tensor \"%s\": shape overflows the element count", path, name);
		t->shape[i] = (int64_t)d;
	}
	uint64_t nbytes, b, en;
	if (__builtin_mul_overflow(numel, (uint64_t)ft_dtype_size(t->dtype), &nbytes) || nbytes > SIZE_MAX)
		return ft_fail("%s: tensor \"%s\": shape overflows the byte size", path, name);
	if (!json_is_array(off) || json_array_size(off) != 2 ||
	    get_u64(json_array_get(off, 0), &b) < 0 || get_u64(json_array_get(off, 1), &en) < 0)
		return ft_fail("%s: tensor \"%s\": \"data_offsets\" must be [begin, end] of non-negative integers", path, name);
	if (b > en)
		return ft_fail("%s: tensor \"%s\": data_offsets begin %llu > end %llu", path, name,
			       (unsigned long long)b, (unsigned long long)en);
	if (en > data_len)
		return ft_fail("%s: tensor \"%s\": data_offsets end %llu beyond the %llu-byte data region (truncated file?)",
			       path, name, (unsigned long long)en, (unsigned long long)data_len);
	if (en - b != nbytes)
		return ft_fail("%s: tensor \"%s\": data_offsets span %llu bytes but %s shape needs %llu",
			       path, name, (unsigned long long)(en - b), ft_dtype_name(t->dtype),
			       (unsigned long long)nbytes);
	t->numel = (size_t)numel;
	t->nbytes = (size_t)nbytes;
	*begin = b;
	return 0;
}

typedef struct { uint64_t b, e; const char *name; } span;

static int span_cmp(const void *x, const void *y)
{
	const span *a = x, *b = y;
	if (a->b != b->b) return a->b < b->b ? -1 : 1;
	return a->e < b->e ? -1 : a->e > b->e;
}

/* Tensors may leave gaps but no two non-empty ones may share a byte. */
static int check_overlap(const char *path, span *sp, size_t n)
{
	qsort(sp, n, sizeof *sp, span_cmp);
	const span *prev = NULL;
	for (size_t i = 0; i < n; i++) {
		if (sp[i].b == sp[i].e) continue;
		if (prev && sp[i].b < prev->e)
			return ft_fail("%s: tensors \"%s\" and \"%s\" overlap (bytes %llu..%llu and %llu..%llu)",
				       path, prev->name, sp[i].name,
				       (unsigned long long)prev->b, (unsigned long long)prev->e,
				       (unsigned long long)sp[i].b, (unsigned long long)sp[i].e);
		prev = &sp[i];
	}
	return 0;
}

static int parse_header(ft_st *st, shard *s, json_t **meta_out)
{
	const char *path = s->path;
	uint64_t n = le64(s->map);
	if (n > s->size - 8)
		return ft_fail("%s: truncated or not safetensors: header length %llu but only %zu bytes follow",
			       path, (unsigned long long)n, s->size - 8);
	if (n > MAX_HEADER)
		return ft_fail("%s: header length %llu exceeds the %llu-byte limit", path,
			       (unsigned long long)n, MAX_HEADER);
	if (n < 2)
		return ft_fail("%s: header length %llu is too small for a JSON object", path, (unsigned long long)n);
	/* jansson stops at a NUL; the format allows only space padding */
	const void *nul = memchr(s->map + 8, 0, (size_t)n);
	if (nul)
		return ft_fail("%s: header is not valid JSON (NUL byte at header byte %zu)", path,
			       (size_t)((const unsigned char *)nul - s->map - 8));
	json_error_t je;
	json_t *h = json_loadb((const char *)s->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
	if (!h)
		return ft_fail("%s: header is not valid JSON (header byte %d): %s", path, je.position, je.text);
	if (!json_is_object(h)) {
		json_decref(h);
		return ft_fail("%s: header is not a JSON object", path);
	}
	uint64_t data_len = s->size - 8 - n;
	const unsigned char *data = s->map + 8 + n;
	size_t nsp = 0, first = st->n;
	span *sp = ft_xmalloc(json_object_size(h) * sizeof *sp);
	const char *k;
	json_t *v;
	int rc = 0;
	json_object_foreach(h, k, v) {
		if (strcmp(k, "__metadata__") == 0) {
			if ((rc = check_metadata(path, v)) < 0) break;
			continue;
		}
		ft_st_tensor t = {0};
		uint64_t b = 0;
		if ((rc = parse_entry(path, k, v, data_len, &t, &b)) < 0) break;
		t.name = ft_xstrdup(k);
		t.file = s->path;
		t.data = data + b;
		push_tensor(st, &t);
		sp[nsp++] = (span){b, b + t.nbytes, st->t[st->n - 1].name};
	}
	if (rc == 0)
		rc = check_overlap(path, sp, nsp);
	free(sp);
	if (rc == 0) {
		json_t *m = json_object_get(h, "__metadata__");
		*meta_out = json_is_object(m) ? json_incref(m) : NULL;
	} else {
		while (st->n > first) free((char *)st->t[--st->n].name);
	}
	json_decref(h);
	return rc;
}

/* ---------- the ft_st object ---------- */

static ft_st *st_new(void) { return ft_xcalloc(1, sizeof(ft_st)); }

void ft_st_close(ft_st *st)
{
	if (!st) return;
	for (size_t i = 0; i < st->n; i++) free((char *)st->t[i].name);
	for (size_t i = 0; i < st->nfiles; i++) {
		if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
		free(st->files[i].path);
	}
	free(st->files);
	free(st->t);
	json_decref(st->meta);
	free(st);
}

static int add_file(ft_st *st, const char *path)
{
	st->files = ft_xrealloc(st->files, (st->nfiles + 1) * sizeof *st->files);
	shard *s = &st->files[st->nfiles++];
	memset(s, 0, sizeof *s);
	if (map_file(s, path) < 0)
		return -1;
	json_t *meta = NULL;
	if (parse_header(st, s, &meta) < 0)
		return -1;
	if (!st->meta) st->meta = meta;
	else json_decref(meta);
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(((const ft_st_tensor *)a)->name, ((const ft_st_tensor *)b)->name);
}

static int finish(ft_st *st)
{
	if (st->n)
		qsort(st->t, st->n, sizeof *st->t, name_cmp);
	for (size_t i = 1; i < st->n; i++)
		if (strcmp(st->t[i - 1].name, st->t[i].name) == 0)
			return ft_fail("tensor \"%s\" appears in both %s and %s", st->t[i].name,
				       st->t[i - 1].file, st->t[i].file);
	return 0;
}

static int ends_with(const char *s, const char *suf)
{
	size_t n = strlen(s), m = strlen(suf);
	return n >= m && strcmp(s + n - m, suf) == 0;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash) return ft_xstrdup(".");
	return ft_xasprintf("%.*s", (int)(slash - path + (slash == path)), path);
}

static char *shard_path(const char *dir, const char *f)
{
	return f[0] == '/' ? ft_xstrdup(f) : ft_xasprintf("%s/%s", dir, f);
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Open each shard the index names once, in name order (model-00001-of-...
 * first); a missing one is reported with a tensor that lives in it. */
static int open_shards(ft_st *st, const char *path, const char *dir, json_t *wm,
		       const char **files, size_t nf)
{
	qsort(files, nf, sizeof *files, str_cmp);
	int rc = 0;
	for (size_t i = 0; i < nf && rc == 0; i++) {
		if (i && strcmp(files[i], files[i - 1]) == 0) continue;
		char *fp = shard_path(dir, files[i]);
		if (access(fp, F_OK) != 0) {
			const char *who = "", *k;
			json_t *v;
			json_object_foreach(wm, k, v)
				if (strcmp(json_string_value(v), files[i]) == 0) { who = k; break; }
			rc = ft_fail("%s: tensor \"%s\" is in %s, which is missing", path, who, fp);
		} else {
			rc = add_file(st, fp);
		}
		free(fp);
	}
	return rc;
}

static int open_index(ft_st *st, const char *path)
{
	json_t *idx = ft_json_load_file(path);
	if (!idx) return -1;
	json_t *wm = json_object_get(idx, "weight_map");
	if (!json_is_object(wm)) {
		json_decref(idx);
		return ft_fail("%s: \"weight_map\" missing or not an object", path);
	}
	size_t nf = 0, n = json_object_size(wm);
	const char **files = ft_xmalloc((n ? n : 1) * sizeof *files);
	const char *k;
	json_t *v;
	int rc = 0;
	json_object_foreach(wm, k, v) {
		if (!json_is_string(v) || !json_string_value(v)[0]) {
			rc = ft_fail("%s: weight_map \"%s\" must be a file name", path, k);
			break;
		}
		files[nf++] = json_string_value(v);
	}
	char *dir = dir_of(path);
	if (rc == 0) rc = open_shards(st, path, dir, wm, files, nf);
	if (rc == 0) rc = finish(st);
	/* Every tensor the index names must be in the shard it names. */
	json_object_foreach(wm, k, v) {
		if (rc < 0) break;
		const ft_st_tensor *t = ft_st_find(st, k);
		char *fp = shard_path(dir, json_string_value(v));
		if (!t || strcmp(t->file, fp) != 0)
			rc = ft_fail("%s: tensor \"%s\" listed in weight_map is not in %s", path, k, fp);
		free(fp);
	}
	free(dir);
	free(files);
	json_decref(idx);
	return rc;
}

static int open_dir(ft_st *st, const char *dir)
{
	static const char *names[] = {"model.safetensors", "model.safetensors.index.json",
				      "adapter_model.safetensors"};
	for (int i = 0; i < 3; i++) {
		char *p = ft_xasprintf("%s/%s", dir, names[i]);
		int found = access(p, F_OK) == 0;
		int rc = !found ? 0 : i == 1 ? open_index(st, p) : (add_file(st, p) < 0 ? -1 : finish(st));
		free(p);
		if (found) return rc;
	}
	return ft_fail("%s: no model.safetensors, model.safetensors.index.json or adapter_model.safetensors", dir);
}

ft_st *ft_st_open(const char *path)
{
	ft_st *st = st_new();
	struct stat sb;
	int rc;
	if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		rc = open_dir(st, path);
	else if (ends_with(path, ".json"))
		rc = open_index(st, path);
	else
		rc = add_file(st, path) < 0 ? -1 : finish(st);
	if (rc < 0) {
		ft_st_close(st);
		return NULL;
	}
	return st;
}

size_t ft_st_count(const ft_st *st) { return st->n; }

const ft_st_tensor *ft_st_at(const ft_st *st, size_t i)
{
	return i < st->n ? &st->t[i] : NULL;
}

const ft_st_tensor *ft_st_find(const ft_st *st, const char *name)
{
	size_t lo = 0, hi = st->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, st->t[mid].name);
		if (c == 0) return &st->t[mid];
		if (c < 0) hi = mid;
		else lo = mid + 1;
	}
	return NULL;
}

const json_t *ft_st_metadata(const ft_st *st) { return st->meta; }

int ft_st_read_f32(const ft_st_tensor *t, float *dst)
{
	if (ft_convert_to_f32(dst, t->data, t->dtype, t->numel) < 0)
		return ft_fail_ctx("%s: tensor \"%s\": ", t->file, t->name);
	return 0;
}

void ft_st_release(const ft_st_tensor *t)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)t->data + page - 1) / page * page;
	uintptr_t b = ((uintptr_t)t->data + t->nbytes) / page * page;
	if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);   /* advice: nothing to fail */
}

/* ---------- writing ---------- */

typedef struct {
	char *name;
	ft_dtype dtype;
	int ndim;
	int64_t shape[FT_ST_MAX_DIMS];
	size_t nbytes;
	const void *data;
	uint64_t begin;       /* offset in the data region, set by layout() */
} wtensor;

struct ft_st_writer {
	wtensor *t;
	size_t n, cap;
	char **mkey, **mval;
	size_t nmeta;
	/* streaming */
	ft_atomic a;
	int streaming;
	size_t next;          /* next declared tensor to put */
	uint64_t data_start;  /* 8 + header length */
};

ft_st_writer *ft_st_writer_new(void) { return ft_xcalloc(1, sizeof(ft_st_writer)); }

void ft_st_writer_free(ft_st_writer *w)
{
	if (!w) return;
	if (w->streaming) ft_atomic_abort(&w->a);
	for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
	for (size_t i = 0; i < w->nmeta; i++) { free(w->mkey[i]); free(w->mval[i]); }
	free(w->t); free(w->mkey); free(w->mval);
	free(w);
}

int ft_st_writer_add(ft_st_writer *w, const char *name, ft_dtype dtype,
		     int ndim, const int64_t *shape, const void *data)
{
	if (w->streaming)
		return ft_fail("tensor \"%s\": added after the stream began", name);
	if (strcmp(name, "__metadata__") == 0)
		return ft_fail("\"__metadata__\" cannot be a tensor name");
	if ((unsigned)dtype >= FT_DTYPE_COUNT)
		return ft_fail("tensor \"%s\": invalid dtype %d", name, (int)dtype);
	if (ndim < 0 || ndim > FT_ST_MAX_DIMS)
		return ft_fail("tensor \"%s\": %d dimensions, 0..%d supported", name, ndim, FT_ST_MAX_DIMS);
	uint64_t numel = 1, nbytes;
	for (int i = 0; i < ndim; i++)
		if (shape[i] < 0 || __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel))
			return ft_fail("tensor \"%s\": bad shape[%d] = %lld", name, i, (long long)shape[i]);
	if (__builtin_mul_overflow(numel, (uint64_t)ft_dtype_size(dtype), &nbytes) || nbytes > SIZE_MAX / 2)
		return ft_fail("tensor \"%s\": too large", name);
	if (w->n == w->cap) {
		w->cap = w->cap ? 2 * w->cap : 64;
		w->t = ft_xrealloc(w->t, w->cap * sizeof *w->t);
	}
	wtensor *t = &w->t[w->n++];
	memset(t, 0, sizeof *t);
	t->name = ft_xstrdup(name);
	t->dtype = dtype;
	t->ndim = ndim;
	for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
	t->nbytes = (size_t)nbytes;
	t->data = data;
	return 0;
}

void ft_st_writer_meta(ft_st_writer *w, const char *key, const char *value)
{
	for (size_t i = 0; i < w->nmeta; i++)
		if (strcmp(w->mkey[i], key) == 0) {
			free(w->mval[i]);
			w->mval[i] = ft_xstrdup(value);
			return;
		}
	w->mkey = ft_xrealloc(w->mkey, (w->nmeta + 1) * sizeof *w->mkey);
	w->mval = ft_xrealloc(w->mval, (w->nmeta + 1) * sizeof *w->mval);
	w->mkey[w->nmeta] = ft_xstrdup(key);
	w->mval[w->nmeta++] = ft_xstrdup(value);
}

/* The Python package lays tensors out by dtype, in the descending order
 * of its Rust enum (I64 F64 F32 I32 BF16 F16 I16 I8 U8 BOOL), then by
 * name.  Sizes fall along that order, so every tensor starts aligned to
 * its element size once the header is padded to 8. */
static int dtype_rank(ft_dtype t)
{
	static const int rank[FT_DTYPE_COUNT] = {
		[FT_BOOL] = 0, [FT_U8] = 1, [FT_I8] = 2, [FT_I16] = 3, [FT_F16] = 4,
		[FT_BF16] = 5, [FT_I32] = 6, [FT_F32] = 7, [FT_F64] = 8, [FT_I64] = 9,
	};
	return rank[t];
}

static int layout_cmp(const void *x, const void *y)
{
	const wtensor *a = *(wtensor *const *)x, *b = *(wtensor *const *)y;
	int ra = dtype_rank(a->dtype), rb = dtype_rank(b->dtype);
	if (ra != rb) return rb - ra;
	return strcmp(a->name, b->name);
}

static int pstr_cmp(const void *a, const void *b)
{
	return strcmp(**(char **const *)a, **(char **const *)b);
}

/* JSON string as serde_json writes it: only '"', '\\' and control
 * characters are escaped; other bytes (UTF-8) pass through. */
static void put_jstr(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\b': fputs("\\b", f); break;
		case '\f': fputs("\\f", f); break;
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		default:
			if (*p < 0x20) fprintf(f, "\\u%04x", *p);
			else fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* Lay out the data region and build the padded header; *order gets the
 * tensors in file order.  Returns the header (caller frees) and its length. */
static char *build_header(ft_st_writer *w, wtensor ***order, size_t *hlen)
{
	wtensor **o = ft_xmalloc((w->n ? w->n : 1) * sizeof *o);
	for (size_t i = 0; i < w->n; i++) o[i] = &w->t[i];
	qsort(o, w->n, sizeof *o, layout_cmp);
	uint64_t off = 0;
	for (size_t i = 0; i < w->n; i++) { o[i]->begin = off; off += o[i]->nbytes; }

	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f) abort();
	fputc('{', f);
	int first = 1;
	if (w->nmeta) {
		/* sorted keys: the Rust package's HashMap order is arbitrary */
		char ***keys = ft_xmalloc(w->nmeta * sizeof *keys);
		for (size_t i = 0; i < w->nmeta; i++) keys[i] = &w->mkey[i];
		qsort(keys, w->nmeta, sizeof *keys, pstr_cmp);
		fputs("\"__metadata__\":{", f);
		for (size_t i = 0; i < w->nmeta; i++) {
			size_t j = (size_t)(keys[i] - w->mkey);
			if (i) fputc(',', f);
			put_jstr(f, w->mkey[j]);
			fputc(':', f);
			put_jstr(f, w->mval[j]);
		}
		fputc('}', f);
		free(keys);
		first = 0;
	}
	for (size_t i = 0; i < w->n; i++) {
		wtensor *t = o[i];
		if (!first) fputc(',', f);
		first = 0;
		put_jstr(f, t->name);
		fprintf(f, ":{\"dtype\":\"%s\",\"shape\":[", ft_dtype_name(t->dtype));
		for (int d = 0; d < t->ndim; d++)
			fprintf(f, "%s%lld", d ? "," : "", (long long)t->shape[d]);
		fprintf(f, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t->begin,
			(unsigned long long)(t->begin + t->nbytes));
	}
	fputc('}', f);
	/* pad with spaces so the data region starts 8-byte aligned */
	while (ftell(f) % 8) fputc(' ', f);
	fclose(f);
	*order = o;
	*hlen = len;
	return buf;
}

static int check_names(ft_st_writer *w)
{
	if (w->n < 2) return 0;
	char **names = ft_xmalloc(w->n * sizeof *names);
	for (size_t i = 0; i < w->n; i++) names[i] = w->t[i].name;
	qsort(names, w->n, sizeof *names, str_cmp);
	int rc = 0;
	for (size_t i = 1; i < w->n && rc == 0; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			rc = ft_fail("tensor \"%s\" added twice", names[i]);
	free(names);
	return rc;
}

/* Header length + header; leaves the file positioned at the data region. */
static int write_header(ft_st_writer *w, FILE *fp, wtensor ***order, uint64_t *data_start)
{
	if (check_names(w) < 0) return -1;
	size_t hlen;
	char *h = build_header(w, order, &hlen);
	unsigned char lenb[8];
	for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
	int ok = fwrite(lenb, 1, 8, fp) == 8 && fwrite(h, 1, hlen, fp) == hlen;
	free(h);
	*data_start = 8 + hlen;
	return ok ? 0 : ft_fail("write failed:");
}

int ft_st_writer_write(ft_st_writer *w, const char *path)
{
	for (size_t i = 0; i < w->n; i++)
		if (!w->t[i].data && w->t[i].nbytes)
			return ft_fail("%s: tensor \"%s\" has no data", path, w->t[i].name);
	ft_atomic a;
	if (ft_atomic_open(&a, path) < 0) return -1;
	wtensor **o = NULL;
	uint64_t ds;
	int rc = write_header(w, a.fp, &o, &ds);
	for (size_t i = 0; rc == 0 && i < w->n; i++)
		if (o[i]->nbytes && fwrite(o[i]->data, 1, o[i]->nbytes, a.fp) != o[i]->nbytes)
			rc = ft_fail("write failed:");
	free(o);
	if (rc < 0) {
		ft_fail_ctx("%s: ", path);
		ft_atomic_abort(&a);
		return -1;
	}
	return ft_atomic_commit(&a);
}

int ft_st_stream_begin(ft_st_writer *w, const char *path)
{
	if (w->streaming)
		return ft_fail("%s: stream already begun", path);
	if (ft_atomic_open(&w->a, path) < 0) return -1;
	wtensor **o = NULL;
	int rc = write_header(w, w->a.fp, &o, &w->data_start);
	free(o);
	if (rc < 0) {
		ft_fail_ctx("%s: ", path);
		ft_atomic_abort(&w->a);
		return -1;
	}
	w->streaming = 1;
	w->next = 0;
	return 0;
}

int ft_st_stream_put(ft_st_writer *w, const void *data, size_t nbytes)
{
	if (!w->streaming)
		return ft_fail("ft_st_stream_put without ft_st_stream_begin");
	if (w->next >= w->n)
		return ft_fail("%s: more tensors put than declared", w->a.path);
	wtensor *t = &w->t[w->next];
	if (nbytes != t->nbytes)
		return ft_fail("%s: tensor \"%s\": %zu bytes put, %zu declared", w->a.path, t->name,
			       nbytes, t->nbytes);
	/* Declared order need not be file order: seek to the tensor's place. */
	if (fseeko(w->a.fp, (off_t)(w->data_start + t->begin), SEEK_SET) != 0 ||
	    (nbytes && fwrite(data, 1, nbytes, w->a.fp) != nbytes))
		return ft_fail("%s: write failed:", w->a.path);
	w->next++;
	return 0;
}

int ft_st_stream_end(ft_st_writer *w)
{
	if (!w->streaming)
		return ft_fail("ft_st_stream_end without ft_st_stream_begin");
	if (w->next != w->n) {
		ft_fail("%s: only %zu of %zu declared tensors were put", w->a.path, w->next, w->n);
		ft_atomic_abort(&w->a);
		w->streaming = 0;
		return -1;
	}
	w->streaming = 0;
	return ft_atomic_commit(&w->a);
}

void ft_st_stream_abort(ft_st_writer *w)
{
	if (!w->streaming) return;
	ft_atomic_abort(&w->a);
	w->streaming = 0;
}

/* ---------- sharded models ---------- */

char *ft_st_shard_name(int i, int n)
{
	return ft_xasprintf("model-%05d-of-%05d.safetensors", i, n);
}

/* As transformers' save_pretrained writes it: json.dumps(index, indent=2,
 * sort_keys=True) + "\n".  jansson keeps insertion order, so the keys
 * are inserted sorted. */
int ft_st_write_index(const char *dir, const json_t *weight_map, uint64_t total_size,
		      uint64_t total_parameters)
{
	if (!json_is_object(weight_map))
		return ft_fail("%s: weight_map must be an object", dir);
	size_t n = json_object_size(weight_map), k = 0;
	const char **keys = ft_xmalloc((n ? n : 1) * sizeof *keys);
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)weight_map, key, v) keys[k++] = key;
	qsort(keys, n, sizeof *keys, str_cmp);
	json_t *wm = json_object();
	for (size_t i = 0; i < n; i++)
		json_object_set(wm, keys[i], json_object_get(weight_map, keys[i]));
	free(keys);
	json_t *meta = json_object();
	if (total_parameters)
		json_object_set_new(meta, "total_parameters", json_integer((json_int_t)total_parameters));
	json_object_set_new(meta, "total_size", json_integer((json_int_t)total_size));
	json_t *idx = json_object();
	json_object_set_new(idx, "metadata", meta);
	json_object_set_new(idx, "weight_map", wm);
	char *path = ft_xasprintf("%s/model.safetensors.index.json", dir);
	int rc = ft_json_save_file(idx, path, 2);
	free(path);
	json_decref(idx);
	return rc;
}
