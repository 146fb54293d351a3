/* optim_x.cu - LLaMA-Factory's optimizers that replace AdamW on the
 * device (ft_cuda_step_x), each the operations of its CPU step in the same
 * order, so lib/train/optim_*.c stays the readable reference:
 *
 *   Adam-mini  am_step of optim_adam_mini.c: per element for biases,
 *              else one second moment per block (a CUDA block per
 *              Adam-mini block: the mean of g^2 summed in double)
 *   Muon       mu_step of optim_muon.c: the momentum, Newton-Schulz in
 *              bfloat16 (ns5: every product and sum rounded to bfloat16,
 *              the matrix products fp32 GEMMs) and the update; the other
 *              params that file's AdamW
 *
 * The optimizer's state lives in each tensor's AdamW moments (t->m: m or
 * Muon's momentum buffer, t->v: Adam-mini's block moments or v), copied
 * to and from the CPU extension by ft_cuda_xstate.  nvcc may contract a
 * product and a sum into one FMA where the CPU rounds twice (the
 * emulation does not), which the tolerances of the device checks cover. */
#include <math.h>
#include "cuda/common.cuh"

#define XTPB 256

static unsigned xblocks(size_t n) { return ft_cu_grid(n, XTPB); }

#define XFOR(i, n) FT_CU_FOR(i, n)

typedef struct {
	const ft_cuda_xopt *o;
	const ft_cuda_xparam *xp;
} xrun;

/* dm->xbuf of at least n floats */
static int xbuf(ft_cuda_model *dm, size_t n)
{
	if (dm->xbuf_n >= n)
		return 0;
	TRY(ft_cuda_sync(dm));
	if (dm->xbuf)
		cudaFree(dm->xbuf);
	dm->xbuf = NULL;
	dm->xbuf_n = 0;
	CU(cudaMalloc((void **)&dm->xbuf, n * sizeof(float)), "%zu bytes (optimizer scratch)",
	   n * sizeof(float));
	dm->xbuf_n = n;
	return 0;
}

void ft_cu_xbuf_free(ft_cuda_model *dm)
{
	if (dm->xbuf)
		cudaFree(dm->xbuf);
	dm->xbuf = NULL;
	dm->xbuf_n = 0;
	for (int k = 0; dm->xproj && k < dm->ntens; k++)
		if (dm->xproj[k])
			cudaFree(dm->xproj[k]);
	free(dm->xproj);
	free(dm->xproj_n);
	dm->xproj = NULL;
	dm->xproj_n = NULL;
}

/* Tensor t's projector (GaLore) of n floats, allocated on first use. */
static int xproj(ft_cuda_model *dm, const ft_dt *t, size_t n, float **P)
{
	if (!dm->xproj) {
		dm->xproj = (float **)ft_xcalloc(dm->ntens, sizeof *dm->xproj);
		dm->xproj_n = (size_t *)ft_xcalloc(dm->ntens, sizeof *dm->xproj_n);
	}
	int k = (int)(t - dm->tens);
	if (dm->xproj[k] && dm->xproj_n[k] != n)
		return ft_fail("internal: a projector of %zu floats, now %zu", dm->xproj_n[k], n);
	if (!dm->xproj[k]) {
		CU(cudaMalloc((void **)&dm->xproj[k], n * sizeof(float)), "%zu bytes (a GaLore projector)",
		   n * sizeof(float));
		dm->xproj_n[k] = n;
	}
	*P = dm->xproj[k];
	return 0;
}

/* ---- Adam-mini (am_step) ---- */

typedef struct {
	float keep, b2, a2, w1, bc2s, eps, inv_bc1, flr, elem_step;
} am_k;

/* "bias": torch.optim.Adam's arithmetic per element */
static __global__ void am_elem_k(float *w, const float *g, float *m, float *v, size_t n, am_k k)
{
	XFOR(i, n) {
		w[i] *= k.keep;
		v[i] = v[i] * k.b2 + (k.a2 * g[i]) * g[i];
		m[i] = fmaf(k.w1, g[i] - m[i], m[i]);
		float h = sqrtf(v[i]) / k.bc2s + k.eps;
		w[i] += k.elem_step * (m[i] / h);
	}
}

