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
} ft_sched_type;

typedef struct {
	ft_sched_type type;
	double lr;              /* the optimizer's initial learning rate */
	int64_t warmup_steps;
	int64_t total_steps;    /* num_training_steps */
	double num_cycles;      /* cosine: 0.5; cosine_with_restarts: 1 */
	double lr_end, power;   /* polynomial: 1e-7, 1.0 */
	int64_t timescale;      /* inverse_sqrt: warmup_steps or 10000 */
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

double ft_sched_lambda(const ft_sched *s, int64_t step);
double ft_sched_lr(const ft_sched *s, int64_t step);

#endif
