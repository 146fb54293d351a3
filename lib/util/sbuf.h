/* sbuf.h - a growable NUL-terminated string, for code that builds text
 * piece by piece (templates, dataset rendering, tool-call formats).
 *
 *   ft_sbuf b = { 0 };
 *   ft_sbuf_add(&b, "role: "); ft_sbuf_printf(&b, "%d", n);
 *   char *s = ft_sbuf_take(&b);      // caller frees; b is empty again
 *
 * Allocation failure aborts through ft_xrealloc (util/error.h). */
#ifndef FT_SBUF_H
#define FT_SBUF_H

#include <stddef.h>
#include "util/error.h"

typedef struct { char *s; size_t n, cap; } ft_sbuf;

void ft_sbuf_addn(ft_sbuf *b, const char *s, size_t n);
void ft_sbuf_add(ft_sbuf *b, const char *s);
void ft_sbuf_addc(ft_sbuf *b, char c);
void ft_sbuf_printf(ft_sbuf *b, const char *fmt, ...) FT_PRINTF(2, 3);
/* The string (never NULL); the buffer is reset. */
char *ft_sbuf_take(ft_sbuf *b);

/* s with the first occurrence of `from` replaced by `to` (Python's
 * str.replace(from, to, 1)); all occurrences when all != 0. */
/* A byte count in the unit that fits (powers of 1000, as --export_size):
 * "3.15 MB", "0 bytes". */
void ft_bytes_fmt(double bytes, char *out, size_t cap);
char *ft_str_replace(const char *s, const char *from, const char *to, int all);

#endif
