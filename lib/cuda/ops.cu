/* ops.cu - element and row kernels of the CUDA backend, named after the
 * CPU layers they mirror (lib/model/layers.c).  The arithmetic per element or
 * per row is in lib/model/kernels.h (shared with the host and unit-tested
 * there); these kernels add the parallel part: a grid over elements, or
 * one block per row with a shared-memory reduction. */
#include "cuda/common.cuh"
#include "cuda/norm_kernels.cuh"

#define TPB 256

static unsigned nblk(size_t n) { return ft_cu_grid(n, TPB); }

#define FOR_N(i, n) FT_CU_FOR(i, n)

/* ---- embedding ---- */

static __global__ void embedding_forward_k(float *out, const int32_t *ids, const float *w,
					   const uint16_t *h, int bf16, size_t N, int D)
{
	FOR_N(i, N * D) {
		size_t n = i / D, d = i % D, src = (size_t)ids[n] * D + d;
		out[i] = w ? w[src] : bf16 ? ft_k_bf16_to_f32(h[src]) : ft_k_f16_to_f32(h[src]);
	}
}

int ft_cu_embedding_forward(ft_cuda_model *dm, float *out, const int32_t *ids,
			    const ft_dt *wte, int N, int D)
{
	size_t n = (size_t)N * D;
	/* the fp32 master when there is one: exact, and current */
	FT_LAUNCH(embedding_forward_k, nblk(n), TPB, 0, dm->stream)(out, ids, wte->w, wte->h,
		dm->o.precision == FT_CUDA_BF16, N, D);
	LAUNCHED("embedding_forward", "N=%d D=%d", N, D);
	return 0;
}

/* One thread per column d adds every token's row in token order: no
 * atomics, the same order as the CPU (deterministic). */
static __global__ void embedding_backward_k(float *dw, const float *dout, const int32_t *ids,
					    int N, int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	if (d >= D)
		return;
	for (int n = 0; n < N; n++)
		dw[(size_t)ids[n] * D + d] += dout[(size_t)n * D + d];
}

int ft_cu_embedding_backward(ft_cuda_model *dm, float *dwte, const float *dout,
			     const int32_t *ids, int N, int D)
{
	/* 32-thread blocks: D/32 of them (128 at D 4096) rather than D/256 */
	FT_LAUNCH(embedding_backward_k, (D + 31) / 32, 32, 0, dm->stream)(dwte, dout, ids, N, D);
	LAUNCHED("embedding_backward", "N=%d D=%d", N, D);
	return 0;
}

/* ---- RMSNorm: one block per row ---- */

static int rmsnorm_forward(ft_cuda_model *dm, void *out, int at, float *rstd, const float *x,
			   const float *w, int N, int D, float eps)
{
	if (N <= 0)
		return 0;
	FT_LAUNCH(rmsnorm_forward_k, N, FT_NORM_TPB, 0, dm->stream)(out, at, rstd, x,
								    ft_cu_rows_of(D), w, D, eps);
	LAUNCHED("rmsnorm_forward", "N=%d D=%d %s", N, D, at ? "half out" : "");
	return 0;
}

int ft_cu_rmsnorm_forward(ft_cuda_model *dm, float *out, float *rstd, const float *x,
			  const float *w, int N, int D, float eps)
{
	return rmsnorm_forward(dm, out, FT_ACT_F32, rstd, x, w, N, D, eps);
}

int ft_cu_rmsnorm_forward_act(ft_cuda_model *dm, void *out, float *rstd, const float *x,
			      const float *w, int N, int D, float eps)
{
	return rmsnorm_forward(dm, out, ft_cu_act_type(dm), rstd, x, w, N, D, eps);
}

int ft_cu_act_type(const ft_cuda_model *dm)
{
	if (!dm->half)
		return FT_ACT_F32;
	return dm->o.precision == FT_CUDA_BF16 ? FT_ACT_BF16 : FT_ACT_F16;
}

int ft_cu_proj_type(const ft_cuda_model *dm)
{
	return ft_cu_act_type(dm);
}

/* Qwen3's q_norm / k_norm: the N*H heads of x (row stride ld) normalised
 * into out [N*H, hd] (contiguous). */
