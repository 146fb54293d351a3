/* extras.c - LLaMA-Factory's self-contained extras that live in the model:
 * NEFTune's embedding noise and LLaMA Pro's trainable layers.
 *
 * NEFTune (transformers' neftune_post_forward_hook, which LLaMA-Factory
 * turns on with neftune_noise_alpha): while training, the output of the
 * input embedding [B, T, D] gets noise uniform in [-mag, mag] with
 *   mag = alpha / sqrt(T * D)
 * computed as the hook does: sqrt of the int64 tensor T*D in float32, then
 * alpha / that, which torch evaluates as reciprocal() * alpha in float32.  T is the batch's sequence
 * length (output.size(1)), the padded length of the micro-batch.  The
 * noise is added, so the gradients through it are unchanged, and it never
 * touches evaluation (nor generation, but GRPO's: ft_model_set_gen_neftune).
 * The draws are ft's (one xoshiro stream per
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
#include <stdlib.h>
#include "model/model_internal.h"
#include "util/rng.h"

float ft_neftune_magnitude(double alpha, int T, int D)
{
	/* torch.sqrt of the int64 tensor is float32; `alpha / tensor` is
	 * Tensor.__rtruediv__, i.e. tensor.reciprocal() * alpha, in float32 */
	float dims = sqrtf((float)((int64_t)T * (int64_t)D));
	float recip = 1.0f / dims;
	return recip * (float)alpha;
}

/* torch's uniform_(from, to): from + (to - from) * u */
void ft_neftune_add(float *x, size_t n, float mag, uint64_t seed)
{
	ft_rng g;
	ft_rng_seed(&g, seed);
	for (size_t i = 0; i < n; i++)
		x[i] += (float)(-(double)mag + 2.0 * (double)mag * ft_rng_uniform(&g));
}

/* The stream of forward_backward call `calls` (the CUDA backend draws
 * the same one: ft_cuda_view_neftune) */
uint64_t ft_neftune_seed(uint64_t seed, uint64_t calls)
{
	return seed ^ (0x4e4546ULL + calls * 0x9e3779b97f4a7c15ULL);
}

void ft_model_set_gen_neftune(ft_model *m, int on, uint64_t stream)
{
	m->gen_neft_on = on;
	m->gen_neft_stream = stream;
}

void ft_neftune_tokens(float *x, const int *rows, int n, int nrows, double alpha, int D, uint64_t stream,
		       uint64_t k)
{
	int *cnt = ft_xcalloc((size_t)nrows, sizeof *cnt), W = 1;
	for (int i = 0; i < n; i++)
		if (++cnt[rows[i]] > W) W = cnt[rows[i]];
	free(cnt);
	ft_neftune_add(x, (size_t)n * D, ft_neftune_magnitude(alpha, W, D), ft_neftune_seed(stream, k));
}

void ftp_neftune_apply(const ft_model *m, float *x, int B, int T)
{
	size_t n = (size_t)B * T * (size_t)m->c.hidden_size;
	float mag = ft_neftune_magnitude(m->o.neftune_noise_alpha, T, m->c.hidden_size);
	ft_neftune_add(x, n, mag, ft_neftune_seed(m->o.seed, m->dropout_calls));
}

int ft_llama_pro_layer(int L, int n, int l)
{
	if (n <= 0 || L % n)   /* refused by ft-train; nothing trains */
		return 0;
	int stride = L / n;
	return l >= stride - 1 && (l - (stride - 1)) % stride == 0;
}

int ftp_llama_pro_layer(const ft_model *m, int l)
{
	return ft_llama_pro_layer(m->c.num_hidden_layers, m->o.freeze_trainable_layers, l);
}

/* freeze_extra_modules names modules the model has (LLaMA-Factory's
 * error: a tied model has no lm_head parameter of its own). */
int ftp_check_freeze_extra(const ft_config *c, const ft_tune_opts *o)
{
	if (o && o->type == FT_FT_FREEZE && (o->freeze_extra & FT_EXTRA_HEAD) && c->tie_word_embeddings)
		return ft_fail("freeze_extra_modules: Module lm_head is not found, please choose from "
			       "embed_tokens, norm (the model ties lm_head to embed_tokens)");
	return 0;
}
