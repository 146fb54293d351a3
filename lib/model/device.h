/* device.h - which compute device the tools can use.
 *
 * The CUDA backend is a shared object, libft_cuda.so (the .cu files of lib/cuda, built
 * by `make` whenever nvcc is present), loaded with dlopen on first use, so
 * every tool starts and runs on the CPU on a machine without the .so, a
 * CUDA driver or a GPU.  It is looked for, in order:
 *   $FT_CUDA_LIB (a path; when set, the only place looked at)
 *   <dir of the executable>/libft_cuda.so            (a bundle)
 *   <dir>/../lib/ft/libft_cuda.so                     (make install)
 *   <dir>/../build/libft_cuda.so                      (bin/ in the tree)
 *   <dir>/../libft_cuda.so, <dir>/../../libft_cuda.so (build/gpu, build/asan/bin)
 * The executable is found through /proc/self/exe.  "auto" falls back to
 * the CPU saying why; "cuda" fails with one line saying why.
 */
#ifndef FT_DEVICE_H
#define FT_DEVICE_H

#include <stddef.h>

typedef enum { FT_DEV_CPU = 0, FT_DEV_CUDA = 1 } ft_device_kind;

/* Load the backend (once; later calls return the first answer): 1 when
 * libft_cuda.so is loaded, or -1 after ft_fail() saying where it was
 * looked for or why it did not load (a missing cuBLAS, another build). */
int ft_device_cuda_load(void);
/* The path the backend was loaded from ("" before or without it). */
const char *ft_device_cuda_path(void);
/* A symbol of the loaded backend, or NULL after ft_fail(). */
void *ft_device_cuda_symbol(const char *name);

/* Number of CUDA devices (>= 1), or -1 after ft_fail() saying why not:
 * no backend, no driver, no device.  desc (may be NULL) receives
 * "NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90" for device 0. */
int ft_device_cuda_count(char *desc, size_t desc_size);

/* --device: "cpu", "cuda", "cuda:N" or "auto" (NULL or "" = auto: cuda
 * when a device is present, else cpu).  Returns the kind and the device
 * index in *index, or -1 after ft_fail() ("--device cuda: ...") when the
 * request cannot be met or the name is unknown.  When auto falls back to
 * the CPU, why (may be NULL) receives the reason, else "". */
int ft_device_resolve(const char *want, int *index, char *why, size_t why_size);

/* The directory of the running executable (/proc/self/exe), where the
 * backends are looked for (also libft_mpi.so, lib/train/dist.c). */
int ft_device_exe_dir(char *dir, size_t n);

#endif
