/* stream_internal.h - shared by stream.c, stream_write.c and stream_codec.c only (the
 * stream module; nothing else includes msgpack.h). */
#ifndef FT_STREAM_INTERNAL_H
#define FT_STREAM_INTERNAL_H

#include <msgpack.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

struct ft_rec {
	msgpack_object obj;   /* a map */
};

/* Growable byte buffer, usable as a msgpack_packer target. */
typedef struct {
	char *p;
	size_t n, cap;
} ftp_buf;
int ftp_buf_write(void *data, const char *s, size_t n);

void ftp_pack_str(msgpack_packer *pk, const char *s, size_t n);
void ftp_pack_key(msgpack_packer *pk, const char *key);
/* Any JSON value at nesting `depth` (0: a whole record, 1: a field);
 * -1 with a message when nested deeper than ftp_scan accepts. */
int ftp_pack_json(msgpack_packer *pk, const json_t *v, int depth);

/* Map lookup by string key; NULL when absent or not a map. */
const msgpack_object *ftp_mp_get(const msgpack_object *map, const char *key);
/* New reference, or NULL with a message. */
json_t *ftp_mp_to_json(const msgpack_object *o);
/* One compact JSON line; -1 on a value JSON cannot hold or write error. */
int ftp_mp_write_json_line(const msgpack_object *o, FILE *fp);

/* Which header field differs ("kind", "meta.vocab_size", ...): malloc'd. */
char *ftp_header_difference(const json_t *a, const json_t *b);

/* Record framing: walks decompressed bytes before the unpacker sees them,
 * counting complete records and rejecting what would make the unpacker
 * allocate without bound. */
#define FT_SCAN_MAX_DEPTH 32    /* msgpack-c's MSGPACK_EMBED_STACK_SIZE */
typedef struct {
	uint64_t left[FT_SCAN_MAX_DEPTH];  /* items left in each open container */
	int depth;
	uint8_t hdr[9];
	unsigned hlen, hneed;
	uint64_t skip;        /* payload bytes still to pass over */
	uint64_t pos;         /* bytes scanned */
	uint64_t rec_start;   /* offset where the current record began */
	uint64_t ready;       /* complete records seen */
	int active;           /* inside a record */
	const char *err;
} ftp_scanner;
/* 0, or -1 with s->err set (and s->rec_start naming the record). */
int ftp_scan(ftp_scanner *s, const uint8_t *p, size_t n);

#endif
