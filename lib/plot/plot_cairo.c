/* plot_cairo.c - PNG / SVG / PDF figures with cairo.
 *
 * The geometry follows matplotlib's defaults, which LLaMA-Factory's
 * training_loss.png uses: a 640x480 figure (6.4x4.8 in at 100 dpi) per
 * panel, axes from 12.5% to 90% of the width and 11% to 88% of the
 * height, the tab10 colours, the raw curve at alpha 0.4 under the
 * smoothed one.  Each curve is one path (one point per log record), so
 * tests can count points in the SVG.
 */
#include <cairo.h>
#include <dlfcn.h>
#include <cairo-pdf.h>
#include <cairo-svg.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/atomicfile.h"
#include "util/error.h"
#include "plot/plot.h"

static const double tab10[10][3] = {
	{ 0x1f, 0x77, 0xb4 }, { 0xff, 0x7f, 0x0e }, { 0x2c, 0xa0, 0x2c }, { 0xd6, 0x27, 0x28 },
	{ 0x94, 0x67, 0xbd }, { 0x8c, 0x56, 0x4b }, { 0xe3, 0x77, 0xc2 }, { 0x7f, 0x7f, 0x7f },
	{ 0xbc, 0xbd, 0x22 }, { 0x17, 0xbe, 0xcf },
};

static void set_color(cairo_t *cr, size_t i, double alpha)
{
	const double *c = tab10[i % 10];
	cairo_set_source_rgba(cr, c[0] / 255, c[1] / 255, c[2] / 255, alpha);
}

typedef struct { double x0, y0, x1, y1; } box;   /* y0 top, y1 bottom */

static double map_x(const box *b, const ft_plot_panel *pl, double x)
{
	return b->x0 + (x - pl->xlo) / (pl->xhi - pl->xlo) * (b->x1 - b->x0);
}

static double map_y(const box *b, const ft_plot_panel *pl, double y)
{
	return b->y1 - (y - pl->ylo) / (pl->yhi - pl->ylo) * (b->y1 - b->y0);
}

static void text_at(cairo_t *cr, const char *s, double x, double y, double ax, double ay)
{
	cairo_text_extents_t e;
	cairo_text_extents(cr, s, &e);
	cairo_move_to(cr, x - e.x_bearing - ax * e.width, y - e.y_bearing - ay * e.height);
	cairo_show_text(cr, s);
}

static void curve(cairo_t *cr, const box *b, const ft_plot_panel *pl,
		  const double *x, const double *y, size_t n)
{
	if (n == 0) return;
	if (n == 1) {   /* a single record: a dot, since a line would not show */
		cairo_arc(cr, map_x(b, pl, x[0]), map_y(b, pl, y[0]), 2.5, 0, 2 * M_PI);
		cairo_fill(cr);
		return;
	}
	cairo_move_to(cr, map_x(b, pl, x[0]), map_y(b, pl, y[0]));
	for (size_t i = 1; i < n; i++) cairo_line_to(cr, map_x(b, pl, x[i]), map_y(b, pl, y[i]));
	cairo_stroke(cr);
}

