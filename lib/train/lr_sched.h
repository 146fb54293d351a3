/* lr_sched.h - learning-rate schedules as transformers' get_scheduler.
 *
 * lr(step) = learning_rate * lambda(step), where step counts optimizer
 * steps done so far (0 for the first update), exactly as LambdaLR with
 * transformers' lr_lambda functions.  All arithmetic in double as Python.
 */
/* (Not named sched.h: with -Ilib that would hide the system <sched.h>.) */
#ifndef FT_LR_SCHED_H
#define FT_LR_SCHED_H

#include <stdint.h>

typedef enum {
	FT_SCHED_LINEAR, FT_SCHED_COSINE, FT_SCHED_COSINE_RESTARTS, FT_SCHED_POLYNOMIAL,
	FT_SCHED_CONSTANT, FT_SCHED_CONSTANT_WARMUP, FT_SCHED_INVERSE_SQRT,
	FT_SCHED_COSINE_MIN_LR, FT_SCHED_COSINE_WARMUP_MIN_LR, FT_SCHED_WSD,
} ft_sched_type;

/* warmup_stable_decay's phase shapes */
typedef enum { FT_WSD_LINEAR, FT_WSD_COSINE, FT_WSD_1_SQRT } ft_wsd_shape;

typedef struct {
	ft_sched_type type;
	double lr;              /* the optimizer's initial learning rate */
	int64_t warmup_steps;
	int64_t total_steps;    /* num_training_steps */
	double num_cycles;      /* cosine: 0.5; cosine_with_restarts: 1 */
	double lr_end, power;   /* polynomial: 1e-7, 1.0 */
	int64_t timescale;      /* inverse_sqrt: warmup_steps or 10000 */
	/* cosine_with_min_lr, cosine_warmup_with_min_lr: min_lr_rate (or
	 * min_lr / lr), warmup_lr_rate (NAN: unset); warmup_stable_decay:
	 * the phases' lengths (num_stable_steps -1: total - warmup - decay),
	 * shapes and min_lr_ratio */
	double min_lr_rate, min_lr, warmup_lr_rate, min_lr_ratio;
	int64_t num_stable_steps, num_decay_steps;
	ft_wsd_shape warmup_type, decay_type;
	int have_min_lr, have_min_lr_rate, have_decay;
} ft_sched;

/* "linear", "cosine", ... as --lr_scheduler_type; -1 with a message
 * listing the accepted names. */
int ft_sched_parse(const char *name, ft_sched_type *t);
const char *ft_sched_name(ft_sched_type t);

/* Fill s with transformers' defaults for the type.  Fails (-1) where
 * transformers raises (polynomial with lr <= lr_end). */
int ft_sched_init(ft_sched *s, ft_sched_type t, double lr, int64_t warmup_steps,
		  int64_t total_steps);

/* warmup as TrainingArguments.get_warmup_steps: warmup >= 1 is a step
 * count (int() truncation), 0 < warmup < 1 a ratio of total steps
 * (ceil), 0 none. */
int64_t ft_sched_warmup_steps(double warmup, int64_t total_steps);

/* HF's lr_scheduler_kwargs (get_scheduler's scheduler_specific_kwargs):
 * text is a mapping, JSON ('{"min_lr_rate": 0.1}') or YAML's flow form
 * ('{min_lr_rate: 0.1}'), NULL or "{}" for none.  Each key must be one the
 * type's schedule function takes (transformers raises TypeError
 * otherwise); then the checks its function makes (min_lr xor
 * min_lr_rate; warmup_stable_decay's num_decay_steps).  -1 with a message. */
int ft_sched_kwargs(ft_sched *s, const char *text);

double ft_sched_lambda(const ft_sched *s, int64_t step);
double ft_sched_lr(const ft_sched *s, int64_t step);

#endif
