/* error.c - per-thread error message; see error.h */
#define _GNU_SOURCE
#include "util/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char errbuf[1024];

static void format_into(char *dst, size_t cap, const char *fmt, va_list ap)
{
	int saved = errno;
	vsnprintf(dst, cap, fmt, ap);
	size_t n = strlen(fmt);
	if (n > 0 && fmt[n - 1] == ':') {
		size_t len = strlen(dst);
		snprintf(dst + len, cap - len, " %s", strerror(saved));
	}
}

int ft_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	format_into(errbuf, sizeof errbuf, fmt, ap);
	va_end(ap);
	return -1;
}

int ft_fail_ctx(const char *fmt, ...)
{
	char prefix[512], old[sizeof errbuf];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, errbuf, sizeof old);
	size_t n = strlen(prefix);
	if (n >= sizeof errbuf) n = sizeof errbuf - 1;
	memcpy(errbuf, prefix, n);
	size_t rest = strnlen(old, sizeof old - 1);
	if (rest > sizeof errbuf - 1 - n) rest = sizeof errbuf - 1 - n;
	memcpy(errbuf + n, old, rest);
	errbuf[n + rest] = 0;
	return -1;
}

/* Always the buffer itself, so a pointer taken before the failing call
 * (an argument evaluated first) still shows the message it then holds. */
const char *ft_errmsg(void)
{
	if (!errbuf[0]) snprintf(errbuf, sizeof errbuf, "unknown error");
	return errbuf;
}

void ft_errclear(void)
{
	errbuf[0] = 0;
}

static void *check(void *p, size_t n)
{
	if (!p && n) {
		fprintf(stderr, "ft: out of memory allocating %zu bytes\n", n);
		abort();
	}
	return p;
}

/* The message carries the size asked for (a count times a size may
 * overflow: then the product is reported as the maximum). */
void *ft_xmalloc(size_t n) { return check(malloc(n ? n : 1), n ? n : 1); }
void *ft_xcalloc(size_t n, size_t size)
{
	size_t total = size && n > SIZE_MAX / size ? SIZE_MAX : n * size;
	return check(calloc(n ? n : 1, size ? size : 1), total ? total : 1);
}
void *ft_xrealloc(void *p, size_t n) { return check(realloc(p, n ? n : 1), n ? n : 1); }
char *ft_xstrdup(const char *s) { return check(strdup(s), strlen(s) + 1); }

char *ft_xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return check(n < 0 ? NULL : s, 1);
}
