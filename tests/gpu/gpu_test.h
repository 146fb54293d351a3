/* gpu_test.h - what the device checks under tests/gpu share beside
 * tap.h and st_test.h. */
#ifndef FT_TESTS_GPU_TEST_H
#define FT_TESTS_GPU_TEST_H

#include "cuda/ft_cuda.h"

__attribute__((unused))
static const char *pname(ft_cuda_precision p)
{
	return p == FT_CUDA_F32 ? "fp32" : p == FT_CUDA_BF16 ? "bf16" : "fp16";
}

#endif
