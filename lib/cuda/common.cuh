/* common.cuh - shared internals of the CUDA backend: error checks, the
 * device model structure, and the launchers each .cu file provides. */
#ifndef FT_CUDA_COMMON_CUH
#define FT_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stdint.h>
#include <stddef.h>

extern "C" {
#include "util/error.h"
}
#include "model/kernels.h"
#include "cuda/ft_cuda.h"
#include "cuda/quant.cuh"

/* ---- errors: every call checked, message names call and shapes ---- */

int ft_cu_fail(cudaError_t e, const char *call, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int ft_cublas_fail(cublasStatus_t s, const char *call, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define CU(call, ...) do { cudaError_t e_ = (call); \
	if (e_ != cudaSuccess) return ft_cu_fail(e_, #call, __VA_ARGS__); } while (0)
#define CB(call, ...) do { cublasStatus_t s_ = (call); \
	if (s_ != CUBLAS_STATUS_SUCCESS) return ft_cublas_fail(s_, #call, __VA_ARGS__); } while (0)
/* After a kernel launch: launch errors (bad configuration) surface here;
 * faults inside kernels surface at the next synchronising call. */
#define LAUNCHED(name, ...) do { cudaError_t e_ = cudaGetLastError(); \
	if (e_ != cudaSuccess) return ft_cu_fail(e_, name, __VA_ARGS__); } while (0)
#define TRY(x) do { if ((x) < 0) return -1; } while (0)

/* Every launch site: FT_LAUNCH(kernel, grid, block, smem, stream)(args).
 * Under nvcc the plain <<<>>>; in build/libft_cuda_emu.so (these sources
 * compiled by g++ against tests/emu/include's cuda_runtime.h) an emulated
 * launch on the host (tests/emu/emu.h). */
#ifdef FT_CUDA_EMU
#define FT_LAUNCH(k, grid, block, smem, stream) FT_EMU_LAUNCH(k, grid, block, smem, stream)
#else
#define FT_LAUNCH(k, grid, block, smem, stream) k<<<grid, block, smem, stream>>>
#endif

/* Blocks of tpb threads for n elements, at least one and capped (the
 * kernels' grid-stride loops, FT_CU_FOR, cover what the cap leaves). */
static inline unsigned ft_cu_grid(size_t n, unsigned tpb)
{
	size_t b = (n + tpb - 1) / tpb;
	return (unsigned)(b > 65535u * 32u ? 65535u * 32u : (b ? b : 1));
}

/* grid-stride loop over n elements */
#define FT_CU_FOR(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; \
			     i < (n); i += (size_t)gridDim.x * blockDim.x)

#include "cuda/reduce.cuh"
#include "cuda/act_kernels.cuh"

/* ---- the device model ---- */

typedef struct { const void *p; int half; } ft_mat;   /* half: uint16 data */

/* One tensor: fp32 weights (always for vectors and LoRA; for matrices in
 * fp32 mode, or as the master of a trainable half matrix), the half
 * working copy (bf16/f16 modes, matrices only), gradient and moments. */
typedef struct {
	float *w;            /* fp32 weights or master; NULL for frozen half */
	uint16_t *h;         /* half copy; NULL in fp32 mode and for vectors */
	float *g, *m, *v;    /* NULL when frozen */
	size_t n;
	int rows, cols;      /* matrices; rows = n, cols = 1 for vectors */
	int pidx;            /* index into the view's params, -1 if none */
	size_t poff;         /* first element within it (Phi-3's fused row blocks) */
	float *hw, *hg;      /* the CPU model's weights and gradient */
	int matrix;          /* stored in half in the bf16/f16 modes */
	int unit;            /* on a unit's first tensor: the unit's size (tensors
				whose buffers are carved back to back, see layout) */
	int group;           /* its gradient group (ft_cuda_set_grads_ready) */
} ft_dt;

typedef struct {
	int on, r;
	float scale;
	ft_dt *A, *B;
	/* DoRA (dora.cu): the magnitude (NULL without), the row norms and
	 * factors of the last forward, its pre-factor outputs [N, out] */
	ft_dt *mag;
	float *dnorm, *dscale, *pre;
	int dora_ready;      /* decoding: the factors computed (once) */
} ft_dlora;

/* A fused projection (ft_cv_group: q|k|v or gate|up): the modules'
 * weights and then their LoRA A matrices, stacked by rows in one
 * contiguous working buffer, so one GEMM computes them all. */
typedef struct {
	ft_cv_group c;       /* the columns of the fused output */
	ft_mat wf;           /* [c.tot rows, c.in]: weights, then the A rows */
	float *gw;           /* [c.base, in] stacked weight gradients, or NULL
				(a frozen module: then each module's own) */
	float *ga;           /* [c.tot - c.base, in] stacked LoRA A gradients, or NULL */
} ft_dgroup;

/* OFT on one module (oft.cu): r blocks of b, oft_R.weight, the rotation
 * [r, b, b] of the last forward (decoding: computed once, rot_ready). */
typedef struct { int on, r, b; ft_dt *R; float *rot; int rot_ready; } ft_doft;

typedef struct {
	ft_dt *ln1, *ln2, *lin[FT_CV_NLIN], *bias[3];
	ft_dlora lora[FT_CV_NLIN];
	ft_doft oft[FT_CV_NLIN];
	ft_dt *qn, *kn;      /* q_norm, k_norm (Qwen3); NULL when absent */
	ft_dt *ln3, *ln4;    /* Gemma's pre_/post_feedforward_layernorm */
	ft_dgroup grp[FT_CV_NGROUP];
	/* QLoRA (quant.cu): the base linears quantized, lin[j] NULL; the
	 * fused groups then run module by module (grp[].wf unused) */
	int quant;
	ft_cu_qweight q[FT_CV_NLIN];
	/* fp8 (fp8.cu): module j runs as torchao's Float8Linear */
	unsigned char fp8[FT_CV_NLIN];
} ft_dlayer;

typedef struct {
	void *ln1, *ln2;                  /* the normed inputs of q|k|v and gate|up,
					     of ft_cu_act_type (half in bf16/fp16) */
	float *rstd1, *lse, *xmid, *rstd2;
	void *qkv, *att, *gu;             /* of ft_cu_proj_type: the fused q|k|v
					     and gate|up outputs [N, grp.c.tot]
					     with the LoRA hiddens of their
					     modules; attention's output */
	float *lh[FT_CV_NLIN];            /* LoRA hiddens of o_proj, down_proj */
	void *qn, *kn;                    /* q, k after q_norm/k_norm (Qwen3), of
					     ft_cu_proj_type */
	float *rstdq, *rstdk;
	float *ao, *mo, *rstd_ao, *rstd_mo;   /* Gemma: attention and MLP outputs
						 before their post norms */
	/* attention's inputs, bound per layer (ft_cu_bind_qkv): columns of
	 * qkv, or qn/kn; ld their token strides; of ft_cu_proj_type */
	void *q, *k, *v;
	int ldq, ldk, ldv;
} ft_dacts;

/* Bump allocator over the single device allocation; with base 0 it only
 * counts, so the plan and the allocation are the same code. */
typedef struct {
	uintptr_t base;
	size_t off, cat[6];
} ft_arena;
enum { A_WEIGHTS, A_MASTER, A_GRADS, A_OPTIM, A_ACTS, A_SCRATCH };
void *ft_arena_take(ft_arena *a, size_t bytes, int cat);

struct ft_cuda_model {
	ft_cuda_view v;
	ft_cuda_opts o;
	struct ft_model *host;
	int half;                      /* bf16 or f16 */
	cublasHandle_t blas;
	cudaStream_t stream;
	void *mem;                     /* the arena's allocation */
	ft_cuda_plan plan;
	size_t peak, dev_total;

	ft_dt *tens;                   /* one per distinct tensor */
	int ntens;
	ft_dt *wte, *lm_head, *norm;
	ft_dlayer *layers;

	int cap_N, n_acts;
	float *xs;                     /* [(L+1), N, D] */
	ft_dacts *acts;
	float *cos_t, *sin_t, *lnf, *rstdf;
	float *cos_l, *sin_l;          /* Gemma's sliding layers' RoPE tables */
	float *norm_eff;               /* Gemma: 1 + weight of the norm in use */
	int32_t *ids, *pos, *targets, *rows, *seg, *lens;   /* lens: [B] row lengths */
	void *hbuf;                    /* the MLP hidden [N, F], of ft_cu_act_type */
	float *d_a, *d_b, *d_ln, *d_att, *dqkv, *dq, *dk, *dh,
	      *tmp, *drop, *ddrop, *lhs, *head_x, *head_dx, *head_scratch;
	float *dora_dy;                /* DoRA: a plain module's scaled dy (dora.cu) */
	double *oft_scr;               /* OFT: the series' scratch, dL/dR (oft.cu) */
	float *oft_drot;
	float *oft_xf;                 /* OFT in bf16/fp16: a half input widened (oft.cu) */
	double *row_loss;
	uint16_t *hx, *hy, *hhead;     /* half casts of matmul operands */
	float *att_di;                 /* [N, Hq] rowsum(O * dO) */
	double *sumsq;                 /* [ntens][FT_SUMSQ_BLOCKS] grad-norm partials */
	int *flag;                     /* non-finite gradient seen */
	float *colpart;                /* [FT_COLSUM_CHUNKS, mi] column-sum partials */
	void *blas_ws;
	size_t blas_ws_size;
	/* QLoRA (quant.cu): code tables [16 NF4, 16 FP4, 256 dynamic], the
	 * dequantized tile, and LLM.int8()'s buffers (8-bit only) */
	float *qcode;
	void *qscratch;
	size_t qscratch_bytes;
	int *q8_outl, *q8_cols, *q8_nc, q8_rows;
	float *q8_sca, *q8_caf, *q8_tmp;
	int32_t *q8_acc;
	/* fp8 (fp8.cu): the cast operands (of the GEMMs' operand type), the
	 * amax partials, the scale and its inverse */
	void *f8x, *f8w, *f8d;
	float *f8part, *f8sc;
	int head_chunk, training;
	uint64_t dropout_calls;
	int64_t step;
	double loss_scale;
	int good_steps;
	int unscaled;                  /* fp16: grads already divided by the scale */
	double grads_scale;            /* fp16: the scale the gradients carry */
	const ft_cuda_pstep *pstep;    /* per CPU param, during ft_cuda_step_ext */
	/* during ft_cuda_step_x (optim_x.cu): a model tensor's update in
	 * place of AdamW, its context, and that file's scratch (freed by
	 * ft_cu_xbuf_free) */
	int (*xupdate)(struct ft_cuda_model *, ft_dt *);
	void *xctx;
	float *xbuf;
	size_t xbuf_n;
	float **xproj;                 /* per tensor: GaLore's projector, or NULL */
	size_t *xproj_n;
	/* host staging for a batch (pinned, one block) */
	void *staging;
	int32_t *h_pos, *h_targets, *h_rows, *h_tg2, *h_ids, *h_seg, *h_lens;
	float *h_cos, *h_sin, *h_inv, *h_cosl, *h_sinl;
	double *h_row_loss, *h_sumsq;
	/* data parallel beside the backward (optim.cu): the hook, the
	 * communication stream, an event per gradient group (index group + 1)
	 * and whether this backward recorded it */
	ft_cuda_ready_fn ready_fn;
	void *ready_ctx;
	cudaStream_t comm;
	cudaEvent_t *gev;
	unsigned char *gev_set;
	/* rm's value head (pref.cu): gradients outside tens, summed with
	 * group -1 after the embeddings, the CPU plan's last position */
	ft_dt *xgrads;
	int nxgrads;
	/* NEFTune (neftune.cu): the noise of a batch, device and host */
	float *neft, *h_neft;
	struct ft_cu_zero *zero;       /* ZeRO-1's slice (zero.cu); NULL: not sharded */
};

/* ---- gemm.cu: cuBLAS products, row-major like ft_sgemm ---- */
/* C[M,N] (fp32) = alpha op(A) op(B) + beta C.  Both operands fp32, or
 * both half (dm->o.precision tells bf16 or f16); fp32 accumulation. */
int ft_cu_gemm(ft_cuda_model *dm, int ta, int tb, int M, int N, int K, float alpha,
	       ft_mat A, int lda, ft_mat B, int ldb, float beta, float *C, int ldc,
	       const char *what);
/* The same with C (and beta's C) of C.half's type: the half type only
 * with half operands, fp32 accumulation, rounded once on the way out. */
int ft_cu_gemm_to(ft_cuda_model *dm, int ta, int tb, int M, int N, int K, float alpha,
		  ft_mat A, int lda, ft_mat B, int ldb, float beta, ft_mat C, int ldc,
		  const char *what);
int ft_cu_gemm_batched(ft_cuda_model *dm, int ta, int tb, int M, int N, int K,
		       float alpha, const float *A, int lda, long long sa,
		       const float *B, int ldb, long long sb, float beta, float *C,
		       int ldc, long long sc, int batch, const char *what);
/* The operand of a linear layer: W's half copy or fp32 weights. */
ft_mat ft_cu_weight(const ft_cuda_model *dm, const ft_dt *t);
/* x (fp32, n elements) as an operand matching `like`: itself, or cast to
 * half into buf. */
int ft_cu_operand(ft_cuda_model *dm, ft_mat *out, const float *x, size_t n,
		  uint16_t *buf, int half);
/* The same for x already typed (an activation of ft_cu_act_type: the
 * half modes' normed inputs are the operand as they are). */
int ft_cu_operand_act(ft_cuda_model *dm, ft_mat *out, ft_mat x, size_t n, uint16_t *buf,
		      int half);
/* An activation buffer as an operand: p of ft_cu_act_type; or fp32. */
static inline ft_mat ft_cu_act(const ft_cuda_model *dm, const void *p)
{
	ft_mat m = { p, dm->half };
	return m;
}
static inline ft_mat ft_cu_f32(const float *p)
{
	ft_mat m = { p, 0 };
	return m;
}
/* The type of the fused projections' outputs and attention's
 * activations: ft_dacts.qkv (and Qwen3's qn, kn), att and gu.  The run's
 * half type in bf16/fp16, training or decoding (the tensor-core flash
 * kernels then run; infer.cu's KV cache is of this type too), else fp32
 * (the fp32 mode).  ops.cu. */
int ft_cu_proj_type(const ft_cuda_model *dm);
/* One of those buffers as an operand (half: the run's half type) */
static inline ft_mat ft_cu_proj_mat(const ft_cuda_model *dm, const void *p)
{
	ft_mat m = { p, ft_cu_proj_type(dm) != 0 };
	return m;
}

/* ---- ops.cu: element and row kernels (launchers on dm->stream) ---- */
int ft_cu_embedding_forward(ft_cuda_model *dm, float *out, const int32_t *ids,
			    const ft_dt *wte, int N, int D);
int ft_cu_embedding_backward(ft_cuda_model *dm, float *dwte, const float *dout,
			     const int32_t *ids, int N, int D);
int ft_cu_rmsnorm_forward(ft_cuda_model *dm, float *out, float *rstd, const float *x,
			  const float *w, int N, int D, float eps);
/* The activation type of the normed layer inputs (ft_dacts.ln1, ln2):
 * FT_ACT_F32 in the fp32 mode, the run's half type in bf16/fp16 (see
 * docs/CUDA.md "Mixed precision" for what else stays fp32 and why). */
int ft_cu_act_type(const ft_cuda_model *dm);
/* Bytes of an element of activation type t. */
static inline size_t ft_cu_act_size(int t) { return t == FT_ACT_F32 ? 4 : 2; }
/* ft_cu_rmsnorm_forward with out of that type (statistics fp32). */
int ft_cu_rmsnorm_forward_act(ft_cuda_model *dm, void *out, float *rstd, const float *x,
			      const float *w, int N, int D, float eps);
/* The residual add fused into the norm after it: x_out = a + b (fp32),
 * then RMSNorm(x_out) into out (of ft_cu_act_type); the operations of
 * ft_cu_add + ft_cu_rmsnorm_forward_act. */
int ft_cu_add_rmsnorm_forward(ft_cuda_model *dm, float *x_out, void *out, float *rstd,
			      const float *a, const float *b, const float *w, int N, int D,
			      float eps);
int ft_cu_rmsnorm_backward(ft_cuda_model *dm, float *dx, float *dw, const float *dout,
			   const float *x, const float *w, const float *rstd, int N, int D);
/* Per-head RMSNorm (Qwen3's q_norm/k_norm) over the N*H heads of hd in x
 * (token stride ld: the fused q|k|v buffer); out, dout are [N*H, hd];
 * the backward adds into dx, laid out as x. */
/* x and out of type t (ft_cu_proj_type), dout and dx fp32. */
int ft_cu_head_rmsnorm_forward(ft_cuda_model *dm, void *out, float *rstd, const void *x, int t,
			       int ld, const float *w, int N, int H, int hd, float eps);
int ft_cu_head_rmsnorm_backward(ft_cuda_model *dm, float *dx, float *dw, const float *dout,
				const void *x, int t, int ld, const float *w, const float *rstd,
				int N, int H, int hd);
/* In place on the H heads of each of N tokens (token stride ld), the
 * first dm->v.rd values of each (partial rotary) with [N, rd/2] tables. */
int ft_cu_rope(ft_cuda_model *dm, float *x, int ld, const float *cos_t, const float *sin_t,
	       int N, int H, int hd, float sign);
/* The same on x of activation type at (fp32 registers, rounded once). */
int ft_cu_rope_act(ft_cuda_model *dm, void *x, int at, int ld, const float *cos_t,
		   const float *sin_t, int N, int H, int hd, float sign);
/* h [N, F] (of ft_cu_act_type) from gate, up (rows of stride ld, of
 * type gt); the backward writes fp32 dg, du (stride ld), over g, u (in
 * place) when those are fp32. */
int ft_cu_swiglu_forward(ft_cuda_model *dm, void *h, const void *g, const void *u, int gt,
			 int ld, int N, int F);
int ft_cu_swiglu_backward(ft_cuda_model *dm, float *dg, float *du, const float *dh,
			  const void *g, const void *u, int gt, int ld, int N, int F);
int ft_cu_add(ft_cuda_model *dm, float *dst, const float *a, const float *b, size_t n);
/* y, dy: N rows of `out` at stride ld (a module's columns of a fused buffer) */
int ft_cu_bias_forward(ft_cuda_model *dm, float *y, int ld, const float *b, int N, int out);
/* y fp32 or of the run's half type (y.half) */
int ft_cu_bias_forward_act(ft_cuda_model *dm, ft_mat y, int ld, const float *b, int N, int out);
/* cols columns of N rows from src (row stride lds) to dst (ldd), each
 * fp32 or of the run's half type (.half): widen, round or copy. */
int ft_cu_cast_cols(ft_cuda_model *dm, ft_mat dst, int ldd, ft_mat src, int lds, int N,
		    int cols);
int ft_cu_bias_backward(ft_cuda_model *dm, float *db, const float *dy, int ld, int N, int out);
int ft_cu_dropout(ft_cuda_model *dm, float *out, const float *x, size_t n, float p,
		  uint64_t seed);
/* The same mask on x, fp32 or of ft_cu_act_type (out of x's type). */
int ft_cu_dropout_act(ft_cuda_model *dm, void *out, ft_mat x, size_t n, float p,
		      uint64_t seed);
int ft_cu_cast_to_half(ft_cuda_model *dm, uint16_t *dst, const float *src, size_t n);
/* dst = x as fp32 (x fp32 or of ft_cu_act_type; a copy when fp32) */
int ft_cu_act_to_f32(ft_cuda_model *dm, float *dst, ft_mat x, size_t n);
int ft_cu_gather_rows(ft_cuda_model *dm, float *dst, const float *src,
		      const int32_t *rows, int n, int D);
int ft_cu_scatter_rows(ft_cuda_model *dm, float *dst, const float *src,
		       const int32_t *rows, int n, int D);
int ft_cu_zero(ft_cuda_model *dm, void *p, size_t bytes);
int ft_cu_adamw(ft_cuda_model *dm, ft_dt *t, const ft_k_adamw *k);
/* FT_SUMSQ_BLOCKS partial sums of g^2 into out[0..FT_SUMSQ_BLOCKS) */
#define FT_SUMSQ_BLOCKS 128
int ft_cu_sumsq(ft_cuda_model *dm, double *out, const float *g, size_t n);
int ft_cu_scale(ft_cuda_model *dm, float *g, float s, size_t n);
int ft_cu_nonfinite(ft_cuda_model *dm, int *flag, const float *g, size_t n);

/* ---- attention.cu ---- */
/* Flash attention (no [T, T] buffer).  head_dim at most FT_CU_ATTN_MAX_HD. */
#define FT_CU_ATTN_MAX_HD 256
typedef ft_cuda_attn_shape ft_cu_attn;
/* Token strides of the q, k, v inputs and the dq, dk, dv outputs (their
 * columns of the fused q|k|v buffers); NULL or 0: contiguous [B*T, H*hd].
 * out, dout are always contiguous [B*T, Hq*hd]. */
typedef struct { int q, k, v, dq, dk, dv; } ft_cu_attn_ld;
/* On buffers of activation type t: FT_ACT_F32 the fp32 kernels
 * (flash_kernels.cuh), FT_ACT_BF16 / FT_ACT_F16 the tensor-core ones
 * (flash_tc.cuh); lse and the rowdot scratch stay fp32.  The backward
 * writes (does not add to) dq, dk, dv. */
int ft_cu_attention_forward_as(ft_cuda_model *dm, int t, void *out, float *lse, const void *q,
			       const void *k, const void *v, const ft_cu_attn *s,
			       const ft_cu_attn_ld *ld);
int ft_cu_attention_backward_as(ft_cuda_model *dm, int t, void *dq, void *dk, void *dv,
				const void *dout, const void *q, const void *k, const void *v,
				const void *out, const float *lse, const ft_cu_attn *s,
				const ft_cu_attn_ld *ld);

/* ---- lmhead.cu ---- */
/* As ft_lm_head_loss; logits (host pointer or NULL) receives [n, V]. */
int ft_cu_lm_head_loss(ft_cuda_model *dm, float *dx, float *logits, const float *x,
		       const int32_t *targets, int n, float grad_scale, double *loss);

/* ---- model.cu / optim.cu: setup and transfers ---- */
/* Host weights of t -> device (fp32 and/or half copy). */
int ft_cu_upload(ft_cuda_model *dm, ft_dt *t);
/* Copy on dm->stream and wait: the model's stream is non-blocking, so a
 * plain cudaMemcpy (legacy stream) would not be ordered with its work. */
int ft_cu_copy(ft_cuda_model *dm, void *dst, const void *src, size_t bytes,
	       cudaMemcpyKind kind, const char *what);
/* Update dm->peak, the allocator's high-water mark. */
void ft_cu_sample_peak(ft_cuda_model *dm);
/* The backward's word that gradient group `group` is final: its event
 * recorded on dm->stream, then the hook (ft_cuda_set_grads_ready); a no-op
 * without one.  ft_cu_comm_free releases the stream and events. */
int ft_cu_grads_final(ft_cuda_model *dm, int group);
void ft_cu_comm_free(ft_cuda_model *dm);
/* ---- neftune.cu: NEFTune's noise added to x [B*T, D] (training) ---- */
int ft_cu_neftune(ft_cuda_model *dm, float *x, int B, int T);
/* The decoder's: n tokens' host noise h [n, D] (ft_cuda_view_neftune_tokens)
 * added to x [rows, D] at rows slot[i] (NULL: i), the rest untouched */
int ft_cu_neftune_tokens(ft_cuda_model *dm, float *x, const float *h, const int *slot, int n, int rows);
void ft_cu_neftune_free(ft_cuda_model *dm);
/* ---- zero.cu: ZeRO-1's slice of the AdamW state ----
 * init (after the tensors exist) places each trainable tensor in the
 * trainer's concatenation; layout carves the slice's moments (instead of
 * layout_unit's) and points each tensor's m, v at its first owned
 * element.  range: tensor k's owned elements [*a, *b) (all of it when not
 * sharded); piece: the ft_dt AdamW steps for tensor k, t itself when not
 * sharded, NULL when this rank owns none of it, else *s (its owned
 * elements). */
int ft_cu_zero_init(ft_cuda_model *dm);
void ft_cu_zero_layout(ft_cuda_model *dm, ft_arena *a);
void ft_cu_zero_range(const ft_cuda_model *dm, int k, size_t *a, size_t *b);
ft_dt *ft_cu_zero_piece(ft_cuda_model *dm, int k, ft_dt *t, ft_dt *s);
void ft_cu_zero_free(ft_cuda_model *dm);
/* ---- layer.cu: one decoder layer (mirrors lib/model/model_fwd.c) ---- */
int ft_cu_layer_forward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in, float *x_out,
			const ft_cuda_batch *b);
/* dm->d_a holds dL/dx_out on entry and dL/dx_in on return (unless
 * need_dx is 0). */
int ft_cu_layer_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			 const ft_cuda_batch *b, int need_dx);
/* Whether layer l has a trainable tensor (the backward stops below it). */
int ft_cu_layer_has_grad(const ft_cuda_model *dm, int l);
/* Whether fused group gi of layer l computes only into fp32 (QLoRA, OFT,
 * DoRA): with a half output it runs into dm->dqkv and is rounded once
 * (model.cu sizes dqkv for it). */
int ft_cu_group_f32_only(const ft_cuda_model *dm, int l, int gi);
/* lin_fwd, for infer.cu (dm->training 0) */
int ft_cu_lin_forward(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *y, ft_mat x, int N);
/* Attention's inputs from ln1 (layer_forward's first half, for infer.cu
 * too): the q|k|v projection, q_norm/k_norm, RoPE; a->q, k, v bound. */
int ft_cu_attn_inputs(ft_cuda_model *dm, int l, ft_dacts *a, int N);
/* Attention of layer l on the bound q, k, v into a->att, a->lse (the
 * tensor-core kernels for half activations). */
int ft_cu_attn_forward(ft_cuda_model *dm, int l, ft_dacts *a, const ft_cuda_batch *b);
/* The MLP's input side (infer.cu and gemma.cu too): the gate|up
 * projection of a->ln2 and the hidden dm->hbuf (SwiGLU, Gemma's GeGLU);
 * the hidden alone (the backward's recompute); and the backward from
 * dm->dh to dm->d_ln (zeroed first) through both. */
int ft_cu_mlp_in_forward(ft_cuda_model *dm, int l, ft_dacts *a, int N);
int ft_cu_glu_forward(ft_cuda_model *dm, int l, const ft_dacts *a, int N);
int ft_cu_mlp_in_backward(ft_cuda_model *dm, int l, ft_dacts *a, int N);
/* For pref.cu: forward_body of model.cu (the decoder up to dm->lnf), and
 * the backward pass from the n rows dm->head_dx of d(lnf), placed at
 * rows dm->rows (distinct), through every layer that trains. */
int ft_cu_forward_body(ft_cuda_model *dm, const ft_cuda_batch *b);
/* model_fwd.cu: the RoPE tables of positions dm->h_pos[0..n) to cos_t,
 * sin_t (infer.cu too: one construction of the tables). */
int ft_cu_rope_upload(ft_cuda_model *dm, int n, int maxpos);
int ft_cu_backward_body(ft_cuda_model *dm, const ft_cuda_batch *b, int n);
/* pref.cu: the rows of b with a label target into dm->rows / dm->targets
 * (host copies h_rows / h_tg2), their final-norm rows into dm->head_x;
 * *n_out their count (pref.cu, asft.cu). */
int ft_cu_gather_targets(ft_cuda_model *dm, const ft_cuda_batch *b, int *n_out);

/* ---- quant.cu: QLoRA's base linears ---- */
/* Whether the dequantized tile is half (the working precision's operand
 * type) and its element size: the one place that decides. */
int ft_cu_qscratch_half(const ft_cuda_model *dm);
size_t ft_cu_qscratch_elem(const ft_cuda_model *dm);
/* y (row stride ldy) = x W^T: x [N, in] (fp32 or of ft_cu_act_type) and
 * xo, x as the operand (cast when the scratch is half); an 8-bit weight
 * in eval runs LLM.int8() on x. */
int ft_cu_qlin_forward(ft_cuda_model *dm, const ft_cu_qweight *q, float *y, int ldy,
		       ft_mat x, ft_mat xo, int N, const char *what);
/* Rows [r0, r1) of W dequantized into the scratch (*w: it, row-major, in
 * the scratch's type), and how many rows a tile holds: DoRA's row norms
 * (dora.cu) read the weight as the products do. */
int ft_cu_qrows(ft_cuda_model *dm, const ft_cu_qweight *q, int r0, int r1, ft_mat *w);
int ft_cu_qtile_rows(const ft_cuda_model *dm, const ft_cu_qweight *q);
/* dx [N, in] += dy W; dyo: dy as the operand, row stride lddy. */
int ft_cu_qlin_backward(ft_cuda_model *dm, const ft_cu_qweight *q, float *dx, ft_mat dyo,
			int lddy, int N, const char *what);

/* ---- fp8.cu: torchao's Float8Linear modules (mirrors lib/model/model_fp8.c) ---- */
/* Whether a member of fused group gi is converted (the group then runs
 * module by module). */
int ft_cu_fp8_group(const ft_cuda_model *dm, int l, int gi);
/* y (row stride ldy, fp32) = x W^T through fp8 operands; x [N, in] fp32 or
 * of ft_cu_act_type.  No bias (the caller adds it in full precision). */
int ft_cu_fp8_forward(ft_cuda_model *dm, int l, int j, float *y, int ldy, ft_mat x, int N);
/* dx += dq(dy) W (dx may be NULL), dW += dq(dy)^T q(x); dy fp32, row
 * stride lddy. */
int ft_cu_fp8_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy, int lddy,
		       ft_mat x, int N);
