/* args.c - ft-train's options: LLaMA-Factory names from the command line
 * or a YAML/JSON config (lib/cli/lfargs.h), checked against one table. */
#include "ft-train.h"
#include "cli/runplan.h"
#include "format/adapter_config.h"
#include "model/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keys of LLaMA-Factory's train config that another ft tool owns. */
static const struct { const char *key, *owner; } owned[] = {
	{"dataset", "ft-tokenize"}, {"dataset_dir", "ft-tokenize"}, {"template", "ft-tokenize"},
	{"cutoff_len", "ft-tokenize"}, {"overwrite_cache", "ft-tokenize"},
	{"preprocessing_num_workers", "ft-tokenize"}, {"max_samples", "ft-tokenize"},
	{"tokenized_path", "ft-tokenize"}, {"train_on_prompt", "ft-tokenize"},
	{"mask_history", "ft-tokenize"}, {"default_system", "ft-tokenize"},
	{"enable_thinking", "ft-tokenize"}, {"preserve_thinking", "ft-tokenize"}, {"tool_format", "ft-tokenize"},
	{"streaming", "ft-tokenize"}, {"mix_strategy", "ft-tokenize"},
	{"interleave_probs", "ft-tokenize"}, {"media_dir", "ft-tokenize"},
	{"packing", "ft-pack"}, {"neat_packing", "ft-pack"}, {"val_size", "ft-pack"},
	{"eval_dataset", "ft-tokenize and ft-pack (then --val)"},
	{"export_dir", "ft-merge"}, {"export_size", "ft-merge"}, {"export_device", "ft-merge"},
	{"export_legacy_format", "ft-merge"}, {"export_hub_model_id", "ft-merge"},
};
/* Keys common in LLaMA-Factory YAML files that mean nothing here. */
static const char *const meaningless[] = {
	"report_to", "trust_remote_code", "dataloader_num_workers",
	"save_only_model", "flash_attn", "plot_loss_smoothing", "run_name", "logging_dir",
	"predict_with_generate", "include_num_input_tokens_seen", NULL,
};

static const char *const known[] = {
	"stage", "model_name_or_path", "adapter_name_or_path", "train_from_scratch", "config",
	"finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora",
	"freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "create_new_adapter", "learning_rate",
	"weight_decay",
	"adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "lr_scheduler_type",
	"lr_scheduler_kwargs",
	"warmup_steps", "warmup_ratio", "gradient_accumulation_steps", "per_device_train_batch_size",
	"per_device_eval_batch_size", "num_train_epochs", "max_steps", "seed", "logging_steps",
	"logging_first_step", "eval_on_start", "ignore_data_skip", "eval_delay",
	"save_steps", "save_total_limit", "eval_steps", "do_train", "do_eval",
	"val", "train", "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
	"gradient_checkpointing", "bf16", "fp16", "plot_loss", "device", "eval_strategy",
	"save_strategy", "logging_strategy", "optim", "allow_tokenizer_mismatch", "skip_nonfinite",
	"ddp_timeout", "zero", "deepspeed",
	"quantization_bit", "quantization_type", "double_quantization", "quantization_method",
	"rope_scaling", NULL,
};

static int in_list(const char *const *l, const char *k)
{
	for (; *l; l++)
		if (!strcmp(*l, k)) return 1;
	return 0;
}

static int from_cmdline(const ft_lfarg *a)
{
	return !strcmp(a->origin, "command line");
}

