/* stream_write.c - writing ft record streams: zstd frames holding msgpack maps.
 *
 * Each record is packed into a buffer and fed to one zstd compression
 * context; a frame (with a content checksum) is closed after every ~1 MiB
 * of input so a reader needs bounded memory, and a shard (file) is closed
 * after a byte or record budget.  Every shard starts with the header
 * record, so each is a valid stream on its own.  Shards are written under
 * a temporary name and renamed when complete.  See docs/FORMAT.md
 * section 1; reading is in stream.c, msgpack <-> JSON in stream_codec.c.
 */
#define _GNU_SOURCE
#include "format/stream.h"
#include "format/stream_internal.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "util/sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define DEFAULT_FRAME_BYTES  ((uint64_t)1 << 20)

/* ==== writer ========================================================= */

typedef struct {
	char *path;
	uint64_t records;
	char sha[65];
} shard_info;

struct ft_writer {
	char *path;                /* single file, or NULL: stdout */
	char *dir, *suffix;        /* shard directory mode when dir != NULL */
	uint64_t shard_bytes, shard_records, frame_bytes;
	int replace;

	ftp_buf hdr;                /* the packed header record */
	json_t *header;            /* and as given, with the version */
	ftp_buf rec;                /* record being built */
	msgpack_packer pk;
	int64_t fields_left;       /* -1: no record open */
	int bad_record;            /* a field call came outside a record */

	ZSTD_CCtx *cctx;
	uint8_t *zout;
	size_t zout_cap;

	int shard_open;
	ft_atomic at;              /* file or shard output */
	FILE *fp;
	ft_sha256_ctx sha;
	uint64_t out_bytes;        /* compressed bytes in this shard */
	uint64_t shard_nrec;       /* data records in this shard */
	uint64_t frame_in;         /* uncompressed bytes in the open frame */
	uint64_t total_records;
	int rotate_pending;

	shard_info *shards;
	size_t nshards;
	int finished, failed;
};

static const char *out_name(const ft_writer *w)
{
	return w->fp == stdout ? "<stdout>" : w->at.path;
}

static int fail_writer(ft_writer *w)
{
	w->failed = 1;
	return -1;
}

static int out_write(ft_writer *w, const void *p, size_t n)
{
	if (n == 0) return 0;
	if (fwrite(p, 1, n, w->fp) != n)
		return ft_fail("%s: write error:", out_name(w));
	ft_sha256_update(&w->sha, p, n);
	w->out_bytes += n;
	return 0;
}

/* Feed bytes to zstd; ZSTD_e_end also closes the frame. */
static int compress(ft_writer *w, const void *src, size_t n, ZSTD_EndDirective mode)
{
	ZSTD_inBuffer in = {src, n, 0};
	for (;;) {
		ZSTD_outBuffer out = {w->zout, w->zout_cap, 0};
		size_t r = ZSTD_compressStream2(w->cctx, &out, &in, mode);
		if (ZSTD_isError(r))
			return ft_fail("zstd: %s", ZSTD_getErrorName(r));
		if (out_write(w, w->zout, out.pos) < 0) return -1;
		if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size) return 0;
	}
}

static char *shard_name(const ft_writer *w, size_t i)
{
	return ft_xasprintf("%s/shard-%05zu.%s", w->dir, i, w->suffix);
}

static int shard_start(ft_writer *w)
{
	if (w->dir) {
		char *name = shard_name(w, w->nshards);
		int rc = ft_atomic_open(&w->at, name);
		free(name);
		if (rc < 0) return -1;
		w->fp = w->at.fp;
	} else if (w->path) {
		if (ft_atomic_open(&w->at, w->path) < 0) return -1;
		w->fp = w->at.fp;
	} else {
		w->fp = stdout;
	}
	w->shard_open = 1;
	ft_sha256_init(&w->sha);
	w->out_bytes = w->shard_nrec = w->frame_in = 0;
	w->rotate_pending = 0;
	ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
	if (compress(w, w->hdr.p, w->hdr.n, ZSTD_e_continue) < 0) return -1;
	w->frame_in += w->hdr.n;
	return 0;
}

static int shard_finish(ft_writer *w)
{
	if (compress(w, NULL, 0, ZSTD_e_end) < 0) return -1;
	shard_info s = {0};
	s.records = w->shard_nrec;
	uint8_t d[32];
	ft_sha256_final(&w->sha, d);
	ft_hex(d, 32, s.sha);
	w->shard_open = 0;
	if (w->fp == stdout) {
		if (fflush(stdout) != 0 || ferror(stdout))
			return ft_fail("<stdout>: write error:");
		s.path = ft_xstrdup("-");
	} else {
		s.path = ft_xstrdup(w->at.path);
		w->fp = NULL;
		if (ft_atomic_commit(&w->at) < 0) {
			free(s.path);
			return -1;
		}
	}
	w->shards = ft_xrealloc(w->shards, (w->nshards + 1) * sizeof *w->shards);
	w->shards[w->nshards++] = s;
	return 0;
}

