/* pref.cu - the preference stages' model operations on the device
 * (ft_cuda.h "preference stages"), mirroring lib/model/model_pref.c
 * function by function: per-position label log-probabilities with their
 * backward pass from dL/dlogp, the logit means, PEFT's disable_adapter,
 * and TRL's value head (score and backward).  The losses stay on the host
 * (lib/train/pref*.c): per sequence they are a few scalars, so only the
 * per-position log-probs come back and only dL/dlogp goes down.
 *
 * The decoder is model.cu's (ft_cu_forward_body, ft_cu_backward_body);
 * the LM head runs, as on the CPU, only on the positions with a target,
 * `head_chunk` rows at a time, and the backward pass computes the logits
 * again (the CPU keeps them when they fit 64 MiB: the same values).
 *
 * rm's value head lives here with its gradient and AdamW moments, and
 * steps with the model's parameters (ft_cu_step's extras: one norm, one
 * clipping, one fp16 overflow check).  Its buffers and the few [N]
 * arrays below are one allocation of their own, beside the model's plan
 * (D + 1 floats x 4 and 3 N floats: small next to it), and counted in the
 * peak.
 *
 * GRPO scores completions with the same operations at its sampling
 * temperature and records their entropies (ft_cuda_logps_options): the
 * head passes them to the same pref_logp_k, the rest is unchanged. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/pref_kernels.cuh"

struct ft_cuda_pref {
	ft_cuda_model *dm;
	void *mem;
	size_t bytes;
	double *wmean;            /* [D] mean over the vocabulary of lm_head's rows */
	int wmean_ok;             /* a frozen head's mean, computed once */
	float *lmean, *rs, *score;   /* [N]: logit means, per-row scales, scores */
	int value_head;
	ft_dt head[2];            /* v_head.summary.weight [D], .bias [1] */
	double *sumsq;            /* [2 * FT_SUMSQ_BLOCKS] the head's norm partials */
	float *h_f;               /* host [N] */
	unsigned char *h_seen;    /* host [N] */
	/* GRPO (ft_cuda_logps_options): the temperature (0: none), the host
	 * array of the entropies (NULL: none) and their device rows [N] */
	float temp;
	float *h_ent, *ent;
};

static int nblocks(size_t n)
{
	size_t b = (n + FT_PREF_TPB - 1) / FT_PREF_TPB;
	return (int)(b < 1 ? 1 : b > 4096 ? 4096 : b);
}

/* The host staging holds max_tokens rows: checked before it is written
 * (forward_body checks the batch too, but not every entry runs it first). */
static int check_size(const ft_cuda_model *dm, const ft_cuda_batch *b)
{
	if (b->B <= 0 || b->T <= 0 || (size_t)b->B * b->T > (size_t)dm->o.max_tokens)
		return ft_fail("batch %dx%d: the CUDA model was planned for %d tokens", b->B, b->T,
			       dm->o.max_tokens);
	return 0;
}

static int upload_rows(ft_cuda_model *dm, const int32_t *rows, const int32_t *targets, int n)
{
	if (n <= 0)
		return 0;
	if (rows != dm->h_rows)
		memcpy(dm->h_rows, rows, (size_t)n * 4);
	CU(cudaMemcpyAsync(dm->rows, dm->h_rows, (size_t)n * 4, cudaMemcpyHostToDevice, dm->stream),
	   "head rows, %d", n);
	if (targets)
		CU(cudaMemcpyAsync(dm->targets, targets, (size_t)n * 4, cudaMemcpyHostToDevice,
				   dm->stream), "targets, %d", n);
	return 0;
}

/* Rows with a target (the causal shift, as gather_targets in
 * model_pref.c) into dm->rows / dm->targets, their final-norm rows into
 * dm->head_x; their count. */
int ft_cu_gather_targets(ft_cuda_model *dm, const ft_cuda_batch *b, int *n_out)
{
	int N = b->B * b->T, n = 0;
	TRY(check_size(dm, b));
	for (int i = 0; i < N; i++) {
		int t = i % b->T;
		int tg = t + 1 < b->T && b->labels ? b->labels[i + 1] : -100;
		if (tg == -100)
			continue;
		dm->h_rows[n] = i;
		dm->h_tg2[n++] = tg;
	}
	*n_out = n;
	TRY(upload_rows(dm, dm->h_rows, dm->h_tg2, n));
	return ft_cu_gather_rows(dm, dm->head_x, dm->lnf, dm->rows, n, dm->v.D);
}

