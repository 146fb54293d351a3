/* lora_pissa.c - PiSSA (Meng et al. 2024) as PEFT's
 * init_lora_weights="pissa" / "pissa_niter_K" (LoraLayer.pissa_init), and
 * PEFT's conversion of a trained PiSSA adapter to a plain LoRA one
 * (save_pretrained(path_initial_model_for_weight_conversion=...)), which
 * LLaMA-Factory's pissa_convert runs.
 *
 * For each adapted linear W [out, in] with scale s:
 *   V, S, Uh = svd(W)  (exact: LAPACK sgesdd, as torch.linalg.svd), or
 *   V, S, U  = torch.svd_lowrank(W, q=r, niter=K)  (Halko's randomized
 *              subspace iteration with LAPACK QR; the Gaussian start is
 *              ft's generator with a fixed seed per module, not torch's,
 *              so ft recomputes the same residual whenever it loads the
 *              adapter; PEFT draws a new start each time it loads one,
 *              which is why LLaMA-Factory offers pissa_convert)
 *   S_r /= s;  A = diag(sqrt(S_r)) Uh_r;  B = V_r diag(sqrt(S_r))
 *   W_res = W - (s * B) @ A                (the base is replaced)
 * The singular vectors' signs are LAPACK's; a sign flip of a pair (row of
 * A, column of B) leaves B A, the gradients' images and AdamW's update the
 * same up to that sign, so training is unchanged.
 * The SVD and QR come from LAPACK in libopenblas (Debian builds it in), not
 * hand-written code.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "format/safetensors.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/rng.h"
#include "model/model_internal.h"
#include "model/layers.h"

/* LAPACK (Fortran ABI; the trailing size_t is gfortran's hidden length of
 * the character argument). */
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s,
	     float *u, const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork,
	     int *iwork, int *info, size_t jobz_len);
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work,
	     const int *lwork, int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau,
	     float *work, const int *lwork, int *info);

/* See layers.h.  X is copied column-major, as torch.linalg.svd hands it to
 * LAPACK, so the singular vectors' signs come out as torch's. */
int ft_svd_thin(const float *X, int p, int n, float *U, float *S, float *Vh)
{
	int k = p < n ? p : n, info = 0, lwork = -1;
	float *a = ft_xmalloc((size_t)p * n * sizeof *a), wq;
	float *u = ft_xmalloc((size_t)p * k * sizeof *u), *vt = ft_xmalloc((size_t)k * n * sizeof *vt);
	int *iwork = ft_xmalloc((size_t)8 * k * sizeof *iwork);
	for (int i = 0; i < p; i++)
		for (int j = 0; j < n; j++) a[i + (size_t)j * p] = X[(size_t)i * n + j];
	sgesdd_("S", &p, &n, a, &p, S, u, &p, vt, &k, &wq, &lwork, iwork, &info, 1);
	lwork = info ? 0 : (int)wq + 1;
	float *work = ft_xmalloc((size_t)(lwork > 0 ? lwork : 1) * sizeof *work);
	if (!info) sgesdd_("S", &p, &n, a, &p, S, u, &p, vt, &k, work, &lwork, iwork, &info, 1);
	for (int i = 0; i < p && !info; i++)
		for (int j = 0; j < k; j++) U[(size_t)i * k + j] = u[i + (size_t)j * p];
	for (int j = 0; j < k && !info; j++)
		for (int c = 0; c < n; c++) Vh[(size_t)j * n + c] = vt[j + (size_t)c * k];
	free(work); free(iwork); free(a); free(u); free(vt);
	return info ? ft_fail("LAPACK sgesdd failed (info %d)", info) : 0;
}

/* Q of the reduced QR of the row-major X [p, q] (p >= q), in place, as
 * torch.linalg.qr (geqrf + orgqr) computes it. */
static int qr_rm(float *X, int p, int q)
{
	float *a = ft_xmalloc((size_t)p * q * sizeof *a), *tau = ft_xmalloc((size_t)q * sizeof *tau), wq;
	for (int i = 0; i < p; i++)
		for (int j = 0; j < q; j++) a[i + (size_t)j * p] = X[(size_t)i * q + j];
	int info = 0, lwork = -1;
	sgeqrf_(&p, &q, a, &p, tau, &wq, &lwork, &info);
	lwork = (int)wq + 1;
	float *work = ft_xmalloc((size_t)lwork * sizeof *work);
	if (!info) sgeqrf_(&p, &q, a, &p, tau, work, &lwork, &info);
	int l2 = -1;
	if (!info) sorgqr_(&p, &q, &q, a, &p, tau, &wq, &l2, &info);
	if (!info && (int)wq + 1 > lwork) {
		lwork = (int)wq + 1;
		work = ft_xrealloc(work, (size_t)lwork * sizeof *work);
	}
	if (!info) sorgqr_(&p, &q, &q, a, &p, tau, work, &lwork, &info);
	for (int i = 0; i < p && !info; i++)
		for (int j = 0; j < q; j++) X[(size_t)i * q + j] = a[i + (size_t)j * p];
	free(work);
	free(tau);
	free(a);
	return info ? ft_fail("PiSSA: LAPACK QR failed (info %d)", info) : 0;
}

