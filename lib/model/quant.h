/* quant.h - bitsandbytes' weight quantization for QLoRA, as LLaMA-Factory
 * loads a model with --quantization_bit 4|8 (BitsAndBytesConfig):
 *
 *  4-bit (Linear4bit): the flattened weight in blocks of 64, each scaled by
 *  its absmax and rounded to the nearest of 16 NF4 or FP4 code values, two
 *  codes a byte.  Double quantization stores the absmaxes minus their mean
 *  (the offset) as 8-bit codes of bnb's dynamic map in blocks of 256, each
 *  with a float32 absmax of its own.
 *
 *  8-bit (Linear8bitLt): each row of the weight, rounded to float16, scaled
 *  to int8 by 127 / its absmax (CB), the absmax kept (SCB).
 *
 * The quantized bytes equal bitsandbytes.functional.quantize_4bit /
 * int8_vectorwise_quant on the CPU (tests/fixtures/quant, made by
 * tests/reference/make_quant_fixtures.py).
 */
#ifndef FT_QUANT_H
#define FT_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "model/model.h"

/* bnb's tables: get_4bit_type("nf4"/"fp4") and create_dynamic_map(). */
extern const float ft_nf4_code[16], ft_fp4_code[16], ft_dynamic_code[256];

/* quantize_4bit(blocksize 64): packed[(n+1)/2], absmax[ceil(n/64)]. */
void ft_quant4(const float *w, size_t n, int fp4, uint8_t *packed, float *absmax);
/* quantize_blockwise with the dynamic map (the CPU backend's nearest-code
 * search): q[n], absmax[ceil(n/blocksize)]. */
void ft_quant_blockwise8(const float *a, size_t n, int blocksize, uint8_t *q, float *absmax);
/* int8_vectorwise_quant(w.half()): cb[rows*cols], scb[rows]. */
void ft_quant_int8_rows(const float *w, int rows, int cols, int8_t *cb, float *scb);

/* A quantized linear weight W[out, in]. */
typedef struct ft_qweight_s {
	int bits, fp4, in, out;
	uint8_t *packed;          /* 4-bit codes */
	float *absmax;            /* 4-bit, not nested */
	uint8_t *qabsmax;         /* nested: 8-bit absmax codes */
	float *absmax2, offset;   /* nested: their absmaxes and the mean */
	int8_t *cb;               /* 8-bit */
	float *scb;
} ft_qweight;

/* Quantizes w (float32 [out, in]) into q (allocated; ft_qweight_free). */
void ft_qweight_make(ft_qweight *q, const float *w, int out, int in, int bits, int fp4,
		     int double_quant);
void ft_qweight_free(ft_qweight *q);
size_t ft_qweight_bytes(const ft_qweight *q);
/* Rows [r0, r1) of W in float32 into dst[(r1-r0) * in]. */
void ft_qweight_rows(const ft_qweight *q, int r0, int r1, float *dst);

/* y[N, out] = LLM.int8()(x[N, in], W) of an 8-bit q, as bnb's
 * MatMul8bitLt (eval; lib/model/model_quant.c says how; the CUDA kernels
 * of lib/cuda/quant.cu compute the same bits). */
void ft_qweight_int8_forward(const ft_qweight *q, float *y, const float *x, int N);

/* LLaMA-Factory's quantization arguments, checked as its model loader
 * does (quantization_bit 4 or 8, method bnb, type nf4/fp4, only with
 * LoRA).  Any argument may be NULL (not given).  Sets o->quantization_*;
 * -1 with the message otherwise. */
int ft_quant_parse(ft_tune_opts *o, const char *bit, const char *type, const char *double_q,
		   const char *method);

/* Bytes the base weights take resident: float32, or with the decoder's
 * linears quantized as opts say (embeddings, norms, LM head float32). */
double ft_config_weight_bytes_quant(const ft_config *c, int bits, int double_quant);

/* lib/model/model_quant.c.  ft_model_resident_bytes: the base weights as
 * held now (quantized linears counted in their packed size; adapters,
 * gradients and activations not counted). */
double ft_model_resident_bytes(const ft_model *m);
int ft_model_is_quantized(const ft_model *m);

/* The memory a LoRA run plans (lib/model/model_quant.c: ft_quant_plan
 * says what is counted); half: bf16 working precision (the GPU's). */
typedef struct {
	double weights, adapters, acts, total;
} ft_quant_plan_t;
void ft_quant_plan(const ft_config *c, int bits, int double_quant, int rank, unsigned targets,
		   int tokens, int checkpointing, int half, ft_quant_plan_t *p);

#endif
