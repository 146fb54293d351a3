/* extras.c - ft-train's options for LLaMA-Factory's self-contained extras
 * (NEFTune, LoRA+, LLaMA Pro, BAdam), with LLaMA-Factory's names,
 * defaults and refusals (hparams/finetuning_args.py __post_init__). */
#include "ft-train.h"
#include "train/optim_ext.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const extras_keys[] = {
	"neftune_noise_alpha", "loraplus_lr_ratio", "loraplus_lr_embedding", "use_llama_pro",
	"use_badam", "badam_mode", "badam_start_block", "badam_switch_mode", "badam_switch_interval",
	"badam_update_ratio", "badam_mask_mode", "badam_verbose", "pissa_init", "pissa_iter",
	"pissa_convert", "use_dora", "use_muon", "use_adam_mini", "use_galore", "galore_target",
	"galore_rank", "galore_update_interval", "galore_scale", "galore_proj_type", "galore_layerwise",
	"use_dft_loss", "use_eaft_loss", "eaft_alpha", "use_apollo", "apollo_target", "apollo_rank",
	"apollo_update_interval", "apollo_scale", "apollo_proj", "apollo_proj_type", "apollo_scale_type",
	"apollo_scale_front", "apollo_layerwise", "use_asft_loss", "asft_alpha", "oft_rank", "oft_block_size", "oft_target",
	"module_dropout", NULL,
};

int ft_train_extras_known(const char *key)
{
	for (const char *const *k = extras_keys; *k; k++)
		if (!strcmp(*k, key)) return 1;
	return 0;
}

static const char *get(const ft_lfargs *a, const char *k) { return ft_lfargs_get(a, k, NULL); }

/* LLaMA-Factory's Optional fields: "null"/"none" is the default */
static int given(const ft_lfargs *a, const char *k)
{
	const char *v = get(a, k);
	return v && strcasecmp(v, "null") && strcasecmp(v, "none") && *v;
}

/* The SFT token losses: LLaMA-Factory's sft trainer takes DFT, else EAFT
 * (its elif); the other stages' trainers never read the flags. */
static void sft_loss_parse(ft_lfargs *a, ft_cli_args *c)
{
	const char *ud = get(a, "use_dft_loss"), *ue = get(a, "use_eaft_loss");
	int dft = ud ? ft_parse_bool("use_dft_loss", ud) : 0, eaft = ue ? ft_parse_bool("use_eaft_loss", ue) : 0;
	c->tune.eaft_alpha = get(a, "eaft_alpha") ? ft_parse_double("eaft_alpha", get(a, "eaft_alpha")) : 1.0;
	const char *ua = get(a, "use_asft_loss");
	int asft = ua ? ft_parse_bool("use_asft_loss", ua) : 0;
	c->x.asft_alpha = get(a, "asft_alpha") ? ft_parse_double("asft_alpha", get(a, "asft_alpha")) : 0.1;
	if (asft && strcmp(c->stage, "sft") && ft_verbose >= 0)
		warn("note: --use_asft_loss is ignored by --stage %s, as in LLaMA-Factory (only its sft "
		     "trainer uses it)", c->stage);
	/* its compute_loss would hand the reference logits to the DFT/EAFT
	 * function as num_items_in_batch */
	if (asft && (dft || eaft) && !strcmp(c->stage, "sft"))
		die_usage("--use_asft_loss with --use_%s_loss: LLaMA-Factory's trainer mixes the two "
			  "wrongly; choose one", dft ? "dft" : "eaft");
	c->x.asft = asft && !strcmp(c->stage, "sft");
	if (!dft && !eaft) return;
	if (strcmp(c->stage, "sft")) {
		if (ft_verbose >= 0)
			warn("note: --use_%s_loss is ignored by --stage %s, as in LLaMA-Factory (only its sft "
			     "trainer uses it)", dft ? "dft" : "eaft", c->stage);
		return;
	}
	if (dft && eaft && ft_verbose >= 0)
		warn("note: --use_dft_loss takes precedence over --use_eaft_loss, as in LLaMA-Factory");
	c->tune.sft_loss = dft ? FT_SFT_LOSS_DFT : FT_SFT_LOSS_EAFT;
}

/* LLaMA-Factory's layer-wise GaLore/APOLLO steps each param in its
 * post-accumulate-grad hook and frees its gradient: with one micro-batch
 * per step and the trainer's clipping then finding no gradients, that is
 * the same update as a step after the whole backward pass with clipping
 * off. */
