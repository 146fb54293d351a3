/* model.h - Llama / Mistral / Qwen2 / Qwen3 / Gemma 2-3 decoder models for training and
 * inference: configuration, parameters, forward and backward.
 *
 * The CPU path (lib/model*.c, lib/layers*.c) is the readable reference;
 * the CUDA path mirrors it layer by layer with the same function names.
 */
#ifndef FT_MODEL_H
#define FT_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "format/batch.h"
#include "model/layers.h"
#include "util/vec.h"

typedef enum { FT_ARCH_LLAMA, FT_ARCH_MISTRAL, FT_ARCH_QWEN2,
	       FT_ARCH_QWEN3, FT_ARCH_GEMMA2, FT_ARCH_GEMMA3, FT_ARCH_PHI3 /* lib/model/arch.c */ } ft_arch;

typedef struct {
	ft_arch arch;
	int vocab_size, hidden_size, intermediate_size;
	int num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
	int max_position_embeddings;
	double rms_norm_eps, rope_theta;
	char rope_type[16];            /* "default" linear dynamic llama3 */
	double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
	int rope_original_max_pos;
	int tie_word_embeddings;
	int attention_bias;            /* q/k/v biases (Qwen2) */
	char torch_dtype[16];
	int sliding_window;            /* Mistral; 0 = none */
	double initializer_range;      /* std of the random init (default 0.02) */
	int qk_norm;                   /* per-head RMSNorm on q and k before RoPE (Qwen3) */
	double rope_beta_fast, rope_beta_slow, rope_attention_factor;   /* yarn */
	int rope_truncate;
	/* Gemma 2/3 (lib/model/model_gemma.c): norms scale by 1 + weight,
	 * post-attention and post-MLP norms, embeddings times sqrt(hidden),
	 * gelu_pytorch_tanh, scores scaled by query_pre_attn_scalar^-0.5 and
	 * soft-capped (0 = off); sliding layers (bit l of sliding_layers) use
	 * sliding_window and the default RoPE with rope_local_theta. */
	int gemma;
	double query_pre_attn_scalar, attn_softcap, final_softcap, rope_local_theta;
	uint64_t sliding_layers[4];
	/* Phi-3: q, k, v stored as one qkv_proj and gate, up as gate_up_proj
	 * (row blocks of one tensor; LoRA on the fused module, one A) */
	int fused;
	/* longrope (lib/model/rope.c): per-frequency factors, rotary_dim/2
	 * each; the long ones beyond rope_original_max_pos positions */
	float rope_short[128], rope_long[128];
	/* partial rotary embeddings (Phi-4-mini's partial_rotary_factor):
	 * RoPE on the first rotary_dim = int(head_dim * factor) values of each
	 * head; 0 = all of head_dim (ftp_rotary_dim) */
	double partial_rotary_factor;
	int rotary_dim;
} ft_config;

/* llamafactory's configure_rope on a parsed config (lib/model/rope.c):
 * 0 applied, 1 left alone (model_max_length within the original length;
 * *why says so), -1 on an unknown type. */
int ft_config_rope_override(ft_config *c, const char *type, long long model_max_length,
			    const char **why);
/* config.json (a jansson json_t *) made to carry c's RoPE: its
 * rope_parameters and max_position_embeddings (rope_scaling dropped). */
void ft_config_rope_to_json(void *config_json, const ft_config *c);
/* c's RoPE as layers.h's ft_rope_inv_freq and ft_rope_scale_tables take
 * it (lib/model/rope.c). */
void ft_rope_params_of(const ft_config *c, ft_rope_params *p);
/* Parses and checks every number's range (the loaders' one check). */
int ft_config_load(const char *config_json, ft_config *c);
/* Bytes of the base weights in float32: the memory plan checked (against
 * MemAvailable, or FT_MEMORY_AVAILABLE) before a model is allocated. */
double ft_config_weight_bytes(const ft_config *c);

