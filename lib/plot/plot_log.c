/* plot_log.c - incremental reader of trainer logs for ft-plot.
 *
 * A trainer appends one JSON object per line (LLaMA-Factory's
 * trainer_log.jsonl: current_steps, total_steps, loss, eval_loss, lr,
 * epoch, percentage, elapsed_time, remaining_time, ...).  While it runs
 * the last line may be half written, so only complete lines are parsed
 * and the rest is kept for the next poll (trainlog.h's reader works on
 * whole files, which cannot retry a partial line).  A line that
 * ft_trainlog_parse() rejects, or without a step, is counted and
 * skipped, never fatal.  Any numeric field can be plotted, not only the
 * ones ft_trainlog_entry knows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "util/error.h"
#include "plot/plot.h"
#include "format/trainlog.h"

/* Legend label: the directory holding trainer_log.jsonl (LLaMA-Factory's
 * output_dir), else the file name. */
static char *run_label(const char *path, const char *file)
{
	if (!strcmp(path, "-")) return ft_xstrdup("<stdin>");
	char *f = ft_xstrdup(file), *f2 = ft_xstrdup(file);
	char *base = basename(f);
	char *label;
	if (!strcmp(base, "trainer_log.jsonl")) {
		char *dir = dirname(f2);
		char *real = realpath(dir, NULL);
		label = ft_xstrdup(basename(real ? real : dir));
		free(real);
	} else {
		label = ft_xstrdup(base);
	}
	free(f);
	free(f2);
	return label;
}

ft_plot_run *ft_plot_run_open(const char *path, const char *const *keys, size_t nkeys)
{
	char *file = ft_xstrdup(path);
	struct stat st;
	if (strcmp(path, "-") != 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		free(file);
		file = ft_xasprintf("%s/trainer_log.jsonl", path);
	}
	FILE *fp = stdin;
	if (strcmp(path, "-") != 0 && !(fp = fopen(file, "r"))) {
		ft_fail("%s:", file);
		free(file);
		return NULL;
	}
	ft_plot_run *r = ft_xcalloc(1, sizeof *r);
	r->path = file;
	r->label = run_label(path, file);
	r->fp = fp;
	r->own_fp = fp != stdin;
	r->nkeys = nkeys;
	r->keys = ft_xcalloc(nkeys ? nkeys : 1, sizeof *r->keys);
	r->s = ft_xcalloc(nkeys ? nkeys : 1, sizeof *r->s);
	for (size_t i = 0; i < nkeys; i++) r->keys[i] = ft_xstrdup(keys[i]);
	return r;
}

void ft_plot_run_free(ft_plot_run *r)
{
	if (!r) return;
	if (r->own_fp && r->fp) fclose(r->fp);
	for (size_t i = 0; i < r->nkeys; i++) {
		free(r->keys[i]);
		ft_series_free(&r->s[i]);
	}
	free(r->keys);
	free(r->s);
	free(r->buf);
	free(r->first_bad);
	free(r->label);
	free(r->path);
	free(r);
}

const ft_series *ft_plot_run_series(const ft_plot_run *r, const char *key)
{
	for (size_t i = 0; i < r->nkeys; i++)
		if (!strcmp(r->keys[i], key)) return &r->s[i];
	return NULL;
}

static int bad_line(ft_plot_run *r, const char *why)
{
	r->nbad++;
	if (!r->first_bad)
		r->first_bad = ft_xasprintf("%s:%ld: %s", r->path, r->nlines, why);
	return 0;
}

/* The x value: LLaMA-Factory's current_steps, or transformers' "step"
 * (trainer_state.json's log_history entries written as lines). */
static int line_step(const json_t *o, double *x)
{
	const json_t *v = json_object_get(o, "current_steps");
	if (!v) v = json_object_get(o, "step");
	if (!json_is_number(v)) return -1;
	*x = json_number_value(v);
	return 0;
}

int ft_plot_run_line(ft_plot_run *r, const char *line, size_t len)
{
	while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
		       line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	r->nlines++;
	if (len == 0) return 0;   /* blank lines are not errors */
	/* The trainer's own reader decides what a bad line is (types of the
	 * known fields), so ft-plot and ft-train agree on the skip count. */
	ft_trainlog_entry e;
	if (ft_trainlog_parse(line, len, &e) < 0) return bad_line(r, ft_errmsg());
	json_t *o = json_loadb(line, len, 0, NULL);
	if (!o) return bad_line(r, "not JSON");
	double x;
	int used = 0;
	if (!json_is_object(o)) {
		bad_line(r, "not a JSON object");
	} else if (line_step(o, &x) < 0) {
		bad_line(r, "no current_steps");
	} else {
		for (size_t k = 0; k < r->nkeys; k++) {
			const json_t *v = json_object_get(o, r->keys[k]);
			/* transformers spells lr "learning_rate" */
			if (!v && !strcmp(r->keys[k], "lr"))
				v = json_object_get(o, "learning_rate");
			if (json_is_number(v)) {
				ft_series_push(&r->s[k], x, json_number_value(v));
				used = 1;
			}
		}
	}
	json_decref(o);
	return used;
}

/* Parse the complete lines in the buffer; keep a trailing partial one. */
static long take_lines(ft_plot_run *r, int at_eof)
{
	long used = 0;
	size_t start = 0;
	for (size_t i = 0; i < r->blen; i++) {
		if (r->buf[i] != '\n') continue;
		used += ft_plot_run_line(r, r->buf + start, i - start);
		start = i + 1;
	}
	if (at_eof && start < r->blen) {
		used += ft_plot_run_line(r, r->buf + start, r->blen - start);
		start = r->blen;
	}
	memmove(r->buf, r->buf + start, r->blen - start);
	r->blen -= start;
	return used;
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

/* The log was truncated or replaced by a shorter one: start over. */
static void restart_if_shorter(ft_plot_run *r, int fd)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size >= r->pos) return;
	for (size_t k = 0; k < r->nkeys; k++) r->s[k].n = 0;
	r->nlines = r->nbad = 0;
	free(r->first_bad);
	r->first_bad = NULL;
	r->blen = 0;
	r->pos = 0;
	lseek(fd, 0, SEEK_SET);
}

long ft_plot_run_poll(ft_plot_run *r, int at_eof)
{
	int fd = fileno(r->fp);
	long used = 0;
	restart_if_shorter(r, fd);
	for (;;) {
		if (!at_eof && !readable_now(fd)) break;
		if (r->bcap - r->blen < 65536) {
			r->bcap = r->bcap ? 2 * r->bcap : 131072;
			r->buf = ft_xrealloc(r->buf, r->bcap);
		}
		ssize_t n = read(fd, r->buf + r->blen, r->bcap - r->blen);
		if (n < 0) {
			if (errno == EINTR) continue;
			return ft_fail("%s:", r->path);
		}
		if (n == 0) break;
		r->blen += (size_t)n;
		r->pos += n;
		used += take_lines(r, 0);
	}
	used += take_lines(r, at_eof);
	return used;
}
