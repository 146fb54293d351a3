/* gptq.h - GPTQ post-training quantization (Frantar et al. 2022) as
 * LLaMA-Factory's export runs it (export_quantization_bit): transformers'
 * GPTQConfig defaults through optimum's GPTQQuantizer and gptqmodel's GPTQ
 * (optimum 2.3, gptqmodel 7.7; docs/FORMAT.md "GPTQ export").
 *
 *   lib/export/gptq.c        one linear: Hessian, dead columns, act-group-
 *                            aware order, damped inverse Cholesky, the lazy
 *                            block updates; packing into qweight/qzeros
 *   lib/export/gptq_calib.c  calibration windows from a JSON-lines text
 *                            file, sampled as LLaMA-Factory does
 *   lib/export/gptq_model.c  the decoder layer by layer, each linear
 *                            quantized on inputs that went through the ones
 *                            quantized before it; the model directory
 */
#ifndef FT_GPTQ_H
#define FT_GPTQ_H

#include <stddef.h>
#include <stdint.h>
#include "util/rng.h"
#include "util/vec.h"

/* ---- one linear layer ---- */

typedef struct {
	int bits;                   /* 2, 3, 4 or 8 */
	int group_size;             /* 128 (transformers' default); > 0 */
	double damp_percent;        /* 0.1 of the mean Hessian diagonal */
	double damp_auto_increment; /* 0.0015: gptqmodel's retry step */
	int act_group_aware;        /* 1: GAR column order (the default) */
	int block_size;             /* 128: columns per lazy batch update */
} ft_gptq_params;

/* transformers' GPTQConfig defaults with the given bits. */
ft_gptq_params ft_gptq_defaults(int bits);

/* The Hessian of one linear's inputs: H = 2/N sum x x^T over the N input
 * rows seen, accumulated in float32 one batch (sample) at a time as
 * gptqmodel does (each batch's X^T X added to the running sum). */
typedef struct {
	int n;               /* in_features */
	float *H;            /* [n, n] */
	float *xtx;          /* scratch [n, n] */
	int64_t rows;        /* N */
} ft_gptq_hessian;
void ft_gptq_hessian_init(ft_gptq_hessian *h, int n);
void ft_gptq_hessian_free(ft_gptq_hessian *h);
void ft_gptq_hessian_add(ft_gptq_hessian *h, const float *X, int rows);
/* Copy of src (the q, k and v projections share their input). */
void ft_gptq_hessian_copy(ft_gptq_hessian *dst, const ft_gptq_hessian *src);

/* The result for W [rows = out_features, cols = in_features]. */
typedef struct {
	int rows, cols, ngroups;   /* ngroups = ceil(cols / group_size) */
	uint8_t *codes;            /* [rows, cols] integers 0..2^bits-1 */
	float *scale;              /* [ngroups, rows] (float32; stored as fp16) */
	int32_t *zero;             /* [ngroups, rows] */
	int32_t *g_idx;            /* [cols] group of each input column */
	double damp;               /* the damp_percent that was used */
	double loss;               /* sum of the squared errors / H^-1_ii^2 / 2 */
} ft_gptq_result;
void ft_gptq_result_free(ft_gptq_result *r);

/* Quantize W in place: on return W holds the dequantized weights
 * scale * (code - zero), which the later layers' calibration pass uses.
 * h->H is consumed (overwritten).  -1 with a message when the Hessian
 * cannot be made positive definite or the shape is not packable. */
int ft_gptq_quantize(const ft_gptq_params *p, float *W, int rows, int cols,
		     ft_gptq_hessian *h, ft_gptq_result *r);

/* ---- the checkpoint's tensors (gptqmodel's pack_block) ---- */

/* qweight int32 [cols * bits / 32, rows] (the input dimension packed:
 * 32 inputs per `bits` words), qzeros int32 [ngroups, rows * bits / 32];
 * 3 bits use the 10-1-10-1-10 word layout.  The zeros are written as they
 * are (checkpoint_format gptq_v2, what transformers' save_pretrained
 * writes after a GPTQ calibration).  cols and rows must be multiples of 32. */
size_t ft_gptq_qweight_rows(int cols, int bits);
size_t ft_gptq_qzeros_cols(int rows, int bits);
void ft_gptq_pack_qweight(const ft_gptq_result *r, int bits, int32_t *qweight);
void ft_gptq_pack_qzeros(const ft_gptq_result *r, int bits, int32_t *qzeros);
/* The inverse (tests, and readers of the format): codes [rows, cols]. */
void ft_gptq_unpack_qweight(const int32_t *qweight, int rows, int cols, int bits, uint8_t *codes);

/* ---- calibration data (gptq_calib.c) ---- */

/* CPython's random module: util/rng.h's MT19937 seeded by random.seed(int)
 * (ft_mt_seed_python), and randint(a, b). */
typedef ft_mt ft_pyrandom;
static inline void ft_pyrandom_seed(ft_pyrandom *g, uint64_t seed) { ft_mt_seed_python(g, seed); }
int64_t ft_pyrandom_randint(ft_pyrandom *g, int64_t a, int64_t b);

/* Token ids of one text, as the tokenizer's __call__ gives them
 * (add_special_tokens=True); 0 or -1 with a message. */
typedef int (*ft_gptq_encode_fn)(void *ctx, const char *text, size_t len, ft_i32vec *ids);

/* LLaMA-Factory's _get_quantization_dataset: nsamples windows of maxlen
 * tokens, each from a text picked by randint(0, len - 1) among those
 * longer than maxlen tokens (up to 100 tries, then its error), at offset
 * randint(0, ntokens - maxlen - 1).  The texts are the "text" field of a
 * JSON-lines (or JSON array) file.  windows gets nsamples * maxlen ids. */
int ft_gptq_calibration(const char *path, int nsamples, int maxlen, uint64_t seed,
			ft_gptq_encode_fn encode, void *ctx, int32_t *windows);

/* ---- the export (gptq_model.c) ---- */

typedef struct {
	const char *model_dir;
	const char *export_dir;
	int bits;
	const int32_t *windows;   /* nsamples * maxlen calibration ids */
	int nsamples, maxlen;
	uint64_t shard_size;      /* bytes; 0: 5 GB */
	int overwrite;
	int threads;              /* 0: all cores */
	/* after each quantized linear (may be NULL); non-zero stops ("interrupted") */
	int (*progress)(void *ctx, int layer, int nlayers, const char *module);
	void *progress_ctx;
} ft_gptq_export_opts;

/* Can model_dir's config be quantized to `bits`?  (Architecture, bits,
 * linear shapes; before the calibration data is read.)  0 or -1. */
int ft_gptq_check_model(const char *model_dir, int bits);

/* Quantize every decoder linear and write a GPTQ model directory (fp16
 * tensors, qweight/qzeros/scales/g_idx per linear, config.json with
 * quantization_config, tokenizer files), built under a temporary name and
 * renamed into place.  -1 with a message; nothing appears then. */
int ft_gptq_export(const ft_gptq_export_opts *o);

#endif
