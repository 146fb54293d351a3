/* gptq.c - GPTQ on one linear layer, and its packed tensors (gptq.h).
 *
 * A transcription of gptqmodel 7.7's GPTQ.quantize() on the CPU path with
 * the settings transformers' GPTQConfig passes (sym, group_size 128,
 * desc_act off, act_group_aware on, static_groups off, no mse search):
 *
 *   H = 2/N sum X^T X                       (float32, batch by batch)
 *   dead columns (H_ii == 0): H_ii = 1, W[:, i] = 0
 *   GAR order: within each full group the columns by descending H_ii, the
 *     groups by their largest H_ii (stable sorts); W and H permuted
 *   H_ii += damp * mean(H_ii), damp = 0.1 (+0.0015 until Cholesky works)
 *   U = cholesky(cholesky_inverse(cholesky(H)), upper)
 *   per block of 128 columns, per column i: at a group start the group's
 *     scale from W's current values (sym: 2 max|w| / maxq, zero (maxq+1)/2),
 *     q = clamp(round(w / s) + z, 0, maxq), err = (w - s (q - z)) / U_ii,
 *     W1[:, i:] -= err U[i, i:]; after the block W[:, end:] -= Err U[blk, end:]
 *   columns and groups put back in their original order; g_idx = i / 128.
 *
 * Each row is independent within a block (the group scales are per row
 * too), so rows run in parallel with the same arithmetic as one thread;
 * the elementwise updates round as torch's do (a product, then a
 * difference).  Float order differs from torch only in the matrix
 * products (X^T X, the between-block update) and LAPACK's Cholesky.
 */
#define _GNU_SOURCE   /* qsort_r */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "export/gptq.h"
#include "model/layers.h"

/* LAPACK (libopenblas; gfortran's hidden length of the character argument last) */
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info, size_t);
void spotri_(const char *uplo, const int *n, float *a, const int *lda, int *info, size_t);

ft_gptq_params ft_gptq_defaults(int bits)
{
	ft_gptq_params p = { bits, 128, 0.1, 0.0015, 1, 128 };
	return p;
}

void ft_gptq_hessian_init(ft_gptq_hessian *h, int n)
{
	h->n = n;
	h->H = ft_xcalloc((size_t)n * n, sizeof *h->H);
	h->xtx = ft_xmalloc((size_t)n * n * sizeof *h->xtx);
	h->rows = 0;
}

void ft_gptq_hessian_free(ft_gptq_hessian *h)
{
	free(h->H);
	free(h->xtx);
	h->H = h->xtx = NULL;
}

void ft_gptq_hessian_copy(ft_gptq_hessian *dst, const ft_gptq_hessian *src)
{
	ft_gptq_hessian_init(dst, src->n);
	memcpy(dst->H, src->H, (size_t)src->n * src->n * sizeof *dst->H);
	dst->rows = src->rows;
}

void ft_gptq_hessian_add(ft_gptq_hessian *h, const float *X, int rows)
{
	if (rows <= 0) return;
	size_t nn = (size_t)h->n * h->n;
	ft_sgemm(1, 0, h->n, h->n, rows, 1.0f, X, h->n, X, h->n, 0.0f, h->xtx, h->n);
#pragma omp parallel for schedule(static) if (nn >= 65536)
	for (size_t i = 0; i < nn; i++) h->H[i] += h->xtx[i];
	h->rows += rows;
}

void ft_gptq_result_free(ft_gptq_result *r)
{
	free(r->codes);
	free(r->scale);
	free(r->zero);
	free(r->g_idx);
	memset(r, 0, sizeof *r);
}

/* Stable descending order of v[0..n) (ties keep index order), as torch's
 * stable sorts give it. */
static int by_desc(const void *a, const void *b, void *keys)
{
	const float *v = keys;
	int i = *(const int *)a, j = *(const int *)b;
	if (v[i] != v[j]) return v[i] > v[j] ? -1 : 1;
	return (i > j) - (i < j);
}

static void argsort_desc(const float *v, int n, int *idx)
{
	for (int i = 0; i < n; i++) idx[i] = i;
	qsort_r(idx, n, sizeof *idx, by_desc, (void *)v);
}

