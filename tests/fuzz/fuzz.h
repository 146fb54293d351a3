/* fuzz.h - what every fuzz target shares: the parsers take file names, so
 * each input is written to a file with the suffix the parser looks at
 * (tokenizer.json vs tokenizer.model, .yaml) in a private directory.
 * Build and run: make fuzz (docs/RELIABILITY.md). */
#ifndef FT_FUZZ_H
#define FT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/error.h"

/* The path of a file holding data[0..n), named `name` (same each call). */
static const char *fuzz_file(const char *name, const uint8_t *data, size_t n)
{
	static char dir[64], path[128];
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/ft-fuzz-XXXXXX");
		if (!mkdtemp(dir)) abort();
	}
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) abort();
	ft_errclear();
	return path;
}

#endif
