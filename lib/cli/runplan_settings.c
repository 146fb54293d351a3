/* runplan_settings.c - which tool each LLaMA-Factory setting goes to, the
 * settings ft accepts with no effect (and why), the ones it refuses (and
 * why), and the checks of names that can be made before anything runs.
 * See runplan.h; runplan.c builds the pipeline from this. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "cli/runplan_internal.h"
#include "data/dataset.h"
#include "text/template.h"
#include "util/error.h"
#include "util/json.h"

/* Refusals shared by several keys. */
#define MULTIMODAL "ft trains text-only models (no image, video or audio inputs)"
#define NOT_YET "not implemented in ft yet"
/* LLaMA-Factory's MoD is the mixture-of-depth package's; it has no behaviour
 * to match where LLaMA-Factory runs (docs/EXTRAS.md, and
 * tests/reference/check_mod_package.py rechecks a new release). */
#define MOD_WHY "Mixture-of-Depths: its package (mixture-of-depth 1.2.0, the latest) fails with " \
	"the transformers LLaMA-Factory requires (5.x: `import MoD` fails; 4.55-4.57: convert fails " \
	"at the first forward), so ft has no behaviour to match (docs/EXTRAS.md)"
#define RAY_NOTE "a Ray setting: ft-run starts its ranks with mpirun, not Ray (ray_num_workers under USE_RAY=1)"

