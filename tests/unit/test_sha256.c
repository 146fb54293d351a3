/* test_sha256.c - FIPS 180-4 test vectors, streaming in odd pieces, files */
#include "tap.h"
#include "util/sha256.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hex_is(const void *data, size_t n, const char *want)
{
	char hex[65];
	ft_sha256_hex(data, n, hex);
	return !strcmp(hex, want);
}

int main(void)
{
	ok(hex_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "empty");
	ok(hex_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "abc");
	const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	ok(hex_is(two, strlen(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
	   "448-bit message (two blocks of padding)");
	const char *four = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
	ok(hex_is(four, strlen(four), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
	   "896-bit message");

	/* a million 'a', fed in pieces of every size from 1 to 97 bytes */
	char *a = malloc(1000000);
	memset(a, 'a', 1000000);
	ok(hex_is(a, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "a million 'a'");
	ft_sha256_ctx c;
	ft_sha256_init(&c);
	size_t off = 0, step = 1;
	while (off < 1000000) {
		size_t n = step < 1000000 - off ? step : 1000000 - off;
		ft_sha256_update(&c, a + off, n);
		off += n;
		step = step % 97 + 1;
	}
	uint8_t d[32];
	char hex[65];
	ft_sha256_final(&c, d);
	ok(!strcmp(ft_hex(d, 32, hex), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
	   "streaming in uneven pieces gives the same digest");

	/* lengths around the padding boundary (55, 56, 63, 64, 65) agree between
	 * one-shot and byte-at-a-time */
	int same = 1;
	for (size_t n = 50; n < 130; n++) {
		char one[65], each[65];
		ft_sha256_hex(a, n, one);
		ft_sha256_init(&c);
		for (size_t i = 0; i < n; i++) ft_sha256_update(&c, a + i, 1);
		ft_sha256_final(&c, d);
		ft_hex(d, 32, each);
		same &= !strcmp(one, each);
	}
	ok(same, "lengths 50..129: one-shot equals byte-at-a-time");

	char path[] = "/tmp/ft-test-sha-XXXXXX";
	int fd = mkstemp(path);
	ok(fd >= 0 && write(fd, a, 1000000) == 1000000, "write a file");
	close(fd);
	ok(ft_sha256_file(path, hex) == 0 && !strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
	   "ft_sha256_file");
	unlink(path);
	ok(ft_sha256_file(path, hex) == -1, "a missing file is an error");
	uint8_t bytes[3] = {0x00, 0xab, 0xff};
	ok(!strcmp(ft_hex(bytes, 3, hex), "00abff"), "hex");
	free(a);
	return tap_done();
}