/* FT_FT_OFT: PEFT's OFT on the lora_targets modules (LLaMA-Factory passes
 * lora_target to OFTConfig), lib/model/model_oft.c */
typedef enum { FT_FT_LORA, FT_FT_FREEZE, FT_FT_FULL, FT_FT_OFT } ft_finetuning_type;
enum { FT_EXTRA_EMBED = 1, FT_EXTRA_NORM = 2, FT_EXTRA_HEAD = 4 };
enum { FT_SFT_LOSS_CE, FT_SFT_LOSS_DFT, FT_SFT_LOSS_EAFT, FT_SFT_LOSS_ASFT };

/* Bits for LoRA targets and freeze modules. */
enum {
	FT_MOD_Q = 1, FT_MOD_K = 2, FT_MOD_V = 4, FT_MOD_O = 8,
	FT_MOD_GATE = 16, FT_MOD_UP = 32, FT_MOD_DOWN = 64,
	FT_MOD_ALL_LINEAR = 127,
	FT_MOD_SELF_ATTN = FT_MOD_Q | FT_MOD_K | FT_MOD_V | FT_MOD_O,
	FT_MOD_MLP = FT_MOD_GATE | FT_MOD_UP | FT_MOD_DOWN,
};

typedef struct {
	ft_finetuning_type type;
	int lora_rank;                 /* default 8 */
	double lora_alpha;             /* default 2*rank */
	double lora_dropout;
	unsigned lora_targets;         /* FT_MOD_* */
	int use_rslora;
	int freeze_trainable_layers;   /* last N; negative = first N */
	unsigned freeze_trainable_modules; /* FT_MOD_*, 0 = all in those layers */
	/* freeze_extra_modules (FT_EXTRA_*): trainable beside the layers in
	 * freeze tuning, by LLaMA-Factory's substring match of each name:
	 * "norm" matches every norm of every layer as well as model.norm */
	unsigned freeze_extra;
	int gradient_checkpointing;
	uint64_t seed;
	/* extras (lib/model/extras.c): NEFTune's alpha (0 = off), LLaMA Pro's
	 * trainable layers (every (L/n)-th, freeze tuning) */
	double neftune_noise_alpha;
	int use_llama_pro;
	/* set by ft_model_pissa_init (lib/model/lora_pissa.c), saved as
	 * init_lora_weights "pissa" (iter < 0) or "pissa_niter_<iter>" */
	int pissa_init, pissa_iter;
	/* set by ft_model_dora_init / a use_dora adapter (lib/model/lora_dora.c) */
	int use_dora;
	/* SFT token losses (lib/model/model_tokloss.c): FT_SFT_LOSS_* and
	 * EAFT's alpha (LLaMA-Factory's use_dft_loss / use_eaft_loss) */
	int sft_loss;
	double eaft_alpha;
	double asft_alpha;             /* ASFT's KL weight (ft_model_set_asft) */
	/* OFT (FT_FT_OFT): OFTConfig's r and oft_block_size (one non-zero;
	 * LLaMA-Factory's oft_rank 0 and oft_block_size 32 by default) */
	int oft_rank, oft_block_size;
	/* QLoRA (lib/model/quant.h): 0, 4 or 8 bits for the decoder's base
	 * linears; 4-bit FP4 instead of NF4; 4-bit absmaxes quantized too */
	int quantization_bit, quantization_fp4, double_quantization;
	/* --rope_scaling (llamafactory's configure_rope): "linear", "dynamic",
	 * "yarn" or "llama3", NULL for the config's; model_max_length is the
	 * training cutoff_len (0: inference, factor 2). */
	const char *rope_scaling;
	long long model_max_length;
	/* PEFT's modules_to_save = {embed_tokens, lm_head} beside LoRA or OFT
	 * (set by ft_model_train_embeddings / an adapter that has them) */
	int modules_to_save;
	/* transformers' label_smoothing_factor (LabelSmoother) on the plain
	 * token loss, training and evaluation; 0 = off */
	double label_smoothing;
} ft_tune_opts;
/* Defaults applied when a field is 0: lora_rank 8, lora_alpha 2*rank (as
 * LLaMA-Factory), lora_targets q_proj|v_proj.
 * Random numbers (ft_model_from_config weights, LoRA A init) come from
 * xoshiro256** seeded with splitmix64(seed ^ FNV-1a(tensor name)): one
 * stream per tensor, reproducible, not torch's generator (parity tests
 * load A/B from fixtures).  LoRA A is U(-1/sqrt(in), 1/sqrt(in)) as
 * torch's kaiming_uniform_(a=sqrt(5)), B zero.  lora_dropout masks are a
 * hash of (seed, call number, layer, module, element): recomputed, never
 * stored, identical under gradient checkpointing. */

