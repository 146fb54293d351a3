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

/* The rest of LLaMA-Factory's arguments and the HF TrainingArguments it
 * takes, each with what ft does with it.  A refused one given as off
 * (false, 0, null) is accepted: it asks for nothing (ftp_check_settings). */
#define TRACKER "an experiment tracker's: ft-train logs to trainer_log.jsonl (ft-plot draws it)"
#define HUB "a model hub's: ft reads the local directories it is given and uploads nothing"
#define PROFILER "torch's profiler: ft-train logs throughput and peak memory; bench/ measures speed"
#define ENGINE "a vLLM / SGLang engine setting: ft-generate is ft's inference backend"
#define EVALCMD "a setting of `llamafactory-cli eval` (MMLU, C-Eval, CMMLU), which ft does not run"
#define OTHER_DIST "another distributed backend's: ft's data parallel is mpirun (docs/DISTRIBUTED.md)"
#define MEGATRON "Megatron Bridge's (USE_MEGATRON_BRIDGE=1): " OTHER_DIST
#define DDP "torch DDP's: ft's ranks all-reduce through MPI / NCCL (docs/DISTRIBUTED.md)"
#define LOADER "torch's DataLoader: ft-train reads the packed shards directly"
#define DERIVED "derived by LLaMA-Factory from other settings (its help: do not specify it); ft derives it the same way"
#define KERNELS "fused kernels for torch: ft runs its own kernels, which compute the same numbers"
#define EVAL_GATHER "how HF gathers evaluation outputs: ft computes its eval metrics batch by batch"
#define HF_LOG "HF's console logging: ft-train writes trainer_log.jsonl and stderr (-q quiets it)"
static const ftp_route more_routes[] = {
	/* routed to a tool that has the flag */
	{"skip_special_tokens", FTP_G, NULL}, {"logging_first_step", FTP_R, NULL},
	{"additional_target", FTP_R, NULL}, {"freeze_extra_modules", FTP_R, NULL},
	{"lr_scheduler_kwargs", FTP_R, NULL}, {"create_new_adapter", FTP_R, NULL},
	{"data_seed", FTP_P, NULL}, {"eval_on_start", FTP_R, NULL},
	{"ignore_data_skip", FTP_R, NULL}, {"eval_delay", FTP_R, NULL}, {"label_smoothing_factor", FTP_R, NULL},
	{"compute_accuracy", FTP_R, NULL}, {"load_best_model_at_end", FTP_R, NULL},
	{"metric_for_best_model", FTP_R, NULL}, {"greater_is_better", FTP_R, NULL},
	{"early_stopping_steps", FTP_R, NULL}, {"pref_bco_weight", FTP_R, NULL}, {"ld_alpha", FTP_R, NULL},
	/* translated by runplan.c (no flag of their own) */
	{"disable_gradient_checkpointing", FTP_N, NULL}, {"disable_shuffling", FTP_N, NULL},
	{"use_cpu", FTP_N, NULL},
	/* no effect in ft, and why */
	{"use_swanlab", FTP_N, TRACKER}, {"project", FTP_N, TRACKER},
	{"hf_hub_token", FTP_N, HUB}, {"ms_hub_token", FTP_N, HUB}, {"om_hub_token", FTP_N, HUB},
	{"model_revision", FTP_N, HUB}, {"cache_dir", FTP_N, HUB}, {"hub_token", FTP_N, HUB},
	{"hub_private_repo", FTP_N, HUB}, {"hub_model_id", FTP_N, HUB}, {"hub_strategy", FTP_N, HUB},
	{"hub_always_push", FTP_N, HUB}, {"hub_revision", FTP_N, HUB},
	{"enable_torch_profiler", FTP_N, PROFILER}, {"profile_modules", FTP_N, PROFILER},
	{"infer_dtype", FTP_N, ENGINE},
	{"block_diag_attn", FTP_N, DERIVED}, {"compute_dtype", FTP_N, DERIVED},
	{"device_map", FTP_N, DERIVED}, {"model_max_length", FTP_N, DERIVED},
	{"low_cpu_mem_usage", FTP_N, "ft reads safetensors one tensor at a time"},
	{"offload_folder", FTP_N, "ft does not offload weights to disk"},
	{"quantization_device_map", FTP_N, "the quantized model runs on --device"},
	{"data_shared_file_system", FTP_N, "ft-tokenize runs once, before the ranks start"},
	{"use_unsloth_gc", FTP_N, "ft's own gradient checkpointing recomputes each layer (the same numbers)"},
	{"enable_liger_kernel", FTP_N, KERNELS}, {"use_liger_kernel", FTP_N, KERNELS},
	{"liger_kernel_config", FTP_N, KERNELS}, {"use_v1_kernels", FTP_N, KERNELS},
	{"torch_compile", FTP_N, "ft is compiled C and CUDA"},
	{"torch_compile_backend", FTP_N, "ft is compiled C and CUDA"},
	{"torch_compile_mode", FTP_N, "ft is compiled C and CUDA"},
	{"upcast_layernorm", FTP_N, "ft's norms keep fp32 weights and compute in fp32 in every precision"},
	{"upcast_lmhead_output", FTP_N, "ft's logits and losses are fp32 in every precision"},
	{"print_param_status", FTP_N, "ft-train logs the trainable and total parameter counts"},
	{"include_effective_tokens_per_second", FTP_N, "ft-train logs total_tokens and the throughput"},
	{"include_num_input_tokens_seen", FTP_N, "ft-train logs total_tokens and the throughput"},
	{"skip_memory_metrics", FTP_N, "ft-train logs its peak memory"},
	{"moe_aux_loss_coef", FTP_N, "for mixture-of-experts models, which ft does not load (docs/FAMILIES.md)"},
	{"buffer_size", FTP_N, "used only with streaming"},
	{"max_length", FTP_N, "ft-generate stops at max_new_tokens, which overrides max_length as in transformers"},
	{"generation_max_length", FTP_N, "ft-generate stops at max_new_tokens, which overrides it as in transformers"},
	{"length_penalty", FTP_G, NULL},
	{"use_kv_cache", FTP_N, "ft-generate always decodes with a KV cache (the same tokens)"},
	{"use_cache", FTP_N, "ft keeps a KV cache only when generating"},
	{"tf32", FTP_N, "the device's fp32 products use TF32 where docs/CUDA.md says; the CPU's are fp32"},
	{"activation_checkpointing", FTP_N, "FSDP's: ft's checkpointing is gradient_checkpointing"},
	{"activation_checkpointing_kwargs", FTP_N, "FSDP's: ft's checkpointing is gradient_checkpointing"},
	{"torch_empty_cache_steps", FTP_N, "ft's device memory is one arena planned at the start"},
	{"log_on_each_node", FTP_N, HF_LOG}, {"logging_nan_inf_filter", FTP_N, HF_LOG},
	{"log_level", FTP_N, HF_LOG}, {"log_level_replica", FTP_N, HF_LOG}, {"disable_tqdm", FTP_N, HF_LOG},
	{"prediction_loss_only", FTP_N, "ft's evaluation computes the loss and its metrics only"},
	{"eval_do_concat_batches", FTP_N, EVAL_GATHER}, {"eval_use_gather_object", FTP_N, EVAL_GATHER},
	{"include_for_metrics", FTP_N, EVAL_GATHER}, {"batch_eval_metrics", FTP_N, EVAL_GATHER},
	{"eval_accumulation_steps", FTP_N, EVAL_GATHER},
	{"save_on_each_node", FTP_N, "rank 0 writes the checkpoints (docs/DISTRIBUTED.md)"},
	{"enable_jit_checkpoint", FTP_N, "ft writes each checkpoint atomically at save_steps"},
	{"restore_callback_states_from_checkpoint", FTP_N, "ft's checkpoints restore the whole trainer state"},
	{"full_determinism", FTP_N, "ft is deterministic on the CPU and the device (resume is bit for bit)"},
	{"accelerator_config", FTP_N, "accelerate's: ft's data parallel is mpirun (docs/DISTRIBUTED.md)"},
	{"parallelism_config", FTP_N, "accelerate's: ft's data parallel is mpirun (docs/DISTRIBUTED.md)"},
	{"dataloader_pin_memory", FTP_N, LOADER}, {"dataloader_persistent_workers", FTP_N, LOADER},
	{"dataloader_prefetch_factor", FTP_N, LOADER}, {"dataloader_multiprocessing_context", FTP_N, LOADER},
	{"dataloader_in_order", FTP_N, LOADER},
	{"remove_unused_columns", FTP_N, "ft's batches hold only what the model reads"},
	{"label_names", FTP_N, "ft's batches carry their labels"},
	{"length_column_name", FTP_N, "group_by_length groups by the token count"},
	{"ddp_find_unused_parameters", FTP_N, DDP}, {"ddp_bucket_cap_mb", FTP_N, DDP},
	{"ddp_broadcast_buffers", FTP_N, DDP}, {"ddp_static_graph", FTP_N, DDP}, {"ddp_backend", FTP_N, DDP},
	{"debug", FTP_N, "torch / XLA debugging options"},
	{"local_rank", FTP_N, "set by torch's launcher; ft's ranks come from mpirun"},
	/* checked by value (value_check): some values are ft's, the others refused */
	{"ignore_pad_token_for_loss", FTP_N, NULL}, {"average_tokens_across_devices", FTP_N, NULL},
	{"num_beams", FTP_G, NULL},
	{"eval_num_beams", FTP_N, "predict's num_beams decides (Seq2SeqTrainer uses generation_num_beams "
	 "only without num_beams, and LLaMA-Factory always passes it)"},
	{"generation_num_beams", FTP_N, "predict's num_beams decides (Seq2SeqTrainer uses it only "
	 "without num_beams, and LLaMA-Factory always passes it)"},
	{"train_sampling_strategy", FTP_N, NULL},
	/* refused (given as anything but off), one reason each */
	{"task", FTP_X, EVALCMD}, {"task_dir", FTP_X, EVALCMD}, {"n_shot", FTP_X, EVALCMD},
	{"lang", FTP_X, EVALCMD}, {"save_dir", FTP_X, EVALCMD}, {"download_mode", FTP_X, EVALCMD},
	{"batch_size", FTP_X, EVALCMD},
	{"use_mca", FTP_X, OTHER_DIST}, {"use_megatron_bridge", FTP_X, OTHER_DIST},
	{"megatron_bridge_args", FTP_X, OTHER_DIST}, {"use_hyper_parallel", FTP_X, OTHER_DIST},
	{"hyper_parallel_args", FTP_X, OTHER_DIST}, {"hyper_parallel_cp_size", FTP_X, OTHER_DIST},
	{"crop_to_patches", FTP_X, MULTIMODAL}, {"use_audio_in_video", FTP_X, MULTIMODAL},
	{"streaming", FTP_X, "dataset streaming is " NOT_YET " (ft-tokenize reads the whole dataset)"},
	{"eval_on_each_dataset", FTP_X, "evaluating each eval dataset on its own is " NOT_YET},
	{"split_special_tokens", FTP_X, "splitting special tokens in the text is " NOT_YET},
	{"shift_attn", FTP_X, "LongLoRA's shift short attention (S^2-Attn) is " NOT_YET},
	{"ref_model_quantization_bit", FTP_X, "a quantized reference model is " NOT_YET},
	{"reward_model_quantization_bit", FTP_X, "a quantized reward model is " NOT_YET},
	{"adapter_folder", FTP_X, "a subfolder of an adapter repository: give its path in adapter_name_or_path"},
	{"optim_args", FTP_X, "optimizer argument strings are " NOT_YET},
	{"optim_target_modules", FTP_X, "HF's GaLore/APOLLO targets: use LLaMA-Factory's galore_target / apollo_target"},
	{"bf16_full_eval", FTP_X, "evaluating with half weights is " NOT_YET " (eval runs the training precision)"},
	{"fp16_full_eval", FTP_X, "evaluating with half weights is " NOT_YET " (eval runs the training precision)"},
	{"auto_find_batch_size", FTP_X, "retrying with a smaller batch is " NOT_YET " (ft-train plans its memory first)"},
	{"sortish_sampler", FTP_X, "the sortish sampler is " NOT_YET},
	{"generation_config", FTP_X, "a generation config file is " NOT_YET " (give the generating settings)"},
	{"push_to_hub", FTP_X, "ft uploads nothing"},	/* megatron_bridge_args.py: used only with USE_MEGATRON_BRIDGE=1 */
	{"account_for_embedding_in_pipeline_split", FTP_X, MEGATRON},
	{"account_for_loss_in_pipeline_split", FTP_X, MEGATRON},
	{"apply_rope_fusion", FTP_X, MEGATRON}, {"bias_activation_fusion", FTP_X, MEGATRON},
	{"calculate_per_token_loss", FTP_X, MEGATRON}, {"context_parallel_size", FTP_X, MEGATRON},
	{"cross_entropy_loss_fusion", FTP_X, MEGATRON},
	{"expert_model_parallel_size", FTP_X, MEGATRON}, {"export_hf_on_finish", FTP_X, MEGATRON},
	{"extra_config", FTP_X, MEGATRON}, {"masked_softmax_fusion", FTP_X, MEGATRON},
	{"megatron_pretrained_checkpoint", FTP_X, MEGATRON}, {"mixed_precision", FTP_X, MEGATRON},
	{"moe_grouped_gemm", FTP_X, MEGATRON}, {"moe_token_dispatcher_type", FTP_X, MEGATRON},
	{"overlap_grad_reduce", FTP_X, MEGATRON}, {"overlap_param_gather", FTP_X, MEGATRON},
	{"pipeline_model_parallel_size", FTP_X, MEGATRON}, {"recompute_granularity", FTP_X, MEGATRON},
	{"recompute_method", FTP_X, MEGATRON}, {"recompute_num_layers", FTP_X, MEGATRON},
	{"sequence_parallel", FTP_X, MEGATRON}, {"tensor_model_parallel_size", FTP_X, MEGATRON},
	{"use_distributed_optimizer", FTP_X, MEGATRON}, {"use_packed_sequences", FTP_X, MEGATRON},
	{"virtual_pipeline_model_parallel_size", FTP_X, MEGATRON},
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
	{"_kt_", FTP_X, "KTransformers is a torch backend ft does not run"},
	{"swanlab_", FTP_N, TRACKER}, {"trackio_", FTP_N, TRACKER},
	{"profiler_", FTP_N, PROFILER}, {"vllm_", FTP_N, ENGINE}, {"sglang_", FTP_N, ENGINE},
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
	for (size_t i = 0; i < sizeof more_routes / sizeof *more_routes; i++)
		if (!strcmp(more_routes[i].key, key)) return &more_routes[i];
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
/* A value that asks for nothing: false, 0, null (OmegaConf's), empty. */
static int is_off(const char *v)
{
	return !v || !*v || !strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "null") ||
	       !strcmp(v, "~") || !strcasecmp(v, "none");
}

