/* oft.cu - PEFT's OFT (finetuning type oft) on the device, function by
 * function as lib/model/model_oft.c and lib/format/adapter_oft.c (the
 * readable reference): each module's input is rotated block by block by
 * R_i = the Cayley-Neumann series of the skew-symmetric Q_i held in
 * oft_R.weight, and the frozen base (fp32, its half copy, or QLoRA's
 * quantized layer) runs on the rotated input:
 *
 *   x_rot[n, i*b + c] = sum_k x[n, i*b + k] R_i[k][c],   y = base(x_rot)
 *   dR_i = x_i^T dxr_i,  dx_i += dxr_i R_i^T,  dxr = dy W
 *
 * and dR goes through the series to oft_R's gradient.  The series
 * (R = sum_k c_k Q^k) and its backward run one OFT block per thread block
 * with the CPU's b x b products, in double, summed in the CPU's order
 * (the powers, their transposes, the pairs j, k - 1 - j); the scratch is
 * global memory (a block of 32 needs (K + 3) * 8 KiB).
 *
 * The fused q|k|v and gate|up projections run module by module when a
 * member has OFT, as the CPU's lin_fwd_many does: each member sees its
 * own rotated input, so the stacked GEMM's shared operand is gone; their
 * outputs and gradients keep the fused buffers' columns.  The rotated
 * input and its gradient live in dm->drop and dm->ddrop (the CPU's
 * m->drop, m->ddrop): OFT modules have no LoRA branch, whose dropout
 * would use them.
 */
#include "cuda/common.cuh"

#define OFT_TPB 256
#include "cuda/oft_kernels.cuh"

static oft_coefs coefs_of(const ft_cuda_model *dm)
{
	oft_coefs c;
	for (int k = 0; k < 65; k++)
		c.c[k] = dm->v.oft_c[k];
	return c;
}

const ft_doft *ft_cu_oft_of(const ft_cuda_model *dm, int l, int j)
{
	const ft_doft *o = &dm->layers[l].oft[j];
	return o->on ? o : NULL;
}

int ft_cu_oft_group(const ft_cuda_model *dm, int l, int gi)
{
	const ft_cv_group *c = &dm->layers[l].grp[gi].c;
	for (int i = 0; i < c->n; i++)
		if (ft_cu_oft_of(dm, l, c->js[i]))
			return 1;
	return 0;
}

/* x as fp32: itself, or a half x widened into dm->oft_xf */
static int input_f32(ft_cuda_model *dm, ft_mat x, size_t n, const float **out)
{
	*out = (const float *)x.p;
	if (!x.half)
		return 0;
	if (!dm->oft_xf)
		return ft_fail("internal: OFT on a half input without its fp32 scratch");
	*out = dm->oft_xf;
	return ft_cu_act_to_f32(dm, dm->oft_xf, x, n);
}

/* ftp_oft_input: R from the current weights into o->rot (kept for the
 * backward), then x_rot = x blockdiag(R) into dm->drop; *x becomes it.
 * A half input (bf16/fp16: the normed layer input) is widened first: the
 * rotation's batched GEMM is fp32, as the CPU's; the base product then
 * casts x_rot to its operand type.  A decoding model (o.inference: the
 * rollouts of grpo/ppo) computes R once, until its weights are refreshed
 * (ft_cuda_infer_refresh), as its weights do not change between tokens. */
