/* ft-train - fine-tune a Hugging Face model on ft-pack batches (CPU). */
#define _GNU_SOURCE
#include "ft-train.h"
#include "cli/runplan.h"
#include "format/batch_io.h"
#include "model/device.h"
#include "train/cuda_train.h"
#include "plot/plot.h"
#include "util/atomicfile.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
"Usage: ft-train [CONFIG.yaml] [key=value ...] [--key value ...]\n"
"Fine-tune a Llama / Mistral / Qwen2 / Qwen3 / Gemma 2/3 model on micro-batches\n"
"made by ft-pack, as LLaMA-Factory's `llamafactory-cli train` does (CPU,\n"
"float32).  Options\n"
"take LLaMA-Factory's names, with underscores or dashes; a YAML or JSON\n"
"config file may come first and later settings override it.\n"
"\n"
"Data and model:\n"
"  --train PATH[,PATH]        ft-pack output (directory, stream file, or - for stdin)\n"
"  --val PATH                 validation batches (ft-pack --val_size: DIR/val)\n"
"  --stage pt|sft|rm|dpo|kto|ppo|grpo  the batches' stage (grpo: ppo's; default sft)\n"
"  --model_name_or_path DIR   Hugging Face model directory (config.json + safetensors)\n"
"  --train_from_scratch       random init (normal(0, initializer_range)) from --config\n"
"  --config FILE              config.json for --train_from_scratch (default: the model's)\n"
"  --adapter_name_or_path DIR[,DIR..] PEFT LoRA adapter to continue training (its own\n"
"                             r, alpha, lora_dropout), or to evaluate; of a list all\n"
"                             but the last are merged first, as LLaMA-Factory\n"
"  --create_new_adapter       merge every adapter given, train a new one\n"
"  --output_dir DIR           adapter or weights, checkpoints, logs (required)\n"
"  --overwrite_output_dir     allow a non-empty output_dir\n"
"  --allow_tokenizer_mismatch train on batches whose tokenizer (manifest) differs\n"
"                             from the model's (refused by default)\n"
"  --resume_from_checkpoint DIR|true   continue a run (true: the latest checkpoint)\n"
"  --device cpu|cuda|cuda:N|auto (cpu)  where to train; auto: the GPU when one is\n"
"                             usable, else the CPU (libft_cuda.so, docs/CUDA.md)\n"
"Fine-tuning:\n"
"  --finetuning_type lora|freeze|full|oft (lora)\n"
"  --oft_block_size N (32) | --oft_rank N   OFT (PEFT's OFTConfig) on --lora_target\n"
"  --lora_rank N (8)  --lora_alpha X (2*rank)  --lora_dropout P (0)  --use_rslora\n"
"  --lora_target all|q_proj,v_proj,...       (all linear layers)\n"
"  --freeze_trainable_layers N (2; negative: the first N)\n"
"  --freeze_trainable_modules all|mlp,self_attn,q_proj,...\n"
"  --freeze_extra_modules embed_tokens,norm,lm_head  also trainable in freeze\n"
"                             tuning (\"norm\" matches every norm, as LLaMA-Factory)\n"
"  --gradient_checkpointing   recompute activations in backward (less memory)\n"
"QLoRA (bitsandbytes' Linear4bit / Linear8bitLt; --finetuning_type lora only):\n"
"  --quantization_bit 4|8     hold the decoder's q,k,v,o,gate,up,down base weights\n"
"                             quantized (embeddings, norms, LM head stay float32)\n"
"  --quantization_type nf4|fp4 (nf4)  --double_quantization true|false (true)\n"
"  --quantization_method bnb  (gptq, awq, hqq, eetq are not implemented)\n"
"  --rope_scaling linear|dynamic|yarn|llama3  stretch RoPE to the batches' cutoff_len\n"
"                             as LLaMA-Factory (factor ceil(cutoff_len / original))\n"
"New tokens (docs/VOCAB.md; the batches must be tokenized with the same ones):\n"
"  --add_tokens T,..  --add_special_tokens T,..  --new_special_tokens_config FILE\n"
"  --init_special_tokens noise_init|desc_init|desc_init_w_noise  --resize_vocab\n"
"                             embeddings resized (multiple of 64) and initialized\n"
"                             as LLaMA-Factory; LoRA trains embed_tokens, lm_head too\n"
"  --additional_target embed_tokens,lm_head  train both beside a new LoRA adapter\n"
"                             (PEFT's modules_to_save) without resizing\n"
"  --bf16, --fp16             GPU: half-precision weights and matmul inputs, fp32\n"
"                             masters (fp16 with dynamic loss scaling); CPU: float32\n"
"                             as before, full weights saved in the config's dtype\n"
"Optimisation (transformers' Trainer semantics):\n"
"  --learning_rate (5e-5) --weight_decay (0) --adam_beta1 (0.9) --adam_beta2 (0.999)\n"
"  --adam_epsilon (1e-8) --max_grad_norm (1.0; 0 disables clipping)\n"
"  --skip_nonfinite           a NaN/Inf loss or gradient norm skips that step's update\n"
"                             (default: stop with the step, the batch and a hint)\n"
"  --optim adamw_torch|adamw_torch_fused|adam_mini (torch's AdamW; see Extras)\n"
"  --lr_scheduler_type linear|cosine|cosine_with_restarts|polynomial|constant|\n"
"                      constant_with_warmup|inverse_sqrt|cosine_with_min_lr|\n"
"                      cosine_warmup_with_min_lr|warmup_stable_decay (linear)\n"
"  --lr_scheduler_kwargs '{\"min_lr_rate\": 0.1}'  the schedule's arguments, as HF's\n"
"  --warmup_steps N (>= 1 steps, < 1 a ratio)  --warmup_ratio R\n"
"  --gradient_accumulation_steps N (1)  --per_device_train_batch_size N (the batches')\n"
"  --num_train_epochs X (3.0, fractional allowed)  --max_steps N (overrides epochs)\n"
"  --seed N (42: LoRA init and dropout)\n"
"  --label_smoothing_factor E (0)  pt/sft: transformers' LabelSmoother, (1-E) CE +\n"
"                             E * the mean over the vocabulary of -log p, train and eval\n"
"  --compute_accuracy         sft eval: eval_accuracy, LLaMA-Factory's ComputeAccuracy\n"
"                             (argmax == label, per row, then the rows' mean; CPU)\n"
"Extras (LLaMA-Factory's, docs/EXTRAS.md; on the GPU too: NEFTune, DFT/EAFT/ASFT, DoRA, OFT, the optimizers):\n"
"  --neftune_noise_alpha A    NEFTune: U(-A/sqrt(T*d), +) noise on the embeddings\n"
"  --loraplus_lr_ratio R      LoRA+: lora_B at learning_rate * R\n"
"  --loraplus_lr_embedding X  (1e-6)\n"
"  --use_llama_pro            freeze tuning of LLaMA Pro's expanded layers: every\n"
"                             (L / freeze_trainable_layers)-th layer\n"
"  --use_badam                BAdam, layer-wise (full): one layer trained at a time\n"
"  --badam_switch_mode ascending|descending|random|fixed (ascending)\n"
"  --badam_switch_interval N (50)  --badam_start_block N  --badam_verbose N (0)\n"
"  --use_adam_mini, --optim adam_mini   Adam-mini (freeze/full): one second moment\n"
"                             per head, row or tensor\n"
"  --use_galore               GaLore (freeze/full): Adam on low-rank projected gradients\n"
"  --galore_target all|q_proj,... --galore_rank N (16) --galore_update_interval N (200)\n"
"  --galore_scale X (2.0) --galore_proj_type std|reverse_std|right|left (std)\n"
"  --galore_layerwise         per-param GaLore steps (accumulation 1, no clipping)\n"
"  --use_apollo               APOLLO (freeze/full): AdamW scaled by random-projected moments\n"
"  --apollo_target all|... --apollo_rank N (16) --apollo_update_interval N (200)\n"
"  --apollo_scale X (32) --apollo_scale_type channel|tensor --apollo_scale_front\n"
"  --apollo_proj random|svd --apollo_proj_type std --apollo_layerwise\n"
"  --use_dft_loss             sft: each token's loss times its (detached) probability\n"
"  --use_eaft_loss --eaft_alpha X (1.0)  sft: times (top-20 entropy / 3)^alpha\n"
"  --use_asft_loss --asft_alpha X (0.1)  sft: DFT + alpha KL(reference || model)\n"
"  --use_muon                 Muon for 2-D weights, its AdamW for the rest\n"
"  --use_dora                 DoRA: a trained magnitude per output row\n"
"  --pissa_init               PiSSA: LoRA from the top singular vectors, base = residual\n"
"  --pissa_iter N (16; -1: exact SVD)  --pissa_convert  (also write pissa_converted/,\n"
"                             a plain LoRA adapter of rank 2r; not with --use_dora)\n"
"  --fp8                      pt/sft: torchao's Float8Linear numerics (tensorwise\n"
"                             scales, e4m3 forward, e5m2 gradients) on the decoder\n"
"                             linears accelerate converts (not layer 0's q_proj);\n"
"                             on the CPU or --device cuda (fp8 values in fp32/bf16)\n"
"  --fp8_backend auto|torchao|msamp (auto; all torchao, as LLaMA-Factory; te refused)\n"
"  --fp8_enable_fsdp_float8_all_gather  accepted: a no-op without FSDP (a note)\n"
"Logging, evaluation, checkpoints:\n"
"  --logging_steps N (500) --logging_first_step  --eval_steps N (logging_steps)\n"
"  --eval_on_start            evaluate before the first step (and on resume), as HF\n"
"  --ignore_data_skip         resume reading the epoch from its first batch, as HF\n"
"  --eval_delay N             no evaluation before step N (epoch N with epoch strategy)\n"
"  --save_steps N (500) --save_total_limit N  --do_train --do_eval  --plot_loss\n"
"  --logging_strategy, --eval_strategy, --save_strategy steps|epoch|no (steps):\n"
"                             every *_steps, at each epoch's end, or never (the\n"
"                             end still evaluates and saves the final model)\n""  --metric_for_best_model M (loss) --greater_is_better  the best evaluation (eval_M),\n"
"                             in trainer_state.json's best_metric/best_model_checkpoint\n"
"  --load_best_model_at_end   pt/sft: the final model is the best checkpoint's (eval and\n"
"                             save strategies equal, save_steps a multiple of eval_steps)\n"
"  --early_stopping_steps N   stop when M has not improved for N evaluations\n"
"Preference stages (--stage rm|dpo|kto, CPU or --device cuda; docs/PREFERENCE.md):\n"
"  --pref_loss sigmoid|hinge|ipo|orpo|simpo (sigmoid)  --pref_beta B (0.1)\n"
"  --pref_ftx X (0: adds X * the chosen sft loss)  --dpo_label_smoothing E (0)\n"
"  --simpo_gamma G (0.5)  --kto_chosen_weight W  --kto_rejected_weight W (1.0)\n"
"  --pref_bco_weight W (0)   dpo sigmoid/hinge/ipo: (loss + W * BCO) / (1 + W), BCO's\n"
"                             baseline TRL's running mean of the batch rewards\n"
"  --ld_alpha A (None)        dpo: LD-DPO, the policy's log-probs past the pair's\n"
"                             shorter response weighted by A\n"
"  --ref_model DIR [--ref_model_adapters DIR[,DIR]]  the reference (default: LoRA\n"
"                             with its adapters disabled; full/freeze: the base)\n"
"  --do_predict               rm: score the --val pairs into generated_predictions.jsonl\n"
"PPO (--stage ppo, LoRA, freeze or full policy, on the CPU or --device cuda, under mpirun\n"
"too, one GPU per rank; docs/PPO.md):\n"
"  --reward_model_type api --reward_model 'CMD'  JSON lines in, one number per line out\n"
"  --reward_model_type lora --reward_model DIR   an rm adapter with value_head.safetensors\n"
"                             (over the LoRA policy's own base weights)\n"
"  --reward_model_type full --reward_model DIR [--reward_model_adapters DIR[,DIR]]\n"
"                             a separate rm model directory, the adapters merged; its\n"
"                             value_head.safetensors (the last adapter's, if any)\n"
"  --ppo_buffer_size N (1) --ppo_epochs N (4) --ppo_target KL (6.0) --ppo_score_norm\n"
"  --ppo_whiten_rewards  --max_new_tokens N (1024) --do_sample BOOL (true)\n"
"  --temperature T (0.95) --top_p P (0.7) --top_k K (50) --repetition_penalty R (1.0)\n"
"  --ref_model DIR [--ref_model_adapters DIR[,DIR]]  the reference, as above\n"
"GRPO (--stage grpo on ppo prompt batches, lora/freeze/full policy, on the CPU (also\n"
"under mpirun) or --device cuda (one GPU per rank under mpirun; completions sampled on\n"
"the CPU); docs/GRPO.md):\n"
"  --reward_funcs [NAME=]CMD[,...]  each started once, JSON lines in, a number per line out;\n"
"                             a line is {prompt, completion, the row's extra columns}\n"
"  --reward_model DIR          one more reward: an rm adapter's value head (lora), or\n"
"                             --reward_model_type full [--reward_model_adapters ...] as PPO's\n"
"  --reward_weights W[,...] (1 each)  --num_generations G (8)  --num_iterations N (1)\n"
"  --loss_type grpo|bnpo|dr_grpo|dapo (dapo)  --beta B (0.0)  --epsilon E (0.2)\n"
"  --epsilon_high E (epsilon)  --scale_rewards group|batch|none (group)\n"
"  --max_completion_length N (512)  --top_p P (1.0) --top_k K (0)  --log_completions\n""  --mask_truncated_completions  no loss on completions without eos\n"
"  --top_entropy_quantile Q (1.0)  the policy term on the top-Q entropy tokens only\n"
"  --ref_model DIR  the reference when --beta > 0 (default: LoRA's adapters off, else\n"
"                   a frozen copy of the base)  --save_steps, --resume_from_checkpoint\n"
"Data parallel (docs/DISTRIBUTED.md):\n"
"  mpirun -np N ft-train ...  N ranks, each taking every N-th micro-batch: the\n"
"                             global batch is N x batch x accumulation; only rank 0\n"
"                             writes files (MPI on the CPU, NCCL on GPUs)\n"
"  --zero 0|1 (0)             1: ZeRO-1, the AdamW state sharded across the ranks\n"
"  --ddp_timeout S (1800)     a rank waiting longer on the others ends the job\n"
"  -q, -v                     quieter, more verbose;  -h, --help\n"
"\n"
"Outputs in output_dir: the adapter (adapter_model.safetensors,\n"
"adapter_config.json) or the model; trainer_log.jsonl; checkpoint-N/;\n"
"trainer_state.json; train_results.json, eval_results.json, all_results.json.\n"
"SIGINT/SIGTERM finish the current step, write a checkpoint and exit 1 with\n"
"the command that resumes.  See docs/FORMAT.md section 4.\n"
"\n"
"EXIT STATUS\n"
"  0 success; 1 bad input, runtime error or interrupted (checkpoint written);\n"
"  2 usage error.\n"
"\n"
"Example:\n"
"  ft-tokenize --dataset identity --template qwen --model_name_or_path Qwen2-0.5B | ft-pack -o batches/\n"
"  ft-train --stage sft --model_name_or_path Qwen2-0.5B --train batches/ \\\n"
"    --finetuning_type lora --lora_target all --learning_rate 1e-4 \\\n"
"    --num_train_epochs 3 --gradient_accumulation_steps 8 --lr_scheduler_type cosine \\\n"
"    --warmup_ratio 0.1 --logging_steps 10 --save_steps 100 --output_dir out/ --plot_loss\n"
"  ft-plot out/trainer_log.jsonl\n";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	if (stop_flag) {   /* second signal: give up now, cleaning temporaries */
		ft_atomic_install_signal_cleanup();
		raise(sig);
		return;
	}
	stop_flag = sig;
	/* the next signal takes the default path */
	ft_atomic_install_signal_cleanup();
}

