/* lr_sched.c - transformers' lr_lambda functions; see lr_sched.h */
#include "train/lr_sched.h"
#include "util/error.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {
	[FT_SCHED_LINEAR] = "linear",
	[FT_SCHED_COSINE] = "cosine",
	[FT_SCHED_COSINE_RESTARTS] = "cosine_with_restarts",
	[FT_SCHED_POLYNOMIAL] = "polynomial",
	[FT_SCHED_CONSTANT] = "constant",
	[FT_SCHED_CONSTANT_WARMUP] = "constant_with_warmup",
	[FT_SCHED_INVERSE_SQRT] = "inverse_sqrt",
	[FT_SCHED_COSINE_MIN_LR] = "cosine_with_min_lr",
	[FT_SCHED_COSINE_WARMUP_MIN_LR] = "cosine_warmup_with_min_lr",
	[FT_SCHED_WSD] = "warmup_stable_decay",
};
#define NNAMES (sizeof names / sizeof names[0])

int ft_sched_parse(const char *name, ft_sched_type *t)
{
	for (size_t i = 0; i < NNAMES; i++)
		if (strcmp(name, names[i]) == 0) {
			*t = (ft_sched_type)i;
			return 0;
		}
	if (!strcmp(name, "reduce_lr_on_plateau") || !strcmp(name, "greedy"))
		return ft_fail("scheduler '%s' is not implemented in ft yet", name);
	return ft_fail("unknown scheduler '%s' (use linear, cosine, cosine_with_restarts, "
		       "polynomial, constant, constant_with_warmup, inverse_sqrt, cosine_with_min_lr, "
		       "cosine_warmup_with_min_lr or warmup_stable_decay)", name);
}

const char *ft_sched_name(ft_sched_type t)
{
	return (size_t)t < NNAMES ? names[t] : "?";
}

int ft_sched_init(ft_sched *s, ft_sched_type t, double lr, int64_t warmup_steps, int64_t total_steps)
{
	memset(s, 0, sizeof *s);
	s->type = t;
	s->lr = lr;
	s->warmup_steps = warmup_steps;
	s->total_steps = total_steps;
	s->num_cycles = t == FT_SCHED_COSINE_RESTARTS ? 1.0 : 0.5;
	s->lr_end = 1e-7;
	s->power = 1.0;
	s->timescale = warmup_steps ? warmup_steps : 10000;
	s->warmup_lr_rate = NAN;
	s->num_stable_steps = -1;
	s->warmup_type = FT_WSD_LINEAR;
	s->decay_type = FT_WSD_COSINE;
	if (t == FT_SCHED_POLYNOMIAL && !(lr > s->lr_end))
		return ft_fail("polynomial schedule: lr_end (%g) must be smaller than the learning rate (%g)",
			       s->lr_end, lr);
	return 0;
}

int64_t ft_sched_warmup_steps(double warmup, int64_t total_steps)
{
	if (warmup >= 1) return (int64_t)warmup;
	if (warmup <= 0) return 0;
	return (int64_t)ceil((double)total_steps * warmup);
}

/* ---- lr_scheduler_kwargs ---------------------------------------------- */

/* The keyword arguments each schedule function takes, beyond the
 * optimizer, num_warmup_steps, num_training_steps and last_epoch. */
static const char *const *kwargs_of(ft_sched_type t)
{
	static const char *const none[] = { NULL }, *const cycles[] = { "num_cycles", NULL };
	static const char *const poly[] = { "lr_end", "power", NULL }, *const isq[] = { "timescale", NULL };
	static const char *const minlr[] = { "num_cycles", "min_lr", "min_lr_rate", NULL };
	static const char *const wminlr[] = { "num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate", NULL };
	static const char *const wsd[] = { "num_decay_steps", "num_stable_steps", "warmup_type",
					   "decay_type", "min_lr_ratio", "num_cycles", NULL };
	switch (t) {
	case FT_SCHED_COSINE: case FT_SCHED_COSINE_RESTARTS: return cycles;
	case FT_SCHED_POLYNOMIAL: return poly;
	case FT_SCHED_INVERSE_SQRT: return isq;
	case FT_SCHED_COSINE_MIN_LR: return minlr;
	case FT_SCHED_COSINE_WARMUP_MIN_LR: return wminlr;
	case FT_SCHED_WSD: return wsd;
	default: return none;
	}
}

static int number(const char *key, const char *v, double *out)
{
	char *end;
	*out = strtod(v, &end);
	if (!*v || *end || !isfinite(*out))
		return ft_fail("lr_scheduler_kwargs: %s '%s' is not a number", key, v);
	return 0;
}

static int shape(const char *key, const char *v, ft_wsd_shape *out)
{
	if (!strcmp(v, "linear")) *out = FT_WSD_LINEAR;
	else if (!strcmp(v, "cosine")) *out = FT_WSD_COSINE;
	else if (!strcmp(v, "1-sqrt")) *out = FT_WSD_1_SQRT;
	else return ft_fail("lr_scheduler_kwargs: Unknown %s: %s, expected 'linear', 'cosine' or '1-sqrt'",
			    strcmp(key, "warmup_type") ? "decay type" : "warmup type", v);
	return 0;
}

