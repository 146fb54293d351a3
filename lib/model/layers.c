/* layers.c - CPU reference of the decoder layers (see layers.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "util/error.h"
#include "model/layers.h"
#include "model/kernels.h"   /* the SwiGLU element, shared with lib/cuda */
#include "model/vexp.h"

/* OpenBLAS's CBLAS, the two functions used, declared here: Debian's
 * <cblas.h> is an alternatives link that may name netlib's header, which
 * lacks openblas_set_num_threads.  OpenBLAS's integers are int (LP64). */
enum CBLAS_ORDER { CblasRowMajor = 101 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta,
		 enum CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
		 const float *A, int lda, const float *B, int ldb, float beta,
		 float *C, int ldc);
void openblas_set_num_threads(int n);

/* Elementwise loops go parallel only above this many elements: below it
 * waking the other threads costs more than the loop. */
#define SPLIT(n) ((n) >= 4096)

/* Row-major sgemm: C[M,N] = alpha op(A) op(B) + beta C, on the calling
 * thread.  OpenBLAS runs single-threaded: its own thread pool and OpenMP's
 * would spin against each other (a 20x slowdown on 2 cores), so the
 * parallel products below split C between OpenMP threads instead. */
static void mm(int ta, int tb, int M, int N, int K, float alpha,
	       const float *A, int lda, const float *B, int ldb, float beta,
	       float *C, int ldc)
{
	if (M <= 0 || N <= 0)
		return;
	if (K <= 0) {   /* sgemm leaves C untouched for K=0; honour beta */
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				C[(size_t)i * ldc + j] *= beta;
		return;
	}
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
		    tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B,
		    ldb, beta, C, ldc);
}

static void blas_init(void)
{
	static int done;
	if (__atomic_load_n(&done, __ATOMIC_ACQUIRE))
		return;
#pragma omp critical(ft_blas_init)
	if (!done) {
		openblas_set_num_threads(1);
		__atomic_store_n(&done, 1, __ATOMIC_RELEASE);
	}
}

/* The same product split into row (or column) blocks of C, one per
 * OpenMP thread; small products stay on one thread. */
static void mmp(int ta, int tb, int M, int N, int K, float alpha,
		const float *A, int lda, const float *B, int ldb, float beta,
		float *C, int ldc)
{
	blas_init();
	int nt = omp_get_max_threads();
	if (nt <= 1 || (double)M * N * K < 32768.0 || omp_in_parallel()) {
		mm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
		return;
	}
	int byrow = M >= N, len = byrow ? M : N;
	if (len < nt)
		nt = len;
#pragma omp parallel num_threads(nt)
	{
		int t = omp_get_thread_num(), n = omp_get_num_threads();
		int i0 = (int)((long)len * t / n), i1 = (int)((long)len * (t + 1) / n);
		if (byrow)
			mm(ta, tb, i1 - i0, N, K, alpha, ta ? A + i0 : A + (size_t)i0 * lda, lda,
			   B, ldb, beta, C + (size_t)i0 * ldc, ldc);
		else
			mm(ta, tb, M, i1 - i0, K, alpha, A, lda,
			   tb ? B + (size_t)i0 * ldb : B + i0, ldb, beta, C + i0, ldc);
	}
}

/* One product's arguments, for mm_pair. */
typedef struct {
	int ta, tb, M, N, K;
	float alpha;
	const float *A;
	int lda;
	const float *B;
	int ldb;
	float beta;
	float *C;
	int ldc;
} gemm;

