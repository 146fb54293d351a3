/* test_plot.c - ft-plot's library: smoothing against LLaMA-Factory,
 * ticks, the log reader (bad and partial lines), SVG structure, PNG
 * pixels, the text plot's shape, and ft_plot_loss_files(). */
#define _GNU_SOURCE
#include <cairo.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "plot/plot.h"

#define FIX "tests/fixtures/plot"

static void test_smooth(void)
{
	json_error_t err;
	json_t *cases = json_load_file(FIX "/smooth.json", 0, &err);
	ok(cases != NULL, "smooth.json loads");
	if (!cases) return;
	size_t i;
	json_t *c;
	json_array_foreach(cases, i, c) {
		json_t *in = json_object_get(c, "series"), *want = json_object_get(c, "smoothed");
		size_t n = json_array_size(in);
		double *y = malloc(n * sizeof *y), *out = malloc(n * sizeof *out);
		for (size_t k = 0; k < n; k++) y[k] = json_real_value(json_array_get(in, k));
		ft_plot_smooth(y, n, out);
		size_t same = 0;
		for (size_t k = 0; k < n; k++) same += out[k] == json_real_value(json_array_get(want, k));
		ok(same == n, "smooth(%zu values) bit-identical to llamafactory's smooth(): %zu/%zu", n, same, n);
		free(y);
		free(out);
	}
	json_decref(cases);
	double one = 3, o1;
	ft_plot_smooth(&one, 1, &o1);
	ok(o1 == 3, "a single value is its own smoothing");
}

static void test_ticks(void)
{
	double t[16], step;
	int n = ft_plot_ticks(0, 1, 6, t, &step);
	ok(n == 6 && step == 0.2 && t[0] == 0 && fabs(t[5] - 1) < 1e-12, "ticks [0,1] max 6: 0..1 by 0.2 (got %d, step %g)", n, step);
	n = ft_plot_ticks(0.93, 3.07, 8, t, &step);
	ok(n == 5 && step == 0.5 && t[0] == 1 && t[4] == 3, "ticks [0.93,3.07]: 1..3 by 0.5 (got %d, step %g)", n, step);
	n = ft_plot_ticks(-2.5, 61.5, 10, t, &step);
	ok(n == 7 && step == 10 && t[0] == 0 && t[6] == 60, "ticks [-2.5,61.5]: 0..60 by 10 (got %d, step %g)", n, step);
	n = ft_plot_ticks(0, 5.2e-5, 8, t, &step);
	ok(n == 6 && fabs(step - 1e-5) < 1e-20, "ticks of learning rates: step 1e-5 (got %d, %g)", n, step);
	int nice = 1;
	for (int k = 0; k < 200; k++) {
		double lo = -k * 0.37, hi = k * k * 1.3 + 0.01;
		n = ft_plot_ticks(lo, hi, 8, t, &step);
		double m = step / pow(10, floor(log10(step) + 1e-9));
		if (n < 2 || n > 8 || t[0] < lo - 1e-9 || t[n - 1] > hi + 1e-9 ||
		    !(fabs(m - 1) < 1e-9 || fabs(m - 2) < 1e-9 || fabs(m - 5) < 1e-9))
			nice = 0;
	}
	ok(nice, "200 ranges: 2..8 ticks inside the range, steps 1-2-5 x 10^k");
	char b[32];
	ft_plot_tick_label(0.30000000000000004, 0.1, b, sizeof b);
	ok(!strcmp(b, "0.3"), "label 0.3 with step 0.1: '%s'", b);
	ft_plot_tick_label(40, 10, b, sizeof b);
	ok(!strcmp(b, "40"), "label 40: '%s'", b);
	ft_plot_tick_label(2.5e-5, 5e-6, b, sizeof b);
	ok(!strcmp(b, "2.5e-05"), "label 2.5e-5: '%s'", b);
	double lo, hi;
	ft_plot_axis(2, 2, &lo, &hi);
	ok(lo < 2 && hi > 2, "flat series gets a non-empty range [%g, %g]", lo, hi);
}

