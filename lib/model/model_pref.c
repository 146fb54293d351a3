/* model_pref.c - log-probabilities of the labels, their backward pass and
 * the value head, over the decoder of model_fwd.c (see model_pref.h).
 *
 * The LM head runs only on the positions with a target.  A training pass
 * keeps exp(logits - max) of those rows for its backward pass when they
 * fit 64 MiB (one product fewer); otherwise both passes go `head_chunk`
 * rows at a time as ft_lm_head_loss does, and the backward pass computes
 * the logits again.
 *
 * Gemma 2's final_logit_softcapping: the log-probabilities are those of
 * the capped logits cap * tanh(z / cap), as transformers' forward returns
 * them; the backward pass recomputes the logits (the kept exp() has lost
 * the tanh it needs) and goes through the cap; the logit means are then
 * those of the capped logits, from the full [N, V] product in chunks.
 *
 * A temperature t (GRPO) divides the (capped) logits in float, as torch's
 * logits / t; the kept exp() is then that of the divided logits, and the
 * gradient of log softmax(z / t) is (onehot - softmax(z / t)) / t.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "model/model_internal.h"
#include "model/model_pref.h"
#include "model/kernels.h"
#include "model/vexp.h"

int ftp_gather_targets(ft_model *m, const ft_batch *b)
{
	int N = b->B * b->T, D = m->c.hidden_size, n = 0;
	for (int i = 0; i < N; i++) {
		int t = i % b->T;
		int tg = t + 1 < b->T && b->labels ? b->labels[i + 1] : FT_IGNORE_INDEX;
		if (tg == FT_IGNORE_INDEX)
			continue;
		m->rows[n] = i;
		m->targets[n] = tg;
		memcpy(m->head_x + (size_t)n * D, m->lnf + (size_t)i * D, D * sizeof(float));
		n++;
	}
	return n;
}

/* The mean over the vocabulary of each position's logits is h . mean(W).
 * A frozen head's mean row is computed once (the buffers' lifetime); a
 * trained one's every call. */
/* Soft-capped logits have no linear mean: every row's, head_chunk rows
 * at a time into the head's scratch. */
static void capped_means(ft_model *m, int N, float *lmean)
{
	int D = m->c.hidden_size, V = m->c.vocab_size, ch = m->head_chunk;
	float cap = (float)m->c.final_softcap;
	for (int r0 = 0; r0 < N; r0 += ch) {
		int nr = N - r0 < ch ? N - r0 : ch;
		ft_sgemm(0, 1, nr, V, D, 1, m->lnf + (size_t)r0 * D, D, m->lm_head.w, D, 0,
			 m->head_scratch, V);
		ft_softcap_forward(m->head_scratch, (size_t)nr * V, cap);
		for (int i = 0; i < nr; i++) {
			double s = 0;
			for (int j = 0; j < V; j++)
				s += m->head_scratch[(size_t)i * V + j];
			lmean[r0 + i] = (float)(s / V);
		}
	}
}

static void logit_means(ft_model *m, const ft_batch *b, float *lmean)
{
	int N = b->B * b->T, D = m->c.hidden_size, V = m->c.vocab_size;
	const float *W = m->lm_head.w;
	if (m->c.final_softcap > 0) {
		capped_means(m, N, lmean);
		return;
	}
	if (!m->wmean || m->lm_head.g) {
		double *w = m->wmean ? m->wmean : ft_xmalloc((size_t)D * sizeof *w);
		for (int d = 0; d < D; d++) w[d] = 0;
		for (int v = 0; v < V; v++)
			for (int d = 0; d < D; d++)
				w[d] += W[(size_t)v * D + d];
		for (int d = 0; d < D; d++)
			w[d] /= V;
		m->wmean = w;
	}
	const double *wm = m->wmean;
#pragma omp parallel for schedule(static) if (N >= 64)
	for (int i = 0; i < N; i++) {
		double s = 0;
		const float *h = m->lnf + (size_t)i * D;
		for (int d = 0; d < D; d++)
			s += h[d] * wm[d];
		lmean[i] = (float)s;
	}
}

/* Where a training pass leaves its exp(logits - max): the kept buffer
 * when n rows of V fit KEEP_BUDGET floats (the backward pass then needs no
 * second product), else the chunk scratch (recomputed there). */