/* Every key is one we use, one another tool owns, or junk. */
static void check_keys(const ft_lfargs *a)
{
	for (size_t i = 0; i < a->n; i++) {
		const ft_lfarg *x = &a->v[i];
		if (in_list(known, x->key) || pref_known_key(x->key) || ppo_known_key(x->key) || grpo_known_key(x->key) || ft_train_extras_known(x->key) ||
		    vocab_known_key(x->key) || fp8_known_key(x->key) || hfargs_known_key(x->key)) continue;
		for (size_t j = 0; j < sizeof owned / sizeof *owned; j++)
			if (!strcmp(owned[j].key, x->key)) {
				if (!from_cmdline(x)) {
					warn("%s: '%s' ignored: it belongs to %s", x->origin, x->key, owned[j].owner);
					goto next;
				}
				die_usage("--%s belongs to %s, not ft-train (ft-train reads packed batches: "
					  "ft-tokenize ... | ft-pack ... then ft-train --train BATCHES)",
					  x->key, owned[j].owner);
			}
		if (in_list(meaningless, x->key)) {
			if (!from_cmdline(x)) {
				warn("%s: '%s' ignored: it has no meaning in ft-train", x->origin, x->key);
				continue;
			}
			die_usage("--%s has no meaning in ft-train", x->key);
		}
		/* a LLaMA-Factory setting ft refuses gets ft-run's reason, not
		 * "unknown option" (one table: lib/cli/runplan_settings.c) */
		const char *why = NULL;
		if (ft_runplan_accepts(x->key, &why) == 0) {
			if (from_cmdline(x)) die_usage("--%s is not supported: %s", x->key, why);
			die_usage("%s: '%s' is not supported: %s", x->origin, x->key, why);
		}
		die_usage("unknown option --%s%s%s", x->key, from_cmdline(x) ? "" : " in ",
			  from_cmdline(x) ? "" : x->origin);
	next:;
	}
}

static const char *get(const ft_lfargs *a, const char *k) { return ft_lfargs_get(a, k, NULL); }

static long long get_int(const ft_lfargs *a, const char *k, long long def)
{
	const char *v = get(a, k);
	return v ? ft_parse_int(k, v) : def;
}

static double get_num(const ft_lfargs *a, const char *k, double def)
{
	const char *v = get(a, k);
	return v ? ft_parse_double(k, v) : def;
}

static int get_bool(const ft_lfargs *a, const char *k, int def)
{
	const char *v = get(a, k);
	return v ? ft_parse_bool(k, v) : def;
}

static int strategy(const ft_lfargs *a, const char *k)
{
	const char *v = get(a, k);
	int s = v ? ft_strategy_parse(v) : FT_STRATEGY_STEPS;
	if (s < 0) die_usage("--%s: %s", k, ft_errmsg());
	return s;
}

static unsigned module_bit(const char *name)
{
	static const struct { const char *n; unsigned bit; } m[] = {
		{"q_proj", FT_MOD_Q}, {"k_proj", FT_MOD_K}, {"v_proj", FT_MOD_V}, {"o_proj", FT_MOD_O},
		{"gate_proj", FT_MOD_GATE}, {"up_proj", FT_MOD_UP}, {"down_proj", FT_MOD_DOWN},
		{"self_attn", FT_MOD_SELF_ATTN}, {"mlp", FT_MOD_MLP}, {"all", FT_MOD_ALL_LINEAR},
		/* Phi-3's fused modules (the model refuses a split of them) */
		{"qkv_proj", FT_MOD_Q | FT_MOD_K | FT_MOD_V}, {"gate_up_proj", FT_MOD_GATE | FT_MOD_UP},
	};
	for (size_t i = 0; i < sizeof m / sizeof *m; i++)
		if (!strcmp(m[i].n, name)) return m[i].bit;
	return 0;
}