static void mm_of(const gemm *g)
{
	mm(g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
}

static void mmp_of(const gemm *g)
{
	mmp(g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
}

static double mnk(const gemm *g) { return (double)g->M * g->N * g->K; }

/* Products below this many multiply-adds are not split between threads
 * when there are others to run beside them. */
#define GROUP_SMALL 4194304.0

/* Independent products (a backward's dx and dW; a layer's q, k and v).
 * Small ones run side by side, each whole on one thread, the threads
 * balanced by size: split in halves, such products run at a fraction of
 * OpenBLAS's speed, and one fork serves them all.  Otherwise each is
 * split over all threads in turn.  NULL entries are skipped. */
static void mm_group(const gemm *const *g, int n)
{
	int live = 0, small = 1;
	for (int i = 0; i < n; i++)
		if (g[i]) {
			live++;
			small &= mnk(g[i]) < GROUP_SMALL;
		}
	int nt = omp_get_max_threads() < live ? omp_get_max_threads() : live;
	if (nt < 2 || !small || n > 8 || omp_in_parallel()) {
		for (int i = 0; i < n; i++)
			if (g[i]) mmp_of(g[i]);
		return;
	}
	blas_init();
	/* largest first, each to the least loaded thread */
	int owner[8];
	double load[8] = { 0 };
	for (int i = 0; i < n; i++) owner[i] = -1;
	for (int k = 0; k < n; k++) {
		int best = -1;
		for (int i = 0; i < n; i++)
			if (g[i] && owner[i] < 0 && (best < 0 || mnk(g[i]) > mnk(g[best]))) best = i;
		if (best < 0) break;
		int t = 0;
		for (int j = 1; j < nt; j++)
			if (load[j] < load[t]) t = j;
		owner[best] = t;
		load[t] += mnk(g[best]);
	}
#pragma omp parallel num_threads(nt)
	{
		int t = omp_get_thread_num();
		for (int i = 0; i < n; i++)
			if (g[i] && owner[i] == t)
				mm_of(g[i]);
	}
}

static void mm_pair(const gemm *a, const gemm *b)
{
	const gemm *g[2] = { a, b };
	mm_group(g, 2);
}

void ft_sgemm(int ta, int tb, int M, int N, int K, float alpha,
	      const float *A, int lda, const float *B, int ldb, float beta,
	      float *C, int ldc)
{
	mmp(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ft_embedding_forward(float *out, const int32_t *ids, const float *wte,
			  int N, int D)
{
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * D))
	for (int n = 0; n < N; n++)
		memcpy(out + (size_t)n * D, wte + (size_t)ids[n] * D, D * sizeof(float));
}

void ft_embedding_backward(float *dwte, const float *dout, const int32_t *ids,
			   int N, int D)
{
	/* Threads own column ranges, so repeated ids never race and the sum
	 * order is fixed (deterministic). */
#pragma omp parallel if (SPLIT((size_t)N * D))
	{
		int nt = omp_get_num_threads(), t = omp_get_thread_num();
		int d0 = (int)((long)D * t / nt), d1 = (int)((long)D * (t + 1) / nt);
		for (int n = 0; n < N; n++) {
			float *dst = dwte + (size_t)ids[n] * D;
			const float *src = dout + (size_t)n * D;
			for (int d = d0; d < d1; d++)
				dst[d] += src[d];
		}
	}
}

void ft_rmsnorm_forward(float *out, float *rstd, const float *x,
			const float *w, int N, int D, float eps)
{
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * D))
	for (int n = 0; n < N; n++) {
		const float *xr = x + (size_t)n * D;
		float *o = out + (size_t)n * D;
		float ss = 0;
		/* vector partial sums, as torch's own reductions: a serial
		 * sum is latency-bound at 4 cycles per element */
#pragma omp simd reduction(+ : ss)
		for (int d = 0; d < D; d++)
			ss += xr[d] * xr[d];
		float r = 1.0f / sqrtf(ss / D + eps);
		rstd[n] = r;
		for (int d = 0; d < D; d++)
			o[d] = w[d] * (xr[d] * r);
	}
}

