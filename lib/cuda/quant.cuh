/* quant.cuh - the device copy of one QLoRA base linear (lib/model/quant.h's
 * ft_qweight with device pointers), shared by the launchers (quant.cu,
 * declared in common.cuh) and the kernels (quant_kernels.cuh, which
 * tests/emu compiles for the host). */
#ifndef FT_CUDA_QUANT_CUH
#define FT_CUDA_QUANT_CUH

#include <stdint.h>
#include <stddef.h>

typedef struct {
	int bits, fp4, in, out;             /* bits 0: not quantized */
	const uint8_t *packed, *qabsmax;
	const float *absmax, *absmax2, *code4, *code8;   /* code4: NF4/FP4, code8: dynamic */
	float offset;
	const int8_t *cb;
	const float *scb;
} ft_cu_qweight;

#endif