/* One tensor of the model.  `name` uses Hugging Face names for base
 * weights and PEFT's saved names for adapters
 * ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
 * Every tensor is listed; frozen ones have trainable == 0 and g == NULL.
 * A tied lm_head is the single "model.embed_tokens.weight". */
typedef struct {
	char *name;
	float *w, *g;
	size_t n;
	int ndim;
	int64_t shape[2];
	int trainable;
	int decay;                     /* weight decay applies (not bias/norm) */
} ft_param;

/* Passes over many tensors as one range, elements laid end to end:
 * thread t of nt takes the t-th slice of the `total` elements (the sum of
 * ps[k]->n) and fn gets each tensor's part of it, [i0, i1) of tensor k.
 * One parallel region then covers a whole pass (zero_grad, AdamW,
 * clipping): a small model's many small tensors would otherwise each pay
 * a fork and a join.  Passes below FT_PARAMS_SPLIT elements stay on one
 * thread. */
#define FT_PARAMS_SPLIT 65536
typedef void (*ft_param_part_fn)(ft_param *p, size_t k, size_t i0, size_t i1, void *ctx);
size_t ft_params_elements(ft_param *const *ps, size_t n);
void ft_params_slice(ft_param *const *ps, size_t n, size_t total, int t, int nt,
		     ft_param_part_fn fn, void *ctx);

typedef struct ft_model ft_model;

ft_model *ft_model_load(const char *model_dir, const ft_tune_opts *o);
ft_model *ft_model_from_config(const ft_config *c, const ft_tune_opts *o);
void ft_model_free(ft_model *m);
const ft_config *ft_model_config(const ft_model *m);

size_t ft_model_nparams(const ft_model *m);
ft_param *ft_model_param(ft_model *m, size_t i);
void ft_model_zero_grad(ft_model *m);

/* Forward and backward over one micro-batch.  Accumulates into the
 * gradients d(grad_scale * sum of token losses)/dparam, and returns the
 * summed cross-entropy over label tokens and their count, so callers can
 * reduce exactly as transformers does across accumulation steps
 * (grad_scale = 1 / label tokens in the whole accumulated step). */
int ft_model_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
			      double *loss_sum, int64_t *n_tokens);
/* LLaMA-Factory's ASFT loss (use_asft_loss, lib/model/model_asft.c): from
 * now on forward_backward and forward (without logits) return each
 * micro-batch's mean DFT loss plus alpha times its mean KL(ref || model)
 * over the label positions, with *n_tokens = 1 (grad_scale then scales
 * that mean).  ref (frozen, same vocabulary; not owned, outlives m) gives
 * the reference logits.  -1 when the two do not fit. */
int ft_model_set_asft(ft_model *m, ft_model *ref, double alpha);
int ft_model_asft_on(const ft_model *m);
ft_model *ft_model_asft_ref(const ft_model *m);   /* the reference, NULL without ASFT */
/* The DFT/EAFT token losses' pieces (lib/model/model_tokloss.c), shared
 * with the device binding (lib/train/cuda_losses.c): the label positions
 * of b, the vocabulary check (kind FT_SFT_LOSS_*), and from the label
 * log-probs logp [B*T] the weights w [B*T] (0 off the labels; DFT
 * exp(logp), else we[k] for the k-th label position: EAFT's) and the
 * weighted loss sum -sum w logp. */
