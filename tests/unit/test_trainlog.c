/* test_trainlog.c - trainer_log.jsonl format and reader */
#include "tap.h"
#include "format/trainlog.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/trainer/"

static void test_format_roundtrip(void)
{
	ft_trainlog_entry e, f;
	ft_trainlog_entry_init(&e);
	e.current_steps = 10; e.total_steps = 30;
	e.loss = 2.123456789012345; e.lr = 1e-05; e.epoch = 1.0 / 3.0;
	e.percentage = 33.33; e.throughput = 1234.5; e.total_tokens = 999;
	ft_trainlog_timedelta(65.9, e.elapsed_time);
	ft_trainlog_timedelta(90061, e.remaining_time);
	char *s = ft_trainlog_format(&e);
	ok(strncmp(s, "{\"current_steps\": 10, \"total_steps\": 30, \"loss\": 2.123456789012345, "
		   "\"lr\": 1e-05, \"epoch\": 0.3333333333333333, \"percentage\": 33.33, "
		   "\"elapsed_time\": \"0:01:05\", \"remaining_time\": \"1 day, 1:01:01\"", 150) == 0,
	   "format: LLaMA-Factory field order, shortest numbers, timedelta strings (%s)", s);
	ok(!strstr(s, "eval_loss") && s[strlen(s) - 1] == '\n', "absent fields left out, one line");
	ok(ft_trainlog_parse(s, strlen(s), &f) == 0 && f.current_steps == 10 && f.loss == e.loss &&
	   f.epoch == e.epoch && f.lr == e.lr && f.total_tokens == 999 && isnan(f.eval_loss) &&
	   strcmp(f.remaining_time, "1 day, 1:01:01") == 0, "parse(format(e)) == e exactly");
	free(s);
	e.percentage = 100;
	s = ft_trainlog_format(&e);
	ok(strstr(s, "\"percentage\": 100.0") != NULL, "integral floats keep .0 as Python writes them");
	free(s);
	char b[32];
	ft_trainlog_timedelta(2 * 86400 + 5, b);
	ok(strcmp(b, "2 days, 0:00:05") == 0, "timedelta plural days: %s", b);
}

static void test_parse_errors(void)
{
	ft_trainlog_entry e;
	ok(ft_trainlog_parse("[1]", 3, &e) < 0 && strstr(ft_errmsg(), "not a JSON object"), "array refused");
	ok(ft_trainlog_parse("{\"loss\": \"x\"}", 13, &e) < 0 && strstr(ft_errmsg(), "'loss'"),
	   "wrong type names the field: %s", ft_errmsg());
	ok(ft_trainlog_parse("{\"foo\": 1}", 10, &e) < 0, "object without any trainer field refused");
	ok(ft_trainlog_parse("{\"loss\": 1.5", 12, &e) < 0, "truncated line refused");
}

static void test_reader(void)
{
	ft_trainlog_entry *v;
	size_t n;
	long skipped;
	ok(ft_trainlog_read_all(FIX "trainer_log.jsonl", &v, &n, &skipped) == 0 && n == 6 && skipped == 0,
	   "sample log: 6 entries, none skipped");
	ok(n == 6 && v[2].current_steps == 10 && v[2].eval_loss == 2.2 && isnan(v[2].loss) &&
	   v[4].loss == 1.8 && v[4].percentage == 100.0 && v[5].total_tokens == 16384,
	   "sample log fields");
	free(v);

	ft_trainlog_reader *r = ft_trainlog_open(FIX "trainer_log_bad.jsonl");
	ok(r != NULL, "open bad log");
	ft_trainlog_entry e;
	int got = 0, rc;
	long lines[4];
	while ((rc = ft_trainlog_next(r, &e)) == 1) lines[got < 4 ? got : 3] = ft_trainlog_line(r), got++;
	ok(rc == 0 && got == 2 && lines[0] == 1 && lines[1] == 6, "bad log: the 2 good lines (1, 6)");
	ok(ft_trainlog_skipped(r) == 4, "4 bad lines skipped (blank line not counted): %ld",
	   ft_trainlog_skipped(r));
	const char *bad = ft_trainlog_first_bad(r);
	ok(bad && strstr(bad, "trainer_log_bad.jsonl:2:"), "first bad line named: %s", bad ? bad : "(null)");
	ft_trainlog_close(r);
	ok(ft_trainlog_open(FIX "no-such.jsonl") == NULL && strstr(ft_errmsg(), "no-such"), "missing file");
}

static void test_fields_and_follow(void)
{
	ft_trainlog_entry e;
	ft_trainlog_field f[3] = { { .key = "step" }, { .key = "learning_rate" }, { .key = "nope" } };
	const char *l = "{\"step\": 3, \"learning_rate\": null, \"loss\": 1.5}";
	ok(ft_trainlog_parse_fields(l, strlen(l), &e, f, 3) == 0 && f[0].present && f[0].value == 3 &&
	   f[1].present && isnan(f[1].value) && !f[2].present && isnan(f[2].value) && e.loss == 1.5,
	   "fields: a number, a null (present, NAN), an absent key");

	char path[] = "/tmp/ft-trainlog-test-XXXXXX";
	int fd = mkstemp(path);
	FILE *w = fdopen(fd, "w");
	fputs("{\"current_steps\": 1, \"loss\": 2.0}\n{\"loss\": 1.0}\n{\"current_steps\": 3, \"lo", w);
	fflush(w);
	ft_trainlog_reader *r = ft_trainlog_open(path);
	int n = 0;
	while (ft_trainlog_poll(r, 0, &e) == 1)
		if (n++ == 1) ft_trainlog_reject(r, "no step");
	ok(n == 2 && ft_trainlog_skipped(r) == 1 && strstr(ft_trainlog_first_bad(r), ":2: no step"),
	   "poll: 2 entries, the partial line held back, a rejected entry counted: %s",
	   ft_trainlog_first_bad(r) ? ft_trainlog_first_bad(r) : "(null)");
	fputs("ss\": 0.5}\n", w);
	fflush(w);
	ok(ft_trainlog_poll(r, 0, &e) == 1 && e.current_steps == 3 && e.loss == 0.5 &&
	   ft_trainlog_poll(r, 0, &e) == 0, "poll: the line completes");
	if (ftruncate(fd, 0) == 0) {
		rewind(w);
		fputs("{\"current_steps\": 1, \"loss\": 9.0}\n", w);
		fflush(w);
	}
	ok(ft_trainlog_poll(r, 0, &e) == FT_TRAINLOG_RESTART && ft_trainlog_skipped(r) == 0 &&
	   ft_trainlog_poll(r, 0, &e) == 1 && e.loss == 9.0 && ft_trainlog_line(r) == 1,
	   "poll: a shorter log restarts from its first line");
	ft_trainlog_close(r);
	fclose(w);
	unlink(path);
}

int main(void)
{
	test_format_roundtrip();
	test_parse_errors();
	test_reader();
	test_fields_and_follow();
	return tap_done();
}
