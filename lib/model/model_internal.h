/* model_internal.h - the ft_model structure shared by lib/model*.c.
 * Not part of the public API (use model.h). */
#ifndef FT_MODEL_INTERNAL_H
#define FT_MODEL_INTERNAL_H

#include <jansson.h>
#include "model/model.h"
#include "model/layers.h"

/* The seven linear modules of a layer, in FT_MOD_* bit order. */
enum { L_Q, L_K, L_V, L_O, L_GATE, L_UP, L_DOWN, L_NLIN };
extern const char *const ft_lin_names[L_NLIN];   /* "q_proj" ... */

typedef struct { float *w, *g; } ftp_wg;          /* g NULL when frozen */

typedef struct {
	int on, r;
	float scale;
	ftp_wg A, B;          /* A [r, in], B [out, r] */
} ftp_lora;

/* DoRA on one LoRA module (lib/model/lora_dora.c), beside ftp_lora (which
 * the CUDA view mirrors): the magnitude [out]; per forward the detached
 * norm of W + s B A [out], the factor mag / norm [out], and the pre-scale
 * output [pre_n] the backward pass needs. */
typedef struct {
	int on;
	ftp_wg mag;
	float *dnorm, *dscale, *pre;
	size_t pre_n;
} ftp_dora;

/* OFT on one module (lib/model/model_oft.c): r blocks of size b over its
 * input; R is oft_R.weight [r, b(b-1)/2], rot the rotation blocks [r, b,
 * b] of the current weights (set by each forward), drot the backward's
 * dL/drot. */
typedef struct {
	int on, r, b;
	ftp_wg R;
	float *rot, *drot;
} ftp_oft;

typedef struct {
	ftp_wg ln1, ln2, lin[L_NLIN], bias[3];   /* bias: q, k, v (Qwen2) */
	ftp_lora lora[L_NLIN];
	ftp_wg qn, kn;        /* q_norm, k_norm [head_dim] (Qwen3); NULL w when absent */
	ftp_wg ln3, ln4;      /* Gemma: pre/post_feedforward_layernorm (ln2 is its
			       * post_attention_layernorm, on the attention output) */
} ftp_layer;

/* Saved activations of one layer for the backward pass. */
typedef struct {
	float *ln1, *rstd1, *q, *k, *v, *lse, *att, *xmid, *ln2, *rstd2;
	float *gate, *up;
	float *block;        /* the allocation holding all of them */
	float *lh[L_NLIN];   /* LoRA hidden [N, r] */
	float *qr, *kr, *rstdq, *rstdk;   /* q, k before q_norm/k_norm (Qwen3) */
	float *ao, *rstd_ao, *mo, *rstd_mo;   /* Gemma: attention and MLP outputs
					       * before their post norms */
} ftp_acts;

struct ft_model {
	ft_config c;
	ft_tune_opts o;
	json_t *config_json;     /* config.json as loaded (NULL: from config) */
	char *model_dir;         /* base_model_name_or_path for adapters */
	char save_dtype[16];     /* "" = as config (torch dtype), else F32 etc. */

	ftp_wg wte, lm_head, norm;    /* lm_head aliases wte when tied */
	int untied;                  /* a tied base whose lm_head became a copy (modules_to_save) */
	/* a resized vocabulary: the base's size, and with modules_to_save the
	 * frozen rows PEFT keeps as original_module (saved beside the copies) */
	int64_t resized_from;
	float *wte0, *head0;
	int base_borrowed;           /* the base tensors' w are another model's (ft_model_share_base) */
	ftp_layer *layers;
	ft_param *params;
	size_t nparams;
	ft_param **grads;            /* the params with a gradient, for zero_grad */
	size_t ngrads;
	int lora_dropout_on;
	uint64_t dropout_calls;      /* advances the dropout masks per call */
	int gen_neft_on;             /* ft_model_set_gen_neftune: NEFTune in the decoders */
	uint64_t gen_neft_stream;
	ft_grads_ready_fn grads_ready;   /* ft_model_set_grads_ready */
	void *grads_ready_ctx;