static void layerwise(ft_cli_args *c, const char *flag, const char *name)
{
	if (c->t.gradient_accumulation_steps != 1)
		die_usage("--%s_layerwise: Per-layer %s does not support gradient accumulation "
			  "(--gradient_accumulation_steps must be 1), as in LLaMA-Factory", flag, name);
	if (c->t.max_grad_norm > 0 && ft_verbose >= 0)
		warn("note: --%s_layerwise: no gradient clipping (LLaMA-Factory updates each parameter "
		     "inside the backward pass, before the trainer clips); ft logs the gradient norm where "
		     "LLaMA-Factory shows 0", flag);
	c->t.max_grad_norm = 0;
}

static int get_int_or(const ft_lfargs *a, const char *k, int def)
{
	return get(a, k) ? (int)ft_parse_int(k, get(a, k)) : def;
}

/* use_apollo and its keys as _create_apollo_optimizer passes them on */
static void apollo_parse(ft_lfargs *a, ft_cli_args *c, const char *optim)
{
	ft_train_extras *x = &c->x;
	const char *ua = get(a, "use_apollo");
	x->apollo = ua ? ft_parse_bool("use_apollo", ua) : 0;
	if (!x->apollo) return;
	if (c->tune.type == FT_FT_LORA) die_usage("--use_apollo: cannot use LoRA with GaLore, APOLLO or BAdam together");
	const char *ub = get(a, "use_badam");
	if (x->galore || (ub && ft_parse_bool("use_badam", ub)))
		die_usage("--use_apollo: cannot use GaLore, APOLLO or BAdam together");
	if (optim && strcmp(optim, "adamw_torch"))
		die_usage("--use_apollo runs APOLLOAdamW, LLaMA-Factory's only choice (--optim adamw_torch)");
	ft_apollo_opts *o = &x->apollo_o;
	x->apollo_target = ft_lfargs_get(a, "apollo_target", "all");
	o->rank = get_int_or(a, "apollo_rank", 16);
	o->update_interval = get_int_or(a, "apollo_update_interval", 200);
	o->scale = get(a, "apollo_scale") ? ft_parse_double("apollo_scale", get(a, "apollo_scale")) : 32.0;
	if (o->rank < 1 || o->update_interval < 1)
		die_usage("--apollo_rank and --apollo_update_interval must be >= 1");
	const char *pj = ft_lfargs_get(a, "apollo_proj", "random");
	if (strcmp(pj, "random") && strcmp(pj, "svd")) die_usage("--apollo_proj: '%s' (svd or random)", pj);
	o->svd = !strcmp(pj, "svd");
	const char *pt = ft_lfargs_get(a, "apollo_proj_type", "std");
	if (strcmp(pt, "std") && strcmp(pt, "right") && strcmp(pt, "left"))
		die_usage("--apollo_proj_type: '%s' (std, right or left)", pt);
	o->proj_type = ft_galore_proj_parse(pt);
	const char *st = ft_lfargs_get(a, "apollo_scale_type", "channel");
	if (strcmp(st, "channel") && strcmp(st, "tensor"))
		die_usage("--apollo_scale_type: '%s' (channel or tensor)", st);
	o->scale_tensor = !strcmp(st, "tensor");
	const char *sf = get(a, "apollo_scale_front"), *al = get(a, "apollo_layerwise");
	o->scale_front = sf ? ft_parse_bool("apollo_scale_front", sf) : 0;
	x->apollo_layerwise = o->layerwise = al ? ft_parse_bool("apollo_layerwise", al) : 0;
	if (x->apollo_layerwise) layerwise(c, "apollo", "APOLLO");
	o->beta1 = c->t.adam_beta1, o->beta2 = c->t.adam_beta2, o->eps = c->t.adam_epsilon;
	o->weight_decay = c->t.weight_decay;
	if ((x->muon || x->adam_mini) && ft_verbose >= 0)
		warn("note: --use_apollo takes precedence over --use_%s, as in LLaMA-Factory",
		     x->adam_mini ? "adam_mini" : "muon");
}

/* OFT as LLaMA-Factory's _setup_lora_tuning builds its OFTConfig: r =
 * oft_rank (0), oft_block_size (32), module_dropout, and lora_target's
 * modules (it never reads oft_target). */