/* Header as given, with "format" and "version" put first. */
static int pack_header(ft_writer *w, const json_t *header)
{
	if (!json_is_object(header))
		return ft_fail("stream header: not a JSON object");
	const json_t *f = json_object_get(header, "format");
	if (f && (!json_is_string(f) || strcmp(json_string_value(f), FT_STREAM_FORMAT)))
		return ft_fail("stream header: \"format\" must be \"%s\"", FT_STREAM_FORMAT);
	const json_t *v = json_object_get(header, "version");
	if (v && (!json_is_integer(v) || json_integer_value(v) != FT_STREAM_VERSION))
		return ft_fail("stream header: version must be %d (this is version %d of the format)",
			       FT_STREAM_VERSION, FT_STREAM_VERSION);
	const json_t *kind = json_object_get(header, "kind");
	if (!json_is_string(kind) || !json_string_length(kind))
		return ft_fail("stream header: \"kind\" must be a non-empty string");
	const json_t *prod = json_object_get(header, "producer");
	if (prod && !json_is_string(prod))
		return ft_fail("stream header: \"producer\" must be a string");
	const json_t *meta = json_object_get(header, "meta");
	if (meta && !json_is_object(meta))
		return ft_fail("stream header: \"meta\" must be an object");

	msgpack_packer pk;
	msgpack_packer_init(&pk, &w->hdr, ftp_buf_write);
	size_t n = json_object_size(header) + !f + !v;
	msgpack_pack_map(&pk, n);
	ftp_pack_key(&pk, "format");
	ftp_pack_str(&pk, FT_STREAM_FORMAT, strlen(FT_STREAM_FORMAT));
	ftp_pack_key(&pk, "version");
	msgpack_pack_int64(&pk, FT_STREAM_VERSION);
	const char *key;
	json_t *val;
	json_object_foreach((json_t *)header, key, val) {
		if (!strcmp(key, "format") || !strcmp(key, "version")) continue;
		ftp_pack_key(&pk, key);
		if (ftp_pack_json(&pk, val, 1) < 0)
			return ft_fail_ctx("stream header: \"%s\": ", key);
	}
	return 0;
}

ft_writer *ft_writer_open(const ft_writer_opts *opts, const json_t *header)
{
	ft_writer *w = ft_xcalloc(1, sizeof *w);
	w->fields_left = -1;
	if (opts->dir) {
		w->dir = ft_xstrdup(opts->dir);
		w->suffix = ft_xstrdup(opts->suffix && *opts->suffix ? opts->suffix : "ftb.zst");
		if (strchr(w->suffix, '/')) {
			ft_fail("shard suffix '%s' contains '/'", w->suffix);
			goto fail;
		}
	} else if (opts->path && strcmp(opts->path, "-")) {
		w->path = ft_xstrdup(opts->path);
	}
	if (!opts->dir && (opts->shard_bytes || opts->shard_records)) {
		ft_fail("%s: shard rotation needs an output directory",
			opts->path ? opts->path : "<stdout>");
		goto fail;
	}
	w->shard_bytes = opts->shard_bytes;
	w->shard_records = opts->shard_records;
	w->frame_bytes = opts->frame_bytes ? opts->frame_bytes : DEFAULT_FRAME_BYTES;
	/* Small shards need small frames, or a shard could only end after a
	 * whole frame's worth of compressed output. */
	if (w->shard_bytes && w->shard_bytes < w->frame_bytes)
		w->frame_bytes = w->shard_bytes;
	w->replace = opts->replace;
	if (pack_header(w, header) < 0) goto fail;
	w->header = json_deep_copy(header);
	json_object_set_new(w->header, "version", json_integer(FT_STREAM_VERSION));
	msgpack_packer_init(&w->pk, &w->rec, ftp_buf_write);

	w->cctx = ZSTD_createCCtx();
	if (!w->cctx) {
		ft_fail("zstd: cannot create a compression context");
		goto fail;
	}
	int level = opts->level ? opts->level : 3;
	size_t r = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
	if (ZSTD_isError(r)) {
		ft_fail("zstd level %d: %s", level, ZSTD_getErrorName(r));
		goto fail;
	}
	w->zout_cap = ZSTD_CStreamOutSize();
	w->zout = ft_xmalloc(w->zout_cap);
	if (w->dir && ft_mkdirs(w->dir) < 0) goto fail;
	if (w->dir && !w->replace) {
		char *first = shard_name(w, 0);
		int exists = access(first, F_OK) == 0;
		free(first);
		if (exists) {
			ft_fail("%s: already holds shards (remove them, or overwrite)", w->dir);
			goto fail;
		}
	}
	if (shard_start(w) < 0) goto fail;
	return w;
fail:
	ft_writer_abort(w);
	return NULL;
}