/* One CUDA block per Adam-mini block b of bl elements. */
static __global__ void am_block_k(float *w, const float *g, float *m, float *v, size_t bl, am_k k)
{
	__shared__ double sh[XTPB];
	size_t b = blockIdx.x;
	const float *gb = g + b * bl;
	float *mb = m + b * bl, *wb = w + b * bl;
	float vb = v[b];   /* read by every thread before thread 0 writes it */
	double s = 0;
	for (size_t i = threadIdx.x; i < bl; i += blockDim.x)
		s += (double)gb[i] * gb[i];
	s = ft_cu_block_sum(s, sh);
	float mean = (float)(s / (double)bl);
	vb = fmaf(k.a2, mean, vb * k.b2);   /* mul_(b2).add_(tmp, alpha=1-b2) */
	if (threadIdx.x == 0)
		v[b] = vb;
	float h = sqrtf(vb) / k.bc2s + k.eps;
	float stepsize = (1.0f / h) * k.inv_bc1;
	for (size_t i = threadIdx.x; i < bl; i += blockDim.x) {
		wb[i] *= k.keep;
		mb[i] = fmaf(k.w1, gb[i] - mb[i], mb[i]);
		float upd = (mb[i] * stepsize) * k.flr;
		wb[i] = wb[i] - upd;
	}
}

static int am_update(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	double lr = o->lr, bc1 = 1 - pow(o->beta1, (double)o->step);
	double bc2 = 1 - pow(o->beta2, (double)o->step);
	am_k k = { xp->decay && o->weight_decay > 0 ? (float)(1 - lr * o->weight_decay) : 1.0f,
		   (float)o->beta2, (float)(1 - o->beta2), (float)(1 - o->beta1), (float)sqrt(bc2),
		   (float)o->eps, (float)(1 / bc1), (float)lr, (float)-(lr / bc1) };
	if (!xp->kind) {
		FT_LAUNCH(am_elem_k, xblocks(t->n), XTPB, 0, dm->stream)(t->w, t->g, t->m, t->v, t->n, k);
		LAUNCHED("adam_mini_elem", "n=%zu", t->n);
		return 0;
	}
	if (!xp->block || t->n % xp->block)
		return ft_fail("Adam-mini: %zu elements are not blocks of %zu", t->n, xp->block);
	unsigned nb = (unsigned)(t->n / xp->block);
	FT_LAUNCH(am_block_k, nb, XTPB, 0, dm->stream)(t->w, t->g, t->m, t->v, xp->block, k);
	LAUNCHED("adam_mini_block", "n=%zu block=%zu", t->n, xp->block);
	return 0;
}

/* ---- Muon (mu_step: muon_param for the 2-D params, then adamw_param) ---- */

#define MUON_MOMENTUM 0.95f
#define MUON_NS_STEPS 5

static __host__ __device__ inline float bfr(float x) { return ft_k_bf16_to_f32(ft_k_f32_to_bf16(x)); }

/* buf = 0.95 buf + g; gn = g + 0.95 buf (Nesterov) */
static __global__ void mu_momentum_k(float *buf, const float *g, float *gn, size_t n)
{
	XFOR(i, n) {
		buf[i] = buf[i] * MUON_MOMENTUM + g[i];
		gn[i] = fmaf(MUON_MOMENTUM, buf[i], g[i]);
	}
}

/* X [R, C] = bf16(G [r, c]), transposed when r > c; back: G = X^T */
static __global__ void mu_load_k(float *X, const float *G, int r, int c, int tr)
{
	size_t C = tr ? (size_t)r : (size_t)c;
	XFOR(idx, (size_t)r * c) {
		size_t i = idx / c, j = idx % c;
		X[tr ? j * C + i : i * C + j] = bfr(G[idx]);
	}
}

static __global__ void mu_div_k(float *X, size_t n, float d)
{
	XFOR(i, n)
		X[i] = bfr(X[i] / d);
}

/* A = bf16(X X^T); T = bf16(c A) */
static __global__ void mu_a_k(float *A, float *T, size_t n, float cc)
{
	XFOR(i, n) {
		A[i] = bfr(A[i]);
		T[i] = bfr(cc * A[i]);
	}
}

