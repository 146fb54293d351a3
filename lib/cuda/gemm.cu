/* gemm.cu - cuBLAS matrix products with ft_sgemm's row-major convention,
 * error messages and the fp32 / half operand choice.
 *
 * Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so
 * the operands are passed to cuBLAS swapped, with the same transposes.
 * fp32 mode uses CUBLAS_COMPUTE_32F (no TF32: the parity path); the half
 * modes use bf16/f16 inputs with fp32 accumulation and an fp32 output
 * (or, ft_cu_gemm_to, a half one: the q|k|v projection), and TF32 for
 * the fp32 products that remain (LoRA B).
 */
#include <stdarg.h>
#include <stdio.h>
#include "cuda/common.cuh"

int ft_cu_fail(cudaError_t e, const char *call, const char *fmt, ...)
{
	char ctx[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof ctx, fmt, ap);
	va_end(ap);
	return ft_fail("CUDA: %s [%s]: %s (%s)", call, ctx, cudaGetErrorString(e),
		       cudaGetErrorName(e));
}

int ft_cublas_fail(cublasStatus_t s, const char *call, const char *fmt, ...)
{
	char ctx[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof ctx, fmt, ap);
	va_end(ap);
	return ft_fail("cuBLAS: %s [%s]: %s", call, ctx, cublasGetStatusString(s));
}

static cublasComputeType_t compute_type(const ft_cuda_model *dm, int half_inputs)
{
	if (half_inputs || dm->o.precision == FT_CUDA_F32)
		return CUBLAS_COMPUTE_32F;
	return CUBLAS_COMPUTE_32F_FAST_TF32;
}

static cudaDataType_t in_type(const ft_cuda_model *dm, int half)
{
	if (!half)
		return CUDA_R_32F;
	return dm->o.precision == FT_CUDA_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

int ft_cu_gemm(ft_cuda_model *dm, int ta, int tb, int M, int N, int K, float alpha,
	       ft_mat A, int lda, ft_mat B, int ldb, float beta, float *C, int ldc,
	       const char *what)
{
	return ft_cu_gemm_to(dm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, ft_cu_f32(C), ldc,
			     what);
}

/* C of the half type only with half operands (cuBLAS's rule for a
 * 32F compute with a 16-bit C); beta then reads the half C back. */
int ft_cu_gemm_to(ft_cuda_model *dm, int ta, int tb, int M, int N, int K, float alpha,
		  ft_mat A, int lda, ft_mat B, int ldb, float beta, ft_mat C, int ldc,
		  const char *what)
{
	if (M <= 0 || N <= 0)
		return 0;
	if (A.half != B.half || (C.half && !A.half))
		return ft_fail("internal: %s: mixed fp32/half operands", what);
	size_t es = C.half ? 2 : 4;
	void *c = (void *)C.p;
	if (K <= 0) {   /* cuBLAS would leave C as is; honour beta as ft_sgemm */
		if (beta == 0)
			CU(cudaMemset2DAsync(c, (size_t)ldc * es, 0, (size_t)N * es, M, dm->stream),
			   "%s M=%d N=%d", what, M, N);
		else if (beta != 1)
			return ft_fail("internal: %s: K=0 with beta %g", what, beta);
		return 0;
	}
	cudaDataType_t t = in_type(dm, A.half);
	CB(cublasGemmEx(dm->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
			N, M, K, &alpha, B.p, t, ldb, A.p, t, lda, &beta, c, in_type(dm, C.half),
			ldc, compute_type(dm, A.half), CUBLAS_GEMM_DEFAULT),
	   "%s: C[%d,%d]%s = op%s(A)[lda %d] op%s(B)[ldb %d], K=%d, %s", what, M, N,
	   C.half ? " (half)" : "", ta ? "^T" : "", lda, tb ? "^T" : "", ldb, K,
	   A.half ? "half" : "fp32");
	return 0;
}

int ft_cu_gemm_batched(ft_cuda_model *dm, int ta, int tb, int M, int N, int K,
		       float alpha, const float *A, int lda, long long sa,
		       const float *B, int ldb, long long sb, float beta, float *C,
		       int ldc, long long sc, int batch, const char *what)
{
	if (M <= 0 || N <= 0 || K <= 0 || batch <= 0)
		return ft_fail("internal: %s: empty batched product", what);
	CB(cublasGemmStridedBatchedEx(dm->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
				      ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
				      B, CUDA_R_32F, ldb, sb, A, CUDA_R_32F, lda, sa, &beta,
				      C, CUDA_R_32F, ldc, sc, batch, compute_type(dm, 0),
				      CUBLAS_GEMM_DEFAULT),
	   "%s: %d x C[%d,%d] = op%s(A) op%s(B), K=%d", what, batch, M, N,
	   ta ? "^T" : "", tb ? "^T" : "", K);
	return 0;
}

ft_mat ft_cu_weight(const ft_cuda_model *dm, const ft_dt *t)
{
	ft_mat m;
	if (t->h) {
		m.p = t->h;
		m.half = 1;
	} else {
		m.p = t->w;
		m.half = 0;
	}
	return m;
}

int ft_cu_operand(ft_cuda_model *dm, ft_mat *out, const float *x, size_t n,
		  uint16_t *buf, int half)
{
	if (!half) {
		out->p = x;
		out->half = 0;
		return 0;
	}
	TRY(ft_cu_cast_to_half(dm, buf, x, n));
	out->p = buf;
	out->half = 1;
	return 0;
}

int ft_cu_operand_act(ft_cuda_model *dm, ft_mat *out, ft_mat x, size_t n, uint16_t *buf,
		      int half)
{
	if (x.half == half) {
		*out = x;
		return 0;
	}
	if (x.half)
		return ft_fail("internal: a half activation as an fp32 operand");
	return ft_cu_operand(dm, out, (const float *)x.p, n, buf, half);
}

int ft_cu_copy(ft_cuda_model *dm, void *dst, const void *src, size_t bytes,
	       cudaMemcpyKind kind, const char *what)
{
	if (!bytes)
		return 0;
	CU(cudaMemcpyAsync(dst, src, bytes, kind, dm->stream), "%s, %zu bytes", what, bytes);
	CU(cudaStreamSynchronize(dm->stream), "after copying %s", what);
	return 0;
}