	/* activation buffers, sized for cap_N tokens */
	int cap_N, buf_rank, n_acts;
	float *xs;                   /* residual stream [(L+1), N, D] */
	ftp_acts *acts;               /* L sets, or 1 with checkpointing */
	float *cos_t, *sin_t, *inv_freq;
	int32_t *pos, *targets, *rows;
	/* compute_accuracy (ft_model_set_accuracy): the per-row accuracies
	 * summed and their rows since the last ft_model_accuracy_take */
	int acc_on;
	double acc_sum;
	int64_t acc_rows;
	float *lnf, *rstdf;
	/* backward scratch */
	float *d_a, *d_b, *d_ln, *d_att, *dq, *dk, *dv, *hbuf, *dh, *dgate,
	      *dup, *tmp, *drop, *ddrop, *lhs, *head_x, *head_dx,
	      *head_scratch;
	int head_chunk, training;
	/* model_pref.c: the softmax of the last training log-prob pass, kept
	 * for its backward when small enough (keep_n rows, 0: recompute), and
	 * the mean LM-head row (for frozen heads, computed once) */
	float *keep;
	double *keep_sum;
	size_t keep_cap;
	int keep_n;
	double *wmean;
	float *logp_entropy;         /* model_pref.c: per-position entropy out, or NULL */
	float logp_temp;             /* model_pref.c: logits / logp_temp before the log-softmax; 0: none */
	ftp_dora *dora;              /* [L * L_NLIN], NULL without DoRA */
	float *dora_dy;              /* DoRA: the scaled output gradient */
	size_t dora_dy_n;
	/* the options' own LoRA (after the defaults), for a new adapter once
	 * loaded ones are merged (ft_model_new_lora) */
	int lora0_rank, lora0_rslora;
	double lora0_alpha;
	unsigned lora0_targets;
	float *dora_lw;              /* DoRA: a tile of rows of W + s B A */
	size_t dora_lw_n;
	/* QLoRA (model_quant.c): the decoder linears quantized, [L * L_NLIN],
	 * and the scratch a tile of dequantized rows goes through */
	struct ft_qweight_s *qw;
	float *qscratch;
	size_t qscratch_n;
	float *cos_l, *sin_l, *inv_freq_l;   /* Gemma: sliding layers' RoPE */
	float *norm_eff;                     /* Gemma: 1 + weight of one norm */
	struct ft_model *asft_ref;           /* ASFT's reference (not owned) */
	int oft_terms;                       /* OFT: num_cayley_neumann_terms */
	ftp_oft *oft;                        /* [L * L_NLIN], NULL without OFT (ftp_layer
					      * is mirrored by the CUDA view) */
	/* fp8 (model_fp8.c): which linears are Float8Linear, [L * L_NLIN]
	 * (NULL: fp8 off), and the fp8 operands' scratch */
	unsigned char *fp8;
	float *f8x, *f8w, *f8d;
	size_t f8x_n, f8w_n, f8d_n;
};

/* Module j of layer l runs as torchao's Float8Linear (model_fp8.c). */
static inline int ftp_fp8_of(const ft_model *m, int l, int j)
{
	return m->fp8 && m->fp8[l * L_NLIN + j];
}
void ftp_fp8_forward(ft_model *m, int l, int j, float *y, const float *x, int N);
void ftp_fp8_backward(ft_model *m, int l, int j, float *dx, const float *dy, const float *x, int N);
void ftp_fp8_free(ft_model *m);

/* The OFT state of module j of layer l, NULL when it has none. */
static inline ftp_oft *ftp_oft_of(const ft_model *m, int l, int j)
{
	return m->oft && m->oft[l * L_NLIN + j].on ? &m->oft[l * L_NLIN + j] : NULL;
}

/* The DoRA state of module j of layer l, NULL when it has none. */
/* Whether embed_tokens trains: full fine-tuning, PEFT's modules_to_save
 * copy beside an adapter, freeze tuning's freeze_extra_modules. */
