/* layers.h - the decoder's layers as forward/backward pairs (llm.c style).
 *
 * Plain float32 arrays, row-major, one row per token: N = B*T tokens.
 * Matrix products go through OpenBLAS sgemm; everything else is OpenMP
 * loops.  The CUDA backend mirrors these functions one by one, with the
 * same names and in the same order; each kernel is checked against the
 * CPU version here.
 *
 * Gradient convention: a backward function ADDS into parameter gradients
 * (dW, db, dw may be NULL for frozen parameters) and, where it says so,
 * into input gradients, so that branches of the residual stream and
 * micro-batches accumulate without extra copies.
 */
#ifndef FT_LAYERS_H
#define FT_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* Row-major C[M,N] = alpha op(A) op(B) + beta C (op = transpose when ta/tb),
 * split over OpenMP threads.  The first call sets OpenBLAS to one thread
 * for the whole process: OpenBLAS's pool and OpenMP's would otherwise spin
 * against each other (20x slower on 2 cores); OpenMP splits instead. */
void ft_sgemm(int ta, int tb, int M, int N, int K, float alpha,
	      const float *A, int lda, const float *B, int ldb, float beta,
	      float *C, int ldc);

/* Thin SVD of the row-major X [p, n] through LAPACK's sgesdd (as
 * torch.linalg.svd on the CPU): X = U diag(S) Vh, U [p, k], Vh [k, n],
 * k = min(p, n), S descending (lib/model/lora_pissa.c).  -1 with a
 * message if LAPACK fails. */
int ft_svd_thin(const float *X, int p, int n, float *U, float *S, float *Vh);

/* PiSSA's init of one linear W [out, in] with scale s, as PEFT's
 * _pissa_decomposition (lib/model/lora_pissa.c): A [r, in] and B [out, r]
 * from W's top r singular triplets (niter -1: the exact SVD, "pissa";
 * K >= 0: torch.svd_lowrank's K power iterations, "pissa_niter_K", from
 * a Gaussian start drawn with seed), and W becomes the residual
 * W - (s B) A.  -1 with a message when r > min(out, in) or LAPACK fails. */
int ft_pissa_decompose(float *W, int out, int in, int r, float scale, int niter, uint64_t seed,
		       float *A, float *B);
/* The seed of pissa_niter_K's start for decoder layer `layer`'s linear
 * `module` (0 q_proj, 1 k_proj, 2 v_proj, 3 o_proj, 4 gate_proj, 5 up_proj,
 * 6 down_proj): fixed, so every load of the adapter finds the same
 * residual. */
uint64_t ft_pissa_seed(int layer, int module);

/* Embedding: out[n] = wte[ids[n]];  dwte[ids[n]] += dout[n]. */
void ft_embedding_forward(float *out, const int32_t *ids, const float *wte,
			  int N, int D);
void ft_embedding_backward(float *dwte, const float *dout, const int32_t *ids,
			   int N, int D);

/* RMSNorm as transformers' LlamaRMSNorm: out = w * x / sqrt(mean(x^2)+eps).
 * rstd[N] is saved for the backward pass.  dx is ADDED to. */
void ft_rmsnorm_forward(float *out, float *rstd, const float *x,
			const float *w, int N, int D, float eps);
void ft_rmsnorm_backward(float *dx, float *dw, const float *dout,
			 const float *x, const float *w, const float *rstd,
			 int N, int D);

/* RoPE.  ft_rope_inv_freq computes the hd/2 inverse frequencies as
 * transformers' ROPE_INIT_FUNCTIONS do (float32 arithmetic as torch):
 * type "default", "linear", "dynamic" (seq_len = longest position + 1 in
 * the batch; no effect up to max_pos) or "llama3".  -1 on unknown type. */
