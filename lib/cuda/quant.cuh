/* quant.cuh - QLoRA linears on the GPU (lib/cuda/quant.cu): the device
 * copy of a quantized weight and the tiled dequantize + cuBLAS products,
 * the same structure as lib/model/model_quant.c on the CPU.
 *
 * Not wired into the device model yet: ft_cuda_view_of refuses a
 * quantized model, so ft-train --device cuda with --quantization_bit
 * stops with that message.  These compile with the backend so that the
 * kernels stay in step with lib/model/quant_kernels.h. */
#ifndef FT_CUDA_QUANT_CUH
#define FT_CUDA_QUANT_CUH

#include <cublas_v2.h>
#include <stdint.h>
#include <stddef.h>

/* Device pointers of one lib/model/quant.h ft_qweight. */
typedef struct {
	int bits, fp4, in, out;
	const uint8_t *packed, *qabsmax;
	const float *absmax, *absmax2, *code4, *code8;   /* code4: NF4/FP4, code8: dynamic */
	float offset;
	const int8_t *cb;
	const float *scb;
} ft_cu_qweight;

/* Rows [r0, r1) of W into dst (float32, or bf16 when dst_bf16). */
int ft_cu_dequant_rows(const ft_cu_qweight *q, int r0, int r1, void *dst, int dst_bf16,
		       cudaStream_t st);
/* y[N, out] = x[N, in] W^T and dx[N, in] += dy[N, out] W, a tile of
 * `tile_rows` dequantized rows (float32 scratch of tile_rows * in) at a
 * time. */
int ft_cu_qlinear_forward(cublasHandle_t h, const ft_cu_qweight *q, float *y, const float *x,
			  int N, float *scratch, int tile_rows, cudaStream_t st);
int ft_cu_qlinear_backward(cublasHandle_t h, const ft_cu_qweight *q, float *dx, const float *dy,
			   int N, float *scratch, int tile_rows, cudaStream_t st);

#endif
