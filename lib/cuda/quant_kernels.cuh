/* quant_kernels.cuh - the kernels of QLoRA's linears (lib/cuda/quant.cu
 * launches them): bitsandbytes' 4-bit and 8-bit weights dequantized a tile
 * of rows at a time, and LLM.int8()'s activation quantization and output.
 * A header so that tests/emu/test_quant_emu.cc runs these very kernels on
 * the host against the CPU path (lib/model/model_quant.c).  Every formula
 * is lib/model/quant_kernels.h's, shared with the CPU, so both compute the
 * same float32 bits.  One thread per element (per column, per row for the
 * reductions); the includer defines q_store for its element types beyond
 * float (quant.cu: bf16, f16) before including this. */
#ifndef FT_CUDA_QUANT_KERNELS_CUH
#define FT_CUDA_QUANT_KERNELS_CUH

#include "cuda/quant.cuh"
#include "model/kernels.h"          /* ft_k_f32_to_f16, ft_k_f16_to_f32 */
#include "cuda/act_kernels.cuh"      /* x of an activation type */
#include "model/quant_kernels.h"

static __device__ inline void q_store(float *p, float v) { *p = v; }

static __device__ inline size_t q_tid(void)
{
	return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

/* 4-bit elements per thread: 8 divides bnb's block of 64, so an aligned
 * run of 8 has one absmax (decoded once, not per element: with double
 * quantization three dependent loads) and its 4 packed bytes, and leaves
 * in one 16-byte store (two for fp32).  Launch dequant4_threads(n). */
#define FT_Q4_RUN 8

static inline size_t dequant4_threads(size_t n) { return (n + FT_Q4_RUN - 1) / FT_Q4_RUN; }

struct alignas(16) q_vec16 { uint32_t w[4]; };

/* A run's elements, and the same bytes as 16-byte vectors. */
template <typename T>
union q_run {
	T e[FT_Q4_RUN];
	q_vec16 vec[FT_Q4_RUN * sizeof(T) / sizeof(q_vec16)];
};

/* dst[0..FT_Q4_RUN) = r's elements, vector stores where dst allows them. */
template <typename T>
static __device__ inline void q_store_run(T *dst, const q_run<T> &r)
{
	static_assert(FT_Q4_RUN * sizeof(T) % sizeof(q_vec16) == 0, "a run is whole 16-byte vectors");
	if ((uintptr_t)dst % sizeof(q_vec16) == 0) {
		for (size_t j = 0; j < sizeof r.vec / sizeof r.vec[0]; j++)
			((q_vec16 *)dst)[j] = r.vec[j];
		return;
	}
	for (int j = 0; j < FT_Q4_RUN; j++)
		dst[j] = r.e[j];
}

/* dst[k] = W's element i0 + k, k < n (row-major [out, in], flattened:
 * 4-bit blocks run across rows as bnb's do); thread t does the run from
 * k = FT_Q4_RUN * t.  A run that is not aligned in W (a tile starting
 * mid-run: odd in) or is cut by n takes each element's own absmax. */
template <typename T>
static __global__ void dequant4_k(T *dst, ft_cu_qweight q, size_t i0, size_t n)
{
	size_t k = q_tid() * FT_Q4_RUN;
	if (k >= n)
		return;
	size_t i = i0 + k;
	if (i % FT_Q4_RUN == 0 && n - k >= FT_Q4_RUN) {
		float a = ft_k_q4_absmax(q.absmax, q.qabsmax, q.absmax2, q.code8, q.offset, i / FT_Q4_BLOCK);
		q_run<T> r;
		for (int j = 0; j < FT_Q4_RUN; j++)
			q_store(r.e + j, ft_k_q4_weight(q.code4[ft_k_nibble(q.packed, i + j)], a));
		q_store_run(dst + k, r);
		return;
	}
	for (size_t j = 0; j < FT_Q4_RUN && k + j < n; j++) {
		float a = ft_k_q4_absmax(q.absmax, q.qabsmax, q.absmax2, q.code8, q.offset,
					 (i + j) / FT_Q4_BLOCK);
		q_store(dst + k + j, ft_k_q4_weight(q.code4[ft_k_nibble(q.packed, i + j)], a));
	}
}

template <typename T>
static __global__ void dequant8_k(T *dst, ft_cu_qweight q, size_t i0, size_t n)
{
	size_t k = q_tid();
	if (k >= n)
		return;
	size_t i = i0 + k;
	q_store(dst + k, ft_k_int8_weight(q.cb[i], q.scb[i / q.in]));
}

/* ---- LLM.int8() (eval), lib/model/model_quant.c's order ----
 * x [N, in] of activation type at (act_kernels.cuh): fp32, or the half
 * modes' half layer inputs. */

static __device__ inline float q_h16(float x) { return ft_k_f16_to_f32(ft_k_f32_to_f16(x)); }

/* outl[k] = 1 when column k of x [N, in] holds an outlier. */
static __global__ void int8_outliers_k(int *outl, const void *x, int at, int N, int in)
{
	size_t k = q_tid();
	if (k >= (size_t)in)
		return;
	int o = 0;
	for (int n = 0; n < N && !o; n++)
		o = ft_k_int8_outlier(q_h16(ft_k_act_get(x, (size_t)n * in + k, at)));
	outl[k] = o;
}

/* The outlier columns in increasing order (cols[0..*nc)): one thread, in
 * is at most a few ten thousand. */
static __global__ void int8_compact_k(int *cols, int *nc, const int *outl, int in)
{
	if (q_tid() != 0)
		return;
	int c = 0;
	for (int k = 0; k < in; k++)
		if (outl[k])
			cols[c++] = k;
	*nc = c;
}

/* sca[n]: row n's absmax over its non-outlier elements (a max: any order). */
static __global__ void int8_rowmax_k(float *sca, const void *x, int at, int N, int in)
{
	size_t n = q_tid();
	if (n >= (size_t)N)
		return;
	float am = 0;
	for (int k = 0; k < in; k++) {
		float h = q_h16(ft_k_act_get(x, n * in + k, at));
		if (!ft_k_int8_outlier(h))
			am = fmaxf(am, fabsf(h));
	}
	sca[n] = am;
}

/* caf [N, in]: the int8 activations as floats; outliers (and with
 * several rows their whole columns) zero. */
static __global__ void int8_act_k(float *caf, const void *x, int at, const float *sca,
				  const int *outl, int N, int in)
{
	size_t i = q_tid();
	if (i >= (size_t)N * in)
		return;
	float am = sca[i / in], h = q_h16(ft_k_act_get(x, i, at));
	int zero = am == 0 || ft_k_int8_outlier(h) || (N > 1 && outl[i % in]);
	caf[i] = zero ? 0 : ft_k_int8_act(h, ft_k_int8_row_scale(am));
}

/* CB's elements as floats (integers: the int8 GEMM's operand). */
static __global__ void int8_cbf_k(float *dst, const int8_t *cb, size_t n)
{
	size_t i = q_tid();
	if (i < n)
		dst[i] = (float)cb[i];
}

/* acc [N, R] += tmp, a chunk's integer-valued float product (exact). */
static __global__ void int8_accum_k(int32_t *acc, const float *tmp, size_t n, int first)
{
	size_t i = q_tid();
	if (i >= n)
		return;
	acc[i] = (first ? 0 : acc[i]) + (int32_t)tmp[i];
}

/* y[n, r0 + r] (row stride ldy) for the tile's rows r < R: the int32
 * product scaled, then the outlier columns in order. */
static __global__ void int8_out_k(float *y, int ldy, const int32_t *acc, const float *sca,
				  const void *x, int at, const int *cols, const int *nc, ft_cu_qweight q,
				  int r0, int R, int N)
{
	size_t i = q_tid();
	if (i >= (size_t)N * R)
		return;
	int n = (int)(i / R), r = (int)(i % R), o = r0 + r;
	const int8_t *b = q.cb + (size_t)o * q.in;
	float v = ft_k_int8_out(acc[i], sca[n], q.scb[o]);
	for (int c = 0; c < *nc; c++)
		v = ft_k_int8_outlier_add(v, ft_k_act_get(x, (size_t)n * q.in + cols[c], at), b[cols[c]],
					  q.scb[o]);
	y[(size_t)n * ldy + o] = v;
}

#endif
