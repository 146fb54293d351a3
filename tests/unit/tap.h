/* tap.h - minimal TAP output for the C unit tests.
 *   ok(cond, "what");  skip("why");  return tap_done();
 * Each check prints "ok N - what" or "not ok N - what"; scripts/run-tests.sh
 * counts them. */
#ifndef FT_TAP_H
#define FT_TAP_H

#include <stddef.h>
#include <stdio.h>
#include <stdarg.h>
#include <math.h>

static int tap_n, tap_failed;

__attribute__((format(printf, 2, 3)))
static int ok(int cond, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%sok %d - ", cond ? "" : "not ", ++tap_n);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	if (!cond) tap_failed++;
	return cond;
}

__attribute__((format(printf, 1, 2), unused))
static void skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("ok %d # skip ", ++tap_n);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

/* Relative error with an absolute floor, for float comparisons. */
__attribute__((unused))
static double rel_err(double got, double want, double floor_)
{
	double d = fabs(got - want), s = fabs(want);
	return d / (s > floor_ ? s : floor_);
}

/* max |a - ref| / max(max |ref|, floor_) over n floats; a NaN difference
 * makes it infinite, so it never passes a bound. */
__attribute__((unused))
static double max_rel_floor(const float *a, const float *ref, size_t n, double floor_)
{
	double d = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)a[i] - ref[i]);
		if (e > d || e != e) d = e != e ? INFINITY : e;
		if (fabs(ref[i]) > s) s = fabs(ref[i]);
	}
	return d / (s > floor_ ? s : floor_);
}

/* max_rel_floor with a floor that only guards an all-zero reference */
__attribute__((unused))
static double max_rel(const float *a, const float *ref, size_t n)
{
	return max_rel_floor(a, ref, n, 1e-30);
}

/* max_rel_floor with floor 0.1, for O(1) inputs whose results may cancel:
 * a gradient that cancels to zero (attention at T = 1: dS = P (dP - D)
 * with P = 1 and dP = D, both sums of hd O(1) products) is rounding noise
 * of a few 1e-8 on both sides, not a relative error. */
__attribute__((unused))
static double max_rel01(const float *a, const float *ref, size_t n)
{
	return max_rel_floor(a, ref, n, 0.1);
}

static int tap_done(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

#endif
