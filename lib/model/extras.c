/* extras.c - LLaMA-Factory's self-contained extras that live in the model:
 * NEFTune's embedding noise and LLaMA Pro's trainable layers.
 *
 * NEFTune (transformers' neftune_post_forward_hook, which LLaMA-Factory
 * turns on with neftune_noise_alpha): while training, the output of the
 * input embedding [B, T, D] gets noise uniform in [-mag, mag] with
 *   mag = alpha / sqrt(T * D)
 * computed as the hook does: sqrt of the int64 tensor T*D in float32, the
 * Python float alpha divided by it in float32.  T is the batch's sequence
 * length (output.size(1)), the padded length of the micro-batch.  The
 * noise is added, so the gradients through it are unchanged, and it never
 * touches evaluation.  The draws are ft's (one xoshiro stream per
 * forward_backward call, seeded by the seed and the call number like the
 * LoRA dropout masks), not torch's generator: the same seed gives the same
 * noise, and a resumed run continues the stream exactly.
 *
 * LLaMA Pro (LLaMA-Factory's _setup_freeze_tuning with use_llama_pro):
 * the expanded blocks of a model made by llama_pro.py are every stride-th
 * layer, stride = L / freeze_trainable_layers, the trainable layer ids
 * range(stride - 1, L + stride - 1, stride).
 */
#include <math.h>
#include "model/model_internal.h"
#include "util/rng.h"

void ftp_neftune_apply(const ft_model *m, float *x, int B, int T)
{
	size_t D = (size_t)m->c.hidden_size, n = (size_t)B * T * D;
	float dims = sqrtf((float)((int64_t)T * (int64_t)D));
	float mag = (float)m->o.neftune_noise_alpha / dims;
	ft_rng g;
	ft_rng_seed(&g, m->o.seed ^ (0x4e4546ULL + m->dropout_calls * 0x9e3779b97f4a7c15ULL));
	for (size_t i = 0; i < n; i++)
		x[i] += (float)(-(double)mag + 2.0 * (double)mag * ft_rng_uniform(&g));
}

int ftp_llama_pro_layer(const ft_model *m, int l)
{
	int L = m->c.num_hidden_layers, n = m->o.freeze_trainable_layers;
	if (n <= 0 || L % n)   /* refused by ft-train; nothing trains */
		return 0;
	int stride = L / n;
	return l >= stride - 1 && (l - (stride - 1)) % stride == 0;
}
