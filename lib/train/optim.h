/* optim.h - AdamW exactly as torch.optim.AdamW (single-tensor CPU path)
 * and gradient clipping as torch.nn.utils.clip_grad_norm_.
 *
 * Per step and element, in float32 with double scalars cast to float
 * where torch casts them:
 *   p  *= 1 - lr*wd                          (decay params only, wd != 0)
 *   m   = lerp(m, g, 1 - beta1)              (fma(w, g - m, m) as ATen)
 *   v   = v*beta2 + ((1 - beta2)*g)*g
 *   den = sqrt(v) / sqrt(1 - beta2^t) + eps
 *   p  += (-(lr / (1 - beta1^t)) * m) / den
 * Weight decay applies only to params with ft_param.decay set, which is
 * how transformers groups parameters (no decay on biases and norms).
 */
#ifndef FT_OPTIM_H
#define FT_OPTIM_H

#include <stddef.h>
#include <stdint.h>
#include "model/model.h"

typedef struct {
	double beta1, beta2, eps, weight_decay;
} ft_adamw_opts;

/* torch/transformers defaults: 0.9, 0.999, 1e-8, 0.0 */
void ft_adamw_opts_default(ft_adamw_opts *o);

typedef struct ft_adamw ft_adamw;

/* Optimize the given params (borrowed; the trainer passes the trainable
 * ones).  Moments start at zero, step at 0. */
ft_adamw *ft_adamw_new(ft_param *const *params, size_t n, const ft_adamw_opts *o);
void ft_adamw_free(ft_adamw *a);

/* One update with learning rate lr using each param's g. */
void ft_adamw_step(ft_adamw *a, double lr);
/* The same with the k-th param at lr[k] (param groups, optim_ext.h). */
void ft_adamw_step_lrs(ft_adamw *a, const double *lr);
int64_t ft_adamw_steps(const ft_adamw *a);

/* The state of an optimizer stepped elsewhere (the CUDA binding keeps it
 * on the device and copies it here for checkpoints): the k-th param (of
 * the n given to ft_adamw_new), its moments (param->n floats each,
 * writable), and the step count. */
size_t ft_adamw_count(const ft_adamw *a);
ft_param *ft_adamw_param(const ft_adamw *a, size_t k);
float *ft_adamw_exp_avg(ft_adamw *a, size_t k);
float *ft_adamw_exp_avg_sq(ft_adamw *a, size_t k);
void ft_adamw_set_steps(ft_adamw *a, int64_t step);

/* Host moments only while needed.  An optimizer stepped elsewhere has no
 * use for its host moments between checkpoints (for a 7B full fine-tune
 * they are 56 GB), so they may be dropped: a dropped moment reads as
 * zeros, and ft_adamw_exp_avg/_sq (and ft_adamw_load, ft_adamw_step)
 * allocate it again, zeroed, when asked for it.  With a fetch set, a
 * dropped moment is the fetch's instead: ft_adamw_save calls it for each
 * param in turn into one scratch pair, so a checkpoint is written from the
 * device without ever holding all the moments on the host.  A moment held
 * on the host wins over the fetch.  ft_adamw_set_fetch drops every host
 * moment; fetch NULL goes back to zeros. */
typedef int (*ft_adamw_fetch)(void *ctx, size_t k, float *exp_avg, float *exp_avg_sq);
void ft_adamw_drop_moments(ft_adamw *a);
void ft_adamw_set_fetch(ft_adamw *a, ft_adamw_fetch get, void *ctx);

/* L2 norm of all gradients (per-tensor norms combined as torch does),
 * then, when max_norm > 0, scale every gradient by
 * min(1, max_norm / (norm + 1e-6)).  Returns the norm before clipping. */
double ft_clip_grad_norm(ft_param *const *params, size_t n, double max_norm);

/* Optimizer state file (docs/FORMAT.md 4): safetensors with, per param,
 * "<param>" (its exact f32 weights), "<param>.exp_avg" and
 * "<param>.exp_avg_sq" (F32, the param's shape)
 * and __metadata__ format=ft-adamw, version, step, betas, eps,
 * weight_decay.  Loading checks every param is present with its size
 * and restores the weights as well as the moments and step. */
int ft_adamw_save(const ft_adamw *a, const char *path);
int ft_adamw_load(ft_adamw *a, const char *path);
/* ft_adamw_load handing each param's moments to put as they are read
 * (one scratch pair, the largest param's size) instead of keeping them,
 * and giving each tensor's mapped pages back once read (ft_st_release),
 * so a file of any size costs one param's worth: the weights still go
 * into the params, the step is set before the first put, and a's
 * moments stay as they were (ZeRO-1's resume, dist.h). */
typedef int (*ft_adamw_put)(void *ctx, size_t k, const float *exp_avg, const float *exp_avg_sq);
int ft_adamw_load_each(ft_adamw *a, const char *path, ft_adamw_put put, void *ctx);

#endif
