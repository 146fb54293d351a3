/* quant.cu - bitsandbytes' 4-bit and 8-bit weights dequantized on the GPU
 * a tile of rows at a time, feeding cuBLAS (see quant.cuh).  One thread
 * per element; the formulas are lib/model/quant_kernels.h's, shared with
 * the CPU path, so both give the same float32 weights bit for bit. */
#include <cuda_bf16.h>
#include "cuda/common.cuh"
#include "cuda/quant.cuh"
#include "model/quant_kernels.h"

template <typename T> static __device__ T from_f32(float v);
template <> __device__ float from_f32<float>(float v) { return v; }
template <> __device__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
static __global__ void dequant4_k(T *dst, ft_cu_qweight q, size_t i0, size_t n)
{
	size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (k >= n)
		return;
	size_t i = i0 + k;
	float a = ft_k_q4_absmax(q.absmax, q.qabsmax, q.absmax2, q.code8, q.offset, i / FT_Q4_BLOCK);
	dst[k] = from_f32<T>(q.code4[ft_k_nibble(q.packed, i)] * a);
}

template <typename T>
static __global__ void dequant8_k(T *dst, ft_cu_qweight q, size_t i0, size_t n)
{
	size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (k >= n)
		return;
	size_t i = i0 + k;
	dst[k] = from_f32<T>((float)q.cb[i] * ft_k_int8_scale(q.scb[i / q.in]));
}

int ft_cu_dequant_rows(const ft_cu_qweight *q, int r0, int r1, void *dst, int dst_bf16,
		       cudaStream_t st)
{
	size_t i0 = (size_t)r0 * q->in, n = (size_t)(r1 - r0) * q->in;
	unsigned blocks = (unsigned)((n + 255) / 256);
	if (!n)
		return 0;
	if (q->bits == 8 && dst_bf16)
		FT_LAUNCH(dequant8_k, blocks, 256, 0, st)((__nv_bfloat16 *)dst, *q, i0, n);
	else if (q->bits == 8)
		FT_LAUNCH(dequant8_k, blocks, 256, 0, st)((float *)dst, *q, i0, n);
	else if (dst_bf16)
		FT_LAUNCH(dequant4_k, blocks, 256, 0, st)((__nv_bfloat16 *)dst, *q, i0, n);
	else
		FT_LAUNCH(dequant4_k, blocks, 256, 0, st)((float *)dst, *q, i0, n);
	LAUNCHED("dequant_rows", "rows %d-%d of [%d, %d], %d-bit", r0, r1, q->out, q->in, q->bits);
	return 0;
}

/* Row-major products through column-major cuBLAS (gemm.cu's convention:
 * operands swapped).  Forward: y[:, r0:r1] = x Wt^T, ldc = out. */
int ft_cu_qlinear_forward(cublasHandle_t h, const ft_cu_qweight *q, float *y, const float *x,
			  int N, float *scratch, int tile_rows, cudaStream_t st)
{
	const float one = 1, zero = 0;
	CB(cublasSetStream(h, st), "qlinear forward");
	for (int r0 = 0; r0 < q->out; r0 += tile_rows) {
		int r1 = r0 + tile_rows < q->out ? r0 + tile_rows : q->out, R = r1 - r0;
		TRY(ft_cu_dequant_rows(q, r0, r1, scratch, 0, st));
		CB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, R, N, q->in, &one, scratch, q->in, x, q->in,
			       &zero, y + r0, q->out), "qlinear forward [%d, %d] rows %d-%d", q->out, q->in, r0, r1);
	}
	return 0;
}

/* dx[N, in] += dy[:, r0:r1] Wt: column-major dx^T += Wt^T dy^T. */
int ft_cu_qlinear_backward(cublasHandle_t h, const ft_cu_qweight *q, float *dx, const float *dy,
			   int N, float *scratch, int tile_rows, cudaStream_t st)
{
	const float one = 1;
	if (!dx)
		return 0;
	CB(cublasSetStream(h, st), "qlinear backward");
	for (int r0 = 0; r0 < q->out; r0 += tile_rows) {
		int r1 = r0 + tile_rows < q->out ? r0 + tile_rows : q->out, R = r1 - r0;
		TRY(ft_cu_dequant_rows(q, r0, r1, scratch, 0, st));
		CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, q->in, N, R, &one, scratch, q->in, dy + r0, q->out,
			       &one, dx, q->in), "qlinear backward [%d, %d] rows %d-%d", q->out, q->in, r0, r1);
	}
	return 0;
}
