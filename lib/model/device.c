/* device.c - device selection (see device.h).
 *
 * The CUDA probe lives in lib/cuda/probe.cu.  It is referenced through a
 * weak symbol, so libft.a links without the CUDA backend (the symbol is
 * then NULL); `make CUDA_LINK=1` links build/libft_cuda.a and forces the
 * probe in with -Wl,--undefined=ft_cuda_probe.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/device.h"
#include "util/error.h"

/* lib/cuda/probe.cu: device count (>= 0) or -1 with ft_fail. */
extern int ft_cuda_probe(char *desc, size_t desc_size) __attribute__((weak));

int ft_device_cuda_built(void)
{
	return ft_cuda_probe != NULL;
}

int ft_device_cuda_count(char *desc, size_t desc_size)
{
	if (desc && desc_size)
		desc[0] = 0;
	if (!ft_cuda_probe)
		return ft_fail("this build has no CUDA backend (rebuild with "
			       "`make CUDA_LINK=1` on a machine with nvcc)");
	int n = ft_cuda_probe(desc, desc_size);
	if (n < 0)
		return -1;
	if (n == 0)
		return ft_fail("no CUDA device found");
	return n;
}

int ft_device_resolve(const char *want, int *index)
{
	*index = 0;
	if (!want || !*want || !strcmp(want, "auto")) {
		if (ft_cuda_probe && ft_cuda_probe(NULL, 0) > 0)
			return FT_DEV_CUDA;
		return FT_DEV_CPU;
	}
	if (!strcmp(want, "cpu"))
		return FT_DEV_CPU;
	if (strncmp(want, "cuda", 4) || (want[4] && want[4] != ':'))
		return ft_fail("--device '%s': expected cpu, cuda, cuda:N or auto", want);
	int idx = 0;
	if (want[4] == ':') {
		char *end;
		long v = strtol(want + 5, &end, 10);
		if (end == want + 5 || *end || v < 0 || v > 1024)
			return ft_fail("--device '%s': bad device index", want);
		idx = (int)v;
	}
	int n = ft_device_cuda_count(NULL, 0);
	if (n < 0)
		return ft_fail_ctx("--device %s: ", want);
	if (idx >= n)
		return ft_fail("--device %s: only %d CUDA device%s", want, n, n == 1 ? "" : "s");
	*index = idx;
	return FT_DEV_CUDA;
}