static int gather_targets(ft_cuda_pref *p, const ft_cuda_batch *b, int *n_out)
{
	return ft_cu_gather_targets(p->dm, b, n_out);
}

/* The mean over the vocabulary of each position's logits, h . mean(W)
 * (the logits/... metrics), into lmean (host, [N]). */
static int capped_means(ft_cuda_pref *p, int N)
{
	ft_cuda_model *dm = p->dm;
	int D = dm->v.D, V = dm->v.V, chunk = dm->head_chunk;
	ft_mat w = ft_cu_weight(dm, dm->lm_head);
	for (int r0 = 0; r0 < N; r0 += chunk) {
		int nr = N - r0 < chunk ? N - r0 : chunk;
		ft_mat xo;
		TRY(ft_cu_operand(dm, &xo, dm->lnf + (size_t)r0 * D, (size_t)nr * D, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 0, 1, nr, V, D, 1, xo, D, w, D, 0, dm->head_scratch, V,
			       "lm_head logits (means)"));
		TRY(ft_cu_softcap(dm, dm->head_scratch, (size_t)nr * V, dm->v.final_softcap));
		FT_LAUNCH(pref_rowmean_k, nr, FT_PREF_TPB, 0, dm->stream)(p->lmean + r0,
									 dm->head_scratch, V);
		LAUNCHED("pref_rowmean", "rows=%d V=%d", nr, V);
	}
	return 0;
}

static int logit_means(ft_cuda_pref *p, int N, float *lmean)
{
	ft_cuda_model *dm = p->dm;
	ft_dt *W = dm->lm_head;
	int D = dm->v.D;
	if (dm->v.final_softcap > 0) {
		TRY(capped_means(p, N));
		return ft_cu_copy(dm, lmean, p->lmean, (size_t)N * sizeof(float),
				  cudaMemcpyDeviceToHost, "logit means");
	}
	if (!p->wmean_ok || W->g) {
		FT_LAUNCH(pref_colmean_k, nblocks(D), FT_PREF_TPB, 0, dm->stream)(
			p->wmean, W->w, W->h, dm->o.precision == FT_CUDA_BF16, dm->v.V, D);
		LAUNCHED("pref_colmean", "V=%d D=%d", dm->v.V, D);
		p->wmean_ok = 1;
	}
	FT_LAUNCH(pref_rowdot_k, N, FT_PREF_TPB, 0, dm->stream)(p->lmean, dm->lnf, p->wmean, D);
	LAUNCHED("pref_rowdot", "N=%d D=%d", N, D);
	return ft_cu_copy(dm, lmean, p->lmean, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost,
			  "logit means");
}

/* The LM head over the n gathered rows, chunk by chunk: each row's label
 * log-prob into dm->row_loss; with g (device, [n], per-row dL/dlogp) also
 * d(head_x) into dm->head_dx and lm_head's gradient when it trains. */
static int head_rows(ft_cuda_pref *p, int n, const float *g)
{
	ft_cuda_model *dm = p->dm;
	int D = dm->v.D, V = dm->v.V, chunk = dm->head_chunk;
	ft_dt *W = dm->lm_head;
	ft_mat w = ft_cu_weight(dm, W);
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int nr = n - r0 < chunk ? n - r0 : chunk;
		const float *xc = dm->head_x + (size_t)r0 * D;
		ft_mat xo, go;
		TRY(ft_cu_operand(dm, &xo, xc, (size_t)nr * D, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 0, 1, nr, V, D, 1, xo, D, w, D, 0, dm->head_scratch, V,
			       "lm_head logits (log-probs)"));
		float cap = dm->v.final_softcap;
		if (cap > 0)
			TRY(ft_cu_softcap(dm, dm->head_scratch, (size_t)nr * V, cap));
		/* GRPO's temperature and the RL stages' entropies (forward only) */
		FT_LAUNCH(pref_logp_k, nr, FT_PREF_TPB, 0, dm->stream)(
			dm->head_scratch, dm->row_loss + r0, dm->targets + r0, g ? g + r0 : NULL, V, cap, p->temp,
			g || !p->h_ent ? NULL : p->ent + r0);
		LAUNCHED("pref_logp", "rows=%d V=%d", nr, V);
		if (!g)
			continue;
		TRY(ft_cu_operand(dm, &go, dm->head_scratch, (size_t)nr * V, dm->hhead, w.half));
		TRY(ft_cu_gemm(dm, 0, 0, nr, D, V, 1, go, V, w, D, 0, dm->head_dx + (size_t)r0 * D, D,
			       "lm_head dx (log-probs)"));
		if (W->g)
			TRY(ft_cu_gemm(dm, 1, 0, V, D, nr, 1, go, V, xo, D, 1, W->g, D,
				       "lm_head dW (log-probs)"));
	}
	return 0;
}

