/* trainer.h - the training loop of ft-train, as transformers' Trainer with
 * LLaMA-Factory's callbacks: gradient accumulation with num_items_in_batch
 * loss reduction, clipping, AdamW, LR schedule, logging to
 * trainer_log.jsonl, evaluation, checkpoints with exact resume.
 *
 *   lib/train/trainer.c        options, step counts, the loop, evaluation
 *   lib/train/trainer_ckpt.c   checkpoint directories, trainer_state.json, resume
 *   lib/train/trainer_data.c   batch sources (ft-pack streams; in-memory arrays)
 *   lib/train/trainer_model.c  the ft_model binding of ft_train_model
 *
 * The model and the data are reached through small interfaces so the loop
 * can be tested with a toy model and in-memory batches.
 */
#ifndef FT_TRAINER_H
#define FT_TRAINER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "format/batch.h"
#include "model/model.h"
#include "train/lr_sched.h"
#include "train/optim.h"
#include "format/trainlog.h"

struct ft_optim_ext;

/* The most metrics a model reports per log (ft_train_model.metrics). */
#define FT_MAX_METRICS 16
struct ft_dist;   /* lib/train/dist.h */

/* What the loop needs from a model. */
typedef struct {
	void *self;
	size_t (*nparams)(void *self);
	ft_param *(*param)(void *self, size_t i);
	void (*zero_grad)(void *self);
	int (*forward_backward)(void *self, const ft_batch *b, float grad_scale,
				double *loss_sum, int64_t *n_tokens);
	int (*forward)(void *self, const ft_batch *b, double *loss_sum, int64_t *n_tokens);
	/* Write the model (adapter or full weights) into an existing dir. */
	int (*save)(void *self, const char *dir);
	/* Optional: on resume, the number of forward_backward calls made
	 * before the checkpoint, so random streams (LoRA dropout) continue
	 * where they were. */
	void (*set_position)(void *self, int64_t micro_batches_done);
	/* Optional, all four together (the CUDA binding, cuda_train.h): the
	 * model keeps its optimizer state where its weights are and steps
	 * itself.  step clips to max_grad_norm (<= 0: norm only) and applies
	 * one AdamW update with lr exactly as ft_clip_grad_norm and
	 * ft_adamw_step would, setting *grad_norm (before clipping); the
	 * trainer's own ft_adamw then only carries the state to and from
	 * checkpoints: state_out copies the trainable weights, moments and
	 * step count into the host params and opt before a checkpoint or the
	 * final save, state_in copies them back after a resume loaded them.
	 * step returns 1 when fp16 gradients overflowed and it skipped the
	 * update (torch's GradScaler; *grad_norm inf): training goes on, as
	 * transformers', without --skip_nonfinite. */
	int (*step)(void *self, const ft_adamw_opts *o, double lr, double max_grad_norm,
		    double *grad_norm);
	int (*state_out)(void *self, ft_adamw *opt);
	int (*state_in)(void *self, const ft_adamw *opt);
	/* Optional: peak device memory in bytes (the allocator's high-water
	 * mark), written to trainer_state.json. */
	size_t (*peak_bytes)(void *self);
	/* Optional (the preference stages, train/pref.h): forward_backward and
	 * forward return each micro-batch's mean loss with *n_tokens = 1; the
	 * step's loss is then the mean of its micro-batches' and grad_scale is
	 * 1 / micro-batches (transformers without num_items_in_batch).  No
	 * perplexity is reported.  FT_BATCH_MEAN_SUM: the step's loss and
	 * gradient are the sums of its micro-batches' means (transformers with
	 * a compute_loss_func that ignores num_items_in_batch: not divided by
	 * the accumulation steps), averaged over the ranks as DDP does:
	 * grad_scale is 1 / ranks. */
	int batch_mean;
	/* Optional: the metrics gathered since the last call (training ones at
	 * each log, eval=1 after an evaluation), up to cap of them, as keys
	 * (owned by the model, already "eval_" prefixed) and values; the
	 * trainer adds them to the log line, log_history and the eval results. */
	size_t (*metrics)(void *self, int eval, const char **keys, double *vals, size_t cap);
	/* Optional, both together (the CUDA binding): sum the gradients over
	 * the ranks of d where they live (NCCL), one group at a time in the
	 * groups of ft_model_set_grads_ready (grad_layers decoder layers, the
	 * head group = grad_layers, -1 the embeddings): sum_group issues the
	 * sum of a group whose gradients are final (it may run on another
	 * thread than forward_backward), sum_wait waits for what was issued.
	 * Without them the trainer sums the params' g with MPI.  Only called
	 * with more than one rank (lib/train/dist.h). */
	int (*sum_group)(void *self, struct ft_dist *d, int group);
	int (*sum_wait)(void *self, struct ft_dist *d);
	int grad_layers;
	/* Optional (the CPU model, the CUDA binding): report gradient groups
	 * final during forward_backward (ft_model_set_grads_ready), so data
	 * parallel sums them while the backward goes on; fn NULL stops it. */
	void (*set_grads_ready)(void *self, ft_grads_ready_fn fn, void *ctx);
	/* Optional, both together (the CUDA binding with fp16): state of the
	 * model's own step beyond the optimizer's (the loss scaler, as
	 * transformers' scaler.pt), written into a checkpoint being made and
	 * read back from the one resumed (after it loaded, before state_in). */
	int (*ckpt_save)(void *self, const char *dir);
	int (*ckpt_load)(void *self, const char *dir);
	/* Optional, with step (the CUDA binding): step with the optimizer of
	 * LLaMA-Factory's extras x (optim_ext.h) in place of AdamW, lambda the
	 * schedule's factor at lr; as step otherwise.  Fails (-1) for an x
	 * the model cannot run; without it the trainer refuses any x. */
	int (*ext_step)(void *self, const struct ft_optim_ext *x, const ft_adamw_opts *o, double lr,
			double lambda, double max_grad_norm, double *grad_norm);
	/* Optional (the CUDA binding under ZeRO-1, ft_cuda_train_zero): a
	 * resume's optimizer state file read into the model's own slice as it
	 * streams in (ft_dist_load_moments, every rank), the whole trainable
	 * weights into the host params and opt's step; state_in then copies
	 * the weights and leaves the moments.  NULL: opt is loaded whole. */
	int (*zero_load)(void *self, ft_adamw *opt, const char *path);
} ft_train_model;