int ft_cu_oft_input(ft_cuda_model *dm, int l, int j, ft_mat *x, int N)
{
	ft_doft *o = &dm->layers[l].oft[j];
	if (!o->on)
		return 0;
	if (!dm->drop)
		return ft_fail("internal: OFT in a device model without its rotated-input buffer");
	int b = o->b, in = o->r * b, K = dm->v.oft_K;
	long long bb = (long long)b * b;
	if (!dm->o.inference || !o->rot_ready) {
		FT_LAUNCH(oft_rotation_k, o->r, OFT_TPB, 0, dm->stream)(o->rot, o->R->w, b, K,
			coefs_of(dm), dm->oft_scr);
		LAUNCHED("oft_rotation", "layer %d %s: %d blocks of %d", l, ft_cuda_view_lin_name(j),
			 o->r, b);
		o->rot_ready = dm->o.inference;
	}
	const float *xf;
	TRY(input_f32(dm, *x, (size_t)N * in, &xf));
	TRY(ft_cu_gemm_batched(dm, 0, 0, N, b, b, 1, xf, in, b, o->rot, b, bb, 0, dm->drop, in, b,
			       o->r, "oft rotate input"));
	*x = ft_cu_f32(dm->drop);
	return 0;
}

/* One module of a fused group on its own input into its columns of Y
 * (row stride ld): lin_fwd's base product and bias. */
static int base_fwd(ft_cuda_model *dm, int l, int j, float *y, int ld, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	ft_mat xo;
	if (d->quant) {
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, ft_cu_qscratch_half(dm)));
		TRY(ft_cu_qlin_forward(dm, &d->q[j], y, ld, x, xo, N, nm));
	} else {
		ft_mat w = ft_cu_weight(dm, d->lin[j]);
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 0, 1, N, out, in, 1, xo, in, w, in, 0, y, ld, nm));
	}
	if (j < 3 && d->bias[j])
		TRY(ft_cu_bias_forward(dm, y, ld, d->bias[j]->w, N, out));
	return 0;
}

int ft_cu_oft_forward_group(ft_cuda_model *dm, int l, int gi, float *Y, ft_mat x, int N)
{
	const ft_cv_group *c = &dm->layers[l].grp[gi].c;
	for (int i = 0; i < c->n; i++) {
		ft_mat xi = x;
		TRY(ft_cu_oft_input(dm, l, c->js[i], &xi, N));
		TRY(base_fwd(dm, l, c->js[i], Y + c->off[i], c->tot, xi, N));
	}
	return 0;
}

/* dxr (fp32 [N, in]) += dy W for the frozen base; dyo is dy as the
 * operand (row stride ld). */
static int base_dx(ft_cuda_model *dm, int l, int j, float *dxr, ft_mat dyo, int ld, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	if (d->quant)
		return ft_cu_qlin_backward(dm, &d->q[j], dxr, dyo, ld, N, nm);
	return ft_cu_gemm(dm, 0, 0, N, in, out, 1, dyo, ld, ft_cu_weight(dm, d->lin[j]), in, 1,
			  dxr, in, nm);
}

/* The half-mode operand of dy (N rows of stride ld, `cols` wide): cast
 * whole into dm->hy, as lin_bwd_group's. */
static int dy_operand(ft_cuda_model *dm, const ft_dlayer *d, int j, ft_mat *dyo, const float *dy,
		      int ld, int N)
{
	int half = d->quant ? ft_cu_qscratch_half(dm) : ft_cu_weight(dm, d->lin[j]).half;
	return ft_cu_operand(dm, dyo, dy, (size_t)N * ld, dm->hy, half);
}

/* ftp_oft_backward after the base's input gradient (in dm->ddrop):
 * dR_i = x_i^T dxr_i, dx_i += dxr_i R_i^T (dx may be NULL), then the
 * series' backward into oft_R's gradient. */