static void value_check(ft_runplan *p, const ft_lfargs *a, const ft_lfarg *s)
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
	} else if (!strcmp(k, "ignore_pad_token_for_loss") || !strcmp(k, "average_tokens_across_devices")) {
		if (is_off(v))   /* ft's: padding never has a label; the global label count divides */
			ftp_plan_problem(p, ft_xasprintf("%s: %s false is not supported: %s", s->origin, k,
							 k[0] == 'i' ? "ft never trains on padding tokens"
								    : "ft's data parallel divides the loss by the "
								      "label tokens of all ranks"));
	} else if (!strcmp(k, "disable_gradient_checkpointing") || !strcmp(k, "disable_shuffling") ||
		   !strcmp(k, "use_cpu")) {
		/* translated by runplan.c, not passed on: checked here */
		if (ft_lfargs_bool(a, k, 0) < 0)
			ftp_plan_problem(p, ft_xasprintf("%s: %s '%s': expected true or false", s->origin, k, v));
	} else if (!strcmp(k, "num_beams")) {
		/* LLaMA-Factory's do_sample defaults to true: beam sampling */
		if (strcmp(v, "1") && !is_off(v) && ft_lfargs_bool(a, "do_sample", 1) != 0)
			ftp_plan_problem(p, ft_xasprintf("%s: num_beams %s with do_sample true is transformers' "
							 "beam sampling, whose torch.multinomial draws ft cannot "
							 "reproduce; set do_sample: false for beam search",
							 s->origin, v));
	} else if (!strcmp(k, "train_sampling_strategy")) {
		if (strcmp(v, "random") && strcmp(v, "sequential"))
			ftp_plan_problem(p, ft_xasprintf("%s: train_sampling_strategy %s: ft-pack orders the "
							 "batches random or sequential (group_by_length is its own "
							 "setting)", s->origin, v));
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
		if (r->to == FTP_X && !is_off(s->value))
			ftp_plan_problem(p, ft_xasprintf("%s: '%s' is not supported: %s", s->origin, s->key, r->why));
		else if (r->to == FTP_N && r->why)
			ftp_plan_note(p, ft_xasprintf("%s: %s accepted with no effect: %s", s->origin, s->key, r->why));
		value_check(p, a, s);
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
