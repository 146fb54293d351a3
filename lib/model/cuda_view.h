/* cuda_view.h - a plain-C view of an ft_model for the CUDA backend.
 *
 * the .cu files under lib/cuda are C++ and cannot include model_internal.h (its chain
 * pulls in lib/util/vec.h, which relies on C's implicit void* conversion), so
 * lib/model/cuda_view.c (C, in libft.a) copies what the device model needs out
 * of the CPU model into these structs: shapes, options, and the host
 * pointers of every weight and gradient (borrowed; valid while the model
 * lives and its parameters are not rebuilt).
 */
#ifndef FT_CUDA_VIEW_H
#define FT_CUDA_VIEW_H

#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#include "model/layers.h"
}
#else
#include "model/layers.h"
#endif

#define FT_CV_NLIN 7    /* q k v o gate up down, as model_internal.h */

typedef struct { float *w, *g; } ft_cv_wg;   /* g NULL when frozen */

typedef struct {
	int on, r;
	float scale;
	ft_cv_wg A, B;      /* A [r, in], B [out, r] */
} ft_cv_lora;

typedef struct {
	ft_cv_wg ln1, ln2, lin[FT_CV_NLIN], bias[3];
	ft_cv_lora lora[FT_CV_NLIN];
	ft_cv_wg qn, kn;    /* q_norm, k_norm [hd] (Qwen3), w NULL when absent */
	ft_cv_wg ln3, ln4;  /* Gemma: pre_/post_feedforward_layernorm */
} ft_cv_layer;

typedef struct {
	int on, r, b;       /* r blocks of b over the module's input */
	ft_cv_wg R;         /* oft_R.weight [r, b(b-1)/2] */
} ft_cv_oft;

typedef struct {
	const char *name;
	float *w, *g;
	size_t n;
	int trainable, decay;
} ft_cv_param;

/* A quantized base linear (QLoRA): mirrors lib/model/quant.h's
 * ft_qweight (checked in cuda_view.c); host pointers, borrowed. */
typedef struct {
	int bits, fp4, in, out;
	uint8_t *packed;          /* 4-bit codes, two a byte */
	float *absmax;            /* 4-bit, not nested */
	uint8_t *qabsmax;         /* nested: 8-bit absmax codes */
	float *absmax2, offset;   /* nested: their absmaxes and the mean */
	int8_t *cb;               /* 8-bit: CB [out, in] */
	float *scb;               /*        SCB [out] */
} ft_cv_qweight;

typedef struct {
	int V, D, F, L, Hq, Hk, hd, window;
	float eps;
	int qk_norm;            /* Qwen3: per-head RMSNorm of q and k before RoPE */
	int fused;              /* Phi-3: q|k|v and gate|up are row blocks of one
				   tensor each, LoRA on the fused module (one A,
				   B's row blocks: its members share one hidden) */
	int rd;                 /* the rotary dim (< hd: partial rotary) */
	/* Gemma (2 or 3; 0 otherwise): RMSNorms times (1 + weight), post
	 * norms (ln3, ln4), GeGLU, embeddings times sqrt(D), scores times
	 * attn_scale and soft-capped (0: off), final logits soft-capped,
	 * the layers of bit l of `sliding` windowed with rope_local's RoPE */
	int gemma;
	float attn_scale, attn_softcap, final_softcap;
	float label_smoothing;  /* transformers' LabelSmoother epsilon (0: off) */
	uint64_t sliding[4];
	ft_rope_params rope_local;
	int lin_in[FT_CV_NLIN], lin_out[FT_CV_NLIN];
	ft_rope_params rope;
	int full;               /* the embedding trains: finetuning type full, or
				   LoRA with modules_to_save (embed_tokens and
				   lm_head trained in full beside it) */
	int lora_rank, gradient_checkpointing;
	double lora_dropout;
	uint64_t seed;
	ft_cv_wg wte, lm_head, norm;   /* lm_head.w == wte.w when tied */
	ft_cv_layer *layers;           /* [L], owned by the view */
	ft_cv_param *params;           /* [nparams], owned by the view */
	size_t nparams;
	/* QLoRA: the decoder's base linears quantized, layer l's module j at
	 * qw[l * FT_CV_NLIN + j] (the CPU model's array, borrowed); then
	 * layers[l].lin[j].w is NULL.  NULL when not quantized. */
	const ft_cv_qweight *qw;
	/* fp8 (lib/cuda/fp8.cu): layer l's module j runs as torchao's
	 * Float8Linear when fp8[l * FT_CV_NLIN + j] (the CPU model's flags,
	 * borrowed); NULL when fp8 is off. */
	const unsigned char *fp8;
	const float *qcode[3];         /* bnb's NF4 [16], FP4 [16], dynamic [256] maps */
	double neftune_alpha;          /* NEFTune's noise_alpha while training; 0: off */
	int gen_neftune;               /* and in the decoders (ft_model_set_gen_neftune) */
	uint64_t gen_neftune_stream;
	/* DoRA (lib/cuda/dora.cu): layer l's module j's magnitude [out] at
	 * dora_mag[l * FT_CV_NLIN + j] (w NULL: none); NULL without DoRA.
	 * Owned by the view. */
	ft_cv_wg *dora_mag;
	/* OFT (lib/cuda/oft.cu): layer l's module j at oft[l * FT_CV_NLIN +
	 * j] (on 0: none), NULL without OFT; owned by the view.  The
	 * Cayley-Neumann series R = sum_k oft_c[k] Q^k, k = 0..oft_K
	 * (ft_oft_coefs). */
	ft_cv_oft *oft;
	int oft_K;
	double oft_c[65];
} ft_cuda_view;

