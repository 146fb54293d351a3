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

#define EAFT_TOPK 20   /* torch.topk(k=20) in _eaft_cross_entropy */

/* The entropy of softmax(top-20 of l): torch's logsumexp, log-probs,
 * probs and sum, here in double (float32 there: ~1e-7 relative apart). */
static double topk_entropy(const float *l, int V)
{
	float top[EAFT_TOPK];
	int k = 0;
	for (int j = 0; j < V; j++) {   /* insertion into the sorted top k */
		float v = l[j];
		if (k == EAFT_TOPK && v <= top[k - 1])
			continue;
		int i = k < EAFT_TOPK ? k++ : k - 1;
		while (i > 0 && top[i - 1] < v) {
			top[i] = top[i - 1];
			i--;
		}
		top[i] = v;
	}
	double s = 0, h = 0;
	for (int i = 0; i < k; i++)
		s += exp((double)top[i] - top[0]);
	double lse = top[0] + log(s);
	for (int i = 0; i < k; i++) {
		double lp = top[i] - lse;
		h -= exp(lp) * lp;
	}
	return h;
}

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
			w[r0 + i] = pow(topk_entropy(m->head_scratch + (size_t)i * V, V) / 3.0, alpha);
	}
}

/* The forward pass (train: dropout on, activations kept), logp [B*T],
 * and the weight of each target position in w [B*T] (0 elsewhere);
 * returns the weighted loss sum, the target count in *nt. */
static int weighted(ft_model *m, const ft_batch *b, int train, float *logp, double *w,
		    double *loss, int64_t *nt)
{
	if (m->o.sft_loss == FT_SFT_LOSS_EAFT && m->c.vocab_size < EAFT_TOPK)
		return ft_fail("use_eaft_loss needs a vocabulary of at least %d tokens (its top-%d "
			       "entropy)", EAFT_TOPK, EAFT_TOPK);
	if (ft_model_logps_forward(m, b, train, logp, NULL) < 0)
		return -1;
	int N = b->B * b->T, n = 0;
	for (int i = 0; i < N; i++) {   /* the rows gathered into head_x, in order */
		int t = i % b->T;
		if (t + 1 < b->T && b->labels[i + 1] != FT_IGNORE_INDEX)
			n++;
	}
	double *we = NULL;
	if (m->o.sft_loss == FT_SFT_LOSS_EAFT) {
		we = ft_xmalloc((size_t)(n ? n : 1) * sizeof *we);
		eaft_weights(m, n, m->o.eaft_alpha, we);
	}
	double s = 0;
	int k = 0;
	for (int i = 0; i < N; i++) {
		int t = i % b->T;
		w[i] = 0;
		if (!(t + 1 < b->T && b->labels[i + 1] != FT_IGNORE_INDEX))
			continue;
		/* DFT: torch's exp(-ce) of the float32 per-token loss */
		w[i] = we ? we[k] : (double)expf(logp[i]);
		s += -(double)logp[i] * w[i];
		k++;
	}
	free(we);
	*loss = s;
	*nt = n;
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