static void oft_parse(ft_lfargs *a, ft_cli_args *c)
{
	ft_tune_opts *t = &c->tune;
	int oft = t->type == FT_FT_OFT;
	t->oft_rank = get_int_or(a, "oft_rank", 0);
	t->oft_block_size = get_int_or(a, "oft_block_size", 32);
	double md = get(a, "module_dropout") ? ft_parse_double("module_dropout", get(a, "module_dropout")) : 0;
	if (!oft) {
		if ((get(a, "oft_rank") || get(a, "oft_block_size") || get(a, "oft_target") || md > 0) &&
		    ft_verbose >= 0)
			warn("note: the oft_* settings are ignored: --finetuning_type is not oft");
		return;
	}
	if (t->oft_rank < 0 || t->oft_block_size < 0 || (t->oft_rank != 0) == (t->oft_block_size != 0))
		die_usage("--oft_rank %d --oft_block_size %d: You can only specify either r or oft_block_size, "
			  "but not both simultaneously (PEFT's OFTConfig; set the other to 0)", t->oft_rank,
			  t->oft_block_size);
	if (md < 0 || md >= 1) die_usage("--module_dropout must be in [0, 1)");
	if (md > 0 && ft_verbose >= 0)
		warn("note: --module_dropout %g has no effect: PEFT's OFT Linear never applies its "
		     "MultiplicativeDropoutLayer (nor does ft)", md);
	const char *ot = get(a, "oft_target");
	if (ot && strcmp(ot, c->lora_target) && ft_verbose >= 0)
		warn("note: --oft_target %s: LLaMA-Factory applies OFT to lora_target's modules (%s) and "
		     "never reads oft_target", ot, c->lora_target);
	if (t->lora_dropout > 0) die_usage("--lora_dropout: OFT has no LoRA dropout (--finetuning_type oft)");
}

