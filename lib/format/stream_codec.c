/* stream_codec.c - the msgpack side of the stream module: record framing
 * (ftp_scan), JSON <-> msgpack conversion, JSON lines, field access. */
#define _GNU_SOURCE
#include "format/stream.h"
#include "format/stream_internal.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== packing ======================================================== */

int ftp_buf_write(void *data, const char *s, size_t n)
{
	ftp_buf *b = data;
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + n) cap *= 2;
		b->p = ft_xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	return 0;
}

void ftp_pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

void ftp_pack_key(msgpack_packer *pk, const char *key)
{
	ftp_pack_str(pk, key, strlen(key));
}

static int pack_json(msgpack_packer *pk, const json_t *v, int depth)
{
	const char *key;
	json_t *item;
	size_t i;
	/* depth 0 is the record's own map; ftp_scan allows as many levels */
	if (depth >= FT_SCAN_MAX_DEPTH - 1)
		return ft_fail("value nested deeper than %d levels", FT_SCAN_MAX_DEPTH - 2);
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		msgpack_pack_map(pk, json_object_size(v));
		json_object_foreach((json_t *)v, key, item) {
			ftp_pack_key(pk, key);
			if (pack_json(pk, item, depth + 1) < 0) return -1;
		}
		return 0;
	case JSON_ARRAY:
		msgpack_pack_array(pk, json_array_size(v));
		json_array_foreach(v, i, item)
			if (pack_json(pk, item, depth + 1) < 0) return -1;
		return 0;
	case JSON_STRING:
		ftp_pack_str(pk, json_string_value(v), json_string_length(v));
		return 0;
	case JSON_INTEGER:
		return msgpack_pack_int64(pk, json_integer_value(v)), 0;
	case JSON_REAL:
		return msgpack_pack_double(pk, json_real_value(v)), 0;
	case JSON_TRUE:
		return msgpack_pack_true(pk), 0;
	case JSON_FALSE:
		return msgpack_pack_false(pk), 0;
	case JSON_NULL:
		return msgpack_pack_nil(pk), 0;
	}
	return ft_fail("unknown JSON value type");
}

int ftp_pack_json(msgpack_packer *pk, const json_t *v, int depth)
{
	return pack_json(pk, v, depth);
}

/* ==== framing ======================================================== */

enum { T_DONE, T_SKIP, T_BYTES, T_EXT, T_ARRAY, T_MAP, T_BAD };

/* What a first byte announces: its type, how many more header bytes hold
 * a length or count (lenb), and a fixed payload or count (fixed). */
static inline int classify(uint8_t b, unsigned *lenb, uint64_t *fixed)
{
	*lenb = 0;
	*fixed = 0;
	if (b <= 0x7f || b >= 0xe0) return T_DONE;
	if (b <= 0x8f) return *fixed = b & 15, T_MAP;
	if (b <= 0x9f) return *fixed = b & 15, T_ARRAY;
	if (b <= 0xbf) return *fixed = b & 31, T_BYTES;
	switch (b) {
	case 0xc0: case 0xc2: case 0xc3: return T_DONE;
	case 0xc4: case 0xd9: return *lenb = 1, T_BYTES;
	case 0xc5: case 0xda: return *lenb = 2, T_BYTES;
	case 0xc6: case 0xdb: return *lenb = 4, T_BYTES;
	case 0xc7: return *lenb = 1, T_EXT;
	case 0xc8: return *lenb = 2, T_EXT;
	case 0xc9: return *lenb = 4, T_EXT;
	case 0xca: return *fixed = 4, T_SKIP;
	case 0xcb: return *fixed = 8, T_SKIP;
	case 0xcc: case 0xd0: return *fixed = 1, T_SKIP;
	case 0xcd: case 0xd1: return *fixed = 2, T_SKIP;
	case 0xce: case 0xd2: return *fixed = 4, T_SKIP;
	case 0xcf: case 0xd3: return *fixed = 8, T_SKIP;
	case 0xd4: return *fixed = 2, T_SKIP;    /* fixext: type byte + data */
	case 0xd5: return *fixed = 3, T_SKIP;
	case 0xd6: return *fixed = 5, T_SKIP;
	case 0xd7: return *fixed = 9, T_SKIP;
	case 0xd8: return *fixed = 17, T_SKIP;
	case 0xdc: return *lenb = 2, T_ARRAY;
	case 0xdd: return *lenb = 4, T_ARRAY;
	case 0xde: return *lenb = 2, T_MAP;
	case 0xdf: return *lenb = 4, T_MAP;
	}
	return T_BAD;   /* 0xc1, never used */
}