/* gar.py: compute_local_perms, compute_global_perm (metric "max"),
 * compose_final_perm, extend_perm_with_tail.  perm[new] = old; global
 * [G] the groups in processing order. */
static void gar_perm(const float *diag, int cols, int gs, int *perm, int *global)
{
	int G = cols / gs;
	int *local = ft_xmalloc(((size_t)G * gs + 1) * sizeof *local);
	float *score = ft_xmalloc(((size_t)G + 1) * sizeof *score);
	for (int g = 0; g < G; g++) {
		argsort_desc(diag + (size_t)g * gs, gs, local + (size_t)g * gs);
		score[g] = diag[(size_t)g * gs + local[(size_t)g * gs]];
	}
	argsort_desc(score, G, global);
	for (int k = 0; k < G; k++)
		for (int s = 0; s < gs; s++)
			perm[(size_t)k * gs + s] = global[k] * gs + local[(size_t)global[k] * gs + s];
	for (int c = G * gs; c < cols; c++) perm[c] = c;
	free(local);
	free(score);
}

/* Lower Cholesky of the row-major symmetric A (= its column-major
 * transpose, so LAPACK's 'L' is the row-major upper triangle). */
static int potrf(float *A, int n)
{
	int info = 0;
	spotrf_("L", &n, A, &n, &info, 1);
	return info;
}

/* gptqmodel's hessian_inverse: damp from damp_percent up in steps of the
 * increment until the factorization and the inverse succeed; U (row-major
 * upper) with H^-1 = U^T U, zeros below the diagonal as torch returns. */
static int hessian_inverse(const ft_gptq_params *p, float *H, int n, float *U, double *used)
{
	float *diag = ft_xmalloc((size_t)n * sizeof *diag);
	double sum = 0;
	for (int i = 0; i < n; i++) sum += diag[i] = H[(size_t)i * n + i];
	float mean = (float)(sum / n);
	int rc = -1;
	for (double damp = p->damp_percent; damp > 0 && damp < 1; damp += p->damp_auto_increment) {
		memcpy(U, H, (size_t)n * n * sizeof *U);
		float add = (float)damp * mean;
		for (int i = 0; i < n; i++) U[(size_t)i * n + i] = diag[i] + add;
		int info = potrf(U, n);
		if (info == 0) spotri_("L", &n, U, &n, &info, 1);
		if (info == 0) {
			for (int i = 0; i < n; i++)   /* mirror the inverse's triangle */
				for (int j = i + 1; j < n; j++) U[(size_t)j * n + i] = U[(size_t)i * n + j];
			info = potrf(U, n);
		}
		if (info == 0) {
			for (int i = 0; i < n; i++)
				for (int j = 0; j < i; j++) U[(size_t)i * n + j] = 0;
			*used = damp;
			rc = 0;
			break;
		}
		if (p->damp_auto_increment <= 0) break;
	}
	free(diag);
	return rc;
}

/* Quantizer.find_params (sym, per row) on W[r, c0 .. c0+width). */
static float group_scale(const float *w, int width, int maxq)
{
	float xmin = 0, xmax = 0;
	for (int j = 0; j < width; j++) {
		if (w[j] < xmin) xmin = w[j];
		if (w[j] > xmax) xmax = w[j];
	}
	if (fabsf(xmin) > xmax) xmax = fabsf(xmin);
	if (xmin < 0) xmin = -xmax;
	if (xmax == 0) {   /* both zero: [-1, 1] */
		xmin -= 1;
		xmax += 1;
	}
	float s = (xmax - xmin) / (float)maxq;
	return s == 0 ? 1.17549435e-38f : s;   /* _replace_zero_scale: finfo.tiny */
}

typedef struct {
	const ft_gptq_params *p;
	float *W;            /* [rows, cols], permuted */
	const float *U;      /* [cols, cols] */
	int rows, cols, maxq;
	float zero;
	uint8_t *codes;      /* [rows, cols], permuted */
	float *scale;        /* [ngroups, rows], in processing order */
	float *Err;          /* [rows, block] */
} qjob;

