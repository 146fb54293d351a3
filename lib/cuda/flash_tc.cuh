/* flash_tc.cuh - the bf16/fp16 flash-attention kernels, their products
 * on tensor cores through WMMA (nvcuda::wmma, 16x16x16 fragments of
 * half inputs with fp32 accumulators, sm_80+).  Same algorithm, tiles,
 * grids, masks and tile skipping as flash_kernels.cuh's fp32 kernels
 * (which the float instantiation keeps); what changes is where the
 * products run:
 *   forward  S = Q K^T and O += P V,
 *   dK, dV   S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q,
 *   dQ       S = Q K^T, dP = dO V^T, dQ += dS K.
 * Tiles are kept in shared memory in the element type (rows padded to a
 * multiple of 16 features with zeros, so hd need not be one); each
 * product is a block-wide loop in which warp w owns every 8th 16x16
 * output fragment.  Products land in fp32 shared tiles, where the
 * 8-lane row groups of the fp32 kernels apply the mask, the soft-cap and
 * the online softmax in fp32 with the same code (flash_mask.cuh; WMMA's
 * fragment layout is opaque, so the per-row work reads shared memory,
 * not fragments); P and dS are rounded to the element type for the
 * next product, as FlashAttention-2 does.
 * The output accumulators (O, dK, dV, dQ) are fp32 tiles in shared
 * memory, loaded into and stored from accumulator fragments around each
 * product (O is rescaled there by exp(m_old - m_new) between products).
 *
 * WMMA rather than mma.sync PTX: the public API compiles for every
 * sm_80+ target of config.mk, and its opaque layout lets the host
 * emulation (tests/emu/include/mma.h) run these very kernels; mma.sync
 * would need the documented per-lane layouts reproduced here and there.
 *
 * The includer provides <mma.h>, the half types and their to_f / put
 * (as for flash_kernels.cuh), and, outside CUDA, FA_TC_SMEM. */
#ifndef FT_CUDA_FLASH_TC_CUH
#define FT_CUDA_FLASH_TC_CUH

#include <type_traits>
#include "cuda/flash_kernels.cuh"

#ifndef FA_TC_SMEM
#define FA_TC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#define FA_WARPS (FA_THREADS / 32)
#define FA_LS (FT_FA_BC + 4)     /* row stride of the fp32 score tiles */
#define FA_LP (FT_FA_BC + 8)     /* row stride of the half P / dS tiles */
static_assert(FT_FA_BR == 32 && FT_FA_BC == 32, "two 16-row fragments per tile side");

namespace fa_wm = nvcuda::wmma;

/* Features rounded up to whole fragments; the row strides of the half
 * tiles (a multiple of 8 elements, as WMMA requires, offset by 8 against
 * bank conflicts) and of the fp32 accumulators (a multiple of 4). */
static __host__ __device__ __forceinline__ int tc_hk(int hd) { return (hd + 15) & ~15; }
static __host__ __device__ __forceinline__ int tc_lh(int hd) { return tc_hk(hd) + 8; }
static __host__ __device__ __forceinline__ int tc_lo(int hd) { return tc_hk(hd) + 4; }

/* Rows [0, 32) x features [0, tc_hk(hd)) of a tile (row r at src + r *
 * ld) into dst with row stride lh; rows >= n and features >= hd zero. */
template <typename E>
static __device__ void tc_load(E *dst, int lh, const E *src, size_t ld, int n, int hd)
{
	fa_load(dst, lh, src, ld, n, hd, tc_hk(hd));
}

/* A lane's FA_SPR products of a row of an fp32 score tile (elements
 * lane + 8 j), for flash_mask.cuh's row functions. */
static __device__ __forceinline__ void tc_row(float *s, const float *row, int lane)
{
#pragma unroll
	for (int j = 0; j < FA_SPR; j++)
		s[j] = row[lane + FA_LANES * j];
}

/* A [rows x n] fp32 tile of row stride ld set to zero. */
static __device__ void tc_zero(float *dst, int ld, int rows, int n)
{
	for (int i = threadIdx.x; i < rows * n; i += blockDim.x)
		dst[i / n * ld + i % n] = 0;
}

/* C[32 x 16 nn] (+)= A[32 x 16 nk] B, every operand in shared memory:
 * A row-major (stride lda); B [16 nk x 16 nn] row-major (B[k ldb + n]) or
 * col-major (B[n ldb + k], i.e. the transpose of a row-major tile);
 * C fp32 row-major, read first when acc.  Fragment f is warp
 * (f + first) % 8's, so two products of 4 fragments share the warps. */
