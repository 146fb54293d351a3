/* check_runtime.cc - the host emulation's own checks (built as
 * build/asan/tests/test_cuda_emu_runtime): that emu.h runs what CUDA
 * would (2D blocks and grids, the shuffles' lane arithmetic, warp and
 * block barriers, atomics across concurrent blocks, poisoned shared and
 * device memory) and that the runtime and cuBLAS shims refuse what the
 * real ones refuse (bad launch shapes, shared memory without the opt-in,
 * copies whose pointers are not where their kind says, a leading
 * dimension below the rows), and that a divergent __syncthreads or a host
 * pointer given to a kernel aborts; that the emulated WMMA (mma.h)
 * multiplies as the tensor cores do (half inputs, fp32 accumulation,
 * both operand layouts) and refuses what CUDA refuses.  Without these the parity tests on
 * the emulated backend could pass over an emulator that hides bugs. */
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "mma.h"
#include "emu_test.h"
extern "C" {
#include "tap.h"
}

static __global__ void ids_k(int *out)
{
	unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
	unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
	unsigned nt = blockDim.x * blockDim.y * blockDim.z;
	out[b * nt + t] = (int)(b * 10000 + threadIdx.z * 100 + threadIdx.y * 10 + threadIdx.x);
}

static __global__ void shfl_k(float *out)
{
	float v = (float)threadIdx.x;
	float x = __shfl_xor_sync(0xffffffffu, v, 1, 8);
	float d = __shfl_down_sync(0xffffffffu, v, 3, 16);
	float s = __shfl_sync(0xffffffffu, v, 5, 32);
	out[threadIdx.x * 3] = x;
	out[threadIdx.x * 3 + 1] = d;
	out[threadIdx.x * 3 + 2] = s;
}

/* a block sum through shared memory and barriers */
static __global__ void sum_k(float *out, const float *in)
{
	__shared__ float sh[512];
	sh[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
	__syncthreads();
	for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
		if (threadIdx.x < s)
			sh[threadIdx.x] += sh[threadIdx.x + s];
		__syncthreads();
	}
	if (threadIdx.x == 0)
		out[blockIdx.x] = sh[0];
}

static __global__ void count_k(int *n) { atomicAdd(n, 1); }

static __global__ void smem_k(float *out)
{
	FA_DYNAMIC_SMEM(sm);
	if (threadIdx.x == 0)
		out[blockIdx.x] = sm[1];   /* never written: the poison */
	__syncthreads();
	sm[threadIdx.x] = 1;
}

/* Threads 0-9 wait at a __syncthreads the rest of their warp never
 * reaches (a thread that returned would count as arrived). */
static __global__ void divergent_k(float *out)
{
	if (threadIdx.x < 10)
		__syncthreads();
	else
		__syncwarp();
	out[threadIdx.x] = 0;
}

/* WMMA: warp w multiplies its own 16x16 pair (so the warps' exchanges
 * must not mix), D = 2 (A B + C) with the 2 applied through x[i];
 * C read in the layout cl, B in BL, D stored column-major. */
template <typename H, typename BL>
static __global__ void wmma_k(float *D, const H *A, const H *B, const float *C, int cl)
{
	namespace wm = nvcuda::wmma;
	unsigned w = threadIdx.x / 32;
	wm::fragment<wm::matrix_a, 16, 16, 16, H, wm::row_major> a;
	wm::fragment<wm::matrix_b, 16, 16, 16, H, BL> b;
	wm::fragment<wm::accumulator, 16, 16, 16, float> c;
	wm::load_matrix_sync(a, A + 256 * w, 16);
	wm::load_matrix_sync(b, B + 256 * w, 16);
	wm::load_matrix_sync(c, C + 256 * w, 16, cl ? wm::mem_col_major : wm::mem_row_major);
	wm::mma_sync(c, a, b, c);
	for (int i = 0; i < c.num_elements; i++)
		c.x[i] *= 2;
	wm::store_matrix_sync(D + 256 * w, c, 16, wm::mem_col_major);
}

/* a load from p with leading dimension ldm (the misuse checks) */
static __global__ void wmma_load_k(const __half *p, int ldm)
{
	namespace wm = nvcuda::wmma;
	wm::fragment<wm::matrix_a, 16, 16, 16, __half, wm::row_major> a;
	wm::load_matrix_sync(a, p, ldm);
}

