/* layer.cu - one decoder layer on the device: the linear modules with
 * their LoRA branches, Qwen3's q/k norms, layer_forward and
 * layer_backward, mirroring lib/model/model_fwd.c function by function.
 * The whole-model passes that call them are in model_fwd.cu.
 */
#include "cuda/common.cuh"

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t drop_seed(const ft_cuda_model *dm, int l, int j)
{
	return mix64(dm->v.seed ^ mix64(dm->dropout_calls * 0x9e3779b97f4a7c15ULL +
					(uint64_t)(l * FT_CV_NLIN + j + 1)));
}

static int lora_input(ft_cuda_model *dm, int l, int j, const float *x, size_t n,
		      const float **xd)
{
	*xd = x;
	if (!dm->training || dm->v.lora_dropout <= 0)
		return 0;
	TRY(ft_cu_dropout(dm, dm->drop, x, n, (float)dm->v.lora_dropout, drop_seed(dm, l, j)));
	*xd = dm->drop;
	return 0;
}

static int lin_fwd(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *y, const float *x,
		   int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	ft_mat w = ft_cu_weight(dm, d->lin[j]), xo;
	TRY(ft_cu_operand(dm, &xo, x, (size_t)N * in, dm->hx, w.half));
	TRY(ft_cu_gemm(dm, 0, 1, N, out, in, 1, xo, in, w, in, 0, y, out,
		       ft_cuda_view_lin_name(j)));
	if (j < 3 && d->bias[j])
		TRY(ft_cu_bias_forward(dm, y, d->bias[j]->w, N, out));
	ft_dlora *lo = &d->lora[j];
	if (!lo->on)
		return 0;
	const float *xd;
	TRY(lora_input(dm, l, j, x, (size_t)N * in, &xd));
	ft_mat xm = { xd, 0 }, A = { lo->A->w, 0 }, B = { lo->B->w, 0 }, h = { a->lh[j], 0 };
	TRY(ft_cu_gemm(dm, 0, 1, N, lo->r, in, 1, xm, in, A, in, 0, a->lh[j], lo->r, "lora_A"));
	TRY(ft_cu_gemm(dm, 0, 1, N, out, lo->r, lo->scale, h, lo->r, B, lo->r, 1, y, out,
		       "lora_B"));
	return 0;
}

/* dx += dy W (dx may be NULL); dW += dy^T x; db += sum dy; LoRA grads. */
static int lin_bwd(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *dx,
		   const float *dy, const float *x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	ft_dt *W = d->lin[j];
	ft_mat w = ft_cu_weight(dm, W), dyo, xo;
	if (dx || W->g)
		TRY(ft_cu_operand(dm, &dyo, dy, (size_t)N * out, dm->hy, w.half));
	if (dx)
		TRY(ft_cu_gemm(dm, 0, 0, N, in, out, 1, dyo, out, w, in, 1, dx, in, nm));
	if (W->g) {
		TRY(ft_cu_operand(dm, &xo, x, (size_t)N * in, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 1, 0, out, in, N, 1, dyo, out, xo, in, 1, W->g, in, nm));
	}
	if (j < 3 && d->bias[j] && d->bias[j]->g)
		TRY(ft_cu_bias_backward(dm, d->bias[j]->g, dy, N, out));
	ft_dlora *lo = &d->lora[j];
	if (!lo->on)
		return 0;
	size_t n = (size_t)N * in;
	const float *xd;
	TRY(lora_input(dm, l, j, x, n, &xd));
	int r = lo->r;
	float *dxd = xd == x || !dx ? dx : dm->ddrop;
	if (dxd && dxd == dm->ddrop)
		TRY(ft_cu_zero(dm, dm->ddrop, n * sizeof(float)));
	ft_mat dyf = { dy, 0 }, h = { a->lh[j], 0 }, B = { lo->B->w, 0 }, A = { lo->A->w, 0 };
	ft_mat hs = { dm->lhs, 0 }, xm = { xd, 0 };
	if (lo->B->g)
		TRY(ft_cu_gemm(dm, 1, 0, out, r, N, lo->scale, dyf, out, h, r, 1, lo->B->g, r,
			       "lora_B grad"));
	TRY(ft_cu_gemm(dm, 0, 0, N, r, out, lo->scale, dyf, out, B, r, 0, dm->lhs, r,
		       "lora dh"));
	if (lo->A->g)
		TRY(ft_cu_gemm(dm, 1, 0, r, in, N, 1, hs, r, xm, in, 1, lo->A->g, in,
			       "lora_A grad"));
	if (dxd)
		TRY(ft_cu_gemm(dm, 0, 0, N, in, r, 1, hs, r, A, in, 1, dxd, in, "lora dx"));
	if (dxd && dxd == dm->ddrop) {
		TRY(ft_cu_dropout(dm, dm->ddrop, dm->ddrop, n, (float)dm->v.lora_dropout,
				  drop_seed(dm, l, j)));
		TRY(ft_cu_add(dm, dx, dx, dm->ddrop, n));
	}
	return 0;
}

