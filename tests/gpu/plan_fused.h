/* plan_fused.h - the fused-projection terms of docs/CUDA.md's memory
 * plans, shared by test_cuda_plan.c and test_cuda_infer_plan.c: the row
 * lengths of the fused q|k|v and gate|up buffers (the largest over the
 * layers: qd + 2 kd and 2 F plus the LoRA ranks of the modules in them)
 * and the LoRA A parameters of every module (stored with the weights:
 * in half, with an fp32 master when trainable, in the half modes; the A
 * of q, k, v, gate, up are rows of their group's stacked operand, o_proj's
 * and down_proj's read their base product's half operand). */
#ifndef FT_TESTS_GPU_PLAN_FUSED_H
#define FT_TESTS_GPU_PLAN_FUSED_H

#include "model/cuda_view.h"

typedef struct { double wq, wg, fa, fat; } fused_terms;

static fused_terms fused_of(const ft_cuda_view *v)
{
	fused_terms f = { 0, 0, 0, 0 };
	for (int l = 0; l < v->L; l++) {
		double w[2] = { (double)v->lin_out[0] + v->lin_out[1] + v->lin_out[2],
				(double)v->lin_out[4] + v->lin_out[5] };
		for (int j = 0; j < FT_CV_NLIN; j++) {
			const ft_cv_lora *lo = &v->layers[l].lora[j];
			if (!lo->on)
				continue;
			if (j != 3 && j != 6)   /* o_proj, down_proj: no fused buffer */
				w[j > 2] += lo->r;
			f.fa += (double)lo->r * v->lin_in[j];
			if (lo->A.g)
				f.fat += (double)lo->r * v->lin_in[j];
		}
		if (w[0] > f.wq) f.wq = w[0];
		if (w[1] > f.wg) f.wg = w[1];
	}
	return f;
}

#endif