static const ftp_route routes[] = {
	{"stage", FTP_T | FTP_P | FTP_R, NULL},
	{"model_name_or_path", FTP_T | FTP_R | FTP_G | FTP_M, NULL},
	{"adapter_name_or_path", FTP_R | FTP_G | FTP_M, NULL},
	{"dataset", FTP_T, NULL}, {"eval_dataset", FTP_G, NULL}, {"dataset_dir", FTP_T | FTP_G, NULL},
	{"template", FTP_T | FTP_G, NULL},
	{"cutoff_len", FTP_T | FTP_P, NULL}, {"max_samples", FTP_T, NULL}, {"overwrite_cache", FTP_T, NULL},
	{"train_on_prompt", FTP_T, NULL}, {"mask_history", FTP_T, NULL}, {"mix_strategy", FTP_T, NULL},
	{"interleave_probs", FTP_T, NULL}, {"default_system", FTP_T | FTP_G, NULL},
	{"tool_format", FTP_T, NULL}, {"preprocessing_batch_size", FTP_T | FTP_P, NULL},
	{"per_device_train_batch_size", FTP_P | FTP_R, NULL},
	{"per_device_eval_batch_size", FTP_P | FTP_G, NULL},
	{"packing", FTP_P, NULL}, {"neat_packing", FTP_P, NULL}, {"val_size", FTP_P, NULL},
	{"seed", FTP_P | FTP_R | FTP_G, NULL}, {"dataloader_drop_last", FTP_P, NULL},
	{"group_by_length", FTP_P, NULL},
	{"finetuning_type", FTP_R, NULL}, {"lora_rank", FTP_R, NULL}, {"lora_alpha", FTP_R, NULL},
	{"lora_dropout", FTP_R, NULL}, {"lora_target", FTP_R, NULL}, {"use_rslora", FTP_R, NULL},
	{"freeze_trainable_layers", FTP_R, NULL}, {"freeze_trainable_modules", FTP_R, NULL},
	{"learning_rate", FTP_R, NULL}, {"weight_decay", FTP_R, NULL}, {"adam_beta1", FTP_R, NULL},
	{"adam_beta2", FTP_R, NULL}, {"adam_epsilon", FTP_R, NULL}, {"optim", FTP_R, NULL},
	{"max_grad_norm", FTP_R, NULL}, {"lr_scheduler_type", FTP_R, NULL},
	{"warmup_steps", FTP_R, NULL}, {"warmup_ratio", FTP_R, NULL},
	{"gradient_accumulation_steps", FTP_R, NULL}, {"num_train_epochs", FTP_P | FTP_R, NULL},
	{"max_steps", FTP_R, NULL}, {"logging_steps", FTP_R, NULL}, {"save_steps", FTP_R, NULL},
	{"save_total_limit", FTP_R, NULL}, {"eval_steps", FTP_R, NULL}, {"do_train", FTP_R, NULL},
	{"do_eval", FTP_R, NULL}, {"output_dir", FTP_R | FTP_G, NULL},
	{"overwrite_output_dir", FTP_R | FTP_G, NULL}, {"resume_from_checkpoint", FTP_R, NULL},
	{"gradient_checkpointing", FTP_R, NULL}, {"bf16", FTP_R, NULL}, {"fp16", FTP_R, NULL},
	{"plot_loss", FTP_R, NULL},
	/* ppo (docs/PPO.md); its generating arguments go to ft-train too (runplan.c) */
	{"reward_model", FTP_R, NULL}, {"reward_model_type", FTP_R, NULL},
	{"reward_model_adapters", FTP_R, NULL}, {"ppo_buffer_size", FTP_R, NULL},
	{"ppo_epochs", FTP_R, NULL}, {"ppo_target", FTP_R, NULL}, {"ppo_score_norm", FTP_R, NULL},
	{"ppo_whiten_rewards", FTP_R, NULL}, {"train_from_scratch", FTP_R, NULL},
	{"eval_strategy", FTP_R, NULL}, {"save_strategy", FTP_R, NULL}, {"logging_strategy", FTP_R, NULL},
	{"do_predict", FTP_G, NULL}, {"predict_with_generate", FTP_G, NULL},
	{"max_new_tokens", FTP_G, NULL}, {"do_sample", FTP_G, NULL}, {"temperature", FTP_G, NULL},
	{"top_p", FTP_G, NULL}, {"top_k", FTP_G, NULL}, {"repetition_penalty", FTP_G, NULL},
	/* LLaMA-Factory's extras ft-train runs (docs/EXTRAS.md) */
	{"neftune_noise_alpha", FTP_R, NULL}, {"loraplus_lr_ratio", FTP_R, NULL},
	{"loraplus_lr_embedding", FTP_R, NULL}, {"use_llama_pro", FTP_R, NULL},
	{"use_badam", FTP_R, NULL}, {"pissa_init", FTP_R, NULL}, {"pissa_iter", FTP_R, NULL},
	{"pissa_convert", FTP_R, NULL}, {"use_dora", FTP_R, NULL}, {"use_muon", FTP_R, NULL},
	{"use_adam_mini", FTP_R, NULL}, {"use_galore", FTP_R, NULL},
	{"export_dir", FTP_M, NULL}, {"export_size", FTP_M, NULL}, {"export_dtype", FTP_M, NULL},
	/* accepted, no effect (value-dependent ones are checked in value_problem) */
	{"tokenized_path", FTP_N, NULL},
	{"infer_backend", FTP_N, NULL}, {"export_legacy_format", FTP_N, NULL}, {"report_to", FTP_N, NULL},
	{"trust_remote_code", FTP_N, "ft runs no model code from the hub"},
	{"preprocessing_num_workers", FTP_N, "ft-tokenize uses every core"},
	{"dataloader_num_workers", FTP_N, "batches are prepared by ft-pack before training"},
	{"ddp_timeout", FTP_R, NULL},
	{"zero", FTP_R, NULL},   /* ft's own: ZeRO-1 under mpirun (ft-train --zero) */
	{"device", FTP_R | FTP_G, NULL},   /* ft's own: cpu, cuda, cuda:N; ft-run's default is auto */
	{"run_name", FTP_N, "ft-train names a run by its output_dir"},
	{"save_only_model", FTP_N, "checkpoints always hold the optimizer state, so resuming is exact"},
	{"flash_attn", FTP_N, "the CPU path has one attention implementation"},
	{"use_fast_tokenizer", FTP_N, "ft has one tokenizer implementation"},
	{"export_device", FTP_N, "ft-merge merges on the CPU, one tensor at a time"},
	{"gradient_checkpointing_kwargs", FTP_N, "ft's checkpointing recomputes each layer; "
	 "use_reentrant is a torch detail"},
	{"enable_thinking", FTP_T | FTP_G, NULL}, {"preserve_thinking", FTP_T | FTP_G, NULL},
	{"use_reentrant_gc", FTP_N, "ft's checkpointing recomputes each layer; reentrancy is a torch detail"},
	{"pure_bf16", FTP_N, "ft keeps fp32 master weights; bf16 is its mixed precision"},
	{"export_hub_model_id", FTP_N, "ft uploads nothing"},
	/* refused, each with its reason */
	/* ft's data parallel instead (ftp_zero_of, value_check) */
	{"deepspeed", FTP_N, NULL}, {"fsdp", FTP_N, NULL},
	{"fsdp_config", FTP_N, "FSDP's wrapping and prefetch settings have no ft counterpart "
	 "(ranks hold whole models; docs/DISTRIBUTED.md)"},
	{"fsdp_transformer_layer_cls_to_wrap", FTP_N, "ft's ranks hold whole models: no layer "
	 "is wrapped or sharded"},
	/* Ray: LLaMA-Factory uses it only under USE_RAY=1, when ft-run starts
	 * ray_num_workers ranks with mpirun instead (tools/ft-run) */
	{"ray_num_workers", FTP_N, "with USE_RAY=1 ft-run trains on that many ranks, started by "
	 "mpirun instead of Ray; without it LLaMA-Factory and ft-run train in one process"},
	{"ray_init_kwargs", FTP_N, RAY_NOTE}, {"ray_run_name", FTP_N, RAY_NOTE},
	{"ray_storage_path", FTP_N, RAY_NOTE}, {"resources_per_worker", FTP_N, RAY_NOTE},
	{"placement_strategy", FTP_N, RAY_NOTE}, {"master_addr", FTP_N, RAY_NOTE},
	{"master_port", FTP_N, RAY_NOTE},
	/* fp8 (docs/EXTRAS.md): ft-train checks the backend and what fp8 applies to */
	{"fp8", FTP_R, NULL}, {"fp8_backend", FTP_R, NULL},
	{"fp8_enable_fsdp_float8_all_gather", FTP_R, NULL},
	{"image_max_pixels", FTP_X, MULTIMODAL}, {"image_min_pixels", FTP_X, MULTIMODAL},
	{"video_max_pixels", FTP_X, MULTIMODAL}, {"video_min_pixels", FTP_X, MULTIMODAL},
	{"video_fps", FTP_X, MULTIMODAL}, {"video_maxlen", FTP_X, MULTIMODAL},
	{"audio_sampling_rate", FTP_X, MULTIMODAL}, {"media_dir", FTP_X, MULTIMODAL},
	{"freeze_vision_tower", FTP_X, MULTIMODAL}, {"freeze_multi_modal_projector", FTP_X, MULTIMODAL},
	{"freeze_language_model", FTP_X, MULTIMODAL},
	{"use_dft_loss", FTP_R, NULL}, {"use_eaft_loss", FTP_R, NULL},
	{"use_asft_loss", FTP_R, NULL}, {"asft_alpha", FTP_R, NULL},
	{"eaft_alpha", FTP_R, NULL},
	{"mixture_of_depths", FTP_X, MOD_WHY},
	{"oft_rank", FTP_R, NULL}, {"oft_block_size", FTP_R, NULL},   /* OFT (docs/EXTRAS.md) */
	{"oft_target", FTP_R, NULL}, {"module_dropout", FTP_R, NULL},
	/* GPTQ export (ft-merge, docs/FORMAT.md "GPTQ export") */
	{"export_quantization_bit", FTP_M, NULL}, {"export_quantization_dataset", FTP_M, NULL},
	{"export_quantization_nsamples", FTP_M, NULL}, {"export_quantization_maxlen", FTP_M, NULL},
	{"quantization_bit", FTP_R | FTP_G | FTP_M, NULL},   /* QLoRA (bnb); ft-merge refuses */
	{"quantization_method", FTP_R | FTP_G | FTP_M, NULL},
	{"quantization_type", FTP_R | FTP_G | FTP_M, NULL},
	{"double_quantization", FTP_R | FTP_G | FTP_M, NULL},
	{"use_unsloth", FTP_X, "unsloth's kernels are torch code ft does not run"},
	{"use_apollo", FTP_R, NULL},
	{"pref_beta", FTP_R, NULL},
	{"pref_loss", FTP_R, NULL},
	{"pref_ftx", FTP_R, NULL},
	{"simpo_gamma", FTP_R, NULL},
	{"dpo_label_smoothing", FTP_R, NULL},
	{"kto_chosen_weight", FTP_R, NULL},
	{"kto_rejected_weight", FTP_R, NULL},
	{"ref_model", FTP_R, NULL}, {"ref_model_adapters", FTP_R, NULL},
	{"rope_scaling", FTP_R | FTP_G | FTP_M, NULL},
	/* vocabulary extension (docs/VOCAB.md): the tokenizer of every tool, the model's resize */
	{"add_tokens", FTP_T | FTP_R | FTP_G | FTP_M, NULL},
	{"add_special_tokens", FTP_T | FTP_R | FTP_G | FTP_M, NULL},
	{"new_special_tokens_config", FTP_T | FTP_R | FTP_G | FTP_M, NULL},
	{"init_special_tokens", FTP_R, NULL}, {"resize_vocab", FTP_R, NULL},
	{"use_kt", FTP_X, "KTransformers is a torch backend ft does not run"},
	{"kt_optimize_rule", FTP_X, "KTransformers is a torch backend ft does not run"},
};

