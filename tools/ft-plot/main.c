/* ft-plot - trainer_log.jsonl -> loss curves (PNG/SVG/PDF, or text on a
 * terminal).  Reading, smoothing and drawing are in lib/plot*.c. */
#define _GNU_SOURCE
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "plot/plot.h"

static void usage(FILE *fp)
{
	fprintf(fp,
"Usage: ft-plot [OPTION]... [LOG|DIR|-]...\n"
"Draw training curves from trainer_log.jsonl files (LLaMA-Factory's format,\n"
"as ft-train writes it): the raw values faint and LLaMA-Factory's smoothed\n"
"curve over them, one panel per key, several runs overlaid with a legend\n"
"named after each run's directory.  A DIR means DIR/trainer_log.jsonl;\n"
"no operand or '-' reads stdin.\n"
"\n"
"  -k, --keys K1,K2,...   values to plot, each in its own panel (default: loss)\n"
"                         e.g. loss,eval_loss,lr,grad_norm,epoch\n"
"  -o, --output FILE      write FILE.png, FILE.svg or FILE.pdf (cairo); '-' is\n"
"                         stdout, in --format\n"
"      --format FMT       png, svg or pdf for '-o -' (default svg)\n"
"      --ascii            text plot (the default without -o); with -o, the\n"
"                         text goes to FILE\n"
"      --title TEXT       figure title (default: the run's directory)\n"
"      --no_smooth        raw values only\n"
"      --width N          pixels (default 640) or columns (default: terminal)\n"
"      --height N         pixels per panel (default 480) or rows per panel\n"
"      --follow           redraw while the logs grow, until interrupted (^C);\n"
"                         waits for logs not written yet, starts over when a\n"
"                         new run replaces a log\n"
"      --interval SEC     --follow polling period (default 2)\n"
"  -f, --force            write PNG/PDF to a terminal anyway\n"
"  -q, --quiet            no warning about skipped lines\n"
"  -h, --help             this help\n"
"\n"
"Lines that are not JSON objects with a current_steps field (a partial\n"
"last line while training writes, garbage) are skipped and counted.\n"
"\n"
"EXIT STATUS\n"
"  0  plotted (or --follow interrupted)\n"
"  1  a log cannot be read, no values for any key, or the output cannot be written\n"
"  2  usage error\n"
"\n"
"Example:\n"
"  ft-train sft_lora.yaml output_dir=out/lora &\n"
"  ft-plot --follow out/lora                      # text plot over ssh\n"
"  ft-plot -k loss,eval_loss -o cmp.png out/lora out/lora-r16\n");
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

typedef struct {
	ft_plot_spec spec;
	const char *output;
	int format, ascii, quiet, tty;
} plot_job;

static int terminal_size(int *cols, int *rows)
{
	struct winsize ws;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
		*cols = ws.ws_col;
		*rows = ws.ws_row;
		return 0;
	}
	const char *c = getenv("COLUMNS");
	if (c && atoi(c) > 0) *cols = atoi(c);
	return -1;
}

static void draw_ascii(plot_job *j, FILE *out, int clear)
{
	ft_plot_spec s = j->spec;
	int cols = 80, rows = 0;
	terminal_size(&cols, &rows);
	if (!s.width) s.width = cols > 1 ? cols - 1 : 80;
	if (!s.height && rows > 0) {
		int h = (rows - 1) / (int)(s.nkeys ? s.nkeys : 1);
		s.height = h < 8 ? 8 : h > 30 ? 30 : h;
	}
	char *text = ft_plot_render_ascii(&s);
	if (clear) fputs("\033[H\033[2J", out);
	fputs(text, out);
	fflush(out);
	free(text);
}

static void draw(plot_job *j)
{
	if (j->ascii && (!j->output || ft_is_stdio(j->output))) {
		draw_ascii(j, stdout, j->tty > 1);
		return;
	}
	if (j->ascii) {
		ft_atomic a;
		if (ft_atomic_open(&a, j->output) < 0) die_lib();
		draw_ascii(j, a.fp, 0);
		if (ft_atomic_commit(&a) < 0) die_lib();
		return;
	}
	if (ft_is_stdio(j->output)) {
		if (ft_plot_render_fp(&j->spec, stdout, j->format) < 0) die_lib();
		if (fflush(stdout) != 0) die("<stdout>:");
		return;
	}
	if (ft_plot_render_file(&j->spec, j->output) < 0) die_lib();
}