void ft_rmsnorm_backward(float *dx, float *dw, const float *dout,
			 const float *x, const float *w, const float *rstd,
			 int N, int D)
{
	int nt = SPLIT((size_t)N * D) ? omp_get_max_threads() : 1;
	float *part = dw ? ft_xcalloc((size_t)nt * D, sizeof(float)) : NULL;
#pragma omp parallel num_threads(nt)
	{
		float *p = part ? part + (size_t)omp_get_thread_num() * D : NULL;
#pragma omp for schedule(static)
		for (int n = 0; n < N; n++) {
			const float *xr = x + (size_t)n * D, *g = dout + (size_t)n * D;
			float r = rstd[n], dot = 0;
#pragma omp simd reduction(+ : dot)
			for (int d = 0; d < D; d++)
				dot += g[d] * w[d] * xr[d];
			dot *= r / D;   /* mean(dxhat * xhat) */
			float *dxr = dx + (size_t)n * D;
			for (int d = 0; d < D; d++)
				dxr[d] += r * (g[d] * w[d] - xr[d] * r * dot);
			if (p)
				for (int d = 0; d < D; d++)
					p[d] += g[d] * xr[d] * r;
		}
	}
	if (part) {
		for (int t = 0; t < nt; t++)
			for (int d = 0; d < D; d++)
				dw[d] += part[(size_t)t * D + d];
		free(part);
	}
}

int ft_rope_inv_freq(float *inv, int hd, const ft_rope_params *p, int seq_len)
{
	/* float32 arithmetic, in the order torch evaluates the tensor ops */
	float base = (float)p->theta;
	int half = hd / 2;
	if (!strcmp(p->type, "dynamic") && seq_len > p->max_pos) {
		float f = (float)p->factor * (float)seq_len / (float)p->max_pos
			  - (float)(p->factor - 1);
		base = base * powf(f, (float)((double)hd / (hd - 2)));
	} else if (!strcmp(p->type, "yarn")) {
		ft_rope_yarn_inv_freq(inv, hd, p);
		return 0;
	} else if (!strcmp(p->type, "longrope") && p->short_factor && p->long_factor) {
		ft_rope_longrope_inv_freq(inv, hd, p, seq_len);
		return 0;
	} else if (strcmp(p->type, "default") && strcmp(p->type, "linear") &&
		   strcmp(p->type, "dynamic") && strcmp(p->type, "llama3"))
		return ft_fail("rope_scaling type '%s' is not supported "
			       "(default, linear, dynamic, llama3, yarn, longrope)", p->type);
	for (int i = 0; i < half; i++)
		inv[i] = 1.0f / powf(base, (float)(2 * i) / (float)hd);
	if (!strcmp(p->type, "linear"))
		for (int i = 0; i < half; i++)
			inv[i] /= (float)p->factor;
	if (!strcmp(p->type, "llama3")) {
		float factor = (float)p->factor, lo = (float)p->low_freq_factor;
		float hi = (float)p->high_freq_factor;
		double old = p->original_max_pos;
		double lo_wl = old / p->low_freq_factor, hi_wl = old / p->high_freq_factor;
		for (int i = 0; i < half; i++) {
			float wl = (float)(2 * M_PI) / inv[i];
			float f = inv[i];
			if (wl > lo_wl)
				f = inv[i] / factor;
			if (!(wl < hi_wl) && !(wl > lo_wl)) {
				float s = ((float)old / wl - lo) / (hi - lo);
				f = (1 - s) * f / factor + s * f;
			}
			inv[i] = f;
		}
	}
	return 0;
}

void ft_rope_tables(float *cos_t, float *sin_t, const int32_t *pos, int N,
		    const float *inv, int hd)
{
	int half = hd / 2;
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * hd))
	for (int n = 0; n < N; n++)
		for (int i = 0; i < half; i++) {
			float a = (float)pos[n] * inv[i];
			cos_t[(size_t)n * half + i] = cosf(a);
			sin_t[(size_t)n * half + i] = sinf(a);
		}
}

