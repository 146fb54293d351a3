/* ft-train.h - pieces of the ft-train tool */
#ifndef FT_TRAIN_TOOL_H
#define FT_TRAIN_TOOL_H

#include "cli/cli.h"
#include "cli/lfargs.h"
#include "cli/newtokens.h"
#include "format/batch_io.h"
#include "gen/generate.h"
#include "model/model.h"
#include "train/trainer.h"
#include "train/pref.h"
#include "train/ppo_rm.h"
#include "train/cuda_pref.h"
#include "train/dist.h"
#include "train/optim_ext.h"
#include "util/vec.h"

/* extras.c: LoRA+ and BAdam settings (NEFTune and LLaMA Pro are in tune) */
typedef struct {
	int loraplus, badam, badam_mode, badam_interval, badam_has_start, badam_start, badam_verbose;
	int pissa, pissa_iter, pissa_convert, dora, muon, adam_mini;
	int galore, galore_rank, galore_interval, galore_proj;
	int galore_layerwise;          /* as the stepped-after-backward equivalent (docs/EXTRAS.md) */
	int apollo, apollo_layerwise;  /* APOLLO (lib/train/optim_apollo.c) */
	ft_apollo_opts apollo_o;
	const char *apollo_target;
	double galore_scale;
	const char *galore_target;
	double loraplus_ratio, loraplus_embedding;
	int asft;                 /* use_asft_loss (lib/model/model_asft.c) */
	double asft_alpha;
	ft_param **params;        /* BAdam's: the model's trainable params */
} ft_train_extras;

/* vocab.c: LLaMA-Factory's vocabulary extension */
typedef struct {
	ft_new_tokens nt;
	int resize, init;         /* resize_vocab (or set by added tokens), FT_INIT_* */
	int emb_target;           /* --additional_target embed_tokens,lm_head */
	ft_tokenizer *tok;        /* the model's tokenizer with the new tokens */
} ft_vocab_args;

typedef struct {
	ft_train_opts t;
	ft_tune_opts tune;
	char stage[8];
	const char *model, *adapter, *config, *output_dir, *resume;
	const char *device;       /* --device as given: cpu (default), cuda[:N], auto */
	const char *lora_target;  /* --lora_target as given (module names per family) */
	int device_given;
	int from_scratch, overwrite, plot_loss, bf16, fp16, do_train, do_eval, eval_strategy_no;
	int batch_size, eval_batch_size;
	int allow_tokenizer_mismatch;
	int zero;                 /* --zero 0|1 (ZeRO stage) */
	int fp8;                  /* --fp8 in effect (fp8.c: pt and sft only) */
	double ddp_timeout;       /* --ddp_timeout seconds (1800) */
	int compute_accuracy;     /* hfargs.c: LLaMA-Factory's ComputeAccuracy in eval */
	int create_new_adapter;   /* adapters.c: merge every adapter, train a new one */
	char **train, **val;
	size_t n_train, n_val;
	/* the preference stages (pref.c) */
	int pref, do_predict, ref_is_policy;
	ft_pref_opts pref_opts;
	const char *ref_model, *ref_model_adapters;
	ft_model *ref;
	ft_pref *pref_state;
	/* --device cuda: the device bindings of the policy and of a reference
	 * model of its own (pref_gpu 2) */
	int pref_gpu;
	ft_pref_model pref_pm, pref_rpm;
	ft_train_extras x;
	ft_vocab_args v;
} ft_cli_args;

int vocab_known_key(const char *k);
void vocab_args_parse(ft_lfargs *a, ft_cli_args *c);
/* before the batches are checked: the tokenizer with the new tokens */
void vocab_tokenizer(ft_cli_args *c);
/* ":<sha256>" of that tokenizer when it has new tokens, else NULL */
const char *vocab_identity_sha(const ft_cli_args *c);
/* after the base is loaded, before an adapter: resize and initialize the
 * embeddings, and train them beside a new LoRA adapter */
void vocab_model(ft_cli_args *c, ft_model *m);
/* the extended tokenizer.json instead of the model's among the copied files */
void vocab_extra_files(ft_cli_args *c, char **extra);
void vocab_free(ft_cli_args *c);

/* fp8.c: LLaMA-Factory's fp8 settings; after the model is loaded, its
 * Float8Linear modules; why the GPU cannot run it (NULL: it can) */
int fp8_known_key(const char *k);
void fp8_args_parse(ft_lfargs *a, ft_cli_args *c);
void fp8_model(ft_cli_args *c, ft_model *m);