int ft_model_sft_loss(const ft_model *m, double *alpha);   /* FT_SFT_LOSS_*; EAFT's or ASFT's alpha */
int ft_tokloss_rows(const ft_batch *b);
int ft_tokloss_check(int kind, int V);
double ft_tokloss_weigh(const ft_batch *b, const float *logp, const double *we, double *w);
/* EAFT's weight of a label position from its top-20 entropy h:
 * (h / 3)^alpha. */
double ft_eaft_weight(double h, double alpha);
/* LoRA dropout masks depend on the number of forward_backward calls so
 * far; a resumed run sets it to the micro-batches already trained on, and
 * the masks continue exactly. */
void ft_model_set_dropout_position(ft_model *m, uint64_t calls);
/* Called inside the backward pass of ft_model_forward_backward as each
 * group of gradients becomes final for this call, so a data-parallel
 * caller can start summing them while the rest of the backward runs:
 * group = num_hidden_layers for the final norm and an untied lm_head,
 * then l for decoder layer l from the last layer down, then -1 for the
 * embeddings (a tied lm_head included).  Groups without gradients may be
 * skipped.  fn NULL turns it off. */
typedef void (*ft_grads_ready_fn)(void *ctx, int group);
void ft_model_set_grads_ready(ft_model *m, ft_grads_ready_fn fn, void *ctx);
/* The calls so far (what a checkpoint of a loop that is not ft_train's records). */
uint64_t ft_model_dropout_position(const ft_model *m);
/* LLaMA-Factory's compute_accuracy (train/sft/metric.py ComputeAccuracy
 * over eval_logit_processor's argmax): while on (set: on, sums cleared),
 * ft_model_forward without logits adds, for each row with label tokens,
 * the fraction of them whose argmax logit is the label; take returns the
 * sum of those fractions and the rows (then cleared).  The accuracy is
 * sum / rows.  Plain token loss only (not with DFT/EAFT/ASFT). */
void ft_model_set_accuracy(ft_model *m, int on);
void ft_model_accuracy_take(ft_model *m, double *sum, int64_t *rows);
/* Forward only: loss as above; logits [B*T*vocab] when logits != NULL. */
int ft_model_forward(ft_model *m, const ft_batch *b, float *logits,
		     double *loss_sum, int64_t *n_tokens);

/* PEFT-format adapter (adapter_model.safetensors + adapter_config.json)
 * or full weights as a HF model directory. */
int ft_model_save(ft_model *m, const char *dir);
int ft_model_load_adapter(ft_model *m, const char *adapter_dir);

/* Extensions (lib/model/model_io.c).
 * ft_model_save_full: HF model directory whatever the finetuning type;
 * dtype "float32" / "float16" / "bfloat16", or NULL for the config's
 * torch dtype ("dtype"/"torch_dtype"; float32 when absent).
 * ft_model_save_adapter: the PEFT adapter only (LoRA models).
 * ft_model_merge_lora: W += scale * B A into the base weights and drops
 * the adapters (the model becomes a plain frozen model).
 * ft_model_load_adapter rebuilds the LoRA parameters from the adapter's
 * config (format/adapter_config.h: r, lora_alpha, use_rslora,
 * target_modules; refused: other PEFT types, DoRA, rank_pattern,
 * alpha_pattern, layers_to_transform, modules_to_save): pointers from
 * ft_model_param() taken before it are invalid afterwards. */
int ft_model_save_full(ft_model *m, const char *dir, const char *dtype);
int ft_model_save_adapter(ft_model *m, const char *dir);
int ft_model_merge_lora(ft_model *m);
/* A new LoRA adapter as the model's options made its first one (rank,
 * alpha, targets, the seeded A init, B zero), after loaded adapters were
 * merged: LLaMA-Factory's create_new_adapter.  Refused on a quantized base. */
