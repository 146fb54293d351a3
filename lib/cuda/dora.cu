/* dora.cu - DoRA (PEFT's use_dora) on the device, function by function
 * as lib/model/lora_dora.c (the readable reference):
 *   norm = ||W + s B A||  per output row, detached (no gradient)
 *   y    = bias + (mag / norm) * (x W^T + s B A x)
 *   d(x W^T + s B A x) = (mag / norm) * dy
 *   d mag_j = sum_t dy_tj (x W^T + s B A x)_tj / norm_j
 * The hooks run after a module's LoRA product (layer.cu's lin_fwd and,
 * inside the fused q|k|v and gate|up GEMMs, lin_fwd_group: y is then a
 * module's columns of the fused buffer, row stride ld) and before its
 * backward.  DoRA needs no unfused path: the factor is per output column
 * of one module, so it applies to that module's columns of the fused
 * output as to a plain one.
 *
 * With LoRA dropout (training, p > 0; xd = the module's dropped x, the
 * mask LoRA's dropout draws) PEFT's DoraLinearLayer takes the base term
 * from xd without the bias, so with g = mag / norm:
 *   pre = xd W^T + s B A xd               (an extra GEMM per module)
 *   y   = (x W^T + b) + g * pre - xd W^T
 *   d mag_j = sum_t dy_tj pre_tj / norm_j
 *   dx  = dy W + mask(LoRA's dx from g dy + ((g - 1) dy) W)
 * the base path with the undropped x and the unscaled dy.  Without
 * dropout, and in eval, the first form runs unchanged.
 *
 * The frozen W is read as the forward uses it (its half copy in the
 * bf16/f16 modes: PEFT adds the fp32 B A to the bf16 weight), A and B as
 * their fp32 masters when they train.  On a quantized base (QDoRA) W is
 * the dequantized weight, as PEFT's dequantize_module_weight: the norms
 * take quant.cu's tiles of dequantized rows from its scratch, and the
 * dropped-input product and its backward go through ft_cu_qlin_forward /
 * _backward (the training form).  The CPU refuses DoRA on Phi-3's fused
 * modules, and so the device never sees them.
 */
#include "cuda/common.cuh"

#define DORA_TPB 256
#define DORA_COLS 32   /* columns per block of the backward (coalesced rows) */

/* Element i of a tensor as fp32: its fp32 copy, else its half one. */
typedef struct { const float *w; const uint16_t *h; int bf16; } dora_src;

static __device__ inline float src_at(dora_src s, size_t i)
{
	if (s.w)
		return s.w[i];
	return s.bf16 ? ft_k_bf16_to_f32(s.h[i]) : ft_k_f16_to_f32(s.h[i]);
}

static dora_src src_of(const ft_cuda_model *dm, const ft_dt *t)
{
	dora_src s = { t->w, t->w ? NULL : t->h, dm->o.precision == FT_CUDA_BF16 };
	return s;
}

/* A matrix operand (quant.cu's scratch) as a source. */
static dora_src src_of_mat(const ft_cuda_model *dm, ft_mat m)
{
	dora_src s = { m.half ? NULL : (const float *)m.p, m.half ? (const uint16_t *)m.p : NULL,
		       dm->o.precision == FT_CUDA_BF16 };
	return s;
}

/* The source from element off on. */
static dora_src src_from(dora_src s, size_t off)
{
	if (s.w)
		s.w += off;
	else
		s.h += off;
	return s;
}

/* delta_norm + ftp_dora_scale: one block per output row o, the row of
 * B A (r terms, as the CPU's GEMM) added to W's, squares summed in
 * double, the norm and the factor mag / norm in float. */
static __global__ void dora_norm_k(float *dnorm, float *dscale, const float *mag, dora_src W,
				   dora_src A, dora_src B, int in, int r, float scale)
{
	__shared__ double sh[DORA_TPB];
	int o = blockIdx.x;
	double s = 0;
	for (int i = threadIdx.x; i < in; i += blockDim.x) {
		float lw = 0;
		for (int k = 0; k < r; k++)
			lw += src_at(B, (size_t)o * r + k) * src_at(A, (size_t)k * in + i);
		float w = src_at(W, (size_t)o * in + i) + scale * lw;
		s += (double)w * w;
	}
	s = ft_cu_block_sum(s, sh);
	if (threadIdx.x == 0) {
		float n = (float)sqrt(s);
		dnorm[o] = n;
		dscale[o] = mag[o] / n;
	}
}

