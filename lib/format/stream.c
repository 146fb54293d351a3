/* stream.c - reading ft record streams: zstd frames holding msgpack maps.
 *
 * zstd output goes straight into the msgpack unpacker's buffer.  A small
 * scanner (ftp_scan, in stream_codec.c) walks those bytes first to find
 * record boundaries and bound lengths, because msgpack_unpacker allocates
 * an array of N objects as soon as it sees an array header claiming N
 * elements: corrupt input must not reach it.  Records are handed out only
 * once the zstd frame that holds them has passed its checksum, so a
 * corrupt frame yields an error, never wrong records.  See docs/FORMAT.md
 * section 1.  Writing is in stream_write.c, msgpack <-> JSON in
 * stream_codec.c.
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

/* Records in a frame are released unverified once this much of the frame
 * is buffered (only frames from other writers get this big). */
#define UNVERIFIED_MAX       ((uint64_t)64 << 20)

/* ==== reader ========================================================= */

struct ft_reader {
	char **paths;              /* files in reading order ("-" is stdin) */
	char **expect;             /* per file: manifest.json's sha256, or NULL */
	size_t npaths, ipath;
	ft_sha256_ctx sha;         /* of the open file's bytes, while read */
	int fd;                    /* -1: no file open */
	const char *name;          /* display name of the open file */

	ZSTD_DCtx *dctx;
	uint8_t *inbuf;
	size_t in_cap;
	ZSTD_inBuffer in;
	size_t zret;               /* last ZSTD_decompressStream() result */
	int out_full;              /* zstd may hold more output */
	int eof;                   /* read() returned 0 */
	uint64_t file_off;         /* compressed bytes of this file consumed */
	uint64_t frame_dec;        /* decompressed bytes of the open frame */

	msgpack_unpacker mp;
	int mp_init;
	ftp_scanner sc;
	uint64_t verified;         /* records (of sc.ready) that may be unpacked */
	uint64_t taken;            /* records unpacked from this file */

	msgpack_unpacked cur;      /* the record last returned */
	msgpack_unpacked hdr_raw;  /* the first header */
	json_t *header;
	ft_rec rec;
	uint64_t returned;         /* data records returned */
	int failed;
};

static int reader_fail(ft_reader *r, const char *fmt, ...) FT_PRINTF(2, 3);
static int reader_fail(ft_reader *r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	r->failed = 1;
	return ft_fail("%s: byte %llu, record %llu: %s", r->name,
		       (unsigned long long)r->file_off, (unsigned long long)r->returned, msg);
}

/* Input that is not a stream at all: no offsets to report. */
static int not_stream(ft_reader *r, const char *why)
{
	r->failed = 1;
	return ft_fail("%s: not an ft stream (%s)", r->name, why);
}

/* ---- manifest.json: the sha256 of every shard of a directory ---------- */

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

/* A directory written by ft-pack lists its shards with their sha256:
 * every *.zst found must be listed, every listed one present, and each
 * file's hash (computed while it is read) is checked at its end.  The
 * hashes are those of names[0..n) in `expect`. */
