/* sbuf.c - growable strings (see sbuf.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/sbuf.h"

void ft_sbuf_addn(ft_sbuf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		while (cap < b->n + n + 1) cap *= 2;
		b->s = ft_xrealloc(b->s, cap);
		b->cap = cap;
	}
	if (n) memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = 0;
}

void ft_sbuf_add(ft_sbuf *b, const char *s) { ft_sbuf_addn(b, s, strlen(s)); }

void ft_sbuf_addc(ft_sbuf *b, char c) { ft_sbuf_addn(b, &c, 1); }

void ft_sbuf_printf(ft_sbuf *b, const char *fmt, ...)
{
	va_list ap;
	char tmp[256];
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		ft_sbuf_addn(b, tmp, (size_t)n);
		return;
	}
	char *big = ft_xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	ft_sbuf_addn(b, big, (size_t)n);
	free(big);
}

char *ft_sbuf_take(ft_sbuf *b)
{
	char *s = b->s ? b->s : ft_xstrdup("");
	b->s = NULL;
	b->n = b->cap = 0;
	return s;
}

char *ft_str_replace(const char *s, const char *from, const char *to, int all)
{
	ft_sbuf b = { 0 };
	size_t fl = strlen(from);
	const char *p = s, *q;
	if (!fl) return ft_xstrdup(s);
	while ((q = strstr(p, from))) {
		ft_sbuf_addn(&b, p, (size_t)(q - p));
		ft_sbuf_add(&b, to);
		p = q + fl;
		if (!all) break;
	}
	ft_sbuf_add(&b, p);
	return ft_sbuf_take(&b);
}

void ft_bytes_fmt(double b, char *out, size_t cap)
{
	static const char *const unit[] = { "bytes", "KB", "MB", "GB", "TB", "PB" };
	int u = 0;
	while (b >= 1000 && u < 5) b /= 1000, u++;
	snprintf(out, cap, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
}