template <typename E, typename BL>
static __device__ void tc_mma(float *C, int ldc, const E *A, int lda, const E *B, int ldb,
			      int nn, int nk, bool acc, int first)
{
	int warp = threadIdx.x / 32;
	bool rm = std::is_same<BL, fa_wm::row_major>::value;
	for (int f = (warp + FA_WARPS - first) % FA_WARPS; f < 2 * nn; f += FA_WARPS) {
		int i = f / nn, j = f - i * nn;
		float *c = C + 16 * i * ldc + 16 * j;
		fa_wm::fragment<fa_wm::accumulator, 16, 16, 16, float> fc;
		if (acc)
			fa_wm::load_matrix_sync(fc, c, ldc, fa_wm::mem_row_major);
		else
			fa_wm::fill_fragment(fc, 0.0f);
		for (int kk = 0; kk < nk; kk++) {
			fa_wm::fragment<fa_wm::matrix_a, 16, 16, 16, E, fa_wm::row_major> fa;
			fa_wm::fragment<fa_wm::matrix_b, 16, 16, 16, E, BL> fb;
			fa_wm::load_matrix_sync(fa, A + 16 * i * lda + 16 * kk, lda);
			fa_wm::load_matrix_sync(fb, rm ? B + 16 * kk * ldb + 16 * j
						       : B + 16 * j * ldb + 16 * kk, ldb);
			fa_wm::mma_sync(fc, fa, fb, fc);
		}
		fa_wm::store_matrix_sync(c, fc, ldc, fa_wm::mem_row_major);
	}
}

/* ---- forward ---- */

template <typename E>
static __global__ void __launch_bounds__(FA_THREADS) fa_fwd_tc(fa_args<E> p)
{
	static_assert(sizeof(E) == 2, "tensor-core kernels: bf16 or fp16 elements");
	FA_TC_SMEM(smtc);
	__shared__ int32_t segk[FT_FA_BC];
	int hd = p.hd, hk = tc_hk(hd), lh = tc_lh(hd), lo = tc_lo(hd);
	int b = blockIdx.z, h = blockIdx.y, g = h / (p.Hq / p.Hk);
	float *Sf = (float *)smtc, *Of = Sf + FT_FA_BR * FA_LS;     /* S [BR][BC], O [BR][hk] */
	E *Qh = (E *)(Of + FT_FA_BR * lo), *Kh = Qh + FT_FA_BR * lh, *Vh = Kh + FT_FA_BC * lh;
	E *Ph = Vh + FT_FA_BC * lh;                                 /* P [BR][BC] */
	int r0 = blockIdx.x * FT_FA_BR, nr = tile_len(r0, p.T);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int row = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, t = r0 + row;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	const E *kb = p.k + (size_t)b * p.T * ldk + (size_t)g * hd;
	const E *vb = p.v + (size_t)b * p.T * ldv + (size_t)g * hd;
	tc_load(Qh, lh, p.q + ((size_t)b * p.T + r0) * ldq + (size_t)h * hd, ldq, nr, hd);
	tc_zero(Of, lo, FT_FA_BR, hk);
	ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
	int32_t seg_t = seg && row < nr ? seg[t] : 1;
	float m = -INFINITY, l = 0;
	__syncthreads();
	for (int ct = 0; ct < ft_fa_key_tiles(r0, nr); ct++) {
		int c0 = ct * FT_FA_BC, nc = tile_len(c0, p.T);
		ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
		if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
			continue;                  /* the same for every thread */
		tc_load(Kh, lh, kb + (size_t)c0 * ldk, ldk, nc, hd);
		tc_load(Vh, lh, vb + (size_t)c0 * ldv, ldv, nc, hd);
		fa_load_segs(segk, seg, c0, nc);
		__syncthreads();
		tc_mma<E, fa_wm::col_major>(Sf, FA_LS, Qh, lh, Kh, lh, 2, hk / 16, false, 0);
		__syncthreads();
		float s[FA_SPR];
		tc_row(s, Sf + row * FA_LS, lane);
		fa_row mr = { row < nr, t, c0, nc, p.window, len, 0, seg_t, segk };
		float alpha = fa_fwd_row(mr, s, p.scale, p.softcap, &m, &l, Ph + row * FA_LP, lane);
		if (alpha != 1.0f)
			for (int d = lane; d < hk; d += FA_LANES)
				Of[row * lo + d] *= alpha;
		__syncthreads();
		tc_mma<E, fa_wm::row_major>(Of, lo, Ph, FA_LP, Vh, lh, hk / 16, 2, true, 0);
		__syncthreads();
	}
	if (row >= nr)
		return;
	float inv = 1.0f / l;
	E *o = p.out + ((size_t)b * p.T + t) * ldo + (size_t)h * hd;
	for (int d = lane; d < hd; d += FA_LANES)
		put(o + d, Of[row * lo + d] * inv);
	if (lane == 0)
		p.lse[((size_t)b * p.Hq + h) * p.T + t] = ft_fa_lse(m, l);
}

