/* device.h - which compute device the tools can use.
 *
 * The CUDA backend (lib/cuda/, build/libft_cuda.a) is linked into the
 * tools only by `make CUDA_LINK=1`.  This module works in every build: in
 * a CPU-only build, or with no GPU or driver, the CUDA queries fail with
 * a message saying why, and "auto" falls back to the CPU.
 */
#ifndef FT_DEVICE_H
#define FT_DEVICE_H

#include <stddef.h>

typedef enum { FT_DEV_CPU = 0, FT_DEV_CUDA = 1 } ft_device_kind;

/* 1 when this binary contains the CUDA backend (built with CUDA_LINK=1). */
int ft_device_cuda_built(void);

/* Number of CUDA devices (>= 1), or -1 after ft_fail() saying why not:
 * not built with CUDA, no driver, no device.  desc (may be NULL)
 * receives "NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90" for device 0. */
int ft_device_cuda_count(char *desc, size_t desc_size);

/* --device: "cpu", "cuda", "cuda:N" or "auto" (NULL or "" = auto: cuda
 * when a device is present, else cpu).  Returns the kind and the device
 * index in *index, or -1 after ft_fail() ("--device cuda: ...") when the
 * request cannot be met or the name is unknown. */
int ft_device_resolve(const char *want, int *index);

#endif
