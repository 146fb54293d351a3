/* ft_cuda.h - the CUDA backend's C API.
 *
 * The kernels live in build/libft_cuda.so (the .cu files of lib/cuda), loaded on first
 * use; in libft.a, lib/cuda/backend.c implements these functions by calling
 * into it, and they fail with ft_fail (the .so is missing, or no driver)
 * rather than crash when the backend cannot be loaded.  Devices are
 * found with lib/model/device.h.
 *
 * A device copy of a CPU ft_model (lib/model/model.h) that runs the same
 * forward and backward passes layer by layer (lib/cuda/layer.cu, model_fwd.cu mirror
 * lib/model/model_fwd.c), plus AdamW, gradient clipping and fp16 loss scaling
 * on the device.  The CPU model stays the owner of names, shapes,
 * checkpoints and file formats: gradients and trained weights are copied
 * back into it (ft_cuda_copy_*_to_host) when the trainer needs them.
 *
 * Every function returns -1 (NULL) after ft_fail() naming the CUDA or
 * cuBLAS call, the error and the tensor shapes; nothing prints.
 * Not thread-safe: one host thread drives one ft_cuda_model.
 */
#ifndef FT_CUDA_H
#define FT_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include "model/cuda_view.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ft_model;

typedef enum {
	FT_CUDA_F32 = 0,   /* everything fp32 (parity path, no TF32) */
	FT_CUDA_BF16 = 1,  /* frozen weights + matmul inputs bf16, fp32 masters */
	FT_CUDA_F16 = 2,   /* as bf16 in fp16, with dynamic loss scaling */
} ft_cuda_precision;

typedef struct {
	ft_cuda_precision precision;
	int device;              /* CUDA device index */
	int max_tokens;          /* B*T of the largest micro-batch */
	int max_seq;             /* T of the longest row */
	size_t mem_limit;        /* bytes; 0 = what the device has free */
	double loss_scale;       /* fp16 initial scale; 0 = 65536 */
	int inference;           /* forward only (ft_cuda_infer_*): no gradients,
				    AdamW state or masters, one activation set */
	/* ZeRO-1 (lib/cuda/zero.cu): with zero_ranks > 1 this model keeps the
	 * AdamW moments of slice zero_rank only (the trainable parameters in
	 * ft_model_param order, laid end to end and split as
	 * util/shard.h), steps that slice, and ft_cuda_zero_gather brings
	 * the others' updated slices in; 0 or 1: every moment */
	int zero_ranks, zero_rank;
	/* inference only: this model's weights are those of weights_of, a
	 * device model of the same host model in the same precision on the
	 * same device (grpo/ppo's rollouts decoded on the policy being
	 * trained): none allocated or uploaded, none in the plan; weights_of
	 * must outlive it */
	struct ft_cuda_model *weights_of;
} ft_cuda_opts;

/* Device bytes by purpose (the whole plan is one allocation). */
typedef struct {
	size_t weights;          /* frozen + working copies (fp32 or half) */
	size_t master;           /* fp32 masters of trainable half weights */
	size_t grads;            /* fp32 gradients of trainable params */
	size_t optim;            /* AdamW exp_avg + exp_avg_sq */
	size_t acts;             /* saved activations + residual stream */
	size_t scratch;          /* backward buffers, attention, LM head, casts */
	size_t total;
} ft_cuda_plan;

typedef struct ft_cuda_model ft_cuda_model;

/* Bytes the device model needs for a view (see cuda_view.h) and options;
 * no GPU needed. */
int ft_cuda_plan_memory(const ft_cuda_view *v, const ft_cuda_opts *o, ft_cuda_plan *p);
/* "12.3 GiB (weights 6.1, masters 0, grads 0.0, ...)" */
void ft_cuda_plan_format(const ft_cuda_plan *p, char *buf, size_t n);

/* Upload m (borrowed: it must outlive the device model).  Plans memory
 * first and fails with a suggestion when it does not fit. */
ft_cuda_model *ft_cuda_model_new(struct ft_model *m, const ft_cuda_opts *o);
void ft_cuda_model_free(ft_cuda_model *dm);
const ft_cuda_plan *ft_cuda_model_plan(const ft_cuda_model *dm);

int ft_cuda_zero_grad(ft_cuda_model *dm);
/* As ft_model_forward_backward / ft_model_forward (lib/model/model.h). */
int ft_cuda_forward_backward(ft_cuda_model *dm, const ft_cuda_batch *b, float grad_scale,
			     double *loss_sum, int64_t *n_tokens);
