/* model_fp8.c - LLaMA-Factory's fp8 training (fp8: true, backend torchao
 * or auto) on the CPU: the decoder linears torchao's Float8Linear replaces,
 * with its numerics (docs/EXTRAS.md "fp8").
 *
 * Which modules: LLaMA-Factory's trainers only set
 * ACCELERATE_MIXED_PRECISION=fp8 (the rowwise Float8LinearConfig and module
 * filter its fp8_utils.py builds are logged, never handed to accelerate),
 * so accelerate's default AORecipeKwargs converts the model with
 * convert_model_to_fp8_ao: every nn.Linear except the first and the last
 * in named_modules order (layer 0's q_proj and lm_head) and those whose
 * in or out features are not divisible by 16.
 *
 * The recipe, Float8LinearConfig's default (tensorwise, dynamic): for each
 * GEMM operand amax = max |t| over the whole tensor, scale = fp8 max /
 * amax, the operand cast to fp8 with saturation; input and weight e4m3fn,
 * the output gradient e5m2.  y = x W^T (forward), dx = dy W and dW = dy^T
 * x (backward) each multiply two fp8 tensors and apply both inverse scales
 * to the float32 accumulator, as torch._scaled_mm does.  ft does the same
 * with the fp8 values held as floats (ft_fp8_quantize_tensorwise): a
 * product of two fp8 values has at most 8 significant bits, so every
 * product is exact in float32 and sgemm's sums differ from the fp8 GEMM's
 * only in their order; the inverse scales are applied once as sgemm's
 * alpha (their product rounded to float: 1 ulp).  The bias, as in
 * Float8Linear, is added in full precision, and its gradient is the full
 * precision output gradient's sum.
 *
 * Output dtype: Float8Linear returns its input's dtype, bf16 under the
 * autocast LLaMA-Factory's bf16 runs use on a GPU; ft's CPU path computes
 * in float32 (as it does for --bf16), so outputs stay float32.  amax is
 * per rank's tensor: under data parallel (DeepSpeed in LLaMA-Factory,
 * mpirun here) each rank scales its own micro-batch; only FSDP2's float8
 * all-gather (not used) would share the weights' scales. */
#include <stdlib.h>
#include <string.h>
#include "util/dtype.h"
#include "util/error.h"
#include "model/model_internal.h"

static float *grow(float **p, size_t *cap, size_t n)
{
	if (n > *cap) {
		free(*p);
		*p = ft_xmalloc(n * sizeof(float));
		*cap = n;
	}
	return *p;
}

/* accelerate's filter_linear_layers with its first and last linear */
static int converted(const ft_model *m, int l, int j)
{
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	if (l == 0 && j == L_Q)
		return 0;
	return in % 16 == 0 && out % 16 == 0;
}

int ft_model_fp8_enable(ft_model *m)
{
	if (m->c.fused)
		return ft_fail("fp8 is not implemented for fused qkv_proj/gate_up_proj models "
			       "(Phi-3): torchao scales the fused weight as one tensor");
	if (m->qw)
		return ft_fail("FP8 training is not compatible with quantization. Please disable one of them.");
	if (m->oft || m->dora || m->o.type == FT_FT_OFT)
		return ft_fail("fp8 with %s is not implemented", m->dora ? "DoRA" : "OFT");
	if (m->o.type == FT_FT_LORA && m->o.lora_rank % 16 == 0)
		return ft_fail("fp8 with lora_rank %d is not implemented: torchao would convert the "
			       "LoRA matrices too (a rank divisible by 16); use another rank", m->o.lora_rank);
	int L = m->c.num_hidden_layers, n = 0;
	free(m->fp8);
	m->fp8 = ft_xcalloc((size_t)L * L_NLIN, 1);
	for (int l = 0; l < L; l++)
		for (int j = 0; j < L_NLIN; j++)
			n += m->fp8[l * L_NLIN + j] = (unsigned char)converted(m, l, j);
	return n;
}

void ftp_fp8_free(ft_model *m)
{
	free(m->fp8);
	free(m->f8x);
	free(m->f8w);
	free(m->f8d);
	m->fp8 = NULL;
	m->f8x = m->f8w = m->f8d = NULL;
	m->f8x_n = m->f8w_n = m->f8d_n = 0;
}

void ftp_fp8_forward(ft_model *m, int l, int j, float *y, const float *x, int N)
{
	const ftp_layer *ly = &m->layers[l];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	float *xq = grow(&m->f8x, &m->f8x_n, (size_t)N * in);
	float *wq = grow(&m->f8w, &m->f8w_n, (size_t)out * in);
	float ix = ft_fp8_quantize_tensorwise(xq, x, (size_t)N * in, FT_FP8_E4M3);
	float iw = ft_fp8_quantize_tensorwise(wq, ly->lin[j].w, (size_t)out * in, FT_FP8_E4M3);
	/* the bias, added to the product in float as Float8Linear's
	 * output + bias: y starts as the bias rows and sgemm adds into it */
	const float *b = j <= L_V ? ly->bias[j].w : NULL;
	for (int r = 0; b && r < N; r++)
		memcpy(y + (size_t)r * out, b, (size_t)out * sizeof(float));
	ft_sgemm(0, 1, N, out, in, ix * iw, xq, in, wq, in, b ? 1 : 0, y, out);
}

void ftp_fp8_backward(ft_model *m, int l, int j, float *dx, const float *dy, const float *x, int N)
{
	ftp_layer *ly = &m->layers[l];
	int in, out;
	ftp_lin_dims(&m->c, j, &in, &out);
	float *dq = grow(&m->f8d, &m->f8d_n, (size_t)N * out);
	float *wq = grow(&m->f8w, &m->f8w_n, (size_t)out * in);
	float id = ft_fp8_quantize_tensorwise(dq, dy, (size_t)N * out, FT_FP8_E5M2);
	if (dx) {
		float iw = ft_fp8_quantize_tensorwise(wq, ly->lin[j].w, (size_t)out * in, FT_FP8_E4M3);
		ft_sgemm(0, 0, N, in, out, id * iw, dq, out, wq, in, 1, dx, in);
	}
	if (ly->lin[j].g) {
		float *xq = grow(&m->f8x, &m->f8x_n, (size_t)N * in);
		float ix = ft_fp8_quantize_tensorwise(xq, x, (size_t)N * in, FT_FP8_E4M3);
		ft_sgemm(1, 0, out, in, N, id * ix, dq, out, xq, in, 1, ly->lin[j].g, in);
	}
	float *db = j <= L_V ? ly->bias[j].g : NULL;
	if (db)   /* the bias sits outside Float8Linear's fp8 matmul */
		ft_linear_backward(NULL, NULL, db, dy, x, ly->lin[j].w, N, in, out);
}