int ft_model_new_lora(ft_model *m);

/* Extras (lib/model/extras.c).  NEFTune: mag_norm = alpha / sqrt(T * d)
 * in float32 as transformers' hook computes it, and U(-mag, mag) noise
 * added to x from ft's generator (seed: one stream).  LLaMA Pro: whether
 * layer l of L is one of the n expanded, trainable ones. */
float ft_neftune_magnitude(double alpha, int T, int D);
/* The first layer's input x [B*T, d] for ids: the embedding rows, times
 * sqrt(d) for Gemma, then with noised (a training forward) NEFTune's
 * noise at alpha, of the stream of m's current forward call (seed, call
 * number), as transformers' embedding module and its hook. */
void ft_model_embed(ft_model *m, const int32_t *ids, int B, int T, int noised, float *x);
void ft_neftune_add(float *x, size_t n, float mag, uint64_t seed);
uint64_t ft_neftune_seed(uint64_t seed, uint64_t calls);
/* NEFTune while sampling: TRL's GRPOTrainer generates inside
 * training_step, in train mode, so transformers' hook noises every
 * forward of model.generate at that forward's width (the left-padded
 * prompts' in the prefill, 1 for each new token).  on != 0: the
 * decoders of m (ft_infer_forward, and the CUDA decoder built from m)
 * add NEFTune's noise from `stream` (ft_neftune_tokens, the k-th forward
 * of a KV cache drawing stream k); 0 (the default): none, as in eval. */
void ft_model_set_gen_neftune(ft_model *m, int on, uint64_t stream);
/* One decoder forward's noise: n tokens, token i of row rows[i] (<
 * nrows), x[i*D .. (i+1)*D) += U(-mag, mag) with mag =
 * ft_neftune_magnitude(alpha, W, D), W the most tokens one row has in
 * this forward (the width of HF's padded batch), drawn in token order
 * from ft_neftune_seed(stream, k). */
void ft_neftune_tokens(float *x, const int *rows, int n, int nrows, double alpha, int D, uint64_t stream,
		       uint64_t k);
int ft_llama_pro_layer(int L, int n, int l);

/* PiSSA (lib/model/lora_pissa.c), PEFT's init_lora_weights "pissa"
 * (niter < 0: exact SVD) or "pissa_niter_<niter>" (torch.svd_lowrank):
 * A, B from the top-r singular triplets of each adapted base weight, the
 * base replaced by the residual W - scale B A.  The adapter is then saved
 * with that init_lora_weights, and loading it (ft_model_load_adapter)
 * redoes the init on the base before reading A and B, as PEFT does.
 * ft_model_pissa_save_plain: the adapter with init_lora_weights true
 * (LLaMA-Factory's pissa_init/ and pissa_backup/ directories).
 * ft_model_pissa_save_converted: PEFT's conversion to a plain LoRA
 * adapter of rank 2r against the initial adapter in init_dir:
 * A' = [A; A0], B' = [B, -B0], alpha x2 (x sqrt 2 with rslora). */
int ft_model_pissa_init(ft_model *m, int niter);
int ft_model_pissa_save_plain(ft_model *m, const char *dir);
int ft_model_pissa_save_converted(ft_model *m, const char *init_dir, const char *dir);

/* DoRA (lib/model/lora_dora.c), PEFT's use_dora: a trainable magnitude
 * per output row of every adapted linear (initially ||W||; saved as
 * "...lora_magnitude_vector"), the output scaled by magnitude / ||W + s B A||
 * (that norm detached).  Rebuilds the parameter list. */
int ft_model_dora_init(ft_model *m);
/* DoRA's scales mag / ||W + s B A|| again from the current weights: a
 * training forward computes them (PEFT: every forward), the KV-cache
 * decoder only reads them, so a loop that generates after optimizer
 * steps (PPO, GRPO) or after copying a device's weights in calls this
 * first.  Nothing without DoRA. */
