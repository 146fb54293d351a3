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

static unsigned xblocks(size_t n)
{
	size_t b = (n + XTPB - 1) / XTPB;
	return (unsigned)(b > 65535u * 32u ? 65535u * 32u : (b ? b : 1));
}

#define XFOR(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; \
			i < (n); i += (size_t)gridDim.x * blockDim.x)

typedef struct {
	const ft_cuda_xopt *o;
	const ft_cuda_xparam *xp;
} xrun;

void ft_cu_xbuf_free(ft_cuda_model *dm)
{
	if (dm->xbuf)
		cudaFree(dm->xbuf);
	dm->xbuf = NULL;
	dm->xbuf_n = 0;
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

/* ---- the step ---- */

static int x_update(ft_cuda_model *dm, ft_dt *t)
{
	const xrun *r = (const xrun *)dm->xctx;
	if (t->pidx < 0 || !r->xp[t->pidx].on)
		return 0;
	const ft_cuda_xparam *xp = &r->xp[t->pidx];
	switch (r->o->algo) {
	case FT_CUDA_ADAM_MINI: return am_update(dm, t, xp, r->o);
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
		   int to_host)
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
	TRY(ft_cu_copy(dm, to_host ? (void *)s1 : (void *)t->m, to_host ? (const void *)t->m : s1,
		       n1 * sizeof(float), kind, "optimizer state"));
	if (n2)
		TRY(ft_cu_copy(dm, to_host ? (void *)s2 : (void *)t->v, to_host ? (const void *)t->v : s2,
			       n2 * sizeof(float), kind, "optimizer state"));
	return 0;
}