#define KEEP_BUDGET ((size_t)1 << 24)   /* 64 MiB, as the LM head's scratch */
static float *keep_rows(ft_model *m, int train, int n)
{
	size_t need = (size_t)n * m->c.vocab_size;
	m->keep_n = 0;
	if (!train || n == 0 || need > KEEP_BUDGET || m->c.final_softcap > 0)
		return NULL;
	if (need > m->keep_cap) {
		free(m->keep);
		free(m->keep_sum);
		m->keep = ft_xmalloc(need * sizeof(float));
		m->keep_sum = ft_xmalloc((size_t)n * sizeof(double));
		m->keep_cap = need;
	}
	return m->keep;
}

int ft_model_set_logp_temperature(ft_model *m, float t)
{
	if (!(t > 0) || !isfinite(t))
		return ft_fail("temperature %g: must be a positive number", (double)t);
	m->logp_temp = t == 1.0f ? 0 : t;
	return 0;
}

void ft_model_set_logp_entropy(ft_model *m, float *ent)
{
	m->logp_entropy = ent;
}

/* rows of V logits divided by the temperature; nothing at 1 */
static void temper(const ft_model *m, float *l, size_t n)
{
	float t = m->logp_temp;
	if (t == 0)
		return;
	for (size_t i = 0; i < n; i++)
		l[i] = ft_k_temper(l[i], t);
}

int ft_model_logps_forward(ft_model *m, const ft_batch *b, int train, float *logp, float *lmean)
{
	m->training = train;
	if (train)
		m->dropout_calls++;
	if (!b->labels)
		return ft_fail("batch %lld: no labels", (long long)b->index);
	if (ftp_model_forward_body(m, b) < 0)
		return -1;
	int N = b->B * b->T, D = m->c.hidden_size, V = m->c.vocab_size;
	memset(logp, 0, (size_t)N * sizeof *logp);
	if (m->logp_entropy) memset(m->logp_entropy, 0, (size_t)N * sizeof(float));
	if (lmean)
		logit_means(m, b, lmean);
	int n = ftp_gather_targets(m, b), ch = m->head_chunk;
	float *keep = keep_rows(m, train, n), cap = (float)m->c.final_softcap;
	if (keep)
		ch = n;   /* one product straight into the kept rows */
	for (int r0 = 0; r0 < n; r0 += ch) {
		int nr = n - r0 < ch ? n - r0 : ch;
		float *out = keep ? keep : m->head_scratch;
		ft_sgemm(0, 1, nr, V, D, 1, m->head_x + (size_t)r0 * D, D, m->lm_head.w, D, 0, out, V);
		if (cap > 0)
			ft_softcap_forward(out, (size_t)nr * V, cap);
		temper(m, out, (size_t)nr * V);
#pragma omp parallel for schedule(static) if ((size_t)nr * V >= 4096)
		for (int i = 0; i < nr; i++) {
			float *l = out + (size_t)i * V;
			int tg = m->targets[r0 + i];
			if (tg < 0 || tg >= V)
				continue;   /* refused by check_batch before we get here */
			float lt = l[tg];
			if (m->logp_entropy) m->logp_entropy[m->rows[r0 + i]] = ft_k_row_entropy(l, V);   /* before ft_exp_row overwrites l */
			double sum;
			float mx = ft_exp_row(l, V, &sum);
			if (keep)
				m->keep_sum[r0 + i] = sum;
			logp[m->rows[r0 + i]] = (float)((double)lt - (mx + log(sum)));
		}
	}
	if (keep)
		m->keep_n = n;
	return 0;
}

