/* optim_ext.h - the optimizers of LLaMA-Factory's create_custom_optimizer
 * that ft-train runs in place of plain AdamW, behind one small interface
 * the training loop calls (ft_train_opts.optim_ext):
 *
 *   LoRA+ (lib/train/optim_loraplus.c)  AdamW with lora_B at lr x ratio
 *   BAdam (lib/train/optim_badam.c)     block-coordinate AdamW, one layer
 *                                       at a time (badam's BlockOptimizer)
 *   Muon  (lib/train/optim_muon.c)      Newton-Schulz orthogonalized momentum
 *   Adam-mini (lib/train/optim_adam_mini.c)  one second moment per block
 *   GaLore (lib/train/optim_galore.c)   Adam in a low-rank gradient subspace
 *   APOLLO (lib/train/optim_apollo.c)   AdamW scaled by random-projected moments
 *
 * The loop still owns clipping, the schedule and the checkpoint of the
 * weights (optimizer.safetensors); an extension adds its own state files
 * to a checkpoint directory and reads them back on resume.
 */
#ifndef FT_OPTIM_EXT_H
#define FT_OPTIM_EXT_H

#include <stddef.h>
#include "train/optim.h"

/* The state of an optimizer that a model stepping itself (the GPU,
 * lib/train/cuda_train.c) runs in place of the CPU step, mirroring it
 * (lib/cuda/optim_x.cu): live pointers into the extension.  Per param
 * p[k]: kind[k] (Adam-mini: its block kind, 0 per element; Muon: 1 Muon,
 * 0 its AdamW; GaLore: 1 projected), block[k] (Adam-mini: elements per
 * second-moment block), decay[k] (NULL: all decay), the state s1[k] of
 * n1[k] floats, s2[k] of n2[k] and s3[k] of n3[k] (0: none), which the
 * model reads before its first update or after a resume and writes back
 * before a checkpoint; *step the count the CPU step increments, the model
 * incrementing it in its place.  GaLore, APOLLO: right[k], rank[k] the
 * projection (optim_galore.c, optim_apollo.c), a new one at the steps
 * *step % interval == 0 from the clipped gradient G by project (into
 * s3[k], returned; NULL after ft_fail), scale galore_scale or
 * apollo_scale; APOLLO: scale_tensor, scale_front its options and limit
 * Fira's limiter on param k's update norm (the divisor; its state stays
 * the extension's). */
typedef enum { FT_EXT_ADAM_MINI = 1, FT_EXT_MUON, FT_EXT_GALORE, FT_EXT_APOLLO } ft_ext_algo;
typedef struct {
	ft_ext_algo algo;
	ft_param *const *p;
	size_t n;
	const int *kind, *decay;
	const size_t *block, *n1, *n2;
	float **s1, **s2;
	int64_t *step;
	double wd, beta1, beta2, eps;
	/* GaLore */
	const int *right, *rank;
	float **s3;
	const size_t *n3;
	int interval;
	double scale;
	const float *(*project)(void *self, size_t k, const float *G);
	void *self;
	/* APOLLO */
	int scale_tensor, scale_front;
	float (*limit)(void *self, size_t k, float nrm);
} ft_ext_dev;

/* The per-param arrays a projected optimizer (GaLore, APOLLO) exposes as
 * its ft_ext_dev: kind[k] (projected or plain AdamW), decay, right, rank,
 * n1 (the moments' length), n3 (the projector's) and s1, s2, s3 (the
 * moments and the projector, the extension's own buffers). */
typedef struct {
	int *kind, *decay, *right, *rank;
	size_t *n1, *n3;
	float **s1, **s2, **s3;
} ft_ext_proj;
/* n entries of each array, zeroed (at least one, so n = 0 allocates) */
void ft_ext_proj_alloc(ft_ext_proj *a, size_t n);
void ft_ext_proj_free(ft_ext_proj *a);
/* d's array fields over a's (n2 = n1: both moments have the length) */
void ft_ext_proj_view(const ft_ext_proj *a, ft_ext_dev *d);

typedef struct ft_optim_ext {
	void *self;
	/* Before clipping: BAdam zeroes the gradients outside the active
	 * block, which then count in the norm as the None gradients of
	 * frozen params do in torch (not at all).  May be NULL. */
	void (*pre_clip)(void *self);
	/* One update in place of ft_adamw_step(opt, lr): lr is the scheduled
	 * learning rate, lambda the schedule's factor (lr = base * lambda),
	 * so a group with its own base lr gets base_g * lambda as LambdaLR
	 * computes it. */
	int (*step)(void *self, ft_adamw *opt, double lr, double lambda);
	/* Extra state into / from a checkpoint directory.  May be NULL. */
	int (*save)(void *self, const char *dir);
	int (*load)(void *self, const char *dir);
	void (*free)(void *self);
	/* AdamW with a learning rate per param (LoRA+): p's lr at the
	 * schedule's factor lambda.  A model that steps itself (the GPU,
	 * lib/train/cuda_train.c) runs its AdamW with these; may be NULL. */
	double (*param_lr)(void *self, const ft_param *p, double lambda);
	/* Block-wise AdamW (BAdam), both together: the AdamW step would run
	 * (over copies of the active params, sharing their w and g; every one
	 * decaying by *weight_decay) with the scheduled lr, and the extension's
	 * bookkeeping after that update (the switch).  A model that steps
	 * itself updates those params only, with the AdamW's step count + 1,
	 * and keeps its moments; may be NULL. */
	ft_adamw *(*block_adamw)(void *self, double *weight_decay);
	void (*after_step)(void *self);
	/* Adam-mini, Muon, GaLore, APOLLO: what a model that steps itself runs;
	 * may be NULL. */
	const ft_ext_dev *dev;
} ft_optim_ext;

