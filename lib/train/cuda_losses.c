/* cuda_losses.c - DFT and EAFT on the device model (see cuda_losses.h),
 * step for step lib/model/model_tokloss.c's weighted() and
 * ftp_tokloss_forward_backward: the label log-probs, the weights and the
 * weighted sum by the CPU's own functions (ft_tokloss_weigh,
 * ft_eaft_weight), the backward pass from dL/dlogp = -w * grad_scale with
 * w a constant (torch.no_grad() in LLaMA-Factory). */
#include <stdlib.h>
#include "train/cuda_losses.h"
#include "train/cuda_train.h"
#include "util/error.h"

int ft_cuda_tokloss(ft_cuda_model *dm, ft_cuda_pref *p, int kind, double alpha, const ft_batch *b,
		    int train, float grad_scale, double *loss_sum, int64_t *n_tokens)
{
	ft_cuda_batch c = ft_cuda_batch_of(b);
	size_t N = (size_t)b->B * b->T;
	float *logp = ft_xmalloc(N * sizeof *logp);
	double *w = ft_xmalloc(N * sizeof *w), *we = NULL;
	int n = b->labels ? ft_tokloss_rows(b) : 0, rc = ft_cuda_logps_forward(p, &c, train, logp, NULL);
	if (rc == 0 && kind == FT_SFT_LOSS_EAFT) {
		we = ft_xmalloc((size_t)(n ? n : 1) * sizeof *we);
		rc = ft_cuda_eaft_entropy(dm, n, we);
		for (int k = 0; rc == 0 && k < n; k++)
			we[k] = ft_eaft_weight(we[k], alpha);
	}
	double loss = rc == 0 ? ft_tokloss_weigh(b, logp, we, w) : 0;
	if (rc == 0 && train) {
		for (size_t i = 0; i < N; i++)   /* d(-w logp) = -w dlogp */
			logp[i] = (float)(-w[i] * grad_scale);
		rc = ft_cuda_logps_backward(p, &c, logp);
	}
	free(logp);
	free(w);
	free(we);
	if (rc < 0)
		return -1;
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = n;
	return 0;
}