int ft_cuda_forward(ft_cuda_model *dm, const ft_cuda_batch *b, float *logits,
		    double *loss_sum, int64_t *n_tokens);

typedef struct {
	double beta1, beta2, eps, weight_decay;
} ft_cuda_adamw_opts;

/* One optimizer step over the trainable parameters: (fp16: unscale, and
 * on inf/nan skip the step, halve the scale and set *skipped), then
 * clip_grad_norm_ (max_norm <= 0: norm only), AdamW exactly as
 * lib/train/optim.c, and refresh of the half-precision working copies.
 * Gradients are left as they are (call ft_cuda_zero_grad). */
int ft_cuda_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr,
		 double max_grad_norm, double *grad_norm, int *skipped);
/* ft_cuda_step with ps[i] the update of the i-th CPU parameter
 * (ft_model_param order, n of them; optim_ext.cu): its lr and weight
 * decay (LoRA+'s groups), or none (on 0: BAdam's inactive blocks, whose
 * gradients are zeroed first, as None gradients count for nothing in the
 * norm).  step > 0: the AdamW step count of this update (BAdam's own,
 * restarting at each switch), leaving ft_cuda_steps as it was; 0: the
 * model's count, incremented. */
typedef struct {
	double lr, weight_decay;
	int on;
} ft_cuda_pstep;
int ft_cuda_step_ext(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, const ft_cuda_pstep *ps,
		     size_t n, int64_t step, double max_grad_norm, double *grad_norm, int *skipped);
/* ft_cuda_step with one of LLaMA-Factory's optimizers in place of AdamW
 * (optim_x.cu, each mirroring its CPU step in lib/train/optim_*.c): the
 * fp16 check, the norm and the clipping as ft_cuda_step, then xp[i]'s
 * update of the i-th CPU parameter (n of them), with the optimizer's own
 * state (ft_cuda_xstate) and step count o->step (this update's, 1 first),
 * leaving ft_cuda_steps as it was.  A stepped param must be one device
 * tensor (not Phi-3's fused row blocks). */
typedef enum { FT_CUDA_ADAM_MINI = 1, FT_CUDA_MUON, FT_CUDA_GALORE, FT_CUDA_APOLLO } ft_cuda_xalgo;
typedef struct {
	int on;          /* stepped (else left alone) */
	int kind;        /* Adam-mini: 0 per element, else blocks; Muon: 1 Muon, 0 its AdamW;
			    GaLore, APOLLO: 1 projected, 0 their Adam alone */
	size_t block;    /* Adam-mini: elements per second-moment block */
	int decay;       /* weight decay applies */
	int rows, cols;  /* Muon, GaLore, APOLLO: the 2-D param's shape */
	int right, rank; /* GaLore, APOLLO: R = G P^T (P [rank, cols]), else P^T G (P [rows, rank]) */
	int reproject;   /* GaLore, APOLLO: a new P this step (o->project) */
} ft_cuda_xparam;
typedef struct {
	ft_cuda_xalgo algo;
	double lr, weight_decay, beta1, beta2, eps;
	int64_t step;
	double scale;    /* galore_scale, apollo_scale */
	int scale_tensor, scale_front;   /* APOLLO: apollo_scale_type tensor, apollo_scale_front */
	/* GaLore, APOLLO: the new projector of the i-th CPU parameter from its
	 * clipped gradient G (host, the CPU model's g array; APOLLO's random
	 * projection ignores it), on the host: P's floats, or NULL after
	 * ft_fail.  APOLLO: Fira's limiter on the i-th param's update of norm
	 * nrm, its state on the host: the divisor.  Called on the stepping
	 * thread. */
	const float *(*project)(void *ctx, size_t i, const float *G);
	float (*limit)(void *ctx, size_t i, float nrm);
	void *ctx;
} ft_cuda_xopt;
int ft_cuda_step_x(ft_cuda_model *dm, const ft_cuda_xopt *o, const ft_cuda_xparam *xp, size_t n,
		   double max_grad_norm, double *grad_norm, int *skipped);
/* That optimizer's state of the i-th CPU parameter, to the host (to_host)
 * or from it: s1 (n1 floats) and s2 (n2; 0: none), at most the param's
 * size each, in the device's AdamW moments; s3 (n3; 0: none), GaLore's
 * or APOLLO's projector, in a buffer of its own. */
int ft_cuda_xstate(ft_cuda_model *dm, size_t i, float *s1, size_t n1, float *s2, size_t n2,
		   float *s3, size_t n3, int to_host);
