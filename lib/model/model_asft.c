/* model_asft.c - LLaMA-Factory's ASFT loss (train/trainer_utils.py
 * asft_loss_func: _dft_cross_entropy plus asft_alpha times _kl_divergence),
 * over the label positions n of one micro-batch:
 *
 *   L = 1/n sum_i ce_i * w_i  +  alpha/n sum_i KL(q_i || p_i)
 *
 * ce_i the cross-entropy of the label, w_i = exp(-ce_i) computed without
 * gradient (DFT), p_i the model's softmax, q_i the reference model's
 * (F.kl_div(log p, q).sum(-1): sum_v q (log q - log p)).  Both terms are
 * means over this micro-batch (LLaMA-Factory passes no
 * num_items_in_batch).  Per row the logits' gradient is
 *
 *   dL/dz = (w (p - onehot(y)) + alpha (p - q)) / n
 *
 * (sum q = 1), which the KL term makes a full-vocabulary one, so the head
 * is this file's own: the reference's logits are recomputed from its
 * final hidden rows a chunk at a time beside the model's, never [n, V]
 * at once.  On Gemma 2 both models' logits are soft-capped first (the
 * logits LLaMA-Factory's loss receives).  A micro-batch without label tokens is 0 here (torch: 0 for
 * the DFT term, 0/0 for the KL one).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"
#include "model/vexp.h"

int ft_model_set_asft(ft_model *m, ft_model *ref, double alpha)
{
	if (!ref || ref == m)
		return ft_fail("use_asft_loss needs a reference model apart from the trained one");
	if (ref->c.vocab_size != m->c.vocab_size)
		return ft_fail("use_asft_loss: the reference model's vocabulary (%d) is not the model's (%d)",
			       ref->c.vocab_size, m->c.vocab_size);
	if (!isfinite(alpha))
		return ft_fail("asft_alpha must be a number");
	m->asft_ref = ref;
	m->o.sft_loss = FT_SFT_LOSS_ASFT;
	m->o.asft_alpha = alpha;
	return 0;
}

int ft_model_asft_on(const ft_model *m) { return m->o.sft_loss == FT_SFT_LOSS_ASFT; }

ft_model *ft_model_asft_ref(const ft_model *m) { return m->asft_ref; }

/* One row: z the model's logits (replaced by dL/dz * gs when grad), zr
 * the reference's; *dft = ce * w, *kl = KL(q || p). */
static void asft_row(float *z, const float *zr, int V, int tg, double alpha, int grad, double gs,
		     double *dft, double *kl)
{
	double mz = z[0], mr = zr[0], sz = 0, sr = 0;
	for (int j = 1; j < V; j++) {
		if (z[j] > mz) mz = z[j];
		if (zr[j] > mr) mr = zr[j];
	}
	for (int j = 0; j < V; j++) {
		sz += exp(z[j] - mz);
		sr += exp(zr[j] - mr);
	}
	double lz = mz + log(sz), lr = mr + log(sr), k = 0;
	/* torch's float32 per-token loss and its exp */
	float ce = (float)(lz - z[tg]), w = expf(-ce);
	for (int j = 0; j < V; j++) {
		double lq = zr[j] - lr, lp = z[j] - lz, q = exp(lq), p;
		k += q * (lq - lp);   /* kl_div's xlogy: q = 0 adds 0 */
		if (grad) {
			p = exp(lp);
			z[j] = (float)(gs * (w * p + alpha * (p - q)));
		}
	}
	if (grad)
		z[tg] -= (float)(gs * w);
	*dft = (double)ce * w;
	*kl = k;
}

