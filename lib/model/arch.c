/* arch.c - the model families ft knows by architecture name, and the
 * pieces of the families beyond Llama / Mistral / Qwen2 (config fields,
 * Qwen3's per-head q/k RMSNorm).  The layer loops in model_fwd.c and
 * infer.c call these through small hooks, so each family's difference
 * from the Llama decoder lives here. */
#include <string.h>
#include "util/error.h"
#include "util/json.h"
#include "model/model_internal.h"

static const struct {
	ft_arch arch;
	const char *name, *model_type;
} ARCHS[] = {
	{ FT_ARCH_LLAMA, "LlamaForCausalLM", "llama" },
	{ FT_ARCH_MISTRAL, "MistralForCausalLM", "mistral" },
	{ FT_ARCH_QWEN2, "Qwen2ForCausalLM", "qwen2" },
	{ FT_ARCH_QWEN3, "Qwen3ForCausalLM", "qwen3" },
	{ FT_ARCH_GEMMA2, "Gemma2ForCausalLM", "gemma2" },
	{ FT_ARCH_GEMMA3, "Gemma3ForCausalLM", "gemma3_text" },
};
#define N_ARCHS (sizeof ARCHS / sizeof ARCHS[0])

/* arch NULL: taken from model_type (configs without "architectures"). */
int ftp_arch_from_name(const char *arch, ft_arch *a, const char *path)
{
	for (size_t i = 0; i < N_ARCHS; i++)
		if (!strcmp(arch, ARCHS[i].name) || !strcmp(arch, ARCHS[i].model_type)) {
			*a = ARCHS[i].arch;
			return 0;
		}
	char list[256] = "";
	for (size_t i = 0; i < N_ARCHS; i++)
		snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
			 ARCHS[i].name);
	return ft_fail("%s: architecture %s is not supported (%s)", path, arch, list);
}

const char *ftp_arch_name(ft_arch a)
{
	for (size_t i = 0; i < N_ARCHS; i++)
		if (ARCHS[i].arch == a) return ARCHS[i].name;
	return "LlamaForCausalLM";
}

const char *ftp_arch_model_type(ft_arch a)
{
	for (size_t i = 0; i < N_ARCHS; i++)
		if (ARCHS[i].arch == a) return ARCHS[i].model_type;
	return "llama";
}

/* Family fields of config.json, after the common ones (config_from_json). */
int ftp_arch_config(const json_t *j, ft_config *c, const char *path)
{
	if (c->arch == FT_ARCH_GEMMA2 || c->arch == FT_ARCH_GEMMA3)
		return ftp_gemma_config(j, c, path);
	if (c->arch != FT_ARCH_QWEN3)
		return 0;
	/* Qwen3Attention: q_norm/k_norm always; attention_bias puts a bias on
	 * o_proj too, which ft's layer has no place for. */
	c->qk_norm = 1;
	if (ft_json_bool(j, "attention_bias", 0))
		return ft_fail("%s: Qwen3 attention_bias true is not supported", path);
	if (ft_json_bool(j, "use_sliding_window", 0))
		return ft_fail("%s: Qwen3 use_sliding_window true is not supported", path);
	return 0;
}

/* Qwen3RMSNorm over each head's head_dim values: the same RMSNorm as the
 * layer norms, on N*H rows of hd. */
void ftp_qk_norm_forward(ft_model *m, const ftp_layer *y, float *q, float *k,
			 const float *qr, const float *kr, float *rstdq, float *rstdk, int N)
{
	const ft_config *c = &m->c;
	float eps = (float)c->rms_norm_eps;
	int hd = c->head_dim;
	ft_rmsnorm_forward(q, rstdq, qr, ftp_norm_w(m, y->qn.w, hd), N * c->num_attention_heads, hd, eps);
	ft_rmsnorm_forward(k, rstdk, kr, ftp_norm_w(m, y->kn.w, hd), N * c->num_key_value_heads, hd, eps);
}

void ftp_qk_norm_backward(ft_model *m, ftp_layer *y, float *dqr, float *dkr,
			  const float *dq, const float *dk, const ftp_acts *a, int N)
{
	const ft_config *c = &m->c;
	int hd = c->head_dim, nq = N * c->num_attention_heads, nk = N * c->num_key_value_heads;
	memset(dqr, 0, (size_t)nq * hd * sizeof(float));
	memset(dkr, 0, (size_t)nk * hd * sizeof(float));
	ft_rmsnorm_backward(dqr, y->qn.g, dq, a->qr, ftp_norm_w(m, y->qn.w, hd), a->rstdq, nq, hd);
	ft_rmsnorm_backward(dkr, y->kn.g, dk, a->kr, ftp_norm_w(m, y->kn.w, hd), a->rstdk, nk, hd);
}
