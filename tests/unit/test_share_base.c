/* ft_model_share_base (model.h): a LoRA model whose base weights are
 * another's gives the same log-probabilities, bit for bit, as with its
 * own copy; the base is then held once (the same pointers); refusals
 * change nothing; freeing both models frees every buffer once (ASan). */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "model/model.h"
#include "model/model_pref.h"
#include "util/error.h"

#define BASE "tests/fixtures/models/tiny-llama"

static ft_model *lora(int rank, const char *adapter)
{
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = rank, .lora_alpha = 8,
			    .lora_targets = FT_MOD_ALL_LINEAR, .seed = 1 };
	ft_model *m = ft_model_load(BASE, &to);
	if (m && adapter && ft_model_load_adapter(m, adapter) < 0) {
		ft_model_free(m);
		return NULL;
	}
	return m;
}

static void logps(ft_model *m, const ft_batch *b, float *out)
{
	ft_model_logps_forward(m, b, 0, out, NULL);
}

int main(void)
{
	ft_model *policy = lora(8, NULL), *rm = lora(4, "tests/fixtures/pref/llama-lora");
	if (!policy || !rm) {
		ok(0, "fixtures load (%s)", ft_errmsg());
		return tap_done();
	}
	enum { B = 2, T = 6 };
	int32_t ids[B * T] = { 1, 5, 9, 13, 17, 21, 2, 40, 41, 42, 43, 44 };
	int32_t lab[B * T] = { -100, 5, 9, 13, 17, 21, -100, -100, 41, 42, 43, -100 };
	ft_batch b = { .B = B, .T = T, .input_ids = ids, .labels = lab };
	float own[B * T], shared[B * T];
	logps(rm, &b, own);
	ok(ft_model_share_base(rm, policy) == 0, "a LoRA model takes the base of another LoRA model");
	ok(ft_model_find_param(rm, "model.embed_tokens.weight")->w ==
	   ft_model_find_param(policy, "model.embed_tokens.weight")->w &&
	   ft_model_find_param(rm, "model.layers.1.mlp.down_proj.weight")->w ==
	   ft_model_find_param(policy, "model.layers.1.mlp.down_proj.weight")->w,
	   "the base tensors are the other model's (held once)");
	logps(rm, &b, shared);
	ok(!memcmp(own, shared, sizeof own), "its log-probabilities are bit-identical to its own copy's");
	ft_tune_opts full = { .type = FT_FT_FULL, .seed = 1 };
	ft_model *f = ft_model_load(BASE, &full);
	int rc = f ? ft_model_share_base(f, policy) : 0;
	ok(f && rc < 0 && strstr(ft_errmsg(), "LoRA"), "a model whose base trains is refused (%s)",
	   ft_errmsg());
	ft_model_free(f);
	ft_model_free(rm);
	ft_model_free(policy);
	return tap_done();
}