/* ---- backward (D = rowsum(dO O) is flash_kernels.cuh's rowdot_k) ---- */

template <typename E>
static __global__ void __launch_bounds__(FA_THREADS) fa_dkdv_tc(fa_args<E> p)
{
	static_assert(sizeof(E) == 2, "tensor-core kernels: bf16 or fp16 elements");
	FA_TC_SMEM(smtc);
	__shared__ float Ls[FT_FA_BR], Ds[FT_FA_BR];
	__shared__ int32_t segq[FT_FA_BR];
	int hd = p.hd, hk = tc_hk(hd), lh = tc_lh(hd), lo = tc_lo(hd);
	int b = blockIdx.z, g = blockIdx.y, grp = p.Hq / p.Hk;
	/* S^T, dP^T [BC][BR]; dK, dV [BC][hk]; P^T, dS^T [BC][BR] */
	float *Sf = (float *)smtc, *dPf = Sf + FT_FA_BC * FA_LS, *dKf = dPf + FT_FA_BC * FA_LS;
	float *dVf = dKf + FT_FA_BC * lo;
	E *Kh = (E *)(dVf + FT_FA_BC * lo), *Vh = Kh + FT_FA_BC * lh, *Qh = Vh + FT_FA_BC * lh;
	E *dOh = Qh + FT_FA_BR * lh, *Ph = dOh + FT_FA_BR * lh, *dSh = Ph + FT_FA_BC * FA_LP;
	int c0 = blockIdx.x * FT_FA_BC, nc = tile_len(c0, p.T);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int col = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, u = c0 + col;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	size_t tok = (size_t)b * p.T + c0, gh = (size_t)g * hd;
	tc_load(Kh, lh, p.k + tok * ldk + gh, ldk, nc, hd);
	tc_load(Vh, lh, p.v + tok * ldv + gh, ldv, nc, hd);
	tc_zero(dKf, lo, FT_FA_BC, hk);
	tc_zero(dVf, lo, FT_FA_BC, hk);
	ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
	int32_t seg_u = seg && col < nc ? seg[u] : 1;
	__syncthreads();
	for (int h = g * grp; h < (g + 1) * grp; h++)
		for (int r0 = c0 / FT_FA_BR * FT_FA_BR; r0 < p.T; r0 += FT_FA_BR) {
			int nr = tile_len(r0, p.T);
			ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
			if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
				continue;
			size_t qt = (size_t)b * p.T + r0, hh = (size_t)h * hd;
			tc_load(Qh, lh, p.q + qt * ldq + hh, ldq, nr, hd);
			tc_load(dOh, lh, p.dout + qt * ldo + hh, ldo, nr, hd);
			fa_load_queries(Ls, Ds, segq, p, seg, b, h, r0, nr);
			__syncthreads();
			tc_mma<E, fa_wm::col_major>(Sf, FA_LS, Kh, lh, Qh, lh, 2, hk / 16, false, 0);
			tc_mma<E, fa_wm::col_major>(dPf, FA_LS, Vh, lh, dOh, lh, 2, hk / 16, false, 4);
			__syncthreads();
			float sq[FA_SPR], dp[FA_SPR];
			tc_row(sq, Sf + col * FA_LS, lane);
			tc_row(dp, dPf + col * FA_LS, lane);
			fa_row mr = { col < nc, u, r0, nr, p.window, len, 1, seg_u, segq };
			fa_bwd_row(mr, sq, dp, 0, 0, Ls, Ds, p.scale, p.softcap, Ph + col * FA_LP,
				   dSh + col * FA_LP, lane);
			__syncthreads();
			int nf = 2 * (hk / 16);      /* fragments per product: dK's take the next warps */
			tc_mma<E, fa_wm::row_major>(dVf, lo, Ph, FA_LP, dOh, lh, hk / 16, 2, true, 0);
			tc_mma<E, fa_wm::row_major>(dKf, lo, dSh, FA_LP, Qh, lh, hk / 16, 2, true,
						    nf % FA_WARPS);
			__syncthreads();
		}
	if (col >= nc)
		return;
	size_t ok_ = ((size_t)b * p.T + u) * p.lddk + gh, ov = ((size_t)b * p.T + u) * p.lddv + gh;
	for (int d = lane; d < hd; d += FA_LANES) {
		put(p.dk + ok_ + d, dKf[col * lo + d] * p.scale);
		put(p.dv + ov + d, dVf[col * lo + d]);
	}
}

