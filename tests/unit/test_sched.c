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

/* sched_kwargs.txt (make_sched_kwargs_fixtures.py): the schedules with
 * lr_scheduler_kwargs, the same bound as sched.txt's */
static void test_kwargs(void)
{
	FILE *f = fopen("tests/fixtures/trainer/sched_kwargs.txt", "r");
	if (!ok(f != NULL, "open sched_kwargs.txt")) return;
	char *line = NULL;
	size_t cap = 0;
	int ncases = 0, nbad = 0, nexact = 0, nvals = 0, nfail = 0;
	while (getline(&line, &cap, f) > 0) {
		char *save, *tok = strtok_r(line, " \n", &save);
		ft_sched_type t;
		if (ft_sched_parse(tok, &t) != 0) { nfail++; continue; }
		double lr = strtod(strtok_r(NULL, " \n", &save), NULL);
		int64_t warm = atoll(strtok_r(NULL, " \n", &save));
		int64_t total = atoll(strtok_r(NULL, " \n", &save));
		const char *kw = strtok_r(NULL, " \n", &save);
		ft_sched s;
		if (ft_sched_init(&s, t, lr, warm, total) < 0 || ft_sched_kwargs(&s, kw) < 0) {
			printf("# %s %s: %s\n", ft_sched_name(t), kw, ft_errmsg());
			nfail++;
			continue;
		}
		ncases++;
		for (int64_t k = 0; (tok = strtok_r(NULL, " \n", &save)); k++) {
			double want = strtod(tok, NULL), got = ft_sched_lr(&s, k);
			nvals++;
			nexact += got == want;
			if (!close_ulp(got, want) && nbad++ < 5)
				printf("# %s %s warmup=%lld total=%lld step %lld: got %.17g want %.17g\n",
				       ft_sched_name(t), kw, (long long)warm, (long long)total, (long long)k,
				       got, want);
		}
	}
	free(line);
	fclose(f);
	ok(ncases == 66 && nfail == 0, "%d schedules with kwargs read (%d refused)", ncases, nfail);
	ok(nbad == 0, "every lr within 2 ulp of transformers (%d of %d bit-identical)", nexact, nvals);

	ft_sched s;
	ft_sched_init(&s, FT_SCHED_COSINE_MIN_LR, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, NULL) < 0 && strstr(ft_errmsg(), "One of min_lr or min_lr_rate"),
	   "cosine_with_min_lr without its rate refused as transformers: %s", ft_errmsg());
	ft_sched_init(&s, FT_SCHED_COSINE_MIN_LR, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, "{min_lr: 1e-5, min_lr_rate: 0.1}") < 0 && strstr(ft_errmsg(), "Only one"),
	   "both min_lr and min_lr_rate refused: %s", ft_errmsg());
	ft_sched_init(&s, FT_SCHED_COSINE, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, "{min_lr_rate: 0.1}") < 0 && strstr(ft_errmsg(), "takes no argument 'min_lr_rate'"),
	   "an argument the schedule does not take refused: %s", ft_errmsg());
	ft_sched_init(&s, FT_SCHED_WSD, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, "{}") < 0 && strstr(ft_errmsg(), "num_decay_steps"),
	   "warmup_stable_decay without num_decay_steps refused: %s", ft_errmsg());
	ft_sched_init(&s, FT_SCHED_WSD, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, "{\"num_decay_steps\": 2, \"decay_type\": \"square\"}") < 0 &&
	   strstr(ft_errmsg(), "Unknown decay type: square"), "an unknown decay type refused: %s", ft_errmsg());
	ft_sched_init(&s, FT_SCHED_COSINE, 1e-3, 0, 10);
	ok(ft_sched_kwargs(&s, "{num_cycles: x}") < 0 && ft_sched_kwargs(&s, "num_cycles") < 0,
	   "a value that is not a number, and text that is not a mapping, refused");
	ok(ft_sched_parse("reduce_lr_on_plateau", &s.type) < 0 && strstr(ft_errmsg(), "not implemented"),
	   "reduce_lr_on_plateau: not implemented, said so");
}

int main(void)
{
	test_kwargs();
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