/* sign = +1: forward rotation; -1: its transpose (the backward pass).
 * The first rd of each head's hd values rotate (rotate-half over rd, as
 * transformers' apply_rotary_pos_emb on q[..., :rotary_dim]); the rest
 * pass through (partial rotary, Phi-4-mini). */
static void rope_rotate(float *x, const float *cos_t, const float *sin_t,
			int N, int H, int hd, int rd, float sign)
{
	int half = rd / 2;
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * H * hd))
	for (int n = 0; n < N; n++) {
		const float *c = cos_t + (size_t)n * half, *s = sin_t + (size_t)n * half;
		for (int h = 0; h < H; h++) {
			float *v = x + ((size_t)n * H + h) * hd;
			for (int i = 0; i < half; i++) {
				float a = v[i], b = v[i + half], si = sign * s[i];
				v[i] = a * c[i] - b * si;
				v[i + half] = b * c[i] + a * si;
			}
		}
	}
}

void ft_rope_forward(float *x, const float *cos_t, const float *sin_t,
		     int N, int H, int hd, int rd)
{
	rope_rotate(x, cos_t, sin_t, N, H, hd, rd, 1.0f);
}

void ft_rope_backward(float *dx, const float *cos_t, const float *sin_t,
		      int N, int H, int hd, int rd)
{
	rope_rotate(dx, cos_t, sin_t, N, H, hd, rd, -1.0f);
}

#define ATT_TILE 64

/* The one mask (kernels.h), with a row's segment ids (or none) and real
 * length len (T when the batch has no lengths). */
static inline int attn_allowed(const ft_attn_shape *s, const int32_t *seg, int len,
			       int t, int u)
{
	return ft_k_attn_allowed(t, u, s->window, seg ? seg[t] : 1, seg ? seg[u] : 1, len);
}

/* Row b's real length: positions [0, len) are real (ft_attn_shape.len). */
static inline int attn_len(const ft_attn_shape *s, int b)
{
	return s->len ? s->len[b] : s->T;
}

/* Pointers to the first row of head h in batch row b. */
#define QP(base, b, h) ((base) + ((size_t)(b) * s->T) * ldq + (size_t)(h) * s->hd)
#define KP(base, b, h) ((base) + ((size_t)(b) * s->T) * ldk + (size_t)(h) * s->hd)

/* 1 when every non-zero segment id of the row is one contiguous run
 * (neat packing), so a query's keys start at its segment's start. */
static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

static int seg_contiguous(const int32_t *seg, int T)
{
	if (!seg)
		return 0;
	int32_t *ids = ft_xmalloc((size_t)T * sizeof *ids);
	int n = 0, ok = 1;
	for (int t = 0; t < T; t++)
		if (seg[t] && (t == 0 || seg[t] != seg[t - 1]))
			ids[n++] = seg[t];
	qsort(ids, n, sizeof *ids, cmp_i32);
	for (int i = 1; i < n && ok; i++)
		ok = ids[i] != ids[i - 1];
	free(ids);
	return ok;
}

/* First key any query of the tile starting at r0 may see: keys before it
 * are masked for every row of the tile, so the products skip them. */
static int tile_kstart(const ft_attn_shape *s, const int32_t *seg, int contig, int r0)
{
	int k0 = s->window > 0 && r0 - s->window + 1 > 0 ? r0 - s->window + 1 : 0;
	if (contig) {
		int u = r0;
		while (u > k0 && seg[r0] && seg[u - 1] == seg[r0])
			u--;
		if (u > k0)
			k0 = u;
	}
	return k0;
}

/* One query head of one row: tiles of ATT_TILE queries against keys
 * [k0, last query of the tile]; S is [ATT_TILE, T] scratch. */
