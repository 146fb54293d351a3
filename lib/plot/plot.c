/* plot.c - series, LLaMA-Factory's smoothing, axis ticks and layout, and
 * the --plot_loss entry point.  Renderers are in plot_cairo.c and
 * plot_ascii.c, the log reader in plot_log.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "plot/plot.h"

void ft_series_push(ft_series *s, double x, double y)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 64;
		s->x = ft_xrealloc(s->x, s->cap * sizeof *s->x);
		s->y = ft_xrealloc(s->y, s->cap * sizeof *s->y);
	}
	s->x[s->n] = x;
	s->y[s->n] = y;
	s->n++;
}

void ft_series_free(ft_series *s)
{
	free(s->x);
	free(s->y);
	memset(s, 0, sizeof *s);
}

/* Same operations in the same order as Python's floats, so the result is
 * bit-identical to llamafactory.extras.ploting.smooth(). */
void ft_plot_smooth(const double *y, size_t n, double *out)
{
	if (n == 0) return;
	double weight = 1.8 * (1 / (1 + exp(-0.05 * (double)n)) - 0.5);
	double last = y[0];
	for (size_t i = 0; i < n; i++) {
		double v = last * weight + (1 - weight) * y[i];
		out[i] = v;
		last = v;
	}
}

void ft_plot_axis(double lo, double hi, double *vlo, double *vhi)
{
	if (!isfinite(lo) || !isfinite(hi)) lo = 0, hi = 1;
	if (lo > hi) { double t = lo; lo = hi; hi = t; }
	if (hi - lo <= 1e-12 * fmax(fabs(lo), fabs(hi))) {
		/* a flat series: widen around it */
		double d = lo != 0 ? fabs(lo) * 0.05 : 0.5;
		lo -= d;
		hi += d;
	}
	double m = 0.05 * (hi - lo);
	*vlo = lo - m;
	*vhi = hi + m;
}

int ft_plot_ticks(double lo, double hi, int max, double *ticks, double *step)
{
	static const double nice[] = { 1, 2, 5 };
	if (max < 2) max = 2;
	if (!(hi > lo)) {
		ticks[0] = lo;
		*step = 1;
		return 1;
	}
	/* start one decade below the range / max and walk up 1-2-5 */
	double e = floor(log10((hi - lo) / max)) - 1;
	for (int k = 0; k < 40; k++) {
		double p = pow(10, e + k / 3);
		double s = nice[k % 3] * p;
		double a = ceil(lo / s - 1e-9), b = floor(hi / s + 1e-9);
		if (b - a + 1 <= max) {
			int n = 0;
			for (double i = a; i <= b; i++) {
				double t = i * s;
				ticks[n++] = fabs(t) < s * 1e-9 ? 0 : t;
			}
			*step = s;
			return n;
		}
	}
	ticks[0] = lo;
	*step = hi - lo;
	return 1;
}

void ft_plot_tick_label(double v, double step, char *buf, size_t size)
{
	if (v == 0) {
		snprintf(buf, size, "0");
		return;
	}
	double a = fabs(v);
	if (a < 1e-3 || a >= 1e6) {
		/* mantissa digits enough to tell neighbouring ticks apart */
		int ev = (int)floor(log10(a)), es = (int)floor(log10(step) + 1e-9);
		int d = ev - es;
		if (d < 0) d = 0;
		if (d > 6) d = 6;
		snprintf(buf, size, "%.*e", d, v);
		return;
	}
	int d = (int)ceil(-log10(step) - 1e-9);
	if (d < 0) d = 0;
	if (d > 10) d = 10;
	snprintf(buf, size, "%.*f", d, v);
}

int ft_plot_panel_layout(const ft_plot_spec *p, size_t key, int max_xt, int max_yt,
			 ft_plot_panel *out)
{
	memset(out, 0, sizeof *out);
	if (max_xt > 16) max_xt = 16;
	if (max_yt > 16) max_yt = 16;
	double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
	for (size_t r = 0; r < p->nruns; r++) {
		const ft_series *s = ft_plot_run_series(p->runs[r], p->keys[key]);
		if (!s) continue;
		for (size_t i = 0; i < s->n; i++) {
			xlo = fmin(xlo, s->x[i]);
			xhi = fmax(xhi, s->x[i]);
			ylo = fmin(ylo, s->y[i]);
			yhi = fmax(yhi, s->y[i]);
		}
	}
	out->has_data = xlo <= xhi;
	if (!out->has_data) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
	ft_plot_axis(xlo, xhi, &out->xlo, &out->xhi);
	ft_plot_axis(ylo, yhi, &out->ylo, &out->yhi);
	out->nxt = ft_plot_ticks(out->xlo, out->xhi, max_xt, out->xt, &out->xstep);
	out->nyt = ft_plot_ticks(out->ylo, out->yhi, max_yt, out->yt, &out->ystep);
	return 0;
}

int ft_plot_loss_files(const char *output_dir)
{
	static const char *const keys[] = { "loss", "eval_loss" };
	return ft_plot_loss_files_keys(output_dir, keys, 2);
}

int ft_plot_loss_files_keys(const char *output_dir, const char *const *keys, size_t nkeys)
{
	char *log = ft_xasprintf("%s/trainer_log.jsonl", output_dir);
	ft_plot_run *run = ft_plot_run_open(log, keys, nkeys);
	free(log);
	if (!run) return -1;
	if (ft_plot_run_poll(run, 1) < 0) {
		ft_plot_run_free(run);
		return -1;
	}
	int written = 0;
	for (size_t k = 0; k < nkeys; k++) {
		if (run->s[k].n == 0) continue;   /* LLaMA-Factory: "No metric" */
		char *title = ft_xasprintf("training %s of %s", keys[k], output_dir);
		/* LLaMA-Factory: training_{key.replace("/", "_")}.png */
		char *png = ft_xasprintf("%s/training_%s.png", output_dir, keys[k]);
		for (char *q = png + strlen(output_dir) + 1; *q; q++)
			if (*q == '/') *q = '_';
		ft_plot_spec p = {
			.title = title, .xlabel = "step", .nkeys = 1, .keys = &keys[k],
			.nruns = 1, .runs = &run, .smooth = 1,
		};
		int rc = ft_plot_render_file(&p, png);
		free(title);
		free(png);
		if (rc < 0) {
			ft_plot_run_free(run);
			return -1;
		}
		written++;
	}
	ft_plot_run_free(run);
	return written;
}
