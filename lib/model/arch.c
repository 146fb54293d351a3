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
	{ FT_ARCH_PHI3, "Phi3ForCausalLM", "phi3" },
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
	/* mixture-of-depth's apply_mod_to_hf saves "LlamaMoDForCausalLM" and
	 * the like: say what it is rather than list the families */
	if (strstr(arch, "MoDFor"))
		return ft_fail("%s: architecture %s is a Mixture-of-Depths model, which ft does not run "
			       "(docs/EXTRAS.md)", path, arch);
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

/* Phi3ForCausalLM: fused projections, Mistral's sliding window; the
 * dropouts it trains with are refused (partial rotary embeddings:
 * rope.c's ftp_rope_partial_config). */
static int phi3_config(const json_t *j, ft_config *c, const char *path)
{
	c->fused = 1;
	const json_t *sw = json_object_get(j, "sliding_window");
	c->sliding_window = json_is_integer(sw) ? (int)json_integer_value(sw) : 0;
	if (ft_json_num(j, "resid_pdrop", 0) > 0 || ft_json_num(j, "embd_pdrop", 0) > 0)
		return ft_fail("%s: Phi-3 resid_pdrop / embd_pdrop above 0 are not supported", path);
	return 0;
}

int ftp_fused_lead(const ft_config *c, int j)
{
	if (!c->fused) return j;
	return j == L_K || j == L_V ? L_Q : j == L_UP ? L_GATE : j;
}

int ftp_fused_row(const ft_config *c, int j)
{
	int qd = c->num_attention_heads * c->head_dim, kd = c->num_key_value_heads * c->head_dim;
	if (!c->fused) return 0;
	return j == L_K ? qd : j == L_V ? qd + kd : j == L_UP ? c->intermediate_size : 0;
}

int ftp_fused_rows(const ft_config *c, int j)
{
	int in, out;
	ftp_lin_dims(c, j, &in, &out);
	if (!c->fused) return out;
	if (j == L_Q) return out + 2 * c->num_key_value_heads * c->head_dim;
	return j == L_GATE ? 2 * c->intermediate_size : out;
}

const char *ftp_module_name(const ft_config *c, int j)
{
	if (c->fused && ftp_fused_lead(c, j) == L_Q) return "qkv_proj";
	if (c->fused && ftp_fused_lead(c, j) == L_GATE) return "gate_up_proj";
	return ft_lin_names[j];
}

int ftp_check_targets(const ft_config *c, unsigned t)
{
	unsigned qkv = FT_MOD_Q | FT_MOD_K | FT_MOD_V, gu = FT_MOD_GATE | FT_MOD_UP;
	if (c->fused && (((t & qkv) && (t & qkv) != qkv) || ((t & gu) && (t & gu) != gu)))
		return ft_fail("Phi-3 fuses q/k/v and gate/up: LoRA targets are qkv_proj, o_proj, "
			       "gate_up_proj, down_proj");
	return 0;
}

/* Family fields of config.json, after the common ones (config_from_json). */
int ftp_arch_config(const json_t *j, ft_config *c, const char *path)
{
	if (c->arch == FT_ARCH_GEMMA2 || c->arch == FT_ARCH_GEMMA3)
		return ftp_gemma_config(j, c, path);
	if (c->arch == FT_ARCH_PHI3)
		return phi3_config(j, c, path);
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