static inline int ftp_emb_trains(const ft_model *m)
{
	return m->o.type == FT_FT_FULL || m->o.modules_to_save ||
	       (m->o.type == FT_FT_FREEZE && (m->o.freeze_extra & FT_EXTRA_EMBED));
}

static inline ftp_dora *ftp_dora_of(const ft_model *m, int l, int j)
{
	return m->dora && m->dora[l * L_NLIN + j].on ? &m->dora[l * L_NLIN + j] : NULL;
}

/* lib/model/extras.c: NEFTune's noise on the embedding output x [B, T, D]
 * (training forward only); the layer ids LLaMA Pro trains. */
void ftp_neftune_apply(const ft_model *m, float *x, int B, int T);
int ftp_llama_pro_layer(const ft_model *m, int l);

/* lib/model/model_tokloss.c: ft_model_forward_backward / ft_model_forward
 * (loss only) with the DFT or EAFT token weights (o.sft_loss != 0). */
int ftp_tokloss_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
				 double *loss_sum, int64_t *n_tokens);
int ftp_tokloss_forward(ft_model *m, const ft_batch *b, double *loss_sum, int64_t *n_tokens);

/* lib/model/model_oft.c: OFT on the `targets` modules of every layer
 * (weights zero: the identity), PEFT's block sizes from cfg_r /
 * cfg_block; free drops it.  input: the input module j of layer l sees
 * (x, or x rotated into m->drop); rotate: the same into out (decoding's
 * buffer, lib/model/infer.c); backward: from dxr, the gradient at
 * the rotated input, accumulates oft_R's gradient and adds the gradient
 * at x into dx (NULL: none wanted).  merge: folds every OFT module into
 * its base weight (W . blockdiag(R)^T) and drops OFT. */
int ftp_oft_setup(ft_model *m, int cfg_r, int cfg_block, unsigned targets, int terms);
void ftp_oft_free(ft_model *m);
const float *ftp_oft_input(ft_model *m, int l, int j, const float *x, int N);
const float *ftp_oft_rotate(ft_model *m, int l, int j, const float *x, int N, float *out);
void ftp_oft_backward(ft_model *m, int l, int j, const float *x, const float *dxr, float *dx, int N);
void ftp_oft_merge(ft_model *m);

/* lib/model/model_pref.c: after a forward body, the rows with a target
 * (labels[i+1] != -100) into m->head_x / m->rows / m->targets, in order;
 * their count. */
int ftp_gather_targets(ft_model *m, const ft_batch *b);

/* lib/model/model_asft.c: ft_model_forward_backward / ft_model_forward
 * (loss only) with the ASFT loss (o.sft_loss == FT_SFT_LOSS_ASFT);
 * *loss_sum is the micro-batch's mean, *n_tokens 1. */
int ftp_asft_forward_backward(ft_model *m, const ft_batch *b, float grad_scale,
			      double *loss_sum, int64_t *n_tokens);
int ftp_asft_forward(ft_model *m, const ft_batch *b, double *loss_sum, int64_t *n_tokens);

/* lib/model/model_vocab.c: embed_tokens (and an untied lm_head) with V
 * rows, the old rows kept, new ones zero (an adapter's trained copies
 * replace them); config vocab_size follows. */
int ftp_vocab_rows(ft_model *m, int64_t V);

/* lib/model/model_io.c: adapter_config.json with rank r and alpha;
 * plain: init_lora_weights true even for a PiSSA adapter. */
int ftp_adapter_config_save(ft_model *m, const char *dir, int r, double alpha, int plain);

/* lib/model/lora_dora.c: DoRA on the LoRA modules of layer l.  forward:
 * y (the base output with the LoRA branch added) becomes bias + (mag /
 * norm) * (y - bias); backward: returns the gradient at y - bias (dy
 * scaled, in m->dora_dy) and accumulates mag's gradient.  scale: the
 * norm and factor from the current weights (inference).  free: all DoRA
 * state (DoRA off). */