static void axes(cairo_t *cr, const box *b, const ft_plot_panel *pl,
		 const char *xlabel, const char *ylabel, const char *title)
{
	char buf[64];
	cairo_set_line_width(cr, 1);
	/* light grid, then the frame */
	cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
	for (int i = 0; i < pl->nxt; i++) {
		double x = round(map_x(b, pl, pl->xt[i])) + 0.5;
		cairo_move_to(cr, x, b->y0);
		cairo_line_to(cr, x, b->y1);
	}
	for (int i = 0; i < pl->nyt; i++) {
		double y = round(map_y(b, pl, pl->yt[i])) + 0.5;
		cairo_move_to(cr, b->x0, y);
		cairo_line_to(cr, b->x1, y);
	}
	cairo_stroke(cr);
	cairo_set_source_rgb(cr, 0, 0, 0);
	cairo_rectangle(cr, b->x0, b->y0, b->x1 - b->x0, b->y1 - b->y0);
	cairo_stroke(cr);
	cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
	cairo_set_font_size(cr, 12);
	for (int i = 0; i < pl->nxt; i++) {
		double x = map_x(b, pl, pl->xt[i]);
		cairo_move_to(cr, x, b->y1);
		cairo_line_to(cr, x, b->y1 + 4);
		cairo_stroke(cr);
		ft_plot_tick_label(pl->xt[i], pl->xstep, buf, sizeof buf);
		text_at(cr, buf, x, b->y1 + 7, 0.5, 0);
	}
	for (int i = 0; i < pl->nyt; i++) {
		double y = map_y(b, pl, pl->yt[i]);
		cairo_move_to(cr, b->x0 - 4, y);
		cairo_line_to(cr, b->x0, y);
		cairo_stroke(cr);
		ft_plot_tick_label(pl->yt[i], pl->ystep, buf, sizeof buf);
		text_at(cr, buf, b->x0 - 7, y, 1, 0.5);
	}
	cairo_set_font_size(cr, 13);
	text_at(cr, xlabel, (b->x0 + b->x1) / 2, b->y1 + 24, 0.5, 0);
	cairo_save(cr);
	cairo_translate(cr, b->x0 - 62, (b->y0 + b->y1) / 2);
	cairo_rotate(cr, -M_PI / 2);
	text_at(cr, ylabel, 0, 0, 0.5, 0.5);
	cairo_restore(cr);
	if (title) {
		/* a long output dir: shrink the title to fit the figure */
		cairo_text_extents_t e;
		cairo_set_font_size(cr, 14);
		cairo_text_extents(cr, title, &e);
		double w = b->x1 / 0.9, mid = (b->x0 + b->x1) / 2;   /* axes end at 90% */
		double room = 0.96 * 2 * fmin(mid, w - mid);
		if (e.width > room) cairo_set_font_size(cr, fmax(6, 14 * room / e.width));
		text_at(cr, title, (b->x0 + b->x1) / 2, b->y0 - 8, 0.5, 1);
	}
}

static void legend(cairo_t *cr, const box *b, const ft_plot_spec *p)
{
	int single = p->nruns == 1 && p->smooth;
	size_t n = single ? 2 : p->nruns;
	if (n == 0) return;
	cairo_set_font_size(cr, 12);
	double w = 0;
	for (size_t i = 0; i < n; i++) {
		const char *s = single ? (i ? "smoothed" : "original") : p->runs[i]->label;
		cairo_text_extents_t e;
		cairo_text_extents(cr, s, &e);
		w = fmax(w, e.x_advance);
	}
	double lh = 18, bw = w + 44, bh = lh * n + 8;
	double x = b->x1 - bw - 8, y = b->y0 + 8;
	cairo_set_source_rgba(cr, 1, 1, 1, 0.8);
	cairo_rectangle(cr, x, y, bw, bh);
	cairo_fill_preserve(cr);
	cairo_set_source_rgb(cr, 0.8, 0.8, 0.8);
	cairo_set_line_width(cr, 1);
	cairo_stroke(cr);
	cairo_set_line_width(cr, 1.5);
	for (size_t i = 0; i < n; i++) {
		double yy = y + 4 + lh * (i + 0.5);
		set_color(cr, single ? 0 : i, single && i == 0 ? 0.4 : 1);
		cairo_move_to(cr, x + 6, yy);
		cairo_line_to(cr, x + 30, yy);
		cairo_stroke(cr);
		cairo_set_source_rgb(cr, 0, 0, 0);
		text_at(cr, single ? (i ? "smoothed" : "original") : p->runs[i]->label,
			x + 36, yy, 0, 0.5);
	}
}