typedef struct {
	char type[16];
	double theta, factor, low_freq_factor, high_freq_factor;
	int original_max_pos, max_pos;
	/* yarn (lib/model/rope.c): beta_fast/beta_slow (32, 1), truncate
	 * (1), and the cos/sin scale attention_factor (0 or 1 = none) */
	double beta_fast, beta_slow, attention_factor;
	int truncate;
	/* longrope: rotary_dim/2 factors each (borrowed), the long ones when
	 * seq_len exceeds original_max_pos */
	const float *short_factor, *long_factor;
} ft_rope_params;
int ft_rope_inv_freq(float *inv_freq, int head_dim, const ft_rope_params *p,
		     int seq_len);
/* rope.c: yarn's inverse frequencies (_compute_yarn_parameters), and the
 * cos/sin tables (n floats each) times attention_factor, as transformers
 * scales them (no-op when it is 0 or 1). */
void ft_rope_yarn_inv_freq(float *inv_freq, int head_dim, const ft_rope_params *p);
void ft_rope_longrope_inv_freq(float *inv_freq, int head_dim, const ft_rope_params *p, int seq_len);
void ft_rope_scale_tables(float *cos_t, float *sin_t, size_t n, const ft_rope_params *p);
/* cos/sin tables [N, hd/2] for the token positions (hd: the rotary
 * dim; ft_rope_inv_freq takes it as head_dim too). */
void ft_rope_tables(float *cos_t, float *sin_t, const int32_t *pos, int N,
		    const float *inv_freq, int head_dim);
/* In place on x[N, H*hd], rotate-half convention (HF), on the first rd
 * values of each head (rd = hd but for partial rotary embeddings; the
 * tables are [N, rd/2]).  backward applies the transposed rotation to
 * the gradient, in place. */
void ft_rope_forward(float *x, const float *cos_t, const float *sin_t,
		     int N, int H, int hd, int rd);
void ft_rope_backward(float *dx, const float *cos_t, const float *sin_t,
		      int N, int H, int hd, int rd);

/* Causal softmax attention with GQA (Hq query heads share Hk kv heads)
 * over q[N,Hq*hd], k,v[N,Hk*hd] (N = B*T).  seg (NULL or [N]): a token
 * attends only to earlier tokens with the same non-zero segment id; a
 * token of segment 0 (padding) attends to itself only.  len (NULL or [B]):
 * each row's real length, HF's attention_mask for right padding: keys at
 * positions >= len[b] are hidden from every query (a padding query sees
 * the row's real tokens; ft_k_attn_allowed, kernels.h), real queries are
 * unchanged.  window > 0 limits
 * attention to the last `window` positions (Mistral sliding window).
 * Saves lse[B*Hq*T] (log-sum-exp of each score row) so the backward pass
 * recomputes the probabilities instead of storing [T,T] per head.
 * The backward pass WRITES dq, dk, dv. */
typedef struct {
	int B, T, Hq, Hk, hd, window;
	const int32_t *seg;
	/* scores times scale (0: 1/sqrt(hd)), then softcap * tanh(x / softcap)
	 * when softcap > 0 (Gemma 2) */
	float scale, softcap;
	const int32_t *len;   /* [B] or NULL: every position real */
} ft_attn_shape;
void ft_attention_forward(float *out, float *lse, const float *q,
			  const float *k, const float *v, const ft_attn_shape *s);
void ft_attention_backward(float *dq, float *dk, float *dv, const float *dout,
			   const float *q, const float *k, const float *v,
			   const float *out, const float *lse,
			   const ft_attn_shape *s);

/* GeGLU (Gemma): h = gelu_pytorch_tanh(gate) * up, backward WRITES dgate,
 * dup (lib/model/layers_gemma.c). */
void ft_geglu_forward(float *h, const float *gate, const float *up, size_t n);
void ft_geglu_backward(float *dgate, float *dup, const float *dh,
		       const float *gate, const float *up, size_t n);
/* SwiGLU: h = silu(gate) * up (n elements).  backward WRITES dgate, dup. */
void ft_swiglu_forward(float *h, const float *gate, const float *up, size_t n);
void ft_swiglu_backward(float *dgate, float *dup, const float *dh,
			const float *gate, const float *up, size_t n);