/* B = bf16(bf16(b A) + bf16((c A) @ A)) */
static __global__ void mu_b_k(float *B, const float *A, size_t n, float b)
{
	XFOR(i, n)
		B[i] = bfr(bfr(b * A[i]) + bfr(B[i]));
}

/* X = bf16(bf16(a X) + bf16(B @ X)) */
static __global__ void mu_x_k(float *X, const float *Y, size_t n, float a)
{
	XFOR(i, n)
		X[i] = bfr(bfr(a * X[i]) + bfr(Y[i]));
}

/* p *= 1 - lr wd; p -= adj * u, u = X (or X^T) */
static __global__ void mu_apply_k(float *w, const float *X, int r, int c, int tr, float keep,
				  float alpha)
{
	size_t C = tr ? (size_t)r : (size_t)c;
	XFOR(idx, (size_t)r * c) {
		size_t i = idx / c, j = idx % c;
		float u = X[tr ? j * C + i : i * C + j];
		w[idx] *= keep;
		w[idx] = fmaf(alpha, u, w[idx]);
	}
}

static ft_mat fmat(const float *p) { ft_mat m = { p, 0 }; return m; }

/* zeropower_via_newtonschulz5(gn, 5) into X [R, C] (ns5 of optim_muon.c):
 * the norm's partial sums on the device, added on the host in double. */
static int mu_ns5(ft_cuda_model *dm, const float *G, int r, int c, float *X, float *Y, float *A,
		  float *T, float *B)
{
	const float a = 3.4445f, b = -4.7750f, cc = 2.0315f;
	int tr = r > c, R = tr ? c : r, C = tr ? r : c;
	size_t nx = (size_t)R * C, na = (size_t)R * R;
	FT_LAUNCH(mu_load_k, xblocks(nx), XTPB, 0, dm->stream)(X, G, r, c, tr);
	LAUNCHED("muon_load", "%dx%d", r, c);
	/* dm->sumsq's first row: the gradient norm is done with it */
	TRY(ft_cu_sumsq(dm, dm->sumsq, X, nx));
	TRY(ft_cu_copy(dm, dm->h_sumsq, dm->sumsq, FT_SUMSQ_BLOCKS * sizeof(double),
		       cudaMemcpyDeviceToHost, "Muon norm partials"));
	double s = 0;
	for (int i = 0; i < FT_SUMSQ_BLOCKS; i++)
		s += dm->h_sumsq[i];
	float d = bfr(bfr((float)sqrt(s)) + 1e-7f);   /* X.norm() + 1e-7, bf16 */
	FT_LAUNCH(mu_div_k, xblocks(nx), XTPB, 0, dm->stream)(X, nx, d);
	LAUNCHED("muon_div", "n=%zu", nx);
	for (int it = 0; it < MUON_NS_STEPS; it++) {
		TRY(ft_cu_gemm(dm, 0, 1, R, R, C, 1.0f, fmat(X), C, fmat(X), C, 0.0f, A, R, "Muon X X^T"));
		FT_LAUNCH(mu_a_k, xblocks(na), XTPB, 0, dm->stream)(A, T, na, cc);
		LAUNCHED("muon_a", "n=%zu", na);
		TRY(ft_cu_gemm(dm, 0, 0, R, R, R, 1.0f, fmat(T), R, fmat(A), R, 0.0f, B, R, "Muon (cA) A"));
		FT_LAUNCH(mu_b_k, xblocks(na), XTPB, 0, dm->stream)(B, A, na, b);
		LAUNCHED("muon_b", "n=%zu", na);
		TRY(ft_cu_gemm(dm, 0, 0, R, C, R, 1.0f, fmat(B), R, fmat(X), C, 0.0f, Y, C, "Muon B X"));
		FT_LAUNCH(mu_x_k, xblocks(nx), XTPB, 0, dm->stream)(X, Y, nx, a);
		LAUNCHED("muon_x", "n=%zu", nx);
	}
	return 0;
}