static void install_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* ---- progress and log display ------------------------------------------- */

static void on_event(void *ctx, ft_train_event ev, const ft_trainlog_entry *e, const char *detail)
{
	(void)ctx;
	switch (ev) {
	case FT_EV_STEP:
		dist_test_fault(e->current_steps);
		ft_progress("%lld/%lld [%s<%s] %3.0f%% loss %.4f lr %.3g epoch %.2f %.0f tok/s",
			    (long long)e->current_steps, (long long)e->total_steps, e->elapsed_time,
			    e->remaining_time, e->percentage, e->loss, e->lr, e->epoch,
			    isnan(e->throughput) ? 0.0 : e->throughput);
		break;
	case FT_EV_LOG:
		if (ft_verbose >= 1) {
			ft_progress_done();
			fprintf(stderr, "{'loss': %.4f, 'grad_norm': %.4g, 'learning_rate': %.4e, 'epoch': %.2f, "
				"'throughput': %.2f}\n", e->loss, e->grad_norm, e->lr, e->epoch, e->throughput);
		}
		break;
	case FT_EV_EVAL:
		if (ft_verbose >= 1) {
			ft_progress_done();
			fprintf(stderr, "{'eval_loss': %.4f, 'epoch': %.2f}\n", e->eval_loss, e->epoch);
		}
		break;
	case FT_EV_SAVE:
		note("saved %s", detail);
		break;
	}
}