static int oft_backward(ft_cuda_model *dm, int l, int j, float *dx, ft_mat x, int N)
{
	ft_doft *o = &dm->layers[l].oft[j];
	int b = o->b, in = o->r * b;
	long long bb = (long long)b * b;
	const float *xf;
	if (o->R->g)
		TRY(input_f32(dm, x, (size_t)N * in, &xf));
	if (o->R->g)
		TRY(ft_cu_gemm_batched(dm, 1, 0, b, b, N, 1, xf, in, b, dm->ddrop, in, b, 0,
				       dm->oft_drot, b, bb, o->r, "oft dR"));
	if (dx)
		TRY(ft_cu_gemm_batched(dm, 0, 1, N, b, b, 1, dm->ddrop, in, b, o->rot, b, bb, 1, dx,
				       in, b, o->r, "oft dx"));
	if (!o->R->g)
		return 0;
	FT_LAUNCH(oft_rotation_backward_k, o->r, OFT_TPB, 0, dm->stream)(o->R->g, o->R->w,
		dm->oft_drot, b, dm->v.oft_K, coefs_of(dm), dm->oft_scr);
	LAUNCHED("oft_rotation_backward", "layer %d %s: %d blocks of %d", l,
		 ft_cuda_view_lin_name(j), o->r, b);
	return 0;
}

/* lin_bwd of an OFT module (lib/model/model_fwd.c's OFT branch): the
 * frozen base's input gradient into dm->ddrop, then OFT's.  dyo: dy as
 * the operand, row stride ld. */
static int oft_lin_bwd(ft_cuda_model *dm, int l, int j, float *dx, ft_mat dyo, int ld,
		       ft_mat x, int N)
{
	int in = dm->v.lin_in[j];
	TRY(ft_cu_zero(dm, dm->ddrop, (size_t)N * in * sizeof(float)));
	TRY(base_dx(dm, l, j, dm->ddrop, dyo, ld, N));
	return oft_backward(dm, l, j, dx, x, N);
}

int ft_cu_oft_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy,
		       ft_mat x, int N)
{
	ft_mat dyo;
	int out = dm->v.lin_out[j];
	TRY(dy_operand(dm, &dm->layers[l], j, &dyo, dy, out, N));
	return oft_lin_bwd(dm, l, j, dx, dyo, out, x, N);
}

/* The group's modules one by one, in the CPU's order (q, k, v; gate, up),
 * each adding its input gradient into dx: an OFT module through its
 * rotation, a plain one (frozen: OFT trains no weight) as dy W. */
int ft_cu_oft_backward_group(ft_cuda_model *dm, int l, int gi, const float *dY, float *dx,
			     ft_mat x, int N)
{
	const ft_dlayer *d = &dm->layers[l];
	const ft_cv_group *c = &d->grp[gi].c;
	ft_mat dyo;
	TRY(dy_operand(dm, d, c->js[0], &dyo, dY, c->tot, N));
	size_t el = dyo.half ? 2 : 4;
	for (int i = 0; i < c->n; i++) {
		int j = c->js[i];
		ft_mat m = dyo;
		m.p = (const char *)dyo.p + (size_t)c->off[i] * el;
		if (ft_cu_oft_of(dm, l, j))
			TRY(oft_lin_bwd(dm, l, j, dx, m, c->tot, x, N));
		else if (dx)
			TRY(base_dx(dm, l, j, dx, m, c->tot, N));
	}
	return 0;
}

/* Each OFT module's rotation [r, b, b] (kept from the forward for the
 * backward), the series' scratch ((K + 3) b^2 doubles per block) and
 * dL/dR of the largest module. */
void ft_cu_oft_layout(ft_cuda_model *dm, ft_arena *a)
{
	size_t scr = 0, rot = 0, K = dm->v.oft_K;
	for (int l = 0; l < dm->v.L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++) {
			ft_doft *o = &dm->layers[l].oft[j];
			if (!o->on)
				continue;
			size_t n = (size_t)o->r * o->b * o->b;
			o->rot = (float *)ft_arena_take(a, n * sizeof(float), A_SCRATCH);
			if (n > rot) rot = n;
			if (n * (K + 3) > scr) scr = n * (K + 3);
		}
	dm->oft_scr = scr ? (double *)ft_arena_take(a, scr * sizeof(double), A_SCRATCH) : NULL;
	dm->oft_drot = rot ? (float *)ft_arena_take(a, rot * sizeof(float), A_SCRATCH) : NULL;
}