/* The n gathered rows' entropies into the host array of N positions (0
 * where there is no target, as model_pref.c). */
static int entropies(ft_cuda_pref *p, int N, int n)
{
	ft_cuda_model *dm = p->dm;
	memset(p->h_ent, 0, (size_t)N * sizeof(float));
	if (n > 0)
		TRY(ft_cu_copy(dm, p->h_f, p->ent, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost,
			       "entropies"));
	for (int k = 0; k < n; k++)
		p->h_ent[dm->h_rows[k]] = p->h_f[k];
	return 0;
}

int ft_cuda_logps_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, float *logp,
			  float *lmean)
{
	ft_cuda_model *dm = p->dm;
	dm->training = train;
	if (train)
		dm->dropout_calls++;
	if (!b->labels)
		return ft_fail("batch: no labels");
	TRY(ft_cu_forward_body(dm, b));
	int N = b->B * b->T, n = 0;
	memset(logp, 0, (size_t)N * sizeof *logp);
	if (lmean)
		TRY(logit_means(p, N, lmean));
	TRY(gather_targets(p, b, &n));
	TRY(head_rows(p, n, NULL));
	if (n > 0)
		TRY(ft_cu_copy(dm, dm->h_row_loss, dm->row_loss, (size_t)n * sizeof(double),
			       cudaMemcpyDeviceToHost, "label log-probs"));
	for (int k = 0; k < n; k++)
		logp[dm->h_rows[k]] = (float)dm->h_row_loss[k];
	if (p->h_ent)
		TRY(entropies(p, N, n));
	ft_cu_sample_peak(dm);
	return 0;
}

int ft_cuda_logps_options(ft_cuda_pref *p, float temperature, float *entropy)
{
	if (!(temperature > 0) || !isfinite(temperature))
		return ft_fail("temperature %g: must be a positive number", (double)temperature);
	p->temp = temperature == 1.0f ? 0 : temperature;   /* 1 leaves the logits bit for bit */
	p->h_ent = entropy;
	return 0;
}

int ft_cuda_logps_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const float *dlogp)
{
	ft_cuda_model *dm = p->dm;
	int n = 0;
	TRY(gather_targets(p, b, &n));
	/* fp16: the loss scale rides on dL/dlogp; the step unscales */
	for (int k = 0; k < n; k++)
		p->h_f[k] = dlogp[dm->h_rows[k]] * (float)dm->loss_scale;
	if (n > 0)
		TRY(ft_cu_copy(dm, p->rs, p->h_f, (size_t)n * sizeof(float), cudaMemcpyHostToDevice,
			       "dL/dlogp"));
	TRY(head_rows(p, n, p->rs));
	dm->grads_scale = dm->loss_scale;
	return ft_cu_backward_body(dm, b, n);
}

void ft_cuda_set_adapters(ft_cuda_model *dm, int on)
{
	for (int l = 0; l < dm->v.L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++)
			if (dm->layers[l].lora[j].A)
				dm->layers[l].lora[j].on = on;
}

/* Score positions inside the batch and distinct (the backward pass
 * places their rows, it does not add them). */
static int check_pos(ft_cuda_pref *p, const ft_cuda_batch *b, const int32_t *pos, int n)
{
	int N = b->B * b->T;
	if (!p->value_head)
		return ft_fail("CUDA: this device model was made without a value head");
	TRY(check_size(p->dm, b));
	memset(p->h_seen, 0, (size_t)N);
	for (int k = 0; k < n; k++) {
		if (pos[k] < 0 || pos[k] >= N)
			return ft_fail("batch: score position %d outside the batch", pos[k]);
		if (p->h_seen[pos[k]]++)
			return ft_fail("batch: score position %d given twice", pos[k]);
	}
	return 0;
}