static int mu_muon(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	int r = xp->rows, c = xp->cols;
	if (r <= 0 || c <= 0 || (size_t)r * c != t->n)
		return ft_fail("Muon: a %dx%d param of %zu elements", r, c, t->n);
	size_t n = t->n, R = (size_t)(r < c ? r : c);
	TRY(xbuf(dm, 3 * n + 3 * R * R));
	float *gn = dm->xbuf, *X = gn + n, *Y = X + n, *A = Y + n, *T = A + R * R, *B = T + R * R;
	FT_LAUNCH(mu_momentum_k, xblocks(n), XTPB, 0, dm->stream)(t->m, t->g, gn, n);
	LAUNCHED("muon_momentum", "n=%zu", n);
	TRY(mu_ns5(dm, gn, r, c, X, Y, A, T, B));
	float lr = (float)o->lr;   /* muon_param's float lr */
	double adj = (double)lr * (0.2 * sqrt((double)(r > c ? r : c)));
	float keep = (float)(1.0 - (double)lr * o->weight_decay), alpha = (float)-adj;
	FT_LAUNCH(mu_apply_k, xblocks(n), XTPB, 0, dm->stream)(t->w, X, r, c, r > c, keep, alpha);
	LAUNCHED("muon_apply", "%dx%d", r, c);
	return 0;
}

/* optim_muon.c's own AdamW (adamw_param), not torch's */
static __global__ void mu_adamw_k(float *w, const float *g, float *m, float *v, size_t n, float w1,
				  float w2, float eps, float keep, float alpha)
{
	XFOR(i, n) {
		m[i] = fmaf(w1, g[i] - m[i], m[i]);
		v[i] = fmaf(w2, g[i] * g[i] - v[i], v[i]);
		float upd = m[i] / (eps + sqrtf(v[i]));
		w[i] *= keep;
		w[i] = fmaf(alpha, upd, w[i]);
	}
}

static int mu_update(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	if (xp->kind)
		return mu_muon(dm, t, xp, o);
	double lr = o->lr, bc1 = 1 - pow(o->beta1, (double)o->step);
	double bc2 = 1 - pow(o->beta2, (double)o->step), scale = bc1 / sqrt(bc2);
	FT_LAUNCH(mu_adamw_k, xblocks(t->n), XTPB, 0, dm->stream)(
		t->w, t->g, t->m, t->v, t->n, (float)(1 - o->beta1), (float)(1 - o->beta2), (float)o->eps,
		(float)(1.0 - lr * o->weight_decay), (float)(-lr / scale));
	LAUNCHED("muon_adamw", "n=%zu", t->n);
	return 0;
}

/* ---- GaLore (ga_step of optim_galore.c) ---- */

/* galore_torch's Adam (transformers' old AdamW) on nl elements of g (the
 * projected gradient R for a GaLore param): the normalized update into
 * N, or (no projection) straight into w */
static __global__ void ga_adam_k(float *w, float *N, const float *g, float *m, float *v, size_t nl,
				 float a1, float a2, float fb1, float fb2, float eps, float alpha)
{
	XFOR(i, nl) {
		m[i] = fmaf(a1, g[i], m[i] * fb1);
		v[i] = v[i] * fb2 + (a2 * g[i]) * g[i];
		float ng = m[i] / (sqrtf(v[i]) + eps);
		if (N)
			N[i] = ng;
		else
			w[i] = fmaf(alpha, ng, w[i]);
	}
}

/* project_back, times scale: w += alpha * (F * sc) */
static __global__ void ga_back_k(float *w, const float *F, size_t n, float alpha, float sc)
{
	XFOR(i, n)
		w[i] = fmaf(alpha, F[i] * sc, w[i]);
}

/* p.add_(p, alpha=-lr * wd), after the update */
static __global__ void ga_decay_k(float *w, size_t n, float a)
{
	XFOR(i, n)
		w[i] = fmaf(a, w[i], w[i]);
}

/* A new projector: the clipped gradient to the host (the CPU model's g
 * array), the CPU extension's SVD there, P back. */
static int ga_reproject(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xopt *o, float *P, size_t np)
{
	if (!o->project || !t->hg)
		return ft_fail("%s", "no projector on the host");
	TRY(ft_cu_copy(dm, t->hg, t->g, t->n * sizeof(float), cudaMemcpyDeviceToHost,
		       "the gradient to project"));
	const float *hp = o->project(o->ctx, (size_t)t->pidx, t->hg);
	if (!hp)
		return -1;
	return ft_cu_copy(dm, P, hp, np * sizeof(float), cudaMemcpyHostToDevice, "a projector");
}