template <typename E>
static __global__ void __launch_bounds__(FA_THREADS) fa_dq_tc(fa_args<E> p)
{
	static_assert(sizeof(E) == 2, "tensor-core kernels: bf16 or fp16 elements");
	FA_TC_SMEM(smtc);
	__shared__ int32_t segk[FT_FA_BC];
	int hd = p.hd, hk = tc_hk(hd), lh = tc_lh(hd), lo = tc_lo(hd);
	int b = blockIdx.z, h = blockIdx.y, g = h / (p.Hq / p.Hk);
	/* S, dP [BR][BC]; dQ [BR][hk]; dS [BR][BC] */
	float *Sf = (float *)smtc, *dPf = Sf + FT_FA_BR * FA_LS, *dQf = dPf + FT_FA_BR * FA_LS;
	E *Qh = (E *)(dQf + FT_FA_BR * lo), *dOh = Qh + FT_FA_BR * lh, *Kh = dOh + FT_FA_BR * lh;
	E *Vh = Kh + FT_FA_BC * lh, *dSh = Vh + FT_FA_BC * lh;
	int r0 = blockIdx.x * FT_FA_BR, nr = tile_len(r0, p.T);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int row = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, t = r0 + row;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	size_t qt = (size_t)b * p.T + r0, hh = (size_t)h * hd;
	const E *kb = p.k + (size_t)b * p.T * ldk + (size_t)g * hd;
	const E *vb = p.v + (size_t)b * p.T * ldv + (size_t)g * hd;
	tc_load(Qh, lh, p.q + qt * ldq + hh, ldq, nr, hd);
	tc_load(dOh, lh, p.dout + qt * ldo + hh, ldo, nr, hd);
	tc_zero(dQf, lo, FT_FA_BR, hk);
	ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
	int32_t seg_t = seg && row < nr ? seg[t] : 1;
	float L = row < nr ? p.lse[((size_t)b * p.Hq + h) * p.T + t] : 0;
	float D = row < nr ? p.Di[((size_t)b * p.T + t) * p.Hq + h] : 0;
	__syncthreads();
	for (int ct = 0; ct < ft_fa_key_tiles(r0, nr); ct++) {
		int c0 = ct * FT_FA_BC, nc = tile_len(c0, p.T);
		ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
		if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
			continue;
		tc_load(Kh, lh, kb + (size_t)c0 * ldk, ldk, nc, hd);
		tc_load(Vh, lh, vb + (size_t)c0 * ldv, ldv, nc, hd);
		fa_load_segs(segk, seg, c0, nc);
		__syncthreads();
		tc_mma<E, fa_wm::col_major>(Sf, FA_LS, Qh, lh, Kh, lh, 2, hk / 16, false, 0);
		tc_mma<E, fa_wm::col_major>(dPf, FA_LS, dOh, lh, Vh, lh, 2, hk / 16, false, 4);
		__syncthreads();
		float sq[FA_SPR], dp[FA_SPR];
		tc_row(sq, Sf + row * FA_LS, lane);
		tc_row(dp, dPf + row * FA_LS, lane);
		fa_row mr = { row < nr, t, c0, nc, p.window, len, 0, seg_t, segk };
		fa_bwd_row(mr, sq, dp, L, D, NULL, NULL, p.scale, p.softcap, (E *)NULL,
			   dSh + row * FA_LP, lane);
		__syncthreads();
		tc_mma<E, fa_wm::row_major>(dQf, lo, dSh, FA_LP, Kh, lh, hk / 16, 2, true, 0);
		__syncthreads();
	}
	if (row >= nr)
		return;
	E *o = p.dq + ((size_t)b * p.T + t) * p.lddq + (size_t)h * hd;
	for (int d = lane; d < hd; d += FA_LANES)
		put(o + d, dQf[row * lo + d] * p.scale);
}

/* Dynamic shared bytes of each kernel for head size hd and element size
 * es (every buffer a multiple of 32 bytes, so each stays aligned). */
static inline size_t fa_tc_smem_fwd(int hd, size_t es)
{
	return 4 * (size_t)FT_FA_BR * (FA_LS + tc_lo(hd)) +
	       es * FT_FA_BR * (3 * (size_t)tc_lh(hd) + FA_LP);
}

static inline size_t fa_tc_smem_dkdv(int hd, size_t es)
{
	return 4 * (size_t)FT_FA_BR * (2 * FA_LS + 2 * tc_lo(hd)) +
	       es * FT_FA_BR * (4 * (size_t)tc_lh(hd) + 2 * FA_LP);
}

static inline size_t fa_tc_smem_dq(int hd, size_t es)
{
	return 4 * (size_t)FT_FA_BR * (2 * FA_LS + tc_lo(hd)) +
	       es * FT_FA_BR * (4 * (size_t)tc_lh(hd) + FA_LP);
}

#endif
