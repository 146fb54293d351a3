/* error.h - how the library reports failure.
 *
 * The library never prints or exits (only the allocation wrappers abort).
 * A failing function records a message with ft_fail() and returns -1 (or
 * NULL); the tool shows ft_errmsg() with the words and exit status it
 * chooses.  The message is per thread, so worker threads can fail safely.
 */
#ifndef FT_ERROR_H
#define FT_ERROR_H

#include <stddef.h>

#define FT_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Record a message and return -1.  A format ending in ':' appends
 * ": strerror(errno)", as err(3) does. */
int ft_fail(const char *fmt, ...) FT_PRINTF(1, 2);

/* Put context in front of the current message ("model.json: " + msg)
 * and return -1, so callers can say where a lower-level error happened. */
int ft_fail_ctx(const char *fmt, ...) FT_PRINTF(1, 2);

const char *ft_errmsg(void);
void ft_errclear(void);

/* Allocation that cannot fail: out of memory aborts with a message. */
void *ft_xmalloc(size_t n);
void *ft_xcalloc(size_t n, size_t size);
void *ft_xrealloc(void *p, size_t n);
char *ft_xstrdup(const char *s);
char *ft_xasprintf(const char *fmt, ...) FT_PRINTF(1, 2);

#endif
