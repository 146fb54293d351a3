/* emu.h - the CUDA built-ins the backend's kernel headers use
 * (lib/cuda/flash_kernels.cuh, norm_kernels.cuh, reduce.cuh), emulated on
 * the host so tests/emu/test_*.cc run those very kernels without a GPU.
 *
 * A block is 256 std::threads (blockDim.x is fixed at 256, what every
 * emulated kernel is launched with); __syncthreads and __syncwarp are
 * barriers over the block and over each 32-thread warp; __shfl_xor_sync
 * exchanges through an array between two warp barriers; __shared__
 * arrays are statics (blocks run one after another); the dynamic shared
 * memory is a heap block of exactly the launch's size, filled with NaN
 * before every block.  Not shown: timing, occupancy, the shared-memory
 * opt-in, and races the barriers would hide (every shared write in the
 * kernels is followed by a barrier before another thread reads it, which
 * the emulation enforces too).  Include it first, then the kernels. */
#ifndef FT_TESTS_EMU_H
#define FT_TESTS_EMU_H

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <pthread.h>

/* ---- the CUDA built-ins the kernels use ---- */
struct emu_dim3 { unsigned x, y, z; };
static thread_local emu_dim3 threadIdx, blockIdx;
static emu_dim3 blockDim = { 256, 1, 1 }, gridDim;
static float *emu_smem;
static pthread_barrier_t emu_block, emu_warp[8];
static float emu_xchg[256];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define FA_DYNAMIC_SMEM(name) float *name = emu_smem

static inline void __syncthreads() { pthread_barrier_wait(&emu_block); }
static inline void __syncwarp() { pthread_barrier_wait(&emu_warp[threadIdx.x / 32]); }

static inline float __shfl_xor_sync(unsigned mask, float v, int o, int width)
{
	(void)mask;
	unsigned t = threadIdx.x, lane = t % 32;
	unsigned src = (lane & ~(unsigned)(width - 1)) | ((lane ^ (unsigned)o) & (width - 1));
	emu_xchg[t] = v;
	__syncwarp();
	float r = emu_xchg[t - lane + src];
	__syncwarp();
	return r;
}

/* Run body (a kernel call) over grid with 256 threads per block, one
 * block at a time. */
template <typename F>
static void launch(F body, emu_dim3 grid, size_t smem)
{
	float *mem = (float *)malloc(smem ? smem : 1);
	emu_smem = mem;
	gridDim = grid;
	auto poison = [&] {
		for (size_t i = 0; i < smem / sizeof(float); i++)
			mem[i] = NAN;
	};
	poison();
	std::vector<std::thread> ts;
	for (unsigned t = 0; t < 256; t++)
		ts.emplace_back([&, t] {
			threadIdx = { t, 0, 0 };
			for (unsigned z = 0; z < grid.z; z++)
				for (unsigned y = 0; y < grid.y; y++)
					for (unsigned x = 0; x < grid.x; x++) {
						blockIdx = { x, y, z };
						body();
						pthread_barrier_wait(&emu_block);
						if (t == 0)
							poison();
						pthread_barrier_wait(&emu_block);
					}
		});
	for (auto &t : ts)
		t.join();
	free(mem);
}

/* Call once before any launch. */
static void emu_init(void)
{
	pthread_barrier_init(&emu_block, NULL, 256);
	for (int w = 0; w < 8; w++)
		pthread_barrier_init(&emu_warp[w], NULL, 32);
}

#endif
