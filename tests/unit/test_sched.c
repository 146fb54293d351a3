/* test_sched.c - LR schedules against transformers.get_scheduler values
 * (tests/fixtures/trainer/sched.txt, made by make_trainer_fixtures.py).
 * Tolerance: exact (same double formulas as Python); a 1-ulp libm cos
 * difference is allowed and reported. */
#define _GNU_SOURCE
#include "tap.h"
#include "train/lr_sched.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int close_ulp(double a, double b)
{
	if (a == b) return 1;
	return fabs(a - b) <= 2 * fmax(fabs(nextafter(a, INFINITY) - a), 1e-300);
}

int main(void)
{
	FILE *f = fopen("tests/fixtures/trainer/sched.txt", "r");
	if (!ok(f != NULL, "open sched.txt")) return tap_done();
	char *line = NULL;
	size_t cap = 0;
	int ncases = 0, nbad = 0, nexact = 0, nvals = 0, nwarm = 0, nwarm_bad = 0;
	while (getline(&line, &cap, f) > 0) {
		char *save, *tok = strtok_r(line, " \n", &save);
		if (strcmp(tok, "warmup") == 0) {
			double w = strtod(strtok_r(NULL, " \n", &save), NULL);
			long long total = atoll(strtok_r(NULL, " \n", &save));
			long long want = atoll(strtok_r(NULL, " \n", &save));
			nwarm++;
			if (ft_sched_warmup_steps(w, total) != want) {
				nwarm_bad++;
				printf("# warmup %g of %lld: got %lld want %lld\n", w, total,
				       (long long)ft_sched_warmup_steps(w, total), want);
			}
			continue;
		}
		ft_sched_type t;
		if (ft_sched_parse(tok, &t) != 0) {
			ok(0, "parse %s", tok);
			continue;
		}
		double lr = strtod(strtok_r(NULL, " \n", &save), NULL);
		int64_t warm = atoll(strtok_r(NULL, " \n", &save));
		int64_t total = atoll(strtok_r(NULL, " \n", &save));
		ft_sched s;
		ft_sched_init(&s, t, lr, warm, total);
		ncases++;
		for (int64_t k = 0; (tok = strtok_r(NULL, " \n", &save)); k++) {
			double want = strtod(tok, NULL), got = ft_sched_lr(&s, k);
			nvals++;
			if (got == want) nexact++;
			if (!close_ulp(got, want)) {
				if (nbad++ < 5)
					printf("# %s lr=%g warmup=%lld total=%lld step %lld: got %.17g want %.17g\n",
					       tok, lr, (long long)warm, (long long)total, (long long)k, got, want);
			}
		}
	}
	free(line);
	fclose(f);
	ok(ncases >= 90, "%d schedule cases read (7 types x 2 lr x 7 shapes, less polynomial's /0)", ncases);
	ok(nbad == 0, "every lr within 2 ulp of transformers (%d of %d bit-identical)", nexact, nvals);
	ok(nexact == nvals, "every lr bit-identical to transformers (%d of %d)", nexact, nvals);
	ok(nwarm == 5 && nwarm_bad == 0, "warmup steps/ratio as TrainingArguments.get_warmup_steps");

	ft_sched_type t;
	ok(ft_sched_parse("cosine_with_restarts", &t) == 0 && t == FT_SCHED_COSINE_RESTARTS &&
	   strcmp(ft_sched_name(t), "cosine_with_restarts") == 0, "names round-trip");
	int rc = ft_sched_parse("cosin", &t);
	ok(rc < 0 && strstr(ft_errmsg(), "cosine_with_restarts"),
	   "unknown name lists the accepted ones: %s", ft_errmsg());
	ft_sched s;
	ok(ft_sched_init(&s, FT_SCHED_POLYNOMIAL, 1e-8, 0, 10) < 0, "polynomial refuses lr <= lr_end");
	return tap_done();
}