/* ---- helpers --------------------------------------------------------------- */

static const char *const tokenizer_files[] = {
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
	"vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
};

static char **extra_files(const char *model_dir)
{
	size_t n = sizeof tokenizer_files / sizeof *tokenizer_files, k = 0;
	char **v = ft_xcalloc(n + 1, sizeof *v);
	for (size_t i = 0; model_dir && i < n; i++) {
		char *p = ft_xasprintf("%s/%s", model_dir, tokenizer_files[i]);
		if (access(p, R_OK) == 0) v[k++] = p;
		else free(p);
	}
	return v;
}

static void free_strings(char **v)
{
	for (char **x = v; *x; x++) free(*x);
	free(v);
}

/* The command line again, shell-quoted, with --resume_from_checkpoint
 * replaced, for the message after an interruption. */
static char *resume_command(int argc, char **argv, const char *ckpt)
{
	size_t cap = 256, n = 0;
	char *s = ft_xmalloc(cap);
	s[0] = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strncmp(a, "--resume_from_checkpoint", 24)) {
			if (!a[24] && i + 1 < argc) i++;
			continue;
		}
		if (!strncmp(a, "resume_from_checkpoint=", 23)) continue;
		char *q = ft_shell_quote(a);
		size_t need = n + strlen(q) + 2 + strlen(ckpt) + 40;
		if (need > cap) s = ft_xrealloc(s, cap = 2 * need);
		n += (size_t)sprintf(s + n, "%s%s", i ? " " : "", q);
		free(q);
	}
	s = ft_xrealloc(s, n + strlen(ckpt) + 64);
	sprintf(s + n, " --resume_from_checkpoint %s", ckpt);
	return s;
}