void ftp_dora_forward(ft_model *m, int l, int j, float *y, int N);
const float *ftp_dora_backward(ft_model *m, int l, int j, const float *dy, int N);
/* With LoRA dropout, PEFT's dropped-input form (lora_dora.c's header):
 * forward_dropped adds the LoRA branch on xd (hidden into h) and DoRA's
 * terms to y = x W^T + bias; backward_dropped runs after the base's
 * dx += dy W: the LoRA and magnitude gradients, dxd += the gradient at
 * xd (dxd may be NULL), the dropout mask left to the caller. */
void ftp_dora_forward_dropped(ft_model *m, int l, int j, float *y, float *h, const float *xd,
			      int N);
void ftp_dora_backward_dropped(ft_model *m, int l, int j, float *dxd, const float *dy,
			       const float *xd, const float *h, int N);
void ftp_dora_scale(ft_model *m, int l, int j);
void ftp_dora_infer(ft_model *m, int l, int j, float *y, int N);
void ftp_dora_free(ft_model *m);
/* Turn DoRA on for every adapted module, the magnitude = ||W + s B A||
 * per output row (PEFT's init); does not rebuild the parameter list. */
void ftp_dora_enable(ft_model *m);
/* W := (mag / ||W + s B A||) (W + s B A) per row, as PEFT's merge. */
void ftp_dora_merge(ft_model *m, int l, int j);

/* lib/model/model_fwd.c */
int ftp_model_prepare(ft_model *m, int N);
void ftp_model_free_buffers(ft_model *m);
/* The body of a forward pass (embedding, layers, final norm into m->lnf;
 * m->targets = the shifted labels), and the backward pass from
 * m->d_ln = dL/d(lnf) [N, D]: what the preference stages
 * (model_pref.c) wrap with their own heads. */
int ftp_model_forward_body(ft_model *m, const ft_batch *b);
void ftp_model_backward_body(ft_model *m, const ft_batch *b);
/* lib/model/model.c */
int ftp_model_build_params(ft_model *m);
/* n normal(0, std) floats from the stream of (seed, name): Box-Muller
 * over ft's xoshiro256** (the random init of ft_model_from_config). */
void ftp_fill_normal(float *w, size_t n, float std, uint64_t seed, const char *name);
void ftp_model_free_params(ft_model *m);
void ftp_lora_setup(ft_model *m, int rank, double alpha, int rslora,
		   unsigned targets);
int ftp_lin_dims(const ft_config *c, int which, int *in, int *out);
/* config_check.c: every number of a parsed config in range (-1 naming
 * path and the key), and the weights' bytes against available memory. */
int ftp_config_check(const ft_config *c, const char *path);
int ftp_config_memory_plan(const ft_config *c, const char *what);
/* need bytes of `kind` ("float32") weights against available memory */
int ftp_memory_plan_check(double need, const char *kind, const char *what);
/* The weights in dir (headers only) agree with the config's sizes. */
int ftp_config_check_weights(const ft_config *c, const char *dir);
/* model.c: rope_theta and the rope_parameters / rope_scaling object of j. */
int ftp_config_rope(const json_t *j, ft_config *c, const char *path);
/* lib/model/rope.c: yarn's keys of a rope_parameters / rope_scaling
 * object (rp) into c (ft_rope_params_of, model.h: the config's RoPE as
 * layers.h takes it). */
int ftp_rope_yarn_config(const json_t *rp, ft_config *c, const char *path);
int ftp_rope_longrope_config(const json_t *rp, const json_t *j, ft_config *c, const char *path);
/* The rope_parameters object of c (config.json as saved). */
json_t *ftp_rope_json(const ft_config *c);
/* The values of each head that RoPE rotates: rotary_dim, or head_dim. */
int ftp_rotary_dim(const ft_config *c);
/* partial_rotary_factor (rope_parameters' first, then the top level's,
 * as Phi3Config); rp may be NULL. */