int ft_model_logps_backward(ft_model *m, const ft_batch *b, const float *dlogp)
{
	int N = b->B * b->T, D = m->c.hidden_size, V = m->c.vocab_size;
	int n = ftp_gather_targets(m, b), ch = m->head_chunk;
	int kept = m->keep_n == n && n > 0;   /* the forward's exp(logits) are at hand */
	float cap = (float)m->c.final_softcap;
	if (kept)
		ch = n;
	for (int r0 = 0; r0 < n; r0 += ch) {
		int nr = n - r0 < ch ? n - r0 : ch;
		const float *xc = m->head_x + (size_t)r0 * D;
		float *lg = kept ? m->keep : m->head_scratch;
		if (!kept)
			ft_sgemm(0, 1, nr, V, D, 1, xc, D, m->lm_head.w, D, 0, lg, V);
		if (cap > 0)   /* never kept: see keep_rows */
			ft_softcap_forward(lg, (size_t)nr * V, cap);
#pragma omp parallel for schedule(static) if ((size_t)nr * V >= 4096)
		for (int i = 0; i < nr; i++) {
			float *l = lg + (size_t)i * V;
			int tg = m->targets[r0 + i];
			float g = dlogp[m->rows[r0 + i]];
			if (m->logp_temp != 0)
				g /= m->logp_temp;   /* d (z / t) / dz */
			float *zc = NULL;   /* the capped logits, for the gradient through the cap */
			if (cap > 0) {
				zc = ft_xmalloc(V * sizeof(float));
				memcpy(zc, l, V * sizeof(float));
			}
			if (!kept)
				temper(m, l, V);
			/* d logp / d logits = onehot - softmax */
			double sum;
			if (kept)
				sum = m->keep_sum[r0 + i];
			else
				ft_exp_row(l, V, &sum);
			float s = (float)(-(double)g / sum);
			for (int j = 0; j < V; j++)
				l[j] *= s;
			l[tg] += g;
			if (zc)
				ft_softcap_backward(l, zc, V, cap);
			free(zc);
		}
		ft_sgemm(0, 0, nr, D, V, 1, lg, V, m->lm_head.w, D, 0, m->head_dx + (size_t)r0 * D, D);
		if (m->lm_head.g)
			ft_sgemm(1, 0, V, D, nr, 1, lg, V, xc, D, 1, m->lm_head.g, D);
	}
	m->keep_n = 0;
	memset(m->d_ln, 0, (size_t)N * D * sizeof(float));
	for (int k = 0; k < n; k++)
		memcpy(m->d_ln + (size_t)m->rows[k] * D, m->head_dx + (size_t)k * D, D * sizeof(float));
	ftp_model_backward_body(m, b);
	return 0;
}

void ft_model_set_adapters(ft_model *m, int on)
{
	if (!ft_model_has_adapters(m))
		return;
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (m->layers[l].lora[j].A.w)
				m->layers[l].lora[j].on = on;
}

int ft_model_has_adapters(const ft_model *m)
{
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (m->layers[l].lora[j].A.w)
				return 1;
	return 0;
}

static int check_pos(const ft_batch *b, const int32_t *pos, int n)
{
	for (int k = 0; k < n; k++)
		if (pos[k] < 0 || pos[k] >= b->B * b->T)
			return ft_fail("batch %lld: score position %d outside the batch", (long long)b->index,
				       pos[k]);
	return 0;
}

int ft_model_value_forward(ft_model *m, const ft_batch *b, int train, const int32_t *pos, int n,
			   const float *vw, float vb, float p_drop, uint64_t seed, float *hd,
			   float *score)
{
	m->training = train;
	if (train)
		m->dropout_calls++;
	if (check_pos(b, pos, n) < 0 || ftp_model_forward_body(m, b) < 0)
		return -1;
	int D = m->c.hidden_size;
	float *h = hd ? hd : m->head_x;
	for (int k = 0; k < n; k++)
		memcpy(h + (size_t)k * D, m->lnf + (size_t)pos[k] * D, D * sizeof(float));
	if (train && p_drop > 0)
		ft_dropout_apply(h, h, (size_t)n * D, p_drop, seed);
	for (int k = 0; k < n; k++) {
		double s = 0;
		for (int d = 0; d < D; d++)
			s += (double)vw[d] * h[(size_t)k * D + d];
		score[k] = (float)(s + vb);
	}
	return 0;
}

int ft_model_value_backward(ft_model *m, const ft_batch *b, const int32_t *pos, int n,
			    const float *vw, float p_drop, uint64_t seed, const float *hd,
			    const float *dscore, float *dvw, double *dvb)
{
	if (check_pos(b, pos, n) < 0)
		return -1;
	int N = b->B * b->T, D = m->c.hidden_size;
	float *dh = m->head_dx;
	for (int k = 0; k < n; k++) {
		for (int d = 0; d < D; d++) {
			dh[(size_t)k * D + d] = dscore[k] * vw[d];
			if (dvw)
				dvw[d] += dscore[k] * hd[(size_t)k * D + d];
		}
		if (dvb)
			*dvb += dscore[k];
	}
	if (p_drop > 0)   /* the same mask: a pure function of (seed, index) */
		ft_dropout_apply(dh, dh, (size_t)n * D, p_drop, seed);
	memset(m->d_ln, 0, (size_t)N * D * sizeof(float));
	for (int k = 0; k < n; k++)
		for (int d = 0; d < D; d++)
			m->d_ln[(size_t)pos[k] * D + d] += dh[(size_t)k * D + d];
	ftp_model_backward_body(m, b);
	return 0;
}
