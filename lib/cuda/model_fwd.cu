/* model_fwd.cu - the whole-model forward and backward passes on the
 * device (forward_body, ft_cuda_forward, ft_cuda_forward_backward),
 * mirroring lib/model/model_fwd.c.  Batch bookkeeping (positions,
 * targets, the rows that reach the LM head, the RoPE tables) is done on
 * the host with the CPU's own functions and uploaded, so it is the same
 * by construction.  The layers are in layer.cu.
 */
#include <math.h>
#include <string.h>
#include "cuda/common.cuh"

extern "C" {
#include "model/layers.h"
}

/* As check_batch in lib/model/model_fwd.c, plus the planned capacity. */
static int check_batch(const ft_cuda_model *dm, const ft_cuda_batch *b)
{
	if (b->B <= 0 || b->T <= 0)
		return ft_fail("batch: empty shape %dx%d", b->B, b->T);
	size_t N = (size_t)b->B * b->T;
	if (N > (size_t)dm->o.max_tokens || b->T > dm->o.max_seq)
		return ft_fail("batch %dx%d is larger than the CUDA model was planned for "
			       "(%d tokens, rows of %d)", b->B, b->T, dm->o.max_tokens,
			       dm->o.max_seq);
	int V = dm->v.V;
	for (size_t i = 0; i < N; i++) {
		if (b->input_ids[i] < 0 || b->input_ids[i] >= V)
			return ft_fail("batch: token id %d at %zu is outside the vocabulary (%d)",
				       b->input_ids[i], i, V);
		if (b->labels && b->labels[i] != -100 && (b->labels[i] < 0 || b->labels[i] >= V))
			return ft_fail("batch: label %d at %zu is outside the vocabulary (%d)",
				       b->labels[i], i, V);
		if (b->position_ids && b->position_ids[i] < 0)
			return ft_fail("batch: negative position id at %zu", i);
	}
	return 0;
}

static int upload(ft_cuda_model *dm, void *dst, const void *src, size_t bytes,
		  const char *what)
{
	CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, dm->stream),
	   "%s, %zu bytes", what, bytes);
	return 0;
}

/* The RoPE tables of the n positions dm->h_pos, as the CPU's forward
 * body (lib/model/model_fwd.c) and rope_setup (lib/model/infer.c) make
 * them: the rotary dim's frequencies for the largest position (dynamic,
 * longrope), the attention factor (yarn, longrope). */
int ft_cu_rope_upload(ft_cuda_model *dm, int n, int maxpos)
{
	const ft_cuda_view *c = &dm->v;
	ft_rope_params rp = c->rope;
	int rd = c->rd > 0 ? c->rd : c->hd;
	TRY(ft_rope_inv_freq(dm->h_inv, rd, &rp, maxpos + 1));
	ft_rope_tables(dm->h_cos, dm->h_sin, dm->h_pos, n, dm->h_inv, rd);
	ft_rope_scale_tables(dm->h_cos, dm->h_sin, (size_t)n * (rd / 2), &rp);
	size_t nh = (size_t)n * (rd / 2) * sizeof(float);
	TRY(upload(dm, dm->cos_t, dm->h_cos, nh, "rope cos"));
	TRY(upload(dm, dm->sin_t, dm->h_sin, nh, "rope sin"));
	if (!c->gemma)
		return 0;
	/* Gemma's sliding layers: the default RoPE with their own base, in
	 * staging of their own (the uploads above are asynchronous) */
	ft_rope_params lp = c->rope_local;
	TRY(ft_rope_inv_freq(dm->h_inv, rd, &lp, maxpos + 1));
	ft_rope_tables(dm->h_cosl, dm->h_sinl, dm->h_pos, n, dm->h_inv, rd);
	TRY(upload(dm, dm->cos_l, dm->h_cosl, nh, "sliding rope cos"));
	TRY(upload(dm, dm->sin_l, dm->h_sinl, nh, "sliding rope sin"));
	return 0;
}

static int forward_body(ft_cuda_model *dm, const ft_cuda_batch *b)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D, L = c->L;
	TRY(check_batch(dm, b));
	int maxpos = 0;
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < b->T; t++) {
			int i = r * b->T + t;
			dm->h_pos[i] = b->position_ids ? b->position_ids[i] : t;
			if (dm->h_pos[i] > maxpos)
				maxpos = dm->h_pos[i];
			dm->h_targets[i] = t + 1 < b->T && b->labels ? b->labels[i + 1] : -100;
		}
	TRY(ft_cu_rope_upload(dm, N, maxpos));
	memcpy(dm->h_ids, b->input_ids, (size_t)N * 4);
	TRY(upload(dm, dm->ids, dm->h_ids, (size_t)N * 4, "input_ids"));
	if (b->segment_ids) {
		memcpy(dm->h_seg, b->segment_ids, (size_t)N * 4);
		TRY(upload(dm, dm->seg, dm->h_seg, (size_t)N * 4, "segment_ids"));
	}
	if (b->lengths) {   /* B <= N: the lens buffers hold N */
		memcpy(dm->h_lens, b->lengths, (size_t)b->B * 4);
		TRY(upload(dm, dm->lens, dm->h_lens, (size_t)b->B * 4, "row lengths"));
	}
	TRY(ft_cu_embedding_forward(dm, dm->xs, dm->ids, dm->wte, N, D));
	if (c->gemma)   /* embeddings times sqrt(hidden), in float32 as the CPU */
		TRY(ft_cu_scale(dm, dm->xs, (float)sqrt((double)D), (size_t)N * D));
	if (dm->training && c->neftune_alpha > 0)   /* on the scaled output, as the CPU */
		TRY(ft_cu_neftune(dm, dm->xs, b->B, b->T));
	for (int l = 0; l < L; l++) {
		ft_dacts *a = &dm->acts[c->gradient_checkpointing ? 0 : l];
		TRY(ft_cu_layer_forward(dm, l, a, dm->xs + (size_t)l * N * D,
				  dm->xs + (size_t)(l + 1) * N * D, b));
	}
	const float *wf;
	TRY(ft_cu_norm_w(dm, dm->norm, D, &wf));
	TRY(ft_cu_rmsnorm_forward(dm, dm->lnf, dm->rstdf, dm->xs + (size_t)L * N * D, wf, N, D,
				  c->eps));
	return 0;
}

