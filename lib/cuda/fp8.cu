/* fp8.cu - LLaMA-Factory's fp8 (torchao's Float8Linear, tensorwise
 * dynamic scaling) on the device, as lib/model/model_fp8.c on the CPU:
 * for each GEMM operand amax over the whole tensor, scale = fp8 max /
 * amax, the operand cast to fp8 with saturation (input and weight
 * e4m3fn, the output gradient e5m2; fp8_kernels.cuh, the CPU's very
 * formulas), then y = x W^T, dx = dq(dy) W, dW = dq(dy)^T q(x) with both
 * inverse scales applied once as the GEMM's alpha (their product rounded
 * to float, as the CPU).  The bias and its gradient stay in full
 * precision (layer.cu adds them, as for any linear).
 *
 * The fp8 values are held exactly in the GEMM's operand type: fp32 in the
 * fp32 mode (the CPU's sgemm on the same floats); bf16 or f16 in the half
 * modes, both of which represent every e4m3fn and e5m2 value (3 or 2
 * mantissa bits; exponents 2^-9..2^8 and 2^-16..2^15, inside either).  A
 * product of two fp8 values has at most 4 x 4 = 8 significant bits, exact
 * in the tensor cores' fp32 products, and the sum is accumulated in fp32
 * (cublasGemmEx's CUBLAS_COMPUTE_32F): so a half GEMM on these operands
 * is an fp8 GEMM (torch._scaled_mm) and the CPU's sgemm but for the
 * order of the fp32 sums.  The fp32 mode's GEMMs are CUBLAS_COMPUTE_32F
 * (gemm.cu: no TF32), whose products of these floats are exact too.
 *
 * The scale lives on the device; its inverse goes to the host (one
 * 4-byte copy and a stream sync per operand) to be the GEMM's alpha, as
 * cuBLAS's host pointer mode takes it: a sync per converted GEMM operand,
 * the price of keeping ft_cu_gemm's one calling convention.
 *
 * Which modules: the view's fp8 flags (ft_model_fp8_enable's choice);
 * layer.cu runs a fused q|k|v or gate|up group with a converted member
 * module by module, as QLoRA's, so each member scales its own product. */
#include "cuda/common.cuh"
#include "cuda/fp8_kernels.cuh"

static unsigned blocks_of(size_t n) { return (unsigned)((n + 255) / 256); }

/* The GEMM operand's element type: fp32, or the half modes' half. */
static int operand_type(const ft_cuda_model *dm)
{
	return dm->half ? ft_cu_act_type(dm) : FT_ACT_F32;
}

int ft_cu_fp8_group(const ft_cuda_model *dm, int l, int gi)
{
	const ft_cv_group *c = &dm->layers[l].grp[gi].c;
	for (int i = 0; i < c->n; i++)
		if (dm->layers[l].fp8[c->js[i]])
			return 1;
	return 0;
}

void ft_cu_fp8_layout(ft_cuda_model *dm, ft_arena *a, size_t N)
{
	const ft_cuda_view *v = &dm->v;
	size_t mi = 0, mo = 0, mw = 0, el = dm->half ? 2 : 4;
	for (int j = 0; j < FT_CV_NLIN; j++) {
		size_t in = (size_t)v->lin_in[j], out = (size_t)v->lin_out[j];
		mi = in > mi ? in : mi;
		mo = out > mo ? out : mo;
		mw = in * out > mw ? in * out : mw;
	}
	dm->f8x = ft_arena_take(a, N * mi * el, A_SCRATCH);
	dm->f8w = ft_arena_take(a, mw * el, A_SCRATCH);
	dm->f8d = ft_arena_take(a, (dm->o.inference ? 0 : N) * mo * el, A_SCRATCH);
	dm->f8part = (float *)ft_arena_take(a, FT_FP8_BLOCKS * sizeof(float), A_SCRATCH);
	dm->f8sc = (float *)ft_arena_take(a, 2 * sizeof(float), A_SCRATCH);
}

/* q (contiguous [rows, cols], of the operand type) = the fp8 cast of x
 * [rows, cols] at stride ld, of element type at; *inv = 1 / scale. */
static int quantize(ft_cuda_model *dm, void *q, const void *x, int at, int rows, int cols, int ld,
		    int e5m2, float *inv, const char *what)
{
	cudaStream_t st = dm->stream;
	size_t n = (size_t)rows * cols;
	FT_LAUNCH(fp8_amax_k, FT_FP8_BLOCKS, FT_FP8_TPB, 0, st)(dm->f8part, x, at, rows, cols, ld);
	FT_LAUNCH(fp8_scale_k, 1, FT_FP8_TPB, 0, st)(dm->f8sc, dm->f8part, FT_FP8_BLOCKS, e5m2);
	FT_LAUNCH(fp8_quant_k, blocks_of(n), 256, 0, st)(q, operand_type(dm), x, at, rows, cols, ld,
						      dm->f8sc, e5m2);
	LAUNCHED("fp8 cast", "%s [%d, %d], %s", what, rows, cols, e5m2 ? "e5m2" : "e4m3fn");
	return ft_cu_copy(dm, inv, dm->f8sc + 1, sizeof(float), cudaMemcpyDeviceToHost,
			  "the fp8 inverse scale");
}

/* Module j's weight into dm->f8w: from the fp32 weight (or master) as
 * torchao casts the stored weight; a frozen matrix of the half modes has
 * only its half copy, which is then the stored weight (LLaMA-Factory's
 * bf16/fp16 model). */
static int weight_q(ft_cuda_model *dm, const ft_dt *W, int out, int in, float *inv, const char *nm)
{
	const void *w = W->w ? (const void *)W->w : (const void *)W->h;
	int at = W->w ? FT_ACT_F32 : ft_cu_act_type(dm);
	return quantize(dm, dm->f8w, w, at, out, in, in, 0, inv, nm);
}

int ft_cu_fp8_forward(ft_cuda_model *dm, int l, int j, float *y, int ldy, ft_mat x, int N)
{
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	float ix, iw;
	TRY(quantize(dm, dm->f8x, x.p, x.half ? ft_cu_act_type(dm) : FT_ACT_F32, N, in, in, 0, &ix,
		     nm));
	TRY(weight_q(dm, dm->layers[l].lin[j], out, in, &iw, nm));
	ft_mat xq = { dm->f8x, dm->half }, wq = { dm->f8w, dm->half };
	return ft_cu_gemm(dm, 0, 1, N, out, in, ix * iw, xq, in, wq, in, 0, y, ldy, nm);
}

int ft_cu_fp8_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy, int lddy,
		       ft_mat x, int N)
{
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	ft_dt *W = dm->layers[l].lin[j];
	ft_mat dq = { dm->f8d, dm->half }, wq = { dm->f8w, dm->half }, xq = { dm->f8x, dm->half };
	float id, iw, ix;
	if (!dx && !W->g)
		return 0;
	TRY(quantize(dm, dm->f8d, dy, FT_ACT_F32, N, out, lddy, 1, &id, nm));
	if (dx) {
		TRY(weight_q(dm, W, out, in, &iw, nm));
		TRY(ft_cu_gemm(dm, 0, 0, N, in, out, id * iw, dq, out, wq, in, 1, dx, in, nm));
	}
	if (W->g) {
		TRY(quantize(dm, dm->f8x, x.p, x.half ? ft_cu_act_type(dm) : FT_ACT_F32, N, in, in, 0,
			     &ix, nm));
		TRY(ft_cu_gemm(dm, 1, 0, out, in, N, id * ix, dq, out, xq, in, 1, W->g, in, nm));
	}
	return 0;
}