/* ftp_dora_forward's loop: pre = y - b (kept for the backward when pre
 * is not NULL), y = b + dscale * pre. */
static __global__ void dora_apply_k(float *y, int ld, float *pre, const float *bias,
				    const float *dscale, int N, int out)
{
	size_t n = (size_t)N * out;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / out;
		int o = (int)(i % out);
		float b = bias ? bias[o] : 0.0f;
		float *yt = y + t * ld + o, p = *yt - b;
		if (pre)
			pre[i] = p;
		*yt = b + dscale[o] * p;
	}
}

/* ftp_dora_backward: for DORA_COLS columns per block, dyo = dscale * dy
 * (dyo may be dy: in place) and mag_g += sum_t dy pre (double) / dnorm.
 * Threads (tx, ty) = (column, row phase): the rows are read coalesced,
 * the partial sums added in a fixed order. */
static __global__ void dora_backward_k(float *dyo, int ldo, const float *dy, int ld,
				       const float *pre, const float *dscale, const float *dnorm,
				       float *mag_g, int N, int out)
{
	__shared__ double sh[DORA_TPB];
	const int rows = DORA_TPB / DORA_COLS;
	int tx = threadIdx.x % DORA_COLS, ty = threadIdx.x / DORA_COLS;
	int o = blockIdx.x * DORA_COLS + tx;
	double dg = 0;
	if (o < out)
		for (int t = ty; t < N; t += rows) {
			float d = dy[(size_t)t * ld + o];
			dg += (double)d * pre[(size_t)t * out + o];
			dyo[(size_t)t * ldo + o] = dscale[o] * d;
		}
	sh[threadIdx.x] = dg;
	__syncthreads();
	if (ty == 0 && o < out) {
		double s = 0;
		for (int k = 0; k < rows; k++)
			s += sh[k * DORA_COLS + tx];
		if (mag_g)
			mag_g[o] += (float)s / dnorm[o];
	}
}

/* With dropout, the forward's last loop (tmp = xd W^T, pre = tmp +
 * s B A xd): y += dscale * pre - tmp, y already x W^T + b. */
static __global__ void dora_drop_apply_k(float *y, int ld, const float *pre, const float *tmp,
					 const float *dscale, int N, int out)
{
	size_t n = (size_t)N * out;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / out;
		int o = (int)(i % out);
		y[t * ld + o] += dscale[o] * pre[i] - tmp[i];
	}
}

/* With dropout, the base term's gradient through xd: e = (dscale - 1) dy. */
static __global__ void dora_less_one_k(float *e, const float *dy, int ld, const float *dscale,
				       int N, int out)
{
	size_t n = (size_t)N * out;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / out;
		int o = (int)(i % out);
		e[i] = (dscale[o] - 1.0f) * dy[t * ld + o];
	}
}

static unsigned grid_of(size_t n) { return ft_cu_grid(n, DORA_TPB); }

/* Whether module j's base product reads half operands (the dequantized
 * tile's type on a quantized base). */
static int base_half(const ft_cuda_model *dm, int l, int j)
{
	const ft_dlayer *d = &dm->layers[l];
	return d->quant ? ft_cu_qscratch_half(dm) : ft_cu_weight(dm, d->lin[j]).half;
}

/* delta_norm's rows [r0, r0 + n) of module j: W holds them from its row 0
 * (the weight itself, or a dequantized tile). */
static int dora_norm_rows(ft_cuda_model *dm, int l, int j, int r0, int n, dora_src W)
{
	ft_dlora *lo = &dm->layers[l].lora[j];
	int in = dm->v.lin_in[j];
	FT_LAUNCH(dora_norm_k, n, DORA_TPB, 0, dm->stream)(lo->dnorm + r0, lo->dscale + r0,
		lo->mag->w + r0, W, src_of(dm, lo->A),
		src_from(src_of(dm, lo->B), (size_t)r0 * lo->r), in, lo->r, lo->scale);
	LAUNCHED("dora_norm", "layer %d %s: rows %d-%d, in=%d r=%d", l, ft_cuda_view_lin_name(j),
		 r0, r0 + n, in, lo->r);
	return 0;
}