static unsigned parse_modules(const char *opt, const char *list, int allow_groups)
{
	unsigned bits = 0;
	char *s = ft_xstrdup(list), *save = NULL;
	for (char *t = strtok_r(s, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		unsigned b = module_bit(t);
		if (!b || (!allow_groups && (!strcmp(t, "self_attn") || !strcmp(t, "mlp"))))
			die_usage("--%s: unknown module '%s' (q_proj k_proj v_proj o_proj gate_proj up_proj "
				  "down_proj, Phi-3's qkv_proj gate_up_proj%s, or all)", opt, t,
				  allow_groups ? " self_attn mlp" : "");
		bits |= b;
	}
	free(s);
	if (!bits) die_usage("--%s: no modules given", opt);
	return bits;
}

/* freeze_extra_modules: the model's modules outside its layers
 * (LLaMA-Factory's non_hidden_modules: embed_tokens, norm, lm_head). */
static unsigned parse_extra(const char *list)
{
	unsigned bits = 0;
	if (!list || !*list || !strcasecmp(list, "null")) return 0;
	char *s = ft_xstrdup(list), *save = NULL;
	for (char *t = strtok_r(s, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		if (!strcmp(t, "embed_tokens")) bits |= FT_EXTRA_EMBED;
		else if (!strcmp(t, "norm")) bits |= FT_EXTRA_NORM;
		else if (!strcmp(t, "lm_head")) bits |= FT_EXTRA_HEAD;
		else die_usage("--freeze_extra_modules: Module %s is not found, please choose from "
			       "embed_tokens, norm, lm_head", t);
	}
	free(s);
	return bits;
}

static void split_paths(const char *s, char ***out, size_t *n)
{
	*n = 0;
	*out = NULL;
	if (!s) return;
	char *d = ft_xstrdup(s), *save = NULL;
	for (char *t = strtok_r(d, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		*out = ft_xrealloc(*out, (*n + 1) * sizeof **out);
		(*out)[(*n)++] = ft_xstrdup(t);
	}
	free(d);
}

static int is_null(const char *v)
{
	return !v || !*v || !strcasecmp(v, "null") || !strcasecmp(v, "none") || !strcasecmp(v, "false");
}

/* An adapter trained further keeps its own lora_dropout: LLaMA-Factory
 * resumes it with PeftModel.from_pretrained, which reads
 * adapter_config.json, and --lora_dropout does not reach it.  An
 * unreadable config is left to the model's loader to report. */
static void adapter_dropout(const ft_lfargs *a, ft_cli_args *c)
{
	if (!adapters_resumed(c) || c->tune.type != FT_FT_LORA)
		return;
	ft_adapter_config ac;
	char *path = ft_xasprintf("%s/" FT_ADAPTER_CONFIG_NAME, adapters_last(c));
	int ok = ft_adapter_config_load(path, &ac) == 0;
	free(path);
	if (!ok || (ac.peft_type && strcmp(ac.peft_type, "LORA"))) {
		ft_adapter_config_free(&ac);
		return;
	}
	if (get(a, "lora_dropout") && ac.lora_dropout != c->tune.lora_dropout)
		warn("note: --lora_dropout %g: the adapter %s trains with its own lora_dropout %g "
		     "(adapter_config.json, as PEFT's from_pretrained in LLaMA-Factory)",
		     c->tune.lora_dropout, adapters_last(c), ac.lora_dropout);
	c->tune.lora_dropout = ac.lora_dropout;
	ft_adapter_config_free(&ac);
}

void ft_train_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	check_keys(a);
	ft_train_opts *o = &c->t;
	ft_train_opts_default(o);

	const char *stage = ft_lfargs_get(a, "stage", "sft");
	if (strcmp(stage, "pt") && strcmp(stage, "sft") && strcmp(stage, "ppo") && strcmp(stage, "grpo") &&
	    pref_stage_of(stage) < 0) {
		die_usage("--stage: '%s' is not a stage (pt, sft, rm, dpo, kto, ppo, grpo)", stage);
	}
	snprintf(c->stage, sizeof c->stage, "%s", stage);
	c->model = get(a, "model_name_or_path");
	c->adapter = get(a, "adapter_name_or_path");
	c->create_new_adapter = get_bool(a, "create_new_adapter", 0);
	c->from_scratch = get_bool(a, "train_from_scratch", 0);
	c->config = get(a, "config");
	c->output_dir = get(a, "output_dir");
	c->overwrite = get_bool(a, "overwrite_output_dir", 0);
	c->allow_tokenizer_mismatch = get_bool(a, "allow_tokenizer_mismatch", 0);
	c->plot_loss = get_bool(a, "plot_loss", 0);
	c->bf16 = get_bool(a, "bf16", 0);
	c->fp16 = get_bool(a, "fp16", 0);
	c->do_train = get_bool(a, "do_train", -1);
	c->do_eval = get_bool(a, "do_eval", -1);
	/* resolved (and refused when unknown) in main, once the data is known */
	c->device = ft_lfargs_get(a, "device", NULL);
	c->device_given = c->device != NULL;
	if (!c->device) c->device = "cpu";
	c->t.logging_strategy = strategy(a, "logging_strategy");
	c->t.eval_strategy = strategy(a, "eval_strategy");
	c->t.save_strategy = strategy(a, "save_strategy");
	c->eval_strategy_no = c->t.eval_strategy == FT_STRATEGY_NO;
	vocab_args_parse(a, c);
	split_paths(get(a, "train"), &c->train, &c->n_train);
	split_paths(get(a, "val"), &c->val, &c->n_val);

	/* model setup */
	ft_tune_opts *t = &c->tune;
	memset(t, 0, sizeof *t);
	const char *ft = ft_lfargs_get(a, "finetuning_type", "lora");
	if (!strcmp(ft, "lora")) t->type = FT_FT_LORA;
	else if (!strcmp(ft, "freeze")) t->type = FT_FT_FREEZE;
	else if (!strcmp(ft, "full")) t->type = FT_FT_FULL;
	else if (!strcmp(ft, "oft")) t->type = FT_FT_OFT;   /* extras.c */
	else die_usage("--finetuning_type: '%s' (use lora, freeze, full or oft)", ft);
	t->lora_rank = (int)get_int(a, "lora_rank", 8);
	if (t->lora_rank < 1) die_usage("--lora_rank must be >= 1");
	t->lora_alpha = get_num(a, "lora_alpha", 2.0 * t->lora_rank);
	t->lora_dropout = get_num(a, "lora_dropout", 0.0);
	if (t->lora_dropout < 0 || t->lora_dropout >= 1) die_usage("--lora_dropout must be in [0, 1)");
	adapter_dropout(a, c);
	c->lora_target = ft_lfargs_get(a, "lora_target", "all");
	t->lora_targets = parse_modules("lora_target", c->lora_target, 0);
	t->use_rslora = get_bool(a, "use_rslora", 0);
	t->freeze_trainable_layers = (int)get_int(a, "freeze_trainable_layers", 2);
	if (t->freeze_trainable_layers == 0) die_usage("--freeze_trainable_layers must not be 0");
	const char *fm = ft_lfargs_get(a, "freeze_trainable_modules", "all");
	t->freeze_trainable_modules = !strcmp(fm, "all") ? 0 : parse_modules("freeze_trainable_modules", fm, 1);
	t->freeze_extra = parse_extra(ft_lfargs_get(a, "freeze_extra_modules", NULL));
	t->gradient_checkpointing = get_bool(a, "gradient_checkpointing", 0);
	t->seed = (uint64_t)get_int(a, "seed", 42);
	if (ft_quant_parse(t, get(a, "quantization_bit"), get(a, "quantization_type"),
			   get(a, "double_quantization"), get(a, "quantization_method")) < 0)
		die_usage("%s", ft_errmsg());
	t->rope_scaling = get(a, "rope_scaling");   /* checked in main, with the config */

	/* optimisation and bookkeeping */
	o->seed = t->seed;
	o->learning_rate = get_num(a, "learning_rate", 5e-5);
	o->weight_decay = get_num(a, "weight_decay", 0.0);
	o->adam_beta1 = get_num(a, "adam_beta1", 0.9);
	o->adam_beta2 = get_num(a, "adam_beta2", 0.999);
	o->adam_epsilon = get_num(a, "adam_epsilon", 1e-8);
	/* the optimizer is torch.optim.AdamW; its fused kernel computes the same
	 * update, so the names that select either are accepted */
	const char *optim = get(a, "optim");
	if (optim && strcmp(optim, "adamw_torch") && strcmp(optim, "adamw_torch_fused") &&
	    strcmp(optim, "adam_mini"))   /* adam_mini: tools/ft-train/extras.c */
		die_usage("--optim %s: ft-train's optimizers are torch.optim.AdamW (adamw_torch, "
			  "adamw_torch_fused) and adam_mini (or --use_adam_mini, --use_muon)", optim);
	o->max_grad_norm = get_num(a, "max_grad_norm", 1.0);
	o->skip_nonfinite = get_bool(a, "skip_nonfinite", 0);
	if (ft_sched_parse(ft_lfargs_get(a, "lr_scheduler_type", "linear"), &o->lr_scheduler_type) < 0)
		die_usage("--lr_scheduler_type: %s", ft_errmsg());
	o->lr_scheduler_kwargs = ft_lfargs_get(a, "lr_scheduler_kwargs", NULL);
	ft_sched probe;   /* the arguments' own checks, before any work */
	if (ft_sched_init(&probe, o->lr_scheduler_type, o->learning_rate, 0, 1) < 0 ||
	    ft_sched_kwargs(&probe, o->lr_scheduler_kwargs) < 0)
		die_usage("--lr_scheduler_kwargs: %s", ft_errmsg());
	double ws = get_num(a, "warmup_steps", 0), wr = get_num(a, "warmup_ratio", 0);
	if (ws < 0 || wr < 0 || wr >= 1) die_usage("--warmup_steps must be >= 0 and --warmup_ratio in [0, 1)");
	o->warmup = ws > 0 ? ws : wr;   /* warmup_steps wins, as in transformers 4 */
	o->gradient_accumulation_steps = (int)get_int(a, "gradient_accumulation_steps", 1);
	if (o->gradient_accumulation_steps < 1) die_usage("--gradient_accumulation_steps must be >= 1");
	c->batch_size = (int)get_int(a, "per_device_train_batch_size", 0);
	c->eval_batch_size = (int)get_int(a, "per_device_eval_batch_size", 0);
	if (get(a, "per_device_train_batch_size") && c->batch_size < 1)
		die_usage("--per_device_train_batch_size must be >= 1");
	if (get(a, "per_device_eval_batch_size") && c->eval_batch_size < 1)
		die_usage("--per_device_eval_batch_size must be >= 1");
	o->num_train_epochs = get_num(a, "num_train_epochs", 3.0);
	o->max_steps = get_int(a, "max_steps", -1);
	if (o->max_steps == 0 || (o->max_steps < 0 && !(o->num_train_epochs > 0)))
		die_usage("--max_steps must be > 0, or --num_train_epochs > 0");
	o->logging_steps = get_int(a, "logging_steps", 500);
	o->logging_first_step = get_bool(a, "logging_first_step", 0);
	o->eval_on_start = get_bool(a, "eval_on_start", 0);
	o->ignore_data_skip = get_bool(a, "ignore_data_skip", 0);
	o->eval_delay = get_num(a, "eval_delay", 0);
	if (!(o->eval_delay >= 0)) die_usage("--eval_delay must be >= 0 (steps, or epochs with --eval_strategy epoch)");
	if (o->ignore_data_skip && (!strcmp(c->stage, "ppo") || !strcmp(c->stage, "grpo")))
		die_usage("--ignore_data_skip with --stage %s is not implemented in ft yet", c->stage);
	if (o->eval_on_start && c->n_val == 0)   /* Trainer.evaluate's error */
		die_usage("--eval_on_start: evaluation requires an eval dataset (--val BATCHES)");
	o->save_steps = get_int(a, "save_steps", 500);
	o->save_total_limit = get_int(a, "save_total_limit", 0);
	o->eval_steps = get_int(a, "eval_steps", 0);
	if (o->logging_steps < 0 || o->save_steps < 0 || o->eval_steps < 0 || o->save_total_limit < 0)
		die_usage("--logging_steps, --save_steps, --eval_steps and --save_total_limit must be >= 0");
	const char *r = get(a, "resume_from_checkpoint");
	c->resume = is_null(r) ? NULL : r;
	pref_args_parse(a, c);
	ppo_args_parse(a, c);
	grpo_args_parse(a, c);

	/* data parallel (tools/ft-train/dist.c) */
	const char *ds = get(a, "deepspeed");
	if (!is_null(ds))
		die_usage("--deepspeed %s: ft does not run DeepSpeed; for data parallel training with the "
			  "optimizer state sharded across ranks (ZeRO-1) run: mpirun -np N ft-train ... "
			  "--zero 1 (docs/DISTRIBUTED.md)", ds);
	/* LLaMA-Factory's default; its examples set 180000000 */
	c->ddp_timeout = get_num(a, "ddp_timeout", 1800);
	if (!(c->ddp_timeout > 0)) die_usage("--ddp_timeout must be > 0 seconds");
	c->zero = (int)get_int(a, "zero", 0);
	if (c->zero == 2 || c->zero == 3)
		die_usage("--zero %d: only ZeRO stage 1 (sharded optimizer state) is implemented", c->zero);
	if (c->zero != 0 && c->zero != 1) die_usage("--zero: %d is not a ZeRO stage (0 or 1)", c->zero);
	ft_train_extras_parse(a, c);
	rl_args_check(c);
	fp8_args_parse(a, c);
	hfargs_parse(a, c);
}