static ft_cu_attn attn_shape(const ft_cuda_model *dm, const ft_cuda_batch *b)
{
	ft_cu_attn s = { b->B, b->T, dm->v.Hq, dm->v.Hk, dm->v.hd, dm->v.window,
			 b->segment_ids ? dm->seg : NULL };
	return s;
}

/* As ftp_qk_norm_forward/backward (lib/model/arch.c): Qwen3's per-head
 * RMSNorm, N*H rows of hd. */
static int qk_norm_forward(ft_cuda_model *dm, const ft_dlayer *y, ft_dacts *a, int N)
{
	const ft_cuda_view *c = &dm->v;
	TRY(ft_cu_rmsnorm_forward(dm, a->q, a->rstdq, a->qr, y->qn->w, N * c->Hq, c->hd, c->eps));
	TRY(ft_cu_rmsnorm_forward(dm, a->k, a->rstdk, a->kr, y->kn->w, N * c->Hk, c->hd, c->eps));
	return 0;
}

static int qk_norm_backward(ft_cuda_model *dm, ft_dlayer *y, float *dqr, float *dkr,
			    const ft_dacts *a, int N)
{
	const ft_cuda_view *c = &dm->v;
	size_t nq = (size_t)N * c->Hq, nk = (size_t)N * c->Hk;
	TRY(ft_cu_zero(dm, dqr, nq * c->hd * sizeof(float)));
	TRY(ft_cu_zero(dm, dkr, nk * c->hd * sizeof(float)));
	TRY(ft_cu_rmsnorm_backward(dm, dqr, y->qn->g, dm->dq, a->qr, y->qn->w, a->rstdq,
				   (int)nq, c->hd));
	TRY(ft_cu_rmsnorm_backward(dm, dkr, y->kn->g, dm->dk, a->kr, y->kn->w, a->rstdk,
				   (int)nk, c->hd));
	return 0;
}

int ft_cu_layer_forward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			float *x_out, const ft_cuda_batch *b)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D, hd = c->hd;
	ft_dlayer *y = &dm->layers[l];
	ft_cu_attn s = attn_shape(dm, b);
	TRY(ft_cu_rmsnorm_forward(dm, a->ln1, a->rstd1, x_in, y->ln1->w, N, D, c->eps));
	TRY(lin_fwd(dm, l, 0, a, c->qk_norm ? a->qr : a->q, a->ln1, N));
	TRY(lin_fwd(dm, l, 1, a, c->qk_norm ? a->kr : a->k, a->ln1, N));
	TRY(lin_fwd(dm, l, 2, a, a->v, a->ln1, N));
	if (c->qk_norm)
		TRY(qk_norm_forward(dm, y, a, N));
	TRY(ft_cu_rope(dm, a->q, dm->cos_t, dm->sin_t, N, c->Hq, hd, 1));
	TRY(ft_cu_rope(dm, a->k, dm->cos_t, dm->sin_t, N, c->Hk, hd, 1));
	TRY(ft_cu_attention_forward(dm, a->att, a->lse, a->q, a->k, a->v, &s));
	TRY(lin_fwd(dm, l, 3, a, dm->tmp, a->att, N));
	TRY(ft_cu_add_rmsnorm_forward(dm, a->xmid, a->ln2, a->rstd2, x_in, dm->tmp, y->ln2->w,
				      N, D, c->eps));
	TRY(lin_fwd(dm, l, 4, a, a->gate, a->ln2, N));
	TRY(lin_fwd(dm, l, 5, a, a->up, a->ln2, N));
	TRY(ft_cu_swiglu_forward(dm, dm->hbuf, a->gate, a->up, (size_t)N * c->F));
	TRY(lin_fwd(dm, l, 6, a, dm->tmp, dm->hbuf, N));
	TRY(ft_cu_add(dm, x_out, a->xmid, dm->tmp, (size_t)N * D));
	return 0;
}

