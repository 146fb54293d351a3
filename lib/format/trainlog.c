/* trainlog.c - trainer_log.jsonl writer and reader; see trainlog.h */
#define _GNU_SOURCE
#include "format/trainlog.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void ft_trainlog_entry_init(ft_trainlog_entry *e)
{
	memset(e, 0, sizeof *e);
	e->current_steps = e->total_steps = e->total_tokens = e->world_size = e->peak_memory_bytes = -1;
	e->loss = e->eval_loss = e->lr = e->epoch = NAN;
	e->percentage = e->throughput = e->grad_norm = NAN;
}

/* ---- parsing ---------------------------------------------------------- */

static int get_int(const json_t *o, const char *key, int64_t *out)
{
	const json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) return 0;
	if (json_is_integer(v)) { *out = json_integer_value(v); return 0; }
	/* Python may write 10.0 for a step count; accept integral reals. */
	if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) {
		*out = (int64_t)json_real_value(v);
		return 0;
	}
	return ft_fail("field '%s' is not an integer", key);
}

static int get_num(const json_t *o, const char *key, double *out)
{
	const json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) return 0;
	if (!json_is_number(v)) return ft_fail("field '%s' is not a number", key);
	*out = json_number_value(v);
	return 0;
}

static int get_str(const json_t *o, const char *key, char *buf, size_t size)
{
	const json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) return 0;
	if (!json_is_string(v)) return ft_fail("field '%s' is not a string", key);
	snprintf(buf, size, "%s", json_string_value(v));
	return 0;
}

static int parse_object(const json_t *o, ft_trainlog_entry *e)
{
	if (!json_is_object(o)) return ft_fail("line is not a JSON object");
	if (get_int(o, "current_steps", &e->current_steps) || get_int(o, "total_steps", &e->total_steps) ||
	    get_num(o, "loss", &e->loss) || get_num(o, "eval_loss", &e->eval_loss) ||
	    get_num(o, "lr", &e->lr) || get_num(o, "epoch", &e->epoch) ||
	    get_num(o, "percentage", &e->percentage) || get_num(o, "throughput", &e->throughput) ||
	    get_num(o, "grad_norm", &e->grad_norm) || get_int(o, "total_tokens", &e->total_tokens) ||
	    get_int(o, "world_size", &e->world_size) ||
	    get_int(o, "peak_memory_bytes", &e->peak_memory_bytes) ||
	    get_str(o, "elapsed_time", e->elapsed_time, sizeof e->elapsed_time) ||
	    get_str(o, "remaining_time", e->remaining_time, sizeof e->remaining_time))
		return -1;
	if (e->current_steps < 0 && e->total_steps < 0 && isnan(e->loss) && isnan(e->eval_loss))
		return ft_fail("no current_steps, total_steps, loss or eval_loss");
	return 0;
}

static void get_fields(const json_t *o, ft_trainlog_field *f, size_t nf)
{
	for (size_t i = 0; i < nf; i++) {
		const json_t *v = json_object_get(o, f[i].key);
		f[i].present = v != NULL;
		f[i].value = json_is_number(v) ? json_number_value(v) : NAN;
	}
}

int ft_trainlog_parse_fields(const char *line, size_t len, ft_trainlog_entry *e,
			     ft_trainlog_field *f, size_t nf)
{
	ft_trainlog_entry_init(e);
	json_error_t err;
	json_t *o = json_loadb(line, len, 0, &err);
	if (!o) return ft_fail("column %d: %s", err.column, err.text);
	int rc = parse_object(o, e);
	if (rc == 0) get_fields(o, f, nf);
	json_decref(o);
	return rc;
}

int ft_trainlog_parse(const char *line, size_t len, ft_trainlog_entry *e)
{
	return ft_trainlog_parse_fields(line, len, e, NULL, 0);
}

/* ---- writing ---------------------------------------------------------- */

/* Shortest digits that read back to the same double, laid out as Python's
 * repr (fixed notation for exponents -4..15, "1e-05" otherwise, ".0" on
 * integral values), so our lines look like LLaMA-Factory's. */
void ft_fmt_double_repr(char *buf, size_t size, double x)
{
	if (!isfinite(x)) {   /* JSON has no NaN: written as null */
		snprintf(buf, size, "null");
		return;
	}
	int p;
	for (p = 1; p < 17; p++) {
		snprintf(buf, size, "%.*e", p - 1, x);
		if (strtod(buf, NULL) == x) break;
	}
	snprintf(buf, size, "%.*e", p - 1, x);
	int exp = atoi(strchr(buf, 'e') + 1);
	if (exp < -4 || exp >= 16) return;
	int decimals = p - 1 - exp;
	snprintf(buf, size, "%.*f", decimals > 0 ? decimals : 0, x);
	if (!strchr(buf, '.')) strncat(buf, ".0", size - strlen(buf) - 1);
}