void ft_cu_fp8_layout(ft_cuda_model *dm, ft_arena *a, size_t N);

/* layer.cu, for gemma.cu: the pieces Gemma's layer shares with the
 * Llama one.  lin_bwd; the attention shape of layer l
 * (its window, scale and soft-cap); layer l's RoPE tables; the
 * attention backward from dm->d_att (dL/d att) down to dm->d_a += dL/dx_in
 * through ln1 (norm weight w1: the one the forward used). */
int ft_cu_lin_backward(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *dx,
		       const float *dy, ft_mat x, int N);
ft_cu_attn ft_cu_attn_shape_of(const ft_cuda_model *dm, int l, const ft_cuda_batch *b);
void ft_cu_layer_tables(const ft_cuda_model *dm, int l, const float **cs, const float **sn);
int ft_cu_attn_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			const ft_cuda_batch *b, int need_dx);
/* Module j's LoRA input with dropout on (training, p > 0): x's dropped
 * copy in dm->drop (x's type), else x; its mask on a gradient:
 * dm->ddrop masked in place, then dx += ddrop (n elements). */
int ft_cu_lora_input(ft_cuda_model *dm, int l, int j, ft_mat x, size_t n, ft_mat *xd);
int ft_cu_lora_drop_grad(ft_cuda_model *dm, int l, int j, float *dx, size_t n);
/* The weight a norm scales by: t's own, or (Gemma) 1 + t's in
 * dm->norm_eff, valid until the next call (stream-ordered). */