/* The manifest of each --train input, summed; checks stage and batch size. */
static void load_manifests(ft_cli_args *c, char **paths, size_t n, const char *what, ft_manifest *sum,
			   ft_batch_source *stdin_src)
{
	memset(sum, 0, sizeof *sum);
	for (size_t i = 0; i < n; i++) {
		ft_manifest m;
		/* stdin can be read once: its manifest comes from the header the
		 * batch source reads (see main) */
		if (!strcmp(paths[i], "-")) {
			if (n > 1) die_usage("--%s: '-' (stdin) cannot be combined with other inputs", what);
			if (ft_batch_source_open(stdin_src, (const char *const *)paths, n) < 0 ||
			    ft_batch_source_manifest(stdin_src, &m) < 0)
				die("--%s: <stdin>: %s", what, ft_errmsg());
		} else if (ft_manifest_load(paths[i], &m) < 0) {
			die("--%s: %s", what, ft_errmsg());
		}
		const char *want = grpo_stage(c) ? "ppo" : c->stage;   /* grpo samples from ppo prompts */
		if (m.stage[0] && strcmp(m.stage, want) != 0 && grpo_stage(c))
			die("%s: the batches were packed for stage '%s'; --stage grpo reads prompt batches "
			    "(ft-tokenize --stage ppo, then ft-pack)", ft_display_name(paths[i]), m.stage);
		if (m.stage[0] && strcmp(m.stage, want) != 0)
			die("%s: the batches were packed for stage '%s' but --stage is %s "
			    "(re-tokenize with --stage %s, or pass --stage %s)",
			    ft_display_name(paths[i]), m.stage, c->stage, c->stage, m.stage);
		check_tokenizer(c, paths[i], &m);
		if (m.pairwise && !c->pref)
			die("%s: pairwise batches (stage rm/dpo) need --stage rm or dpo",
			    ft_display_name(paths[i]));
		if (c->pref) pref_check_manifest(c, paths[i], &m);
		if (i && m.batch_size != sum->batch_size)
			die("%s: batch_size %d differs from the other inputs' %d", paths[i], m.batch_size,
			    sum->batch_size);
		if (m.epochs > 1 && !strcmp(what, "val"))
			die_usage("--val: %s holds %d epochs of training batches; give the validation split "
				  "(ft-pack --val_size: DIR/val)", ft_display_name(paths[i]), m.epochs);
		if (m.epochs > 1 && n > 1)
			die_usage("--%s: %s holds %d epochs of batches; several inputs are read as one "
				  "epoch, so give it alone (or pack all the data in one ft-pack run)", what,
				  ft_display_name(paths[i]), m.epochs);
		sum->epochs = m.epochs;
		sum->batch_size = m.batch_size;
		/* the longest rows of any input: what the device model plans for */
		if (m.seq_len > sum->seq_len) sum->seq_len = m.seq_len;
		if (m.rows_per_batch > sum->rows_per_batch) sum->rows_per_batch = m.rows_per_batch;
		sum->cutoff_len = m.cutoff_len;
		sum->n_batches += m.n_batches;
		sum->n_examples += m.n_examples;
		sum->n_tokens += m.n_tokens;
		memcpy(sum->stage, m.stage, sizeof m.stage);
	}
}

/* The HF Trainer reshuffles every epoch; batches packed for fewer epochs
 * than the run makes are read again in the same order.  Said once, on
 * stderr, with the fix. */
static void note_epoch_reuse(const ft_cli_args *c, const ft_manifest *m, int64_t need)
{
	if (ft_verbose < 1) return;
	warn("note: %s holds %d epoch%s of batches and this run makes %lld, so batch orders repeat "
	     "(ft-pack --num_train_epochs %lld reshuffles every epoch, as the HF Trainer does)",
	     ft_display_name(c->train[0]), m->epochs, m->epochs == 1 ? "" : "s", (long long)need,
	     (long long)need);
}