static void test_reader(void)
{
	const char *keys[] = { "loss", "eval_loss", "lr" };
	ft_plot_run *r = ft_plot_run_open(FIX "/bad", keys, 3);
	ok(r != NULL, "open a directory holding trainer_log.jsonl");
	if (!r) return;
	ok(ft_plot_run_poll(r, 1) == 12, "12 good records read");
	ok(r->nbad == 4, "4 bad lines counted (garbage, array, string loss, partial): %ld", r->nbad);
	ok(r->first_bad && strstr(r->first_bad, "trainer_log.jsonl:4:"), "first bad line named: %s", r->first_bad);
	ok(ft_plot_run_series(r, "loss")->n == 12 && ft_plot_run_series(r, "lr")->n == 12, "loss and lr series of 12");
	ok(ft_plot_run_series(r, "nope") == NULL, "unknown key: no series");
	ok(!strcmp(r->label, "bad"), "label is the run directory: %s", r->label);
	ft_plot_run_free(r);

	/* a partial line is kept until its end arrives */
	char path[] = "/tmp/ft-plot-test-XXXXXX";
	int fd = mkstemp(path);
	FILE *w = fdopen(fd, "w");
	fputs("{\"current_steps\": 1, \"loss\": 2.0}\n{\"current_steps\": 2, \"lo", w);
	fflush(w);
	r = ft_plot_run_open(path, keys, 1);
	ok(ft_plot_run_poll(r, 0) == 1 && r->nbad == 0, "first poll: 1 record, partial line held back");
	fputs("ss\": 1.5}\n", w);
	fflush(w);
	ok(ft_plot_run_poll(r, 0) == 1 && r->nbad == 0 && r->s[0].n == 2 && r->s[0].y[1] == 1.5,
	   "second poll completes the line");
	ok(ft_plot_run_poll(r, 0) == 0, "nothing new: 0");
	/* a new run replaces the log with a shorter one: start over */
	if (ftruncate(fd, 0) == 0) {
		rewind(w);
		fputs("{\"current_steps\": 1, \"loss\": 9.0}\n", w);
		fflush(w);
	}
	ok(ft_plot_run_poll(r, 0) == 1 && r->s[0].n == 1 && r->s[0].y[0] == 9.0, "truncated log read again from the start");
	fclose(w);
	ft_plot_run_free(r);
	unlink(path);
	ok(ft_plot_run_open("/nonexistent/trainer_log.jsonl", keys, 1) == NULL &&
	   strstr(ft_errmsg(), "/nonexistent"), "missing file: error names it: %s", ft_errmsg());
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	rewind(f);
	char *s = malloc(n + 1);
	s[fread(s, 1, n, f)] = 0;
	fclose(f);
	return s;
}

/* Points of the SVG paths drawn with the curve style; returns count. */
static int svg_curves(const char *svg, double pts[][2], int max_pts, int *npts, int max_curves)
{
	int nc = 0;
	for (const char *p = svg; (p = strstr(p, "<path")) && nc < max_curves; p++) {
		const char *end = strstr(p, "/>");
		const char *style = strstr(p, "stroke-linejoin:round");
		if (!style || style > end) continue;
		const char *d = strstr(p, " d=\"") + 4;
		int k = 0;
		while (d < end && *d != '"') {
			char cmd;
			double x, y;
			int used;
			if (sscanf(d, " %c %lf %lf%n", &cmd, &x, &y, &used) != 3) break;
			if (k < max_pts) pts[nc * max_pts + k][0] = x, pts[nc * max_pts + k][1] = y;
			k++;
			d += used;
		}
		npts[nc++] = k;
	}
	return nc;
}