/* The low-rank pieces of a projected param (GaLore, APOLLO): R, N [nl]
 * and F [n] in dm->xbuf, P its projector. */
typedef struct {
	float *R, *N, *F, *P;
	size_t nl;
	float alpha;
} lowrank;

/* What ga_step and ap_step share: the new projector at the interval, R =
 * G P^T or P^T G, and their Adam on R (or on G without a projection,
 * updating w straight away).  lr: the scheduled rate. */
static int proj_adam(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o,
		     lowrank *z)
{
	double lr = o->lr, b1 = o->beta1, b2 = o->beta2;
	double bc1 = 1.0 - pow(b1, (double)o->step), bc2 = 1.0 - pow(b2, (double)o->step);
	float alpha = (float)-(lr * sqrt(bc2) / bc1), a1 = (float)(1.0 - b1), a2 = (float)(1.0 - b2);
	float fb1 = (float)b1, fb2 = (float)b2, eps = (float)o->eps;
	int out = xp->rows, in = xp->cols, r = xp->rank;
	const float *g = t->g;
	*z = (lowrank){ NULL, NULL, NULL, NULL, t->n, alpha };
	if (xp->kind) {
		if (out <= 0 || in <= 0 || (size_t)out * in != t->n || r < 1)
			return ft_fail("a %dx%d param of %zu elements, rank %d", out, in, t->n, r);
		size_t np = (size_t)r * (size_t)(xp->right ? in : out);
		z->nl = (size_t)r * (size_t)(xp->right ? out : in);
		TRY(xproj(dm, t, np, &z->P));
		if (xp->reproject)
			TRY(ga_reproject(dm, t, o, z->P, np));
		TRY(xbuf(dm, 2 * z->nl + t->n));
		z->R = dm->xbuf, z->N = z->R + z->nl, z->F = z->N + z->nl;
		if (xp->right)   /* G [out, in] @ P^T [in, r] */
			TRY(ft_cu_gemm(dm, 0, 1, out, r, in, 1.0f, fmat(g), in, fmat(z->P), in, 0.0f, z->R, r,
				       "G P^T"));
		else             /* P^T [r, out] @ G [out, in] */
			TRY(ft_cu_gemm(dm, 1, 0, r, in, out, 1.0f, fmat(z->P), r, fmat(g), in, 0.0f, z->R, in,
				       "P^T G"));
		g = z->R;
	}
	FT_LAUNCH(ga_adam_k, xblocks(z->nl), XTPB, 0, dm->stream)(t->w, z->N, g, t->m, t->v, z->nl, a1,
								    a2, fb1, fb2, eps, alpha);
	LAUNCHED("lowrank_adam", "n=%zu", z->nl);
	return 0;
}

/* the decay after the update: projected params and the decaying others */
static int proj_decay(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	double wd = xp->kind || xp->decay ? o->weight_decay : 0.0;
	if (wd > 0) {
		FT_LAUNCH(ga_decay_k, xblocks(t->n), XTPB, 0, dm->stream)(t->w, t->n, (float)(-o->lr * wd));
		LAUNCHED("lowrank_decay", "n=%zu", t->n);
	}
	return 0;
}

static int ga_update(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	lowrank z;
	if (proj_adam(dm, t, xp, o, &z) < 0)
		return ft_fail_ctx("GaLore: ");
	int out = xp->rows, in = xp->cols, r = xp->rank;
	if (xp->kind) {
		if (xp->right)   /* low @ P: [out, r] @ [r, in] */
			TRY(ft_cu_gemm(dm, 0, 0, out, in, r, 1.0f, fmat(z.N), r, fmat(z.P), in, 0.0f, z.F, in,
				       "GaLore N P"));
		else             /* P @ low: [out, r] @ [r, in] */
			TRY(ft_cu_gemm(dm, 0, 0, out, in, r, 1.0f, fmat(z.P), r, fmat(z.N), in, 0.0f, z.F, in,
				       "GaLore P N"));
		FT_LAUNCH(ga_back_k, xblocks(t->n), XTPB, 0, dm->stream)(t->w, z.F, t->n, z.alpha,
									(float)o->scale);
		LAUNCHED("galore_back", "n=%zu", t->n);
	}
	return proj_decay(dm, t, xp, o);
}