/* The loss of b (train: dropout on, gradients accumulated with scale gs). */
static int asft_run(ft_model *m, const ft_batch *b, int train, float gs, double *loss)
{
	ft_model *r = m->asft_ref;
	if (!r)
		return ft_fail("use_asft_loss: no reference model");
	if (!b->labels)
		return ft_fail("batch %lld: no labels", (long long)b->index);
	r->training = 0;
	if (ftp_model_forward_body(r, b) < 0)
		return -1;
	int nr = ftp_gather_targets(r, b);
	m->training = train;
	if (train)
		m->dropout_calls++;
	if (ftp_model_forward_body(m, b) < 0)
		return -1;
	int n = ftp_gather_targets(m, b), D = m->c.hidden_size, Dr = r->c.hidden_size, V = m->c.vocab_size;
	*loss = 0;
	if (n != nr)
		return ft_fail("use_asft_loss: the reference model saw another batch");
	if (n == 0)
		return 0;
	int ch = m->head_chunk < r->head_chunk ? m->head_chunk : r->head_chunk;
	double *dft = ft_xmalloc((size_t)n * sizeof *dft), *kl = ft_xmalloc((size_t)n * sizeof *kl);
	double scale = train ? (double)gs / n : 0, alpha = m->o.asft_alpha;
	/* Gemma 2: both models' logits soft-capped, the capped values kept
	 * for the gradient through the cap */
	float cap = (float)m->c.final_softcap, capr = (float)r->c.final_softcap;
	float *capped = cap > 0 && train ? ft_xmalloc((size_t)ch * V * sizeof *capped) : NULL;
	for (int r0 = 0; r0 < n; r0 += ch) {
		int k = n - r0 < ch ? n - r0 : ch;
		const float *xc = m->head_x + (size_t)r0 * D;
		ft_sgemm(0, 1, k, V, D, 1, xc, D, m->lm_head.w, D, 0, m->head_scratch, V);
		ft_sgemm(0, 1, k, V, Dr, 1, r->head_x + (size_t)r0 * Dr, Dr, r->lm_head.w, Dr, 0,
			 r->head_scratch, V);
		if (cap > 0)
			ft_softcap_forward(m->head_scratch, (size_t)k * V, cap);
		if (capr > 0)
			ft_softcap_forward(r->head_scratch, (size_t)k * V, capr);
		if (capped)
			memcpy(capped, m->head_scratch, (size_t)k * V * sizeof *capped);
#pragma omp parallel for schedule(static) if ((size_t)k * V >= 4096)
		for (int i = 0; i < k; i++)
			asft_row(m->head_scratch + (size_t)i * V, r->head_scratch + (size_t)i * V, V,
				 m->targets[r0 + i], alpha, train, scale, &dft[r0 + i], &kl[r0 + i]);
		if (!train)
			continue;
		if (capped)
			ft_softcap_backward(m->head_scratch, capped, (size_t)k * V, cap);
		ft_sgemm(0, 0, k, D, V, 1, m->head_scratch, V, m->lm_head.w, D, 0, m->head_dx + (size_t)r0 * D, D);
		if (m->lm_head.g)
			ft_sgemm(1, 0, V, D, k, 1, m->head_scratch, V, xc, D, 1, m->lm_head.g, D);
	}
	free(capped);
	double sd = 0, sk = 0;
	for (int i = 0; i < n; i++) {
		sd += dft[i];
		sk += kl[i];
	}
	free(dft);
	free(kl);
	*loss = sd / n + alpha * sk / n;
	if (train) {
		size_t N = (size_t)b->B * b->T;
		memset(m->d_ln, 0, N * D * sizeof(float));
		for (int i = 0; i < n; i++)
			memcpy(m->d_ln + (size_t)m->rows[i] * D, m->head_dx + (size_t)i * D, D * sizeof(float));
		ftp_model_backward_body(m, b);
	}
	return 0;
}

int ftp_asft_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
			      double *loss_sum, int64_t *n_tokens)
{
	double loss;
	if (asft_run(m, b, 1, grad_scale, &loss) < 0)
		return -1;
	if (loss_sum) *loss_sum = loss;
	if (n_tokens) *n_tokens = 1;
	return 0;
}

int ftp_asft_forward(ft_model *m, const ft_batch *b, double *loss_sum, int64_t *n_tokens)
{
	double loss;
	if (asft_run(m, b, 0, 0, &loss) < 0)
		return -1;
	if (loss_sum) *loss_sum = loss;
	if (n_tokens) *n_tokens = 1;
	return 0;
}