/* Families of settings that belong to a refused method. */
static const ftp_route families[] = {
	{"apollo_", FTP_R, NULL},  /* ft-train checks each */
	{"badam_", FTP_R, NULL},   /* ft-train checks each (layer mode only) */
	{"galore_", FTP_R, NULL},  /* ft-train checks each */
	{"oft_", FTP_X, "not an OFTConfig setting LLaMA-Factory passes (oft_rank, oft_block_size, "
	 "oft_target, module_dropout)"},
	{"ray_", FTP_N, RAY_NOTE},
	{"loraplus_", FTP_R, NULL},
	{"kt_", FTP_X, "KTransformers is a torch backend ft does not run"},
	{"fp8_", FTP_X, "not one of LLaMA-Factory's fp8 settings (fp8, fp8_backend, "
	 "fp8_enable_fsdp_float8_all_gather)"},
	{"image_", FTP_X, MULTIMODAL}, {"video_", FTP_X, MULTIMODAL}, {"audio_", FTP_X, MULTIMODAL},
	{"mod_", FTP_X, MOD_WHY},
	{"asft_", FTP_X, "the ASFT loss is " NOT_YET}, {"eaft_", FTP_X, "the EAFT loss is " NOT_YET},
	{"dft_", FTP_X, "the DFT loss is " NOT_YET},
};