static void report_bad(plot_job *j)
{
	for (size_t r = 0; r < j->spec.nruns; r++) {
		ft_plot_run *run = j->spec.runs[r];
		if (run->nbad && !j->quiet)
			warn("%s: skipped %ld bad line%s (first: %s)", run->path, run->nbad,
			     run->nbad == 1 ? "" : "s", run->first_bad);
	}
}

static int has_values(const plot_job *j)
{
	for (size_t r = 0; r < j->spec.nruns; r++)
		for (size_t k = 0; k < j->spec.nkeys; k++)
			if (ft_plot_run_series(j->spec.runs[r], j->spec.keys[k])->n) return 1;
	return 0;
}

static void sleep_interruptible(double seconds)
{
	for (double t = 0; t < seconds && !interrupted; t += 0.05)
		nanosleep(&(struct timespec){ 0, 50000000 }, NULL);
}

static int log_exists(const char *path)
{
	struct stat st;
	if (ft_is_stdio(path)) return 1;
	if (stat(path, &st) != 0) return 0;
	if (!S_ISDIR(st.st_mode)) return 1;
	char *f = ft_xasprintf("%s/trainer_log.jsonl", path);
	int ok = stat(f, &st) == 0;
	free(f);
	return ok;
}

/* --follow may start before the trainer has created its log: wait for it
 * (a missing directory or file), say so once. */
static ft_plot_run *wait_for_log(const char *path, const char *const *keys, size_t nkeys, double interval,
				 int quiet)
{
	int said = 0;
	for (;;) {
		if (log_exists(path)) return ft_plot_run_open(path, keys, nkeys);
		if (!said++ && !quiet) warn("waiting for %s to appear", path);
		sleep_interruptible(interval);
		if (interrupted) return NULL;
	}
}

static void follow(plot_job *j, double interval)
{
	int first = 1;
	while (!interrupted) {
		long fresh = 0;
		for (size_t r = 0; r < j->spec.nruns; r++) {
			long n = ft_plot_run_poll(j->spec.runs[r], 0);
			if (n < 0) die_lib();
			fresh += n;
		}
		if (first || fresh) draw(j);
		first = 0;
		sleep_interruptible(interval);   /* short slices: ^C answered at once */
	}
}

/* "training of DIR" with DIR the output dir as given, as LLaMA-Factory
 * titles its figures ("training loss of saves/llama3/lora/sft"). */
static char *run_title(const char *path)
{
	struct stat st;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return ft_xasprintf("training of %s", path);
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (!strcmp(base, "trainer_log.jsonl") && slash && slash > path)
		return ft_xasprintf("training of %.*s", (int)(slash - path), path);
	return ft_xasprintf("training of %s", base);
}

/* Two runs named alike (a/lora, b/lora): their legends show the paths
 * as given instead. */
static void unique_labels(ft_plot_run **runs, size_t n, char **paths)
{
	int *dup = ft_xcalloc(n, sizeof *dup);
	for (size_t a = 0; a < n; a++)
		for (size_t b = 0; b < n; b++) dup[a] |= a != b && !strcmp(runs[a]->label, runs[b]->label);
	for (size_t a = 0; a < n; a++) {
		if (!dup[a] || ft_is_stdio(paths[a])) continue;
		char *t = run_title(paths[a]);   /* "training of PATH" */
		free(runs[a]->label);
		runs[a]->label = ft_xstrdup(t + strlen("training of "));
		free(t);
	}
	free(dup);
}