int ft_cu_norm_w(ft_cuda_model *dm, const ft_dt *t, int n, const float **w);

/* ---- dora.cu: DoRA (mirrors lib/model/lora_dora.c) ---- */
/* After module j's LoRA product: y (N rows of its outputs, stride ld)
 * times mag / ||W + s B A|| around the bias, the pre-factor outputs kept
 * for the backward; a no-op without DoRA (or its adapter off). */
int ft_cu_dora_forward(ft_cuda_model *dm, int l, int j, float *y, int ld, int N);
/* dyo (stride ldo; may be dy) = the factor times dy, mag's gradient
 * accumulated. */
int ft_cu_dora_backward(ft_cuda_model *dm, int l, int j, float *dyo, int ldo, const float *dy,
			int ld, int N);
/* lin_bwd's: *dy [N, out] -> the scaled copy in dm->dora_dy (no-op
 * without DoRA). */
int ft_cu_dora_lin_backward(ft_cuda_model *dm, int l, int j, const float **dy, int N);
/* lin_bwd_group's: each DoRA module's columns of dY [N, c->tot] in place. */
int ft_cu_dora_group_backward(ft_cuda_model *dm, int l, const ft_cv_group *c, float *dY, int N);
/* With LoRA dropout (training): module j's forward after its LoRA A
 * product h (fp32, stride ldh) on its dropped input xm (W's operand
 * type), y holding x W^T + b; and its backward after the base part
 * (dx += dy W, dy unscaled), the LoRA and DoRA gradients and dx's
 * masked part.  h: the LoRA hidden (fp32 or the fused output's half). */