void ft_train_extras_parse(ft_lfargs *a, ft_cli_args *c)
{
	ft_train_extras *x = &c->x;
	memset(x, 0, sizeof *x);
	int type = c->tune.type;
	sft_loss_parse(a, c);
	oft_parse(a, c);
	if (given(a, "neftune_noise_alpha")) {
		double al = ft_parse_double("neftune_noise_alpha", get(a, "neftune_noise_alpha"));
		if (al < 0) die_usage("--neftune_noise_alpha must be >= 0");
		c->tune.neftune_noise_alpha = al;
	}
	x->loraplus = given(a, "loraplus_lr_ratio");
	if (x->loraplus) {
		if (type != FT_FT_LORA) die_usage("--loraplus_lr_ratio is only valid for LoRA training");
		x->loraplus_ratio = ft_parse_double("loraplus_lr_ratio", get(a, "loraplus_lr_ratio"));
		if (x->loraplus_ratio < 0) die_usage("--loraplus_lr_ratio must be >= 0");
	}
	x->loraplus_embedding = 1e-6;
	if (get(a, "loraplus_lr_embedding"))
		x->loraplus_embedding = ft_parse_double("loraplus_lr_embedding", get(a, "loraplus_lr_embedding"));

	const char *lp = get(a, "use_llama_pro");
	c->tune.use_llama_pro = lp ? ft_parse_bool("use_llama_pro", lp) : 0;
	if (c->tune.use_llama_pro) {
		if (type == FT_FT_FULL) die_usage("--use_llama_pro is only valid for Freeze or LoRA training");
		if (type == FT_FT_LORA)
			die_usage("--use_llama_pro with --finetuning_type lora is not implemented in ft yet "
				  "(LoRA on the expanded layers only); use --finetuning_type freeze");
		if (c->tune.freeze_trainable_layers < 0)
			die_usage("--use_llama_pro needs a positive --freeze_trainable_layers (the number of "
				  "expanded layers)");
	}

	const char *pi = get(a, "pissa_init"), *pc = get(a, "pissa_convert");
	x->pissa = pi ? ft_parse_bool("pissa_init", pi) : 0;
	x->pissa_convert = pc ? ft_parse_bool("pissa_convert", pc) : 0;
	x->pissa_iter = get(a, "pissa_iter") ? (int)ft_parse_int("pissa_iter", get(a, "pissa_iter")) : 16;
	if (x->pissa && type != FT_FT_LORA) die_usage("--pissa_init is only valid for LoRA training");
	if (x->pissa_convert && type != FT_FT_LORA) die_usage("--pissa_convert is only valid for LoRA training");
	if (x->pissa_iter < -1) die_usage("--pissa_iter must be -1 (exact SVD) or >= 0 (power iterations)");
	if (x->pissa && c->tune.quantization_bit)   /* PiSSA rewrites the base weights */
		die_usage("--pissa_init with --quantization_bit is not implemented in ft yet");
	if (x->pissa && adapters_resumed(c))
		die_usage("--pissa_init initializes a new adapter; --adapter_name_or_path's own "
			  "adapter_config.json says how it was initialized");

	const char *ud = get(a, "use_dora");
	x->dora = ud ? ft_parse_bool("use_dora", ud) : 0;
	if (x->dora) {
		if (type != FT_FT_LORA) die_usage("--use_dora is only valid for LoRA training");
		if (adapters_resumed(c))
			die_usage("--use_dora makes a new adapter; --adapter_name_or_path's adapter_config.json "
				  "says whether it is DoRA");
	}
	/* PEFT's subtract_mutated_init writes [A; A0], [B, -B0] and drops the
	 * magnitudes: DoRA's update is not additive, so that adapter would not
	 * be the trained model */
	if (x->dora && x->pissa_convert)
		die_usage("--pissa_convert with --use_dora: PEFT's conversion drops DoRA's magnitudes and "
			  "DoRA is not additive, so the converted adapter would be wrong; use the DoRA PiSSA "
			  "adapter itself (ft-merge merges it into the original base)");

	const char *um = get(a, "use_muon");
	x->muon = um ? ft_parse_bool("use_muon", um) : 0;
	if (x->muon && x->loraplus && ft_verbose >= 0)   /* create_custom_optimizer's order */
		warn("note: --use_muon is ignored with --loraplus_lr_ratio, as in LLaMA-Factory");

	const char *uam = get(a, "use_adam_mini"), *optim = get(a, "optim");
	x->adam_mini = (uam && ft_parse_bool("use_adam_mini", uam)) || (optim && !strcmp(optim, "adam_mini"));
	if (x->adam_mini && type == FT_FT_LORA)
		die_usage("--use_adam_mini with LoRA: Adam-mini's q/k blocks are whole attention heads, which "
			  "LoRA factors are not (the adam_mini package fails on them); use freeze or full");

	const char *ug = get(a, "use_galore");
	x->galore = ug ? ft_parse_bool("use_galore", ug) : 0;
	if (x->galore) {
		if (type == FT_FT_LORA) die_usage("--use_galore: cannot use LoRA with GaLore, APOLLO or BAdam together");
		const char *gb = get(a, "use_badam");
		if (gb && ft_parse_bool("use_badam", gb)) die_usage("--use_galore: cannot use GaLore, APOLLO or BAdam together");
		if (optim && strcmp(optim, "adamw_torch"))
			die_usage("--use_galore runs GaLoreAdamW, LLaMA-Factory's choice for --optim adamw_torch "
				  "(its 8-bit and Adafactor variants are not in ft)");
		const char *gl = get(a, "galore_layerwise");
		x->galore_layerwise = gl ? ft_parse_bool("galore_layerwise", gl) : 0;
		if (x->galore_layerwise) layerwise(c, "galore", "GaLore");
		x->galore_target = ft_lfargs_get(a, "galore_target", "all");
		x->galore_rank = get(a, "galore_rank") ? (int)ft_parse_int("galore_rank", get(a, "galore_rank")) : 16;
		x->galore_interval = get(a, "galore_update_interval")
			? (int)ft_parse_int("galore_update_interval", get(a, "galore_update_interval")) : 200;
		x->galore_scale = get(a, "galore_scale") ? ft_parse_double("galore_scale", get(a, "galore_scale")) : 2.0;
		int pt = ft_galore_proj_parse(ft_lfargs_get(a, "galore_proj_type", "std"));
		if (pt < 0) die_usage("--galore_proj_type: %s", ft_errmsg());
		x->galore_proj = pt;
		if (x->galore_rank < 1 || x->galore_interval < 1)
			die_usage("--galore_rank and --galore_update_interval must be >= 1");
		if ((x->muon || x->adam_mini) && ft_verbose >= 0)
			warn("note: --use_galore takes precedence over --use_%s, as in LLaMA-Factory",
			     x->adam_mini ? "adam_mini" : "muon");
	}

	apollo_parse(a, c, optim);

	const char *ub = get(a, "use_badam");
	x->badam = ub ? ft_parse_bool("use_badam", ub) : 0;
	if (!x->badam) return;
	if (type == FT_FT_LORA) die_usage("--use_badam: cannot use LoRA with GaLore, APOLLO or BAdam together");
	if (type == FT_FT_FREEZE)
		die_usage("--use_badam needs --finetuning_type full in ft (BAdam turns every layer on in turn)");
	const char *mode = ft_lfargs_get(a, "badam_mode", "layer");
	if (!strcmp(mode, "ratio"))
		die_usage("--badam_mode ratio (BlockOptimizerRatio's sparse masks) is not implemented in ft; "
			  "layer is");
	if (strcmp(mode, "layer")) die_usage("--badam_mode: '%s' (layer or ratio)", mode);
	const char *sm = given(a, "badam_switch_mode") ? get(a, "badam_switch_mode") : "ascending";
	int m = ft_badam_mode_parse(sm);
	if (m < 0) die_usage("--badam_switch_mode: %s", ft_errmsg());
	x->badam_mode = m;
	x->badam_interval = given(a, "badam_switch_interval")
		? (int)ft_parse_int("badam_switch_interval", get(a, "badam_switch_interval")) : 50;
	if (x->badam_interval == 0) die_usage("--badam_switch_interval must not be 0");
	x->badam_has_start = given(a, "badam_start_block");
	if (x->badam_has_start)
		x->badam_start = (int)ft_parse_int("badam_start_block", get(a, "badam_start_block"));
	x->badam_verbose = get(a, "badam_verbose") ? (int)ft_parse_int("badam_verbose", get(a, "badam_verbose")) : 0;
	if (get(a, "weight_decay") && ft_verbose >= 0)
		warn("note: --use_badam: the active block's weight decay is torch AdamW's default 0.01, "
		     "not --weight_decay, as LLaMA-Factory's BAdam runs it");
	if (x->badam_interval == -1 && ft_verbose >= 0)
		warn("note: --badam_switch_interval -1 switches blocks after every step, as the badam "
		     "package computes (step + 1) %% -1 == 0");
}