/* One row of block [i1, i2): its columns quantized one by one with the
 * error spread over the block's later columns.  Returns the row's loss. */
static double quant_row_block(const qjob *j, int r, int i1, int i2, float *W1)
{
	int cols = j->cols, count = i2 - i1, gs = j->p->group_size;
	float *wr = j->W + (size_t)r * cols, *err = j->Err + (size_t)r * (j->p->block_size);
	memcpy(W1, wr + i1, (size_t)count * sizeof *W1);
	float s = 0;
	double loss = 0;
	if (i1 % gs) s = j->scale[(size_t)(i1 / gs) * j->rows + r];   /* a group begun in an earlier block */
	for (int i = 0; i < count; i++) {
		int col = i1 + i;
		if (col % gs == 0) {   /* from W, not W1: the block's values as it began */
			int width = col + gs > cols ? cols - col : gs;
			s = group_scale(wr + col, width, j->maxq);
			j->scale[(size_t)(col / gs) * j->rows + r] = s;
		}
		float w = W1[i], d = j->U[(size_t)col * cols + col];
		float q = rintf(w / s) + j->zero;
		q = q < 0 ? 0 : q > j->maxq ? (float)j->maxq : q;
		float deq = s * (q - j->zero);
		j->codes[(size_t)r * cols + col] = (uint8_t)q;
		float delta = w - deq;
		loss += (double)(delta * delta / (d * d));
		delta /= d;
		err[i] = delta;
		const float *urow = j->U + (size_t)col * cols + i1;
		for (int k = i; k < count; k++) {
			float t = delta * urow[k];
			W1[k] -= t;
		}
		wr[col] = deq;   /* Q: the column is final */
	}
	return loss;
}

static void quant_blocks(qjob *j, double *loss)
{
	int rows = j->rows, cols = j->cols, bs = j->p->block_size;
	float *T = ft_xmalloc(((size_t)rows * cols + 1) * sizeof *T);
	double total = 0;
	for (int i1 = 0; i1 < cols; i1 += bs) {
		int i2 = i1 + bs > cols ? cols : i1 + bs, rest = cols - i2;
#pragma omp parallel reduction(+ : total)
		{
			float *W1 = ft_xmalloc((size_t)bs * sizeof *W1);
#pragma omp for schedule(static)
			for (int r = 0; r < rows; r++) total += quant_row_block(j, r, i1, i2, W1);
			free(W1);
		}
		if (rest == 0) continue;
		/* W[:, i2:] -= Err1 @ U[i1:i2, i2:]: the product first, as torch */
		ft_sgemm(0, 0, rows, rest, i2 - i1, 1.0f, j->Err, bs, j->U + (size_t)i1 * cols + i2, cols, 0.0f,
			 T, rest);
#pragma omp parallel for schedule(static)
		for (int r = 0; r < rows; r++)
			for (int c = 0; c < rest; c++) j->W[(size_t)r * cols + i2 + c] -= T[(size_t)r * rest + c];
	}
	free(T);
	*loss = total / 2;
}

/* Columns back to their order, the groups' scales too. */
static void unpermute(ft_gptq_result *r, float *W, const int *perm, const int *global, int G,
		      const uint8_t *codes, const float *scale)
{
	int rows = r->rows, cols = r->cols;
	float *row = ft_xmalloc((size_t)cols * sizeof *row);
	for (int i = 0; i < rows; i++) {
		memcpy(row, W + (size_t)i * cols, (size_t)cols * sizeof *row);
		for (int p = 0; p < cols; p++) {
			W[(size_t)i * cols + perm[p]] = row[p];
			r->codes[(size_t)i * cols + perm[p]] = codes[(size_t)i * cols + p];
		}
	}
	free(row);
	memcpy(r->scale, scale, (size_t)r->ngroups * rows * sizeof *scale);
	for (int k = 0; k < G; k++)   /* processed k-th: original group global[k] */
		memcpy(r->scale + (size_t)global[k] * rows, scale + (size_t)k * rows, (size_t)rows * sizeof *scale);
}