static void panel(cairo_t *cr, const ft_plot_spec *p, size_t k, double top, double w, double h)
{
	ft_plot_panel pl;
	ft_plot_panel_layout(p, k, 10, 8, &pl);
	box b = { round(0.125 * w), top + round(0.12 * h), round(0.9 * w), top + round(0.89 * h) };
	axes(cr, &b, &pl, p->xlabel ? p->xlabel : "step", p->keys[k], k == 0 ? p->title : NULL);
	cairo_save(cr);
	cairo_rectangle(cr, b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
	cairo_clip(cr);
	cairo_set_line_width(cr, 1.5);
	cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
	for (size_t r = 0; r < p->nruns; r++) {
		const ft_series *s = ft_plot_run_series(p->runs[r], p->keys[k]);
		if (!s || s->n == 0) continue;
		set_color(cr, r, p->smooth ? 0.4 : 1);
		curve(cr, &b, &pl, s->x, s->y, s->n);
		if (!p->smooth) continue;
		double *sm = ft_xmalloc(s->n * sizeof *sm);
		ft_plot_smooth(s->y, s->n, sm);
		set_color(cr, r, 1);
		curve(cr, &b, &pl, s->x, sm, s->n);
		free(sm);
	}
	cairo_restore(cr);
	legend(cr, &b, p);
}

static void draw(cairo_t *cr, const ft_plot_spec *p, double w, double ph)
{
	cairo_set_source_rgb(cr, 1, 1, 1);
	cairo_paint(cr);
	for (size_t k = 0; k < p->nkeys; k++) panel(cr, p, k, k * ph, w, ph);
}

static cairo_status_t write_fp(void *closure, const unsigned char *data, unsigned int len)
{
	return fwrite(data, 1, len, closure) == len ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

static const char *ext_of(const char *path)
{
	const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
	return dot && (!slash || dot > slash) ? dot + 1 : "";
}

int ft_plot_format(const char *name)
{
	const char *ext = ext_of(name);
	if (!*ext) ext = name;   /* a bare format name: "svg" */
	return !strcasecmp(ext, "png") ? FT_PLOT_PNG : !strcasecmp(ext, "svg") ? FT_PLOT_SVG
	       : !strcasecmp(ext, "pdf") ? FT_PLOT_PDF : -1;
}

int ft_plot_render_fp(const ft_plot_spec *p, FILE *fp, int format)
{
	if (p->nkeys == 0) return ft_fail("nothing to plot (no keys)");
	double w = p->width > 0 ? p->width : 640;
	double ph = p->height > 0 ? p->height : 480;
	double h = ph * p->nkeys;
	cairo_surface_t *sf;
	if (format == FT_PLOT_PNG) sf = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, (int)w, (int)h);
	else if (format == FT_PLOT_SVG) sf = cairo_svg_surface_create_for_stream(write_fp, fp, w, h);
	else sf = cairo_pdf_surface_create_for_stream(write_fp, fp, w, h);
	cairo_t *cr = cairo_create(sf);
	draw(cr, p, w, ph);
	cairo_status_t st = cairo_status(cr);
	cairo_destroy(cr);
	if (format == FT_PLOT_PNG && st == CAIRO_STATUS_SUCCESS)
		st = cairo_surface_write_to_png_stream(sf, write_fp, fp);
	cairo_surface_finish(sf);
	if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(sf);
	cairo_surface_destroy(sf);
	if (st != CAIRO_STATUS_SUCCESS) return ft_fail("cairo: %s", cairo_status_to_string(st));
	return 0;
}

int ft_plot_render_file(const ft_plot_spec *p, const char *path)
{
	int format = ft_plot_format(path);
	if (format < 0)
		return ft_fail("%s: unknown image format '.%s' (use .png, .svg or .pdf)", path, ext_of(path));
	ft_atomic a;
	if (ft_atomic_open(&a, path) < 0) return -1;
	if (ft_plot_render_fp(p, a.fp, format) < 0) {
		ft_atomic_abort(&a);
		return ft_fail_ctx("%s: ", path);
	}
	return ft_atomic_commit(&a);
}

void ft_plot_cleanup(void)
{
	cairo_debug_reset_static_data();
	/* fontconfig is cairo's dependency, not ours: find it if loaded */
	void (*fc_fini)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "FcFini");
	if (fc_fini) fc_fini();
}