static size_t split_keys(char *s, const char ***out)
{
	size_t n = 0;
	const char **keys = NULL;
	for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
		while (*tok == ' ') tok++;
		if (!*tok) continue;
		keys = ft_xrealloc(keys, (n + 1) * sizeof *keys);
		keys[n++] = tok;
	}
	*out = keys;
	return n;
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	enum { O_FORMAT = 256, O_ASCII, O_TITLE, O_NOSMOOTH, O_WIDTH, O_HEIGHT, O_FOLLOW, O_INTERVAL };
	static const struct option opts[] = {
		{ "keys", required_argument, 0, 'k' },
		{ "output", required_argument, 0, 'o' },
		{ "format", required_argument, 0, O_FORMAT },
		{ "ascii", no_argument, 0, O_ASCII },
		{ "title", required_argument, 0, O_TITLE },
		{ "no_smooth", no_argument, 0, O_NOSMOOTH },
		{ "width", required_argument, 0, O_WIDTH },
		{ "height", required_argument, 0, O_HEIGHT },
		{ "follow", no_argument, 0, O_FOLLOW },
		{ "interval", required_argument, 0, O_INTERVAL },
		{ "force", no_argument, 0, 'f' },
		{ "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	char *keyarg = ft_xstrdup("loss");
	const char *format = NULL, *title = NULL;
	int follow_mode = 0, force = 0;
	double interval = 2;
	plot_job j = { .spec = { .smooth = 1, .xlabel = "step" } };
	int c;
	while ((c = getopt_long(argc, argv, "k:o:fqh", opts, NULL)) != -1) {
		switch (c) {
		case 'k': free(keyarg); keyarg = ft_xstrdup(optarg); break;
		case 'o': j.output = optarg; break;
		case O_FORMAT: format = optarg; break;
		case O_ASCII: j.ascii = 1; break;
		case O_TITLE: title = optarg; break;
		case O_NOSMOOTH: j.spec.smooth = 0; break;
		case O_WIDTH: j.spec.width = (int)ft_parse_int("--width", optarg); break;
		case O_HEIGHT: j.spec.height = (int)ft_parse_int("--height", optarg); break;
		case O_FOLLOW: follow_mode = 1; break;
		case O_INTERVAL: interval = ft_parse_double("--interval", optarg); break;
		case 'f': force = 1; break;
		case 'q': j.quiet = 1; break;
		case 'h': usage(stdout); return 0;
		default: die_usage("unknown option");
		}
	}
	if (j.spec.width < 0 || j.spec.height < 0 || j.spec.width > 20000 || j.spec.height > 20000)
		die_usage("--width and --height must be between 1 and 20000");
	if (!(interval > 0)) die_usage("--interval must be positive");
	const char **keys;
	char *keylist = ft_xstrdup(keyarg);   /* for messages: split_keys cuts keyarg */
	j.spec.nkeys = split_keys(keyarg, &keys);
	j.spec.keys = keys;
	if (j.spec.nkeys == 0) die_usage("--keys is empty");
	if (j.spec.nkeys > 16) die_usage("at most 16 --keys");

	if (follow_mode) {
		struct sigaction sa = { .sa_handler = on_sigint };
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
	}
	j.tty = isatty(STDOUT_FILENO);
	if (!j.output) j.ascii = 1;   /* no image file asked for: text */
	if (j.output && !j.ascii) {
		const char *f = ft_is_stdio(j.output) ? (format ? format : "svg") : j.output;
		if (format && !ft_is_stdio(j.output)) f = format;
		j.format = ft_plot_format(f);
		if (j.format < 0)
			die_usage("unknown image format for '%s' (use .png, .svg or .pdf, or --ascii)", f);
		if (ft_is_stdio(j.output) && j.format != FT_PLOT_SVG) ft_check_binary_output(stdout, force);
	}
	if (optind == argc && ft_stdin_is_terminal()) {
		usage(stderr);
		return FT_EXIT_USAGE;
	}

	size_t nruns = optind < argc ? (size_t)(argc - optind) : 1;
	ft_plot_run **runs = ft_xcalloc(nruns, sizeof *runs);
	int stdin_used = 0;
	for (size_t r = 0; r < nruns; r++) {
		const char *path = optind < argc ? argv[optind + r] : "-";
		if (ft_is_stdio(path) && stdin_used++) die_usage("stdin ('-') given twice");
		runs[r] = follow_mode ? wait_for_log(path, keys, j.spec.nkeys, interval, j.quiet)
				      : ft_plot_run_open(path, keys, j.spec.nkeys);
		if (!runs[r]) {
			if (interrupted) return 0;
			die_lib();
		}
	}
	j.spec.runs = runs;
	j.spec.nruns = nruns;
	unique_labels(runs, nruns, argv + optind);
	/* the title: the run's directory, as LLaMA-Factory titles its figure */
	char *auto_title = NULL;
	if (title) j.spec.title = *title ? title : NULL;
	else if (nruns == 1 && strcmp(runs[0]->label, "<stdin>") != 0)
		j.spec.title = auto_title = run_title(argv[optind]);
	if (j.ascii && j.tty && follow_mode) j.tty = 2;   /* clear the screen between redraws */

	if (follow_mode) {
		follow(&j, interval);
	} else {
		for (size_t r = 0; r < nruns; r++)
			if (ft_plot_run_poll(runs[r], 1) < 0) die_lib();
		if (!has_values(&j)) {
			report_bad(&j);
			die("no values for %s in %s%s", keylist, ft_display_name(runs[0]->path),
			    nruns > 1 ? " and the other logs" : "");
		}
		draw(&j);
	}
	report_bad(&j);
	for (size_t r = 0; r < nruns; r++) ft_plot_run_free(runs[r]);
	free(runs);
	free(keys);
	free(keyarg);
	free(keylist);
	free(auto_title);
	ft_plot_cleanup();
	return 0;
}