static void permute_inputs(float *W, float *H, int rows, int cols, const int *perm)
{
	float *tmp = ft_xmalloc((size_t)cols * cols * sizeof *tmp);
	for (int r = 0; r < rows; r++) {
		for (int p = 0; p < cols; p++) tmp[p] = W[(size_t)r * cols + perm[p]];
		memcpy(W + (size_t)r * cols, tmp, (size_t)cols * sizeof *tmp);
	}
	for (int a = 0; a < cols; a++)
		for (int b = 0; b < cols; b++) tmp[(size_t)a * cols + b] = H[(size_t)perm[a] * cols + perm[b]];
	memcpy(H, tmp, (size_t)cols * cols * sizeof *tmp);
	free(tmp);
}

int ft_gptq_quantize(const ft_gptq_params *p, float *W, int rows, int cols, ft_gptq_hessian *h,
		     ft_gptq_result *r)
{
	memset(r, 0, sizeof *r);
	if (p->bits != 2 && p->bits != 3 && p->bits != 4 && p->bits != 8)
		return ft_fail("GPTQ: %d bits (2, 3, 4 or 8)", p->bits);
	if (p->group_size <= 0 || p->block_size <= 0 || h->n != cols)
		return ft_fail("GPTQ: bad parameters");
	if (h->rows == 0) return ft_fail("GPTQ: no calibration inputs");
	int gs = p->group_size, maxq = (1 << p->bits) - 1;
	float *H = h->H;
	float f = (float)(2.0 / (double)h->rows);
	for (size_t i = 0; i < (size_t)cols * cols; i++) H[i] *= f;
	for (int c = 0; c < cols; c++)   /* _neutralize_dead_columns */
		if (H[(size_t)c * cols + c] == 0) {
			H[(size_t)c * cols + c] = 1;
			for (int i = 0; i < rows; i++) W[(size_t)i * cols + c] = 0;
		}
	int G = p->act_group_aware ? cols / gs : 0;
	int *perm = ft_xmalloc((size_t)cols * sizeof *perm), *global = ft_xmalloc(((size_t)G + 1) * sizeof *global);
	float *diag = ft_xmalloc((size_t)cols * sizeof *diag);
	for (int c = 0; c < cols; c++) diag[c] = H[(size_t)c * cols + c];
	if (G)
		gar_perm(diag, cols, gs, perm, global);
	else
		for (int c = 0; c < cols; c++) perm[c] = c;
	free(diag);
	permute_inputs(W, H, rows, cols, perm);
	float *U = ft_xmalloc((size_t)cols * cols * sizeof *U);
	int rc = hessian_inverse(p, H, cols, U, &r->damp);
	if (rc < 0) {
		ft_fail("GPTQ: the Hessian is not positive definite even with damp_percent near 1");
	} else {
		r->rows = rows;
		r->cols = cols;
		r->ngroups = (cols + gs - 1) / gs;
		uint8_t *codes = ft_xmalloc((size_t)rows * cols);
		float *scale = ft_xmalloc((size_t)r->ngroups * rows * sizeof *scale);
		qjob j = { p, W, U, rows, cols, maxq, (float)((maxq + 1) / 2), codes, scale,
			   ft_xmalloc((size_t)rows * p->block_size * sizeof(float)) };
		quant_blocks(&j, &r->loss);
		free(j.Err);
		r->codes = ft_xmalloc((size_t)rows * cols);
		r->scale = ft_xmalloc((size_t)r->ngroups * rows * sizeof *r->scale);
		unpermute(r, W, perm, global, G, codes, scale);
		free(codes);
		free(scale);
		r->zero = ft_xmalloc((size_t)r->ngroups * rows * sizeof *r->zero);
		for (size_t i = 0; i < (size_t)r->ngroups * rows; i++) r->zero[i] = (maxq + 1) / 2;
		r->g_idx = ft_xmalloc((size_t)cols * sizeof *r->g_idx);
		for (int c = 0; c < cols; c++) r->g_idx[c] = c / gs;
	}
	free(U);
	free(perm);
	free(global);
	return rc;
}

