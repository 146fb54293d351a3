/* cuda_ext_internal.h - what the trainer's device bindings share: the
 * optimizer state at checkpoints (below), and LLaMA-Factory's optimizer
 * extras (optim_ext.h) on the CUDA backend (cuda_train.c for
 * pt/sft, cuda_pref.c for dpo/kto): LoRA+'s per-param lr and BAdam's
 * active block through ft_cuda_step_ext (lib/cuda/optim_ext.cu), the
 * optimizers in place of AdamW (ft_ext_dev: Adam-mini, Muon, GaLore,
 * APOLLO) through ft_cuda_step_x (lib/cuda/optim_x.cu).  The extension
 * keeps its state on the host between checkpoints; the device holds it
 * while it steps, uploaded at the first step after a resume or a BAdam
 * switch and fetched back by ftp_cuda_ext_state_out. */
#ifndef FT_CUDA_EXT_INTERNAL_H
#define FT_CUDA_EXT_INTERNAL_H

#include "train/optim_ext.h"
#include "train/dist.h"
#include "cuda/ft_cuda.h"
#include "model/model.h"

typedef struct {
	ft_model *m;                 /* the host model whose params the device mirrors */
	ft_cuda_model *dm;
	const ft_optim_ext *ext;     /* the extras' optimizer, once it stepped */
	int64_t synced;              /* the extension's step count the device's state is at */
} ftp_cuda_ext;

/* The model's index of param p (the extension's params are the model's
 * own objects); -1 after ft_fail for another. */
long ftp_cuda_param_index(ft_model *m, const ft_param *p);
void ftp_cuda_ext_init(ftp_cuda_ext *s, ft_model *m, ft_cuda_model *dm);
/* One step with e in place of AdamW (the trainer's ext_step, lambda the
 * schedule's factor at lr); *skipped 1 for an fp16 overflow.  0 or -1. */
int ftp_cuda_ext_step(ftp_cuda_ext *s, const ft_optim_ext *e, const ft_adamw_opts *o, double lr,
		      double lambda, double max_norm, double *gnorm, int *skipped);
/* 1 when the extension's optimizer replaces AdamW (ft_ext_dev): the
 * trainer's AdamW stays untouched at state_out. */
int ftp_cuda_ext_owns_state(const ftp_cuda_ext *s);
/* Before a checkpoint: the device's optimizer state into the extension
 * (ft_ext_dev's, BAdam's block), while the device holds it. */
int ftp_cuda_ext_state_out(ftp_cuda_ext *s);

/* ---- the AdamW moments at checkpoints (cuda_ext.c) ----
 * A binding's moments of optimizer param p: get (device -> m, v) and set
 * (m, v and the step -> device); the preference binding's include rm's
 * value head beside the model's params.  0, or -1 after ft_fail. */
typedef int (*ftp_cuda_moments_get)(void *b, const ft_param *p, float *m, float *v);
typedef int (*ftp_cuda_moments_set)(void *b, const ft_param *p, const float *m, const float *v,
				    int64_t step);
typedef struct {
	ft_cuda_model *dm;
	ftp_cuda_ext *ext;       /* the binding's extras (their state first) */
	ftp_cuda_moments_get get;
	ftp_cuda_moments_set set;
	void *b;                 /* the binding, get's and set's first argument */
	ft_dist *zero;           /* ZeRO-1: the job whose ranks hold the slices; NULL: none */
	ft_adamw *out;           /* the optimizer a checkpoint writes or reads */
	ft_dist_moments zsave;   /* ZeRO-1: rank 0's fetch of the others' slices */
	int zero_loaded;         /* ZeRO-1: the resume put the slice on the device */
} ftp_cuda_state;

void ftp_cuda_state_init(ftp_cuda_state *s, ft_cuda_model *dm, ftp_cuda_ext *ext, ftp_cuda_moments_get get,
			 ftp_cuda_moments_set set, void *b);
/* state_out after the weights came back: an extras' optimizer holding the
 * state fills its own (opt stays untouched); else opt gets the device's
 * step and fetches each param's moments from the device as the
 * checkpoint is written (ZeRO-1: rank 0 receives the others' pieces just
 * before writing each), then BAdam's block. */
int ftp_cuda_state_out(ftp_cuda_state *s, ft_adamw *opt);
/* ZeRO-1's zero_load: this rank's slice of rank 0's file onto the device,
 * streamed (a later state_in then copies the weights only). */
int ftp_cuda_state_zero_load(ftp_cuda_state *s, ft_adamw *opt, const char *path);
/* state_in's moments: opt's onto the device (none after zero_load). */
int ftp_cuda_state_in(ftp_cuda_state *s, const ft_adamw *opt);

#endif