/* QDoRA: the rows of the dequantized W a tile at a time (quant.cu's
 * scratch, as the products read it). */
static int dora_norm_quant(ft_cuda_model *dm, int l, int j)
{
	const ft_cu_qweight *q = &dm->layers[l].q[j];
	for (int r0 = 0, R = ft_cu_qtile_rows(dm, q); r0 < q->out; r0 += R) {
		int n = r0 + R < q->out ? R : q->out - r0;
		ft_mat w;
		TRY(ft_cu_qrows(dm, q, r0, r0 + n, &w));
		TRY(dora_norm_rows(dm, l, j, r0, n, src_of_mat(dm, w)));
	}
	return 0;
}

/* ftp_dora_scale: the norms and factors of module j of layer l.  A
 * device model for decoding (o.inference) computes them once, as the
 * CPU's ftp_dora_infer uses the factors of load time. */
static int dora_scale(ft_cuda_model *dm, int l, int j)
{
	ft_dlayer *d = &dm->layers[l];
	ft_dlora *lo = &d->lora[j];
	if (dm->o.inference && lo->dora_ready)
		return 0;
	if (d->quant)
		TRY(dora_norm_quant(dm, l, j));
	else if (d->lin[j])
		TRY(dora_norm_rows(dm, l, j, 0, dm->v.lin_out[j], src_of(dm, d->lin[j])));
	else
		return ft_fail("internal: DoRA on layer %d %s without its weight", l,
			       ft_cuda_view_lin_name(j));
	lo->dora_ready = 1;
	return 0;
}

int ft_cu_dora_forward(ft_cuda_model *dm, int l, int j, float *y, int ld, int N)
{
	ft_dlayer *d = &dm->layers[l];
	ft_dlora *lo = &d->lora[j];
	if (!lo->on || !lo->mag)
		return 0;
	int out = dm->v.lin_out[j];
	TRY(dora_scale(dm, l, j));
	const float *bias = j < 3 && d->bias[j] ? d->bias[j]->w : NULL;
	float *pre = dm->o.inference ? NULL : lo->pre;
	FT_LAUNCH(dora_apply_k, grid_of((size_t)N * out), DORA_TPB, 0, dm->stream)(y, ld, pre, bias,
		lo->dscale, N, out);
	LAUNCHED("dora_forward", "layer %d %s: N=%d out=%d", l, ft_cuda_view_lin_name(j), N, out);
	return 0;
}

int ft_cu_dora_backward(ft_cuda_model *dm, int l, int j, float *dyo, int ldo, const float *dy,
			int ld, int N)
{
	ft_dlora *lo = &dm->layers[l].lora[j];
	int out = dm->v.lin_out[j];
	if (!lo->pre)
		return ft_fail("internal: DoRA backward without its forward's buffer");
	unsigned g = (unsigned)((out + DORA_COLS - 1) / DORA_COLS);
	FT_LAUNCH(dora_backward_k, g, DORA_TPB, 0, dm->stream)(dyo, ldo, dy, ld, lo->pre,
		lo->dscale, lo->dnorm, lo->mag->g, N, out);
	LAUNCHED("dora_backward", "layer %d %s: N=%d out=%d", l, ft_cuda_view_lin_name(j), N, out);
	return 0;
}

int ft_cu_dora_lin_backward(ft_cuda_model *dm, int l, int j, const float **dy, int N)
{
	ft_dlora *lo = &dm->layers[l].lora[j];
	if (!lo->on || !lo->mag)
		return 0;
	int out = dm->v.lin_out[j];
	TRY(ft_cu_dora_backward(dm, l, j, dm->dora_dy, out, *dy, out, N));
	*dy = dm->dora_dy;
	return 0;
}

int ft_cu_dora_group_backward(ft_cuda_model *dm, int l, const ft_cv_group *c, float *dY, int N)
{
	for (int i = 0; i < c->n; i++) {
		const ft_dlora *lo = &dm->layers[l].lora[c->js[i]];
		if (lo->on && lo->mag)
			TRY(ft_cu_dora_backward(dm, l, c->js[i], dY + c->off[i], c->tot,
						dY + c->off[i], c->tot, N));
	}
	return 0;
}

/* The forward with dropout, after module j's LoRA A product h (fp32, row
 * stride ldh) on its dropped input xm (W's operand type): the bias is in
 * y already, B's product goes into pre (not y).  tmp is dm->dora_dy,
 * free in the forward (a backward's scratch). */
