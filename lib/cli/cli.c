/* cli.c - see cli.h */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

const char *ft_progname = "ft";
int ft_verbose = 1;

static void close_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0) {
		fprintf(stderr, "%s: write error on stdout: %s\n", ft_progname,
			strerror(errno ? errno : EIO));
		_exit(FT_EXIT_DATA);
	}
}

/* --foo-bar[=x] -> --foo_bar[=x]: LLaMA-Factory users type either. */
static void underscore_long_option(char *arg)
{
	if (strncmp(arg, "--", 2) != 0 || arg[2] == 0) return;
	for (char *p = arg + 2; *p && *p != '='; p++)
		if (*p == '-') *p = '_';
}

void ft_cli_init(int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	ft_progname = slash ? slash + 1 : argv[0];
	signal(SIGPIPE, SIG_DFL);
	atexit(close_stdout);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) break;
		underscore_long_option(argv[i]);
	}
}

/* One write per line: the ranks of `mpirun -np N ft-train` share stderr,
 * and a line written in pieces interleaves with another rank's. */
static void vmessage(const char *fmt, va_list ap)
{
	int saved = errno;
	va_list aq;
	va_copy(aq, ap);
	int len = vsnprintf(NULL, 0, fmt, aq);
	va_end(aq);
	char *msg = ft_xmalloc(len > 0 ? (size_t)len + 1 : 1);
	if (len < 0 || vsnprintf(msg, (size_t)len + 1, fmt, ap) < 0) msg[0] = 0;
	size_t n = strlen(fmt);
	int colon = n && fmt[n - 1] == ':';
	char *line = ft_xasprintf("%s: %s%s%s\n", ft_progname, msg, colon ? " " : "",
				  colon ? strerror(saved) : "");
	fputs(line, stderr);
	free(line);
	free(msg);
}

void die(const char *fmt, ...)
{
	va_list ap;
	ft_progress_done();
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
	exit(FT_EXIT_DATA);
}

void warn(const char *fmt, ...)
{
	va_list ap;
	if (ft_verbose < 1) return;
	ft_progress_done();
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
}

void note(const char *fmt, ...)
{
	va_list ap;
	if (ft_verbose < 2) return;
	ft_progress_done();
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
}

void die_lib(void)
{
	die("%s", ft_errmsg());
}

void die_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", ft_progname);
	exit(FT_EXIT_USAGE);
}

int ft_is_stdio(const char *path)
{
	return !path || strcmp(path, "-") == 0;
}

const char *ft_display_name(const char *path)
{
	return ft_is_stdio(path) ? "<stdin>" : path;
}

FILE *ft_open_input(const char *path)
{
	if (ft_is_stdio(path)) return stdin;
	FILE *f = fopen(path, "rb");
	if (!f) die("%s:", path);
	return f;
}

void ft_check_binary_output(FILE *out, int force)
{
	if (!force && isatty(fileno(out)))
		die_usage("refusing to write binary data to a terminal (use -o FILE, a pipe, or -f)");
}

int ft_stdin_is_terminal(void)
{
	return isatty(STDIN_FILENO);
}

long long ft_parse_int(const char *opt, const char *s)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end)
		die_usage("--%s: '%s' is not an integer", opt, s);
	return v;
}

double ft_parse_double(const char *opt, const char *s)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v))
		die_usage("--%s: '%s' is not a number", opt, s);
	return v;
}

int ft_parse_bool(const char *opt, const char *s)
{
	if (!s) return 1;
	if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes")) return 1;
	if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no")) return 0;
	die_usage("--%s: '%s' is not true or false", opt, s);
}

static int is_bool_word(const char *s)
{
	static const char *const words[] = {"true", "false", "1", "0", "yes", "no"};
	for (size_t i = 0; i < sizeof words / sizeof *words; i++)
		if (!strcasecmp(s, words[i])) return 1;
	return 0;
}

int ft_optarg_bool(const char *opt, int argc, char **argv)
{
	if (optarg) return ft_parse_bool(opt, optarg);
	if (optind < argc && is_bool_word(argv[optind])) return ft_parse_bool(opt, argv[optind++]);
	return 1;
}

uint64_t ft_parse_size(const char *opt, const char *s)
{
	static const struct { const char *suffix; double mult; } units[] = {
		{"", 1}, {"b", 1}, {"k", 1e3}, {"kb", 1e3}, {"m", 1e6}, {"mb", 1e6},
		{"g", 1e9}, {"gb", 1e9}, {"t", 1e12}, {"tb", 1e12},
		{"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0},
	};
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0 || !isfinite(v)) goto bad;
	for (size_t i = 0; i < sizeof units / sizeof *units; i++)
		if (!strcasecmp(end, units[i].suffix))
			return (uint64_t)llround(v * units[i].mult);
bad:
	die_usage("--%s: '%s' is not a size (like 500MB, 2GB)", opt, s);
}

static int progress_shown;
static struct timespec progress_last;

int ft_progress_enabled(void)
{
	const char *force = getenv("FT_FORCE_PROGRESS");
	if (force && *force) return strcmp(force, "0") != 0;
	return ft_verbose >= 1 && isatty(STDERR_FILENO);
}

void ft_progress(const char *fmt, ...)
{
	if (!ft_progress_enabled()) return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double dt = (now.tv_sec - progress_last.tv_sec) + 1e-9 * (now.tv_nsec - progress_last.tv_nsec);
	if (progress_shown && dt < 0.2) return;
	progress_last = now;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\r%s: ", ft_progname);
	vfprintf(stderr, fmt, ap);
	fputs("\033[K", stderr);
	va_end(ap);
	progress_shown = 1;
}

void ft_progress_done(void)
{
	if (!progress_shown) return;
	fputc('\n', stderr);
	progress_shown = 0;
}