static void test_svg(ft_plot_run *run)
{
	const char *keys[] = { "loss" };
	ft_plot_spec p = { .title = "t", .nkeys = 1, .keys = keys, .nruns = 1, .runs = &run, .smooth = 1 };
	char path[] = "/tmp/ft-plot-test-XXXXXX.svg";
	close(mkstemps(path, 4));
	ok(ft_plot_render_file(&p, path) == 0, "render SVG");
	char *svg = slurp(path);
	ok(svg && strstr(svg, "<svg") && strstr(svg, "width=\"640\""), "an SVG 640 wide");
	static double pts[2 * 100][2];
	int npts[2] = { 0, 0 };
	int nc = svg_curves(svg, pts, 100, npts, 2);
	const ft_series *s = ft_plot_run_series(run, "loss");
	ok(nc == 2 && npts[0] == (int)s->n && npts[1] == (int)s->n,
	   "two curves (raw, smoothed) of %zu points each: %d curves, %d and %d", s->n, nc, npts[0], npts[1]);
	ok(strstr(svg, "d=\"M 80 58 L 576 58 L 576 427 L 80 427 Z") != NULL, "axes frame at matplotlib's place");
	ft_plot_panel pl;
	ft_plot_panel_layout(&p, 0, 10, 8, &pl);
	int inside = 1, increasing = 1;
	for (int k = 0; k < npts[0]; k++) {
		double x = pts[k][0], y = pts[k][1];
		if (x < 80 || x > 576 || y < 58 || y > 427) inside = 0;
		if (k && x <= pts[k - 1][0]) increasing = 0;
	}
	ok(inside && increasing, "points inside the axes, steps increasing");
	/* axis ranges: the first and last steps and the extreme losses land
	 * where the layout's view range puts them */
	double ymin = 1e9, ymax = -1e9;
	size_t imin = 0, imax = 0;
	for (size_t k = 0; k < s->n; k++) {
		if (s->y[k] < ymin) ymin = s->y[k], imin = k;
		if (s->y[k] > ymax) ymax = s->y[k], imax = k;
	}
	double x0 = 80 + (s->x[0] - pl.xlo) / (pl.xhi - pl.xlo) * 496;
	double yb = 427 - (ymin - pl.ylo) / (pl.yhi - pl.ylo) * 369;
	ok(fabs(pts[0][0] - x0) < 0.01 && fabs(pts[imin][1] - yb) < 0.01,
	   "x of step %g at %.2f, min loss at y %.2f", s->x[0], pts[0][0], pts[imin][1]);
	ok(fabs((pts[imax][1] - 58) - (427 - pts[imin][1])) < 1.0,
	   "5%% margins: max and min equally far from the frame");
	ok(pl.xlo < s->x[0] && pl.xhi > s->x[s->n - 1] && pl.ylo < ymin && pl.yhi > ymax, "view range covers the data");
	/* a tick mark per layout tick on each axis */
	int xt = 0, yt = 0;
	for (const char *q = svg; (q = strstr(q, " d=\"M ")); q++) {
		double a, b, c, d;
		if (sscanf(q, " d=\"M %lf %lf L %lf %lf \"", &a, &b, &c, &d) != 4) continue;
		if (a == c && b == 427 && d == 431) xt++;
		if (b == d && a == 76 && c == 80) yt++;
	}
	ok(xt == pl.nxt && yt == pl.nyt, "tick marks: %d x (layout %d), %d y (layout %d)", xt, pl.nxt, yt, pl.nyt);
	free(svg);
	unlink(path);
}

static void test_png(ft_plot_run *run)
{
	const char *keys[] = { "loss", "lr" };
	ft_plot_spec p = { .nkeys = 2, .keys = keys, .nruns = 1, .runs = &run, .smooth = 1 };
	char path[] = "/tmp/ft-plot-test-XXXXXX.png";
	close(mkstemps(path, 4));
	ok(ft_plot_render_file(&p, path) == 0, "render PNG with two panels");
	cairo_surface_t *s = cairo_image_surface_create_from_png(path);
	ok(cairo_surface_status(s) == CAIRO_STATUS_SUCCESS, "PNG decodes");
	int w = cairo_image_surface_get_width(s), h = cairo_image_surface_get_height(s);
	ok(w == 640 && h == 960, "size 640x960 (two 640x480 panels): %dx%d", w, h);
	unsigned char *d = cairo_image_surface_get_data(s);
	int stride = cairo_image_surface_get_stride(s);
	long blue = 0, bluish = 0, other = 0, margin_ink = 0;
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++) {
			uint32_t px = *(uint32_t *)(d + y * stride + 4 * x) & 0xffffff;
			int in_plot = x > 81 && x < 575 && ((y > 59 && y < 426) || (y > 539 && y < 906));
			int r = px >> 16, g = (px >> 8) & 255, b = px & 255;
			if (in_plot && px == 0x1f77b4) blue++;
			if (in_plot && b > r + 40 && b > g + 20) bluish++;
			if (in_plot && px != 0xffffff) other++;
			if (x > 600 && px != 0xffffff) margin_ink++;
		}
	ok(blue > 100 && bluish > 1000, "curves drawn in tab:blue: %ld exact, %ld bluish pixels", blue, bluish);
	ok(other > bluish, "raw curve and grid too: %ld non-white pixels", other);
	ok(margin_ink == 0, "right margin left white");
	cairo_surface_destroy(s);
	unlink(path);
	ok(ft_plot_render_file(&p, "/tmp/x.jpg") < 0 && strstr(ft_errmsg(), ".jpg"), "unknown extension refused: %s", ft_errmsg());
}