/* Runs f in a child; whether it died of SIGABRT. */
template <typename F> static bool aborts(F f)
{
	fflush(stdout);
	pid_t p = fork();
	if (p == 0) {
		freopen("/dev/null", "w", stderr);
		f();
		_exit(0);
	}
	int st = 0;
	waitpid(p, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void test_launch_shapes(void)
{
	int *d = NULL, h[2 * 3 * 4 * 2];
	cudaMalloc(&d, sizeof h);
	FT_EMU_LAUNCH(ids_k, dim3(2, 3), dim3(4, 2), 0, 0)(d);
	cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
	bool good = cudaGetLastError() == cudaSuccess;
	for (int b = 0; b < 6; b++)
		for (int t = 0; t < 8; t++)
			good &= h[b * 8 + t] == b * 10000 + (t / 4) * 10 + t % 4;
	ok(good, "2D grid of 2D blocks: blockIdx, threadIdx, gridDim, blockDim as CUDA's");
	FT_EMU_LAUNCH(ids_k, dim3(1), dim3(1025), 0, 0)(d);
	ok(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block refused");
	FT_EMU_LAUNCH(ids_k, dim3(1, 70000), dim3(32), 0, 0)(d);
	ok(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid.y 70000 refused");
	ok(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
	cudaFree(d);
}

static void test_shuffles(void)
{
	float *d, h[64 * 3];
	cudaMalloc(&d, sizeof h);
	FT_EMU_LAUNCH(shfl_k, 1, 64, 0, 0)(d);
	cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
	bool good = true;
	for (int t = 0; t < 64; t++) {
		int lane = t % 32, base = t - lane;
		int dn = lane % 16 + 3 < 16 ? t + 3 : t;
		good &= h[t * 3] == (float)(t ^ 1) && h[t * 3 + 1] == (float)dn &&
			h[t * 3 + 2] == (float)(base + 5);
	}
	ok(good, "__shfl_xor_sync (width 8), __shfl_down_sync (width 16), __shfl_sync: CUDA's lanes");
	cudaFree(d);
}

static void test_barriers_atomics(void)
{
	const int B = 6, T = 512;
	float *in, *out, h[B * T], r[B];
	int *n, hn = 0;
	for (int i = 0; i < B * T; i++)
		h[i] = (float)(i % 7);
	cudaMalloc(&in, sizeof h);
	cudaMalloc(&out, sizeof r);
	cudaMalloc(&n, sizeof(int));
	cudaMemcpy(in, h, sizeof h, cudaMemcpyHostToDevice);
	FT_EMU_LAUNCH(sum_k, B, T, 0, 0)(out, in);
	cudaMemcpy(r, out, sizeof r, cudaMemcpyDeviceToHost);
	bool good = true;
	for (int b = 0; b < B; b++) {
		double s = 0;
		for (int i = 0; i < T; i++)
			s += h[b * T + i];
		good &= r[b] == (float)s;
	}
	ok(good, "block tree sums of 512 threads over 6 blocks (barriers in a loop)");
	cudaMemset(n, 0, sizeof(int));
	FT_EMU_LAUNCH(count_k, 40, 256, 0, 0)(n);
	cudaMemcpy(&hn, n, sizeof hn, cudaMemcpyDeviceToHost);
	ok(hn == 40 * 256, "atomicAdd from 40 blocks on the pool's threads: %d", hn);
	cudaFree(in), cudaFree(out), cudaFree(n);
}

static void test_memory(void)
{
	float *d, h[4] = { 1, 2, 3, 4 }, g[4];
	size_t fr0, fr1, tot;
	cudaMemGetInfo(&fr0, &tot);
	cudaMalloc(&d, sizeof h);
	cudaMemGetInfo(&fr1, &tot);
	ok(fr0 - fr1 == sizeof h, "cudaMemGetInfo: the allocation is no longer free");
	cudaMemcpy(g, d, sizeof g, cudaMemcpyDeviceToHost);
	ok(std::isnan(g[0]) && std::isnan(g[3]), "fresh device memory reads as NaN");
	ok(cudaMemcpy(h, d, sizeof h, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
	   "a host-to-device copy with its pointers swapped is refused");
	ok(cudaMemcpy(d, h, 2 * sizeof h, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
	   "a copy past the end of its allocation is refused");
	ok(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice) == cudaSuccess &&
	   cudaMemcpy(g, d, sizeof g, cudaMemcpyDeviceToHost) == cudaSuccess && g[2] == 3,
	   "copies there and back");
	float *o;
	cudaMalloc(&o, 2 * sizeof(float));
	FT_EMU_LAUNCH(smem_k, 2, 128, 64 << 10, 0)(o);
	ok(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB of dynamic shared memory without the opt-in refused");
	cudaFuncSetAttribute((const void *)smem_k, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10);
	FT_EMU_LAUNCH(smem_k, 2, 128, 64 << 10, 0)(o);
	cudaMemcpy(g, o, 2 * sizeof(float), cudaMemcpyDeviceToHost);
	ok(cudaGetLastError() == cudaSuccess && std::isnan(g[0]) && std::isnan(g[1]),
	   "after cudaFuncSetAttribute: runs, every block's shared memory starts as NaN");
	ok(aborts([&] { FT_EMU_LAUNCH(smem_k, 1, 32, 0, 0)(h); }),
	   "a host pointer given to a kernel aborts");
	ok(aborts([&] { FT_EMU_LAUNCH(divergent_k, 1, 64, 0, 0)(o); }),
	   "a __syncthreads only some threads reach aborts");
	cudaFree(d), cudaFree(o);
}

static void test_cublas(void)
{
	const int M = 5, N = 3, K = 4;
	float A[M * K], B[K * N], C[M * N], R[M * N], *dA, *dB, *dC;
	/* small integers, so every product is exact in fp32 whatever the
	 * order of the sums; A's columns and B's columns differ, so that the
	 * product has rank 3 and no zero element: a transposed operand, a
	 * wrong ld, a dropped or repeated k term moves some element */
	for (int i = 0; i < M * K; i++)
		A[i] = (float)((i * 3) % 7) - 3;
	for (int i = 0; i < K * N; i++)
		B[i] = (float)((i * 5) % 7) - 3;
	cudaMalloc(&dA, sizeof A), cudaMalloc(&dB, sizeof B), cudaMalloc(&dC, sizeof C);
	cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice);
	cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice);
	cublasHandle_t h;
	cublasCreate(&h);
	float one = 1, zero = 0;
	/* column-major C[M,N] = A[M,K] B[K,N] */
	cublasStatus_t s = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, dA, M, dB, K,
				       &zero, dC, M);
	cudaMemcpy(C, dC, sizeof C, cudaMemcpyDeviceToHost);
	bool good = s == CUBLAS_STATUS_SUCCESS;
	int zeros = 0;
	for (int j = 0; j < N; j++)
		for (int i = 0; i < M; i++) {
			float r = 0;
			for (int k = 0; k < K; k++)
				r += A[k * M + i] * B[j * K + k];
			R[j * M + i] = r;
			good &= C[j * M + i] == r;
			zeros += r == 0;
		}
	ok(good && !zeros, "cublasSgemm column-major: exact on small integers, no zero element");
	ok(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, dA, M - 1, dB, K, &zero, dC, M) ==
	   CUBLAS_STATUS_INVALID_VALUE, "lda below the rows of A: CUBLAS_STATUS_INVALID_VALUE");
	ok(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, A, M, dB, K, &zero, dC, M) ==
	   CUBLAS_STATUS_INVALID_VALUE, "a host operand: CUBLAS_STATUS_INVALID_VALUE");
	/* bf16 operands: these values are exact in bf16, so the product is;
	 * C is NaN first, so a GemmEx that leaves it alone does not pass on
	 * the Sgemm's result */
	uint16_t hA[M * K], hB[K * N];
	for (int i = 0; i < M * K; i++)
		hA[i] = __float2bfloat16_rn(A[i]).__x;
	for (int i = 0; i < K * N; i++)
		hB[i] = __float2bfloat16_rn(B[i]).__x;
	uint16_t *bA, *bB;
	cudaMalloc(&bA, sizeof hA), cudaMalloc(&bB, sizeof hB);
	cudaMemcpy(bA, hA, sizeof hA, cudaMemcpyHostToDevice);
	cudaMemcpy(bB, hB, sizeof hB, cudaMemcpyHostToDevice);
	cudaMemset(dC, 0xff, sizeof C);
	s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, bA, CUDA_R_16BF, M, bB,
			 CUDA_R_16BF, K, &zero, dC, CUDA_R_32F, M, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	cudaMemcpy(C, dC, sizeof C, cudaMemcpyDeviceToHost);
	good = s == CUBLAS_STATUS_SUCCESS && !memcmp(C, R, sizeof C);
	ok(good, "cublasGemmEx bf16 x bf16 -> fp32");
	ok(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, bA, CUDA_R_16BF, M, bB,
			CUDA_R_16BF, K, &zero, dC, CUDA_R_32F, M, CUBLAS_COMPUTE_32F_FAST_TF32,
			CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
	   "half inputs with TF32 compute: CUBLAS_STATUS_NOT_SUPPORTED");
	/* a bf16 C (the half q|k|v output): C + A B / 1024 in fp32 from the
	 * widened C (exact there: small integers and bf16 values, so no BLAS
	 * kernel's order matters), rounded once per element (it needs more
	 * than bf16's 8 bits); the row of C past M (ld M + 1) is left alone;
	 * fp32 operands with a bf16 C refused */
	uint16_t hC[(M + 1) * N], got[(M + 1) * N], *bC;
	float R2[M * N];   /* B2[k, j] = (k + 2j) % 3 - 1 */
	for (int i = 0; i < K * N; i++)
		hB[i] = __float2bfloat16_rn((float)((i % K + 2 * (i / K)) % 3) - 1).__x;
	cudaMemcpy(bB, hB, sizeof hB, cudaMemcpyHostToDevice);
	for (int j = 0; j < N; j++)
		for (int i = 0; i < M; i++) {
			R2[j * M + i] = 0;
			for (int k = 0; k < K; k++)
				R2[j * M + i] += A[k * M + i] * (float)((k + 2 * j) % 3 - 1);
		}
	for (int i = 0; i < (M + 1) * N; i++)
		hC[i] = __float2bfloat16_rn(0.25f * i - 1).__x;
	cudaMalloc(&bC, sizeof hC);
	cudaMemcpy(bC, hC, sizeof hC, cudaMemcpyHostToDevice);
	float third = 1.0f / 1024, beta = 1;
	s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &third, bA, CUDA_R_16BF, M, bB,
			 CUDA_R_16BF, K, &beta, bC, CUDA_R_16BF, M + 1, CUBLAS_COMPUTE_32F,
			 CUBLAS_GEMM_DEFAULT);
	cudaMemcpy(got, bC, sizeof got, cudaMemcpyDeviceToHost);
	good = s == CUBLAS_STATUS_SUCCESS;
	int rounded = 0;
	for (int j = 0; j < N; j++)
		for (int i = 0; i <= M; i++) {
			size_t e = (size_t)j * (M + 1) + i;
			float c = __bfloat162float(*(__nv_bfloat16 *)&hC[e]);
			uint16_t want = i == M ? hC[e] : ft_k_f32_to_bf16(third * R2[j * M + i] + c);
			good &= got[e] == want;
			rounded += i < M && ft_k_bf16_to_f32(want) != third * R2[j * M + i] + c;
		}
	ok(good && rounded > 0, "cublasGemmEx bf16 x bf16 -> bf16 C: the fp32 result rounded (%d "
	   "of %d inexact), ld's gap untouched", rounded, M * N);
	ok(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, dA, CUDA_R_32F, M, dB,
			CUDA_R_32F, K, &zero, bC, CUDA_R_16BF, M, CUBLAS_COMPUTE_32F,
			CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
	   "fp32 operands with a bf16 C: CUBLAS_STATUS_NOT_SUPPORTED");
	cudaFree(bC);
	cublasDestroy(h);
	cudaFree(dA), cudaFree(dB), cudaFree(dC), cudaFree(bA), cudaFree(bB);
}

static inline float emu_hf(__half x) { return __half2float(x); }
static inline float emu_hf(__nv_bfloat16 x) { return __bfloat162float(x); }
static inline void emu_hput(__half *p, float x) { *p = __float2half_rn(x); }
static inline void emu_hput(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }

/* Two warps' D = 2 (A B + C) against a double loop, within fp32's bound
 * for a sum of 17 terms (exact half products: 17 2^-24 sum |terms|),
 * which is 2^-7 (fp16) to 2^-10 (bf16) of a half rounding: accumulation
 * in half would fail it. */
template <typename H, typename BL>
static void test_wmma_case(const char *what, int cl)
{
	const int n = 2 * 256;
	H hA[n], hB[n], *dA, *dB;
	float C[n], D[n], *dC, *dD;
	unsigned st = 99;
	std::vector<float> ra = rnd_vec(st, n, 2), rb = rnd_vec(st, n, 2), rc = rnd_vec(st, n, 3);
	for (int i = 0; i < n; i++) {
		emu_hput(&hA[i], ra[i]);
		emu_hput(&hB[i], rb[i]);
		C[i] = rc[i];
	}
	cudaMalloc(&dA, sizeof hA), cudaMalloc(&dB, sizeof hB);
	cudaMalloc(&dC, sizeof C), cudaMalloc(&dD, sizeof D);
	cudaMemcpy(dA, hA, sizeof hA, cudaMemcpyHostToDevice);
	cudaMemcpy(dB, hB, sizeof hB, cudaMemcpyHostToDevice);
	cudaMemcpy(dC, C, sizeof C, cudaMemcpyHostToDevice);
	FT_EMU_LAUNCH((wmma_k<H, BL>), 1, 64, 0, 0)(dD, dA, dB, dC, cl);
	cudaMemcpy(D, dD, sizeof D, cudaMemcpyDeviceToHost);
	bool rm = std::is_same<BL, nvcuda::wmma::row_major>::value, good = true;
	double worst = 0;
	for (int w = 0; w < 2; w++)
		for (int i = 0; i < 16; i++)
			for (int j = 0; j < 16; j++) {
				const H *a = hA + 256 * w, *b = hB + 256 * w;
				double c = C[256 * w + (cl ? j * 16 + i : i * 16 + j)], r = c, m = fabs(c);
				for (int k = 0; k < 16; k++) {
					double t = (double)emu_hf(a[i * 16 + k]) *
						   emu_hf(rm ? b[k * 16 + j] : b[j * 16 + k]);
					r += t, m += fabs(t);
				}
				double e = fabs(D[256 * w + j * 16 + i] - 2 * r);
				good &= e <= 2 * 17 * ldexp(m, -24);
				worst = fmax(worst, e / (2 * m));
			}
	ok(good, "wmma %s: D = A B + C of two warps within fp32 rounding (worst %.2g of the "
	   "sum of |terms|)", what, worst);
	cudaFree(dA), cudaFree(dB), cudaFree(dC), cudaFree(dD);
}

static void test_wmma(void)
{
	namespace wm = nvcuda::wmma;
	test_wmma_case<__half, wm::row_major>("fp16, B row-major, C row-major", 0);
	test_wmma_case<__half, wm::col_major>("fp16, B col-major, C col-major", 1);
	test_wmma_case<__nv_bfloat16, wm::row_major>("bf16, B row-major, C col-major", 1);
	test_wmma_case<__nv_bfloat16, wm::col_major>("bf16, B col-major, C row-major", 0);
	__half *d;
	cudaMalloc(&d, 4096);
	ok(aborts([&] { FT_EMU_LAUNCH(wmma_load_k, 1, 32, 0, 0)(d + 8, 16); }),
	   "wmma::load_matrix_sync from a pointer off 32 bytes aborts");
	ok(aborts([&] { FT_EMU_LAUNCH(wmma_load_k, 1, 32, 0, 0)(d, 12); }),
	   "wmma::load_matrix_sync with ldm not a multiple of 8 halves aborts");
	cudaFree(d);
}

/* FT_EMU_DEVICES (unset here: one device), the current device per host
 * thread, and a wait on an event never recorded refused (a GPU would let
 * the waiting stream run ahead: the NCCL path's ordering) */
static void test_devices_events(void)
{
	int n = 0, d = -1;
	cudaGetDeviceCount(&n);
	ok(n == 1 && cudaSetDevice(1) == cudaErrorInvalidDevice && cudaSetDevice(0) == cudaSuccess,
	   "one device without FT_EMU_DEVICES; cudaSetDevice(1) refused");
	cudaGetLastError();
	cudaGetDevice(&d);
	ok(d == 0, "cudaGetDevice: 0");
	cudaStream_t s;
	cudaEvent_t e;
	cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
	cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
	ok(cudaStreamWaitEvent(s, e, 0) == cudaErrorInvalidValue, "a wait on an event never recorded is refused");
	cudaGetLastError();
	ok(cudaEventRecord(e, s) == cudaSuccess && cudaStreamWaitEvent(s, e, 0) == cudaSuccess,
	   "a wait on a recorded event passes");
	cudaEventDestroy(e);
	cudaStreamDestroy(s);
}

int main(void)
{
	test_devices_events();
	test_launch_shapes();
	test_shuffles();
	test_barriers_atomics();
	test_memory();
	test_cublas();
	test_wmma();
	return tap_done();
}