int64_t ft_cuda_steps(const ft_cuda_model *dm);
double ft_cuda_loss_scale(const ft_cuda_model *dm);
/* fp16: the dynamic loss scale and the steps since it last changed
 * (torch's GradScaler scale and _growth_tracker; it doubles after 2000),
 * for checkpoints; other precisions fail. */
int ft_cuda_scaler_get(const ft_cuda_model *dm, double *scale, int64_t *growth_tracker);
int ft_cuda_scaler_set(ft_cuda_model *dm, double scale, int64_t growth_tracker);

/* fp32 gradients -> the CPU model's g arrays (fp16: divided by the loss
 * scale they were computed with, whether or not ft_cuda_step has
 * unscaled them yet or halved the scale since). */
int ft_cuda_copy_grads_to_host(ft_cuda_model *dm);
/* Trainable weights (fp32 masters) -> the CPU model's w arrays, and back
 * (after a checkpoint was loaded into the CPU model). */
int ft_cuda_copy_weights_to_host(ft_cuda_model *dm);
int ft_cuda_copy_weights_to_device(ft_cuda_model *dm);
/* AdamW moments of the i-th CPU parameter (ft_model_param order), for
 * checkpoints; frozen params: -1.  n floats each. */
int ft_cuda_adamw_get(ft_cuda_model *dm, size_t i, float *exp_avg, float *exp_avg_sq);
int ft_cuda_adamw_set(ft_cuda_model *dm, size_t i, const float *exp_avg,
		      const float *exp_avg_sq, int64_t step);

/* The number of forward_backward calls made so far, which draws the
 * LoRA dropout masks (as the CPU model's): set on resume. */
void ft_cuda_set_position(ft_cuda_model *dm, int64_t micro_batches_done);

/* Data parallel (lib/train/cuda_train.c: the trainer's NCCL all-reduce).
 * ft_cuda_grad_fn gets a trainable tensor's fp32 gradient in device memory
 * (n floats) and the cudaStream_t to use as void *; < 0 stops.  With fn
 * set, ft_cuda_forward_backward records an event on the model's stream as
 * each group of gradients becomes final and then calls fn(ctx, group) on
 * the calling thread: the groups of ft_model_set_grads_ready, L (layers)
 * for the final norm and an untied lm_head, then the decoder layers L-1
 * ... 0, then -1 for the embeddings (a tied lm_head's too); NULL stops it.
 * ft_cuda_grads_group calls fn(ctx, g, n, stream) for each gradient of a
 * group, in the model's tensor order (group -1 then a value head's weight
 * and bias, ft_cuda_pref_new's), with its communication stream, made to wait first for the
 * group's event (or, when this backward recorded none, for all work queued
 * so far); it may be called from another thread.  ft_cuda_grads_wait
 * waits for the communication stream. */
typedef int (*ft_cuda_grad_fn)(void *ctx, float *g, size_t n, void *stream);
typedef void (*ft_cuda_ready_fn)(void *ctx, int group);
void ft_cuda_set_grads_ready(ft_cuda_model *dm, ft_cuda_ready_fn fn, void *ctx);
int ft_cuda_grads_group(ft_cuda_model *dm, int group, ft_cuda_grad_fn fn, void *ctx);
int ft_cuda_grads_wait(ft_cuda_model *dm);
/* ZeRO-1 (o.zero_ranks > 1): ft_cuda_step updates this rank's slice (the
 * norm and clipping over every gradient, summed on every rank) and leaves
 * the half working copies alone; then ft_cuda_zero_gather, between
 * group(ctx, 1) and group(ctx, 0), calls bcast(ctx, w, n, root, stream)
 * for each piece of fp32 weights that rank `root` updated, in the same
 * order on every rank (root by root, the model's tensor order), on the
 * model's stream, and after the group refreshes the half copies of the
 * trainable weights from the gathered masters.  The caller waits for it
 * (ft_cuda_sync).  Checkpoints: ft_cuda_adamw_get/set move this rank's
 * part of each parameter's moments only. */
typedef int (*ft_cuda_bcast_fn)(void *ctx, float *w, size_t n, int root, void *stream);
int ft_cuda_zero_gather(ft_cuda_model *dm, ft_cuda_bcast_fn bcast,
			int (*group)(void *ctx, int start), void *ctx);

/* Peak device bytes allocated by ft (the allocator's high-water mark:
 * the planned allocation, cuBLAS's workspace inside it; not the CUDA
 * context or other processes). */
size_t ft_cuda_peak_bytes(const ft_cuda_model *dm);
/* Wait for the device and report any asynchronous error. */
int ft_cuda_sync(ft_cuda_model *dm);