static void test_ascii(ft_plot_run *run)
{
	const char *keys[] = { "loss", "eval_loss" };
	ft_plot_spec p = { .title = "run_a", .nkeys = 2, .keys = keys, .nruns = 1, .runs = &run,
			   .smooth = 1, .width = 60, .height = 15 };
	char *t = ft_plot_render_ascii(&p);
	int lines = 0, widest = 0, cur = 0;
	for (const char *c = t; *c; c++) {
		if (*c == '\n') {
			lines++;
			if (cur > widest) widest = cur;
			cur = 0;
		} else {
			cur++;
		}
	}
	ok(lines == 30 && widest <= 60, "two panels of 15 lines, at most 60 columns: %d lines, widest %d", lines, widest);
	ok(strstr(t, "run_a: loss\n") && strstr(t, "\neval_loss\n"), "panel titles");
	ok(strchr(t, '*') && strchr(t, '.') && strstr(t, "* smoothed"), "raw '.', smoothed '*', legend");
	ok(strstr(t, "+----") != NULL, "x axis drawn");
	free(t);
}

static void test_loss_files(void)
{
	char dir[] = "/tmp/ft-plot-out-XXXXXX";
	ok(mkdtemp(dir) != NULL, "temp output dir");
	char *cmd = ft_xasprintf("cp " FIX "/run_a/trainer_log.jsonl %s/", dir);
	ok(system(cmd) == 0, "log copied");
	free(cmd);
	ok(ft_plot_loss_files(dir) == 2, "training_loss.png and training_eval_loss.png");
	char *a = ft_xasprintf("%s/training_loss.png", dir), *b = ft_xasprintf("%s/training_eval_loss.png", dir);
	cairo_surface_t *s = cairo_image_surface_create_from_png(a);
	ok(cairo_surface_status(s) == 0 && cairo_image_surface_get_width(s) == 640 &&
	   cairo_image_surface_get_height(s) == 480, "training_loss.png is 640x480 as LLaMA-Factory's");
	cairo_surface_destroy(s);
	ok(access(b, F_OK) == 0, "training_eval_loss.png written");
	unlink(a);
	unlink(b);
	free(a);
	free(b);
	cmd = ft_xasprintf("grep -v eval_loss " FIX "/run_a/trainer_log.jsonl > %s/trainer_log.jsonl", dir);
	ok(system(cmd) == 0, "log without eval");
	free(cmd);
	ok(ft_plot_loss_files(dir) == 1, "no eval_loss: only training_loss.png");
	cmd = ft_xasprintf("rm -rf %s", dir);
	ok(system(cmd) == 0, "cleaned");
	free(cmd);
	ok(ft_plot_loss_files("/nonexistent") < 0, "missing log: error");
}

int main(void)
{
	test_smooth();
	test_ticks();
	test_reader();
	const char *keys[] = { "loss", "eval_loss", "lr" };
	ft_plot_run *run = ft_plot_run_open(FIX "/run_a/trainer_log.jsonl", keys, 3);
	ok(run && ft_plot_run_poll(run, 1) == 66 && run->nbad == 0, "run_a: 60 train + 6 eval records");
	if (run) {
		test_svg(run);
		test_png(run);
		test_ascii(run);
	}
	ft_plot_run_free(run);
	test_loss_files();
	ft_plot_cleanup();
	return tap_done();
}
