/* model_tokloss.c - LLaMA-Factory's SFT token losses (train/trainer_utils.py
 * dft_loss_func, eaft_loss_func): the cross-entropy of each label token
 * times a weight computed without gradient,
 *   DFT:  w = p(target) = exp(-ce)
 *   EAFT: w = (H20 / 3)^alpha, H20 the entropy of the softmax over the
 *         position's 20 largest logits,
 * summed and divided by the label tokens of the accumulated step
 * (num_items_in_batch), as the plain loss.  On Gemma 2 the log-probs and
 * EAFT's top-20 entropies are of the soft-capped logits.  Both go through the label
 * log-probabilities of model_pref.c: the loss is -sum w logp, so its
 * gradient is the log-prob backward with dlogp = -w * grad_scale (w a
 * constant, as under torch.no_grad()).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"
#include "model/model_pref.h"
#include "model/kernels.h"

#define EAFT_TOPK FT_EAFT_TOPK

/* The entropy of softmax(top-20 of l) (kernels.h, shared with the device) */
static double topk_entropy(const float *l, int V)
{
	float top[EAFT_TOPK];
	int k = 0;
	for (int j = 0; j < V; j++)
		ft_k_topk_insert(top, &k, l[j]);
	return ft_k_topk_entropy(top, k);
}

int ft_model_sft_loss(const ft_model *m, double *alpha)
{
	if (alpha)
		*alpha = m->o.sft_loss == FT_SFT_LOSS_ASFT ? m->o.asft_alpha : m->o.eaft_alpha;
	return m->o.sft_loss;
}

double ft_eaft_weight(double h, double alpha) { return pow(h / 3.0, alpha); }

/* EAFT's weights w[k] of the n gathered target rows (m->head_x): the
 * logits again, head_chunk rows at a time into the head's scratch,
 * soft-capped on Gemma 2 as the logits LLaMA-Factory's loss receives. */
static void eaft_weights(ft_model *m, int n, double alpha, double *w)
{
	int D = m->c.hidden_size, V = m->c.vocab_size, ch = m->head_chunk;
	for (int r0 = 0; r0 < n; r0 += ch) {
		int nr = n - r0 < ch ? n - r0 : ch;
		ft_sgemm(0, 1, nr, V, D, 1, m->head_x + (size_t)r0 * D, D, m->lm_head.w, D, 0,
			 m->head_scratch, V);
		if (m->c.final_softcap > 0)
			ft_softcap_forward(m->head_scratch, (size_t)nr * V, (float)m->c.final_softcap);
#pragma omp parallel for schedule(static) if ((size_t)nr * V >= 4096)
		for (int i = 0; i < nr; i++)
			w[r0 + i] = ft_eaft_weight(topk_entropy(m->head_scratch + (size_t)i * V, V), alpha);
	}
}

/* Whether position i (of rows of T) has a label target: the rows the
 * label log-probs gather, in order. */
static int is_target(const ft_batch *b, int i)
{
	int t = i % b->T;
	return t + 1 < b->T && b->labels[i + 1] != FT_IGNORE_INDEX;
}

int ft_tokloss_rows(const ft_batch *b)
{
	int N = b->B * b->T, n = 0;
	for (int i = 0; i < N; i++)
		n += is_target(b, i);
	return n;
}

int ft_tokloss_check(int kind, int V)
{
	if (kind == FT_SFT_LOSS_EAFT && V < EAFT_TOPK)
		return ft_fail("use_eaft_loss needs a vocabulary of at least %d tokens (its top-%d "
			       "entropy)", EAFT_TOPK, EAFT_TOPK);
	return 0;
}

double ft_tokloss_weigh(const ft_batch *b, const float *logp, const double *we, double *w)
{
	int N = b->B * b->T, k = 0;
	double s = 0;
	for (int i = 0; i < N; i++) {
		w[i] = 0;
		if (!is_target(b, i))
			continue;
		/* DFT: torch's exp(-ce) of the float32 per-token loss */
		w[i] = we ? we[k] : (double)expf(logp[i]);
		s += -(double)logp[i] * w[i];
		k++;
	}
	return s;
}

/* The forward pass (train: dropout on, activations kept), logp [B*T],
 * and the weight of each target position in w [B*T] (0 elsewhere);
 * returns the weighted loss sum, the target count in *nt. */
static int weighted(ft_model *m, const ft_batch *b, int train, float *logp, double *w,
		    double *loss, int64_t *nt)
{
	if (ft_tokloss_check(m->o.sft_loss, m->c.vocab_size) < 0)
		return -1;
	if (ft_model_logps_forward(m, b, train, logp, NULL) < 0)
		return -1;
	int n = ft_tokloss_rows(b);
	double *we = NULL;
	if (m->o.sft_loss == FT_SFT_LOSS_EAFT) {
		we = ft_xmalloc((size_t)(n ? n : 1) * sizeof *we);
		eaft_weights(m, n, m->o.eaft_alpha, we);
	}
	*loss = ft_tokloss_weigh(b, logp, we, w);
	*nt = n;
	free(we);
	return 0;
}

int ftp_tokloss_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
				 double *loss_sum, int64_t *n_tokens)
{
	size_t N = (size_t)b->B * b->T;
	float *logp = ft_xmalloc(N * sizeof *logp);
	double *w = ft_xmalloc(N * sizeof *w), loss;
	int64_t nt;
	int rc = weighted(m, b, 1, logp, w, &loss, &nt);
	if (rc == 0) {
		for (size_t i = 0; i < N; i++)   /* d(-w logp) = -w dlogp */
			logp[i] = (float)(-w[i] * grad_scale);
		rc = ft_model_logps_backward(m, b, logp);
	}
	free(logp);
	free(w);
	if (rc < 0)
		return -1;
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = nt;
	return 0;
}

int ftp_tokloss_forward(ft_model *m, const ft_batch *b, double *loss_sum, int64_t *n_tokens)
{
	size_t N = (size_t)b->B * b->T;
	float *logp = ft_xmalloc(N * sizeof *logp);
	double *w = ft_xmalloc(N * sizeof *w), loss;
	int64_t nt;
	int rc = weighted(m, b, 0, logp, w, &loss, &nt);
	free(logp);
	free(w);
	if (rc < 0)
		return -1;
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = nt;
	return 0;
}