/* ---- KV-cache decoding (lib/cuda/infer.cu mirrors lib/model/infer.c) ----
 * A forward-only device model plus a device KV cache for `rows`
 * sequences of up to `cap` tokens.  ft_cuda_infer_forward has the
 * contract of ft_infer_forward (lib/model/infer.h): a call whose rows all
 * start empty is a prefill (the prompts right-padded into one [B, T]
 * batch through the training attention), any other call attends over the
 * cache with the decode kernel, at most `rows` tokens at a time.  Only
 * the requested logits rows come back to the host.  LoRA adapters of m
 * are applied on the fly, as on the CPU. */
/* The caller's names for the settings that shrink a decoder's plan, for
 * the message of one that does not fit: ft-generate's flags, or ft-train
 * --stage grpo|ppo's (whose rollout batch is no single flag).  NULL: said
 * in words ("the number of sequences decoded together", ...). */
typedef struct {
	const char *rows;        /* sequences decoded together */
	const char *new_tokens;  /* tokens generated per sequence */
	const char *prompt;      /* prompt length */
} ft_cuda_infer_knobs;

typedef struct {
	ft_cuda_precision precision;   /* weights as training's: fp32, bf16, fp16 */
	int device;
	int rows;                /* sequences decoded together */
	int cap;                 /* tokens per sequence (prompt + new) */
	int max_prompt;          /* longest prefill run: the [rows, max_prompt] batch */
	size_t mem_limit;        /* bytes; 0 = what the device has free */
	ft_cuda_infer_knobs knobs;   /* what the out-of-memory message tells to lower */
	struct ft_cuda_model *weights_of;   /* NULL, or the model whose weights it
					       decodes with (ft_cuda_opts) */
} ft_cuda_infer_opts;

typedef struct {
	ft_cuda_plan model;      /* weights + forward buffers of the prefill batch */
	size_t kv;               /* K and V of every layer, fp32 [L, rows, cap, Hk*hd] */
	size_t decode;           /* decode-attention scores [rows, Hq, cap], token maps */
	size_t total;
} ft_cuda_infer_plan;

typedef struct ft_cuda_infer ft_cuda_infer;

int ft_cuda_infer_plan_memory(const ft_cuda_view *v, const ft_cuda_infer_opts *o,
			      ft_cuda_infer_plan *p);
/* "1.23 GiB (weights 0.50, KV cache 0.40, prefill buffers 0.30, decode 0.03)" */
void ft_cuda_infer_plan_format(const ft_cuda_infer_plan *p, char *buf, size_t n);
/* Plans first and refuses (needed and available bytes) before allocating. */
ft_cuda_infer *ft_cuda_infer_new(struct ft_model *m, const ft_cuda_infer_opts *o);
void ft_cuda_infer_free(ft_cuda_infer *c);
/* m's trained tensors (adapters, or all weights of full fine-tuning) read
 * again from m, which must be the model c was built from, its arrays
 * changed in place (grpo/ppo's policy between generations); the frozen
 * base is not uploaded again.  Over weights_of: nothing to copy, that
 * model's queued work is waited for.  The generation settings of m (GRPO's
 * NEFTune: on, its stream) are read again.  What decoding computes
 * once from the weights (DoRA's factors, OFT's rotations) is redone.  The
 * cache is left as it is. */
int ft_cuda_infer_refresh(ft_cuda_infer *c);
const ft_cuda_infer_opts *ft_cuda_infer_options(const ft_cuda_infer *c);
const ft_cuda_infer_plan *ft_cuda_infer_get_plan(const ft_cuda_infer *c);
void ft_cuda_infer_reset(ft_cuda_infer *c);           /* every row empty */
int ft_cuda_infer_len(const ft_cuda_infer *c, int row);
int ft_cuda_infer_forward(ft_cuda_infer *c, const int32_t *tokens, const int *rows, int N,
			  const int *want, float *logits);

/* The device attention alone (tests/gpu): as ft_attention_forward then
 * ft_attention_backward with dout (lib/model/layers.h, same layouts: q,
 * dout, out, dq [B*T, Hq*hd]; k, v, dk, dv [B*T, Hk*hd]; lse [B*Hq*T];
 * seg NULL or [B*T]; len NULL or [B], each row's real length as
 * ft_attn_shape.len), on CUDA device `device` with its own memory; every
 * pointer is a host array. */
/* len: [B] row lengths or NULL (key padding); scale 0: 1/sqrt(hd) (Gemma:
 * query_pre_attn_scalar^-0.5); softcap > 0: scores capped after the scale
 * (Gemma 2), as ft_attn_shape. */