/* hfargs.c: transformers' and LLaMA-Factory's trainer settings of the pt
 * and sft loops (label smoothing; after ft_train_extras_parse) */
int hfargs_known_key(const char *k);
void hfargs_parse(ft_lfargs *a, ft_cli_args *c);
/* after the model is bound (on the GPU or not): compute_accuracy switched
 * on, or refused where it is not implemented */
void hfargs_bound(ft_cli_args *c, ft_model *m, int on_gpu);

struct ft_optim_ext;
int ft_train_extras_known(const char *key);
void ft_train_extras_parse(ft_lfargs *a, ft_cli_args *c);
/* Why the extras' optimizer runs on the CPU only (NULL: it runs on the GPU too). */
const char *ft_train_extras_cpu_only(const ft_cli_args *c, const ft_model *m);
/* After the model is bound: the optimizer extension (NULL: AdamW). */
struct ft_optim_ext *ft_train_extras_setup(ft_cli_args *c, ft_model *m, int on_gpu);
void ft_train_extras_free(ft_cli_args *c, struct ft_optim_ext *e);
/* PiSSA: the init after loading; pissa_convert's directories around training */
void ft_train_extras_model(ft_cli_args *c, ft_model *m);
void ft_train_extras_begin(ft_cli_args *c, ft_model *m);
void ft_train_extras_end(ft_cli_args *c, ft_model *m);

void ft_train_args_parse(ft_lfargs *a, ft_cli_args *c);
/* checks.c: die unless the batches of `path` were tokenized with the
 * model's tokenizer (both hashed; unknown on either side passes). */
/* Whether output_dir holds an earlier run's outputs.  What only a failed
 * or killed run left is not that: the temporaries of killed runs are
 * removed (ft_atomic_reclaim_in) and an empty trainer_log.jsonl ignored. */
int output_dir_in_use(const char *dir);
void check_tokenizer(const ft_cli_args *c, const char *path, const ft_manifest *m);
/* pref.c: --stage rm, dpo, kto */
int pref_known_key(const char *k);
int pref_stage_of(const char *stage);     /* FT_PREF_*, -1 for pt/sft */
void pref_args_parse(ft_lfargs *a, ft_cli_args *c);
void pref_check_manifest(const ft_cli_args *c, const char *path, const ft_manifest *m);
/* o NULL: the CPU model; else the device's options (train/cuda_pref.h) */
ft_train_model pref_bind(ft_cli_args *c, ft_model *m, const ft_cuda_opts *o);
void pref_free(ft_cli_args *c);
int pref_eval_only(ft_cli_args *c, ft_train_model *tm, ft_batch_source *val);
void pref_predict(ft_cli_args *c, ft_batch_source *val);
void pref_plot(const ft_cli_args *c);
/* TRL ValueHead's dropout: config.json's summary_dropout_prob, else 0.1 */
double pref_value_dropout(const ft_cli_args *c);
/* A frozen model: dir with the adapters (comma-separated, or NULL) merged in
 * (LLaMA-Factory's references and full reward models); dies on error. */
ft_model *pref_frozen_model(const char *what, const char *dir, const char *adapters, uint64_t seed);
/* A full reward model (--reward_model_type full, LLaMA-Factory's
 * create_reward_model): dir with its adapters merged and the
 * value_head.safetensors of the last adapter (of dir without adapters,
 * as load_model's add_valuehead), of the policy's vocabulary and hidden
 * size; dies on error. */
void pref_rl_reward_full(ft_ppo_rm *rm, const char *dir, const char *adapters, uint64_t seed,
			 const ft_model *policy);
/* The PPO and GRPO reference model (NULL: a LoRA policy with its adapters
 * off); dies when it cannot load or its vocabulary is not the policy's. */
ft_model *pref_rl_ref(const ft_cli_args *c, const ft_model *m);
/* ppo.c: --stage ppo (docs/PPO.md) */
int ppo_known_key(const char *k);
void ppo_args_parse(ft_lfargs *a, ft_cli_args *c);
int ppo_stage(const ft_cli_args *c);
int ppo_run(ft_cli_args *c, ft_model *m, ft_batch_source *train, const ft_manifest *man);
/* the prompts of one pass over ppo batches and, when extra is not NULL,
 * each one's extra dataset columns ((*extra)[i]: an object, or NULL when
 * its batch has none); free both with prompts_free.  The model's eos
 * (-1: none). */