static void attn_head_fwd(float *O, float *L, const float *Q, const float *K,
			  const float *V, const int32_t *seg, int contig, int len,
			  const ft_attn_shape *s, float *S)
{
	int T = s->T, hd = s->hd, ldq = s->Hq * hd, ldk = s->Hk * hd;
	float scale = s->scale > 0 ? s->scale : 1.0f / sqrtf((float)hd);
	for (int r0 = 0; r0 < T; r0 += ATT_TILE) {
		int nr = T - r0 < ATT_TILE ? T - r0 : ATT_TILE, kc = r0 + nr;
		int k0 = tile_kstart(s, seg, contig, r0), nk = kc - k0;
		mm(0, 1, nr, nk, hd, scale, Q + (size_t)r0 * ldq, ldq, K + (size_t)k0 * ldk, ldk,
		   0, S, nk);
		if (s->softcap > 0)   /* Gemma 2: after the scale, before the mask */
			for (size_t e = 0; e < (size_t)nr * nk; e++)
				S[e] = tanhf(S[e] / s->softcap) * s->softcap;
		for (int i = 0; i < nr; i++) {
			int t = r0 + i;
			float *row = S + (size_t)i * nk, mx = -INFINITY;   /* row[u - k0] */
			for (int u = k0; u <= t; u++)
				if (attn_allowed(s, seg, len, t, u) && row[u - k0] > mx)
					mx = row[u - k0];
			float sum = 0;
			for (int u = k0; u < kc; u++) {
				float e = attn_allowed(s, seg, len, t, u) ? ft_vexpf(row[u - k0] - mx) : 0;
				row[u - k0] = e;
				sum += e;
			}
			float inv = 1.0f / sum;
			for (int u = 0; u < nk; u++)
				row[u] *= inv;
			L[t] = mx + logf(sum);
		}
		mm(0, 0, nr, hd, nk, 1, S, nk, V + (size_t)k0 * ldk, ldk, 0, O + (size_t)r0 * ldq, ldq);
	}
}

void ft_attention_forward(float *out, float *lse, const float *q,
			  const float *k, const float *v, const ft_attn_shape *s)
{
	int T = s->T, ldq = s->Hq * s->hd, ldk = s->Hk * s->hd, grp = s->Hq / s->Hk;
	int nbh = s->B * s->Hq;
	blas_init();
#pragma omp parallel if (nbh > 1 && (double)nbh * T * T * s->hd > 3e4)
	{
		float *S = ft_xmalloc((size_t)ATT_TILE * T * sizeof(float));
#pragma omp for schedule(dynamic)
		for (int bh = 0; bh < nbh; bh++) {
			int b = bh / s->Hq, h = bh % s->Hq;
			const int32_t *seg = s->seg ? s->seg + (size_t)b * T : NULL;
			attn_head_fwd(QP(out, b, h), lse + (size_t)bh * T, QP(q, b, h),
				      KP(k, b, h / grp), KP(v, b, h / grp), seg,
				      seg_contiguous(seg, T), attn_len(s, b), s, S);
		}
		free(S);
	}
}

/* Backward of one query head; dK, dV (shared by the kv group) are
 * accumulated, so one thread owns a whole group. */