/* x and out of type t (ft_cu_proj_type: the q|k|v buffer's). */
int ft_cu_head_rmsnorm_forward(ft_cuda_model *dm, void *out, float *rstd, const void *x, int t,
			       int ld, const float *w, int N, int H, int hd, float eps)
{
	if (N <= 0)
		return 0;
	ft_cu_rows xl = { H, ld };
	if (t == FT_ACT_F32)
		FT_LAUNCH(rmsnorm_forward_k, N * H, FT_NORM_TPB, 0, dm->stream)(
			out, FT_ACT_F32, rstd, (const float *)x, xl, w, hd, eps);
	else
		FT_LAUNCH(rmsnorm_forward_xk, N * H, FT_NORM_TPB, 0, dm->stream)(out, t, rstd, x, t,
										  xl, w, hd, eps);
	LAUNCHED("head_rmsnorm_forward", "N=%d H=%d hd=%d ld=%d", N, H, hd, ld);
	return 0;
}

/* x (of type xt) and dx share the row addressing xl; dout is contiguous. */
static __global__ void rmsnorm_backward_k(float *dx, const float *dout,
					  const void *x, int xt, ft_cu_rows xl, const float *w,
					  const float *rstd, int D)
{
	__shared__ float sh[TPB];
	size_t row = ft_cu_row(xl, blockIdx.x, D);
	const float *g = dout + (size_t)blockIdx.x * D;
	float r = rstd[blockIdx.x], dot = 0;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		dot += g[d] * w[d] * ft_k_act_get(x, row + d, xt);
	float s = ft_k_rmsnorm_dot_scale(ft_cu_block_sum(dot, sh), r, D);
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		dx[row + d] += ft_k_rmsnorm_dx(g[d], w[d], ft_k_act_get(x, row + d, xt), r, s);
}

/* ---- deterministic two-stage column sums (ft_k_colsum_chunk) ---- */

#define COL_TPB 128

/* Stage 1: block (column tile, chunk) sums e(n, d) over its chunk's rows
 * in order into part[chunk][d]. */
template <class Elem>
static __global__ void col_part_k(float *part, int N, int D, Elem e)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x, r0, r1;
	if (d >= D)
		return;
	ft_k_colsum_chunk(blockIdx.y, N, &r0, &r1);
	float s = 0;
	for (int n = r0; n < r1; n++)
		s += e(n, d);
	part[(size_t)blockIdx.y * D + d] = s;
}

struct rmsnorm_dw_elem {   /* RMSNorm weight gradient terms */
	const float *dout;
	const void *x;
	const float *rstd;
	ft_cu_rows xl;
	int D, xt;
	__device__ float operator()(int n, int d) const
	{
		return ft_k_rmsnorm_dw(dout[(size_t)n * D + d],
				       ft_k_act_get(x, ft_cu_row(xl, n, D) + d, xt), rstd[n]);
	}
};

struct plain_elem {        /* a bias gradient: the rows of dy (row stride ld) */
	const float *y;
	int ld;
	__device__ float operator()(int n, int d) const { return y[(size_t)n * ld + d]; }
};

/* Stage 2: out[d] += the chunk partials in chunk order. */
static __global__ void col_finish_k(float *out, const float *part, int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	if (d >= D)
		return;
	float s = 0;
	for (int c = 0; c < FT_COLSUM_CHUNKS; c++)
		s += part[(size_t)c * D + d];
	out[d] += s;
}

static dim3 col_grid(int D) { return dim3((D + COL_TPB - 1) / COL_TPB, FT_COLSUM_CHUNKS); }

/* x_out = a + b and out = RMSNorm(x_out) in one pass (norm_kernels.cuh). */
int ft_cu_add_rmsnorm_forward(ft_cuda_model *dm, float *x_out, void *out, float *rstd,
			      const float *a, const float *b, const float *w, int N, int D,
			      float eps)
{
	if (N <= 0)
		return 0;
	FT_LAUNCH(add_rmsnorm_forward_k, N, FT_NORM_TPB, 0, dm->stream)(x_out, out, ft_cu_act_type(dm),
									rstd, a, b, w, D, eps);
	LAUNCHED("add_rmsnorm_forward", "N=%d D=%d", N, D);
	return 0;
}