/* Right after loading, before the model is bound to a device. */
/* ASFT's reference, as LLaMA-Factory's create_ref_model: --ref_model
 * (with --ref_model_adapters), else for full and freeze tuning a frozen
 * copy of the model (its adapter merged); for LoRA it makes none and the
 * trainer fails, so ft asks for --ref_model. */
static void asft_setup(ft_cli_args *c, ft_model *m)
{
	ft_model *ref;
	if (c->ref_model)
		ref = pref_frozen_model("--ref_model", c->ref_model, c->ref_model_adapters, c->tune.seed);
	else if (c->tune.type == FT_FT_LORA)
		die_usage("--use_asft_loss --finetuning_type lora needs --ref_model DIR: LLaMA-Factory's "
			  "create_ref_model makes no reference for LoRA");
	else if (c->from_scratch)
		die_usage("--use_asft_loss --train_from_scratch: the reference would be the base, which is "
			  "random here; give --ref_model DIR");
	else
		ref = pref_frozen_model("the reference (a frozen copy of the model)", c->model, c->adapter,
					c->tune.seed);
	if (ft_model_set_asft(m, ref, c->x.asft_alpha) < 0) die("--use_asft_loss: %s", ft_errmsg());
	c->ref = ref;
}

void ft_train_extras_model(ft_cli_args *c, ft_model *m)
{
	const ft_config *cf = ft_model_config(m);
	if (c->tune.use_llama_pro && cf->num_hidden_layers % c->tune.freeze_trainable_layers)
		die_usage("--use_llama_pro: num_layers %d should be divisible by freeze_trainable_layers %d",
			  cf->num_hidden_layers, c->tune.freeze_trainable_layers);
	if (c->x.pissa && ft_model_pissa_init(m, c->x.pissa_iter) < 0) die("--pissa_init: %s", ft_errmsg());
	if (c->x.dora && ft_model_dora_init(m) < 0) die("--use_dora: %s", ft_errmsg());
	if (c->x.asft) asft_setup(c, m);
}

/* LLaMA-Factory's PissaConvertCallback: the initial adapter (as plain
 * LoRA) in output_dir/pissa_init before training; after it, the trained
 * one in pissa_backup and the plain LoRA equivalent in pissa_converted. */