static int set_kwarg(ft_sched *s, const char *k, const char *v)
{
	int ok = 0;
	for (const char *const *a = kwargs_of(s->type); *a; a++)
		ok |= !strcmp(*a, k);
	if (!ok)
		return ft_fail("lr_scheduler_kwargs: the %s schedule takes no argument '%s' (transformers "
			       "raises TypeError)", ft_sched_name(s->type), k);
	if (!strcmp(k, "warmup_type")) return shape(k, v, &s->warmup_type);
	if (!strcmp(k, "decay_type")) return shape(k, v, &s->decay_type);
	double x;
	if (number(k, v, &x) < 0) return -1;
	if (!strcmp(k, "num_cycles")) s->num_cycles = x;
	else if (!strcmp(k, "lr_end")) s->lr_end = x;
	else if (!strcmp(k, "power")) s->power = x;
	else if (!strcmp(k, "timescale")) s->timescale = (int64_t)x;
	else if (!strcmp(k, "min_lr")) { s->min_lr = x; s->have_min_lr = 1; }
	else if (!strcmp(k, "min_lr_rate")) { s->min_lr_rate = x; s->have_min_lr_rate = 1; }
	else if (!strcmp(k, "warmup_lr_rate")) s->warmup_lr_rate = x;
	else if (!strcmp(k, "min_lr_ratio")) s->min_lr_ratio = x;
	else if (!strcmp(k, "num_stable_steps")) s->num_stable_steps = (int64_t)x;
	else if (!strcmp(k, "num_decay_steps")) { s->num_decay_steps = (int64_t)x; s->have_decay = 1; }
	return 0;
}

/* text without its surrounding spaces and one pair of quotes, in place */
static char *trim(char *t)
{
	while (isspace((unsigned char)*t)) t++;
	size_t n = strlen(t);
	while (n && isspace((unsigned char)t[n - 1])) t[--n] = 0;
	if (n >= 2 && (t[0] == '"' || t[0] == '\'') && t[n - 1] == t[0]) {
		t[n - 1] = 0;
		t++;
	}
	return t;
}

/* the checks get_*_schedule make once their arguments are bound */
static int check_kwargs(ft_sched *s)
{
	if (s->type == FT_SCHED_COSINE_MIN_LR || s->type == FT_SCHED_COSINE_WARMUP_MIN_LR) {
		if (s->have_min_lr && s->have_min_lr_rate)
			return ft_fail("lr_scheduler_kwargs: Only one of min_lr or min_lr_rate should be set");
		if (!s->have_min_lr && !s->have_min_lr_rate)
			return ft_fail("%s: One of min_lr or min_lr_rate should be set through the "
				       "`lr_scheduler_kwargs`", ft_sched_name(s->type));
		if (s->have_min_lr)
			s->min_lr_rate = s->min_lr / s->lr;
	}
	if (s->type == FT_SCHED_WSD) {
		if (!s->have_decay)
			return ft_fail("warmup_stable_decay: lr_scheduler_kwargs needs num_decay_steps "
				       "(get_wsd_schedule's required argument)");
		if (s->num_stable_steps < 0)
			s->num_stable_steps = s->total_steps - s->warmup_steps - s->num_decay_steps;
	}
	if (s->type == FT_SCHED_POLYNOMIAL && !(s->lr > s->lr_end))
		return ft_fail("polynomial schedule: lr_end (%g) must be smaller than the learning rate (%g)",
			       s->lr_end, s->lr);
	return 0;
}

int ft_sched_kwargs(ft_sched *s, const char *text)
{
	if (!text) return check_kwargs(s);
	char *buf = ft_xstrdup(text), *t = trim(buf), *save = NULL;
	size_t n = strlen(t);
	int rc = 0;
	if (n < 2 || t[0] != '{' || t[n - 1] != '}') {
		free(buf);
		return ft_fail("lr_scheduler_kwargs '%s': expected a mapping such as {\"min_lr_rate\": 0.1}", text);
	}
	t[n - 1] = 0;
	for (char *item = strtok_r(t + 1, ",", &save); item && rc == 0; item = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(item, ':');
		if (!colon) {
			if (*trim(item)) rc = ft_fail("lr_scheduler_kwargs '%s': '%s' is not key: value", text, trim(item));
			continue;
		}
		*colon = 0;
		rc = set_kwarg(s, trim(item), trim(colon + 1));
	}
	free(buf);
	return rc < 0 ? -1 : check_kwargs(s);
}

static double warmup_part(int64_t step, int64_t warmup)
{
	return (double)step / (double)(warmup > 1 ? warmup : 1);
}