/* Linear as nn.Linear: y[N,out] = x[N,in] W[out,in]^T (+ b).
 * backward: dx += dy W (dx may be NULL), dW += dy^T x, db += sum dy. */
void ft_linear_forward(float *y, const float *x, const float *W,
		       const float *b, int N, int in, int out);
void ft_linear_backward(float *dx, float *dW, float *db, const float *dy,
			const float *x, const float *W, int N, int in, int out);
/* Up to 8 linear layers on the same input (q, k, v; gate, up): the same
 * results as ft_linear_forward on each, small ones run side by side. */
typedef struct {
	float *y;
	const float *W, *b;    /* b may be NULL */
	int out;
} ft_linear_out;
void ft_linear_forward_many(const ft_linear_out *o, int n, const float *x, int N, int in);

/* LoRA branch (PEFT): h[N,r] = xd A^T, y += scale * h B^T, where xd is the
 * (dropped-out) input.  backward: dB += scale dy^T h, dA += dh^T xd and
 * dxd += dh A (dxd may be NULL), with dh = scale dy B in scratch hs[N,r]. */
void ft_lora_forward(float *y, float *h, const float *xd, const float *A,
		     const float *Bm, int N, int in, int out, int r, float scale);
void ft_lora_backward(float *dxd, float *dA, float *dB, float *hs,
		      const float *dy, const float *xd, const float *h,
		      const float *A, const float *Bm, int N, int in, int out,
		      int r, float scale);

/* Inverted dropout with a mask that is a pure function of (seed, index):
 * element i is kept when splitmix64(seed + i) >= p * 2^64, and scaled by
 * 1/(1-p).  The same call regenerates the mask in the backward pass and
 * under gradient checkpointing.  out and x may alias. */
void ft_dropout_apply(float *out, const float *x, size_t n, float p,
		      uint64_t seed);

/* l = exp(l - max(l)) in place and *sum their sum (double, in order):
 * the softmax numerators of one row, as ft_lm_head_loss computes them;
 * returns max(l). */
float ft_exp_row(float *l, int V, double *sum);
/* Gemma 2's final_logit_softcapping on n values in place: cap * tanh(x /
 * cap), float32 in transformers' order; and the gradient through it,
 * d *= 1 - (c / cap)^2 with c the capped values. */
void ft_softcap_forward(float *x, size_t n, float cap);
void ft_softcap_backward(float *d, const float *c, size_t n, float cap);

/* LM head + cross-entropy over n rows x[n,D] with targets[n] (-100 =
 * ignored), computed `chunk` rows at a time so the [n, V] logits never
 * exist at once (scratch holds chunk*V floats).  Returns the summed loss
 * in double and the count of targets in *n_tok.  When dx != NULL the
 * gradient of grad_scale * loss is WRITTEN to dx[n,D] and ADDED to dW
 * (dW may be NULL).  logits (NULL or [n,V]) receives the raw logits. */
/* The same with the logits soft-capped first, softcap * tanh(z / softcap)
 * (Gemma 2's final_logit_softcapping; 0 = off), logits returned capped,
 * and label smoothing ls (transformers' LabelSmoother epsilon; 0 = off:
 * ft_k_ce_loss, ft_k_ce_grad_ls in kernels.h); pred (NULL or [n])
 * receives each row's argmax logit, the first of equal ones (torch.argmax;
 * -1 for an ignored row). */
double ft_lm_head_loss_cap(float *dx, float *dW, float *logits, const float *x,
			   const float *W, const int32_t *targets, int n, int D,
			   int V, float grad_scale, float *scratch, int chunk,
			   int64_t *n_tok, float softcap, float ls, int32_t *pred);
double ft_lm_head_loss(float *dx, float *dW, float *logits, const float *x,
		       const float *W, const int32_t *targets, int n, int D,
		       int V, float grad_scale, float *scratch, int chunk,
		       int64_t *n_tok);

#endif
