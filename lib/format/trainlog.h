/* trainlog.h - output_dir/trainer_log.jsonl: one JSON object per line, the
 * fields LLaMA-Factory's LogCallback writes (see docs/FORMAT.md section 4).
 *
 * Writer: ft-train appends one line per logging step, per evaluation and
 * one at the end.  Reader: the one parser of these lines (ft-train's
 * resume, ft-plot, tests), into ft_trainlog_entry plus any other numeric
 * field a caller names; a line that is not a JSON object with the fields'
 * types is skipped and counted, so a log cut short by a crash still plots.
 * The reader can follow a log that a trainer is still writing.
 */
#ifndef FT_TRAINLOG_H
#define FT_TRAINLOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FT_TRAINLOG_NAME "trainer_log.jsonl"

typedef struct {
	int64_t current_steps, total_steps;   /* -1 when absent */
	double loss;          /* training loss averaged over the logging window */
	double eval_loss;
	double lr;            /* learning rate of the last step (before the
				 scheduler advanced), as HF logs it */
	double epoch;         /* fractional epoch */
	double percentage;    /* current_steps / total_steps * 100, 2 decimals */
	double throughput;    /* tokens/s since the start of this run */
	double grad_norm;     /* ft extension (HF log_history has it) */
	int64_t total_tokens; /* input tokens seen, -1 when absent */
	int64_t world_size;   /* ft extension: ranks of a data parallel run
				 (written only when > 1), -1 when absent */
	int64_t peak_memory_bytes;   /* ft extension: the GPU allocator's
				 high-water mark so far (device runs only), -1 absent */
	char elapsed_time[32], remaining_time[32];  /* "H:MM:SS" ("" absent) */
} ft_trainlog_entry;
/* Every double above is NAN when the field is absent from the line. */

void ft_trainlog_entry_init(ft_trainlog_entry *e);

/* Parse one line (need not be NUL-terminated).  0 on success; -1 with a
 * message ("line is not a JSON object", "field 'loss' is not a number")
 * otherwise.  Unknown fields are ignored. */
int ft_trainlog_parse(const char *line, size_t len, ft_trainlog_entry *e);

/* Fields beyond ft_trainlog_entry's, by name: ft-plot draws any numeric
 * field, and reads transformers' spellings ("step", "learning_rate"). */
typedef struct {
	const char *key;      /* set by the caller */
	int present;          /* the line has the key (null or any type counts) */
	double value;         /* its number; NAN when absent or not a number */
} ft_trainlog_field;
/* ft_trainlog_parse, also filling f[0..nf) when the line is good. */
int ft_trainlog_parse_fields(const char *line, size_t len, ft_trainlog_entry *e,
			     ft_trainlog_field *f, size_t nf);

/* Format one entry as a JSON line (with '\n') in LLaMA-Factory's field
 * order, numbers in the shortest form that reads back exactly.  Absent
 * fields are left out.  Returns a malloc'd string. */
char *ft_trainlog_format(const ft_trainlog_entry *e);
/* Append the formatted line to fp and flush: -1 with a message on error. */
int ft_trainlog_write(FILE *fp, const ft_trainlog_entry *e);
/* The same line followed by n more numeric fields keys[i]: vals[i] (the
 * preference stages' TRL metrics; lib/format/trainlog_extra.c). */
char *ft_trainlog_format_extra(const ft_trainlog_entry *e, const char *const *keys,
			       const double *vals, size_t n);
int ft_trainlog_write_extra(FILE *fp, const ft_trainlog_entry *e, const char *const *keys,
			    const double *vals, size_t n);

/* A double as Python's repr() writes it (shortest round-trip digits,
 * "1e-05", "100.0"); "null" for NaN/inf.  size >= 32. */
void ft_fmt_double_repr(char *buf, size_t size, double x);

/* Seconds as Python's str(timedelta(seconds=int(s))): "0:01:05",
 * "1 day, 2:03:04".  buf must hold 32 bytes. */
void ft_trainlog_timedelta(double seconds, char buf[32]);

/* Reading a log ("-" for stdin).  Bad lines are skipped and counted,
 * never returned; blank lines are neither. */
typedef struct ft_trainlog_reader ft_trainlog_reader;
ft_trainlog_reader *ft_trainlog_open(const char *path);   /* NULL + message */
/* Fill f[0..nf) for every entry read from now on (f stays the caller's). */
void ft_trainlog_set_fields(ft_trainlog_reader *r, ft_trainlog_field *f, size_t nf);
/* The whole file: 1: *e filled; 0: end of file (a last line without a
 * newline is still a line); -1: read error (message set). */
int ft_trainlog_next(ft_trainlog_reader *r, ft_trainlog_entry *e);
/* Following a log a trainer is still writing (ft-plot --follow): as
 * ft_trainlog_next, but 0 means nothing more for now: it never blocks
 * and keeps a last line without its newline for a later call.  `final`
 * (the writer is done) reads to the end as ft_trainlog_next does.  A
 * regular file that became shorter than what was read (a new run
 * replaced it) is read again from its start: FT_TRAINLOG_RESTART is
 * returned once, the line and skip counts start over, and the caller
 * drops what it kept of the old log. */
enum { FT_TRAINLOG_RESTART = 2 };
int ft_trainlog_poll(ft_trainlog_reader *r, int final, ft_trainlog_entry *e);
/* Count the entry just returned as a skipped line after all (a caller's
 * own rule, e.g. ft-plot needs a step); `why` goes into first_bad. */
void ft_trainlog_reject(ft_trainlog_reader *r, const char *why);
long ft_trainlog_line(const ft_trainlog_reader *r);      /* of the last entry */
long ft_trainlog_skipped(const ft_trainlog_reader *r);
/* "path:LINE: why" for the first skipped line, or NULL. */
const char *ft_trainlog_first_bad(const ft_trainlog_reader *r);
void ft_trainlog_close(ft_trainlog_reader *r);

/* Convenience: every good entry of a file.  *out is malloc'd (free it);
 * *skipped (may be NULL) gets the number of bad lines. */
int ft_trainlog_read_all(const char *path, ft_trainlog_entry **out, size_t *n,
			 long *skipped);

#endif