static int rmsnorm_backward(ft_cuda_model *dm, float *dx, float *dw, const float *dout,
			    const void *x, int xt, ft_cu_rows xl, const float *w,
			    const float *rstd, int N, int D)
{
	if (N <= 0)
		return 0;
	FT_LAUNCH(rmsnorm_backward_k, N, TPB, 0, dm->stream)(dx, dout, x, xt, xl, w, rstd, D);
	LAUNCHED("rmsnorm_backward", "N=%d D=%d", N, D);
	if (dw) {
		rmsnorm_dw_elem e = { dout, x, rstd, xl, D, xt };
		FT_LAUNCH(col_part_k, col_grid(D), COL_TPB, 0, dm->stream)(dm->colpart, N, D, e);
		LAUNCHED("rmsnorm_backward dw partials", "N=%d D=%d", N, D);
		FT_LAUNCH(col_finish_k, (D + COL_TPB - 1) / COL_TPB, COL_TPB, 0, dm->stream)(dw, dm->colpart, D);
		LAUNCHED("rmsnorm_backward dw", "N=%d D=%d", N, D);
	}
	return 0;
}

int ft_cu_rmsnorm_backward(ft_cuda_model *dm, float *dx, float *dw, const float *dout,
			   const float *x, const float *w, const float *rstd, int N, int D)
{
	return rmsnorm_backward(dm, dx, dw, dout, x, FT_ACT_F32, ft_cu_rows_of(D), w, rstd, N, D);
}

int ft_cu_head_rmsnorm_backward(ft_cuda_model *dm, float *dx, float *dw, const float *dout,
				const void *x, int xt, int ld, const float *w, const float *rstd,
				int N, int H, int hd)
{
	ft_cu_rows xl = { H, ld };
	return rmsnorm_backward(dm, dx, dw, dout, x, xt, xl, w, rstd, N * H, hd);
}

/* ---- RoPE (rotate-half), in place; sign -1 = backward ----
 * On the first rd values of each head of hd (rd < hd: partial rotary
 * embeddings, Phi-4-mini), the tables [N, rd/2], as ft_rope_forward. */

static __global__ void rope_k(float *x, size_t ld, const float *cos_t, const float *sin_t,
			      size_t N, int H, int hd, int rd, float sign)
{
	int half = rd / 2;
	FOR_N(i, N * H * half) {
		size_t n = i / ((size_t)H * half);
		int h = (int)(i / half % H), j = (int)(i % half);
		float *v = x + n * ld + (size_t)h * hd;
		ft_k_rope_pair(v + j, v + j + half, cos_t[n * half + j], sin_t[n * half + j], sign);
	}
}

/* The same on x of type at (the half q|k|v buffer): each pair widened,
 * rotated in fp32 registers as ft_k_rope_pair, rounded once. */
static __global__ void rope_act_k(void *x, int at, size_t ld, const float *cos_t,
				  const float *sin_t, size_t N, int H, int hd, int rd, float sign)
{
	int half = rd / 2;
	FOR_N(i, N * H * half) {
		size_t n = i / ((size_t)H * half);
		int h = (int)(i / half % H), j = (int)(i % half);
		size_t e = n * ld + (size_t)h * hd + j;
		float a = ft_k_act_get(x, e, at), b = ft_k_act_get(x, e + half, at);
		ft_k_rope_pair(&a, &b, cos_t[n * half + j], sin_t[n * half + j], sign);
		ft_k_act_put(x, e, a, at);
		ft_k_act_put(x, e + half, b, at);
	}
}

/* The rotary dim is the view's (dm->v.rd), for every caller. */
int ft_cu_rope(ft_cuda_model *dm, float *x, int ld, const float *cos_t, const float *sin_t,
	       int N, int H, int hd, float sign)
{
	return ft_cu_rope_act(dm, x, FT_ACT_F32, ld, cos_t, sin_t, N, H, hd, sign);
}