static int manifest_hashes(const char *dir, char **names, size_t n, char **expect)
{
	char *mpath = ft_xasprintf("%s/manifest.json", dir);
	struct stat st;
	int rc = 0;
	if (stat(mpath, &st) != 0) goto done;   /* not an ft-pack directory */
	json_t *man = ft_json_load_file(mpath);
	if (!man) { rc = -1; goto done; }
	json_t *shards = json_object_get(man, "shards");
	size_t i, k;
	json_t *e;
	if (!json_is_array(shards)) {
		rc = ft_fail("%s: no \"shards\" list", mpath);
		goto free_man;
	}
	json_array_foreach(shards, k, e) {
		const char *f = ft_json_str(e, "file", NULL), *h = ft_json_str(e, "sha256", NULL);
		if (!f || !h || strlen(h) != 64) {
			rc = ft_fail("%s: shard %zu has no \"file\" and 64-digit \"sha256\"", mpath, k);
			goto free_man;
		}
		for (i = 0; i < n && strcmp(base_name(names[i]), f); i++) {}
		if (i == n) {
			rc = ft_fail("%s/%s: listed in %s but missing (an incomplete copy?)", dir, f, mpath);
			goto free_man;
		}
		free(expect[i]);
		expect[i] = ft_xstrdup(h);
	}
	for (i = 0; i < n; i++)
		if (!expect[i]) {
			rc = ft_fail("%s: not listed in %s (a stray shard from another run: remove it, "
				     "or pack again)", names[i], mpath);
			goto free_man;
		}
free_man:
	json_decref(man);
done:
	free(mpath);
	return rc;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory stands for its *.zst files in name order. */
static int add_path(ft_reader *r, const char *path, size_t *cap)
{
	struct stat st;
	char **names = NULL;
	size_t n = 0;
	if (strcmp(path, "-") && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		if (!d) return ft_fail("%s:", path);
		struct dirent *e;
		size_t ncap = 0;
		while ((e = readdir(d))) {
			size_t len = strlen(e->d_name);
			if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".zst")) continue;
			if (n == ncap) names = ft_xrealloc(names, (ncap = ncap ? 2 * ncap : 16) * sizeof *names);
			names[n++] = ft_xasprintf("%s/%s", path, e->d_name);
		}
		closedir(d);
		if (n == 0) return ft_fail("%s: no stream shards (*.zst) in this directory", path);
		qsort(names, n, sizeof *names, cmp_str);
	} else {
		names = ft_xmalloc(sizeof *names);
		names[n++] = ft_xstrdup(path);
	}
	char **expect = ft_xcalloc(n, sizeof *expect);
	int rc = n > 1 || strcmp(names[0], path) ? manifest_hashes(path, names, n, expect) : 0;
	for (size_t i = 0; i < n; i++) {
		if (r->npaths == *cap) {
			*cap = *cap ? 2 * *cap : 8;
			r->paths = ft_xrealloc(r->paths, *cap * sizeof *r->paths);
			r->expect = ft_xrealloc(r->expect, *cap * sizeof *r->expect);
		}
		r->expect[r->npaths] = expect[i];
		r->paths[r->npaths++] = names[i];
	}
	free(names);
	free(expect);
	return rc;
}

/* At the end of a file: its bytes against manifest.json's sha256. */
static int check_file_hash(ft_reader *r)
{
	const char *want = r->expect[r->ipath];
	if (!want) return 0;
	uint8_t d[32];
	char hex[65];
	ft_sha256_final(&r->sha, d);
	ft_hex(d, 32, hex);
	if (strcmp(hex, want) == 0) return 0;
	r->failed = 1;
	return ft_fail("%s: sha256 %.12s... differs from manifest.json's %.12s... (the shard was "
		       "changed or replaced after ft-pack wrote it)", r->name, hex, want);
}

static void close_file(ft_reader *r)
{
	if (r->fd > 0) close(r->fd);   /* never stdin */
	r->fd = -1;
}

static int open_file(ft_reader *r)
{
	const char *p = r->paths[r->ipath];
	int is_stdin = !strcmp(p, "-");
	r->name = is_stdin ? "<stdin>" : p;
	r->fd = is_stdin ? 0 : open(p, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) return r->failed = 1, ft_fail("%s:", p);
	ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
	r->in.src = r->inbuf;
	r->in.size = r->in.pos = 0;
	r->zret = 0;
	r->out_full = r->eof = 0;
	r->file_off = r->frame_dec = 0;
	ft_sha256_init(&r->sha);
	if (r->mp_init) msgpack_unpacker_destroy(&r->mp);
	if (!msgpack_unpacker_init(&r->mp, MSGPACK_UNPACKER_INIT_BUFFER_SIZE))
		return r->failed = 1, ft_fail("out of memory");
	r->mp_init = 1;
	memset(&r->sc, 0, sizeof r->sc);
	r->verified = r->taken = 0;
	return 0;
}

/* Decompress one step (reading more input when zstd wants it).
 * 1: progress, 0: end of this file, -1: error. */