void ft_train_extras_begin(ft_cli_args *c, ft_model *m)
{
	if (!c->x.pissa_convert) return;
	char *d = ft_xasprintf("%s/pissa_init", c->output_dir);
	if (c->resume && access(d, F_OK) == 0) {   /* the first run wrote it */
		free(d);
		return;
	}
	if (ft_model_pissa_save_plain(m, d) < 0) die("--pissa_convert: %s", ft_errmsg());
	if (ft_verbose >= 1) warn("note: initial PiSSA adapter saved in %s", d);
	free(d);
}

void ft_train_extras_end(ft_cli_args *c, ft_model *m)
{
	if (!c->x.pissa_convert) return;
	char *init = ft_xasprintf("%s/pissa_init", c->output_dir);
	char *backup = ft_xasprintf("%s/pissa_backup", c->output_dir);
	char *conv = ft_xasprintf("%s/pissa_converted", c->output_dir);
	if (ft_model_pissa_save_plain(m, backup) < 0 || ft_model_pissa_save_converted(m, init, conv) < 0)
		die("--pissa_convert: %s", ft_errmsg());
	if (ft_verbose >= 1) warn("note: converted PiSSA adapter saved in %s", conv);
	free(init);
	free(backup);
	free(conv);
}

/* LLaMA-Factory's galore params: the 2-D weights of nn.Linear modules
 * whose names hold a galore_target ("all": every linear but lm_head, as
 * find_all_linear_modules). */
static int galore_param(const char *targets, const ft_param *p)
{
	static const char *const lin[] = { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
					   "down_proj", NULL };
	size_t l = strlen(p->name);
	if (p->ndim != 2 || l < 7 || strcmp(p->name + l - 7, ".weight")) return 0;
	char *module = ft_xasprintf("%.*s", (int)(l - 7), p->name);
	const char *last = strrchr(module, '.') ? strrchr(module, '.') + 1 : module;
	int linear = !strcmp(last, "lm_head"), hit = 0;
	for (const char *const *q = lin; *q; q++) linear |= !strcmp(last, *q);
	char *t = ft_xstrdup(targets), *save = NULL;
	for (char *tok = strtok_r(t, ", ", &save); tok && linear && !hit; tok = strtok_r(NULL, ", ", &save))
		hit = !strcmp(tok, "all") ? strcmp(last, "lm_head") != 0 : strstr(module, tok) != NULL;
	free(t);
	free(module);
	return hit;
}

static void on_switch(void *ctx, int block, const char *prefix)
{
	(void)ctx;
	warn("BAdam: training block %d (%s*)", block, prefix);
}

const char *ft_train_extras_cpu_only(const ft_cli_args *c, const ft_model *m)
{
	const ft_train_extras *x = &c->x;
	/* Phi-3's qkv_proj / gate_up_proj are row blocks of several device
	 * tensors; these optimizers step a whole matrix at once */
	if (ft_model_config(m)->fused && (x->muon || x->adam_mini || x->galore || x->apollo))
		return x->muon ? "--use_muon with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only in ft"
		       : x->adam_mini ? "--use_adam_mini with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only in ft"
		       : x->galore ? "--use_galore with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only in ft"
				   : "--use_apollo with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only in ft";
	if (!c->pref || pref_stage_of(c->stage) != FT_PREF_RM)
		return NULL;
	/* dpo/kto step them on the device (lib/train/cuda_ext.c); rm's value
	 * head is not one of the extension's params: the device steps it
	 * with AdamW beside the model (ft_cuda_pref_step) */
	return x->loraplus ? "--loraplus_lr_ratio with --stage rm runs on the CPU only in ft"
	       : x->badam ? "--use_badam with --stage rm runs on the CPU only in ft"
	       : x->adam_mini ? "--use_adam_mini with --stage rm runs on the CPU only in ft"
	       : x->muon ? "--use_muon with --stage rm runs on the CPU only in ft"
	       : x->galore ? "--use_galore with --stage rm runs on the CPU only in ft"
	       : x->apollo ? "--use_apollo with --stage rm runs on the CPU only in ft" : NULL;
}