ft_i32vec *read_prompts(ft_batch_source *src, const ft_manifest *man, size_t *n, json_t ***extra);
void prompts_free(ft_i32vec *q, json_t **extra, size_t n);
int32_t model_eos(const char *dir);
/* Every file of from_dir renamed into output_dir (each rename atomic);
 * dies on error.  The last step of ppo's and grpo's final outputs. */
void move_outputs(const char *from_dir, const char *output_dir);
/* main.c: --device resolved for m: FT_DEV_CPU (after the notes saying
 * why, --device auto choosing the CPU for a job the device cannot run) or
 * FT_DEV_CUDA with the device's index; dies on a bad --device. */
int device_pick(ft_cli_args *c, ft_model *m, int *index);
/* "cuda:0 (NAME), bf16": the device as the logs name it */
void device_desc(const ft_cli_args *c, int idx, char *desc, size_t n);
/* rl_device.c: --stage grpo's and ppo's models on the device (none on the CPU):
 * on 0 (CPU), 1 (the policy), 2 (and a reference of its own) */
typedef struct {
	int on;
	ft_pref_model pm, rpm;
	char desc[512];
	int index, precision;    /* the device and its ft_cuda_precision, for the rollouts' decoder */
	struct ft_cuda_decoder *dec;   /* the rollouts' decoder, kept from the first generation */
	size_t decoder;          /* the largest decoder plan, bytes */
	ft_cuda_infer_knobs knobs;   /* the stage's settings that shrink the decoder */
} rl_device;
/* 1 when --device puts the policy (value_head: with one, PPO's) and ref
 * (NULL: none) on the GPU, planned for micro-batches of rows x max_seq
 * tokens; 0 on the CPU. */
int rl_device_bind(ft_cli_args *c, ft_model *m, ft_model *ref, int value_head, int rows, int max_seq,
		   rl_device *d);
/* The longest of n prompts (at least 1): with the completion length, the
 * device's row length. */
int rl_longest(const ft_i32vec *q, size_t n);
/* grpo's and ppo's generate callback context: the generation settings
 * (each call sets the seed) and the device (NULL: the CPU). */
typedef struct {
	ft_gen_opts g;
	rl_device *dev;
} rl_gen;
/* One generation's completions (ft_generate's contract, no callback): on
 * the CPU decoder when d is NULL or off, else on the device KV-cache
 * decoder of m, built at the first call and kept, its trained tensors
 * refreshed from m (the loops copy the policy's weights into m first) at
 * each later one; -1 after ft_fail when it cannot be created (the reason,
 * e.g. memory: no silent fallback to the CPU). */
int rl_generate(rl_device *d, ft_model *m, const ft_i32vec *q, size_t n, const ft_gen_opts *o,
		ft_i32vec *outs);
/* The peak memory and fp16 notes, then the bindings freed. */
void rl_device_end(const ft_cli_args *c, rl_device *d);
/* rl_args.c: --stage ppo's and grpo's refusals of the optimizer extras
 * and PiSSA, ppo's NEFTune note (after ft_train_extras_parse) */
void rl_args_check(ft_cli_args *c);
/* grpo.c: --stage grpo (docs/GRPO.md) on ppo prompt batches */
int grpo_known_key(const char *k);
void grpo_args_parse(ft_lfargs *a, ft_cli_args *c);
int grpo_stage(const ft_cli_args *c);
int grpo_run(ft_cli_args *c, ft_model *m, ft_batch_source *train, const ft_manifest *man);
/* dist.c: join `mpirun -np N ft-train` (NULL: one process); dist_finish
 * leaves it; dist_test_fault is the tests' FT_DIST_TEST_FAULT hook. */
ft_dist *dist_start(ft_cli_args *c);
void dist_finish(ft_dist *d);
/* The checkpoint directory this rank resumes from: rank 0 resolved dir
 * (taken); the others get a private copy of its files (dist.h), removed
 * at exit.  One process: dir. */
char *dist_resume(ft_dist *d, char *dir);
void dist_test_fault(int64_t step);
/* qlora.c: --help's memory note; the loaded quantized model's bytes */
void print_quant_help(FILE *f);
void note_quant_memory(const ft_model *m, const ft_tune_opts *t);
/* adapters.c: --adapter_name_or_path A[,B...] and --create_new_adapter */
void adapters_check(const ft_cli_args *c);
void adapters_load(ft_cli_args *c, ft_model *m);
int adapters_resumed(const ft_cli_args *c);   /* an adapter trains on (not a new one) */
const char *adapters_last(const ft_cli_args *c);
void note_quant_device(const ft_model *m, const ft_tune_opts *t, int half);

#endif
