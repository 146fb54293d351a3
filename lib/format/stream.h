/* stream.h - ft record streams: zstd-compressed msgpack records.
 *
 * A stream is one or more zstd frames (with checksums) holding back-to-back
 * msgpack maps.  The first record is a header:
 *   {"format": "ft-stream", "version": 1, "kind": "...", "producer": "...",
 *    "meta": {...}}
 * Every later record is a data record of that kind.  Readers accept
 * concatenated streams (a repeated compatible header is skipped), skippable
 * frames, and directories of shards (*.zst, read in name order).  See
 * docs/FORMAT.md for every kind and field.
 *
 * This module (stream.c, stream_write.c, stream_codec.c) is the only caller of zstd and
 * msgpack in the project.  Readers are never given a wrong record: each
 * zstd frame's checksum is verified before its records are returned, and
 * lengths are bounded before anything is allocated.
 */
#ifndef FT_STREAM_H
#define FT_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>
#include "util/vec.h"

#define FT_STREAM_FORMAT  "ft-stream"
#define FT_STREAM_VERSION 1
/* One record's packed size is at most this; longer lengths read as corrupt. */
#define FT_STREAM_MAX_RECORD ((uint64_t)1 << 30)

/* ---- writing ------------------------------------------------------- */

typedef struct ft_writer ft_writer;

typedef struct {
	const char *path;        /* file, or "-"/NULL for stdout (when dir is NULL) */
	const char *dir;         /* shard directory: shard-00000.<suffix> ... */
	const char *suffix;      /* shard file suffix, default "ftb.zst" */
	uint64_t shard_bytes;    /* new shard once one holds this many compressed
				    bytes, checked after each record (0: never) */
	uint64_t shard_records;  /* new shard after this many records (0: never);
				    rotation needs dir */
	int level;               /* zstd level, 0 = default (3) */
	uint64_t frame_bytes;    /* close a zstd frame after this many uncompressed
				    bytes (0: 1 MiB); readers buffer about one frame */
	int replace;             /* dir may hold shards already: replace them
				    (stale higher-numbered ones are removed) */
} ft_writer_opts;

/* `header` is a JSON object with at least "kind" and "producer" (and
 * "meta"); the writer adds "format" and "version" and repeats the header
 * at the start of every shard.  Files are written under a temporary name
 * and renamed by ft_writer_close(). */
ft_writer *ft_writer_open(const ft_writer_opts *opts, const json_t *header);
/* Finish the last frame and rename outputs into place: -1 on error.
 * Frees the writer (also on error, removing temporaries). */
int ft_writer_close(ft_writer *w);
/* The same, but keeps the writer so the shard list below can be read
 * for a manifest; then ft_writer_close() only frees it. */
int ft_writer_finish(ft_writer *w);
/* Data records written so far (headers not counted). */
uint64_t ft_writer_records(const ft_writer *w);
/* Remove temporaries and free: for error paths. */
void ft_writer_abort(ft_writer *w);
/* Shards completed so far (for manifests): the final file names ("-" for
 * stdout), data records in each and the sha256 of each file's bytes. */
size_t ft_writer_nshards(const ft_writer *w);
const char *ft_writer_shard_path(const ft_writer *w, size_t i);
uint64_t ft_writer_shard_records(const ft_writer *w, size_t i);
const char *ft_writer_shard_sha256(const ft_writer *w, size_t i);

/* Build one record: begin with the number of fields, then exactly that
 * many field calls, then end.  Errors are reported by ft_w_end(). */
void ft_w_begin(ft_writer *w, uint32_t nfields);
void ft_w_int(ft_writer *w, const char *key, int64_t v);
void ft_w_float(ft_writer *w, const char *key, double v);
void ft_w_bool(ft_writer *w, const char *key, int v);
void ft_w_nil(ft_writer *w, const char *key);
void ft_w_str(ft_writer *w, const char *key, const char *s);
void ft_w_strn(ft_writer *w, const char *key, const char *s, size_t n);
void ft_w_i32s(ft_writer *w, const char *key, const int32_t *v, size_t n);
void ft_w_f32s(ft_writer *w, const char *key, const float *v, size_t n);
void ft_w_json(ft_writer *w, const char *key, const json_t *v);
int ft_w_end(ft_writer *w);
/* A whole record from a JSON object (ft-cat --encode).  A header object
 * among the records is dropped when compatible, refused otherwise. */
int ft_writer_put_json(ft_writer *w, const json_t *rec);

/* ---- reading ------------------------------------------------------- */

typedef struct ft_reader ft_reader;
typedef struct ft_rec ft_rec;   /* valid until the next ft_reader_next() */

/* Open a file, "-" for stdin, or a directory of shards; several paths are
 * read in order as one stream (none: stdin).  The header is read at open:
 * a file that does not start with one is "not an ft stream".  A directory
 * with a manifest.json (ft-pack) must hold exactly the shards it lists,
 * and each shard's sha256, computed while it is read, is checked against
 * the manifest when the shard ends: a swapped shard is an error. */
ft_reader *ft_reader_open(const char *path);
ft_reader *ft_reader_open_many(const char *const *paths, size_t n);
void ft_reader_close(ft_reader *r);
/* The header object (format, version, kind, producer, meta). */
const json_t *ft_reader_header(const ft_reader *r);
const char *ft_reader_kind(const ft_reader *r);
/* 1: a record; 0: end of input; -1: error naming the file, the record
 * index and the byte offset (truncation, corruption, mixed headers). */
int ft_reader_next(ft_reader *r, ft_rec **rec);
/* For a reader that stops after the records it expects (ft-train reads
 * the manifest's count): read on to the end, so that a last frame cut
 * short (its checksum missing) or a wrong sha256 is still an error.
 * 0 at a clean end; -1 on such an error or when more records follow. */
int ft_reader_expect_end(ft_reader *r);
/* Index of the last record returned (0-based, headers not counted) and
 * the file it came from. */
uint64_t ft_reader_index(const ft_reader *r);
const char *ft_reader_path(const ft_reader *r);

/* Field access.  Each returns 0, or -1 with a message naming the key when
 * the field is missing or has the wrong type. */
int ft_rec_has(const ft_rec *rec, const char *key);
int ft_rec_int(const ft_rec *rec, const char *key, int64_t *out);
int ft_rec_float(const ft_rec *rec, const char *key, double *out);
int ft_rec_bool(const ft_rec *rec, const char *key, int *out);
/* Pointer into the record (not NUL-terminated). */
int ft_rec_str(const ft_rec *rec, const char *key, const char **s, size_t *len);
/* Appends to `out` after clearing it. */
int ft_rec_i32s(const ft_rec *rec, const char *key, ft_i32vec *out);
int ft_rec_f32s(const ft_rec *rec, const char *key, ft_f32vec *out);
/* Any field, or the whole record, as JSON (new reference). */
json_t *ft_rec_get_json(const ft_rec *rec, const char *key);
json_t *ft_rec_to_json(const ft_rec *rec);

/* One compact JSON line per record (ft-cat): integers stay integers,
 * floats print in the shortest form that reads back bit-identical (always
 * with '.' or an exponent), NaN/Inf become null, invalid UTF-8 U+FFFD.
 * -1 on a write error or a value JSON cannot hold. */
int ft_rec_write_json(const ft_rec *rec, FILE *fp);
int ft_reader_write_header_json(const ft_reader *r, FILE *fp);

/* Headers are compatible when kind, version and meta are equal, ignoring
 * meta.counts and producer. */
int ft_headers_compatible(const json_t *a, const json_t *b);

#endif