static int scan_fail(ftp_scanner *s, const char *why)
{
	s->err = why;
	return -1;
}

/* An item ended: close every container it completes; a record ends when
 * the outermost map does. */
static inline void item_done(ftp_scanner *s)
{
	while (s->depth > 0) {
		if (--s->left[s->depth - 1] > 0) return;
		s->depth--;
	}
	s->ready++;
	s->active = 0;
}

static int item_start(ftp_scanner *s)
{
	unsigned lenb;
	uint64_t n;
	int t = classify(s->hdr[0], &lenb, &n);
	for (unsigned i = 0; i < lenb; i++) n = n << 8 | s->hdr[1 + i];
	if (n > FT_STREAM_MAX_RECORD)
		return scan_fail(s, "length or count over the record size limit (corrupt data?)");
	switch (t) {
	case T_SKIP: case T_BYTES: case T_EXT:
		if (n == 0) item_done(s);
		else s->skip = n;
		return 0;
	case T_ARRAY: case T_MAP:
		if (t == T_MAP) n *= 2;
		if (n == 0) {
			item_done(s);
			return 0;
		}
		if (s->depth >= FT_SCAN_MAX_DEPTH - 1)
			return scan_fail(s, "values nested too deeply");
		s->left[s->depth++] = n;
		return 0;
	default:
		item_done(s);
		return 0;
	}
}

/* Sizes of 0xcc..0xd3 (uint8..int64) payloads. */
static const uint8_t int_size[8] = {1, 2, 4, 8, 1, 2, 4, 8};

int ftp_scan(ftp_scanner *s, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		/* Fast path: runs of integers inside a container (token
		 * arrays are nearly all of the bytes), whole in this chunk.
		 * Locals, since p (bytes) may alias *s as far as C knows. */
		if (!s->skip && !s->hlen && s->depth > 0) {
			uint64_t left = s->left[s->depth - 1];
			size_t j = i;
			while (j < n) {
				uint8_t b = p[j];
				size_t len;
				if (b <= 0x7f || b >= 0xe0) len = 1;
				else if (b >= 0xcc && b <= 0xd3) len = 1 + (size_t)int_size[b - 0xcc];
				else break;
				if (len > n - j) break;
				j += len;
				if (--left == 0) break;
			}
			if (j > i) {
				s->pos += j - i;
				i = j;
				if (left == 0) {
					s->left[s->depth - 1] = 1;
					item_done(s);
				} else {
					s->left[s->depth - 1] = left;
				}
				continue;
			}
		}
		if (s->skip) {
			uint64_t take = s->skip < n - i ? s->skip : n - i;
			i += take;
			s->pos += take;
			s->skip -= take;
			if (s->pos - s->rec_start > FT_STREAM_MAX_RECORD)
				return scan_fail(s, "record over the size limit");
			if (s->skip == 0) item_done(s);
			continue;
		}
		uint8_t b = p[i++];
		s->pos++;
		if (s->hlen == 0) {
			if (!s->active) {
				s->rec_start = s->pos - 1;
				if (!((b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf))
					return scan_fail(s, "record is not a msgpack map");
				s->active = 1;
			}
			unsigned lenb;
			uint64_t fixed;
			int t = classify(b, &lenb, &fixed);
			if (t == T_BAD) return scan_fail(s, "invalid msgpack byte 0xc1");
			s->hneed = 1 + lenb + (t == T_EXT);
		}
		s->hdr[s->hlen++] = b;
		if (s->hlen < s->hneed) continue;
		s->hlen = 0;
		if (item_start(s) < 0) return -1;
	}
	return 0;
}

