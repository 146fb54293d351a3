/* fp8.c - ft-train's --fp8, --fp8_backend and
 * --fp8_enable_fsdp_float8_all_gather: LLaMA-Factory's Fp8Arguments
 * (hparams/training_args.py) as its pt and sft trainers use them
 * (train/fp8_utils.py), on the model by lib/model/model_fp8.c. */
#include "ft-train.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int fp8_known_key(const char *k)
{
	return !strcmp(k, "fp8") || !strcmp(k, "fp8_backend") || !strcmp(k, "fp8_enable_fsdp_float8_all_gather");
}

static int flag(const ft_lfargs *a, const char *k)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_bool(k, v) : 0;
}

/* fp8_backend: "te" patches accelerate to Transformer Engine's recipe;
 * every other value reaches accelerate only as FP8_BACKEND, a variable it
 * does not read (it reads ACCELERATE_FP8_BACKEND), so accelerate picks
 * torchao, installed by LLaMA-Factory's fp8 extra: auto, torchao and
 * msamp all train with torchao's Float8Linear. */
static void backend_check(const char *b)
{
	if (!strcasecmp(b, "te"))
		die_usage("--fp8_backend te: Transformer Engine's HYBRID recipe (delayed scaling over an amax "
			  "history of 16) is not implemented in ft; auto and torchao (Float8Linear, "
			  "tensorwise) are");
	if (!strcasecmp(b, "msamp") && ft_verbose >= 0)
		warn("note: --fp8_backend msamp trains with torchao's Float8Linear, as in LLaMA-Factory (it "
		     "sets FP8_BACKEND=msamp, which accelerate does not read; MS-AMP is never used)");
	else if (strcasecmp(b, "auto") && strcasecmp(b, "torchao") && strcasecmp(b, "msamp"))
		die_usage("--fp8_backend: '%s' is not a backend (auto, torchao, te, msamp)", b);
}

void fp8_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	int on = flag(a, "fp8"), gather = flag(a, "fp8_enable_fsdp_float8_all_gather");
	const char *b = ft_lfargs_get(a, "fp8_backend", "auto");
	c->fp8 = 0;
	if (gather && !on) {   /* it sets model_args.fp8, which nothing reads */
		if (ft_verbose >= 0)
			warn("note: --fp8_enable_fsdp_float8_all_gather without --fp8: LLaMA-Factory warns "
			     "\"Setting fp8=True\" but sets it where its trainers never look; fp8 stays off");
		return;
	}
	if (!on) return;
	backend_check(b);
	if (c->tune.quantization_bit)   /* LLaMA-Factory's parser, for every stage */
		die_usage("--fp8: FP8 training is not compatible with quantization. Please disable one of them.");
	if (strcmp(c->stage, "pt") && strcmp(c->stage, "sft")) {
		if (ft_verbose >= 0)
			warn("note: --fp8 is ignored by --stage %s, as in LLaMA-Factory (only its pt and sft "
			     "trainers set accelerate's fp8)", c->stage);
		return;
	}
	if (gather && ft_verbose >= 0)
		warn("note: --fp8_enable_fsdp_float8_all_gather: FSDP2's all-gather of the weights in fp8; "
		     "ft's ranks hold whole models (no FSDP), so there is nothing to gather");
	c->fp8 = 1;
}

void fp8_model(ft_cli_args *c, ft_model *m)
{
	if (!c->fp8) return;
	int n = ft_model_fp8_enable(m);
	if (n < 0) die_usage("--fp8: %s", ft_errmsg());
	int total = ft_model_config(m)->num_hidden_layers * 7;
	if (ft_verbose >= 0)
		warn("note: --fp8: %d of %d decoder linears as torchao's Float8Linear (tensorwise, e4m3 "
		     "forward, e5m2 gradients); layer 0's q_proj, lm_head and any dimension not divisible "
		     "by 16 stay in float32, as accelerate converts them", n, total);
}