/* Stages ft-train runs, and the finetuning types. */
static const char *const stages[] = {"pt", "sft", "rm", "dpo", "kto", "ppo", NULL};
static const char *const tune_types[] = {"lora", "freeze", "full", "oft", NULL};

const ftp_route *ftp_route_find(const char *key)
{
	for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
		if (!strcmp(routes[i].key, key)) return &routes[i];
	for (size_t i = 0; i < sizeof families / sizeof *families; i++)
		if (!strncmp(families[i].key, key, strlen(families[i].key))) return &families[i];
	return NULL;
}

static int in_list(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (!strcmp(*list, s)) return 1;
	return 0;
}

static void push(char ***v, size_t *n, char *s)
{
	*v = ft_xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[(*n)++] = s;
}

void ftp_plan_problem(ft_runplan *p, char *s) { push(&p->problems, &p->n_problems, s); }
void ftp_plan_note(ft_runplan *p, char *s) { push(&p->notes, &p->n_notes, s); }

/* The ZeRO stage of a DeepSpeed config file (zero_optimization.stage;
 * DeepSpeed's default 0), -1 when it cannot be read; *offload: it
 * offloads the optimizer state or the parameters. */
static int deepspeed_stage(const char *path, int *offload)
{
	json_t *j = ft_json_load_file(path);
	*offload = 0;
	if (!j) {
		ft_errclear();
		return -1;
	}
	json_t *z = json_object_get(j, "zero_optimization");
	int stage = (int)ft_json_int(z, "stage", 0);
	*offload = json_object_get(z, "offload_optimizer") || json_object_get(z, "offload_param");
	json_decref(j);
	return stage;
}

/* HF's fsdp option words that shard something (ZeRO-2/3 alike). */
static int fsdp_shards(const char *v)
{
	return strstr(v, "full_shard") || strstr(v, "shard_grad_op") || strstr(v, "hybrid_shard");
}