static void attn_head_bwd(float *dQ, float *dK, float *dV, const float *dO,
			  const float *Q, const float *K, const float *V,
			  const float *O, const float *L, const int32_t *seg, int contig,
			  int len, const ft_attn_shape *s, float *P, float *dP)
{
	int T = s->T, hd = s->hd, ldq = s->Hq * hd, ldk = s->Hk * hd;
	float scale = s->scale > 0 ? s->scale : 1.0f / sqrtf((float)hd), cap = s->softcap;
	for (int r0 = 0; r0 < T; r0 += ATT_TILE) {
		int nr = T - r0 < ATT_TILE ? T - r0 : ATT_TILE, kc = r0 + nr;
		int k0 = tile_kstart(s, seg, contig, r0), nk = kc - k0;
		const float *Kk = K + (size_t)k0 * ldk, *Vk = V + (size_t)k0 * ldk;
		mm(0, 1, nr, nk, hd, scale, Q + (size_t)r0 * ldq, ldq, Kk, ldk, 0, P, nk);
		mm(0, 1, nr, nk, hd, 1, dO + (size_t)r0 * ldq, ldq, Vk, ldk, 0, dP, nk);
		for (int i = 0; i < nr; i++) {
			int t = r0 + i;
			float *p = P + (size_t)i * nk, *dp = dP + (size_t)i * nk;   /* [u - k0] */
			const float *o = O + (size_t)t * ldq, *g = dO + (size_t)t * ldq;
			float di = 0;
			for (int d = 0; d < hd; d++)
				di += o[d] * g[d];
			for (int u = k0; u < kc; u++) {
				float th = cap > 0 ? tanhf(p[u - k0] / cap) : 0;   /* softcap */
				float sc = cap > 0 ? th * cap : p[u - k0];
				float pu = attn_allowed(s, seg, len, t, u) ? ft_vexpf(sc - L[t]) : 0;
				p[u - k0] = pu;
				dp[u - k0] = pu * (dp[u - k0] - di) * (cap > 0 ? 1 - th * th : 1);
			}
		}
		mm(0, 0, nr, hd, nk, scale, dP, nk, Kk, ldk, 0, dQ + (size_t)r0 * ldq, ldq);
		mm(1, 0, nk, hd, nr, scale, dP, nk, Q + (size_t)r0 * ldq, ldq, 1,
		   dK + (size_t)k0 * ldk, ldk);
		mm(1, 0, nk, hd, nr, 1, P, nk, dO + (size_t)r0 * ldq, ldq, 1,
		   dV + (size_t)k0 * ldk, ldk);
	}
}

void ft_attention_backward(float *dq, float *dk, float *dv, const float *dout,
			   const float *q, const float *k, const float *v,
			   const float *out, const float *lse,
			   const ft_attn_shape *s)
{
	int T = s->T, ldq = s->Hq * s->hd, ldk = s->Hk * s->hd, grp = s->Hq / s->Hk;
	int nbg = s->B * s->Hk;
	size_t nk = (size_t)s->B * T * ldk;
	memset(dk, 0, nk * sizeof(float));
	memset(dv, 0, nk * sizeof(float));
	blas_init();
#pragma omp parallel if (nbg > 1 && (double)s->B * s->Hq * T * T * s->hd > 3e4)
	{
		float *P = ft_xmalloc((size_t)ATT_TILE * T * sizeof(float));
		float *dP = ft_xmalloc((size_t)ATT_TILE * T * sizeof(float));
#pragma omp for schedule(dynamic)
		for (int bg = 0; bg < nbg; bg++) {
			int b = bg / s->Hk, g = bg % s->Hk;
			const int32_t *seg = s->seg ? s->seg + (size_t)b * T : NULL;
			int contig = seg_contiguous(seg, T);
			for (int h = g * grp; h < (g + 1) * grp; h++)
				attn_head_bwd(QP(dq, b, h), KP(dk, b, g), KP(dv, b, g),
					      QP(dout, b, h), QP(q, b, h), KP(k, b, g),
					      KP(v, b, g), QP(out, b, h),
					      lse + ((size_t)b * s->Hq + h) * T, seg, contig,
					      attn_len(s, b), s, P, dP);
		}
		free(P);
		free(dP);
	}
}

void ft_swiglu_forward(float *h, const float *gate, const float *up, size_t n)
{
#pragma omp parallel for simd schedule(static) if (parallel: SPLIT(n))
	for (size_t i = 0; i < n; i++) {
		h[i] = ft_k_swiglu(gate[i], up[i]);
	}
}

void ft_swiglu_backward(float *dgate, float *dup, const float *dh,
			const float *gate, const float *up, size_t n)
{
#pragma omp parallel for simd schedule(static) if (parallel: SPLIT(n))
	for (size_t i = 0; i < n; i++) {
		ft_k_swiglu_backward(dh[i], gate[i], up[i], &dgate[i], &dup[i]);
	}
}

