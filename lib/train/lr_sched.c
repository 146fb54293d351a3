/* lr_sched.c - transformers' lr_lambda functions; see lr_sched.h */
#include "train/lr_sched.h"
#include "util/error.h"

#include <math.h>
#include <string.h>

static const char *const names[] = {
	[FT_SCHED_LINEAR] = "linear",
	[FT_SCHED_COSINE] = "cosine",
	[FT_SCHED_COSINE_RESTARTS] = "cosine_with_restarts",
	[FT_SCHED_POLYNOMIAL] = "polynomial",
	[FT_SCHED_CONSTANT] = "constant",
	[FT_SCHED_CONSTANT_WARMUP] = "constant_with_warmup",
	[FT_SCHED_INVERSE_SQRT] = "inverse_sqrt",
};
#define NNAMES (sizeof names / sizeof names[0])

int ft_sched_parse(const char *name, ft_sched_type *t)
{
	for (size_t i = 0; i < NNAMES; i++)
		if (strcmp(name, names[i]) == 0) {
			*t = (ft_sched_type)i;
			return 0;
		}
	return ft_fail("unknown scheduler '%s' (use linear, cosine, cosine_with_restarts, "
		       "polynomial, constant, constant_with_warmup or inverse_sqrt)", name);
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

static double warmup_part(int64_t step, int64_t warmup)
{
	return (double)step / (double)(warmup > 1 ? warmup : 1);
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
