/* cuda_runtime_emu.cc - the CUDA runtime of the host emulation (the
 * declarations and what they promise: include/cuda_runtime.h).  Part of
 * build/libft_cuda_emu.so only; nothing here is in lib/. */
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include "cuda_runtime.h"

namespace {

struct region { size_t bytes; int pinned; };
std::mutex mu;
std::map<uintptr_t, region> regions;   /* device and pinned allocations by start */
size_t used;
cudaError_t last = cudaSuccess;
const void *granted_fn;                /* cudaFuncSetAttribute's last kernel */
int granted_smem;

enum { SMEM_DEFAULT = 48 << 10 };

/* The opt-in bound of dynamic shared memory per block: an H100's 227 KiB
 * unless FT_EMU_SMEM_OPTIN (bytes, 48 KiB to 227 KiB) names another
 * card's, e.g. 101376 (sm_86 / sm_89), so that tests can see the
 * attention's fallback when the tensor-core kernels do not fit
 * (tests/bats/ft-train-cuda-half-emu.bats). */
int smem_optin()
{
	static int v = [] {
		const char *e = getenv("FT_EMU_SMEM_OPTIN");
		long n = e ? strtol(e, NULL, 10) : 0;
		return n >= SMEM_DEFAULT && n <= 227 << 10 ? (int)n : 227 << 10;
	}();
	return v;
}

size_t capacity()
{
	static size_t c = [] {
		const char *e = getenv("FT_EMU_MEM");
		return e && strtoull(e, NULL, 10) ? (size_t)strtoull(e, NULL, 10) : (size_t)16 << 30;
	}();
	return c;
}

/* The allocation holding [p, p + n), or NULL. */
const region *find(const void *p, size_t n, uintptr_t *start)
{
	uintptr_t a = (uintptr_t)p;
	auto it = regions.upper_bound(a);
	if (it == regions.begin())
		return NULL;
	--it;
	if (a + n > it->first + it->second.bytes)
		return NULL;
	*start = it->first;
	return &it->second;
}

/* 1 device, 0 pinned host, -1 other host memory; -2 a range that starts
 * in an allocation and runs past its end. */
int where(const void *p, size_t n)
{
	std::lock_guard<std::mutex> l(mu);
	uintptr_t s;
	const region *r = find(p, n ? n : 1, &s);
	if (r)
		return r->pinned ? 0 : 1;
	if (find(p, 1, &s))
		return -2;
	return -1;
}

cudaError_t fail(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t fail(cudaError_t e, const char *fmt, ...)
{
	/* the emulation's own diagnosis, on stderr: the CUDA error alone
	 * would not say which pointer was wrong */
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "cuda emu: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	last = e;
	return e;
}

cudaError_t alloc(void **p, size_t bytes, int pinned)
{
	if (!p)
		return fail(cudaErrorInvalidValue, "allocation with a NULL result pointer");
	std::lock_guard<std::mutex> l(mu);
	if (!pinned && used + bytes > capacity())
		return last = cudaErrorMemoryAllocation;
	size_t n = (bytes + 255) / 256 * 256;
	void *m = aligned_alloc(256, n ? n : 256);
	if (!m)
		return last = cudaErrorMemoryAllocation;
	memset(m, 0xff, n ? n : 256);   /* never-written memory reads as NaN / -1 */
	regions[(uintptr_t)m] = { bytes, pinned };
	if (!pinned)
		used += bytes;
	*p = m;
	return cudaSuccess;
}

cudaError_t release(void *p, int pinned)
{
	if (!p)
		return cudaSuccess;
	std::lock_guard<std::mutex> l(mu);
	auto it = regions.find((uintptr_t)p);
	if (it == regions.end() || it->second.pinned != pinned)
		return fail(cudaErrorInvalidDevicePointer, "%s of %p, not an allocation of its kind",
			    pinned ? "cudaFreeHost" : "cudaFree", p);
	if (!pinned)
		used -= it->second.bytes;
	regions.erase(it);
	free(p);
	return cudaSuccess;
}

/* dst and src as the kind says: device memory on a device side, and not on
 * a host side (pinned counts as host). */
cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind k)
{
	if (k == cudaMemcpyDefault)
		return cudaSuccess;
	int dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
	int sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
	int wd = where(dst, n), ws = where(src, n);
	if (wd == -2 || ws == -2)
		return fail(cudaErrorInvalidValue, "cudaMemcpy of %zu bytes runs past the end of %s",
			    n, wd == -2 ? "its destination" : "its source");
	if ((wd == 1) != dd || (ws == 1) != sd)
		return fail(cudaErrorInvalidValue,
			    "cudaMemcpy kind %d: destination %p is %s memory, source %p is %s memory",
			    (int)k, dst, wd == 1 ? "device" : "host", src, ws == 1 ? "device" : "host");
	return cudaSuccess;
}

} /* namespace */

struct ft_emu_stream { int flags; };
struct ft_emu_event { int recorded; };

int ft_emu_launch_ok(const char *name, dim3 g, dim3 b, size_t smem)
{
	unsigned long nt = (unsigned long)b.x * b.y * b.z;
	if (!nt || nt > 1024 || b.z > 64 || !g.x || !g.y || !g.z || g.y > 65535 || g.z > 65535 ||
	    g.x > 2147483647u) {
		fail(cudaErrorInvalidConfiguration, "kernel %s: grid (%u,%u,%u) block (%u,%u,%u)",
		     name, g.x, g.y, g.z, b.x, b.y, b.z);
		return 0;
	}
	if (smem > SMEM_DEFAULT &&
	    (smem > (size_t)smem_optin() || !granted_fn || (size_t)granted_smem < smem)) {
		fail(cudaErrorInvalidValue, "kernel %s: %zu bytes of dynamic shared memory without "
		     "the opt-in (cudaFuncSetAttribute) for them", name, smem);
		return 0;
	}
	return 1;
}

