/* probe.cu - is there a CUDA device, and which.  Exported from
 * libft_cuda.so (backend_internal.h): lib/model/device.c calls it through
 * dlsym to resolve --device before any model exists. */
#include <stdio.h>
#include "cuda/common.cuh"
#include "cuda/backend_internal.h"

extern "C" __attribute__((visibility("default")))
int ftp_cuda_backend_probe(char *desc, size_t desc_size)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e == cudaErrorNoDevice)
		return 0;
	if (e != cudaSuccess)
		return ft_cu_fail(e, "cudaGetDeviceCount", "%s", "probe");
	if (n > 0 && desc && desc_size) {
		cudaDeviceProp p;
		CU(cudaGetDeviceProperties(&p, 0), "%s", "device 0");
		snprintf(desc, desc_size, "%s, %.1f GiB, sm_%d%d", p.name,
			 (double)p.totalGlobalMem / (1 << 30), p.major, p.minor);
	}
	return n;
}
