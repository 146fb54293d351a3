/* probe.cu - is there a CUDA device, and which (lib/model/device.c calls
 * this through a weak symbol, so a build without the backend links). */
#include <stdio.h>
#include "cuda/common.cuh"

extern "C" int ft_cuda_probe(char *desc, size_t desc_size)
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