static void add_bias(float *y, const float *b, int N, int out)
{
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * out))
	for (int n = 0; n < N; n++)
		for (int o = 0; o < out; o++)
			y[(size_t)n * out + o] += b[o];
}

void ft_linear_forward(float *y, const float *x, const float *W,
		       const float *b, int N, int in, int out)
{
	mmp(0, 1, N, out, in, 1, x, in, W, in, 0, y, out);
	if (b)
		add_bias(y, b, N, out);
}

void ft_linear_forward_many(const ft_linear_out *o, int n, const float *x, int N, int in)
{
	gemm g[8];
	const gemm *gp[8] = { 0 };
	if (n > 8) n = 8;
	for (int i = 0; i < n; i++) {
		g[i] = (gemm){ 0, 1, N, o[i].out, in, 1, x, in, o[i].W, in, 0, o[i].y, o[i].out };
		gp[i] = &g[i];
	}
	mm_group(gp, n);
	for (int i = 0; i < n; i++)
		if (o[i].b)
			add_bias(o[i].y, o[i].b, N, o[i].out);
}

void ft_linear_backward(float *dx, float *dW, float *db, const float *dy,
			const float *x, const float *W, int N, int in, int out)
{
	gemm dxp = { 0, 0, N, in, out, 1, dy, out, W, in, 1, dx, in };
	gemm dwp = { 1, 0, out, in, N, 1, dy, out, x, in, 1, dW, in };
	mm_pair(dx ? &dxp : NULL, dW ? &dwp : NULL);
	if (db) {
#pragma omp parallel for schedule(static) if (SPLIT((size_t)N * out))
		for (int o = 0; o < out; o++) {
			float s = 0;
			for (int n = 0; n < N; n++)
				s += dy[(size_t)n * out + o];
			db[o] += s;
		}
	}
}

void ft_lora_forward(float *y, float *h, const float *xd, const float *A,
		     const float *Bm, int N, int in, int out, int r, float scale)
{
	mmp(0, 1, N, r, in, 1, xd, in, A, in, 0, h, r);
	mmp(0, 1, N, out, r, scale, h, r, Bm, r, 1, y, out);
}

void ft_lora_backward(float *dxd, float *dA, float *dB, float *hs,
		      const float *dy, const float *xd, const float *h,
		      const float *A, const float *Bm, int N, int in, int out,
		      int r, float scale)
{
	if (dB)
		mmp(1, 0, out, r, N, scale, dy, out, h, r, 1, dB, r);
	mmp(0, 0, N, r, out, scale, dy, out, Bm, r, 0, hs, r);
	if (dA)
		mmp(1, 0, r, in, N, 1, hs, r, xd, in, 1, dA, in);
	if (dxd)
		mmp(0, 0, N, in, r, 1, hs, r, A, in, 1, dxd, in);
}

static inline uint64_t splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void ft_dropout_apply(float *out, const float *x, size_t n, float p,
		      uint64_t seed)
{
	if (p <= 0) {
		if (out != x)
			memcpy(out, x, n * sizeof(float));
		return;
	}
	double th = (double)p * 18446744073709551616.0;
	uint64_t thr = th >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)th;
	float keep = p >= 1 ? 0 : 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (SPLIT(n))
	for (size_t i = 0; i < n; i++)
		out[i] = splitmix64(seed + i) >= thr && p < 1 ? x[i] * keep : 0.0f;
}

double ft_lm_head_loss(float *dx, float *dW, float *logits, const float *x,
		       const float *W, const int32_t *targets, int n, int D,
		       int V, float grad_scale, float *scratch, int chunk,
		       int64_t *n_tok)
{
	return ft_lm_head_loss_cap(dx, dW, logits, x, W, targets, n, D, V, grad_scale, scratch,
				   chunk, n_tok, 0, 0, NULL);
}

