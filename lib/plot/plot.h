/* plot.h - training curves from trainer_log.jsonl, as LLaMA-Factory's
 * --plot_loss draws them (raw and smoothed), to PNG/SVG/PDF via cairo or
 * as text for a terminal.
 *
 *   lib/plot/plot.c        series, smoothing, ticks, ft_plot_loss_files()
 *   lib/plot/plot_log.c    runs: trainer logs (format/trainlog.h) into series
 *   lib/plot/plot_cairo.c  PNG / SVG / PDF
 *   lib/plot/plot_ascii.c  text plot
 */
#ifndef FT_PLOT_H
#define FT_PLOT_H

#include <stddef.h>
#include <stdio.h>
#include "format/trainlog.h"

/* What ft-train --plot_loss calls at the end of training: reads
 * <output_dir>/trainer_log.jsonl and writes <output_dir>/training_loss.png
 * and, when the log has eval_loss values, training_eval_loss.png, each
 * with the raw curve (faint) and LLaMA-Factory's smoothed curve, titled
 * "training <key> of <output_dir>" as LLaMA-Factory titles them.
 * Returns the number of figures written (0 when the log holds no loss),
 * or -1 with a message. */
int ft_plot_loss_files(const char *output_dir);
/* The same for other keys of trainer_log.jsonl (the preference stages:
 * "loss", "rewards/accuracies", "eval_loss" -> training_rewards_accuracies.png). */
int ft_plot_loss_files_keys(const char *output_dir, const char *const *keys, size_t nkeys);

/* LLaMA-Factory's smooth() (extras/ploting.py): an EMA whose weight is
 * 1.8 * (sigmoid(0.05 * n) - 0.5), starting from the first value.
 * out may equal y. */
void ft_plot_smooth(const double *y, size_t n, double *out);

/* "Nice" axis ticks (1-2-5 times a power of ten) covering [lo, hi]:
 * at most `max` of them, written to ticks[]; returns their count and
 * the step in *step.  The view range is [ticks[0], ticks[n-1]] only when
 * the caller wants it; see ft_plot_axis(). */
int ft_plot_ticks(double lo, double hi, int max, double *ticks, double *step);

/* A view range for data in [lo, hi]: 5% margins like matplotlib, widened
 * when lo == hi, so a flat series is still drawn in the middle. */
void ft_plot_axis(double lo, double hi, double *vlo, double *vhi);

/* Tick label: as few digits as the step needs; scientific notation for
 * very small or large values (learning rates). */
void ft_plot_tick_label(double v, double step, char *buf, size_t size);

/* One curve: x = step, y = value. */
typedef struct { double *x, *y; size_t n, cap; } ft_series;
void ft_series_push(ft_series *s, double x, double y);
void ft_series_free(ft_series *s);

/* One run (one log file): a series per requested key.  Logs are read
 * through format/trainlog.h's reader, incrementally, so --follow can pick
 * up lines a trainer appends; a line that is not complete yet is kept for
 * the next poll. */
typedef struct ft_plot_run {
	char *path;            /* the log file; "-" is stdin */
	char *label;           /* legend: name of the directory holding the log */
	size_t nkeys;
	char **keys;
	ft_series *s;          /* nkeys series */
	long nbad;             /* skipped: not JSON / not an object / no step */
	const char *first_bad; /* "path:line: why" of the first skipped line
				  (the reader's, valid until the next poll) */
	/* reader state */
	ft_trainlog_reader *log;
	ft_trainlog_field *fields;   /* step, learning_rate, then the keys */
} ft_plot_run;

/* `path` is a log file, "-", or a directory holding trainer_log.jsonl.
 * Keys are copied.  NULL with a message when the file cannot be opened. */
ft_plot_run *ft_plot_run_open(const char *path, const char *const *keys, size_t nkeys);
/* Read every complete line available now; at_eof also takes a final line
 * without a newline.  Returns the number of new records (>= 0) or -1 on
 * a read error.  A regular file that became shorter (a new run replaced
 * the log) is read again from the start, its old values dropped. */
long ft_plot_run_poll(ft_plot_run *r, int at_eof);
void ft_plot_run_free(ft_plot_run *r);
/* The series of `key`, or NULL when the run was not opened with it. */
const ft_series *ft_plot_run_series(const ft_plot_run *r, const char *key);

/* What to draw: one panel per key (stacked), every run overlaid; runs
 * are looked up by key name, so they may hold more keys than are drawn. */
typedef struct {
	const char *title;            /* NULL: none */
	const char *xlabel;           /* NULL: "step" */
	size_t nkeys;
	const char *const *keys;
	size_t nruns;
	ft_plot_run *const *runs;
	int smooth;                   /* 1: raw faint + smoothed; 0: raw only */
	int width, height;            /* pixels / columns,rows; 0: default */
} ft_plot_spec;

/* Layout of one panel, shared by the renderers and checked by tests:
 * the view range and ticks on both axes. */
typedef struct {
	int has_data;
	double xlo, xhi, ylo, yhi;    /* view range */
	int nxt, nyt;
	double xt[16], yt[16], xstep, ystep;
} ft_plot_panel;
int ft_plot_panel_layout(const ft_plot_spec *p, size_t key, int max_xt, int max_yt,
			 ft_plot_panel *out);

/* Write a figure; the format follows the extension (.png .svg .pdf),
 * written atomically.  Default size 640x480 per panel (matplotlib's). */
int ft_plot_render_file(const ft_plot_spec *p, const char *path);
/* The same to a stream; format from ft_plot_format() ("x.svg" or "svg"). */
enum { FT_PLOT_PNG, FT_PLOT_SVG, FT_PLOT_PDF };
int ft_plot_format(const char *name_or_ext);   /* -1 if unknown */
int ft_plot_render_fp(const ft_plot_spec *p, FILE *fp, int format);
/* Text plot, newline-terminated lines; width x height characters per
 * panel (default 80 x 20).  Returns a malloc'd string. */
char *ft_plot_render_ascii(const ft_plot_spec *p);

/* Release cairo's and fontconfig's caches (for leak checkers at exit). */
void ft_plot_cleanup(void);

#endif