int ft_cuda_value_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, const int32_t *pos,
			  int n, float p_drop, uint64_t seed, float *score)
{
	ft_cuda_model *dm = p->dm;
	dm->training = train;
	if (train)
		dm->dropout_calls++;
	TRY(check_pos(p, b, pos, n));
	TRY(ft_cu_forward_body(dm, b));
	int D = dm->v.D;
	if (n <= 0)
		return 0;
	TRY(upload_rows(dm, pos, NULL, n));
	/* head_x keeps the dropped rows for ft_cuda_value_backward */
	TRY(ft_cu_gather_rows(dm, dm->head_x, dm->lnf, dm->rows, n, D));
	if (train && p_drop > 0)
		TRY(ft_cu_dropout(dm, dm->head_x, dm->head_x, (size_t)n * D, p_drop, seed));
	FT_LAUNCH(pref_score_k, n, FT_PREF_TPB, 0, dm->stream)(p->score, dm->head_x, p->head[0].w,
							p->head[1].w, D);
	LAUNCHED("pref_score", "n=%d D=%d", n, D);
	TRY(ft_cu_copy(dm, score, p->score, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost,
		       "value-head scores"));
	ft_cu_sample_peak(dm);
	return 0;
}

int ft_cuda_value_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const int32_t *pos, int n,
			   float p_drop, uint64_t seed, const float *dscore)
{
	ft_cuda_model *dm = p->dm;
	TRY(check_pos(p, b, pos, n));
	int D = dm->v.D;
	for (int k = 0; k < n; k++)
		p->h_f[k] = dscore[k] * (float)dm->loss_scale;
	if (n > 0) {
		TRY(ft_cu_copy(dm, p->rs, p->h_f, (size_t)n * sizeof(float), cudaMemcpyHostToDevice,
			       "dL/dscore"));
		FT_LAUNCH(pref_vgrad_k, nblocks(D + 1), FT_PREF_TPB, 0, dm->stream)(
			p->head[0].g, p->head[1].g, dm->head_x, p->rs, n, D);
		LAUNCHED("pref_vgrad", "n=%d D=%d", n, D);
		FT_LAUNCH(pref_dh_k, nblocks((size_t)n * D), FT_PREF_TPB, 0, dm->stream)(
			dm->head_dx, p->rs, p->head[0].w, n, D);
		LAUNCHED("pref_dh", "n=%d D=%d", n, D);
		/* the same mask: a pure function of (seed, index) */
		if (p_drop > 0)
			TRY(ft_cu_dropout(dm, dm->head_dx, dm->head_dx, (size_t)n * D, p_drop, seed));
		TRY(upload_rows(dm, pos, NULL, n));
	}
	dm->grads_scale = dm->loss_scale;
	return ft_cu_backward_body(dm, b, n);
}

/* ---- the binding's state ---- */

static void *carve(char **at, size_t bytes)
{
	void *p = *at;
	*at += (bytes + 255) & ~(size_t)255;
	return p;
}

static size_t layout(ft_cuda_pref *p, char *base)
{
	ft_cuda_model *dm = p->dm;
	size_t N = dm->o.max_tokens, D = dm->v.D;
	char *at = base;
	p->wmean = (double *)carve(&at, D * sizeof(double));
	p->lmean = (float *)carve(&at, N * sizeof(float));
	p->rs = (float *)carve(&at, N * sizeof(float));
	p->score = (float *)carve(&at, N * sizeof(float));
	p->ent = (float *)carve(&at, N * sizeof(float));
	if (p->value_head) {
		size_t n[2] = { D, 1 };
		for (int k = 0; k < 2; k++) {
			ft_dt *t = &p->head[k];
			memset(t, 0, sizeof *t);
			t->n = n[k];
			t->rows = (int)n[k];
			t->cols = 1;
			t->pidx = -1;
			float **f[] = { &t->w, &t->g, &t->m, &t->v };
			for (int i = 0; i < 4; i++)
				*f[i] = (float *)carve(&at, n[k] * sizeof(float));
		}
		p->sumsq = (double *)carve(&at, 2 * FT_SUMSQ_BLOCKS * sizeof(double));
	}
	return (size_t)(at - base);
}