int ftp_rope_partial_config(const json_t *rp, const json_t *j, ft_config *c, const char *path);
/* lib/model/model_fwd.c: a layer's linear modules with their LoRA. */
void ftp_lin_forward_many(ft_model *m, int l, const int *js, float *const *ys, int n,
			  ftp_acts *a, const float *x, int N);
void ftp_lin_backward(ft_model *m, int l, int j, ftp_acts *a, float *dx, const float *dy,
		      const float *x, int N);
/* lib/model/model_gemma.c */
int ftp_gemma_config(const json_t *j, ft_config *c, const char *path);
int ftp_layer_sliding(const ft_config *c, int l);
/* The sliding layers' RoPE parameters (default type, rope_local_theta). */
void ftp_rope_local_params(const ft_config *c, ft_rope_params *p);
const float *ftp_norm_w(ft_model *m, const float *w, int n);
void ftp_gemma_layer_forward(ft_model *m, int l, ftp_acts *a, const float *x_in, float *x_out,
			     const ft_batch *b);
void ftp_gemma_layer_backward(ft_model *m, int l, ftp_acts *a, const float *x_in,
			      const ft_batch *b, int need_dx);
/* lib/model/arch.c: the families beyond Llama/Mistral/Qwen2. */
/* Phi-3's fused modules: the group's first module (q for q, k, v; gate
 * for gate, up; else j itself), the member's first row in the fused
 * tensor, the fused tensor's rows, and the module name PEFT uses. */
int ftp_fused_lead(const ft_config *c, int j);
int ftp_fused_row(const ft_config *c, int j);
int ftp_fused_rows(const ft_config *c, int j);
const char *ftp_module_name(const ft_config *c, int j);
/* LoRA targets of a config: 0, or -1 when they split a fused module. */
int ftp_check_targets(const ft_config *c, unsigned targets);
int ftp_arch_from_name(const char *arch, ft_arch *a, const char *path);
const char *ftp_arch_name(ft_arch a);
const char *ftp_arch_model_type(ft_arch a);
int ftp_arch_config(const json_t *j, ft_config *c, const char *path);
/* q_norm/k_norm: q,k [N, H*hd] normalised per head from the raw
 * projections a->qr, a->kr; backward turns dq, dk (after RoPE's backward)
 * into the raw projections' gradients in dqr, dkr (written). */
void ftp_qk_norm_forward(ft_model *m, const ftp_layer *y, float *q, float *k,
			 const float *qr, const float *kr, float *rstdq, float *rstdk, int N);
void ftp_qk_norm_backward(ft_model *m, ftp_layer *y, float *dqr, float *dkr,
			  const float *dq, const float *dk, const ftp_acts *a, int N);

/* lib/model/extras.c: freeze_extra_modules names modules the model has
 * (a tied model has no lm_head of its own); -1 with LLaMA-Factory's words */
int ftp_check_freeze_extra(const ft_config *c, const ft_tune_opts *o);

/* lib/model/model_quant.c */
ft_model *ftp_model_quantize(ft_model *m);
void ftp_model_quantize_param(ft_model *m, ft_param *p);
int ftp_quant_memory_plan(const ft_config *c, const ft_tune_opts *o, const char *what);
void ftp_model_quant_free(ft_model *m);
void ftp_qlin_forward(ft_model *m, int l, int j, float *y, const float *x, int N, int eval);
void ftp_qlin_backward(ft_model *m, int l, int j, float *dx, const float *dy, int N);
void ftp_qlin_product(ft_model *m, int l, int j, float *y, const float *x, int N);
/* rows [r0, r1) of linear j's dequantized W into dst (float32, row-major);
 * tile_rows: how many rows at a time the products take (m->qscratch) */
void ftp_qlin_rows(const ft_model *m, int l, int j, int r0, int r1, float *dst);
int ftp_qlin_tile_rows(const ft_model *m, int l, int j);

#endif