int ft_cu_rope_act(ft_cuda_model *dm, void *x, int at, int ld, const float *cos_t,
		   const float *sin_t, int N, int H, int hd, float sign)
{
	int rd = dm->v.rd > 0 ? dm->v.rd : hd;
	size_t n = (size_t)N * H * (rd / 2);
	if (at == FT_ACT_F32)
		FT_LAUNCH(rope_k, nblk(n), TPB, 0, dm->stream)((float *)x, ld, cos_t, sin_t, N, H, hd,
							       rd, sign);
	else
		FT_LAUNCH(rope_act_k, nblk(n), TPB, 0, dm->stream)(x, at, ld, cos_t, sin_t, N, H, hd,
								   rd, sign);
	LAUNCHED(sign > 0 ? "rope_forward" : "rope_backward", "N=%d H=%d hd=%d rd=%d%s", N, H, hd,
		 rd, at ? " half" : "");
	return 0;
}

/* ---- SwiGLU ---- */

/* gate and up are rows of stride ld (the fused gate|up buffer); h, dh
 * are [N, F].  Element i is read and written by one thread only, so the
 * backward may write dg, du over g, u (in place: the layer's backward
 * turns its gate|up activations into their gradients). */

int ft_cu_swiglu_forward(ft_cuda_model *dm, void *h, const void *g, const void *u, int gt,
			 int ld, int N, int F)
{
	size_t n = (size_t)N * F;
	FT_LAUNCH(swiglu_forward_k, nblk(n), TPB, 0, dm->stream)(h, ft_cu_act_type(dm), g, u, gt, ld,
								 N, F);
	LAUNCHED("swiglu_forward", "N=%d F=%d ld=%d", N, F, ld);
	return 0;
}

int ft_cu_swiglu_backward(ft_cuda_model *dm, float *dg, float *du, const float *dh,
			  const void *g, const void *u, int gt, int ld, int N, int F)
{
	size_t n = (size_t)N * F;
	FT_LAUNCH(swiglu_backward_k, nblk(n), TPB, 0, dm->stream)(dg, du, dh, g, u, gt, ld, N, F);
	LAUNCHED("swiglu_backward", "N=%d F=%d ld=%d", N, F, ld);
	return 0;
}

/* ---- residual adds, biases, dropout ---- */

static __global__ void add_k(float *dst, const float *a, const float *b, size_t n)
{
	FOR_N(i, n)
		dst[i] = a[i] + b[i];
}

int ft_cu_add(ft_cuda_model *dm, float *dst, const float *a, const float *b, size_t n)
{
	FT_LAUNCH(add_k, nblk(n), TPB, 0, dm->stream)(dst, a, b, n);
	LAUNCHED("add", "n=%zu", n);
	return 0;
}

/* y of type at (a half q|k|v buffer: the sum rounded once) */
static __global__ void bias_forward_k(void *y, int at, size_t ld, const float *b, size_t N,
				      int out)
{
	FOR_N(i, N * out) {
		size_t e = i / out * ld + i % out;
		ft_k_act_put(y, e, ft_k_act_get(y, e, at) + b[i % out], at);
	}
}

int ft_cu_bias_forward(ft_cuda_model *dm, float *y, int ld, const float *b, int N, int out)
{
	return ft_cu_bias_forward_act(dm, ft_cu_f32(y), ld, b, N, out);
}

int ft_cu_bias_forward_act(ft_cuda_model *dm, ft_mat y, int ld, const float *b, int N, int out)
{
	size_t n = (size_t)N * out;
	int at = y.half ? ft_cu_act_type(dm) : FT_ACT_F32;
	FT_LAUNCH(bias_forward_k, nblk(n), TPB, 0, dm->stream)((void *)y.p, at, ld, b, N, out);
	LAUNCHED("bias_forward", "N=%d out=%d", N, out);
	return 0;
}

/* cols columns of N rows, src (row stride lds) into dst (ldd), each of
 * its own type (fp32 or the run's half type): a widening or a rounding,
 * or a copy between columns of fused buffers. */
static __global__ void cast_cols_k(void *dst, int dt, size_t ldd, const void *src, int st,
				   size_t lds, size_t N, int cols)
{
	FOR_N(i, N * cols) {
		size_t n = i / cols, c = i % cols;
		ft_k_act_put(dst, n * ldd + c, ft_k_act_get(src, n * lds + c, st), dt);
	}
}

int ft_cu_cast_cols(ft_cuda_model *dm, ft_mat dst, int ldd, ft_mat src, int lds, int N, int cols)
{
	size_t n = (size_t)N * cols;
	if (!n)
		return 0;
	int at = ft_cu_act_type(dm);
	FT_LAUNCH(cast_cols_k, nblk(n), TPB, 0, dm->stream)((void *)dst.p, dst.half ? at : FT_ACT_F32,
							    ldd, src.p, src.half ? at : FT_ACT_F32,
							    lds, N, cols);
	LAUNCHED("cast_cols", "N=%d cols=%d", N, cols);
	return 0;
}

