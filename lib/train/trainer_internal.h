/* trainer_impl.h - state shared by trainer.c and trainer_ckpt.c */
#ifndef FT_TRAINER_IMPL_H
#define FT_TRAINER_IMPL_H

#include <jansson.h>
#include "train/optim.h"
#include "train/trainer.h"

/* Everything a checkpoint must hold to continue bit-identically. */
typedef struct {
	int64_t global_step;
	int64_t epoch_idx;        /* pass over the data in progress */
	int64_t batches_done;     /* micro-batches consumed in that pass */
	double epoch;             /* fractional epoch as HF logs it */
	float tr_loss;            /* step losses summed since the last log (float32 as HF) */
	int64_t last_logged;      /* global_step of the last log */
	double total_loss;        /* drained tr_loss, for train_loss */
	int64_t tokens_seen;
	double total_flos;        /* transformers: 6 x non-embedding params x input_ids.numel() */
	json_t *log_history;      /* HF log_history entries */
	size_t peak_bytes;        /* ft_train_model.peak_bytes (0: not known) */
	/* metric_for_best_model (trainer_best.c): the best so far, its step
	 * (0: none; not with save_strategy no), its checkpoint ("" none), the
	 * EarlyStoppingCallback's counter */
	int has_best;
	double best_metric;
	int64_t best_step, es_counter;
	char best_ckpt[4096];
} ftp_tstate;
/* trainer_best.c: after an evaluation in the loop (the model's metrics
 * k/v), whether early stopping ends training now, before a checkpoint's
 * state is written, trainer_state.json's best_* and stateful_callbacks
 * written and read back, the best checkpoint's step (-1: none), the
 * final model (the best checkpoint's files with load_best_model_at_end),
 * the best evaluation's entry of log_history (loss and model metrics). */
int ftp_best_after_eval(const ft_train_opts *o, ftp_tstate *st, double loss, const char *const *k,
			const double *v, size_t n);
int ftp_best_should_stop(const ft_train_opts *o, const ftp_tstate *st);
/* eval_on_start's evaluation: _evaluate without _determine_best_metric,
 * so only EarlyStoppingCallback.on_evaluate sees it */
int ftp_best_start_eval(const ft_train_opts *o, ftp_tstate *st, double loss, const char *const *k,
			const double *v, size_t n);
void ftp_best_before_save(const ft_train_opts *o, ftp_tstate *st);
void ftp_best_state_json(const ft_train_opts *o, const ftp_tstate *st, json_t *ts);
void ftp_best_state_read(const ft_train_opts *o, ftp_tstate *st, json_t *ts);
int64_t ftp_best_ckpt_step(const ftp_tstate *st);
int ftp_best_save_model(const ft_train_opts *o, ft_train_model *m, const ftp_tstate *st);
int ftp_best_eval_entry(const ftp_tstate *st, double *loss, const char **k, double *v, size_t *n,
			size_t cap);
/* ftp_ckpt_rotate keeping checkpoint-<best> (-1: none) as transformers'
 * _sorted_checkpoints / _rotate_checkpoints do */
int ftp_ckpt_rotate_best(const char *output_dir, int64_t limit, int64_t best);

int ftp_ckpt_save(const ft_train_opts *o, const ft_train_plan *p, ft_train_model *m,
		 const ft_adamw *opt, const ft_sched *s, const ftp_tstate *st, char *out, size_t outsz);
/* load reads the checkpoint's optimizer.safetensors into opt (NULL:
 * ft_adamw_load, the whole state on every rank; ZeRO-1 streams each rank
 * its slice, ft_zero1_load). */
typedef int (*ftp_opt_load)(void *ctx, ft_adamw *opt, const char *path);
int ftp_ckpt_load(const ft_train_opts *o, const ft_train_plan *p, ft_adamw *opt, ftp_tstate *st,
		  ftp_opt_load load, void *ctx);
/* Remove the oldest checkpoint-N beyond save_total_limit. */
int ftp_ckpt_rotate(const char *output_dir, int64_t limit);
/* The RL loops' (PPO, GRPO) output_dir/checkpoint-<step>: save_model's
 * files, optimizer.safetensors, extra's files (extra may be NULL; it gets
 * the temporary directory), then state as state_name, all in a temporary
 * directory renamed when complete; then save_total_limit's rotation (0:
 * keep all).  Takes the reference to state.  0, or -1 with the message
 * prefixed by the checkpoint's directory. */
typedef struct {
	const char *output_dir;
	int64_t step, save_total_limit;
	int (*save_model)(void *ctx, const char *dir);
	void *save_ctx;
	const ft_adamw *opt;
	const char *state_name;
	int (*extra)(void *ctx, const char *dir);
	void *extra_ctx;
} ftp_rl_ckpt;
int ftp_rl_ckpt_save(const ftp_rl_ckpt *c, json_t *state);
/* The state file `name` of the RL checkpoint dir, refused unless its
 * "format" is `format` ("%s: not an ft-train <what> state"); NULL with
 * the message.  ftp_rl_ckpt_step: its global_step, -1 on error. */
json_t *ftp_rl_ckpt_state(const char *dir, const char *name, const char *format, const char *what);
int64_t ftp_rl_ckpt_step(const char *dir, const char *name, const char *format, const char *what);
/* trainer_state.json as transformers writes it (plus an "ft" object). */
json_t *ftp_trainer_state_json(const ft_train_opts *o, const ft_train_plan *p, const ftp_tstate *st);

/* Data parallel (trainer_dist.c): sum the gradients (unless
 * grads_summed: an overlap did) and then ls[0..n] (n micro-batch losses
 * and a stop flag) over the ranks; nothing on one. */
int ftp_dist_reduce(const ft_train_opts *o, ft_train_model *m, ft_param **params, size_t np,
		    double *ls, int n, int grads_summed);
/* The gradient sum overlapped with a rank's last backward of a step:
 * begin before that forward_backward call (NULL when the model or the
 * job cannot overlap: then ftp_dist_reduce sums after), end after it
 * returns (0, or -1 with the all-reduce's message). */
typedef struct ftp_overlap ftp_overlap;
ftp_overlap *ftp_dist_overlap_begin(const ft_train_opts *o, ft_train_model *m, ft_param **params,
				    size_t np);
int ftp_dist_overlap_end(ftp_overlap *ov);

/* Epochs the training stream holds (ft_train_opts.data_epochs; 0 means 1). */
static inline int64_t ft_data_runs(const ft_train_opts *o)
{
	return o->data_epochs > 1 ? o->data_epochs : 1;
}

#endif
