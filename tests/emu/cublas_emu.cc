/* cublas_emu.cc - cuBLAS of the host emulation (include/cublas_v2.h):
 * column-major products by cblas_sgemm in fp32, the half operands widened
 * to fp32 first (exact), arguments checked as cuBLAS checks them. */
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

/* OpenBLAS's cblas_sgemm, declared here as lib/model/layers.c does (Debian's
 * <cblas.h> may be netlib's); LP64 ints. */
extern "C" {
enum CBLAS_ORDER { CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
		 int M, int N, int K, float alpha, const float *A, int lda, const float *B,
		 int ldb, float beta, float *C, int ldc);
}

struct ft_emu_cublas { cudaStream_t s; };

cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new ft_emu_cublas{ 0 }; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->s = s; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

const char *cublasGetStatusString(cublasStatus_t s)
{
	switch (s) {
	case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
	case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
	case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
	case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
	default: return "CUBLAS_STATUS_UNKNOWN";
	}
}

namespace {

/* cuBLAS's checks: sizes >= 0, each leading dimension at least the rows
 * of the matrix as stored (column-major), and a known operation. */
bool valid(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
	   int ldc)
{
	if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
		return false;
	if (m < 0 || n < 0 || k < 0)
		return false;
	int ra = ta == CUBLAS_OP_N ? m : k, rb = tb == CUBLAS_OP_N ? k : n;
	return lda >= (ra > 1 ? ra : 1) && ldb >= (rb > 1 ? rb : 1) && ldc >= (m > 1 ? m : 1);
}

/* the elements a column-major operand of `rows` x `cols` at ld spans */
size_t span(int rows, int cols, int ld) { return cols ? (size_t)(cols - 1) * ld + rows : 0; }

bool in_device(const void *p, size_t elems, size_t esize)
{
	return elems == 0 || ft_emu_is_device(p, elems * esize);
}

size_t esize(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

/* A (widened to fp32 when half) */
const float *widen(const void *p, cudaDataType_t t, size_t n, std::vector<float> &buf)
{
	if (t == CUDA_R_32F)
		return (const float *)p;
	buf.resize(n);
	const uint16_t *h = (const uint16_t *)p;
	for (size_t i = 0; i < n; i++)
		buf[i] = t == CUDA_R_16BF ? ft_k_bf16_to_f32(h[i]) : ft_k_f16_to_f32(h[i]);
	return buf.data();
}

CBLAS_TRANSPOSE tr(cublasOperation_t o) { return o == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
		    const void *alpha, const void *A, cudaDataType_t at, int lda, long long sa,
		    const void *B, cudaDataType_t bt, int ldb, long long sb, const void *beta,
		    void *C, cudaDataType_t ct, int ldc, long long sc, int batch,
		    cublasComputeType_t comp)
{
	if (!valid(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0)
		return CUBLAS_STATUS_INVALID_VALUE;
	/* a 16-bit C only with operands of its type (cuBLAS's 32F-compute
	 * combinations); it is widened, computed into in fp32, rounded back */
	if (at != bt || (ct != CUDA_R_32F && ct != at) ||
	    (at != CUDA_R_32F && at != CUDA_R_16F && at != CUDA_R_16BF) ||
	    (comp != CUBLAS_COMPUTE_32F && comp != CUBLAS_COMPUTE_32F_FAST_TF32) ||
	    (at != CUDA_R_32F && comp != CUBLAS_COMPUTE_32F))
		return CUBLAS_STATUS_NOT_SUPPORTED;
	if (!m || !n)
		return CUBLAS_STATUS_SUCCESS;
	int ra = ta == CUBLAS_OP_N ? m : k, ca = ta == CUBLAS_OP_N ? k : m;
	int rb = tb == CUBLAS_OP_N ? k : n, cb = tb == CUBLAS_OP_N ? n : k;
	size_t na = span(ra, ca, lda), nb = span(rb, cb, ldb), nc = span(m, n, ldc);
	float al = *(const float *)alpha, be = *(const float *)beta;
	std::vector<float> wa, wb, wc;
	for (int i = 0; i < batch; i++) {
		const char *a = (const char *)A + (size_t)(i * sa) * esize(at);
		const char *b = (const char *)B + (size_t)(i * sb) * esize(bt);
		char *cp = (char *)C + (size_t)(i * sc) * esize(ct);
		if (!in_device(a, na, esize(at)) || !in_device(b, nb, esize(bt)) ||
		    !in_device(cp, nc, esize(ct))) {
			fprintf(stderr, "cublas emu: an operand of a %dx%dx%d product lies outside "
				"device memory\n", m, n, k);
			return CUBLAS_STATUS_INVALID_VALUE;
		}
		float *c = ct == CUDA_R_32F ? (float *)cp : (float *)widen(cp, ct, nc, wc);
		if (k == 0) {   /* C = beta C, as cuBLAS */
			for (int j = 0; j < n; j++)
				for (int r = 0; r < m; r++)
					c[(size_t)j * ldc + r] = be == 0 ? 0 : be * c[(size_t)j * ldc + r];
		} else {
			cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, al,
				    widen(a, at, na, wa), lda, widen(b, bt, nb, wb), ldb, be, c,
				    ldc);
		}
		if (ct != CUDA_R_32F)   /* only C's elements; ld's gaps as they were */
			for (int j = 0; j < n; j++)
				for (int r = 0; r < m; r++) {
					size_t e = (size_t)j * ldc + r;
					((uint16_t *)cp)[e] = ct == CUDA_R_16BF
						? ft_k_f32_to_bf16(c[e]) : ft_k_f32_to_f16(c[e]);
				}
	}
	return CUBLAS_STATUS_SUCCESS;
}

} /* namespace */

cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
			   int n, int k, const float *alpha, const float *A, int lda,
			   const float *B, int ldb, const float *beta, float *C, int ldc)
{
	return gemm(ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
		    CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
			    int n, int k, const void *alpha, const void *A, cudaDataType_t at,
			    int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
			    void *C, cudaDataType_t ct, int ldc, cublasComputeType_t comp,
			    cublasGemmAlgo_t)
{
	return gemm(ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
		    comp);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta,
					  cublasOperation_t tb, int m, int n, int k,
					  const void *alpha, const void *A, cudaDataType_t at,
					  int lda, long long sa, const void *B, cudaDataType_t bt,
					  int ldb, long long sb, const void *beta, void *C,
					  cudaDataType_t ct, int ldc, long long sc, int batch,
					  cublasComputeType_t comp, cublasGemmAlgo_t)
{
	return gemm(ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc,
		    batch, comp);
}
