/* plot_ascii.c - a text plot for terminals (ft-plot over ssh).
 *
 * Each panel is exactly `height` lines of at most `width` columns:
 *   title line, plot rows with y tick labels and a '|' axis, the x axis
 *   ("+---+---"), x tick labels, and a legend line.
 * One run: the raw curve as '.', the smoothed one as '*'.  Several runs:
 * one character per run ('*', 'o', '+', 'x', ...), smoothed when
 * smoothing is on, named in the legend.  Plain ASCII so it survives any
 * terminal and `less`.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "plot/plot.h"

static const char run_chars[] = "*o+x#@%&";

typedef struct { char *v; size_t n, cap; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->v = ft_xrealloc(b->v, b->cap);
	}
	memcpy(b->v + b->n, s, n);
	b->n += n;
	b->v[b->n] = 0;
}

/* Trailing spaces trimmed, then a newline; lines never exceed w. */
static void sb_line(sbuf *b, const char *s, int w)
{
	size_t n = strnlen(s, (size_t)w);
	while (n && s[n - 1] == ' ') n--;
	sb_add(b, s, n);
	sb_add(b, "\n", 1);
}

typedef struct {
	char *cells;   /* rows x cols */
	int rows, cols;
	const ft_plot_panel *pl;
} grid;

static int col_of(const grid *g, double x)
{
	return (int)lround((x - g->pl->xlo) / (g->pl->xhi - g->pl->xlo) * (g->cols - 1));
}

static int row_of(const grid *g, double y)
{
	return (int)lround((g->pl->yhi - y) / (g->pl->yhi - g->pl->ylo) * (g->rows - 1));
}

static void put(grid *g, int r, int c, char ch)
{
	if (r >= 0 && r < g->rows && c >= 0 && c < g->cols) g->cells[r * g->cols + c] = ch;
}

/* Points, plus linear interpolation across the columns between them so
 * the curve reads as a line. */
static void trace(grid *g, const double *x, const double *y, size_t n, char ch)
{
	for (size_t i = 0; i < n; i++) {
		int c = col_of(g, x[i]);
		put(g, row_of(g, y[i]), c, ch);
		if (i + 1 == n) break;
		int c2 = col_of(g, x[i + 1]);
		for (int cc = c + 1; cc < c2; cc++) {
			double t = (double)(cc - c) / (c2 - c);
			put(g, row_of(g, y[i] + t * (y[i + 1] - y[i])), cc, ch);
		}
	}
}

static void panel(sbuf *out, const ft_plot_spec *p, size_t k, int w, int h)
{
	ft_plot_panel pl;
	ft_plot_panel_layout(p, k, w / 10 > 2 ? w / 10 : 2, (h - 4) / 3 > 2 ? (h - 4) / 3 : 2, &pl);
	char lab[16][32];
	int lw = 1;
	for (int i = 0; i < pl.nyt; i++) {
		ft_plot_tick_label(pl.yt[i], pl.ystep, lab[i], sizeof lab[i]);
		int l = (int)strlen(lab[i]);
		if (l > lw) lw = l;
	}
	grid g = { .rows = h - 4, .cols = w - lw - 2, .pl = &pl };
	if (g.cols < 2) g.cols = 2;
	if (g.rows < 2) g.rows = 2;
	g.cells = ft_xmalloc((size_t)g.rows * g.cols);
	memset(g.cells, ' ', (size_t)g.rows * g.cols);
	int single = p->nruns == 1;
	for (size_t r = 0; r < p->nruns; r++) {
		const ft_series *s = ft_plot_run_series(p->runs[r], p->keys[k]);
		if (!s || s->n == 0) continue;
		char ch = run_chars[r % (sizeof run_chars - 1)];
		if (!p->smooth) {
			trace(&g, s->x, s->y, s->n, single ? '*' : ch);
			continue;
		}
		double *sm = ft_xmalloc(s->n * sizeof *sm);
		ft_plot_smooth(s->y, s->n, sm);
		if (single) trace(&g, s->x, s->y, s->n, '.');
		trace(&g, s->x, sm, s->n, single ? '*' : ch);
		free(sm);
	}

	size_t lsz = (size_t)w + lw + 64;
	char *line = ft_xmalloc(lsz);
	/* title: the key, and the figure title on the first panel */
	if (k == 0 && p->title) snprintf(line, lsz, "%s: %s", p->title, p->keys[k]);
	else snprintf(line, lsz, "%s", p->keys[k]);
	if (!pl.has_data) snprintf(line + strlen(line), lsz - strlen(line), " (no data)");
	sb_line(out, line, w);
	for (int r = 0; r < g.rows; r++) {
		const char *yl = "";
		for (int i = 0; i < pl.nyt; i++)
			if (row_of(&g, pl.yt[i]) == r) yl = lab[i];
		snprintf(line, lsz, "%*s |%.*s", lw, yl, g.cols, g.cells + (size_t)r * g.cols);
		sb_line(out, line, w);
	}
	/* x axis with '+' at the ticks, then the tick labels centred on them */
	memset(line, ' ', lsz);
	memset(line + lw + 1, '-', (size_t)g.cols + 1);
	line[lw + 1] = '+';
	line[lw + 2 + g.cols] = 0;
	for (int i = 0; i < pl.nxt; i++) line[lw + 2 + col_of(&g, pl.xt[i])] = '+';
	sb_line(out, line, w);
	memset(line, ' ', lsz);
	line[w] = 0;
	int next_free = 0;
	for (int i = 0; i < pl.nxt; i++) {
		char t[32];
		ft_plot_tick_label(pl.xt[i], pl.xstep, t, sizeof t);
		int l = (int)strlen(t), at = lw + 2 + col_of(&g, pl.xt[i]) - l / 2;
		if (at < next_free || at + l > w) continue;   /* would overlap: drop */
		memcpy(line + at, t, (size_t)l);
		next_free = at + l + 1;
	}
	sb_line(out, line, w);
	/* legend */
	int n = snprintf(line, lsz, "%*s  %s:", lw, "", p->xlabel ? p->xlabel : "step");
	if (single && p->smooth) {
		snprintf(line + n, lsz - n, " . original  * smoothed");
	} else {
		for (size_t r = 0; r < p->nruns && n < w; r++) {
			n += snprintf(line + n, lsz - n, " %c %s ",
				      single ? '*' : run_chars[r % (sizeof run_chars - 1)],
				      p->runs[r]->label);
			if (n >= (int)lsz) break;   /* truncated; sb_line cuts at w */
		}
	}
	sb_line(out, line, w);
	free(line);
	free(g.cells);
}

char *ft_plot_render_ascii(const ft_plot_spec *p)
{
	int w = p->width > 0 ? p->width : 80;
	int h = p->height > 0 ? p->height : 20;
	if (w < 20) w = 20;
	if (h < 8) h = 8;
	sbuf out = { 0 };
	sb_add(&out, "", 0);
	for (size_t k = 0; k < p->nkeys; k++) panel(&out, p, k, w, h);
	return out.v;
}