int ft_cu_dora_drop_forward(ft_cuda_model *dm, int l, int j, float *y, int ld, ft_mat xm,
			    ft_mat h, int ldh, int N)
{
	ft_dlayer *d = &dm->layers[l];
	ft_dlora *lo = &d->lora[j];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	ft_mat B = { lo->B->w, 0 };
	float *tmp = dm->dora_dy;
	size_t n = (size_t)N * out;
	if (!lo->pre || !tmp || xm.half != base_half(dm, l, j) || h.half)
		return ft_fail("internal: DoRA with dropout: layer %d %s has no buffers or a "
			       "mismatched operand", l, ft_cuda_view_lin_name(j));
	TRY(dora_scale(dm, l, j));
	if (d->quant)   /* training: the dequantized tiles' product */
		TRY(ft_cu_qlin_forward(dm, &d->q[j], tmp, out, xm, xm, N, "dora x_drop W^T"));
	else
		TRY(ft_cu_gemm(dm, 0, 1, N, out, in, 1, xm, in, ft_cu_weight(dm, d->lin[j]), in, 0,
			       tmp, out, "dora x_drop W^T"));
	CU(cudaMemcpyAsync(lo->pre, tmp, n * sizeof(float), cudaMemcpyDeviceToDevice, dm->stream),
	   "DoRA's pre, n=%zu", n);
	TRY(ft_cu_gemm(dm, 0, 1, N, out, lo->r, lo->scale, h, ldh, B, lo->r, 1, lo->pre, out,
		       "lora_B"));
	FT_LAUNCH(dora_drop_apply_k, grid_of(n), DORA_TPB, 0, dm->stream)(y, ld, lo->pre, tmp,
		lo->dscale, N, out);
	LAUNCHED("dora_drop_forward", "layer %d %s: N=%d out=%d", l, ft_cuda_view_lin_name(j), N,
		 out);
	return 0;
}

/* The backward with dropout of module j after its base part (dx += dy W
 * with the unscaled dy, row stride ld): mag's gradient, the LoRA branch
 * from dyg = g dy (dm->dora_dy) as lin_bwd's, its dx into dm->ddrop,
 * ddrop += ((g - 1) dy) W, then the mask and dx += ddrop.  h: the LoRA
 * hidden (stride ldh; half where the fused output is, B's gradient then
 * from the half dyg as autocast's), xm: the dropped input in A's type.
 * hy holds each cast in turn (dyg, dh, (g - 1) dy). */
int ft_cu_dora_drop_backward(ft_cuda_model *dm, int l, int j, float *dx, const float *dy,
			     int ld, ft_mat h, int ldh, ft_mat xm, int N)
{
	ft_dlayer *d = &dm->layers[l];
	ft_dlora *lo = &d->lora[j];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j], r = lo->r;
	ft_mat A = ft_cu_weight(dm, lo->A), B = { lo->B->w, 0 };
	ft_mat dyg = { dm->dora_dy, 0 }, op, hs;
	size_t n = (size_t)N * out;
	TRY(ft_cu_dora_backward(dm, l, j, dm->dora_dy, out, dy, ld, N));
	if (lo->B->g) {
		TRY(ft_cu_operand(dm, &op, dm->dora_dy, n, dm->hy, h.half));
		TRY(ft_cu_gemm(dm, 1, 0, out, r, N, lo->scale, op, out, h, ldh, 1, lo->B->g, r,
			       "lora_B grad"));
	}
	TRY(ft_cu_gemm(dm, 0, 0, N, r, out, lo->scale, dyg, out, B, r, 0, dm->lhs, r, "lora dh"));
	TRY(ft_cu_operand(dm, &hs, dm->lhs, (size_t)N * r, dm->hy, A.half));
	if (lo->A->g)
		TRY(ft_cu_gemm(dm, 1, 0, r, in, N, 1, hs, r, xm, in, 1, lo->A->g, in,
			       "lora_A grad"));
	if (!dx)
		return 0;
	TRY(ft_cu_gemm(dm, 0, 0, N, in, r, 1, hs, r, A, in, 0, dm->ddrop, in, "lora dx"));
	FT_LAUNCH(dora_less_one_k, grid_of(n), DORA_TPB, 0, dm->stream)(dm->dora_dy, dy, ld,
		lo->dscale, N, out);
	LAUNCHED("dora_less_one", "layer %d %s: N=%d out=%d", l, ft_cuda_view_lin_name(j), N, out);
	TRY(ft_cu_operand(dm, &op, dm->dora_dy, n, dm->hy, base_half(dm, l, j)));
	if (d->quant)
		TRY(ft_cu_qlin_backward(dm, &d->q[j], dm->ddrop, op, out, N, "dora (g-1) dy W"));
	else
		TRY(ft_cu_gemm(dm, 0, 0, N, in, out, 1, op, out, ft_cu_weight(dm, d->lin[j]), in, 1,
			       dm->ddrop, in, "dora (g-1) dy W"));
	return ft_cu_lora_drop_grad(dm, l, j, dx, (size_t)N * in);
}