/* Old shards past the new last one would be read as part of the stream. */
static int remove_stale_shards(ft_writer *w)
{
	for (size_t i = w->nshards;; i++) {
		char *name = shard_name(w, i);
		int rc = unlink(name);
		int err = errno;
		free(name);
		if (rc != 0) {
			if (err == ENOENT) return 0;
			errno = err;
			return ft_fail("%s: cannot remove an old shard:", w->dir);
		}
	}
}

int ft_writer_finish(ft_writer *w)
{
	if (w->finished) return w->failed ? -1 : 0;
	w->finished = 1;
	if (w->failed) return ft_fail("stream writer: an earlier write failed");
	if (w->fields_left >= 0)
		return fail_writer(w), ft_fail("stream writer: a record was begun but not ended");
	if (shard_finish(w) < 0) return fail_writer(w);
	if (w->dir && w->replace && remove_stale_shards(w) < 0) return fail_writer(w);
	return 0;
}

static void writer_free(ft_writer *w)
{
	if (w->shard_open && w->fp != stdout) ft_atomic_abort(&w->at);
	for (size_t i = 0; i < w->nshards; i++) free(w->shards[i].path);
	free(w->shards);
	free(w->hdr.p);
	json_decref(w->header);
	free(w->rec.p);
	free(w->zout);
	ZSTD_freeCCtx(w->cctx);
	free(w->path);
	free(w->dir);
	free(w->suffix);
	free(w);
}

int ft_writer_close(ft_writer *w)
{
	if (!w) return 0;
	int rc = ft_writer_finish(w);
	writer_free(w);
	return rc;
}

void ft_writer_abort(ft_writer *w)
{
	if (!w) return;
	writer_free(w);
}

size_t ft_writer_nshards(const ft_writer *w) { return w->nshards; }
const char *ft_writer_shard_path(const ft_writer *w, size_t i) { return w->shards[i].path; }
uint64_t ft_writer_shard_records(const ft_writer *w, size_t i) { return w->shards[i].records; }
const char *ft_writer_shard_sha256(const ft_writer *w, size_t i) { return w->shards[i].sha; }
uint64_t ft_writer_records(const ft_writer *w) { return w->total_records; }

/* ---- records ---- */

void ft_w_begin(ft_writer *w, uint32_t nfields)
{
	if (w->fields_left >= 0) w->bad_record = 1;
	w->rec.n = 0;
	w->fields_left = nfields;
	msgpack_pack_map(&w->pk, nfields);
}

/* Every field call goes through here: counts it and writes the key. */
static int field(ft_writer *w, const char *key)
{
	if (w->fields_left <= 0) {
		w->bad_record = 1;
		return 0;
	}
	w->fields_left--;
	ftp_pack_key(&w->pk, key);
	return 1;
}

void ft_w_int(ft_writer *w, const char *key, int64_t v)
{
	if (field(w, key)) msgpack_pack_int64(&w->pk, v);
}

void ft_w_float(ft_writer *w, const char *key, double v)
{
	if (field(w, key)) msgpack_pack_double(&w->pk, v);
}

void ft_w_bool(ft_writer *w, const char *key, int v)
{
	if (!field(w, key)) return;
	if (v) msgpack_pack_true(&w->pk);
	else msgpack_pack_false(&w->pk);
}

void ft_w_nil(ft_writer *w, const char *key)
{
	if (field(w, key)) msgpack_pack_nil(&w->pk);
}

void ft_w_str(ft_writer *w, const char *key, const char *s)
{
	ft_w_strn(w, key, s, strlen(s));
}

void ft_w_strn(ft_writer *w, const char *key, const char *s, size_t n)
{
	if (field(w, key)) ftp_pack_str(&w->pk, s, n);
}

/* The smallest msgpack encoding of v, as msgpack_pack_int32() chooses
 * it, written straight into the record buffer: a packer call per token
 * would cost a callback and a memcpy each. */