int ft_cu_dora_drop_forward(ft_cuda_model *dm, int l, int j, float *y, int ld, ft_mat xm,
			    ft_mat h, int ldh, int N);
int ft_cu_dora_drop_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy,
			     int ld, ft_mat h, int ldh, ft_mat xm, int N);
/* The same for every LoRA module of a fused group (Y its forward output,
 * x its input), after the group's base backward. */
int ft_cu_dora_drop_group_backward(ft_cuda_model *dm, int l, const ft_cv_group *c, ft_mat Y,
				   const float *dY, float *dx, ft_mat x, int N);
/* Whether the fused group c of layer l has DoRA modules. */
int ft_cu_dora_group(const ft_cuda_model *dm, int l, const ft_cv_group *c);
/* The DoRA buffers in the memory plan (model.cu's layout). */
void ft_cu_dora_layout(ft_cuda_model *dm, ft_arena *a, size_t N);

/* ---- oft.cu: OFT (mirrors lib/model/model_oft.c) ---- */
const ft_doft *ft_cu_oft_of(const ft_cuda_model *dm, int l, int j);
/* Whether a member of fused group gi has OFT (the group then runs module
 * by module). */
int ft_cu_oft_group(const ft_cuda_model *dm, int l, int gi);
/* lin_fwd's input: *x rotated (into dm->drop, fp32) when module j has
 * OFT.  x: fp32 or of ft_cu_act_type. */
