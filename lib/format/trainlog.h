/* trainlog.h - output_dir/trainer_log.jsonl: one JSON object per line, the
 * fields LLaMA-Factory's LogCallback writes (see docs/FORMAT.md section 4).
 *
 * Writer: ft-train appends one line per logging step, per evaluation and
 * one at the end.  Reader: ft-plot and tests parse lines into
 * ft_trainlog_entry; a line that is not a JSON object with the fields'
 * types is skipped and counted, so a log cut short by a crash still plots.
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
	char elapsed_time[32], remaining_time[32];  /* "H:MM:SS" ("" absent) */
} ft_trainlog_entry;
/* Every double above is NAN when the field is absent from the line. */

void ft_trainlog_entry_init(ft_trainlog_entry *e);

/* Parse one line (need not be NUL-terminated).  0 on success; -1 with a
 * message ("line is not a JSON object", "field 'loss' is not a number")
 * otherwise.  Unknown fields are ignored. */
int ft_trainlog_parse(const char *line, size_t len, ft_trainlog_entry *e);

/* Format one entry as a JSON line (with '\n') in LLaMA-Factory's field
 * order, numbers in the shortest form that reads back exactly.  Absent
 * fields are left out.  Returns a malloc'd string. */
char *ft_trainlog_format(const ft_trainlog_entry *e);
/* Append the formatted line to fp and flush: -1 with a message on error. */
int ft_trainlog_write(FILE *fp, const ft_trainlog_entry *e);

/* A double as Python's repr() writes it (shortest round-trip digits,
 * "1e-05", "100.0"); "null" for NaN/inf.  size >= 32. */
void ft_fmt_double_repr(char *buf, size_t size, double x);

/* Seconds as Python's str(timedelta(seconds=int(s))): "0:01:05",
 * "1 day, 2:03:04".  buf must hold 32 bytes. */
void ft_trainlog_timedelta(double seconds, char buf[32]);

/* Reading a whole log ("-" for stdin). */
typedef struct ft_trainlog_reader ft_trainlog_reader;
ft_trainlog_reader *ft_trainlog_open(const char *path);   /* NULL + message */
/* 1: *e filled; 0: end of file; -1: read error (message set).  Bad lines
 * are skipped and counted, never returned. */
int ft_trainlog_next(ft_trainlog_reader *r, ft_trainlog_entry *e);
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