typedef struct { char *s; size_t n, cap; } sbuf;

static void sb_add(sbuf *b, const char *s)
{
	size_t l = strlen(s);
	if (b->n + l + 1 > b->cap) {
		b->cap = (b->n + l + 1) * 2;
		b->s = ft_xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->n, s, l + 1);
	b->n += l;
}

static void sb_key(sbuf *b, const char *key)
{
	sb_add(b, b->n > 1 ? ", \"" : "\"");
	sb_add(b, key);
	sb_add(b, "\": ");
}

static void sb_num(sbuf *b, const char *key, double x)
{
	if (isnan(x)) return;
	char t[40];
	ft_fmt_double_repr(t, sizeof t, x);
	sb_key(b, key);
	sb_add(b, t);
}

static void sb_int(sbuf *b, const char *key, int64_t x)
{
	if (x < 0) return;
	char t[32];
	snprintf(t, sizeof t, "%lld", (long long)x);
	sb_key(b, key);
	sb_add(b, t);
}

static void sb_str(sbuf *b, const char *key, const char *s)
{
	if (!*s) return;
	sb_key(b, key);
	sb_add(b, "\"");
	sb_add(b, s);   /* timedelta strings: digits, ':', ',', ' ', "day(s)" */
	sb_add(b, "\"");
}

char *ft_trainlog_format(const ft_trainlog_entry *e)
{
	sbuf b = {0};
	sb_add(&b, "{");
	sb_int(&b, "current_steps", e->current_steps);
	sb_int(&b, "total_steps", e->total_steps);
	sb_num(&b, "loss", e->loss);
	sb_num(&b, "eval_loss", e->eval_loss);
	sb_num(&b, "lr", e->lr);
	sb_num(&b, "epoch", e->epoch);
	sb_num(&b, "percentage", e->percentage);
	sb_str(&b, "elapsed_time", e->elapsed_time);
	sb_str(&b, "remaining_time", e->remaining_time);
	sb_num(&b, "throughput", e->throughput);
	sb_int(&b, "total_tokens", e->total_tokens);
	sb_num(&b, "grad_norm", e->grad_norm);
	if (e->world_size > 1) sb_int(&b, "world_size", e->world_size);
	if (e->peak_memory_bytes > 0) sb_int(&b, "peak_memory_bytes", e->peak_memory_bytes);
	sb_add(&b, "}\n");
	return b.s;
}

int ft_trainlog_write(FILE *fp, const ft_trainlog_entry *e)
{
	char *s = ft_trainlog_format(e);
	int bad = fputs(s, fp) == EOF || fflush(fp) != 0;
	free(s);
	return bad ? ft_fail("%s: write failed:", FT_TRAINLOG_NAME) : 0;
}

void ft_trainlog_timedelta(double seconds, char buf[32])
{
	long long s = seconds > 0 ? (long long)seconds : 0;
	long long days = (s / 86400) % 1000000000, rem = s % 86400;
	int h = (int)(rem / 3600), m = (int)(rem % 3600 / 60), sec = (int)(rem % 60);
	if (days)
		snprintf(buf, 32, "%lld day%s, %d:%02d:%02d", days, days == 1 ? "" : "s", h, m, sec);
	else
		snprintf(buf, 32, "%d:%02d:%02d", h, m, sec);
}

/* ---- reading ---------------------------------------------------------- */

/* Bytes are read with read(2) into a buffer of our own rather than with
 * getline(), because a log that is still being written may end in half a
 * line: following it, that part must wait for the rest of its line. */
struct ft_trainlog_reader {
	int fd, close_fd;
	char *path;
	char *buf;
	size_t start, len, cap;   /* bytes not yet taken: buf[start, len) */
	long long pos;            /* bytes read from the file */
	long lineno, entry_line, skipped;
	char *first_bad;
	ft_trainlog_field *f;     /* the caller's, filled for every entry */
	size_t nf;
};

ft_trainlog_reader *ft_trainlog_open(const char *path)
{
	int is_stdin = !path || strcmp(path, "-") == 0;
	int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ft_fail("%s:", path);
		return NULL;
	}
	ft_trainlog_reader *r = ft_xcalloc(1, sizeof *r);
	r->fd = fd;
	r->close_fd = !is_stdin;
	r->path = ft_xstrdup(is_stdin ? "<stdin>" : path);
	return r;
}

void ft_trainlog_set_fields(ft_trainlog_reader *r, ft_trainlog_field *f, size_t nf)
{
	r->f = f;
	r->nf = nf;
}

/* The next complete line, or with `final` what is left; NULL when more
 * bytes are needed.  Trailing white space is cut, so a message about the
 * line reads the same with or without its newline. */
