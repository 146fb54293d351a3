/* quant.cu - QLoRA's base linears on the device, as lib/model/model_quant.c
 * on the CPU: the weight stays quantized (4-bit codes + absmaxes, or int8
 * CB + SCB); each product dequantizes a tile of its rows into
 * dm->qscratch and multiplies with the model's cuBLAS GEMM (ft_cu_gemm),
 * so no dequantized layer is ever resident.  Forward y = x W^T, backward
 * dx += dy W (the weight is frozen: no gradient).  An 8-bit weight in
 * eval (dm->training 0: evaluation, generation) runs LLM.int8()
 * instead, bnb's MatMul8bitLt, as the CPU does.  The kernels are
 * quant_kernels.cuh. */
#include "cuda/common.cuh"

/* The scratch's element types: the working precision's matmul operand. */
struct qs_bf16 { uint16_t v; };
struct qs_f16 { uint16_t v; };
static __device__ inline void q_store(qs_bf16 *p, float v) { p->v = ft_k_f32_to_bf16(v); }
static __device__ inline void q_store(qs_f16 *p, float v) { p->v = ft_k_f32_to_f16(v); }
#include "cuda/quant_kernels.cuh"

#define INT8_K 1024   /* inputs per exact float32 chunk: 1024 * 127 * 127 < 2^24 */

/* The one place the scratch's dtype is chosen: the operand type of the
 * model's other GEMMs (fp32, or bf16/f16 in the half modes), so the
 * activations are cast as for an unquantized weight. */
int ft_cu_qscratch_half(const ft_cuda_model *dm) { return dm->half; }
size_t ft_cu_qscratch_elem(const ft_cuda_model *dm) { return ft_cu_qscratch_half(dm) ? 2 : 4; }

/* Rows a tile of W [out, in] may have in the scratch. */
static int tile_rows(const ft_cuda_model *dm, const ft_cu_qweight *q)
{
	size_t r = dm->qscratch_bytes / ft_cu_qscratch_elem(dm) / (size_t)q->in;
	return r < 1 ? 1 : r > (size_t)q->out ? q->out : (int)r;
}

static unsigned blocks_of(size_t n) { return (unsigned)((n + 255) / 256); }

template <typename T>
static void dequant_launch(T *dst, const ft_cu_qweight *q, size_t i0, size_t n, cudaStream_t st)
{
	if (q->bits == 8)
		FT_LAUNCH(dequant8_k, blocks_of(n), 256, 0, st)(dst, *q, i0, n);
	else
		FT_LAUNCH(dequant4_k, blocks_of(dequant4_threads(n)), 256, 0, st)(dst, *q, i0, n);
}

/* Rows [r0, r1) of W into the scratch, in its element type. */
static int dequant_rows(ft_cuda_model *dm, const ft_cu_qweight *q, int r0, int r1)
{
	size_t i0 = (size_t)r0 * q->in, n = (size_t)(r1 - r0) * q->in;
	if (!n)
		return 0;
	if (!ft_cu_qscratch_half(dm))
		dequant_launch((float *)dm->qscratch, q, i0, n, dm->stream);
	else if (dm->o.precision == FT_CUDA_BF16)
		dequant_launch((qs_bf16 *)dm->qscratch, q, i0, n, dm->stream);
	else
		dequant_launch((qs_f16 *)dm->qscratch, q, i0, n, dm->stream);
	LAUNCHED("dequant_rows", "rows %d-%d of [%d, %d], %d-bit", r0, r1, q->out, q->in, q->bits);
	return 0;
}

static ft_mat scratch_mat(const ft_cuda_model *dm)
{
	ft_mat m = { dm->qscratch, ft_cu_qscratch_half(dm) };
	return m;
}

int ft_cu_qtile_rows(const ft_cuda_model *dm, const ft_cu_qweight *q) { return tile_rows(dm, q); }

int ft_cu_qrows(ft_cuda_model *dm, const ft_cu_qweight *q, int r0, int r1, ft_mat *w)
{
	*w = scratch_mat(dm);
	return dequant_rows(dm, q, r0, r1);
}

/* LLM.int8() of x [N, in] (fp32) into y (row stride ldy), as
 * ft_qweight_int8_forward: activations quantized per row, the int8 product
 * in chunks of INT8_K inputs through the fp32 GEMM on integer-valued
 * floats (every partial sum an integer below 2^24: exact in any order and
 * under TF32, whose 11 bits hold every int8, so the int32 total is the
 * CPU's), then scaled, plus the outlier columns. */
