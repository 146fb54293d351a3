/* decoder.h - the device KV-cache decoder (ft_cuda_infer_*, ft_cuda.h)
 * as the ft_decoder a generation runs on (model/infer.h; gen/generate.h's
 * ft_generate_on): ft-generate --device cuda and the rollouts of ft-train
 * --stage grpo|ppo on the device.  Host code in libft.a over the backend's
 * table; the forward passes run on the device, the sampling stays on the
 * host with the CPU's generator and draws.
 */
#ifndef FT_CUDA_DECODER_H
#define FT_CUDA_DECODER_H

#include "cuda/ft_cuda.h"
#include "model/infer.h"
#include "model/model.h"

typedef struct ft_cuda_decoder ft_cuda_decoder;

/* The weights of m (with its adapters, as they are now: a later change of
 * m is not seen until ft_cuda_decoder_refresh) uploaded in o->precision
 * on o->device (or, with o->weights_of, that device model's own: nothing
 * uploaded), with a KV cache for groups of o->rows prompts of up to
 * o->max_prompt tokens (through the batched prefill) plus max_new
 * generated ones (o->cap is not read).  The plan is checked against the
 * device's free memory before anything is allocated: NULL after ft_fail
 * with what it needs, naming o->knobs.  A later group larger than planned
 * rebuilds it (each dimension the larger of the two). */
ft_cuda_decoder *ft_cuda_decoder_new(ft_model *m, const ft_cuda_infer_opts *o, int max_new);
/* m's trained tensors again (ft_cuda_infer_refresh): after m's adapters,
 * or its weights in a full fine-tuning, changed in place. */
int ft_cuda_decoder_refresh(ft_cuda_decoder *d);
/* The ft_decoder to pass to ft_generate_on (valid while d lives). */
ft_decoder ft_cuda_decoder_ops(ft_cuda_decoder *d);
/* The current plan (for the notes). */
const ft_cuda_infer_plan *ft_cuda_decoder_plan(const ft_cuda_decoder *d);
void ft_cuda_decoder_free(ft_cuda_decoder *d);

#endif
