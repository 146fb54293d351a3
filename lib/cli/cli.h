/* cli.h - what every tool's main() shares: messages, exit codes, option
 * spelling, stdin/stdout conventions, terminal rules and progress.
 *
 * This is the one module that prints and exits: it exists for main().
 * Exit status: 0 success, 1 data or runtime error, 2 usage error.
 */
#ifndef FT_CLI_H
#define FT_CLI_H

#include <stdint.h>
#include <stdio.h>
#include "util/error.h"

enum { FT_EXIT_OK = 0, FT_EXIT_DATA = 1, FT_EXIT_USAGE = 2 };

extern const char *ft_progname;
extern int ft_verbose;   /* 1 normal; -q lowers, -v raises */

/* Set the program name, restore default SIGPIPE (so `ft-cat x | head`
 * ends quietly), register the stdout flush check, and rewrite long
 * options so that --learning-rate and --learning_rate both match the
 * underscore spelling used in the getopt_long tables. */
void ft_cli_init(int argc, char **argv);

/* "prog: message"; a format ending in ':' appends strerror(errno). */
_Noreturn void die(const char *fmt, ...) FT_PRINTF(1, 2);
void warn(const char *fmt, ...) FT_PRINTF(1, 2);
/* Verbose-only note (shown when ft_verbose > 1). */
void note(const char *fmt, ...) FT_PRINTF(1, 2);
/* die() with the library's last message, after an optional context. */
_Noreturn void die_lib(void);
/* Usage error: message, "Try 'prog --help'", exit 2. */
_Noreturn void die_usage(const char *fmt, ...) FT_PRINTF(1, 2);

/* "-" or NULL is stdin/stdout; names for messages ("<stdin>"). */
int ft_is_stdio(const char *path);
const char *ft_display_name(const char *path);
FILE *ft_open_input(const char *path);   /* dies on failure */

/* Refuse to write a binary stream to a terminal unless forced. */
void ft_check_binary_output(FILE *out, int force);
/* A reader given no operand with a terminal on stdin prints usage. */
int ft_stdin_is_terminal(void);

/* Strict number parsing for option values: die_usage on junk. */
long long ft_parse_int(const char *opt, const char *s);
double ft_parse_double(const char *opt, const char *s);
int ft_parse_bool(const char *opt, const char *s);   /* true/false/1/0/yes/no */
/* A boolean long option declared optional_argument, as HfArgumentParser
 * takes it: "--flag", "--flag=false" or "--flag false" (the next word is
 * consumed only when it is a boolean literal).  Call from the getopt_long
 * loop with its argc/argv. */
int ft_optarg_bool(const char *opt, int argc, char **argv);
/* "2GB", "500MB", "1024", "10k": bytes (powers of 1000 as HF's export_size,
 * "GiB"/"MiB" for powers of 1024). */
uint64_t ft_parse_size(const char *opt, const char *s);

/* Progress on stderr only when it is a terminal (or FT_FORCE_PROGRESS=1
 * for tests), redrawn at most 5 times a second. */
int ft_progress_enabled(void);
void ft_progress(const char *fmt, ...) FT_PRINTF(1, 2);
void ft_progress_done(void);

#endif
