/* trainlog.c - trainer_log.jsonl writer and reader; see trainlog.h */
#define _GNU_SOURCE
#include "format/trainlog.h"
#include "util/error.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void ft_trainlog_entry_init(ft_trainlog_entry *e)
{
	memset(e, 0, sizeof *e);
	e->current_steps = e->total_steps = e->total_tokens = -1;
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

int ft_trainlog_parse(const char *line, size_t len, ft_trainlog_entry *e)
{
	ft_trainlog_entry_init(e);
	json_error_t err;
	json_t *o = json_loadb(line, len, 0, &err);
	if (!o) return ft_fail("column %d: %s", err.column, err.text);
	int rc = -1;
	if (!json_is_object(o)) {
		ft_fail("line is not a JSON object");
		goto out;
	}
	if (get_int(o, "current_steps", &e->current_steps) || get_int(o, "total_steps", &e->total_steps) ||
	    get_num(o, "loss", &e->loss) || get_num(o, "eval_loss", &e->eval_loss) ||
	    get_num(o, "lr", &e->lr) || get_num(o, "epoch", &e->epoch) ||
	    get_num(o, "percentage", &e->percentage) || get_num(o, "throughput", &e->throughput) ||
	    get_num(o, "grad_norm", &e->grad_norm) || get_int(o, "total_tokens", &e->total_tokens) ||
	    get_str(o, "elapsed_time", e->elapsed_time, sizeof e->elapsed_time) ||
	    get_str(o, "remaining_time", e->remaining_time, sizeof e->remaining_time))
		goto out;
	if (e->current_steps < 0 && e->total_steps < 0 && isnan(e->loss) && isnan(e->eval_loss)) {
		ft_fail("no current_steps, total_steps, loss or eval_loss");
		goto out;
	}
	rc = 0;
out:
	json_decref(o);
	return rc;
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

struct ft_trainlog_reader {
	FILE *fp;
	int close_fp;
	char *path;
	char *line;
	size_t cap;
	long lineno, entry_line, skipped;
	char *first_bad;
};

ft_trainlog_reader *ft_trainlog_open(const char *path)
{
	int is_stdin = !path || strcmp(path, "-") == 0;
	FILE *fp = is_stdin ? stdin : fopen(path, "r");
	if (!fp) {
		ft_fail("%s:", path);
		return NULL;
	}
	ft_trainlog_reader *r = ft_xcalloc(1, sizeof *r);
	r->fp = fp;
	r->close_fp = !is_stdin;
	r->path = ft_xstrdup(is_stdin ? "<stdin>" : path);
	return r;
}

static int blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
	return 1;
}

int ft_trainlog_next(ft_trainlog_reader *r, ft_trainlog_entry *e)
{
	for (;;) {
		errno = 0;
		ssize_t n = getline(&r->line, &r->cap, r->fp);
		if (n < 0) {
			if (ferror(r->fp)) return ft_fail("%s: read failed:", r->path);
			return 0;
		}
		r->lineno++;
		if (blank(r->line, (size_t)n)) continue;
		if (ft_trainlog_parse(r->line, (size_t)n, e) == 0) {
			r->entry_line = r->lineno;
			return 1;
		}
		if (r->skipped++ == 0)
			r->first_bad = ft_xasprintf("%s:%ld: %s", r->path, r->lineno, ft_errmsg());
		ft_errclear();
	}
}

long ft_trainlog_line(const ft_trainlog_reader *r) { return r->entry_line; }
long ft_trainlog_skipped(const ft_trainlog_reader *r) { return r->skipped; }
const char *ft_trainlog_first_bad(const ft_trainlog_reader *r) { return r->first_bad; }

void ft_trainlog_close(ft_trainlog_reader *r)
{
	if (!r) return;
	if (r->close_fp) fclose(r->fp);
	free(r->line);
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
