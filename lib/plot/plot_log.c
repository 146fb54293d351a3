/* plot_log.c - runs for ft-plot: trainer logs into one series per key.
 *
 * Lines are read and judged by format/trainlog.h's reader (the one parser
 * of trainer_log.jsonl, which also follows a log while a trainer writes
 * it).  What is ft-plot's own: a run directory stands for its
 * trainer_log.jsonl, a line needs a step to be drawn (LLaMA-Factory's
 * current_steps, or transformers' "step"), any numeric field can be
 * plotted, and "lr" also reads transformers' "learning_rate".
 */
#define _GNU_SOURCE
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "util/error.h"
#include "plot/plot.h"
#include "format/trainlog.h"

/* The fields looked up in every line, before the keys. */
enum { F_CURRENT_STEPS, F_STEP, F_LEARNING_RATE, F_KEYS };

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
		file = ft_xasprintf("%s/" FT_TRAINLOG_NAME, path);
	}
	ft_trainlog_reader *log = ft_trainlog_open(file);
	if (!log) {
		free(file);
		return NULL;
	}
	ft_plot_run *r = ft_xcalloc(1, sizeof *r);
	r->path = file;
	r->label = run_label(path, file);
	r->log = log;
	r->nkeys = nkeys;
	r->keys = ft_xcalloc(nkeys ? nkeys : 1, sizeof *r->keys);
	r->s = ft_xcalloc(nkeys ? nkeys : 1, sizeof *r->s);
	r->fields = ft_xcalloc(F_KEYS + nkeys, sizeof *r->fields);
	r->fields[F_CURRENT_STEPS].key = "current_steps";
	r->fields[F_STEP].key = "step";
	r->fields[F_LEARNING_RATE].key = "learning_rate";
	for (size_t i = 0; i < nkeys; i++) {
		r->keys[i] = ft_xstrdup(keys[i]);
		r->fields[F_KEYS + i].key = r->keys[i];
	}
	ft_trainlog_set_fields(log, r->fields, F_KEYS + nkeys);
	return r;
}

void ft_plot_run_free(ft_plot_run *r)
{
	if (!r) return;
	ft_trainlog_close(r->log);
	for (size_t i = 0; i < r->nkeys; i++) {
		free(r->keys[i]);
		ft_series_free(&r->s[i]);
	}
	free(r->keys);
	free(r->s);
	free(r->fields);
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

/* One entry the reader returned: 1 when it added a value to a series.
 * Only a key that is absent falls back to transformers' spelling; a null
 * current_steps or lr is the line's own (missing) value. */
static int add_entry(ft_plot_run *r)
{
	const ft_trainlog_field *f = r->fields;
	const ft_trainlog_field *step = f[F_CURRENT_STEPS].present ? &f[F_CURRENT_STEPS] : &f[F_STEP];
	if (isnan(step->value)) {
		ft_trainlog_reject(r->log, "no current_steps");
		return 0;
	}
	int used = 0;
	for (size_t k = 0; k < r->nkeys; k++) {
		const ft_trainlog_field *v = &f[F_KEYS + k];
		if (!v->present && !strcmp(r->keys[k], "lr")) v = &f[F_LEARNING_RATE];
		if (!isnan(v->value)) {
			ft_series_push(&r->s[k], step->value, v->value);
			used = 1;
		}
	}
	return used;
}

long ft_plot_run_poll(ft_plot_run *r, int at_eof)
{
	long used = 0;
	ft_trainlog_entry e;
	int rc;
	while ((rc = ft_trainlog_poll(r->log, at_eof, &e)) > 0) {
		if (rc == FT_TRAINLOG_RESTART) {   /* a new run replaced the log */
			for (size_t k = 0; k < r->nkeys; k++) r->s[k].n = 0;
			continue;
		}
		used += add_entry(r);
	}
	r->nbad = ft_trainlog_skipped(r->log);
	r->first_bad = ft_trainlog_first_bad(r->log);
	return rc < 0 ? -1 : used;
}