int ft_cu_oft_input(ft_cuda_model *dm, int l, int j, ft_mat *x, int N);
int ft_cu_oft_forward_group(ft_cuda_model *dm, int l, int gi, float *Y, ft_mat x, int N);
/* lin_bwd / lin_bwd_group of OFT (frozen bases): dx += dL/dx (dx may be
 * NULL), oft_R's gradients. */
int ft_cu_oft_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy,
		       ft_mat x, int N);
int ft_cu_oft_backward_group(ft_cuda_model *dm, int l, int gi, const float *dY, float *dx,
			     ft_mat x, int N);
void ft_cu_oft_layout(ft_cuda_model *dm, ft_arena *a);

/* ---- gemma.cu: Gemma 2 / 3 (mirrors lib/model/model_gemma.c) ---- */
int ft_cu_gemma_layer_forward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			      float *x_out, const ft_cuda_batch *b);
int ft_cu_gemma_layer_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			       const ft_cuda_batch *b, int need_dx);
/* x = cap * tanh(x / cap) on n values (the final logits) */
int ft_cu_softcap(ft_cuda_model *dm, float *x, size_t n, float cap);
int ft_cu_geglu_forward(ft_cuda_model *dm, void *h, const void *g, const void *u, int gt,
			int ld, int N, int F);
int ft_cu_geglu_backward(ft_cuda_model *dm, float *dg, float *du, const float *dh,
			 const void *g, const void *u, int gt, int ld, int N, int F);

/* ---- optim.cu ---- */
/* Parameters outside the model's tensors that step with them (rm's value
 * head, pref.cu): in the fp16 overflow check, the gradient norm and the
 * clipping, and AdamW (decay[k] as ft_param.decay).  sumsq: device room
 * for n * FT_SUMSQ_BLOCKS partials. */
typedef struct {
	ft_dt *t[2];
	int decay[2];
	int n;
	double *sumsq;
} ft_cu_extra;
/* ft_cuda_step over the model's tensors and x's (x NULL: the model's). */
int ft_cu_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr, double max_grad_norm,
	       double *grad_norm, int *skipped, const ft_cu_extra *x);
/* optim_x.cu: frees dm->xbuf and xproj (ft_cuda_model_free) */
void ft_cu_xbuf_free(ft_cuda_model *dm);

#endif
