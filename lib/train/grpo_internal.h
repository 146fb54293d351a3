/* grpo_internal.h - what the GRPO loop (grpo_loop.c) and its checkpoints
 * (grpo_ckpt.c) share: the generation batch and the loop's state. */
#ifndef FT_GRPO_INTERNAL_H
#define FT_GRPO_INTERNAL_H

#include "train/grpo_loop.h"
#include "util/rng.h"

/* TRL's metrics, each the mean of the values recorded in the logging
 * window; keys[i] with sum[i] / cnt[i] (cnt 0: left out). */
typedef struct {
	int n;                  /* the fixed keys + 2 per reward */
	double *sum;
	int *cnt;
	char **keys;
} ftp_grpo_metrics;

/* One generation batch: N rows of prompt + completion, right-padded; the
 * grid (ids, labels, mask, num_items) is rebuilt from pidx and comp. */
typedef struct {
	int N, T;
	size_t *pidx;
	ft_i32vec *comp;
	int32_t *ids, *labels;
	int32_t *len;           /* [N] prompt + completion: the rest is padding */
	float *mask, *adv, *old, *ref;
	double num_items;
	int *rows;              /* the shuffled row order the micro-batches take */
	int it;                 /* iterations over it done (of num_iterations) */
} ftp_grpo_gen;

typedef struct {
	ft_param **ps;
	size_t np;
	ft_adamw *opt;
	ft_rng rng;             /* the row shuffles of each generation batch */
	ft_rng sampler;         /* the prompt order of each pass */
	int64_t step, gen;
	double loss_step, loss_sum;
	int n_logged;
	ftp_grpo_metrics mt;
	int64_t *order;         /* this pass's prompt order (RepeatSampler) */
	size_t n, pos;          /* prompts; the next one to take */
	ftp_grpo_gen g;         /* g.N == 0: none in hand */
	ft_pref_model pm, rm;   /* the policy's and the reference's operations (rm: with o->ref) */
} ftp_grpo_state;

/* The grid of g from its pidx and comp (mask_truncated applied). */
void ftp_grpo_build_grid(ftp_grpo_gen *g, const ft_i32vec *prompts, const ft_grpo_loop_opts *o);
void ftp_grpo_gen_free(ftp_grpo_gen *g);

/* checkpoint-<step> under o->output_dir; the rotation as ft_train's. */
int ftp_grpo_ckpt_save(ft_model *m, const ftp_grpo_state *s, const ft_grpo_loop_opts *o);
/* s (already set up for a fresh run) from o->resume_dir. */
int ftp_grpo_ckpt_load(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts);

#endif
