/* layers_gemma.c - Gemma's GeGLU: gelu_pytorch_tanh(gate) * up, the tanh
 * approximation as torch evaluates it in float32
 * (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))). */
#include <stddef.h>
#include "model/layers.h"
#include "model/kernels.h"   /* the formulas, shared with lib/cuda/gemma.cu */

void ft_geglu_forward(float *h, const float *gate, const float *up, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= 65536)
	for (size_t i = 0; i < n; i++)
		h[i] = ft_k_geglu(gate[i], up[i]);
}

void ft_geglu_backward(float *dgate, float *dup, const float *dh,
		       const float *gate, const float *up, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= 65536)
	for (size_t i = 0; i < n; i++)
		ft_k_geglu_backward(dh[i], gate[i], up[i], &dgate[i], &dup[i]);
}