void ft_model_dora_refresh(ft_model *m);

/* LLaMA-Factory's fp8 (fp8: true; torchao's Float8Linear, tensorwise
 * dynamic scaling, e4m3 forward operands and e5m2 output gradients:
 * lib/model/model_fp8.c) on the decoder linears accelerate converts: all
 * but layer 0's q_proj (and lm_head, never one here), those with both
 * dimensions divisible by 16.  Returns how many, or -1 (ft_fail) where it
 * is not implemented: fused modules, quantized bases, OFT, DoRA, a LoRA
 * rank divisible by 16. */
int ft_model_fp8_enable(ft_model *m);

/* LLaMA-Factory's resize_embedding_layer (lib/model/model_vocab.c).
 * When tokenizer_len exceeds the vocabulary, embed_tokens and an untied
 * lm_head grow to tokenizer_len rounded up to a multiple of 64, the new
 * rows normal(0, initializer_range) as transformers' resize (ft's
 * generator), and config vocab_size follows.  Then the rows of new_ids
 * (sorted, unique: _resolve_new_token_ids; none: the rows the resize
 * added) are initialized in both matrices: FT_INIT_NOISE the mean of the
 * other rows (padding rows included, as LLaMA-Factory's mask) plus
 * normal(0, 1/sqrt(hidden)) noise; FT_INIT_DESC each described token the
 * mean of the input embeddings of its description's ids that are not new
 * (the other rows' mean when none is), plus that noise with
 * FT_INIT_DESC_NOISE.  The noise comes from ft's generator (seed, matrix,
 * row): torch's stream is not reproduced.  Rebuilds the parameter list. */
enum { FT_INIT_NOISE, FT_INIT_DESC, FT_INIT_DESC_NOISE };
typedef struct {
	int64_t tokenizer_len;
	const int32_t *new_ids;
	size_t n_new;
	int method;
	size_t n_desc;               /* descriptions, in the config's order */
	const int32_t *desc_target;  /* each one's token id (-1: skipped) */
	const ft_i32vec *desc_ids;   /* its text's ids (no special tokens) */
} ft_vocab_resize;
int ft_model_resize_vocab(ft_model *m, const ft_vocab_resize *r);
/* The initialization alone on w [V, D] (wte: the input embeddings the
 * descriptions read), n_new the rows a resize added; noise 0 leaves the
 * noise out (the deterministic part, which the parity test compares). */
void ft_vocab_init(float *w, const float *wte, int64_t V, int D, const ft_vocab_resize *r,
		   int64_t n_new, uint64_t seed, const char *what, int noise);
/* PEFT's modules_to_save for LLaMA-Factory's resized vocabulary: embed_tokens
 * and lm_head train beside the adapter (a tied pair becomes two copies, as
 * PEFT's wrappers make them) and are saved in adapter_model.safetensors as
 * base_model.model.model.embed_tokens.weight and base_model.model.lm_head.weight. */
int ft_model_train_embeddings(ft_model *m);

/* Parameter names (HF/PEFT) to find a tensor; NULL if absent. */
ft_param *ft_model_find_param(ft_model *m, const char *name);
/* Point dst's frozen base weights at src's (same shape), freeing dst's
 * own: two LoRA models over one base, as PEFT's adapter swap (ppo's rm
 * adapter beside the policy).  src must outlive dst and its base must not
 * change (LoRA keeps it frozen).  Fails, changing nothing, for other
 * shapes, fused, quantized, OFT or PiSSA bases, or a base that trains. */
int ft_model_share_base(ft_model *dst, const ft_model *src);
/* The index i of p (ft_model_param(m, i) == p), or -1 when p is not one
 * of m's parameters. */
long ft_model_param_index(ft_model *m, const ft_param *p);

#endif