/* --rope_scaling as llamafactory's configure_rope: its factor from the
 * batches' cutoff_len, and the reason when it does not apply. */
static void rope_scaling(ft_cli_args *c, const char *cfg)
{
	ft_config conf;
	const char *why;
	if (!c->tune.rope_scaling) return;
	if (ft_config_load(cfg, &conf) < 0) die("%s", ft_errmsg());
	int rc = ft_config_rope_override(&conf, c->tune.rope_scaling, c->tune.model_max_length, &why);
	if (rc < 0) die_usage("%s", ft_errmsg());
	if (rc == 1) {
		warn("--rope_scaling %s: %s (cutoff_len %lld)", c->tune.rope_scaling, why,
		     c->tune.model_max_length);
		c->tune.rope_scaling = NULL;
	} else if (ft_verbose >= 1) {
		warn("--rope_scaling %s: factor %g, max_position_embeddings %d", conf.rope_type,
		     conf.rope_factor, conf.max_position_embeddings);
	}
}

/* PEFT finds target modules by name: Phi-3 has qkv_proj and gate_up_proj
 * where the others have q/k/v_proj and gate/up_proj, and a name the
 * model lacks is an error there ("Target modules ... not found"). */
static void check_target_names(const ft_cli_args *c, const ft_model *m)
{
	static const char *const split[] = { "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj" };
	static const char *const fused[] = { "qkv_proj", "gate_up_proj" };
	int phi3 = ft_model_config(m)->fused;
	if ((c->tune.type != FT_FT_LORA && c->tune.type != FT_FT_OFT) || adapters_resumed(c)) return;
	char *s = ft_xstrdup(c->lora_target), *save = NULL;
	for (char *t = strtok_r(s, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
		for (size_t i = 0; i < (phi3 ? 5 : 2); i++)
			if (!strcmp(t, phi3 ? split[i] : fused[i]))
				die("--lora_target %s: the model has no such module (%s)", t,
				    phi3 ? "Phi-3 fuses them: qkv_proj, o_proj, gate_up_proj, down_proj"
					 : "qkv_proj and gate_up_proj are Phi-3's");
	free(s);
}

static ft_model *load_model(ft_cli_args *c)
{
	ft_model *m;
	char *rcfg = c->from_scratch && c->config ? ft_xstrdup(c->config)
		   : c->model ? ft_xasprintf("%s/config.json", c->model) : NULL;
	if (rcfg) rope_scaling(c, rcfg);
	free(rcfg);
	if (c->from_scratch) {
		char *cfg = c->config ? ft_xstrdup(c->config)
			  : c->model ? ft_xasprintf("%s/config.json", c->model) : NULL;
		if (!cfg) die_usage("--train_from_scratch needs --config CONFIG.json (or --model_name_or_path)");
		ft_config conf;
		if (ft_config_load(cfg, &conf) < 0) die("%s", ft_errmsg());
		m = ft_model_from_config(&conf, &c->tune);
		free(cfg);
	} else {
		if (!c->model) die_usage("--model_name_or_path is required (or --train_from_scratch --config FILE)");
		m = ft_model_load(c->model, &c->tune);
	}
	if (!m) die("%s", ft_errmsg());
	check_target_names(c, m);
	vocab_model(c, m);   /* LLaMA-Factory's patch_model, before init_adapter */
	adapters_load(c, m);
	note_quant_memory(m, &c->tune);
	return m;
}

/* Tokens (B*T) and row length of a pack output's micro-batches. */
static void batch_shape(const ft_manifest *m, int *max_tokens, int *max_seq)
{
	int rows = m->rows_per_batch > 0 ? m->rows_per_batch : m->batch_size;
	if (rows * m->seq_len > *max_tokens) *max_tokens = rows * m->seq_len;
	if (m->seq_len > *max_seq) *max_seq = m->seq_len;
}

/* rm's value head is stepped whole beside the device's ZeRO-1 slices
 * (ft_pref_model_cuda_zero) */
static const char rm_zero_cpu_only[] =
	"under mpirun ZeRO-1 of --stage rm runs on the CPU (the GPU's slices leave out its value head)";
static int rm_stage(const ft_cli_args *c) { return c->pref && pref_stage_of(c->stage) == FT_PREF_RM; }

int device_pick(ft_cli_args *c, ft_model *m, int *index)
{
	int idx;
	char why[5000];
	int kind = ft_device_resolve(c->device, &idx, why, sizeof why);
	if (kind < 0) {
		if (strcmp(c->device, "auto") && strncmp(c->device, "cuda", 4))
			die_usage("--device: '%s' is not a device (cpu, cuda, cuda:N, auto)", c->device);
		if (!strncmp(ft_errmsg(), "--device '", 10)) die_usage("%s", ft_errmsg());   /* cuda:x */
		die("%s", ft_errmsg());
	}
	if (kind != FT_DEV_CPU && !strcmp(c->device, "auto")) {
		/* auto means the GPU when it can run this job, else the CPU */
		const char *cpu_only = ft_train_extras_cpu_only(c, m) ? ft_train_extras_cpu_only(c, m)
				       : c->compute_accuracy ? "--compute_accuracy runs on the CPU only in ft"
				       : rm_stage(c) && c->t.dist && c->zero ? rm_zero_cpu_only
				       : ft_train_cuda_supports(m) < 0 ? ft_errmsg() : NULL;
		if (cpu_only) {
			warn("note: --device auto: training on the CPU: %s", cpu_only);
			kind = FT_DEV_CPU;
			why[0] = 0;
		}
	}
	if (kind == FT_DEV_CPU) {
		if (c->device_given && why[0]) warn("note: --device %s: running on the CPU (%s)", c->device, why);
		if (c->bf16 || c->fp16)
			warn("note: --%s: the CPU computes in float32; full weights are saved in the config's dtype",
			     c->bf16 ? "bf16" : "fp16");
	}
	/* one GPU per rank: the rank on this node picks it, unless named */
	ft_dist *d = c->t.dist;
	if (kind != FT_DEV_CPU && d && strchr(c->device, ':') == NULL) {
		int ngpu = ft_device_cuda_count(NULL, 0);
		idx = ft_dist_local_rank();
		if (ngpu > 0 && idx >= ngpu)
			die("--device %s: rank %d is local rank %d but this node has %d GPU%s: start at most "
			    "%d ranks per node", c->device, ft_dist_rank(d), idx, ngpu, ngpu == 1 ? "" : "s", ngpu);
	}
	*index = idx;
	return kind;
}

void device_desc(const ft_cli_args *c, int idx, char *desc, size_t n)
{
	char name[256];
	ft_device_cuda_count(name, sizeof name);
	const char *prec = c->bf16 ? "bf16" : c->fp16 ? "fp16" : "fp32";
	if (idx == 0) snprintf(desc, n, "cuda:0 (%s), %s", name, prec);   /* the probe names device 0 */
	else snprintf(desc, n, "cuda:%d, %s", idx, prec);
}

/* --device: bind the model on the CPU or the GPU; desc says which, for
 * the log (trainer_state.json) and stderr.  Returns 1 on the GPU. */
static int bind_model(ft_cli_args *c, ft_model *m, const ft_manifest *tm, const ft_manifest *vm,
		      ft_train_model *t, char *desc, size_t n)
{
	int idx, kind = device_pick(c, m, &idx);
	if (kind == FT_DEV_CPU) {
		snprintf(desc, n, "cpu");
		*t = c->pref ? pref_bind(c, m, NULL) : ft_train_model_of(m);
		return 0;
	}
	ft_dist *d = c->t.dist;
	if (d && rm_stage(c) && c->zero)
		die_usage("--zero %d --stage rm --device %s: %s", c->zero, c->device, rm_zero_cpu_only);
	ft_cuda_opts o = { .precision = c->bf16 ? FT_CUDA_BF16 : c->fp16 ? FT_CUDA_F16 : FT_CUDA_F32,
			   .device = idx };
	if (d && c->zero) {   /* ZeRO-1: this rank's slice of the moments only */
		o.zero_ranks = ft_dist_size(d);
		o.zero_rank = ft_dist_rank(d);
	}
	if (c->do_train) batch_shape(tm, &o.max_tokens, &o.max_seq);
	if (c->n_val) batch_shape(vm, &o.max_tokens, &o.max_seq);
	if (c->pref) *t = pref_bind(c, m, &o);
	else if (ft_train_model_of_cuda(m, &o, t) < 0) die("--device %s: %s", c->device, ft_errmsg());
	/* after the device model exists: NCCL binds to this thread's device */
	if (d && ft_dist_nccl_open(d) < 0) die("%s", ft_errmsg());
	if (d && c->zero && c->pref && ft_pref_model_cuda_zero(&c->pref_pm, d) < 0) die("%s", ft_errmsg());
	if (d && c->zero && !c->pref) ft_cuda_train_zero(t, d);
	char plan[256];
	ft_cuda_model *dm = c->pref ? ft_pref_model_cuda_device(&c->pref_pm) : ft_cuda_train_device(t);
	ft_cuda_plan_format(ft_cuda_model_plan(dm), plan, sizeof plan);
	device_desc(c, idx, desc, n);
	warn("note: training on %s; device memory planned %s", desc, plan);
	if (!c->pref && ft_cuda_train_ref(t)) {
		ft_cuda_plan_format(ft_cuda_model_plan(ft_cuda_train_ref(t)), plan, sizeof plan);
		warn("note: the ASFT reference model on the device: planned %s", plan);
	}
	note_quant_device(m, &c->tune, c->bf16 || c->fp16);
	return 1;
}

/* --do_eval without --do_train: evaluate and write the results files. */
static int eval_only(ft_cli_args *c, ft_train_model *tm, ft_batch_source *val)
{
	double loss;
	int64_t nb, rows;
	if (ft_dist_rank(c->t.dist) != 0) return 0;   /* rank 0 evaluates and writes */
	if (ft_mkdirs(c->output_dir) < 0) die("%s", ft_errmsg());
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (ft_evaluate(tm, val, &loss, &nb, &rows) < 0) die("evaluation: %s", ft_errmsg());
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double rt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
	const char *k[5 + FT_MAX_METRICS] = { "eval_loss", "eval_runtime", "eval_samples_per_second",
					      "eval_steps_per_second", "perplexity" };
	double v[5 + FT_MAX_METRICS] = { loss, round(rt * 1e4) / 1e4, rt > 0 ? round(rows / rt * 1e3) / 1e3 : 0,
					 rt > 0 ? round(nb / rt * 1e3) / 1e3 : 0, exp(loss) };
	size_t n = 5 + (tm->metrics ? tm->metrics(tm->self, 1, k + 5, v + 5, FT_MAX_METRICS) : 0);
	if (ft_save_results(c->output_dir, "eval_results.json", k, v, n) < 0 ||
	    ft_save_results(c->output_dir, "all_results.json", k, v, n) < 0)
		die("%s", ft_errmsg());
	if (ft_verbose >= 1)
		fprintf(stderr, "***** eval metrics *****\n  eval_loss  = %.4f\n  perplexity = %.4f\n"
			"  batches    = %lld\n", loss, exp(loss), (long long)nb);
	return 0;
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	ft_lfargs a = {0};
	int first = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			fputs(usage, stdout);
			print_quant_help(stdout);
			return 0;
		}
	}
	/* -q / -v are ours, not LLaMA-Factory keys */
	char **rest = ft_xcalloc(argc + 1, sizeof *rest);
	int nrest = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-q")) ft_verbose--;
		else if (!strcmp(argv[i], "-v")) ft_verbose++;
		else rest[nrest++] = argv[i];
	}
	if (nrest == 0) {
		fputs(usage, stderr);
		return FT_EXIT_USAGE;
	}
	size_t l0 = strlen(rest[0]);
	if (rest[0][0] != '-' && !strchr(rest[0], '=') &&
	    ((l0 > 5 && !strcmp(rest[0] + l0 - 5, ".yaml")) || (l0 > 4 && !strcmp(rest[0] + l0 - 4, ".yml")) ||
	     (l0 > 5 && !strcmp(rest[0] + l0 - 5, ".json")))) {
		if (ft_lfargs_load_file(&a, rest[0]) < 0) die("%s", ft_errmsg());
		first = 1;
	} else {
		first = 0;
	}
	if (ft_lfargs_parse_argv(&a, nrest - first, rest + first) < 0) die_usage("%s", ft_errmsg());
	ft_cli_args c;
	int rc_ppo;
	memset(&c, 0, sizeof c);
	ft_train_args_parse(&a, &c);
	ft_dist *dist = dist_start(&c);
	c.t.dist = dist;
	c.t.zero = c.zero;

	if (!c.output_dir) die_usage("--output_dir is required");
	if (c.do_train < 0) c.do_train = c.do_eval > 0 || c.do_predict ? 0 : 1;
	if (c.do_predict && c.n_val == 0) die_usage("--do_predict needs --val BATCHES (the pairs to score)");
	if (c.do_eval < 0) c.do_eval = c.n_val > 0 && !c.eval_strategy_no;
	if (c.do_eval && c.n_val == 0) die_usage("--do_eval needs --val BATCHES");
	if (c.do_train && c.n_train == 0) die_usage("--train BATCHES is required (the output of ft-pack)");
	if (c.resume && !c.do_train) die_usage("--resume_from_checkpoint needs training");

	adapters_check(&c);
	vocab_tokenizer(&c);   /* the batches must come from the tokenizer with the new tokens */
	/* data first: counts and stage come from the manifests, before any work */
	ft_manifest tm_, vm_;
	ft_batch_source train = {0}, val = {0};
	if (c.do_train) {
		load_manifests(&c, c.train, c.n_train, "train", &tm_, &train);
		if (!train.self && ft_batch_source_open(&train, (const char *const *)c.train, c.n_train) < 0)
			die("--train: %s", ft_errmsg());
		if (c.batch_size && c.batch_size != tm_.batch_size)
			die("--per_device_train_batch_size %d does not match the batches (batch_size %d in the "
			    "manifest): re-pack with ft-pack --per_device_train_batch_size %d, or drop the flag",
			    c.batch_size, tm_.batch_size, c.batch_size);
		c.t.n_batches = tm_.n_batches;
		c.t.data_epochs = tm_.epochs;
		c.t.train_batch_size = tm_.batch_size;
		if (tm_.n_batches == 0) die("%s: no batches to train on", c.train[0]);
		ft_train_plan plan;
		if (ft_train_plan_make(&c.t, &plan) < 0) die_usage("%s", ft_errmsg());
		if (!strcmp(c.train[0], "-") && (plan.num_epochs > tm_.epochs || c.resume))
			die_usage("--train -: stdin can be read only once, and this run needs %s "
				  "(give the ft-pack output as a file or directory, or pack %lld epochs "
				  "with ft-pack --num_train_epochs %lld)",
				  c.resume ? "to skip to the checkpoint's position in a new process"
					   : "more than one pass over the batches",
				  (long long)plan.num_epochs, (long long)plan.num_epochs);
		if (plan.num_epochs > tm_.epochs && !ppo_stage(&c) && !grpo_stage(&c))   /* ppo reads its prompts once */
			note_epoch_reuse(&c, &tm_, plan.num_epochs);
		if (c.n_val && !strcmp(c.val[0], "-"))
			die_usage("--val -: evaluation reads the batches again at every --eval_steps: give a file");
	}
	if (c.n_val) {
		load_manifests(&c, c.val, c.n_val, "val", &vm_, &val);
		if (!val.self && ft_batch_source_open(&val, (const char *const *)c.val, c.n_val) < 0)
			die("--val: %s", ft_errmsg());
		if (c.eval_batch_size && c.eval_batch_size != vm_.batch_size)
			die("--per_device_eval_batch_size %d does not match the validation batches (%d)",
			    c.eval_batch_size, vm_.batch_size);
	}

	/* output directory rules (one that cannot be listed is not refused here:
	 * it fails where it is written) */
	char *resume = NULL;
	if (c.resume && ft_dist_rank(dist) == 0) {   /* the checkpoint is rank 0's (dist_resume) */
		if (!strcasecmp(c.resume, "true")) {
			resume = ft_last_checkpoint(c.output_dir);
			if (!resume) die("--resume_from_checkpoint true: %s", ft_errmsg());
		} else {
			resume = ft_xstrdup(c.resume);
		}
		struct stat st;
		if (stat(resume, &st) < 0 || !S_ISDIR(st.st_mode))
			die("--resume_from_checkpoint %s: not a checkpoint directory", resume);
	}
	if (c.resume) {
		resume = dist_resume(dist, resume);
	} else if (c.do_train && ft_dist_rank(dist) == 0 && output_dir_in_use(c.output_dir) && !c.overwrite) {
		die("output directory %s is not empty: use --overwrite_output_dir, or "
		    "--resume_from_checkpoint true to continue its last checkpoint", c.output_dir);
	}
	c.t.resume_dir = resume;
	c.t.output_dir = c.output_dir;

	/* llamafactory: model_max_length = cutoff_len */
	c.tune.model_max_length = c.do_train ? tm_.cutoff_len : c.n_val ? vm_.cutoff_len : 0;
	ft_model *m = load_model(&c);
	char **extra = extra_files(c.from_scratch ? NULL : c.model);   /* copied beside the outputs */
	vocab_extra_files(&c, extra);
	c.t.extra_files = (const char *const *)extra;
	if (ppo_stage(&c) || grpo_stage(&c)) {   /* their own loops (tools/ft-train/ppo.c, grpo.c) */
		if (!c.do_train || c.n_val) die_usage("--stage %s trains (no --do_eval, --val or --do_predict)", c.stage);
		ft_train_extras_model(&c, m);   /* DoRA (rl_args.c refuses the rest) */
		rc_ppo = grpo_stage(&c) ? grpo_run(&c, m, &train, &tm_) : ppo_run(&c, m, &train, &tm_);
		train.close(train.self);
		ft_model_free(m);
		dist_finish(dist);
		free_strings(extra);
		return rc_ppo;
	}
	ft_train_extras_model(&c, m);
	fp8_model(&c, m);
	ft_train_model tm;
	char device[512];
	int on_gpu = bind_model(&c, m, &tm_, &vm_, &tm, device, sizeof device);
	c.t.device = device;
	hfargs_bound(&c, m, on_gpu);
	c.t.optim_ext = ft_train_extras_setup(&c, m, on_gpu);
	int rc = 0;
	if (!c.do_train) {
		if (c.do_eval) rc = c.pref ? pref_eval_only(&c, &tm, &val) : eval_only(&c, &tm, &val);
	} else {
		if (ft_mkdirs(c.output_dir) < 0) die("%s", ft_errmsg());
		c.t.stop = &stop_flag;
		c.t.on_event = on_event;
		install_signals();
		ft_train_extras_begin(&c, m);
		ft_train_result r;
		if (ft_train(&c.t, &tm, &train, c.do_eval ? &val : NULL, &r) < 0) {
			/* a bad batch names the data it came from */
			if (!strncmp(ft_errmsg(), "batch ", 6))
				die("%s: %s", ft_display_name(c.train[0]), ft_errmsg());
			die("%s", ft_errmsg());
		}
		ft_progress_done();
		if (!r.interrupted && ft_dist_rank(dist) == 0) ft_train_extras_end(&c, m);
		if (r.interrupted && ft_dist_rank(dist) != 0) {
			rc = FT_EXIT_DATA;   /* rank 0 says where the checkpoint is */
		} else if (r.interrupted) {
			char *cmd = resume_command(argc, argv, r.checkpoint);
			char ranks[32] = "";   /* data parallel: the same launch */
			if (ft_dist_size(dist) > 1) snprintf(ranks, sizeof ranks, "mpirun -np %d ", ft_dist_size(dist));
			fprintf(stderr, "%s: interrupted (%s) at step %lld of %lld; checkpoint saved in %s\n"
				"%s: resume with:\n  %s%s\n", ft_progname, stop_flag == SIGTERM ? "SIGTERM" : "SIGINT",
				(long long)r.global_step, (long long)r.total_steps, r.checkpoint, ft_progname, ranks, cmd);
			if (c.n_train == 1 && !strcmp(c.train[0], "-"))
				fprintf(stderr, "%s: (the batches came from stdin: feed the same stream again)\n",
					ft_progname);
			free(cmd);
			rc = FT_EXIT_DATA;
		} else {
			if (ft_verbose >= 1) {
				fprintf(stderr, "***** train metrics *****\n  epoch      = %.4g\n  train_loss = %.4f\n"
					"  train_runtime = %.2fs\n  tokens = %lld\n", r.epoch, r.train_loss,
					r.train_runtime, (long long)r.tokens_seen);
				/* perplexity only where the loss is a token cross-entropy */
				if (!isnan(r.eval_loss) && !c.pref)
					fprintf(stderr, "  eval_loss  = %.4f\n  perplexity = %.4f\n", r.eval_loss,
						exp(r.eval_loss));
				else if (!isnan(r.eval_loss))
					fprintf(stderr, "  eval_loss  = %.4f\n", r.eval_loss);
			}
			if (c.plot_loss && ft_dist_rank(dist) == 0 && c.pref) {
				pref_plot(&c);
			} else if (c.plot_loss && ft_dist_rank(dist) == 0) {
				int n = ft_plot_loss_files(c.output_dir);
				if (n < 0) warn("--plot_loss: %s", ft_errmsg());
			}
		}
		train.close(train.self);
	}
	if (rc == 0 && c.do_predict) pref_predict(&c, &val);
	if (val.self) val.close(val.self);
	if (on_gpu) {
		ft_cuda_model *dm = c.pref ? ft_pref_model_cuda_device(&c.pref_pm) : ft_cuda_train_device(&tm);
		int64_t skipped = c.pref ? ft_pref_model_cuda_skipped(&c.pref_pm) : ft_cuda_train_skipped(&tm);
		if (ft_verbose >= 0)   /* the preference stages: a reference model's included */
			warn("note: peak GPU memory %.2f GiB", (double)tm.peak_bytes(tm.self) / (1 << 30));
		if (c.fp16 && ft_verbose >= 0)
			warn("note: fp16 loss scale %g at the end, %lld step%s skipped for overflow",
			     ft_cuda_loss_scale(dm), (long long)skipped, skipped == 1 ? "" : "s");
		if (!c.pref) ft_cuda_train_free(&tm);
	}
	if (c.pref) pref_free(&c);   /* with its device bindings */
	ft_train_extras_free(&c, c.t.optim_ext);
	vocab_free(&c);
	ft_model_free(m);
	dist_finish(dist);
	free_strings(extra);
	free(resume);
	for (size_t i = 0; i < c.n_train; i++) free(c.train[i]);
	for (size_t i = 0; i < c.n_val; i++) free(c.val[i]);
	free(c.train);
	free(c.val);
	free(rest);
	ft_lfargs_free(&a);
	return rc;
}