/* column sums of dy in two deterministic stages (ft_k_colsum_chunk) */
int ft_cu_bias_backward(ft_cuda_model *dm, float *db, const float *dy, int ld, int N, int out)
{
	if (N <= 0)
		return 0;
	plain_elem e = { dy, ld };
	FT_LAUNCH(col_part_k, col_grid(out), COL_TPB, 0, dm->stream)(dm->colpart, N, out, e);
	LAUNCHED("bias_backward partials", "N=%d out=%d", N, out);
	FT_LAUNCH(col_finish_k, (out + COL_TPB - 1) / COL_TPB, COL_TPB, 0, dm->stream)(db, dm->colpart,
										     out);
	LAUNCHED("bias_backward", "N=%d out=%d", N, out);
	return 0;
}

static __global__ void dropout_k(float *out, const float *x, size_t n, ft_k_dropout d,
				 uint64_t seed)
{
	FOR_N(i, n)
		out[i] = ft_k_dropout_elem(x[i], seed, i, &d);
}

int ft_cu_dropout(ft_cuda_model *dm, float *out, const float *x, size_t n, float p,
		  uint64_t seed)
{
	if (p <= 0) {
		if (out != x)
			CU(cudaMemcpyAsync(out, x, n * sizeof(float), cudaMemcpyDeviceToDevice,
					   dm->stream), "n=%zu", n);
		return 0;
	}
	FT_LAUNCH(dropout_k, nblk(n), TPB, 0, dm->stream)(out, x, n, ft_k_dropout_prepare(p), seed);
	LAUNCHED("dropout", "n=%zu p=%g", n, p);
	return 0;
}

/* dropout of an activation stored as the model's activation type */
int ft_cu_dropout_act(ft_cuda_model *dm, void *out, ft_mat x, size_t n, float p,
		      uint64_t seed)
{
	int at = x.half ? ft_cu_act_type(dm) : FT_ACT_F32;
	if (p <= 0) {
		if (out != x.p)
			CU(cudaMemcpyAsync(out, x.p, n * (at ? 2 : 4), cudaMemcpyDeviceToDevice,
					   dm->stream), "n=%zu", n);
		return 0;
	}
	FT_LAUNCH(dropout_act_k, nblk(n), TPB, 0, dm->stream)(out, x.p, at, n,
							      ft_k_dropout_prepare(p), seed);
	LAUNCHED("dropout", "n=%zu p=%g, activation type %d", n, p, at);
	return 0;
}

/* ---- casts, row moves, zero ---- */



static __global__ void cast_half_k(uint16_t *dst, const float *src, size_t n, int bf16)
{
	FOR_N(i, n)
		dst[i] = bf16 ? ft_k_f32_to_bf16(src[i]) : ft_k_f32_to_f16(src[i]);
}

int ft_cu_cast_to_half(ft_cuda_model *dm, uint16_t *dst, const float *src, size_t n)
{
	FT_LAUNCH(cast_half_k, nblk(n), TPB, 0, dm->stream)(dst, src, n,
						     dm->o.precision == FT_CUDA_BF16);
	LAUNCHED("cast_to_half", "n=%zu", n);
	return 0;
}

static __global__ void act_to_f32_k(float *dst, const void *x, int at, size_t n)
{
	FOR_N(i, n)
		dst[i] = ft_k_act_get(x, i, at);
}

int ft_cu_act_to_f32(ft_cuda_model *dm, float *dst, ft_mat x, size_t n)
{
	if (!x.half) {
		CU(cudaMemcpyAsync(dst, x.p, n * sizeof(float), cudaMemcpyDeviceToDevice,
				   dm->stream), "n=%zu", n);
		return 0;
	}
	FT_LAUNCH(act_to_f32_k, nblk(n), TPB, 0, dm->stream)(dst, x.p, ft_cu_act_type(dm), n);
	LAUNCHED("act_to_f32", "n=%zu", n);
	return 0;
}