static int int8_forward(ft_cuda_model *dm, const ft_cu_qweight *q, float *y, int ldy,
			ft_mat xm, int N)
{
	int in = q->in, at = xm.half ? ft_cu_act_type(dm) : FT_ACT_F32;
	const void *x = xm.p;
	cudaStream_t st = dm->stream;
	FT_LAUNCH(int8_outliers_k, blocks_of(in), 256, 0, st)(dm->q8_outl, x, at, N, in);
	FT_LAUNCH(int8_compact_k, 1, 256, 0, st)(dm->q8_cols, dm->q8_nc, dm->q8_outl, in);
	FT_LAUNCH(int8_rowmax_k, blocks_of(N), 256, 0, st)(dm->q8_sca, x, at, N, in);
	FT_LAUNCH(int8_act_k, blocks_of((size_t)N * in), 256, 0, st)(dm->q8_caf, x, at, dm->q8_sca,
							       dm->q8_outl, N, in);
	LAUNCHED("int8 activations", "[%d, %d]", N, in);
	size_t r = dm->qscratch_bytes / sizeof(float) / (size_t)in;
	int R = r < 1 ? 1 : r > (size_t)dm->q8_rows ? dm->q8_rows : (int)r;
	for (int r0 = 0; r0 < q->out; r0 += R) {
		int Rt = r0 + R < q->out ? R : q->out - r0;
		size_t n = (size_t)Rt * in, nt = (size_t)N * Rt;
		FT_LAUNCH(int8_cbf_k, blocks_of(n), 256, 0, st)((float *)dm->qscratch,
							 q->cb + (size_t)r0 * in, n);
		LAUNCHED("int8 CB tile", "rows %d-%d of [%d, %d]", r0, r0 + Rt, q->out, in);
		for (int k0 = 0; k0 < in; k0 += INT8_K) {
			int K = k0 + INT8_K < in ? INT8_K : in - k0;
			ft_mat ca = { dm->q8_caf + k0, 0 }, w = { (float *)dm->qscratch + k0, 0 };
			TRY(ft_cu_gemm(dm, 0, 1, N, Rt, K, 1, ca, in, w, in, 0, dm->q8_tmp, Rt,
				       "LLM.int8() chunk"));
			FT_LAUNCH(int8_accum_k, blocks_of(nt), 256, 0, st)(dm->q8_acc, dm->q8_tmp, nt, k0 == 0);
			LAUNCHED("int8 accumulate", "[%d, %d]", N, Rt);
		}
		FT_LAUNCH(int8_out_k, blocks_of(nt), 256, 0, st)(y, ldy, dm->q8_acc, dm->q8_sca, x, at,
							  dm->q8_cols, dm->q8_nc, *q, r0, Rt, N);
		LAUNCHED("int8 output", "rows %d-%d of [%d, %d]", r0, r0 + Rt, q->out, in);
	}
	return 0;
}

int ft_cu_qlin_forward(ft_cuda_model *dm, const ft_cu_qweight *q, float *y, int ldy,
		       ft_mat x, ft_mat xo, int N, const char *what)
{
	if (q->bits == 8 && !dm->training)
		return int8_forward(dm, q, y, ldy, x, N);
	ft_mat w = scratch_mat(dm);
	for (int r0 = 0, R = tile_rows(dm, q); r0 < q->out; r0 += R) {
		int r1 = r0 + R < q->out ? r0 + R : q->out;
		TRY(dequant_rows(dm, q, r0, r1));
		TRY(ft_cu_gemm(dm, 0, 1, N, r1 - r0, q->in, 1, xo, q->in, w, q->in, 0, y + r0, ldy,
			       what));
	}
	return 0;
}

/* dx [N, in] += dy W, dy's rows at stride lddy (a module's columns of a
 * fused gradient buffer). */
int ft_cu_qlin_backward(ft_cuda_model *dm, const ft_cu_qweight *q, float *dx, ft_mat dyo,
			int lddy, int N, const char *what)
{
	if (!dx)
		return 0;
	ft_mat w = scratch_mat(dm);
	size_t el = dyo.half ? 2 : 4;
	for (int r0 = 0, R = tile_rows(dm, q); r0 < q->out; r0 += R) {
		int r1 = r0 + R < q->out ? r0 + R : q->out;
		ft_mat dy = { (const char *)dyo.p + (size_t)r0 * el, dyo.half };
		TRY(dequant_rows(dm, q, r0, r1));
		TRY(ft_cu_gemm(dm, 0, 0, N, q->in, r1 - r0, 1, dy, lddy, w, q->in, 1, dx, q->in,
			       what));
	}
	return 0;
}