/* ==== msgpack -> JSON ================================================ */

const msgpack_object *ftp_mp_get(const msgpack_object *map, const char *key)
{
	if (map->type != MSGPACK_OBJECT_MAP) return NULL;
	size_t len = strlen(key);
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
		    !memcmp(k->via.str.ptr, key, len))
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

/* Length of the valid UTF-8 sequence at p (0: invalid). */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
	uint8_t c = p[0];
	size_t len;
	uint32_t cp;
	if (c < 0x80) return 1;
	if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
	else return 0;
	if (n < len) return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80) return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* Invalid UTF-8 becomes U+FFFD: JSON text must be Unicode. */
static void put_utf8(ftp_buf *b, const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(p + i, n - i);
		if (k) ftp_buf_write(b, s + i, k), i += k;
		else ftp_buf_write(b, "\xef\xbf\xbd", 3), i++;
	}
}

static char *valid_utf8(const char *s, size_t n, size_t *outlen)
{
	ftp_buf b = {0};
	put_utf8(&b, s, n);
	ftp_buf_write(&b, "", 1);
	*outlen = b.n - 1;
	return b.p;
}

json_t *ftp_mp_to_json(const msgpack_object *o)
{
	json_t *v;
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return json_null();
	case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > INT64_MAX) {
			ft_fail("integer %llu does not fit in a signed 64-bit JSON integer",
				(unsigned long long)o->via.u64);
			return NULL;
		}
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
	case MSGPACK_OBJECT_STR: {
		size_t n;
		char *s = valid_utf8(o->via.str.ptr, o->via.str.size, &n);
		v = json_stringn(s, n);
		free(s);
		return v;
	}
	case MSGPACK_OBJECT_ARRAY:
		v = json_array();
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			json_t *e = ftp_mp_to_json(&o->via.array.ptr[i]);
			if (!e) return json_decref(v), NULL;
			json_array_append_new(v, e);
		}
		return v;
	case MSGPACK_OBJECT_MAP:
		v = json_object();
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];
			if (kv->key.type != MSGPACK_OBJECT_STR) {
				ft_fail("map key is not a string");
				return json_decref(v), NULL;
			}
			json_t *e = ftp_mp_to_json(&kv->val);
			if (!e) return json_decref(v), NULL;
			size_t n;
			char *k = valid_utf8(kv->key.via.str.ptr, kv->key.via.str.size, &n);
			json_object_setn_new_nocheck(v, k, n, e);
			free(k);
		}
		return v;
	default:
		ft_fail("binary and extension values have no JSON form");
		return NULL;
	}
}

/* ---- JSON text, written directly (exact doubles, shortest form) ---- */

static void put_str(ftp_buf *b, const char *s, size_t n)
{
	ftp_buf_write(b, "\"", 1);
	size_t run = 0;   /* bytes copied verbatim, batched */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
			run++;
			continue;
		}
		if (run) ftp_buf_write(b, s + i - run, run), run = 0;
		char esc[8];
		switch (c) {
		case '"': ftp_buf_write(b, "\\\"", 2); continue;
		case '\\': ftp_buf_write(b, "\\\\", 2); continue;
		case '\n': ftp_buf_write(b, "\\n", 2); continue;
		case '\t': ftp_buf_write(b, "\\t", 2); continue;
		case '\r': ftp_buf_write(b, "\\r", 2); continue;
		case '\b': ftp_buf_write(b, "\\b", 2); continue;
		case '\f': ftp_buf_write(b, "\\f", 2); continue;
		}
		if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			ftp_buf_write(b, esc, 6);
			continue;
		}
		size_t k = utf8_seq((const uint8_t *)s + i, n - i);
		if (k) ftp_buf_write(b, s + i, k), i += k - 1;
		else ftp_buf_write(b, "\xef\xbf\xbd", 3);
	}
	if (run) ftp_buf_write(b, s + n - run, run);
	ftp_buf_write(b, "\"", 1);
}

/* The shortest %.Ng that reads back as the same double, always with a
 * '.' or exponent so it reads back as a float, not an integer. */