/* ---- packing ---- */

size_t ft_gptq_qweight_rows(int cols, int bits) { return (size_t)cols / 32 * bits; }
size_t ft_gptq_qzeros_cols(int rows, int bits) { return (size_t)rows / 32 * bits; }

/* 32 values into `bits` words: 2/4/8 bits value k at word k / (32/bits),
 * shift (k % (32/bits)) * bits; 3 bits the 10-1-10-1-10 layout. */
static void pack32(const uint32_t *x, int bits, uint32_t *w)
{
	memset(w, 0, (size_t)bits * sizeof *w);
	if (bits != 3) {
		int pf = 32 / bits;
		for (int k = 0; k < 32; k++) w[k / pf] |= x[k] << ((k % pf) * bits);
		return;
	}
	for (int k = 0; k < 10; k++) w[0] |= x[k] << (3 * k);
	w[0] |= x[10] << 30;
	w[1] = (x[10] >> 2) & 1;
	for (int k = 0; k < 10; k++) w[1] |= x[11 + k] << (3 * k + 1);
	w[1] |= x[21] << 31;
	w[2] = (x[21] >> 1) & 3;
	for (int k = 0; k < 10; k++) w[2] |= x[22 + k] << (3 * k + 2);
}

static void unpack32(const uint32_t *w, int bits, uint32_t *x)
{
	uint32_t m = (1u << bits) - 1;
	if (bits != 3) {
		int pf = 32 / bits;
		for (int k = 0; k < 32; k++) x[k] = (w[k / pf] >> ((k % pf) * bits)) & m;
		return;
	}
	for (int k = 0; k < 10; k++) x[k] = (w[0] >> (3 * k)) & 7;
	x[10] = (w[0] >> 30) | ((w[1] & 1) << 2);
	for (int k = 0; k < 10; k++) x[11 + k] = (w[1] >> (3 * k + 1)) & 7;
	x[21] = (w[1] >> 31) | ((w[2] & 3) << 1);
	for (int k = 0; k < 10; k++) x[22 + k] = (w[2] >> (3 * k + 2)) & 7;
}

void ft_gptq_pack_qweight(const ft_gptq_result *r, int bits, int32_t *qweight)
{
	int rows = r->rows, cols = r->cols;
#pragma omp parallel for schedule(static)
	for (int o = 0; o < rows; o++) {
		uint32_t x[32], w[8];
		for (int b = 0; b < cols / 32; b++) {
			for (int k = 0; k < 32; k++) x[k] = r->codes[(size_t)o * cols + b * 32 + k];
			pack32(x, bits, w);
			for (int k = 0; k < bits; k++) {
				int32_t v;
				memcpy(&v, &w[k], sizeof v);
				qweight[((size_t)b * bits + k) * rows + o] = v;
			}
		}
	}
}

void ft_gptq_pack_qzeros(const ft_gptq_result *r, int bits, int32_t *qzeros)
{
	size_t nc = ft_gptq_qzeros_cols(r->rows, bits);
	for (int g = 0; g < r->ngroups; g++) {
		uint32_t x[32], w[8];
		for (int b = 0; b < r->rows / 32; b++) {
			for (int k = 0; k < 32; k++) x[k] = (uint32_t)r->zero[(size_t)g * r->rows + b * 32 + k];
			pack32(x, bits, w);
			for (int k = 0; k < bits; k++) memcpy(&qzeros[(size_t)g * nc + (size_t)b * bits + k], &w[k], 4);
		}
	}
}

void ft_gptq_unpack_qweight(const int32_t *qweight, int rows, int cols, int bits, uint8_t *codes)
{
	for (int o = 0; o < rows; o++)
		for (int b = 0; b < cols / 32; b++) {
			uint32_t w[8], x[32];
			for (int k = 0; k < bits; k++) memcpy(&w[k], &qweight[((size_t)b * bits + k) * rows + o], 4);
			unpack32(w, bits, x);
			for (int k = 0; k < 32; k++) codes[(size_t)o * cols + b * 32 + k] = (uint8_t)x[k];
		}
}