/* ---- APOLLO (ap_step of optim_apollo.c: scaled_grad in place of GaLore's
 * project_back) ---- */

/* F = G * f with f = ||N|| / (||R|| + 1e-8) per row of R [out, r]
 * (per_row) or per column of R [r, in], one thread per row or column
 * summing in the CPU's order; tensor: f given.  Then sqrt(scale) when
 * scale_front. */
static __global__ void ap_scale_k(float *F, const float *g, const float *N, const float *R, int out,
				  int in, int r, int mode, float ft, int front, float sf)
{
	size_t lines = mode == 1 ? (size_t)out : mode == 2 ? (size_t)in : (size_t)out * in;
	XFOR(l, lines) {
		if (mode == 0) {   /* the tensor: one factor */
			F[l] = g[l] * ft;
			if (front)
				F[l] *= sf;
			continue;
		}
		double a = 0, b = 0;
		for (int k = 0; k < r; k++) {
			size_t q = mode == 1 ? l * r + k : (size_t)k * in + l;
			a += (double)N[q] * N[q];
			b += (double)R[q] * R[q];
		}
		float f = (float)sqrt(a) / ((float)sqrt(b) + 1e-8f);
		size_t n = mode == 1 ? (size_t)in : (size_t)out;
		for (size_t j = 0; j < n; j++) {
			size_t e = mode == 1 ? l * in + j : j * in + l;
			F[e] = g[e] * f;
			if (front)
				F[e] *= sf;
		}
	}
}

/* F /= lim (Fira's limiter), sqrt(scale) after it unless scale_front,
 * then w += alpha F */
static __global__ void ap_apply_k(float *w, const float *F, size_t n, float lim, int front, float sf,
				  float alpha)
{
	XFOR(i, n) {
		float f = F[i] / lim;
		if (!front)
			f *= sf;
		w[i] = fmaf(alpha, f, w[i]);
	}
}

/* sum of x^2 in double: the device's partials added on the host */
static int sumsq_host(ft_cuda_model *dm, const float *x, size_t n, double *s)
{
	TRY(ft_cu_sumsq(dm, dm->sumsq, x, n));
	TRY(ft_cu_copy(dm, dm->h_sumsq, dm->sumsq, FT_SUMSQ_BLOCKS * sizeof(double),
		       cudaMemcpyDeviceToHost, "norm partials"));
	*s = 0;
	for (int i = 0; i < FT_SUMSQ_BLOCKS; i++)
		*s += dm->h_sumsq[i];
	return 0;
}

static int ap_update(ft_cuda_model *dm, ft_dt *t, const ft_cuda_xparam *xp, const ft_cuda_xopt *o)
{
	lowrank z;
	if (proj_adam(dm, t, xp, o, &z) < 0)
		return ft_fail_ctx("APOLLO: ");
	if (xp->kind) {
		int out = xp->rows, in = xp->cols, per_row = !(out < in);
		float sf = (float)sqrt(o->scale), ft = 0;
		int mode = o->scale_tensor ? 0 : per_row ? 1 : 2;
		if (mode == 0) {
			double nn, rr;
			TRY(sumsq_host(dm, z.N, z.nl, &nn));
			TRY(sumsq_host(dm, z.R, z.nl, &rr));
			ft = (float)(sqrt(nn) / ((float)sqrt(rr) + 1e-8f));
		}
		size_t lines = mode == 1 ? (size_t)out : mode == 2 ? (size_t)in : t->n;
		FT_LAUNCH(ap_scale_k, xblocks(lines), XTPB, 0, dm->stream)(z.F, t->g, z.N, z.R, out, in,
									  xp->rank, mode, ft,
									  o->scale_front, sf);
		LAUNCHED("apollo_scale", "%dx%d", out, in);
		double ff;
		TRY(sumsq_host(dm, z.F, t->n, &ff));
		float lim = o->limit(o->ctx, (size_t)t->pidx, (float)sqrt(ff));
		FT_LAUNCH(ap_apply_k, xblocks(t->n), XTPB, 0, dm->stream)(t->w, z.F, t->n, lim,
									 o->scale_front, sf, z.alpha);
		LAUNCHED("apollo_apply", "n=%zu", t->n);
	}
	return proj_decay(dm, t, xp, o);
}