static void put_double(ftp_buf *b, double d)
{
	char s[40];
	if (!isfinite(d)) {
		ftp_buf_write(b, "null", 4);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(s, sizeof s, "%.*g", prec, d);
		if (strtod(s, NULL) == d) break;
	}
	if (!strpbrk(s, ".e")) strcat(s, ".0");
	ftp_buf_write(b, s, strlen(s));
}

static int put_value(ftp_buf *b, const msgpack_object *o)
{
	char num[32];
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: ftp_buf_write(b, "null", 4); return 0;
	case MSGPACK_OBJECT_BOOLEAN:
		if (o->via.boolean) ftp_buf_write(b, "true", 4);
		else ftp_buf_write(b, "false", 5);
		return 0;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > INT64_MAX)
			return ft_fail("integer %llu does not fit in a signed 64-bit JSON integer",
				       (unsigned long long)o->via.u64);
		ftp_buf_write(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)o->via.u64));
		return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		ftp_buf_write(b, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)o->via.i64));
		return 0;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		put_double(b, o->via.f64);
		return 0;
	case MSGPACK_OBJECT_STR:
		put_str(b, o->via.str.ptr, o->via.str.size);
		return 0;
	case MSGPACK_OBJECT_ARRAY:
		ftp_buf_write(b, "[", 1);
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			if (i) ftp_buf_write(b, ",", 1);
			if (put_value(b, &o->via.array.ptr[i]) < 0) return -1;
		}
		ftp_buf_write(b, "]", 1);
		return 0;
	case MSGPACK_OBJECT_MAP:
		ftp_buf_write(b, "{", 1);
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];
			if (kv->key.type != MSGPACK_OBJECT_STR) return ft_fail("map key is not a string");
			if (i) ftp_buf_write(b, ",", 1);
			put_str(b, kv->key.via.str.ptr, kv->key.via.str.size);
			ftp_buf_write(b, ":", 1);
			if (put_value(b, &kv->val) < 0) return -1;
		}
		ftp_buf_write(b, "}", 1);
		return 0;
	default:
		return ft_fail("binary and extension values have no JSON form");
	}
}

int ftp_mp_write_json_line(const msgpack_object *o, FILE *fp)
{
	ftp_buf b = {0};
	int rc = put_value(&b, o);
	if (rc == 0) {
		ftp_buf_write(&b, "\n", 1);
		if (fwrite(b.p, 1, b.n, fp) != b.n) rc = ft_fail("write error:");
	}
	free(b.p);
	return rc;
}

/* ==== headers ======================================================== */

static json_t *meta_sans_counts(const json_t *h)
{
	json_t *m = json_object_get(h, "meta");
	json_t *c = m ? json_copy(m) : json_object();
	json_object_del(c, "counts");
	return c;
}

/* json_equal() calls two missing values unequal; here they agree. */
static int same(const json_t *a, const json_t *b)
{
	return (!a && !b) || json_equal(a, b);
}

int ft_headers_compatible(const json_t *a, const json_t *b)
{
	if (!same(json_object_get(a, "kind"), json_object_get(b, "kind")) ||
	    !same(json_object_get(a, "version"), json_object_get(b, "version")))
		return 0;
	json_t *ma = meta_sans_counts(a), *mb = meta_sans_counts(b);
	int eq = json_equal(ma, mb);
	json_decref(ma);
	json_decref(mb);
	return eq;
}

char *ftp_header_difference(const json_t *a, const json_t *b)
{
	const char *ka = json_string_value(json_object_get(a, "kind"));
	const char *kb = json_string_value(json_object_get(b, "kind"));
	if (!same(json_object_get(a, "kind"), json_object_get(b, "kind")))
		return ft_xasprintf("kind '%s' vs '%s'", ka ? ka : "?", kb ? kb : "?");
	if (!same(json_object_get(a, "version"), json_object_get(b, "version")))
		return ft_xasprintf("format version differs");
	json_t *ma = meta_sans_counts(a), *mb = meta_sans_counts(b);
	char *why = NULL;
	const char *key;
	json_t *v;
	json_object_foreach(ma, key, v)
		if (!why && !json_equal(v, json_object_get(mb, key)))
			why = ft_xasprintf("meta.%s differs", key);
	json_object_foreach(mb, key, v)
		if (!why && !json_object_get(ma, key))
			why = ft_xasprintf("meta.%s differs", key);
	json_decref(ma);
	json_decref(mb);
	return why ? why : ft_xstrdup("headers differ");
}

