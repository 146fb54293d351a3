/* cuda_train.h - the trainer's model interface (ft_train_model, see
 * trainer.h) backed by the CUDA backend: forward and backward run on the
 * GPU, gradients come back to the CPU model after every micro-batch and
 * the trainer's own clipping and AdamW (lib/train/optim.c) update the CPU
 * model's weights, which go back to the GPU before the next micro-batch.
 *
 * That makes `ft-train --device cuda` a one-line change in the tool
 * (this instead of ft_train_model_of) with checkpoints, resume and logs
 * unchanged.  The price is a host round trip of the trainable
 * parameters per step: small for LoRA, large for full fine-tuning, where
 * the device optimizer (ft_cuda_step, docs/CUDA.md) is the fast path.
 * fp32 and bf16 only (fp16's loss scaling needs ft_cuda_step).
 *
 * Works in every build: without the CUDA backend linked (make
 * CUDA_LINK=1), ft_train_model_of_cuda fails with a message saying so.
 */
#ifndef FT_CUDA_TRAIN_H
#define FT_CUDA_TRAIN_H

#include "train/trainer.h"
#include "cuda/ft_cuda.h"

/* Fill *t for model m (borrowed; it must outlive *t). o->max_tokens and
 * o->max_seq bound the micro-batches (B*T and T from the manifest). */
int ft_train_model_of_cuda(ft_model *m, const ft_cuda_opts *o, ft_train_model *t);
/* The device model behind t (peak memory etc.), and freeing it. */
ft_cuda_model *ft_cuda_train_device(const ft_train_model *t);
void ft_cuda_train_free(ft_train_model *t);

#endif