ft_cuda_pref *ft_cuda_pref_new(ft_cuda_model *dm, int value_head)
{
	if (dm->o.inference) {
		ft_fail("CUDA: the preference stages need a training device model");
		return NULL;
	}
	ft_cuda_pref *p = (ft_cuda_pref *)ft_xcalloc(1, sizeof *p);
	p->dm = dm;
	p->value_head = value_head;
	p->bytes = layout(p, NULL);
	cudaError_t e = cudaMalloc(&p->mem, p->bytes);
	if (e != cudaSuccess) {
		ft_cu_fail(e, "cudaMalloc(&p->mem, ...)", "%zu bytes (preference-stage buffers)",
			   p->bytes);
		free(p);
		return NULL;
	}
	layout(p, (char *)p->mem);
	p->h_f = (float *)ft_xmalloc((size_t)dm->o.max_tokens * sizeof(float));
	p->h_seen = (unsigned char *)ft_xmalloc((size_t)dm->o.max_tokens);
	if (ft_cu_zero(dm, p->mem, p->bytes) < 0 || ft_cuda_sync(dm) < 0) {
		ft_cuda_pref_free(p);
		return NULL;
	}
	dm->peak += p->bytes;   /* the high-water mark: the plan plus these */
	if (value_head) {   /* data parallel sums the head with the model */
		dm->xgrads = p->head;
		dm->nxgrads = 2;
	}
	return p;
}

void ft_cuda_pref_free(ft_cuda_pref *p)
{
	if (!p)
		return;
	if (p->dm->xgrads == p->head) {
		p->dm->xgrads = NULL;
		p->dm->nxgrads = 0;
	}
	if (p->mem)
		cudaFree(p->mem);
	free(p->h_f);
	free(p->h_seen);
	free(p);
}

static ft_dt *head_tensor(ft_cuda_pref *p, int k)
{
	if (!p->value_head || k < 0 || k > 1) {
		ft_fail("CUDA: value-head tensor %d: %s", k,
			p->value_head ? "there are two (weight, bias)" : "this model has no value head");
		return NULL;
	}
	return &p->head[k];
}

int ft_cuda_value_head_set(ft_cuda_pref *p, int k, const float *w, const float *m, const float *v)
{
	ft_dt *t = head_tensor(p, k);
	if (!t)
		return -1;
	const float *src[3] = { w, m, v };
	float *dst[3] = { t->w, t->m, t->v };
	for (int i = 0; i < 3; i++)
		if (src[i])
			TRY(ft_cu_copy(p->dm, dst[i], src[i], t->n * sizeof(float),
				       cudaMemcpyHostToDevice, "value head"));
	return 0;
}

int ft_cuda_value_head_get(ft_cuda_pref *p, int k, float *w, float *m, float *v)
{
	ft_dt *t = head_tensor(p, k);
	if (!t)
		return -1;
	float *dst[3] = { w, m, v };
	const float *src[3] = { t->w, t->m, t->v };
	for (int i = 0; i < 3; i++)
		if (dst[i])
			TRY(ft_cu_copy(p->dm, dst[i], src[i], t->n * sizeof(float),
				       cudaMemcpyDeviceToHost, "value head"));
	return 0;
}

int ft_cuda_pref_zero_grad(ft_cuda_pref *p)
{
	TRY(ft_cuda_zero_grad(p->dm));
	for (int k = 0; p->value_head && k < 2; k++)
		TRY(ft_cu_zero(p->dm, p->head[k].g, p->head[k].n * sizeof(float)));
	return 0;
}

int ft_cuda_pref_step(ft_cuda_pref *p, const ft_cuda_adamw_opts *o, double lr,
		      double max_grad_norm, double *grad_norm, int *skipped)
{
	/* no weight decay on the bias, as transformers groups parameters */
	ft_cu_extra x = { { &p->head[0], &p->head[1] }, { 1, 0 }, 2, p->sumsq };
	return ft_cu_step(p->dm, o, lr, max_grad_norm, grad_norm, skipped,
			  p->value_head ? &x : NULL);
}