/* _get_cosine_with_min_lr_schedule_with_warmup_lr_rate_lambda: the
 * warmup counts from step + 1 (or from warmup_lr_rate), the decay's
 * progress from step - warmup + 1. */
static double warmup_min_lr(const ft_sched *s, int64_t step)
{
	double cur = (double)step, w = (double)s->warmup_steps, T = (double)s->total_steps;
	if (cur < w) {
		if (isnan(s->warmup_lr_rate))
			return (cur + 1.0) / fmax(1.0, w);
		return s->warmup_lr_rate + (1.0 - s->warmup_lr_rate) * cur / (double)(s->warmup_steps - 1 > 1
			? s->warmup_steps - 1 : 1);
	}
	double progress = (cur - w + 1.0) / fmax(1.0, T - w);
	double f = 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress));
	return fmax(0.0, f * (1 - s->min_lr_rate) + s->min_lr_rate);
}

static double wsd_shape(ft_wsd_shape t, double progress, int warmup, double cycles)
{
	switch (t) {
	case FT_WSD_LINEAR: return warmup ? progress : 1.0 - progress;
	case FT_WSD_COSINE:
		return warmup ? 0.5 * (1.0 - cos(M_PI * progress))
			      : 0.5 * (1.0 + cos(M_PI * cycles * 2.0 * progress));
	case FT_WSD_1_SQRT: return warmup ? 1.0 - sqrt(1.0 - progress) : 1.0 - sqrt(progress);
	}
	return 1.0;
}

/* _get_wsd_scheduler_lambda */
static double wsd(const ft_sched *s, int64_t step)
{
	int64_t w = s->warmup_steps, st = s->num_stable_steps, d = s->num_decay_steps;
	double r = s->min_lr_ratio, f;
	if (step < w) {
		f = wsd_shape(s->warmup_type, (double)step / (double)(w > 1 ? w : 1), 1, s->num_cycles);
		return fmax(0.0, f * (1.0 - r) + r);
	}
	if (step < w + st) return 1.0;
	if (step < w + st + d) {
		f = wsd_shape(s->decay_type, (double)(step - w - st) / (double)(d > 1 ? d : 1), 0, s->num_cycles);
		return fmax(0.0, f * (1.0 - r) + r);
	}
	return r;
}

double ft_sched_lambda(const ft_sched *s, int64_t step)
{
	const int64_t w = s->warmup_steps, T = s->total_steps;
	double progress;
	switch (s->type) {
	case FT_SCHED_CONSTANT:
		return 1.0;
	case FT_SCHED_CONSTANT_WARMUP:
		/* float(max(1.0, num_warmup_steps)) */
		return step < w ? (double)step / fmax(1.0, (double)w) : 1.0;
	case FT_SCHED_LINEAR:
		if (step < w) return warmup_part(step, w);
		return fmax(0.0, (double)(T - step) / (double)(T - w > 1 ? T - w : 1));
	case FT_SCHED_COSINE: {
		if (step < w) return warmup_part(step, w);
		progress = (double)(step - w) / (double)(T - w > 1 ? T - w : 1);
		/* transformers 5 routes through the min_lr variant:
		 * factor * (1 - 0.0) + 0.0, which is exact */
		double f = 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress));
		return fmax(0.0, f);
	}
	case FT_SCHED_COSINE_RESTARTS:
		if (step < w) return warmup_part(step, w);
		progress = (double)(step - w) / (double)(T - w > 1 ? T - w : 1);
		if (progress >= 1.0) return 0.0;
		return fmax(0.0, 0.5 * (1.0 + cos(M_PI * fmod(s->num_cycles * progress, 1.0))));
	case FT_SCHED_POLYNOMIAL: {
		if (step < w) return warmup_part(step, w);
		if (step > T) return s->lr_end / s->lr;
		double range = s->lr - s->lr_end;
		double decay_steps = (double)(T - w);
		if (decay_steps <= 0) return s->lr_end / s->lr;  /* Python: ZeroDivisionError */
		double pct = 1.0 - (double)(step - w) / decay_steps;
		double decay = range * pow(pct, s->power) + s->lr_end;
		return decay / s->lr;
	}
	case FT_SCHED_COSINE_MIN_LR: {
		if (step < w) return warmup_part(step, w);
		progress = (double)(step - w) / (double)(T - w > 1 ? T - w : 1);
		double f = 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress));
		return fmax(0.0, f * (1 - s->min_lr_rate) + s->min_lr_rate);
	}
	case FT_SCHED_COSINE_WARMUP_MIN_LR:
		return warmup_min_lr(s, step);
	case FT_SCHED_WSD:
		return wsd(s, step);
	case FT_SCHED_INVERSE_SQRT: {
		if (step < w) return warmup_part(step, w);
		double shift = (double)(s->timescale - w);
		return 1.0 / sqrt(((double)step + shift) / (double)s->timescale);
	}
	}
	return 1.0;
}

double ft_sched_lr(const ft_sched *s, int64_t step)
{
	return s->lr * ft_sched_lambda(s, step);
}