static int pump(ft_reader *r)
{
	if (r->in.pos == r->in.size && !r->out_full) {
		if (r->eof) return 0;
		ssize_t n;
		do n = read(r->fd, r->inbuf, r->in_cap);
		while (n < 0 && errno == EINTR);
		if (n < 0) return reader_fail(r, "read error: %s", strerror(errno));
		if (n == 0) {
			r->eof = 1;
			return check_file_hash(r);
		}
		if (r->expect[r->ipath]) ft_sha256_update(&r->sha, r->inbuf, (size_t)n);
		r->in.size = (size_t)n;
		r->in.pos = 0;
	}
	/* Ask for at least as much room as the unparsed bytes held (up to a
	 * frame awaiting its checksum): msgpack-c copies those bytes into a
	 * new buffer whenever it grows, so growth must be geometric. */
	size_t want = ZSTD_DStreamOutSize(), held = r->mp.used - r->mp.off;
	if (want < held) want = held;
	if (!msgpack_unpacker_reserve_buffer(&r->mp, want))
		return reader_fail(r, "out of memory");
	ZSTD_outBuffer out = {msgpack_unpacker_buffer(&r->mp), msgpack_unpacker_buffer_capacity(&r->mp), 0};
	size_t before = r->in.pos;
	size_t ret = ZSTD_decompressStream(r->dctx, &out, &r->in);
	r->file_off += r->in.pos - before;
	if (ZSTD_isError(ret)) {
		if (r->file_off < 4 && r->taken == 0 && r->sc.ready == 0)
			return not_stream(r, "not zstd data");
		return reader_fail(r, "corrupt zstd data: %s", ZSTD_getErrorName(ret));
	}
	if (ftp_scan(&r->sc, out.dst, out.pos) < 0)
		return reader_fail(r, "corrupt record at decompressed offset %llu: %s",
				   (unsigned long long)r->sc.rec_start, r->sc.err);
	msgpack_unpacker_buffer_consumed(&r->mp, out.pos);
	r->out_full = out.pos == out.size;
	r->zret = ret;
	r->frame_dec += out.pos;
	if (ret == 0) {
		/* frame complete and its checksum verified */
		r->verified = r->sc.ready;
		r->frame_dec = 0;
	} else if (r->frame_dec > UNVERIFIED_MAX) {
		r->verified = r->sc.ready;
	}
	return 1;
}

static int is_header(const msgpack_object *o)
{
	const msgpack_object *f = ftp_mp_get(o, "format");
	return f && f->type == MSGPACK_OBJECT_STR && f->via.str.size == strlen(FT_STREAM_FORMAT) &&
	       !memcmp(f->via.str.ptr, FT_STREAM_FORMAT, f->via.str.size);
}

/* Check a header record and, for the first, keep it. */
static int take_header(ft_reader *r)
{
	json_t *h = ftp_mp_to_json(&r->cur.data);
	if (!h) return reader_fail(r, "bad header: %s", ft_errmsg());
	json_t *v = json_object_get(h, "version");
	json_t *kind = json_object_get(h, "kind");
	int rc = 0;
	if (!json_is_integer(v) || json_integer_value(v) < 1)
		rc = reader_fail(r, "bad header: \"version\" is not a positive integer");
	else if (json_integer_value(v) > FT_STREAM_VERSION)
		rc = reader_fail(r, "stream format version %lld is newer than this program reads (%d)",
				 (long long)json_integer_value(v), FT_STREAM_VERSION);
	else if (!json_is_string(kind) || !json_string_length(kind))
		rc = reader_fail(r, "bad header: \"kind\" is not a non-empty string");
	else if (json_object_get(h, "meta") && !json_is_object(json_object_get(h, "meta")))
		rc = reader_fail(r, "bad header: \"meta\" is not an object");
	else if (!r->header) {
		r->header = h;
		r->hdr_raw = r->cur;
		msgpack_unpacked_init(&r->cur);
		return 0;
	} else if (!ft_headers_compatible(r->header, h)) {
		char *why = ftp_header_difference(r->header, h);
		rc = reader_fail(r, "header does not match the first input's header (%s)", why);
		free(why);
	}
	json_decref(h);
	return rc;
}

/* Next raw record of the open file: 1, 0 at its end, -1 error. */
static int file_next(ft_reader *r)
{
	for (;;) {
		if (r->taken < r->verified) {
			msgpack_unpack_return ret = msgpack_unpacker_next(&r->mp, &r->cur);
			if (ret != MSGPACK_UNPACK_SUCCESS)
				return reader_fail(r, "corrupt record (msgpack error %d)", (int)ret);
			r->taken++;
			return 1;
		}
		int p = pump(r);
		if (p < 0) return -1;
		if (p > 0) continue;
		/* End of input.  Cut inside a frame: what decoded is intact so
		 * far, so hand it out before reporting the truncation. */
		if (r->zret != 0 && r->verified < r->sc.ready) {
			r->verified = r->sc.ready;
			continue;
		}
		if (r->zret != 0)
			return reader_fail(r, "truncated stream (input ends inside a zstd frame)");
		if (r->sc.active || msgpack_unpacker_message_size(&r->mp) != 0)
			return reader_fail(r, "truncated stream (input ends inside a record)");
		return 0;
	}
}