void ft_optim_ext_free(ft_optim_ext *e);

/* LoRA+ as LLaMA-Factory's _create_loraplus_optimizer: lora_B weights
 * (and 1-D params) at learning_rate * ratio, everything else at
 * learning_rate; lora_embedding_B at lr_embedding (ft puts no LoRA on
 * embeddings, so that group is always empty). */
ft_optim_ext *ft_loraplus_new(double learning_rate, double ratio, double lr_embedding);

typedef enum { FT_BADAM_ASCENDING, FT_BADAM_DESCENDING, FT_BADAM_RANDOM, FT_BADAM_FIXED } ft_badam_mode;

typedef struct {
	ft_badam_mode mode;            /* ascending (LLaMA-Factory's default) */
	int switch_interval;           /* 50 */
	int has_start_block, start_block;  /* else by mode (first, last, random);
					      a Python index (-1: the last) */
	double beta1, beta2, eps;      /* the base AdamW's */
	uint64_t seed;                 /* the random order */
	int verbose;                   /* badam_verbose: the switches go to on_switch */
	void (*on_switch)(void *ctx, int block, const char *prefix);
	void *ctx;
} ft_badam_opts;

/* "ascending" ... ; -1 with a message otherwise. */
int ft_badam_mode_parse(const char *s);

/* BAdam over the params (borrowed; the model's, in its order) whose names
 * hold a layer prefix ("model.layers.N."); the others are never updated.
 * NULL with a message when no param is in a layer. */
ft_optim_ext *ft_badam_new(ft_param *const *params, size_t n, const ft_badam_opts *o);

/* Muon as LLaMA-Factory's use_muon (lib/train/optim_muon.c): Muon for the
 * 2-D params outside embeddings and lm_head, that file's AdamW for the
 * rest; weight decay wd on all.  params borrowed (the trainable ones). */
ft_optim_ext *ft_muon_new(ft_param *const *params, size_t n, double wd, double beta1, double beta2,
			  double eps);

/* Adam-mini as LLaMA-Factory's use_adam_mini (lib/train/optim_adam_mini.c,
 * the adam_mini package 1.1.1): dim = hidden_size, n_heads =
 * num_attention_heads.  NULL with a message when a q/k tensor is not made
 * of whole heads (LoRA factors). */
ft_optim_ext *ft_adam_mini_new(ft_param *const *params, size_t n, int dim, int n_heads, double wd,
			       double beta1, double beta2, double eps);

/* GaLore as LLaMA-Factory's use_galore (lib/train/optim_galore.c,
 * galore_torch 1.0's GaLoreAdamW).  is_galore[k]: params[k] is a weight
 * of a galore_target module. */
typedef enum { FT_GALORE_STD, FT_GALORE_REVERSE_STD, FT_GALORE_RIGHT, FT_GALORE_LEFT } ft_galore_proj;
typedef struct {
	int rank;                      /* galore_rank (16) */
	int update_interval;           /* galore_update_interval (200) */
	double scale;                  /* galore_scale (2.0) */
	ft_galore_proj proj_type;      /* std */
	double beta1, beta2, eps, weight_decay;
} ft_galore_opts;
int ft_galore_proj_parse(const char *s);
ft_optim_ext *ft_galore_new(ft_param *const *params, size_t n, const int *is_galore,
			    const ft_galore_opts *o);
/* APOLLO as LLaMA-Factory's use_apollo (lib/train/optim_apollo.c,
 * apollo-torch 1.0's APOLLOAdamW; apollo_proj random, or svd).  proj_type:
 * std, or right/left where they pick std's side. */
typedef struct {
	int rank;                      /* apollo_rank (16) */
	int update_interval;           /* apollo_update_interval (200) */
	double scale;                  /* apollo_scale (32.0) */
	ft_galore_proj proj_type;      /* std */
	int scale_tensor;              /* apollo_scale_type tensor (else channel) */
	int scale_front;               /* apollo_scale_front */
	int layerwise;                 /* one optimizer per param: every projector seeded 1 */
	int svd;                       /* apollo_proj svd (else random) */
	double beta1, beta2, eps, weight_decay;
} ft_apollo_opts;
ft_optim_ext *ft_apollo_new(ft_param *const *params, size_t n, const int *is_apollo,
			    const ft_apollo_opts *o);

#endif
