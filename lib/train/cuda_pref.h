/* cuda_pref.h - the preference stages' model (ft_pref_model, train/pref.h)
 * on the CUDA backend: the CPU binding's operations (model/model_pref.h)
 * run by lib/cuda/pref.cu, the optimizer on the device as cuda_train.h's
 * (LLaMA-Factory's optimizer extras too, through ext_step, without a value
 * head: rm's AdamW steps the head beside the model), and rm's value head kept and stepped there with the model's parameters
 * (own_value_head).  lib/train/pref.c drives it unchanged: the losses and
 * metrics stay on the host, on per-sequence scalars.
 *
 * A frozen model (the reference: --ref_model, or a frozen copy of the
 * base for full/freeze) binds the same way; it then only runs
 * logps_forward without a graph.  Data parallel: sum_group sums the
 * policy's gradient groups (rm's value head with the embeddings) over
 * NCCL after the micro-batch's forward_backward (no set_grads_ready: no
 * overlap), as cuda_train.h's binding does; ZeRO-1 as its, for dpo and
 * kto (ft_pref_model_cuda_zero).
 */
#ifndef FT_CUDA_PREF_H
#define FT_CUDA_PREF_H

#include "train/pref.h"
#include "cuda/ft_cuda.h"

/* Bind m (borrowed; it must outlive *pm) as a device model with the
 * options of ft_train_model_of_cuda; value_head: rm's policy. */
int ft_pref_model_of_cuda(ft_model *m, const ft_cuda_opts *o, int value_head, ft_pref_model *pm);
/* ZeRO-1 under mpirun, as ft_cuda_train_zero (the device model made with
 * ft_cuda_opts.zero_ranks, NCCL open): each step all-gathers the updated
 * slices, state_out (every rank) streams the moments to rank 0 as it
 * writes them and a resume's zero_load streams each rank its slice
 * (ft_dist_save_moments / ft_dist_load_moments).  Fails for rm: its value
 * head is stepped whole beside the slices. */
int ft_pref_model_cuda_zero(ft_pref_model *pm, struct ft_dist *d);
ft_cuda_model *ft_pref_model_cuda_device(const ft_pref_model *pm);
/* Optimizer steps skipped for fp16 overflow so far. */
int64_t ft_pref_model_cuda_skipped(const ft_pref_model *pm);
void ft_pref_model_cuda_free(ft_pref_model *pm);

#endif