/* ==== field access =================================================== */

static const msgpack_object *field(const ft_rec *rec, const char *key)
{
	const msgpack_object *v = ftp_mp_get(&rec->obj, key);
	if (!v) ft_fail("field '%s' is missing", key);
	return v;
}

static int wrong(const char *key, const char *what)
{
	return ft_fail("field '%s' is not %s", key, what);
}

int ft_rec_has(const ft_rec *rec, const char *key)
{
	return ftp_mp_get(&rec->obj, key) != NULL;
}

static int as_int(const msgpack_object *v, int64_t *out)
{
	if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
		return *out = (int64_t)v->via.u64, 0;
	if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return *out = v->via.i64, 0;
	return -1;
}

int ft_rec_int(const ft_rec *rec, const char *key, int64_t *out)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	return as_int(v, out) == 0 ? 0 : wrong(key, "an integer");
}

/* Integers are accepted too: JSON writers may drop the ".0". */
static int as_float(const msgpack_object *v, double *out)
{
	int64_t i;
	if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
		return *out = v->via.f64, 0;
	if (as_int(v, &i) == 0) return *out = (double)i, 0;
	return -1;
}

int ft_rec_float(const ft_rec *rec, const char *key, double *out)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	return as_float(v, out) == 0 ? 0 : wrong(key, "a number");
}

int ft_rec_bool(const ft_rec *rec, const char *key, int *out)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	if (v->type != MSGPACK_OBJECT_BOOLEAN) return wrong(key, "true or false");
	*out = v->via.boolean;
	return 0;
}

int ft_rec_str(const ft_rec *rec, const char *key, const char **s, size_t *len)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	if (v->type != MSGPACK_OBJECT_STR) return wrong(key, "a string");
	*s = v->via.str.ptr;
	*len = v->via.str.size;
	return 0;
}

int ft_rec_i32s(const ft_rec *rec, const char *key, ft_i32vec *out)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	if (v->type != MSGPACK_OBJECT_ARRAY) return wrong(key, "an array of integers");
	out->n = 0;
	ft_i32vec_reserve(out, v->via.array.size);
	const msgpack_object *e = v->via.array.ptr;
	for (uint32_t i = 0; i < v->via.array.size; i++) {
		if (e[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER && e[i].via.u64 <= INT32_MAX)
			out->v[i] = (int32_t)e[i].via.u64;
		else if (e[i].type == MSGPACK_OBJECT_NEGATIVE_INTEGER && e[i].via.i64 >= INT32_MIN)
			out->v[i] = (int32_t)e[i].via.i64;
		else
			return ft_fail("field '%s': element %u is not a 32-bit integer", key, i);
	}
	out->n = v->via.array.size;
	return 0;
}

int ft_rec_f32s(const ft_rec *rec, const char *key, ft_f32vec *out)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return -1;
	if (v->type != MSGPACK_OBJECT_ARRAY) return wrong(key, "an array of numbers");
	out->n = 0;
	ft_f32vec_reserve(out, v->via.array.size);
	for (uint32_t i = 0; i < v->via.array.size; i++) {
		double d;
		if (as_float(&v->via.array.ptr[i], &d) < 0)
			return ft_fail("field '%s': element %u is not a number", key, i);
		out->v[i] = (float)d;
	}
	out->n = v->via.array.size;
	return 0;
}

json_t *ft_rec_get_json(const ft_rec *rec, const char *key)
{
	const msgpack_object *v = field(rec, key);
	if (!v) return NULL;
	json_t *j = ftp_mp_to_json(v);
	if (!j) ft_fail_ctx("field '%s': ", key);
	return j;
}

json_t *ft_rec_to_json(const ft_rec *rec)
{
	return ftp_mp_to_json(&rec->obj);
}