int ft_cuda_forward(ft_cuda_model *dm, const ft_cuda_batch *b, float *logits,
		    double *loss_sum, int64_t *n_tokens)
{
	dm->training = 0;
	TRY(forward_body(dm, b));
	int N = b->B * b->T;
	int64_t nt = 0;
	for (int i = 0; i < N; i++)
		nt += dm->h_targets[i] != -100;
	TRY(upload(dm, dm->targets, dm->h_targets, (size_t)N * 4, "targets"));
	double loss = 0;
	TRY(ft_cu_lm_head_loss(dm, NULL, logits, dm->lnf, dm->targets, N, 1, &loss));
	ft_cu_sample_peak(dm);
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = nt;
	return 0;
}

/* LM head over the rows with a target, then d(lnf) scattered back. */
static int head_backward(ft_cuda_model *dm, int N, float grad_scale, double *loss, int *nrows)
{
	int D = dm->v.D, n = 0;
	for (int i = 0; i < N; i++)
		if (dm->h_targets[i] != -100) {
			dm->h_rows[n] = i;
			dm->h_tg2[n++] = dm->h_targets[i];
		}
	*nrows = n;
	TRY(upload(dm, dm->rows, dm->h_rows, (size_t)n * 4, "head rows"));
	TRY(upload(dm, dm->targets, dm->h_tg2, (size_t)n * 4, "targets"));
	TRY(ft_cu_gather_rows(dm, dm->head_x, dm->lnf, dm->rows, n, D));
	TRY(ft_cu_lm_head_loss(dm, dm->head_dx, NULL, dm->head_x, dm->targets, n,
			       grad_scale, loss));
	return 0;
}

/* From d(lnf) rows head_dx at dm->rows (n of them) to every gradient:
 * the final norm's backward, then the layers from the last down to the
 * first that has something to train (the embedding's when trained). */
static int backward_body(ft_cuda_model *dm, const ft_cuda_batch *b, int n)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D, L = c->L;
	int stop = L;
	for (int l = 0; l < L; l++)
		if (ft_cu_layer_has_grad(dm, l)) {
			stop = l;
			break;
		}
	int emb = dm->wte->g && c->full;
	if (emb)
		stop = 0;
	if (stop == L && !dm->norm->g)
		return 0;
	size_t nd = (size_t)N * D * sizeof(float);
	TRY(ft_cu_zero(dm, dm->d_ln, nd));
	TRY(ft_cu_scatter_rows(dm, dm->d_ln, dm->head_dx, dm->rows, n, D));
	TRY(ft_cu_zero(dm, dm->d_a, nd));
	const float *wf;
	TRY(ft_cu_norm_w(dm, dm->norm, D, &wf));
	TRY(ft_cu_rmsnorm_backward(dm, dm->d_a, dm->norm->g, dm->d_ln, dm->xs + (size_t)L * N * D,
				   wf, dm->rstdf, N, D));
	TRY(ft_cu_grads_final(dm, L));   /* the final norm, an untied lm_head */
	for (int l = L - 1; l >= stop; l--) {
		const float *x_in = dm->xs + (size_t)l * N * D;
		ft_dacts *a = &dm->acts[c->gradient_checkpointing ? 0 : l];
		if (c->gradient_checkpointing)
			TRY(ft_cu_layer_forward(dm, l, a, x_in, dm->d_b, b));
		TRY(ft_cu_layer_backward(dm, l, a, x_in, b, l > stop || emb));
		TRY(ft_cu_grads_final(dm, l));
	}
	if (emb && c->gemma)   /* through the sqrt(hidden) scale */
		TRY(ft_cu_scale(dm, dm->d_a, (float)sqrt((double)D), (size_t)N * D));
	if (emb)
		TRY(ft_cu_embedding_backward(dm, dm->wte->g, dm->d_a, dm->ids, N, D));
	TRY(ft_cu_grads_final(dm, -1));
	ft_cu_sample_peak(dm);
	return 0;
}

int ft_cuda_forward_backward(ft_cuda_model *dm, const ft_cuda_batch *b, float grad_scale,
			     double *loss_sum, int64_t *n_tokens)
{
	dm->training = 1;
	dm->dropout_calls++;
	TRY(forward_body(dm, b));
	int N = b->B * b->T, n = 0;
	double loss = 0;
	/* fp16: the loss scale rides on grad_scale; ft_cuda_step unscales */
	TRY(head_backward(dm, N, grad_scale * (float)dm->loss_scale, &loss, &n));
	dm->grads_scale = dm->loss_scale;
	if (loss_sum)
		*loss_sum = loss;
	if (n_tokens)
		*n_tokens = n;
	return backward_body(dm, b, n);
}

/* For lib/cuda/pref.cu (the preference stages): the decoder up to the
 * final norm (dm->lnf), and the backward pass from d(lnf) rows. */
int ft_cu_forward_body(ft_cuda_model *dm, const ft_cuda_batch *b)
{
	return forward_body(dm, b);
}

int ft_cu_backward_body(ft_cuda_model *dm, const ft_cuda_batch *b, int n)
{
	return backward_body(dm, b, n);
}