/* Next data record across files, skipping repeated headers. */
static int reader_advance(ft_reader *r)
{
	for (;;) {
		if (r->fd < 0) {
			if (r->ipath == r->npaths) return 0;
			if (open_file(r) < 0) return -1;
		}
		uint64_t before = r->taken;
		int rc = file_next(r);
		if (rc < 0) return -1;
		if (rc == 0) {
			if (r->taken == 0) return not_stream(r, "empty input, no header");
			close_file(r);
			r->ipath++;
			continue;
		}
		if (is_header(&r->cur.data)) {
			if (take_header(r) < 0) return -1;
			continue;
		}
		if (before == 0) return not_stream(r, "the first record is not a header");
		return 1;
	}
}

ft_reader *ft_reader_open_many(const char *const *paths, size_t n)
{
	static const char *const stdin_only[] = {"-"};
	if (n == 0) {
		paths = stdin_only;
		n = 1;
	}
	ft_reader *r = ft_xcalloc(1, sizeof *r);
	r->fd = -1;
	msgpack_unpacked_init(&r->cur);
	msgpack_unpacked_init(&r->hdr_raw);
	size_t cap = 0;
	for (size_t i = 0; i < n; i++)
		if (add_path(r, paths[i], &cap) < 0) goto fail;
	r->dctx = ZSTD_createDCtx();
	if (!r->dctx) {
		ft_fail("zstd: cannot create a decompression context");
		goto fail;
	}
	r->in_cap = ZSTD_DStreamInSize();
	r->inbuf = ft_xmalloc(r->in_cap);
	/* Read up to the first header; a data record found on the way is
	 * an error (reader_advance checks each file starts with a header). */
	if (open_file(r) < 0) goto fail;
	int rc = file_next(r);
	if (rc == 0) {
		not_stream(r, "empty input, no header");
		goto fail;
	}
	if (rc < 0) goto fail;
	if (!is_header(&r->cur.data)) {
		not_stream(r, "the first record is not a header");
		goto fail;
	}
	if (take_header(r) < 0) goto fail;
	return r;
fail:
	ft_reader_close(r);
	return NULL;
}

ft_reader *ft_reader_open(const char *path)
{
	return ft_reader_open_many(&path, 1);
}

void ft_reader_close(ft_reader *r)
{
	if (!r) return;
	close_file(r);
	for (size_t i = 0; i < r->npaths; i++) {
		free(r->paths[i]);
		free(r->expect[i]);
	}
	free(r->paths);
	free(r->expect);
	if (r->mp_init) msgpack_unpacker_destroy(&r->mp);
	msgpack_unpacked_destroy(&r->cur);
	msgpack_unpacked_destroy(&r->hdr_raw);
	json_decref(r->header);
	ZSTD_freeDCtx(r->dctx);
	free(r->inbuf);
	free(r);
}

const json_t *ft_reader_header(const ft_reader *r) { return r->header; }

const char *ft_reader_kind(const ft_reader *r)
{
	return json_string_value(json_object_get(r->header, "kind"));
}

int ft_reader_next(ft_reader *r, ft_rec **rec)
{
	*rec = NULL;
	if (r->failed) return ft_fail("stream reader: used after an error");
	int rc = reader_advance(r);
	if (rc <= 0) return rc;
	r->returned++;
	r->rec.obj = r->cur.data;
	*rec = &r->rec;
	return 1;
}

int ft_reader_expect_end(ft_reader *r)
{
	if (r->failed) return ft_fail("stream reader: used after an error");
	int rc = reader_advance(r);
	if (rc < 0) return -1;
	if (rc > 0)
		return ft_fail("%s: record %llu: more records than expected (%llu)", ft_reader_path(r),
			       (unsigned long long)r->returned, (unsigned long long)r->returned);
	return 0;
}

uint64_t ft_reader_index(const ft_reader *r) { return r->returned ? r->returned - 1 : 0; }

const char *ft_reader_path(const ft_reader *r)
{
	return r->name ? r->name : "<stdin>";
}

int ft_reader_write_header_json(const ft_reader *r, FILE *fp)
{
	return ftp_mp_write_json_line(&r->hdr_raw.data, fp);
}

int ft_rec_write_json(const ft_rec *rec, FILE *fp)
{
	return ftp_mp_write_json_line(&rec->obj, fp);
}


