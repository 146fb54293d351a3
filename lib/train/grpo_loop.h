/* grpo_loop.h - the GRPO stage's loop, as TRL 1.16's GRPOTrainer with its
 * defaults (steps_per_generation = gradient_accumulation_steps): one
 * generation batch of per_device_train_batch_size x accumulation (x
 * ranks under mpirun) completions, num_generations per prompt, is sampled through the
 * caller's generator (gen/ sits above train/: ft-train passes
 * ft_generate), scored through the caller's rewards, given group
 * advantages (grpo.h), shuffled and cut into accumulation micro-batches;
 * each of num_iterations passes over them is one AdamW step.  Old
 * log-probabilities are computed only when num_iterations > 1, reference
 * ones (the LoRA policy with its adapters off, or a frozen copy of the
 * base for freeze and full policies) only when beta != 0.  One
 * trainer_log.jsonl line per logging step with TRL's metrics;
 * checkpoints every save_steps that a resumed run continues bit for bit. */
#ifndef FT_GRPO_LOOP_H
#define FT_GRPO_LOOP_H

#include <stdio.h>
#include "model/model.h"
#include "train/dist.h"
#include "train/grpo.h"
#include "train/lr_sched.h"
#include "train/optim.h"
#include "train/ppo_loop.h"
#include "train/pref.h"
#include "util/vec.h"

/* per_func[i*K + k]: reward k of completion i (of prompt prompt_idx[i]),
 * i < n; -1 with a message (then nothing of the step is applied). */
typedef int (*ft_grpo_score_fn)(void *ctx, const size_t *prompt_idx, const ft_i32vec *completions,
				size_t n, float *per_func);

/* outs[i]: the new tokens of prompts[i] (the stop token dropped), i < n,
 * decoded from m in eval mode (but for NEFTune's noise, which the loop
 * turns on around the call: ft_model_set_gen_neftune, as TRL samples in
 * train mode) with the given seed, prompts[0] drawing as
 * the first-th prompt of the generation batch would (ft_gen_opts'
 * first_index: a rank's rows sample what one process's would). */
typedef int (*ft_grpo_gen_fn)(void *ctx, ft_model *m, const ft_i32vec *prompts, size_t n, uint64_t seed,
			      uint64_t first, ft_i32vec *outs);

/* Called after scoring with what TRL's completions table holds (for
 * --log_completions); -1 with a message stops the run. */
typedef int (*ft_grpo_sample_fn)(void *ctx, int64_t step, const size_t *prompt_idx,
				 const ft_i32vec *completions, size_t n, const float *per_func,
				 const float *adv);

typedef struct {
	ft_grpo_opts grpo;
	int batch_size, grad_accum;   /* completions per micro-batch; micro-batches per generation */
	int num_generations, num_iterations;
	int64_t max_steps;            /* optimizer steps */
	double steps_per_epoch;       /* the log's epoch = step / steps_per_epoch */
	int logging_steps;
	ft_grpo_gen_fn generate;
	/* Data parallel (NULL: one process): the generation batch is
	 * batch x accumulation x ranks completions; rank r samples, scores
	 * and trains rows [r N, (r + 1) N) of it (TRL's process_slice), the
	 * rewards gathered for the group advantages and the metrics, the
	 * gradients and losses summed.  Checkpoints then fall between
	 * generation batches (save_steps a multiple of num_iterations: the
	 * buffer is per rank), written by rank 0. */
	ft_dist *dist;
	void *gen_ctx;
	int max_completion_length;
	float temperature;            /* logits / temperature in every log-prob pass (0: 1), as the sampler's */
	int mask_truncated;           /* mask_truncated_completions: no eos, no loss */
	/* The reference when beta != 0: NULL for a LoRA policy (its adapters
	 * off, PEFT's disable_adapter), else a frozen model (TRL creates one
	 * from the policy's path for a non-PEFT model). */
	ft_model *ref;
	int32_t pad_id, eos_id;       /* eos_id < 0: none */
	int n_rewards;
	const float *reward_weights;  /* [n_rewards] */
	const char *const *reward_names;   /* rewards/NAME/mean */
	ft_grpo_score_fn score;
	void *score_ctx;
	ft_grpo_sample_fn on_samples; /* NULL: none */
	void *samples_ctx;
	ft_adamw_opts adamw;
	double max_grad_norm;         /* <= 0: no clipping */
	ft_sched sched;               /* over max_steps */
	uint64_t seed;
	FILE *log;                    /* trainer_log.jsonl */
	/* Checkpoints (docs/GRPO.md): output_dir/checkpoint-N every
	 * save_steps optimizer steps (0: none): save_model's files (the
	 * adapter, or the model for freeze and full), optimizer.safetensors
	 * (the trainable weights in fp32 and AdamW's moments),
	 * grpo_state.json (step, generator, sampler position, logging window)
	 * and grpo_buffer.safetensors (the prompt order, the window's sums and,
	 * when the step falls inside a generation batch's num_iterations, that
	 * batch: completions, advantages, old and reference log-probabilities);
	 * at most save_total_limit kept (0: all).  resume_dir: continue from
	 * such a checkpoint with the losses an uninterrupted run has. */
	int64_t save_steps, save_total_limit;
	const char *output_dir, *resume_dir;
	int (*save_model)(void *ctx, const char *dir);
	void *save_ctx;
	/* The policy's and the reference's model operations (train/pref.h);
	 * NULL: the CPU models', ft_pref_model_of(m) and of ref.  A binding
	 * that steps itself (base.step: a device's, train/cuda_pref.h) runs
	 * the clipping and AdamW there and copies its weights into m
	 * (base.state_out) before each generation, each checkpoint and at
	 * the end: the sampler, the rewards and the files stay m's.  Not
	 * with dist (its gradients would have to be summed on the host). */
	const ft_pref_model *policy, *ref_ops;
} ft_grpo_loop_opts;

/* Unique prompts per generation batch: batch x accumulation x ranks / G;
 * 0 when that is not whole (the caller refuses it, as GRPOConfig does). */
int ft_grpo_prompts_per_generation(const ft_grpo_loop_opts *o);

/* prompts[0..n): each pass over them a fresh seeded shuffle (TRL's
 * RepeatSampler), the last incomplete generation batch dropped. */
int ft_grpo_train(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_grpo_loop_opts *o);

/* The optimizer step a checkpoint directory was written at (-1 with a
 * message when it is not a GRPO checkpoint). */
int64_t ft_grpo_checkpoint_step(const char *dir);

#endif
