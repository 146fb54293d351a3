/* ppo_loop.h - the PPO stage's loop, as LLaMA-Factory's
 * CustomPPOTrainer.ppo_train over TRL 0.9.6's PPOTrainer.step(): per PPO
 * step it takes batch x accumulation x ppo_buffer_size prompts, generates
 * the responses through the caller's generator (gen/ sits above train/
 * in the layers: ft-train passes ft_generate), scores them through the caller's
 * reward, computes old/reference log-probabilities and values
 * (ppo_model.h), the KL-penalised rewards and GAE (ppo.h), then
 * ppo_epochs epochs of shuffled mini-batch updates with AdamW, one
 * scheduler step per PPO step, and one trainer_log.jsonl line per
 * logging step.  A LoRA policy's reference is the same model with its
 * adapters off (PEFT's disable_adapter); a freeze or full policy's is a
 * separate frozen model (o->ref). */
#ifndef FT_PPO_LOOP_H
#define FT_PPO_LOOP_H

#include <stdio.h>
#include "model/model.h"
#include "train/dist.h"
#include "train/lr_sched.h"
#include "train/optim.h"
#include "train/ppo.h"
#include "train/pref.h"
#include "util/vec.h"

/* scores[i] of prompts[i] + responses[i], i < n; prompt_idx[i] is the
 * index of prompts[i] in the array given to ft_ppo_train (for its row's
 * extra columns); -1 with a message (then nothing of the step is applied). */
typedef int (*ft_ppo_score_fn)(void *ctx, const size_t *prompt_idx, const ft_i32vec *prompts,
			       const ft_i32vec *responses, size_t n, float *scores);

/* outs[i]: the new tokens of prompts[i] (the stop token dropped), i < n,
 * decoded from m in eval mode with the given seed. */
typedef int (*ft_ppo_gen_fn)(void *ctx, ft_model *m, const ft_i32vec *prompts, size_t n,
			     uint64_t seed, ft_i32vec *outs);

typedef struct {
	ft_ppo_opts ppo;
	int batch_size, grad_accum, buffer_size, ppo_epochs;
	int64_t max_steps;          /* PPO steps */
	double steps_per_epoch;     /* the log's epoch: max_steps when given, else the steps of one pass */
	int logging_steps;
	ft_ppo_gen_fn generate;
	void *gen_ctx;
	int max_new_tokens;
	ft_adamw_opts adamw;
	double max_grad_norm;       /* <= 0: no clipping */
	ft_sched sched;             /* over max_steps */
	int32_t pad_id, eos_id;     /* eos_id < 0: none */
	float value_dropout;        /* TRL ValueHead's summary dropout */
	uint64_t seed;
	ft_ppo_score_fn score;
	void *score_ctx;
	/* The reference: NULL for a LoRA policy (the policy with its adapters
	 * off, PEFT's disable_adapter), else a frozen model (LLaMA-Factory's
	 * create_ref_model: a copy of the base for freeze and full). */
	ft_model *ref;
	/* Checkpoints (docs/PPO.md): output_dir/checkpoint-N every save_steps
	 * PPO steps (0: none), save_model writing the policy and its value
	 * head into a directory (what LLaMA-Factory's checkpoints hold), the
	 * loop adding optimizer.safetensors (the trainable weights in fp32,
	 * the value head's included, and AdamW's moments) and ppo_state.json
	 * (step, KL controller, running moments, generator, logging window);
	 * at most save_total_limit kept (0: all).  resume_dir: continue from
	 * such a checkpoint, with the losses an uninterrupted run has. */
	int64_t save_steps, save_total_limit;
	const char *output_dir, *resume_dir;
	int (*save_model)(void *ctx, const char *dir);
	void *save_ctx;
	FILE *log;                  /* trainer_log.jsonl */
	/* Replay (the whole-step parity test): ppo_epochs row orders of the
	 * step's N rows per PPO step, n_perms orders in all, instead of the
	 * loop's own shuffles (TRL draws them from np.random.permutation).
	 * NULL: shuffled with the loop's generator. */
	const int64_t *perms;
	int64_t n_perms;
	/* NULL, or called once per step after GAE with TRL's [N, T] grids
	 * (T = the longest prompt + response - 1): mask, advantages, returns. */
	void (*inspect)(void *ctx, int N, int T, const float *mask, const float *adv, const float *ret);
	void *inspect_ctx;
	/* The policy's and the reference's model operations (train/pref.h);
	 * NULL: the CPU models', ft_pref_model_of(m) and of ref.  A binding
	 * that steps itself (base.step: a device's, train/cuda_pref.h) must
	 * keep the value head (own_value_head: it gets the loop's head
	 * tensors over vw and vb), runs clipping and AdamW there and copies
	 * its weights and head into m, vw and vb (base.state_out) before
	 * each generation, each checkpoint and at the end. */
	const ft_pref_model *policy, *ref_ops;
	/* Several processes (NULL or one: none; docs/PPO.md "Several
	 * processes"): each takes its own N rows per step (the step's W N
	 * prompts in rank order, as accelerate's sharded dataloader), scores
	 * and whitens them locally as TRL 0.9.6; the gradients are averaged
	 * (DDP), the score moments and the logged statistics reduced, and
	 * rank 0 writes the checkpoints.  A policy that steps itself must sum
	 * its own gradients (base.sum_group: NCCL). */
	ft_dist *dist;
} ft_ppo_loop_opts;

/* prompts: n of them, read in order, reused cyclically as
 * LLaMA-Factory's dataloader iterator restarts.  vw [hidden] and *vb are
 * the value head, trained in place. */
int ft_ppo_train(ft_model *m, const ft_i32vec *prompts, size_t n, float *vw, float *vb,
		 const ft_ppo_loop_opts *o);

/* The PPO step a checkpoint directory was written at (-1 with a message
 * when it is not a PPO checkpoint). */
int64_t ft_ppo_checkpoint_step(const char *dir);

#endif
