/* cuda_losses.h - LLaMA-Factory's SFT token losses on the CUDA backend,
 * for the device binding (cuda_train.c): DFT and EAFT (use_dft_loss,
 * use_eaft_loss) as lib/model/model_tokloss.c computes them, through the
 * device's label log-probs (ft_cuda_logps_forward / _backward, pref.cu)
 * and EAFT's top-20 entropies (ft_cuda_eaft_entropy, tokloss.cu). */
#ifndef FT_CUDA_LOSSES_H
#define FT_CUDA_LOSSES_H

#include "cuda/ft_cuda.h"
#include "model/model.h"

/* kind FT_SFT_LOSS_DFT or _EAFT (alpha: EAFT's), on dm (m's device model,
 * p its log-prob state): the weighted loss sum of b and its label count,
 * and with train the gradients times grad_scale, as
 * ft_model_forward_backward / ft_model_forward do on the CPU. */
int ft_cuda_tokloss(ft_cuda_model *dm, ft_cuda_pref *p, int kind, double alpha, const ft_batch *b,
		    int train, float grad_scale, double *loss_sum, int64_t *n_tokens);

#endif