/* C [m, n] = op(A) op(B), row-major */
static void mm(int ta, int tb, int m, int n, int k, const float *A, const float *B, float *C)
{
	ft_sgemm(ta, tb, m, n, k, 1.0f, A, ta ? m : k, B, tb ? k : n, 0.0f, C, n);
}

/* torch.svd_lowrank(W [m, n], q, niter): U [m, q], S [q], V [n, q]. */
static int svd_lowrank(const float *W, int m, int n, int q, int niter, uint64_t seed, float *U,
		       float *S, float *V)
{
	int tr = m < n, ma = tr ? n : m, na = tr ? m : n;
	float *A = ft_xmalloc((size_t)ma * na * sizeof *A);
	if (tr) {   /* A = W^T */
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++) A[(size_t)j * m + i] = W[(size_t)i * n + j];
	} else {
		memcpy(A, W, (size_t)m * n * sizeof *A);
	}
	float *R = ft_xmalloc((size_t)na * q * sizeof *R), *Q = ft_xmalloc((size_t)ma * q * sizeof *Q);
	float *X = ft_xmalloc((size_t)na * q * sizeof *X);
	ft_rng g;
	ft_rng_seed(&g, seed);
	for (size_t i = 0; i < (size_t)na * q; i += 2) {   /* torch.randn: N(0, 1) */
		double u1 = ft_rng_uniform(&g), u2 = ft_rng_uniform(&g), rad = sqrt(-2 * log(1 - u1));
		R[i] = (float)(rad * cos(2 * M_PI * u2));
		if (i + 1 < (size_t)na * q) R[i + 1] = (float)(rad * sin(2 * M_PI * u2));
	}
	int rc = 0;
	mm(0, 0, ma, q, na, A, R, Q);
	rc = qr_rm(Q, ma, q);
	for (int it = 0; it < niter && !rc; it++) {
		mm(1, 0, na, q, ma, A, Q, X);          /* X = A^T Q */
		if ((rc = qr_rm(X, na, q))) break;
		mm(0, 0, ma, q, na, A, X, Q);          /* Q = A X */
		rc = qr_rm(Q, ma, q);
	}
	float *B = NULL, *Ub = NULL, *Vh = NULL;
	if (!rc) {
		B = ft_xmalloc((size_t)q * na * sizeof *B);
		Ub = ft_xmalloc((size_t)q * q * sizeof *Ub);
		Vh = ft_xmalloc((size_t)q * na * sizeof *Vh);
		mm(1, 0, q, na, ma, Q, A, B);          /* B = Q^T A */
		rc = ft_svd_thin(B, q, na, Ub, S, Vh);
	}
	if (!rc) {
		/* U_a = Q Ub [ma, q], V_a = Vh^T [na, q]; swapped back when tr */
		float *Ua = tr ? V : U, *Va = tr ? U : V;
		mm(0, 0, ma, q, q, Q, Ub, Ua);
		for (int j = 0; j < q; j++)
			for (int c = 0; c < na; c++) Va[(size_t)c * q + j] = Vh[(size_t)j * na + c];
	}
	free(A); free(R); free(Q); free(X); free(B); free(Ub); free(Vh);
	return rc;
}

/* See layers.h.  W -= (s B) A as PEFT: (scaling * lora_B) @ lora_A. */
int ft_pissa_decompose(float *W, int out, int in, int r, float scale, int niter, uint64_t seed,
		       float *A, float *B)
{
	int k = in < out ? in : out;
	if (r > k) return ft_fail("PiSSA: lora_rank %d exceeds the module's smaller side %d", r, k);
	float *Vr = ft_xmalloc((size_t)out * r * sizeof *Vr), *Sr = ft_xmalloc((size_t)k * sizeof *Sr);
	float *Uhr = ft_xmalloc((size_t)r * in * sizeof *Uhr);
	int rc;
	if (niter < 0) {   /* "pissa": the exact SVD, then the first r */
		float *V = ft_xmalloc((size_t)out * k * sizeof *V), *Uh = ft_xmalloc((size_t)k * in * sizeof *Uh);
		rc = ft_svd_thin(W, out, in, V, Sr, Uh);
		for (int o = 0; o < out && !rc; o++) memcpy(Vr + (size_t)o * r, V + (size_t)o * k, r * sizeof *Vr);
		if (!rc) memcpy(Uhr, Uh, (size_t)r * in * sizeof *Uhr);
		free(V);
		free(Uh);
	} else {           /* "pissa_niter_K": Uhr = U^T */
		float *Ur = ft_xmalloc((size_t)in * r * sizeof *Ur);
		rc = svd_lowrank(W, out, in, r, niter, seed, Vr, Sr, Ur);
		for (int j = 0; j < r && !rc; j++)
			for (int i = 0; i < in; i++) Uhr[(size_t)j * in + i] = Ur[(size_t)i * r + j];
		free(Ur);
	}
	if (!rc) {
		for (int j = 0; j < r; j++) {
			float sq = sqrtf(Sr[j] / scale);
			for (int i = 0; i < in; i++) A[(size_t)j * in + i] = sq * Uhr[(size_t)j * in + i];
			for (int o = 0; o < out; o++) B[(size_t)o * r + j] = Vr[(size_t)o * r + j] * sq;
		}
		float *sB = ft_xmalloc((size_t)out * r * sizeof *sB);
		for (size_t i = 0; i < (size_t)out * r; i++) sB[i] = scale * B[i];
		ft_sgemm(0, 0, out, in, r, -1.0f, sB, r, A, in, 1.0f, W, in);
		free(sB);
	}
	free(Vr); free(Sr); free(Uhr);
	return rc;
}

