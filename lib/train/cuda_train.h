/* cuda_train.h - the trainer's model interface (ft_train_model, see
 * trainer.h) on the CUDA backend.
 *
 * Forward, backward, clipping and AdamW all run on the GPU: the
 * gradients, the fp32 masters of the trainable weights and the AdamW
 * moments live there for the whole run (no per-micro-batch gradient
 * copies, no per-step uploads).  The trainer's loop, schedules, logs and
 * checkpoint files are the CPU path's: the binding's step/state_out/
 * state_in hooks copy the trainable weights and moments out once per
 * checkpoint and back once on resume, and save copies the weights into
 * the CPU model, which writes the adapter or model files.  fp16 uses the
 * device's dynamic loss scaling (a step whose gradients overflow is
 * skipped and the scale halved, as torch's GradScaler).
 *
 * Works in every build: without libft_cuda.so (or a driver)
 * ft_train_model_of_cuda fails with the loader's message.
 */
#ifndef FT_CUDA_TRAIN_H
#define FT_CUDA_TRAIN_H

#include "train/trainer.h"
#include "cuda/ft_cuda.h"

/* Fill *t for model m (borrowed; it must outlive *t). o->max_tokens and
 * o->max_seq bound the micro-batches (B*T and T from the manifests). */
int ft_train_model_of_cuda(ft_model *m, const ft_cuda_opts *o, ft_train_model *t);
/* The device's view of a host micro-batch (the same arrays, borrowed). */
ft_cuda_batch ft_cuda_batch_of(const ft_batch *b);
/* 0 when the CUDA backend can train m as it is set up (fine-tuning type,
 * family, quantization); -1 with the reason otherwise.  Needs no GPU, so
 * --device auto can choose the CPU before anything is allocated. */
int ft_train_cuda_supports(ft_model *m);
/* The device model behind t (peak memory etc.), and freeing it. */
ft_cuda_model *ft_cuda_train_device(const ft_train_model *t);
/* ASFT's reference on the device (NULL without use_asft_loss). */
ft_cuda_model *ft_cuda_train_ref(const ft_train_model *t);
/* ZeRO-1 under mpirun (the device model made with ft_cuda_opts.zero_ranks
 * = the world size, zero_rank = this rank, NCCL open): each step then
 * all-gathers the updated slices over d's NCCL (ft_cuda_zero_gather, under
 * the watchdog); state_out, called on every rank, streams the others'
 * slices to rank 0 as it writes the checkpoint (ft_dist_save_moments), and
 * t->zero_load puts each rank's slice of a resume on its device as rank 0
 * reads the file (ft_dist_load_moments). */
void ft_cuda_train_zero(ft_train_model *t, struct ft_dist *d);
/* Data parallel: gradient group `group` of dm (ft_cuda_grads_group's)
 * summed over d's ranks as one NCCL group of all-reduces on dm's
 * communication stream (sum_group of this binding and of the preference
 * stages', cuda_pref.c); ft_cuda_grads_wait waits for it. */
int ft_cuda_train_sum_group(ft_cuda_model *dm, struct ft_dist *d, int group);
/* ZeRO-1 for the bindings on dm (this one's and cuda_pref.c's): the
 * updated slices all-gathered after a step that updated (under the
 * watchdog, waited for). */
int ft_cuda_train_zero_gather(ft_cuda_model *dm, struct ft_dist *d);
/* Optimizer steps skipped for fp16 overflow so far. */
int64_t ft_cuda_train_skipped(const ft_train_model *t);
void ft_cuda_train_free(ft_train_model *t);
/* fp16: the loss scaler into a checkpoint being written (DIR/scaler.json)
 * and back from one resumed (nothing when it has none); the trainer calls
 * them through ft_train_model.ckpt_save/ckpt_load. */
int ft_cuda_train_scaler_save(const ft_cuda_model *dm, const char *dir);
int ft_cuda_train_scaler_load(ft_cuda_model *dm, const char *dir);
/* fp16: "loss_scale", the scale after the step, for a training log line
 * (ft_train_model.metrics' shape; nothing at an evaluation). */
size_t ft_cuda_train_scale_metric(const ft_cuda_model *dm, int eval, const char **keys, double *vals,
				  size_t cap);

#endif