/* lin_bwd_group's LoRA part with dropout when its modules are DoRA's
 * (after the group's base dx and weight gradients from the unscaled dY):
 * each module as ft_cu_dora_drop_backward, h in Y's LoRA columns. */
int ft_cu_dora_drop_group_backward(ft_cuda_model *dm, int l, const ft_cv_group *c, ft_mat Y,
				   const float *dY, float *dx, ft_mat x, int N)
{
	size_t n = (size_t)N * c->in;
	for (int i = 0; i < c->n; i++) {
		const ft_dlora *lo = &dm->layers[l].lora[c->js[i]];
		if (!lo->on)
			continue;
		if (!lo->mag)
			return ft_fail("internal: layer %d: a fused group mixes DoRA and LoRA", l);
		ft_mat xd, xm, h = Y;
		h.p = (const char *)Y.p + (size_t)c->loff[i] * (Y.half ? 2 : 4);
		TRY(ft_cu_lora_input(dm, l, c->js[i], x, n, &xd));
		TRY(ft_cu_operand_act(dm, &xm, xd, n, dm->hx, ft_cu_weight(dm, lo->A).half));
		TRY(ft_cu_dora_drop_backward(dm, l, c->js[i], dx, dY + c->off[i], c->tot, h, c->tot,
					     xm, N));
	}
	return 0;
}

/* Whether group gi of layer l has DoRA modules (all its LoRA ones then). */
int ft_cu_dora_group(const ft_cuda_model *dm, int l, const ft_cv_group *c)
{
	for (int i = 0; i < c->n; i++)
		if (dm->layers[l].lora[c->js[i]].on && dm->layers[l].lora[c->js[i]].mag)
			return 1;
	return 0;
}

/* The norms, factors and (training) the forward's pre-factor outputs
 * [N, out] of every DoRA module, and the scaled output gradient of a
 * plain module.  pre follows the activations: one per layer, or with
 * gradient checkpointing one per module shared by the layers (each
 * layer's forward runs again before its backward, redrawing the same
 * dropout masks).  Dropout needs no buffer more: dora_dy holds its
 * forward's xd W^T and its backward's g dy, then (g - 1) dy, one module
 * at a time; drop, ddrop, lhs and hx/hy are LoRA dropout's own. */
void ft_cu_dora_layout(ft_cuda_model *dm, ft_arena *a, size_t N)
{
	float *shared[FT_CV_NLIN] = { 0 };
	size_t mo = 0;
	int one = dm->v.gradient_checkpointing;
	for (int l = 0; l < dm->v.L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++) {
			ft_dlora *lo = &dm->layers[l].lora[j];
			size_t out = dm->v.lin_out[j];
			if (!lo->mag)
				continue;
			if (out > mo) mo = out;
			lo->dnorm = (float *)ft_arena_take(a, out * sizeof(float), A_SCRATCH);
			lo->dscale = (float *)ft_arena_take(a, out * sizeof(float), A_SCRATCH);
			lo->pre = NULL;
			if (dm->o.inference)
				continue;
			if (one && !shared[j])
				shared[j] = (float *)ft_arena_take(a, N * out * sizeof(float), A_ACTS);
			lo->pre = one ? shared[j]
				      : (float *)ft_arena_take(a, N * out * sizeof(float), A_ACTS);
		}
	dm->dora_dy = mo && !dm->o.inference
		? (float *)ft_arena_take(a, N * mo * sizeof(float), A_SCRATCH) : NULL;
}