static char *take_line(ft_trainlog_reader *r, int final, size_t *n)
{
	if (r->start == r->len) return NULL;
	char *s = r->buf + r->start, *nl = memchr(s, '\n', r->len - r->start);
	if (!nl && !final) return NULL;
	size_t l = nl ? (size_t)(nl - s) + 1 : r->len - r->start;
	r->start += l;
	while (l && (s[l - 1] == '\n' || s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t')) l--;
	*n = l;
	return s;
}

/* Can the descriptor be read without blocking?  Regular files always can
 * (read returns 0 at the current end); pipes and terminals only when
 * poll says so. */
static int readable_now(int fd)
{
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) return 1;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

/* Read more bytes: their count, 0 at the end (for now, with nowait), or
 * -1 on a read error. */
static ssize_t fill(ft_trainlog_reader *r, int nowait)
{
	if (nowait && !readable_now(r->fd)) return 0;
	if (r->start) {
		memmove(r->buf, r->buf + r->start, r->len - r->start);
		r->len -= r->start;
		r->start = 0;
	}
	if (r->cap - r->len < 65536) {
		r->cap = r->cap ? 2 * r->cap : 131072;
		r->buf = ft_xrealloc(r->buf, r->cap);
	}
	ssize_t n;
	while ((n = read(r->fd, r->buf + r->len, r->cap - r->len)) < 0)
		if (errno != EINTR) return ft_fail("%s: read failed:", r->path);
	r->len += (size_t)n;
	r->pos += n;
	return n;
}

static void forget_bad(ft_trainlog_reader *r)
{
	r->lineno = r->entry_line = r->skipped = 0;
	free(r->first_bad);
	r->first_bad = NULL;
}

/* The log was truncated or replaced by a shorter one (a new run): read it
 * again from the start. */
static int restarted(ft_trainlog_reader *r)
{
	struct stat st;
	if (fstat(r->fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size >= r->pos) return 0;
	r->start = r->len = 0;
	r->pos = 0;
	forget_bad(r);
	lseek(r->fd, 0, SEEK_SET);
	return 1;
}

static void count_bad(ft_trainlog_reader *r, long line, const char *why)
{
	if (r->skipped++ == 0) r->first_bad = ft_xasprintf("%s:%ld: %s", r->path, line, why);
}

enum { NOWAIT = 1, WATCH = 2 };

/* NOWAIT: never block, keep a last line without its newline for later;
 * WATCH: notice a log that got shorter.  Without NOWAIT, read to the end
 * of the file. */
static int read_entry(ft_trainlog_reader *r, int how, ft_trainlog_entry *e)
{
	for (;;) {
		size_t n;
		char *line = take_line(r, 0, &n);
		if (!line) {
			if ((how & WATCH) && restarted(r)) return FT_TRAINLOG_RESTART;
			ssize_t got = fill(r, how & NOWAIT);
			if (got < 0) return -1;
			if (got > 0) continue;
			if ((how & NOWAIT) || !(line = take_line(r, 1, &n))) return 0;
		}
		r->lineno++;
		if (n == 0) continue;   /* blank lines are not errors */
		if (ft_trainlog_parse_fields(line, n, e, r->f, r->nf) == 0) {
			r->entry_line = r->lineno;
			return 1;
		}
		count_bad(r, r->lineno, ft_errmsg());
		ft_errclear();
	}
}

int ft_trainlog_next(ft_trainlog_reader *r, ft_trainlog_entry *e)
{
	return read_entry(r, 0, e);
}

int ft_trainlog_poll(ft_trainlog_reader *r, int final, ft_trainlog_entry *e)
{
	return read_entry(r, final ? WATCH : NOWAIT | WATCH, e);
}

void ft_trainlog_reject(ft_trainlog_reader *r, const char *why)
{
	count_bad(r, r->entry_line, why);
}

long ft_trainlog_line(const ft_trainlog_reader *r) { return r->entry_line; }
long ft_trainlog_skipped(const ft_trainlog_reader *r) { return r->skipped; }
const char *ft_trainlog_first_bad(const ft_trainlog_reader *r) { return r->first_bad; }

void ft_trainlog_close(ft_trainlog_reader *r)
{
	if (!r) return;
	if (r->close_fd) close(r->fd);
	free(r->buf);
	free(r->path);
	free(r->first_bad);
	free(r);
}

int ft_trainlog_read_all(const char *path, ft_trainlog_entry **out, size_t *n, long *skipped)
{
	*out = NULL;
	*n = 0;
	ft_trainlog_reader *r = ft_trainlog_open(path);
	if (!r) return -1;
	size_t cap = 0;
	ft_trainlog_entry e;
	int rc;
	while ((rc = ft_trainlog_next(r, &e)) == 1) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			*out = ft_xrealloc(*out, cap * sizeof **out);
		}
		(*out)[(*n)++] = e;
	}
	if (skipped) *skipped = ft_trainlog_skipped(r);
	ft_trainlog_close(r);
	if (rc < 0) {
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return rc;
}