ft_optim_ext *ft_train_extras_setup(ft_cli_args *c, ft_model *m, int on_gpu)
{
	ft_train_extras *x = &c->x;
	if (c->tune.type == FT_FT_OFT) {
		const char *w = x->galore ? "use_galore" : x->apollo ? "use_apollo" : x->badam ? "use_badam"
			      : x->adam_mini ? "use_adam_mini" : x->muon ? "use_muon"
			      : c->tune.use_llama_pro ? "use_llama_pro" : NULL;
		if (w) die_usage("--%s with --finetuning_type oft is not implemented in ft yet", w);
	}
	if (on_gpu && ft_train_extras_cpu_only(c, m))
		die_usage("%s (use --device cpu)", ft_train_extras_cpu_only(c, m));
	if (x->galore && x->galore_layerwise && c->t.dist)
		die_usage("--galore_layerwise: Distributed training does not support layer-wise GaLore, as in "
			  "LLaMA-Factory");
	if (x->apollo && x->apollo_layerwise && c->t.dist)
		die_usage("--apollo_layerwise: Distributed training does not support layer-wise APOLLO, as in "
			  "LLaMA-Factory");
	if (x->loraplus) return ft_loraplus_new(c->t.learning_rate, x->loraplus_ratio, x->loraplus_embedding);
	if (!x->badam && !x->muon && !x->adam_mini && !x->galore && !x->apollo) return NULL;
	size_t n = 0, np = ft_model_nparams(m);
	x->params = ft_xcalloc(np ? np : 1, sizeof *x->params);
	for (size_t i = 0; i < np; i++) {
		ft_param *p = ft_model_param(m, i);
		if (p->trainable && p->g) x->params[n++] = p;
	}
	if (x->galore) {   /* first in create_custom_optimizer */
		int *is = ft_xcalloc(n ? n : 1, sizeof *is);
		for (size_t i = 0; i < n; i++) is[i] = galore_param(x->galore_target, x->params[i]);
		ft_galore_opts go = { .rank = x->galore_rank, .update_interval = x->galore_interval,
				      .scale = x->galore_scale, .proj_type = x->galore_proj,
				      .beta1 = c->t.adam_beta1, .beta2 = c->t.adam_beta2, .eps = c->t.adam_epsilon,
				      .weight_decay = c->t.weight_decay };
		ft_optim_ext *e = ft_galore_new(x->params, n, is, &go);
		free(is);
		if (!e) die_usage("--use_galore: %s", ft_errmsg());
		return e;
	}
	if (x->apollo) {   /* second in create_custom_optimizer */
		int *is = ft_xcalloc(n ? n : 1, sizeof *is);
		for (size_t i = 0; i < n; i++) is[i] = galore_param(x->apollo_target, x->params[i]);
		ft_optim_ext *e = ft_apollo_new(x->params, n, is, &x->apollo_o);
		free(is);
		if (!e) die_usage("--use_apollo: %s", ft_errmsg());
		return e;
	}
	if (!x->badam && x->adam_mini) {   /* LLaMA-Factory's order: BAdam, Adam-mini, Muon */
		const ft_config *cf = ft_model_config(m);
		ft_optim_ext *e = ft_adam_mini_new(x->params, n, cf->hidden_size, cf->num_attention_heads,
						   c->t.weight_decay, c->t.adam_beta1, c->t.adam_beta2,
						   c->t.adam_epsilon);
		if (!e) die("--use_adam_mini: %s", ft_errmsg());
		return e;
	}
	if (!x->badam)
		return ft_muon_new(x->params, n, c->t.weight_decay, c->t.adam_beta1, c->t.adam_beta2,
				   c->t.adam_epsilon);
	ft_badam_opts o = { .mode = x->badam_mode, .switch_interval = x->badam_interval,
			    .has_start_block = x->badam_has_start, .start_block = x->badam_start,
			    .beta1 = c->t.adam_beta1, .beta2 = c->t.adam_beta2, .eps = c->t.adam_epsilon,
			    .seed = c->t.seed, .verbose = x->badam_verbose };
	if (x->badam_verbose >= 1 && ft_verbose >= 0) o.on_switch = on_switch;
	ft_optim_ext *e = ft_badam_new(x->params, n, &o);
	if (!e) die("--use_badam: %s", ft_errmsg());
	return e;
}

void ft_train_extras_free(ft_cli_args *c, ft_optim_ext *e)
{
	ft_optim_ext_free(e);
	if (c->x.asft && c->ref) ft_model_free(c->ref);
	free(c->x.params);
	c->x.params = NULL;
}