int ft_emu_is_device(const void *p, size_t bytes) { return where(p, bytes) == 1; }

void ft_emu_check_arg(const char *name, int i, const void *p)
{
	if (p && where(p, 1) < 0) {
		fprintf(stderr, "cuda emu: kernel %s: pointer argument %d (%p) is not device memory\n",
			name, i, p);
		abort();   /* a GPU would fault, or read garbage */
	}
}

/* FT_EMU_DEVICES=N (default 1): N identical devices, so that mpirun -np N
 * ranks each drive "their" GPU by local rank (tests/bats/ft-train-nccl-emu.bats);
 * they share the host memory of the process as one device would its own. */
int devices()
{
	static int n = [] {
		const char *e = getenv("FT_EMU_DEVICES");
		long v = e ? strtol(e, NULL, 10) : 0;
		return v >= 1 && v <= 64 ? (int)v : 1;
	}();
	return n;
}
thread_local int current;   /* as CUDA's: per host thread */

cudaError_t cudaGetDeviceCount(int *n) { *n = devices(); return cudaSuccess; }
cudaError_t cudaSetDevice(int d)
{
	if (d < 0 || d >= devices()) return last = cudaErrorInvalidDevice;
	current = d;
	return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) { *d = current; return cudaSuccess; }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
	if (d < 0 || d >= devices())
		return last = cudaErrorInvalidDevice;
	memset(p, 0, sizeof *p);
	snprintf(p->name, sizeof p->name, "ft host emulation");
	p->totalGlobalMem = capacity();
	p->sharedMemPerBlock = SMEM_DEFAULT;
	p->sharedMemPerBlockOptin = smem_optin();
	p->major = 9;
	p->minor = 0;
	p->multiProcessorCount = 132;
	p->maxThreadsPerBlock = 1024;
	p->warpSize = 32;
	p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = p->maxGridSize[2] = 65535;
	p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
	return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
	if (a != cudaDevAttrMaxSharedMemoryPerBlockOptin || d < 0 || d >= devices())
		return last = cudaErrorInvalidValue;
	*v = smem_optin();
	return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
	std::lock_guard<std::mutex> l(mu);
	*total_b = capacity();
	*free_b = capacity() - used;
	return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return alloc(p, bytes, 0); }
cudaError_t cudaFree(void *p) { return release(p, 0); }
cudaError_t cudaMallocHost(void **p, size_t bytes) { return alloc(p, bytes, 1); }
cudaError_t cudaFreeHost(void *p) { return release(p, 1); }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k)
{
	cudaError_t e = check_copy(dst, src, bytes, k);
	if (e == cudaSuccess && bytes)
		memmove(dst, src, bytes);
	return e;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
			    cudaStream_t)
{
	return cudaMemcpy(dst, src, bytes, k);
}

cudaError_t cudaMemset(void *p, int v, size_t bytes)
{
	if (bytes && where(p, bytes) != 1)
		return fail(cudaErrorInvalidValue, "cudaMemset of %zu bytes at %p: not within a "
			    "device allocation", bytes, p);
	memset(p, v, bytes);
	return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t) { return cudaMemset(p, v, bytes); }

cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int v, size_t width, size_t height,
			      cudaStream_t)
{
	if (width > pitch)
		return fail(cudaErrorInvalidValue, "cudaMemset2D: width %zu over pitch %zu", width,
			    pitch);
	for (size_t r = 0; r < height; r++) {
		cudaError_t e = cudaMemset((char *)p + r * pitch, v, width);
		if (e != cudaSuccess)
			return e;
	}
	return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
	*s = new ft_emu_stream{ (int)flags };
	return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new ft_emu_event{ 0 }; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { e->recorded = 1; return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) { *ms = 0; return cudaSuccess; }
/* Waiting for an event never recorded is a no-op on a GPU, which would
 * let the waiting stream run ahead of the work it meant to wait for: here
 * it is an error, so a missing record shows (lib/cuda/optim.cu's gradient
 * groups, summed on another stream after the backward's events). */
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned)
{
	if (!e->recorded)
		return fail(cudaErrorInvalidValue, "cudaStreamWaitEvent on an event never recorded");
	return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *f)
{
	memset(a, 0, sizeof *a);   /* static shared memory is not known here */
	a->maxThreadsPerBlock = 1024;
	a->maxDynamicSharedSizeBytes = f == granted_fn ? granted_smem : SMEM_DEFAULT;
	return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute a, int v)
{
	if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || v > smem_optin())
		return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute %d = %d", (int)a, v);
	granted_fn = f;
	granted_smem = v;
	return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
	cudaError_t e = last;
	last = cudaSuccess;
	return e;
}
cudaError_t cudaPeekAtLastError(void) { return last; }

const char *cudaGetErrorName(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "cudaSuccess";
	case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
	case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
	case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
	case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
	case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
	case cudaErrorNoDevice: return "cudaErrorNoDevice";
	case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
	case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
	}
	return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorMemoryAllocation: return "out of memory";
	case cudaErrorInvalidConfiguration: return "invalid configuration argument";
	case cudaErrorNoDevice: return "no CUDA-capable device is detected";
	default: return cudaGetErrorName(e);
	}
}