int ftp_zero_of(const ft_lfargs *a)
{
	const char *ds = ft_lfargs_get(a, "deepspeed", NULL), *fsdp = ft_lfargs_get(a, "fsdp", NULL);
	int off;
	return (ds && deepspeed_stage(ds, &off) >= 1) || (fsdp && fsdp_shards(fsdp));
}

#define DP_NOTE "runs as ft's data parallel (ft-run --nproc N, which starts mpirun -np N ft-train)"
#define ZERO1_NOTE DP_NOTE " with --zero 1: only the optimizer state is sharded across the " \
	"ranks; the gradient and parameter sharding of ZeRO-2/3 is not done, every rank holds " \
	"the whole model (docs/DISTRIBUTED.md)"

/* deepspeed and fsdp: what ft's data parallel does of them. */
static void parallel_note(ft_runplan *p, const ft_lfarg *s)
{
	if (!strcmp(s->key, "fsdp")) {
		if (fsdp_shards(s->value))
			ftp_plan_note(p, ft_xasprintf("%s: fsdp %s: " ZERO1_NOTE, s->origin, s->value));
		else
			ftp_plan_note(p, ft_xasprintf("%s: fsdp %s: " DP_NOTE ", nothing sharded", s->origin,
						      s->value));
		return;
	}
	int off, st = deepspeed_stage(s->value, &off);
	if (st < 0)
		ftp_plan_note(p, ft_xasprintf("%s: deepspeed %s cannot be read here, so its ZeRO stage is "
					      "unknown: " DP_NOTE ", nothing sharded (zero=1 shards the "
					      "optimizer state)", s->origin, s->value));
	else if (st == 0)
		ftp_plan_note(p, ft_xasprintf("%s: deepspeed %s (ZeRO stage 0): " DP_NOTE ", nothing "
					      "sharded, as with stage 0", s->origin, s->value));
	else
		ftp_plan_note(p, ft_xasprintf("%s: deepspeed %s (ZeRO stage %d): " ZERO1_NOTE "%s",
					      s->origin, s->value, st,
					      off ? "; its CPU offload is not done either" : ""));
}

/* A setting whose effect depends on its value: a note, a problem, or
 * nothing. */
static void value_check(ft_runplan *p, const ft_lfarg *s)
{
	const char *k = s->key, *v = s->value;
	if (!strcmp(k, "deepspeed") || !strcmp(k, "fsdp")) {
		parallel_note(p, s);
	} else if (!strcmp(k, "infer_backend")) {
		if (!strcmp(v, "huggingface"))
			ftp_plan_note(p, ft_xasprintf("%s: infer_backend huggingface: ft-generate is the backend", s->origin));
		else if (!strcmp(v, "vllm") || !strcmp(v, "sglang"))
			ftp_plan_note(p, ft_xasprintf("%s: infer_backend %s: runs with ft-generate "
						      "(KV cache, batched decoding) instead", s->origin, v));
		else
			ftp_plan_problem(p, ft_xasprintf("%s: infer_backend %s is not supported: ft-generate "
							 "is ft's backend (huggingface, vllm and sglang map to it)",
							 s->origin, v));
	} else if (!strcmp(k, "export_legacy_format")) {
		if (!strcasecmp(v, "true"))
			ftp_plan_problem(p, ft_xasprintf("%s: export_legacy_format true is not supported: pickled "
							 ".bin weights can run code when loaded; ft-merge writes "
							 "safetensors only", s->origin));
	} else if (!strcmp(k, "badam_mode")) {
		/* the extras' modes ft-train does not have (docs/EXTRAS.md) */
		if (!strcmp(k, "badam_mode") && !strcmp(v, "ratio"))
			ftp_plan_problem(p, ft_xasprintf("%s: badam_mode ratio is not supported: "
							 "BlockOptimizerRatio's sparse masks are not implemented in "
							 "ft (layer runs)", s->origin));
	} else if (!strcmp(k, "report_to")) {
		if (strcmp(v, "none"))
			ftp_plan_note(p, ft_xasprintf("%s: report_to %s: ft-train logs to trainer_log.jsonl "
						      "only (ft-plot draws it)", s->origin, v));
	} else if (!strcmp(k, "stage")) {
		if (!in_list(stages, v))
			ftp_plan_problem(p, ft_xasprintf("%s: stage %s: ft-run plans pt, sft, rm, dpo, kto "
							 "and ppo, LLaMA-Factory's stages (grpo: ft-train --stage "
							 "grpo)", s->origin, v));
	} else if (!strcmp(k, "finetuning_type")) {
		if (!in_list(tune_types, v))
			ftp_plan_problem(p, ft_xasprintf("%s: finetuning_type %s: ft supports lora, freeze, "
							 "full and oft", s->origin, v));
	} else if (!strcmp(k, "template")) {
		struct stat st;
		ft_template *t = stat(v, &st) == 0 ? NULL : ft_template_get(v);
		if (t)
			ft_template_free(t);
		else if (stat(v, &st) != 0)
			ftp_plan_problem(p, ft_xasprintf("%s: template %s is not one ft has (%s)", s->origin,
							 v, ft_template_names()));
	}
}