enum { FT_BATCH_MEAN = 1, FT_BATCH_MEAN_SUM = 2 };

/* The ft_model binding (lib/train/trainer_model.c); with the ASFT loss
 * (ft_model_set_asft) batch_mean is FT_BATCH_MEAN_SUM, as
 * LLaMA-Factory's trainer. */
ft_train_model ft_train_model_of(ft_model *m);

/* A re-readable sequence of micro-batches (one pass = one epoch). */
typedef struct {
	void *self;
	int (*rewind)(void *self);                 /* back to the first batch */
	int (*next)(void *self, ft_batch *b);      /* 1, 0 at the end, -1 */
	void (*close)(void *self);
} ft_batch_source;

/* ft-pack output: files, shard directories or "-" (stdin: one pass only;
 * rewinding it fails with a message). */
int ft_batch_source_open(ft_batch_source *s, const char *const *paths, size_t n);
/* The counts of an opened stream source from its header (for stdin, whose
 * manifest cannot be read separately).  ft_manifest is format/batch_io.h's;
 * named by its tag so this header does not pull in the stream API. */
struct ft_manifest;
int ft_batch_source_manifest(ft_batch_source *s, struct ft_manifest *m);
/* Borrowed array of batches (tests). */
ft_batch_source ft_batch_source_array(const ft_batch *b, size_t n);

typedef enum { FT_EV_STEP, FT_EV_LOG, FT_EV_EVAL, FT_EV_SAVE } ft_train_event;

