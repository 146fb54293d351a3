/* gemma.cu - Gemma 2 and Gemma 3 (text) decoder layers on the device,
 * mirroring lib/model/model_gemma.c function by function:
 *
 *   h = x + post_attention_layernorm(attn(input_layernorm(x)))
 *   y = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
 *
 * every norm scaling by (1 + weight), computed into dm->norm_eff before
 * each use, so the tensors the optimizer steps and the checkpoints hold
 * stay the weights themselves (d(1 + w)/dw = 1: the norm kernels'
 * weight gradients are unchanged); the MLP GeGLU (gemma_kernels.cuh);
 * the attention's scale, soft-cap and window per layer
 * (ft_cu_attn_shape_of), its sliding layers' RoPE tables
 * (ft_cu_layer_tables), q_norm/k_norm (Gemma 3) through layer.cu's
 * attention pieces, which Llama's layer uses too.
 */
#include "cuda/common.cuh"
#include "cuda/gemma_kernels.cuh"

static unsigned gblocks(size_t n)
{
	size_t b = (n + FT_GEMMA_TPB - 1) / FT_GEMMA_TPB;
	return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

int ft_cu_norm_w(ft_cuda_model *dm, const ft_dt *t, int n, const float **w)
{
	if (!dm->v.gemma) {
		*w = t->w;
		return 0;
	}
	FT_LAUNCH(plus_one_k, gblocks(n), FT_GEMMA_TPB, 0, dm->stream)(dm->norm_eff, t->w, n);
	LAUNCHED("norm 1 + weight", "n=%d", n);
	*w = dm->norm_eff;
	return 0;
}

int ft_cu_geglu_forward(ft_cuda_model *dm, void *h, const void *g, const void *u, int gt,
			int ld, int N, int F)
{
	size_t n = (size_t)N * F;
	FT_LAUNCH(geglu_forward_k, gblocks(n), FT_GEMMA_TPB, 0, dm->stream)(h, ft_cu_act_type(dm), g,
									     u, gt, ld, N, F);
	LAUNCHED("geglu_forward", "N=%d F=%d ld=%d", N, F, ld);
	return 0;
}

int ft_cu_geglu_backward(ft_cuda_model *dm, float *dg, float *du, const float *dh,
			 const void *g, const void *u, int gt, int ld, int N, int F)
{
	size_t n = (size_t)N * F;
	FT_LAUNCH(geglu_backward_k, gblocks(n), FT_GEMMA_TPB, 0, dm->stream)(dg, du, dh, g, u, gt,
									      ld, N, F);
	LAUNCHED("geglu_backward", "N=%d F=%d ld=%d", N, F, ld);
	return 0;
}

int ft_cu_softcap(ft_cuda_model *dm, float *x, size_t n, float cap)
{
	FT_LAUNCH(softcap_k, gblocks(n), FT_GEMMA_TPB, 0, dm->stream)(x, n, cap);
	LAUNCHED("final logit soft-cap", "n=%zu cap=%g", n, cap);
	return 0;
}

/* out = RMSNorm_(1 + t)(x) */
static int norm_fwd(ft_cuda_model *dm, float *out, float *rstd, const float *x, const ft_dt *t,
		    int N)
{
	const float *w;
	TRY(ft_cu_norm_w(dm, t, dm->v.D, &w));
	return ft_cu_rmsnorm_forward(dm, out, rstd, x, w, N, dm->v.D, dm->v.eps);
}

/* dx += through the norm of t (from dout, at input x); t's gradient */
static int norm_bwd(ft_cuda_model *dm, float *dx, const ft_dt *t, const float *dout,
		    const float *x, const float *rstd, int N)
{
	const float *w;
	TRY(ft_cu_norm_w(dm, t, dm->v.D, &w));
	return ft_cu_rmsnorm_backward(dm, dx, t->g, dout, x, w, rstd, N, dm->v.D);
}

int ft_cu_gemma_layer_forward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			      float *x_out, const ft_cuda_batch *b)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D;
	ft_dlayer *y = &dm->layers[l];
	const float *w;
	TRY(ft_cu_norm_w(dm, y->ln1, D, &w));
	TRY(ft_cu_rmsnorm_forward_act(dm, a->ln1, a->rstd1, x_in, w, N, D, c->eps));
	TRY(ft_cu_attn_inputs(dm, l, a, N));
	TRY(ft_cu_attn_forward(dm, l, a, b));
	TRY(ft_cu_lin_forward(dm, l, 3, a, a->ao, ft_cu_proj_mat(dm, a->att), N));
	TRY(norm_fwd(dm, dm->tmp, a->rstd_ao, a->ao, y->ln2, N));
	/* xmid = x + post_attention_layernorm(ao), then its pre-feedforward
	 * norm: the CPU's add_into + ft_rmsnorm_forward, fused */
	TRY(ft_cu_norm_w(dm, y->ln3, D, &w));
	TRY(ft_cu_add_rmsnorm_forward(dm, a->xmid, a->ln2, a->rstd2, x_in, dm->tmp, w, N, D,
				      c->eps));
	TRY(ft_cu_mlp_in_forward(dm, l, a, N));
	TRY(ft_cu_lin_forward(dm, l, 6, a, a->mo, ft_cu_act(dm, dm->hbuf), N));
	TRY(norm_fwd(dm, dm->tmp, a->rstd_mo, a->mo, y->ln4, N));
	return ft_cu_add(dm, x_out, a->xmid, dm->tmp, (size_t)N * D);
}

/* dm->d_a: dL/dx_out in, dL/dx_in out (when need_dx); dm->d_b the
 * gradient of the MLP and attention outputs before their post norms. */
int ft_cu_gemma_layer_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			       const ft_cuda_batch *b, int need_dx)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D;
	size_t nD = (size_t)N * D, nF = (size_t)N * c->F, nq = (size_t)N * c->Hq * c->hd;
	ft_dlayer *y = &dm->layers[l];
	TRY(ft_cu_zero(dm, dm->d_b, nD * sizeof(float)));
	TRY(norm_bwd(dm, dm->d_b, y->ln4, dm->d_a, a->mo, a->rstd_mo, N));
	TRY(ft_cu_glu_forward(dm, l, a, N));
	TRY(ft_cu_zero(dm, dm->dh, nF * sizeof(float)));
	TRY(ft_cu_lin_backward(dm, l, 6, a, dm->dh, dm->d_b, ft_cu_act(dm, dm->hbuf), N));
	TRY(ft_cu_mlp_in_backward(dm, l, a, N));
	TRY(norm_bwd(dm, dm->d_a, y->ln3, dm->d_ln, a->xmid, a->rstd2, N));
	TRY(ft_cu_zero(dm, dm->d_b, nD * sizeof(float)));
	TRY(norm_bwd(dm, dm->d_b, y->ln2, dm->d_a, a->ao, a->rstd_ao, N));
	TRY(ft_cu_zero(dm, dm->d_att, nq * sizeof(float)));
	TRY(ft_cu_lin_backward(dm, l, 3, a, dm->d_att, dm->d_b, ft_cu_proj_mat(dm, a->att), N));
	return ft_cu_attn_backward(dm, l, a, x_in, b, need_dx);
}