typedef struct {
	int B, T, Hq, Hk, hd, window;
	const int32_t *seg, *len;
	float scale, softcap;
} ft_cuda_attn_shape;
int ft_cuda_attention_run(int device, const ft_cuda_attn_shape *s, const float *q,
			  const float *k, const float *v, const float *dout, float *out,
			  float *lse, float *dq, float *dk, float *dv);
/* The same with the element type p on the device (FT_CUDA_BF16 /
 * FT_CUDA_F16: the tensor-core kernels): the host arrays stay fp32, the
 * inputs are rounded to p on the way in (nearest even, the CPU's
 * conversions) and the results widened on the way out; lse is fp32. */
int ft_cuda_attention_run_as(int device, ft_cuda_precision p, const ft_cuda_attn_shape *s,
			     const float *q, const float *k, const float *v, const float *dout,
			     float *out, float *lse, float *dq, float *dk, float *dv);

/* ---- the preference stages (lib/cuda/pref.cu mirrors lib/model/model_pref.c) ----
 * The operations of model/model_pref.h on a device model, for the
 * ft_pref_model binding of lib/train/cuda_pref.h: per-position label
 * log-probabilities (logp [B*T], 0 where no target; lmean NULL or [B*T]
 * the mean logit of every position) with their backward pass from
 * dL/dlogp [B*T]; PEFT's disable_adapter; and, with value_head, TRL's
 * value head (weight [D], bias [1], its gradient and AdamW moments on the
 * device) at distinct positions pos[0..n), whose backward pass adds the
 * head's gradient and the model's.  ft_cuda_pref_step steps the model's
 * parameters and the head together (ft_cuda_step's arithmetic, one norm),
 * ft_cuda_pref_zero_grad zeroes both.  Host arrays throughout.  dm must
 * outlive the ft_cuda_pref (with a value head, ft_cuda_grads_group sums the
 * head's gradients with dm's group -1 until ft_cuda_pref_free). */
typedef struct ft_cuda_pref ft_cuda_pref;
ft_cuda_pref *ft_cuda_pref_new(ft_cuda_model *dm, int value_head);
void ft_cuda_pref_free(ft_cuda_pref *p);
int ft_cuda_logps_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, float *logp,
			  float *lmean);
int ft_cuda_logps_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const float *dlogp);
void ft_cuda_set_adapters(ft_cuda_model *dm, int on);
int ft_cuda_value_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, const int32_t *pos,
			  int n, float p_drop, uint64_t seed, float *score);
int ft_cuda_value_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const int32_t *pos, int n,
			   float p_drop, uint64_t seed, const float *dscore);
/* Tensor k (0 weight, 1 bias) of the head: weights and moments, each NULL
 * to leave it. */
int ft_cuda_value_head_set(ft_cuda_pref *p, int k, const float *w, const float *m, const float *v);
int ft_cuda_value_head_get(ft_cuda_pref *p, int k, float *w, float *m, float *v);
int ft_cuda_pref_zero_grad(ft_cuda_pref *p);
/* GRPO (model_pref.h's ft_model_set_logp_temperature and _entropy): from
 * now on the log-probs are those of the (capped) logits / temperature (1:
 * untouched, bit for bit) and their backward pass goes through the
 * division; entropy (NULL: none) a host array of max_tokens floats that
 * each ft_cuda_logps_forward fills with every target position's entropy
 * of the tempered logits (0 elsewhere).  Fails for temperature <= 0. */
int ft_cuda_logps_options(ft_cuda_pref *p, float temperature, float *entropy);
int ft_cuda_pref_step(ft_cuda_pref *p, const ft_cuda_adamw_opts *o, double lr,
		      double max_grad_norm, double *grad_norm, int *skipped);

/* ---- the SFT token losses (lib/cuda/tokloss.cu; lib/model/model_tokloss.c) ----
 * EAFT: h[0..n) the entropies of the softmax over the top 20 logits of
 * the n label rows the last ft_cuda_logps_forward gathered. */
int ft_cuda_eaft_entropy(ft_cuda_model *dm, int n, double *h);
/* ASFT (lib/cuda/asft.cu; lib/model/model_asft.c): b's mean DFT loss plus
 * alpha times its mean KL(ref || dm) over the label positions in *loss,
 * ref a frozen device model of the same vocabulary; with train the
 * gradients of that mean times grad_scale. */
int ft_cuda_asft(ft_cuda_model *dm, ft_cuda_model *ref, const ft_cuda_batch *b, int train,
		 float grad_scale, double alpha, double *loss);

#ifdef __cplusplus
}
#endif

#endif