/* A fixed start per module, not the run's seed: loading the adapter
 * (ft-generate, ft-train --adapter_name_or_path, ft-merge) recomputes
 * the same residual whatever --seed says. */
uint64_t ft_pissa_seed(int layer, int module)
{
	return 0x9155aULL + 0x9e3779b97f4a7c15ULL * (uint64_t)(layer * L_NLIN + module + 1);
}

int ft_model_pissa_init(ft_model *m, int niter)
{
	if (m->o.type != FT_FT_LORA) return ft_fail("PiSSA needs finetuning type lora");
	if (m->c.fused)   /* the SVD of a fused module's rows: not written yet */
		return ft_fail("PiSSA on Phi-3's fused qkv_proj/gate_up_proj is not implemented in ft yet");
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_lora *lo = &m->layers[l].lora[j];
			int in, out;
			if (!lo->on) continue;
			ftp_lin_dims(&m->c, j, &in, &out);
			if (ft_pissa_decompose(m->layers[l].lin[j].w, out, in, lo->r, lo->scale, niter,
					       ft_pissa_seed(l, j), lo->A.w, lo->B.w) < 0)
				return ft_fail_ctx("layer %d %s: ", l, ft_lin_names[j]);
		}
	m->o.pissa_init = 1;
	m->o.pissa_iter = niter;
	return 0;
}

int ft_model_pissa_save_plain(ft_model *m, const char *dir)
{
	int was = m->o.pissa_init;
	m->o.pissa_init = 0;
	int rc = ft_model_save_adapter(m, dir);
	m->o.pissa_init = was;
	return rc;
}

/* subtract_mutated_init: dW = B A - B0 A0 = [B, -B0] [A; A0] */
int ft_model_pissa_save_converted(ft_model *m, const char *init_dir, const char *dir)
{
	char *path = ft_xasprintf("%s/adapter_model.safetensors", init_dir);
	ft_st *st = ft_st_open(path);
	int rc = -1;
	if (!st) goto out;
	if (ft_mkdirs(dir) < 0) goto out;
	ft_st_writer *w = ft_st_writer_new();
	ft_st_writer_meta(w, "format", "pt");
	float **bufs = ft_xcalloc(m->nparams ? m->nparams : 1, sizeof *bufs);
	rc = 0;
	for (size_t i = 0; i < m->nparams && !rc; i++) {
		ft_param *p = &m->params[i];
		int isA = strstr(p->name, ".lora_A.") != NULL, isB = strstr(p->name, ".lora_B.") != NULL;
		if (!isA && !isB) continue;
		const ft_st_tensor *t = ft_st_find(st, p->name);
		if (!t || t->numel != p->n) {
			rc = ft_fail("%s: %s is missing or has another shape", path, p->name);
			break;
		}
		float *init = ft_xmalloc(p->n * sizeof *init), *cat = ft_xmalloc(2 * p->n * sizeof *cat);
		if ((rc = ft_st_read_f32(t, init)) < 0) {
			free(init);
			free(cat);
			break;
		}
		int64_t sh[2] = { p->shape[0], p->shape[1] };
		if (isA) {   /* [r, in] over [r, in] */
			memcpy(cat, p->w, p->n * sizeof *cat);
			memcpy(cat + p->n, init, p->n * sizeof *cat);
			sh[0] *= 2;
		} else {     /* [out, r] beside -[out, r] */
			size_t out = (size_t)p->shape[0], r = (size_t)p->shape[1];
			for (size_t o = 0; o < out; o++)
				for (size_t j = 0; j < r; j++) {
					cat[o * 2 * r + j] = p->w[o * r + j];
					cat[o * 2 * r + r + j] = -init[o * r + j];
				}
			sh[1] *= 2;
		}
		free(init);
		bufs[i] = cat;
		ft_st_writer_add(w, p->name, FT_F32, 2, sh, cat);
	}
	double alpha = m->o.use_rslora ? m->o.lora_alpha * sqrt(2.0) : m->o.lora_alpha * 2;
	if (!rc) rc = ftp_adapter_config_save(m, dir, 2 * m->o.lora_rank, alpha, 1);
	free(path);
	path = ft_xasprintf("%s/adapter_model.safetensors", dir);
	if (!rc) rc = ft_st_writer_write(w, path);
	ft_st_writer_free(w);
	for (size_t i = 0; i < m->nparams; i++) free(bufs[i]);
	free(bufs);
out:
	if (st) ft_st_close(st);
	free(path);
	return rc;
}