/* dm->d_a holds dL/dx_out on entry and dL/dx_in on return (unless
 * need_dx is 0). */
int ft_cu_layer_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			  const ft_cuda_batch *b, int need_dx)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D, hd = c->hd;
	size_t nF = (size_t)N * c->F, nq = (size_t)N * c->Hq * hd;
	ft_dlayer *y = &dm->layers[l];
	ft_cu_attn s = attn_shape(dm, b);
	TRY(ft_cu_swiglu_forward(dm, dm->hbuf, a->gate, a->up, nF));
	TRY(ft_cu_zero(dm, dm->dh, nF * sizeof(float)));
	TRY(lin_bwd(dm, l, 6, a, dm->dh, dm->d_a, dm->hbuf, N));
	TRY(ft_cu_swiglu_backward(dm, dm->dgate, dm->dup, dm->dh, a->gate, a->up, nF));
	TRY(ft_cu_zero(dm, dm->d_ln, (size_t)N * D * sizeof(float)));
	TRY(lin_bwd(dm, l, 4, a, dm->d_ln, dm->dgate, a->ln2, N));
	TRY(lin_bwd(dm, l, 5, a, dm->d_ln, dm->dup, a->ln2, N));
	TRY(ft_cu_rmsnorm_backward(dm, dm->d_a, y->ln2->g, dm->d_ln, a->xmid, y->ln2->w,
				   a->rstd2, N, D));
	TRY(ft_cu_zero(dm, dm->d_att, nq * sizeof(float)));
	TRY(lin_bwd(dm, l, 3, a, dm->d_att, dm->d_a, a->att, N));
	TRY(ft_cu_attention_backward(dm, dm->dq, dm->dk, dm->dv, dm->d_att, a->q, a->k, a->v,
				     a->att, a->lse, &s));
	TRY(ft_cu_rope(dm, dm->dq, dm->cos_t, dm->sin_t, N, c->Hq, hd, -1));
	TRY(ft_cu_rope(dm, dm->dk, dm->cos_t, dm->sin_t, N, c->Hk, hd, -1));
	float *dq = dm->dq, *dk = dm->dk;
	if (c->qk_norm) {   /* into d_att and tmp, as the CPU path */
		TRY(qk_norm_backward(dm, y, dm->d_att, dm->tmp, a, N));
		dq = dm->d_att;
		dk = dm->tmp;
	}
	float *dln = need_dx || y->ln1->g ? dm->d_ln : NULL;
	if (dln)
		TRY(ft_cu_zero(dm, dln, (size_t)N * D * sizeof(float)));
	TRY(lin_bwd(dm, l, 0, a, dln, dq, a->ln1, N));
	TRY(lin_bwd(dm, l, 1, a, dln, dk, a->ln1, N));
	TRY(lin_bwd(dm, l, 2, a, dln, dm->dv, a->ln1, N));
	if (dln)
		TRY(ft_cu_rmsnorm_backward(dm, dm->d_a, y->ln1->g, dln, x_in, y->ln1->w,
					   a->rstd1, N, D));
	return 0;
}

int ft_cu_layer_has_grad(const ft_cuda_model *dm, int l)
{
	const ft_dlayer *y = &dm->layers[l];
	if (y->ln1->g || y->ln2->g || (y->qn && y->qn->g) || (y->kn && y->kn->g))
		return 1;
	for (int j = 0; j < FT_CV_NLIN; j++)
		if (y->lin[j]->g || y->lora[j].on || (j < 3 && y->bias[j] && y->bias[j]->g))
			return 1;
	return 0;
}

/* lin_fwd for lib/cuda/infer.cu (KV-cache decoding): one linear module
 * with its LoRA branch (a->lh[j] its hidden). */
int ft_cu_lin_forward(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *y, const float *x,
		      int N)
{
	return lin_fwd(dm, l, j, a, y, x, N);
}