/* ---- the step ---- */

static int x_update(ft_cuda_model *dm, ft_dt *t)
{
	const xrun *r = (const xrun *)dm->xctx;
	if (t->pidx < 0 || !r->xp[t->pidx].on)
		return 0;
	const ft_cuda_xparam *xp = &r->xp[t->pidx];
	switch (r->o->algo) {
	case FT_CUDA_ADAM_MINI: return am_update(dm, t, xp, r->o);
	case FT_CUDA_MUON: return mu_update(dm, t, xp, r->o);
	case FT_CUDA_GALORE: return ga_update(dm, t, xp, r->o);
	case FT_CUDA_APOLLO: return ap_update(dm, t, xp, r->o);
	default: return ft_fail("CUDA step: optimizer %d", (int)r->o->algo);
	}
}

/* The device tensor of CPU param i: exactly one, the whole param. */
static ft_dt *whole_tensor(ft_cuda_model *dm, size_t i)
{
	ft_dt *one = NULL;
	for (int k = 0; k < dm->ntens; k++) {
		ft_dt *t = &dm->tens[k];
		if (t->pidx != (int)i || !t->g)
			continue;
		if (one || t->poff || t->n != dm->v.params[i].n) {
			ft_fail("%s is split into fused row blocks on the device (Phi-3); this optimizer "
				"runs on the CPU only for it (--device cpu)", dm->v.params[i].name);
			return NULL;
		}
		one = t;
	}
	if (!one)
		ft_fail("parameter %s has no optimizer state on the device (frozen?)", dm->v.params[i].name);
	return one;
}

int ft_cuda_step_x(ft_cuda_model *dm, const ft_cuda_xopt *o, const ft_cuda_xparam *xp, size_t n,
		   double max_grad_norm, double *grad_norm, int *skipped)
{
	if (!xp || n != dm->v.nparams)
		return ft_fail("CUDA step: %zu parameter updates for %zu parameters", n, dm->v.nparams);
	for (size_t i = 0; i < n; i++)
		if (xp[i].on && !whole_tensor(dm, i))
			return -1;
	xrun r = { o, xp };
	int64_t own = dm->step;
	dm->xupdate = x_update;
	dm->xctx = &r;
	ft_cuda_adamw_opts ao = { o->beta1, o->beta2, o->eps, o->weight_decay };
	int rc = ft_cu_step(dm, &ao, o->lr, max_grad_norm, grad_norm, skipped, NULL);
	dm->xupdate = NULL;
	dm->xctx = NULL;
	dm->step = own;
	return rc;
}

int ft_cuda_xstate(ft_cuda_model *dm, size_t i, float *s1, size_t n1, float *s2, size_t n2,
		   float *s3, size_t n3, int to_host)
{
	if (i >= dm->v.nparams)
		return ft_fail("parameter %zu of %zu", i, dm->v.nparams);
	ft_dt *t = whole_tensor(dm, i);
	if (!t)
		return -1;
	if (n1 > t->n || n2 > t->n)
		return ft_fail("%s: optimizer state of %zu and %zu floats for %zu elements",
			       dm->v.params[i].name, n1, n2, t->n);
	cudaMemcpyKind kind = to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
	float *d[3] = { t->m, t->v, NULL }, *h[3] = { s1, s2, s3 };
	size_t nn[3] = { n1, n2, n3 };
	if (n3)
		TRY(xproj(dm, t, n3, &d[2]));
	for (int j = 0; j < 3; j++)
		if (nn[j])
			TRY(ft_cu_copy(dm, to_host ? (void *)h[j] : (void *)d[j],
				       to_host ? (const void *)d[j] : (const void *)h[j], nn[j] * sizeof(float),
				       kind, "optimizer state"));
	return 0;
}