static __global__ void move_rows_k(float *dst, const float *src, const int32_t *rows,
				   size_t n, int D, int scatter)
{
	FOR_N(i, n * D) {
		size_t k = i / D, d = i % D, r = (size_t)rows[k] * D + d;
		if (scatter)
			dst[r] = src[i];
		else
			dst[i] = src[r];
	}
}

int ft_cu_gather_rows(ft_cuda_model *dm, float *dst, const float *src,
		      const int32_t *rows, int n, int D)
{
	if (n <= 0)
		return 0;
	FT_LAUNCH(move_rows_k, nblk((size_t)n * D), TPB, 0, dm->stream)(dst, src, rows, n, D, 0);
	LAUNCHED("gather_rows", "n=%d D=%d", n, D);
	return 0;
}

int ft_cu_scatter_rows(ft_cuda_model *dm, float *dst, const float *src,
		       const int32_t *rows, int n, int D)
{
	if (n <= 0)
		return 0;
	FT_LAUNCH(move_rows_k, nblk((size_t)n * D), TPB, 0, dm->stream)(dst, src, rows, n, D, 1);
	LAUNCHED("scatter_rows", "n=%d D=%d", n, D);
	return 0;
}

int ft_cu_zero(ft_cuda_model *dm, void *p, size_t bytes)
{
	if (bytes)
		CU(cudaMemsetAsync(p, 0, bytes, dm->stream), "%zu bytes", bytes);
	return 0;
}

/* ---- optimizer ---- */

static __global__ void adamw_k(float *p, const float *g, float *m, float *v, size_t n,
			       ft_k_adamw k)
{
	FOR_N(i, n)
		ft_k_adamw_elem(p + i, g[i], m + i, v + i, &k);
}

int ft_cu_adamw(ft_cuda_model *dm, ft_dt *t, const ft_k_adamw *k)
{
	FT_LAUNCH(adamw_k, nblk(t->n), TPB, 0, dm->stream)(t->w, t->g, t->m, t->v, t->n, *k);
	LAUNCHED("adamw", "n=%zu", t->n);
	return 0;
}

/* Sum of squares in double: block b writes partial out[b] (FT_SUMSQ_BLOCKS
 * of them), the host adds them in order: deterministic. */
static __global__ void sumsq_k(double *out, const float *g, size_t n)
{
	__shared__ double sh[TPB];
	double s = 0;
	FOR_N(i, n)
		s += (double)g[i] * g[i];
	s = ft_cu_block_sum(s, sh);
	if (threadIdx.x == 0)
		out[blockIdx.x] = s;
}

/* Only the blocks n needs (a small tensor, a LoRA matrix, a norm: one of
 * FT_SUMSQ_BLOCKS x TPB threads each element either way, so each partial
 * is the full grid's, bit for bit); the idle blocks' partials are zeros. */
int ft_cu_sumsq(ft_cuda_model *dm, double *out, const float *g, size_t n)
{
	unsigned nb = nblk(n) < FT_SUMSQ_BLOCKS ? nblk(n) : FT_SUMSQ_BLOCKS;
	TRY(ft_cu_zero(dm, out + nb, (FT_SUMSQ_BLOCKS - nb) * sizeof *out));
	FT_LAUNCH(sumsq_k, nb, TPB, 0, dm->stream)(out, g, n);
	LAUNCHED("grad_sumsq", "n=%zu", n);
	return 0;
}

static __global__ void scale_k(float *g, float s, size_t n)
{
	FOR_N(i, n)
		g[i] *= s;
}

int ft_cu_scale(ft_cuda_model *dm, float *g, float s, size_t n)
{
	FT_LAUNCH(scale_k, nblk(n), TPB, 0, dm->stream)(g, s, n);
	LAUNCHED("grad_scale", "n=%zu", n);
	return 0;
}

static __global__ void nonfinite_k(int *flag, const float *g, size_t n)
{
	FOR_N(i, n)
		if (!isfinite(g[i]))
			*flag = 1;
}

int ft_cu_nonfinite(ft_cuda_model *dm, int *flag, const float *g, size_t n)
{
	FT_LAUNCH(nonfinite_k, nblk(n), TPB, 0, dm->stream)(flag, g, n);
	LAUNCHED("nonfinite_check", "n=%zu", n);
	return 0;
}
