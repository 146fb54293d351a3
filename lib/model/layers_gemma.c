/* layers_gemma.c - Gemma's GeGLU: gelu_pytorch_tanh(gate) * up, the tanh
 * approximation as torch evaluates it in float32
 * (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))). */
#include <math.h>
#include <stddef.h>
#include "model/layers.h"

#define K_BETA 0.7978845608028654f    /* sqrt(2) * 2/sqrt(pi) * 0.5 */
#define K_KAPPA 0.044715f

void ft_geglu_forward(float *h, const float *gate, const float *up, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= 65536)
	for (size_t i = 0; i < n; i++) {
		float x = gate[i], inner = K_BETA * (x + K_KAPPA * x * x * x);
		h[i] = 0.5f * x * (1 + tanhf(inner)) * up[i];
	}
}

void ft_geglu_backward(float *dgate, float *dup, const float *dh,
		       const float *gate, const float *up, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= 65536)
	for (size_t i = 0; i < n; i++) {
		float x = gate[i], x2 = x * x, inner = K_BETA * (x + K_KAPPA * x2 * x);
		float t = tanhf(inner), g = 0.5f * x * (1 + t);
		float dg = 0.5f * (1 + t) + 0.5f * x * (1 - t * t) * K_BETA * (1 + 3 * K_KAPPA * x2);
		dup[i] = dh[i] * g;
		dgate[i] = dh[i] * up[i] * dg;
	}
}