/* Each comma-separated name of `key` against dataset_dir's registry, when
 * the registry is there (LLaMA-Factory's default dataset_dir is "data"). */
static void check_datasets(ft_runplan *p, const ft_lfargs *a, const char *key)
{
	const ft_lfarg *s = ft_lfargs_find(a, key);
	if (!s) return;
	const char *dir = ft_lfargs_get(a, "dataset_dir", "data");
	char *info = ft_xasprintf("%s/dataset_info.json", dir);
	struct stat st;
	int have = stat(info, &st) == 0;
	free(info);
	if (!have) return;
	char *names = ft_xstrdup(s->value), *save = NULL;
	for (char *n = strtok_r(names, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
		while (*n == ' ') n++;
		if (!*n || stat(n, &st) == 0) continue;   /* a path is read as it is */
		ft_dataset_attr at;
		memset(&at, 0, sizeof at);
		if (ft_dataset_resolve(dir, n, &at) < 0)
			ftp_plan_problem(p, ft_xasprintf("%s: %s", s->origin, ft_errmsg()));
		else
			ft_dataset_attr_free(&at);
	}
	free(names);
}

/* A model directory whose config.json says it is already quantized. */
static void check_model(ft_runplan *p, const ft_lfargs *a)
{
	const ft_lfarg *s = ft_lfargs_find(a, "model_name_or_path");
	if (!s) return;
	char *path = ft_xasprintf("%s/config.json", s->value);
	struct stat st;
	if (stat(path, &st) == 0) {
		json_t *c = ft_json_load_file(path);
		json_t *q = c ? json_object_get(c, "quantization_config") : NULL;
		if (q)
			ftp_plan_problem(p, ft_xasprintf("%s: %s is a pre-quantized checkpoint (%s): ft "
							 "trains and runs unquantized weights only", s->origin,
							 s->value, ft_json_str(q, "quant_method", "unknown method")));
		json_decref(c);
	}
	free(path);
}

void ftp_check_settings(const ft_lfargs *a, ft_runplan *p)
{
	size_t known = 0;
	for (size_t i = 0; i < a->n; i++) {
		const ft_lfarg *s = &a->v[i];
		const ftp_route *r = ftp_route_find(s->key);
		if (!r) {
			ftp_plan_problem(p, ft_xasprintf("%s: '%s' is not a LLaMA-Factory setting ft knows",
							 s->origin, s->key));
			continue;
		}
		known++;
		if (r->to == FTP_X)
			ftp_plan_problem(p, ft_xasprintf("%s: '%s' is not supported: %s", s->origin, s->key, r->why));
		else if (r->to == FTP_N && r->why)
			ftp_plan_note(p, ft_xasprintf("%s: %s accepted with no effect: %s", s->origin, s->key, r->why));
		value_check(p, s);
	}
	if (a->n && !known) {
		for (size_t i = 0; i < p->n_problems; i++) free(p->problems[i]);
		p->n_problems = 0;
		ftp_plan_problem(p, ft_xasprintf("%s: none of its %zu keys is a LLaMA-Factory setting: "
						 "not a run config", a->v[0].origin, a->n));
		return;
	}
	check_datasets(p, a, "dataset");
	check_datasets(p, a, "eval_dataset");
	check_model(p, a);
}