/* A fused projection of the CUDA model (lib/cuda/layer.cu): the modules
 * of a layer that read the same input, q|k|v and gate|up, run as one GEMM
 * over their weights stacked by rows, followed by the LoRA A matrices of
 * the modules that have LoRA, so the input is read once.  The output is
 * one row-major [N, tot] buffer: module js[i]'s output in columns
 * [off[i], off[i] + its out), its LoRA hidden in [loff[i], loff[i] + r).
 * Phi-3's fused modules have one LoRA A: every member's loff is the
 * lead's (ft_cv_lora_owner tells the module that owns a hidden). */
#define FT_CV_NGROUP 2           /* 0: q|k|v, 1: gate|up */
typedef struct {
	int n, js[3];            /* the modules, in order */
	int off[3], loff[3];     /* loff -1: no LoRA on that module */
	int base, tot, in;       /* base = the outputs' sum; tot = base + LoRA ranks */
} ft_cv_group;

/* The same batch fields as ft_batch (lib/format/batch.h), without its header. */
typedef struct {
	int B, T;
	const int32_t *input_ids, *labels, *position_ids, *segment_ids;
	const int32_t *lengths;  /* [B] or NULL, as ft_batch.lengths */
} ft_cuda_batch;

#ifdef __cplusplus
extern "C" {
#endif
struct ft_model;
/* Fill v from m (v->layers, v->params allocated; free with ..._free). */
int ft_cuda_view_of(struct ft_model *m, ft_cuda_view *v);
void ft_cuda_view_free(ft_cuda_view *v);
/* Group g (FT_CV_NGROUP) of layer l, from the view's shapes and LoRA. */
void ft_cuda_view_group(const ft_cuda_view *v, int l, int g, ft_cv_group *out);
/* Whether layer l is one of Gemma's sliding-window layers. */
int ft_cuda_view_sliding(const ft_cuda_view *v, int l);
/* Whether module i of group c computes its LoRA hidden (no earlier
 * member shares it). */
int ft_cv_lora_owner(const ft_cv_group *c, int i);
/* NEFTune's noise for the embeddings of a B x T batch in forward_backward
 * call `calls` (out [B*T*D]): the CPU's draws (lib/model/extras.c), made
 * on the host, so the device adds exactly what the CPU adds. */
void ft_cuda_view_neftune(const ft_cuda_view *v, float *out, int B, int T, uint64_t calls);
/* The same for the k-th forward of a decoder (CUDA's, lib/cuda/infer.cu)
 * of n tokens of rows[0..n) (< nrows): ft_neftune_tokens' noise into
 * out[n * D], the CPU decoder's floats. */
void ft_cuda_view_neftune_tokens(const ft_cuda_view *v, float *out, const int *rows, int n, int nrows,
				 uint64_t k);
/* The names of the seven linear modules ("q_proj" ...). */
const char *ft_cuda_view_lin_name(int j);
#ifdef __cplusplus
}
#endif

#endif
