/* sha256.h - SHA-256 (FIPS 180-4) for shard checksums and identities.
 *
 *   uint8_t d[32]; char hex[65];
 *   ft_sha256(buf, n, d); ft_hex(d, 32, hex);
 * or streaming: ft_sha256_init / _update ... / _final.
 */
#ifndef FT_SHA256_H
#define FT_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	uint32_t h[8];
	uint64_t len;        /* bytes hashed so far */
	uint8_t buf[64];
	size_t nbuf;
} ft_sha256_ctx;

void ft_sha256_init(ft_sha256_ctx *c);
void ft_sha256_update(ft_sha256_ctx *c, const void *data, size_t n);
void ft_sha256_final(ft_sha256_ctx *c, uint8_t out[32]);
void ft_sha256(const void *data, size_t n, uint8_t out[32]);

/* Lower-case hex of n bytes into out[2n+1] (NUL-terminated); returns out. */
char *ft_hex(const uint8_t *bytes, size_t n, char *out);
/* ft_sha256 + ft_hex: out[65]. */
char *ft_sha256_hex(const void *data, size_t n, char out[65]);
/* sha256 hex of a whole file: 0, or -1 with a message. */
int ft_sha256_file(const char *path, char out[65]);

#endif