/* One exp per logit, kept in place (needed for the gradient): the exp
 * loop vectorizes, the double sum runs after it in order. */
float ft_exp_row(float *l, int V, double *sum_out)
{
	float mx = l[0];
	for (int j = 1; j < V; j++)
		if (l[j] > mx)
			mx = l[j];
	double sum = 0;
#pragma omp simd
	for (int j = 0; j < V; j++)
		l[j] = ft_vexpf(l[j] - mx);
	for (int j = 0; j < V; j++)
		sum += l[j];
	*sum_out = sum;
	return mx;
}

void ft_softcap_forward(float *x, size_t n, float cap)
{
	for (size_t e = 0; e < n; e++)   /* logits / cap, tanh, * cap, as transformers' Gemma 2 */
		x[e] = ft_k_softcap(x[e], cap);
}

void ft_softcap_backward(float *d, const float *c, size_t n, float cap)
{
	for (size_t e = 0; e < n; e++)
		d[e] = ft_k_softcap_grad(d[e], c[e], cap);
}

double ft_lm_head_loss_cap(float *dx, float *dW, float *logits, const float *x,
			   const float *W, const int32_t *targets, int n, int D,
			   int V, float grad_scale, float *scratch, int chunk,
			   int64_t *n_tok, float cap, float ls, int32_t *pred)
{
	double loss = 0;
	int64_t cnt = 0;
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int nr = n - r0 < chunk ? n - r0 : chunk;
		const float *xc = x + (size_t)r0 * D;
		mmp(0, 1, nr, V, D, 1, xc, D, W, D, 0, scratch, V);
		if (cap > 0)
			ft_softcap_forward(scratch, (size_t)nr * V, cap);
		if (logits)
			memcpy(logits + (size_t)r0 * V, scratch, (size_t)nr * V * sizeof(float));
		double part = 0;
		int64_t c = 0;
#pragma omp parallel for schedule(static) reduction(+:part, c) if (SPLIT((size_t)nr * V))
		for (int i = 0; i < nr; i++) {
			float *l = scratch + (size_t)i * V;
			int tg = targets[r0 + i];
			if (pred)
				pred[r0 + i] = tg < 0 || tg >= V ? -1 : ft_k_argmax(l, V);
			if (tg < 0 || tg >= V) {   /* -100: ignored, zero gradient */
				if (dx)
					memset(l, 0, V * sizeof(float));
				continue;
			}
			float *zc = NULL;   /* the capped logits, for the gradient */
			if (cap > 0 && dx) {
				zc = ft_xmalloc(V * sizeof(float));
				memcpy(zc, l, V * sizeof(float));
			}
			float lt = l[tg], mx;
			double sum, zs = 0;
			if (ls != 0)   /* label smoothing: the row's logits summed first */
				for (int j = 0; j < V; j++)
					zs += l[j];
			mx = ft_exp_row(l, V, &sum);
			part += ft_k_ce_loss(mx, sum, lt, zs, ls, V);
			c++;
			if (dx) {   /* softmax * grad_scale, minus grad_scale at the target */
				float sc = (float)(grad_scale / sum);
				for (int j = 0; j < V; j++)
					l[j] = ft_k_ce_grad_ls(l[j] * sc, grad_scale, j == tg, ls, V);
				if (zc)   /* through the cap */
					ft_softcap_backward(l, zc, V, cap);
			}
			free(zc);
		}
		loss += part;
		cnt += c;
		if (dx) {
			gemm dxp = { 0, 0, nr, D, V, 1, scratch, V, W, D, 0, dx + (size_t)r0 * D, D };
			gemm dwp = { 1, 0, V, D, nr, 1, scratch, V, xc, D, 1, dW, D };
			mm_pair(&dxp, dW ? &dwp : NULL);
		}
	}
	if (n_tok)
		*n_tok = cnt;
	return loss;
}
