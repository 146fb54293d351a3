/* cuda_runtime.h - the CUDA runtime API lib/cuda uses, for the host
 * emulation (tests/emu/emu.h): build/libft_cuda_emu.so compiles
 * the .cu files of lib/cuda with g++ and -I tests/emu/include, so this file stands
 * in for the toolkit's.  Implemented in tests/emu/cuda_runtime_emu.cc.
 *
 * The emulated device: "device memory" is host memory from cudaMalloc,
 * filled with 0xff bytes (a NaN in every float, -1 in every int) so a
 * read of memory no kernel or copy wrote shows; it is tracked, so that
 * cudaMemcpy checks each pointer lies where its kind says (a host
 * pointer passed as the device side, a copy past an allocation's end)
 * and every pointer argument of a launch is device (or pinned) memory.
 * Streams and events exist but order nothing: every call, copy and
 * launch completes before it returns (so a missing synchronisation
 * cannot show here).  Memory: FT_EMU_MEM bytes (default 16 GiB) of
 * which cudaMemGetInfo reports the unallocated part as free. */
#ifndef FT_EMU_CUDA_RUNTIME_H
#define FT_EMU_CUDA_RUNTIME_H

#define FT_CUDA_EMU 1

#include <stddef.h>
#include <stdint.h>
#include <type_traits>
#include "emu.h"

typedef enum cudaError {
	cudaSuccess = 0,
	cudaErrorInvalidValue = 1,
	cudaErrorMemoryAllocation = 2,
	cudaErrorInvalidConfiguration = 9,
	cudaErrorInvalidDevicePointer = 17,
	cudaErrorInvalidMemcpyDirection = 21,
	cudaErrorNoDevice = 100,
	cudaErrorInvalidDevice = 101,
	cudaErrorLaunchOutOfResources = 701,
} cudaError_t;

typedef enum cudaMemcpyKind {
	cudaMemcpyHostToHost = 0,
	cudaMemcpyHostToDevice = 1,
	cudaMemcpyDeviceToHost = 2,
	cudaMemcpyDeviceToDevice = 3,
	cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaDataType_t {
	CUDA_R_32F = 0,
	CUDA_R_16F = 2,
	CUDA_R_16BF = 14,
} cudaDataType_t;
typedef cudaDataType_t cudaDataType;

enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1
#define cudaHostAllocDefault 0x0

struct ft_emu_stream;
typedef struct ft_emu_stream *cudaStream_t;
struct ft_emu_event;
typedef struct ft_emu_event *cudaEvent_t;

struct cudaDeviceProp {
	char name[256];
	size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin;
	int major, minor, multiProcessorCount, maxThreadsPerBlock, warpSize;
	int maxGridSize[3], maxThreadsDim[3];
};

struct cudaFuncAttributes {
	size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
	int maxThreadsPerBlock, numRegs, maxDynamicSharedSizeBytes;
};

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
			    cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = 0);
cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int v, size_t width, size_t height,
			      cudaStream_t s = 0);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreate(cudaEvent_t *e);
#define cudaEventDisableTiming 0x2
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *f);
cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute a, int v);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
/* the toolkit's typed overloads */
template <typename T> cudaError_t cudaMalloc(T **p, size_t bytes)
{
	return cudaMalloc((void **)p, bytes);
}
template <typename T> cudaError_t cudaMallocHost(T **p, size_t bytes)
{
	return cudaMallocHost((void **)p, bytes);
}
template <typename T> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, T *f)
{
	return cudaFuncGetAttributes(a, (const void *)f);
}
template <typename T> cudaError_t cudaFuncSetAttribute(T *f, cudaFuncAttribute a, int v)
{
	return cudaFuncSetAttribute((const void *)f, a, v);
}

/* ---- launches (FT_LAUNCH in lib/cuda/common.cuh) ---- */

/* Checks a launch as the driver would (block and grid limits, shared
 * memory against the opt-in granted) and sets the error
 * cudaGetLastError returns; 0: do not run it. */
int ft_emu_launch_ok(const char *name, dim3 grid, dim3 block, size_t smem);
/* Whether [p, p + bytes) lies within one device allocation. */
int ft_emu_is_device(const void *p, size_t bytes);
/* A pointer argument of kernel `name`: device or pinned memory, or NULL. */
void ft_emu_check_arg(const char *name, int i, const void *p);

namespace ft_emu {
template <typename A> void check_args(const char *name, int i, const A &a)
{
	if constexpr (std::is_pointer<A>::value)
		ft_emu_check_arg(name, i, (const void *)a);
}

template <typename K> struct launcher {
	const char *name;
	dim3 grid, block;
	size_t smem;
	K k;
	/* Arguments are copied, as a launch copies them to the device. */
	template <typename... A> void operator()(A... a)
	{
		int i = 0;
		(check_args(name, i++, a), ...);
		if (!ft_emu_launch_ok(name, grid, block, smem))
			return;
		auto body = [&] { k(a...); };
		run(name, grid, block, smem, call<decltype(body)>, &body);
	}
};
template <typename K>
launcher<K> make_launcher(const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t,
			  K k)
{
	return launcher<K>{ name, grid, block, smem, k };
}
} /* namespace ft_emu */

#define FT_EMU_LAUNCH(k, grid, block, smem, stream) \
	ft_emu::make_launcher(#k, (grid), (block), (smem), (stream), \
			      [&](auto... ft_a_) { k(ft_a_...); })

#endif