typedef struct {
	/* optimisation */
	double learning_rate;          /* 5e-5 */
	double weight_decay;           /* 0 */
	double adam_beta1, adam_beta2, adam_epsilon;
	double max_grad_norm;          /* 1.0; <= 0 disables clipping */
	int skip_nonfinite;            /* a NaN/Inf loss or gradient norm skips the
					  step (no update) instead of stopping */
	ft_sched_type lr_scheduler_type;   /* linear */
	const char *lr_scheduler_kwargs;   /* HF's, a mapping's text (ft_sched_kwargs); NULL: none */
	double warmup;                 /* >= 1 steps, < 1 ratio (get_warmup_steps) */
	int gradient_accumulation_steps;   /* 1 */
	double num_train_epochs;       /* 3.0 */
	int64_t max_steps;             /* > 0 overrides epochs */
	/* bookkeeping */
	int64_t logging_steps;         /* 500 */
	int logging_first_step;
	int64_t save_steps;            /* 500; 0 = only at the end */
	int64_t save_total_limit;      /* 0 = keep all */
	int64_t eval_steps;            /* 0 = logging_steps; needs a val source */
	/* when to log, evaluate and save (transformers' *_strategy):
	 * FT_STRATEGY_STEPS (0, the default) every *_steps, _EPOCH at the end
	 * of each epoch, _NO never (the end of training still evaluates and
	 * saves the final model; an interrupt still checkpoints) */
	int logging_strategy, eval_strategy, save_strategy;
	int train_batch_size;          /* rows per micro-batch (trainer_state) */
	uint64_t seed;
	const char *output_dir;
	const char *resume_dir;        /* checkpoint directory or NULL */
	/* batches per epoch (from the manifest, known before reading) */
	int64_t n_batches;
	/* epochs the training stream holds, one after the other, each
	 * reshuffled by ft-pack (manifest "epochs"; 0 or 1: one, reread
	 * every epoch); epoch e reads run e mod data_epochs */
	int64_t data_epochs;
	/* set asynchronously (SIGINT/SIGTERM): finish the step, checkpoint */
	volatile sig_atomic_t *stop;
	/* events for the tool's display: STEP after every optimizer step (e->loss
	 * is that step's loss), LOG and EVAL with the line just written, SAVE
	 * with the checkpoint directory in detail (e NULL) */
	void (*on_event)(void *ctx, ft_train_event ev, const ft_trainlog_entry *e,
			 const char *detail);
	void *ctx;
	/* Extra files copied into every checkpoint and the output dir when
	 * absent there (tokenizer files): full paths, NULL-terminated. */
	const char *const *extra_files;
	/* Where the model runs ("cpu", "cuda:0 (NVIDIA H100 ..., bf16)"),
	 * recorded in trainer_state.json's "ft" object; NULL: not recorded. */
	const char *device;
	/* Data parallel (lib/train/dist.h): the job this process is a rank
	 * of (NULL: one process).  Rank r runs every n-th micro-batch of a
	 * step of n x gradient_accumulation_steps micro-batches; only rank 0
	 * writes files.  zero = 1: ZeRO-1, AdamW state sharded over ranks. */
	struct ft_dist *dist;
	int zero;
	/* An optimizer in place of plain AdamW (LoRA+, BAdam, Adam-mini,
	 * Muon, GaLore, APOLLO: optim_ext.h), borrowed; NULL: AdamW.  With
	 * ft_train_model.step it needs ext_step (else refused). */
	struct ft_optim_ext *optim_ext;
	/* transformers' metric_for_best_model ("eval_"-prefixed; NULL: no best
	 * tracked), greater_is_better, load_best_model_at_end (the final model
	 * from the best checkpoint), and LLaMA-Factory's early_stopping_steps
	 * (early_stopping on: EarlyStoppingCallback with that patience,
	 * threshold 0); the tool
	 * makes transformers' checks (lib/train/trainer_best.c) */
	const char *metric_for_best_model;
	int greater_is_better, load_best_model_at_end, early_stopping;
	int64_t early_stopping_patience;
	/* HF's eval_on_start: an evaluation before the first step (also when
	 * resuming), which early stopping sees but the best metric does not */
	int eval_on_start;
	/* HF's ignore_data_skip: a resumed run starts its epoch's data from
	 * the first batch instead of skipping the ones already trained on */
	int ignore_data_skip;
	/* HF's eval_delay: no evaluation before this many steps (epochs with
	 * eval_strategy epoch) */
	double eval_delay;
} ft_train_opts;

void ft_train_opts_default(ft_train_opts *o);

enum { FT_STRATEGY_STEPS, FT_STRATEGY_EPOCH, FT_STRATEGY_NO };
/* "steps", "epoch" or "no"; -1 (with a message) otherwise. */
int ft_strategy_parse(const char *name);

/* Step counts as transformers' set_initial_training_values. */
typedef struct {
	int64_t steps_per_epoch;       /* max(ceil(n_batches / accum), 1) */
	int64_t total_steps;           /* max_steps or ceil(epochs * steps_per_epoch) */
	int64_t num_epochs;            /* passes over the data */
	int64_t warmup_steps;
} ft_train_plan;

int ft_train_plan_make(const ft_train_opts *o, ft_train_plan *p);

typedef struct {
	int64_t global_step, total_steps;
	double epoch;
	double train_loss;             /* mean of the step losses */
	double train_runtime;          /* seconds (this run) */
	int64_t tokens_seen;
	int interrupted;               /* stopped by *stop; see checkpoint */
	char checkpoint[4096];         /* last checkpoint written ("" none) */
	double eval_loss;              /* NAN when not evaluated */
} ft_train_result;

/* Train.  Writes output_dir/trainer_log.jsonl, checkpoint-N/ directories,
 * and at the end the model, trainer_state.json, train_results.json and
 * all_results.json (with eval results when val is given).  val may be
 * NULL.  On interruption a checkpoint is written and r->interrupted set;
 * the return value is still 0. */
int ft_train(const ft_train_opts *o, ft_train_model *m, ft_batch_source *train,
	     ft_batch_source *val, ft_train_result *r);

/* Evaluation loss as transformers' evaluate(): the mean over batches of
 * each batch's token-mean loss, weighted by rows.  n_batches and n_rows
 * may be NULL. */
int ft_evaluate(ft_train_model *m, ft_batch_source *val, double *eval_loss, int64_t *n_batches,
		int64_t *n_rows);

/* Timing of an evaluation, for the results files. */
typedef struct {
	double loss, runtime;
	int64_t batches, rows;
} ft_eval_stats;

/* Latest checkpoint-N in dir (NULL + message when there is none); the
 * result is malloc'd. */
char *ft_last_checkpoint(const char *dir);
/* output_dir/trainer_log.jsonl opened for writing: fresh, or on resume
 * with the lines up to resume_step kept (the PPO loop's too). */
FILE *ft_train_log_open(const char *output_dir, int resume, int64_t resume_step);

/* Write results JSON (train_results.json etc.) atomically: keys and
 * values as given, sorted, indent 4 as transformers writes them. */
int ft_save_results(const char *dir, const char *name, const char *const *keys,
		    const double *vals, size_t n);

#endif