static size_t put_i32(uint8_t *q, int32_t v)
{
	uint32_t u = (uint32_t)v;
	if (v >= 0) {
		if (v < 128) return q[0] = (uint8_t)v, 1;
		if (v < 256) return q[0] = 0xcc, q[1] = (uint8_t)v, 2;
		if (v < 65536) return q[0] = 0xcd, q[1] = (uint8_t)(u >> 8), q[2] = (uint8_t)u, 3;
		q[0] = 0xce;
	} else {
		if (v >= -32) return q[0] = (uint8_t)v, 1;
		if (v >= -128) return q[0] = 0xd0, q[1] = (uint8_t)v, 2;
		if (v >= -32768) return q[0] = 0xd1, q[1] = (uint8_t)(u >> 8), q[2] = (uint8_t)u, 3;
		q[0] = 0xd2;
	}
	q[1] = (uint8_t)(u >> 24), q[2] = (uint8_t)(u >> 16), q[3] = (uint8_t)(u >> 8), q[4] = (uint8_t)u;
	return 5;
}

void ft_w_i32s(ft_writer *w, const char *key, const int32_t *v, size_t n)
{
	if (!field(w, key)) return;
	msgpack_pack_array(&w->pk, n);
	ftp_buf *b = &w->rec;
	if (b->n + 5 * n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + 5 * n) cap *= 2;
		b->p = ft_xrealloc(b->p, cap);
		b->cap = cap;
	}
	uint8_t *q = (uint8_t *)b->p + b->n;
	for (size_t i = 0; i < n; i++) q += put_i32(q, v[i]);
	b->n = (size_t)(q - (uint8_t *)b->p);
}

void ft_w_f32s(ft_writer *w, const char *key, const float *v, size_t n)
{
	if (!field(w, key)) return;
	msgpack_pack_array(&w->pk, n);
	for (size_t i = 0; i < n; i++) msgpack_pack_float(&w->pk, v[i]);
}

void ft_w_json(ft_writer *w, const char *key, const json_t *v)
{
	if (field(w, key) && ftp_pack_json(&w->pk, v, 1) < 0) {
		w->bad_record = 2;
		msgpack_pack_nil(&w->pk);
	}
}

/* Compress the packed record; rotate shards and close frames on budget. */
static int emit_record(ft_writer *w)
{
	if (w->rec.n > FT_STREAM_MAX_RECORD)
		return ft_fail("record %llu: %zu bytes is over the %llu-byte record limit",
			       (unsigned long long)w->total_records, w->rec.n,
			       (unsigned long long)FT_STREAM_MAX_RECORD);
	if (w->rotate_pending) {
		if (shard_finish(w) < 0 || shard_start(w) < 0) return fail_writer(w);
	}
	if (compress(w, w->rec.p, w->rec.n, ZSTD_e_continue) < 0) return fail_writer(w);
	w->frame_in += w->rec.n;
	w->shard_nrec++;
	w->total_records++;
	if (w->frame_in >= w->frame_bytes) {
		if (compress(w, NULL, 0, ZSTD_e_end) < 0) return fail_writer(w);
		w->frame_in = 0;
	}
	if ((w->shard_records && w->shard_nrec >= w->shard_records) ||
	    (w->shard_bytes && w->out_bytes >= w->shard_bytes))
		w->rotate_pending = w->dir != NULL;
	return 0;
}

int ft_w_end(ft_writer *w)
{
	int64_t left = w->fields_left;
	int bad = w->bad_record;
	w->fields_left = -1;
	w->bad_record = 0;
	if (w->failed || w->finished)
		return ft_fail("stream writer: %s", w->failed ? "an earlier write failed" : "already closed");
	if (bad == 2) return -1;   /* ftp_pack_json's message */
	if (bad || left != 0)
		return ft_fail("stream writer: record %llu: field count does not match ft_w_begin()",
			       (unsigned long long)w->total_records);
	return emit_record(w);
}

int ft_writer_put_json(ft_writer *w, const json_t *rec)
{
	if (w->failed || w->finished)
		return ft_fail("stream writer: %s", w->failed ? "an earlier write failed" : "already closed");
	if (!json_is_object(rec)) return ft_fail("record is not a JSON object");
	/* A header among the records (JSON of concatenated streams): the
	 * reader would skip it if compatible, so do that now, or refuse it
	 * now rather than write a stream no reader accepts. */
	const json_t *f = json_object_get(rec, "format");
	if (json_is_string(f) && !strcmp(json_string_value(f), FT_STREAM_FORMAT)) {
		if (ft_headers_compatible(w->header, rec)) return 0;
		char *why = ftp_header_difference(w->header, rec);
		ft_fail("a header record that does not match the first header (%s)", why);
		free(why);
		return -1;
	}
	w->rec.n = 0;
	if (ftp_pack_json(&w->pk, rec, 0) < 0) return -1;
	return emit_record(w);
}

