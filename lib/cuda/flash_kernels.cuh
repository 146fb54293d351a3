/* flash_kernels.cuh - the flash-attention kernels (see attention.cu for
 * the algorithm and the thread mapping).  A header of its own so that
 * tests/emu/test_flash_emu.cc can compile these very kernels for the host
 * with emulated threads, barriers and warp shuffles (no GPU needed) and
 * check them against the CPU attention.  It includes only
 * model/flash.h and flash_mask.cuh; the includer provides the CUDA built-ins and any
 * to_f / put overloads for half element types before including it. */
#ifndef FT_CUDA_FLASH_KERNELS_CUH
#define FT_CUDA_FLASH_KERNELS_CUH

#include "model/flash.h"

#ifndef FA_DYNAMIC_SMEM
#define FA_DYNAMIC_SMEM(name) extern __shared__ float name[]
#endif

#define FA_THREADS 256
#define FA_LANES 8
#define FA_SPR (FT_FA_BC / FA_LANES)      /* scores per lane and row */
#define FA_MAX_NDR 32                       /* accumulators per lane: hd <= 256 */
/* The CUDA-core kernels' tiles are BT x BT (queries x keys), a block BT
 * groups of 8 lanes, BT / 8 scores per lane and row: BT = FT_FA_BR, or
 * FA_BT_SMALL where those tiles' shared memory exceeds the device's
 * opt-in bound (fp32 at hd 256 on sm_86 / sm_89: attention.cu's
 * run_pass).  Per row the arithmetic is the same; the forward's online
 * softmax folds 16 keys a step instead of 32 (docs/CUDA-ATTENTION.md). */
#define FA_BT_SMALL 16
#define FA_BT_THREADS(BT) ((BT) * FA_LANES)
static_assert(FT_FA_BR == FT_FA_BC && FT_FA_BR * FA_LANES == FA_THREADS,
	      "one 8-lane group per tile row");

static __device__ __forceinline__ float to_f(float x) { return x; }
static __device__ __forceinline__ void put(float *p, float x) { *p = x; }

#include "cuda/flash_mask.cuh"

/* The SPR dot products of the shared row a with the rows lane + 8 j
 * of the tile b: a[d] is read once for all of them (shared-memory
 * bandwidth bounds these loops). */
template <int SPR, typename E>
static __device__ __forceinline__ void dots(float *out, const E *a, const E *b, int lane, int hp,
					    int hd)
{
	float r[SPR];
#pragma unroll
	for (int j = 0; j < SPR; j++)
		r[j] = 0;
	for (int d = 0; d < hd; d++) {
		float x = to_f(a[d]);
#pragma unroll
		for (int j = 0; j < SPR; j++)
			r[j] = fmaf(x, to_f(b[(lane + FA_LANES * j) * hp + d]), r[j]);
	}
#pragma unroll
	for (int j = 0; j < SPR; j++)
		out[j] = r[j];
}

template <typename E> struct fa_args {
	const E *q, *k, *v, *o, *dout;
	E *out, *dq, *dk, *dv;
	float *lse, *Di;
	const int32_t *seg;              /* [B, T] or NULL */
	const int32_t *len;              /* [B] real lengths (HF's attention_mask) or NULL */
	int T, Hq, Hk, hd, window;
	float scale;
	float softcap;                   /* > 0: Gemma 2's attn_logit_softcapping */
	/* token strides: q, k, v as read (their columns of the fused q|k|v
	 * buffer), dq, dk, dv as written; o, out, dout are [B*T, Hq*hd] */
	int ldq, ldk, ldv, lddq, lddk, lddv;
};

/* Shared tiles hold the element type E: fp32 in the fp32 mode; bf16 /
 * fp16 when the half modes fall back to these kernels (attention.cu's
 * run_pass, where the tensor-core kernels' shared memory does not fit),
 * which halves the tiles and changes no result (every product and sum is
 * in fp32 from the same E values).  Row stride: hd + 1 floats, or hd + 2
 * halves (hd / 2 + 1 words for even hd), so the 8 lanes of a group,
 * reading 8 rows at the same d, hit distinct banks. */
template <typename E>
static __host__ __device__ __forceinline__ int fa_hp(int hd)
{
	return sizeof(E) == 4 ? hd + 1 : hd + 2;
}

/* Rows [0, rows) x features [0, hk) of a tile (row r at src + r * ld)
 * into dst with row stride ldd; rows >= n and features >= hd zero
 * (hk > hd: flash_tc.cuh's tiles padded to whole fragments). */
template <typename E>
static __device__ void fa_load(E *dst, int ldd, const E *src, size_t ld, int n, int hd, int hk,
			       int rows = FT_FA_BR)
{
	for (int i = threadIdx.x; i < rows * hk; i += blockDim.x) {
		int r = i / hk, d = i - r * hk;
		if (r < n && d < hd)
			dst[r * ldd + d] = src[(size_t)r * ld + d];
		else
			put(dst + r * ldd + d, 0.0f);
	}
}

/* These kernels' tiles of BT rows: stride fa_hp, no feature padding. */
template <int BT, typename E>
static __device__ void load_tile(E *dst, const E *src, size_t ld, int n, int hd)
{
	fa_load(dst, fa_hp<E>(hd), src, ld, n, hd, hd, BT);
}

/* The segment ids of the key tile of bc keys from c0 (n of them real; 1
 * without packing). */
static __device__ __forceinline__ void fa_load_segs(int32_t *dst, const int32_t *seg, int c0,
						    int n, int bc = FT_FA_BC)
{
	if ((int)threadIdx.x < bc)
		dst[threadIdx.x] = seg && (int)threadIdx.x < n ? seg[c0 + threadIdx.x] : 1;
}

/* The dK/dV pass's per-query values of the query tile from r0 (n rows)
 * of head h in batch row b: lse, D and segment ids. */
template <typename E>
static __device__ __forceinline__ void fa_load_queries(float *Ls, float *Ds, int32_t *segq,
						       const fa_args<E> &p, const int32_t *seg,
						       int b, int h, int r0, int n)
{
	if ((int)threadIdx.x < n) {
		int t = r0 + threadIdx.x;
		Ls[threadIdx.x] = p.lse[((size_t)b * p.Hq + h) * p.T + t];
		Ds[threadIdx.x] = p.Di[((size_t)b * p.T + t) * p.Hq + h];
		segq[threadIdx.x] = seg ? seg[t] : 1;
	}
}

static __device__ __forceinline__ int tile_len(int start, int T, int bt = FT_FA_BR)
{
	return T - start < bt ? T - start : bt;
}

/* ---- forward ---- */

template <typename E, int NDR, int BT = FT_FA_BR>
static __global__ void __launch_bounds__(FA_BT_THREADS(BT)) fa_fwd_k(fa_args<E> p)
{
	constexpr int SPR = BT / FA_LANES;
	static_assert(SPR * FA_LANES == BT && BT <= FT_FA_BR, "8 lanes per row");
	FA_DYNAMIC_SMEM(sm);
	__shared__ int32_t segk[BT];
	int hd = p.hd, hp = fa_hp<E>(hd), b = blockIdx.z, h = blockIdx.y, g = h / (p.Hq / p.Hk);
	E *Qs = (E *)sm, *Ks = Qs + BT * hp, *Vs = Ks + BT * hp;
	float *Ps = (float *)(Vs + BT * hp);                    /* [BT][BT + 1] */
	int r0 = blockIdx.x * BT, nr = tile_len(r0, p.T, BT);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int row = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, t = r0 + row;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	const E *kb = p.k + (size_t)b * p.T * ldk + (size_t)g * hd;
	const E *vb = p.v + (size_t)b * p.T * ldv + (size_t)g * hd;
	load_tile<BT>(Qs, p.q + ((size_t)b * p.T + r0) * ldq + (size_t)h * hd, ldq, nr, hd);
	ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
	int32_t seg_t = seg && row < nr ? seg[t] : 1;
	float acc[NDR], m = -INFINITY, l = 0;
#pragma unroll
	for (int i = 0; i < NDR; i++)
		acc[i] = 0;
	__syncthreads();
	for (int ct = 0; ct < ft_fa_key_tiles_of(r0, nr, BT); ct++) {
		int c0 = ct * BT, nc = tile_len(c0, p.T, BT);
		ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
		if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
			continue;                  /* the same for every thread */
		load_tile<BT>(Ks, kb + (size_t)c0 * ldk, ldk, nc, hd);
		load_tile<BT>(Vs, vb + (size_t)c0 * ldv, ldv, nc, hd);
		fa_load_segs(segk, seg, c0, nc, BT);
		__syncthreads();
		float s[SPR];
		dots<SPR>(s, Qs + row * hp, Ks, lane, hp, hd);
		fa_row mr = { row < nr, t, c0, nc, p.window, len, 0, seg_t, segk };
		float alpha = fa_fwd_row<float, SPR>(mr, s, p.scale, p.softcap, &m, &l,
						     Ps + row * (BT + 1), lane);
		__syncwarp();
		const float *pr = Ps + row * (BT + 1);
#pragma unroll
		for (int i = 0; i < NDR; i++)
			acc[i] *= alpha;
		for (int c = 0; c < nc; c++) {       /* P[row][c] read once per c */
			float pc = pr[c];
			const E *vr = Vs + c * hp + lane;
#pragma unroll
			for (int i = 0; i < NDR; i++)
				if (lane + FA_LANES * i < hd)
					acc[i] = fmaf(pc, to_f(vr[FA_LANES * i]), acc[i]);
		}
		__syncthreads();
	}
	if (row >= nr)
		return;
	float inv = 1.0f / l;
	E *o = p.out + ((size_t)b * p.T + t) * ldo + (size_t)h * hd;
#pragma unroll
	for (int i = 0; i < NDR; i++)
		if (lane + FA_LANES * i < hd)
			put(o + lane + FA_LANES * i, acc[i] * inv);
	if (lane == 0)
		p.lse[((size_t)b * p.Hq + h) * p.T + t] = ft_fa_lse(m, l);
}

/* ---- backward ---- */

/* Di[n, h] = sum_d O[n, h, d] dO[n, h, d] */
template <typename E>
static __global__ void rowdot_k(float *Di, const E *O, const E *dO, size_t NH, int hd)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NH;
	     i += (size_t)gridDim.x * blockDim.x) {
		const E *o = O + i * hd, *g = dO + i * hd;
		float s = 0;
		for (int d = 0; d < hd; d++)
			s = fmaf(to_f(o[d]), to_f(g[d]), s);
		Di[i] = s;
	}
}

template <typename E, int NDR, int BT = FT_FA_BR>
static __global__ void __launch_bounds__(FA_BT_THREADS(BT)) fa_dkdv_k(fa_args<E> p)
{
	constexpr int SPR = BT / FA_LANES;
	static_assert(SPR * FA_LANES == BT && BT <= FT_FA_BR, "8 lanes per row");
	FA_DYNAMIC_SMEM(sm);
	__shared__ float Ls[BT], Ds[BT];
	__shared__ int32_t segq[BT];
	int hd = p.hd, hp = fa_hp<E>(hd), b = blockIdx.z, g = blockIdx.y, grp = p.Hq / p.Hk;
	E *Ks = (E *)sm, *Vs = Ks + BT * hp, *Qs = Vs + BT * hp;
	E *dOs = Qs + BT * hp;
	float *Ps = (float *)(dOs + BT * hp);                   /* [BT][BT + 1] */
	float *dSs = Ps + BT * (BT + 1);
	int c0 = blockIdx.x * BT, nc = tile_len(c0, p.T, BT);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int col = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, u = c0 + col;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	size_t tok = (size_t)b * p.T + c0, gh = (size_t)g * hd;
	load_tile<BT>(Ks, p.k + tok * ldk + gh, ldk, nc, hd);
	load_tile<BT>(Vs, p.v + tok * ldv + gh, ldv, nc, hd);
	ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
	int32_t seg_u = seg && col < nc ? seg[u] : 1;
	float ak[NDR], av[NDR];
#pragma unroll
	for (int i = 0; i < NDR; i++)
		ak[i] = av[i] = 0;
	__syncthreads();
	for (int h = g * grp; h < (g + 1) * grp; h++)
		for (int r0 = c0 / BT * BT; r0 < p.T; r0 += BT) {
			int nr = tile_len(r0, p.T, BT);
			ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
			if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
				continue;
			size_t qt = (size_t)b * p.T + r0, hh = (size_t)h * hd;
			load_tile<BT>(Qs, p.q + qt * ldq + hh, ldq, nr, hd);
			load_tile<BT>(dOs, p.dout + qt * ldo + hh, ldo, nr, hd);
			fa_load_queries(Ls, Ds, segq, p, seg, b, h, r0, nr);
			__syncthreads();
			float sq[SPR], dp[SPR];
			dots<SPR>(sq, Ks + col * hp, Qs, lane, hp, hd);
			dots<SPR>(dp, Vs + col * hp, dOs, lane, hp, hd);
			fa_row mr = { col < nc, u, r0, nr, p.window, len, 1, seg_u, segq };
			fa_bwd_row<float, SPR>(mr, sq, dp, 0, 0, Ls, Ds, p.scale, p.softcap,
					       Ps + col * (BT + 1), dSs + col * (BT + 1), lane);
			__syncwarp();
			const float *pc = Ps + col * (BT + 1), *sc = dSs + col * (BT + 1);
			for (int r = 0; r < nr; r++) {
				float pv = pc[r], sv = sc[r];
				const E *gr = dOs + r * hp + lane, *qr = Qs + r * hp + lane;
#pragma unroll
				for (int i = 0; i < NDR; i++)
					if (lane + FA_LANES * i < hd) {
						av[i] = fmaf(pv, to_f(gr[FA_LANES * i]), av[i]);
						ak[i] = fmaf(sv, to_f(qr[FA_LANES * i]), ak[i]);
					}
			}
			__syncthreads();
		}
	if (col >= nc)
		return;
	size_t ok_ = ((size_t)b * p.T + u) * p.lddk + gh, ov = ((size_t)b * p.T + u) * p.lddv + gh;
#pragma unroll
	for (int i = 0; i < NDR; i++) {
		int d = lane + FA_LANES * i;
		if (d < hd) {
			put(p.dk + ok_ + d, ak[i] * p.scale);
			put(p.dv + ov + d, av[i]);
		}
	}
}

template <typename E, int NDR, int BT = FT_FA_BR>
static __global__ void __launch_bounds__(FA_BT_THREADS(BT)) fa_dq_k(fa_args<E> p)
{
	constexpr int SPR = BT / FA_LANES;
	static_assert(SPR * FA_LANES == BT && BT <= FT_FA_BR, "8 lanes per row");
	FA_DYNAMIC_SMEM(sm);
	__shared__ int32_t segk[BT];
	int hd = p.hd, hp = fa_hp<E>(hd), b = blockIdx.z, h = blockIdx.y, g = h / (p.Hq / p.Hk);
	E *Qs = (E *)sm, *dOs = Qs + BT * hp, *Ks = dOs + BT * hp;
	E *Vs = Ks + BT * hp;
	float *dSs = (float *)(Vs + BT * hp);                    /* [BT][BT + 1] */
	int r0 = blockIdx.x * BT, nr = tile_len(r0, p.T, BT);
	size_t ldq = p.ldq, ldk = p.ldk, ldv = p.ldv, ldo = (size_t)p.Hq * hd;
	int row = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES, t = r0 + row;
	const int32_t *seg = p.seg ? p.seg + (size_t)b * p.T : NULL;
	int len = p.len ? p.len[b] : p.T;          /* keys >= len: padding */
	size_t qt = (size_t)b * p.T + r0, hh = (size_t)h * hd;
	const E *kb = p.k + (size_t)b * p.T * ldk + (size_t)g * hd;
	const E *vb = p.v + (size_t)b * p.T * ldv + (size_t)g * hd;
	load_tile<BT>(Qs, p.q + qt * ldq + hh, ldq, nr, hd);
	load_tile<BT>(dOs, p.dout + qt * ldo + hh, ldo, nr, hd);
	ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
	int32_t seg_t = seg && row < nr ? seg[t] : 1;
	float L = row < nr ? p.lse[((size_t)b * p.Hq + h) * p.T + t] : 0;
	float D = row < nr ? p.Di[((size_t)b * p.T + t) * p.Hq + h] : 0;
	float acc[NDR];
#pragma unroll
	for (int i = 0; i < NDR; i++)
		acc[i] = 0;
	__syncthreads();
	for (int ct = 0; ct < ft_fa_key_tiles_of(r0, nr, BT); ct++) {
		int c0 = ct * BT, nc = tile_len(c0, p.T, BT);
		ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
		if (ft_fa_tile_skip(r0, nr, c0, nc, p.window, &qs, &ks, len))
			continue;
		load_tile<BT>(Ks, kb + (size_t)c0 * ldk, ldk, nc, hd);
		load_tile<BT>(Vs, vb + (size_t)c0 * ldv, ldv, nc, hd);
		fa_load_segs(segk, seg, c0, nc, BT);
		__syncthreads();
		float sq[SPR], dp[SPR];
		dots<SPR>(sq, Qs + row * hp, Ks, lane, hp, hd);
		dots<SPR>(dp, dOs + row * hp, Vs, lane, hp, hd);
		fa_row mr = { row < nr, t, c0, nc, p.window, len, 0, seg_t, segk };
		fa_bwd_row<float, SPR>(mr, sq, dp, L, D, NULL, NULL, p.scale, p.softcap,
				       (float *)NULL, dSs + row * (BT + 1), lane);
		__syncwarp();
		const float *sr = dSs + row * (BT + 1);
		for (int c = 0; c < nc; c++) {
			float sv = sr[c];
			const E *kr = Ks + c * hp + lane;
#pragma unroll
			for (int i = 0; i < NDR; i++)
				if (lane + FA_LANES * i < hd)
					acc[i] = fmaf(sv, to_f(kr[FA_LANES * i]), acc[i]);
		}
		__syncthreads();
	}
	if (row >= nr)
		return;
	E *o = p.dq + ((size_t)b * p.T + t) * p.lddq + (size_t)h * hd;
#pragma unroll
	for (int i = 0; i < NDR; i++)
		if (lane + FA_LANES * i < hd)
			put(o + lane + FA_LANES * i, acc[i] * p.scale);
}

/* Dynamic shared bytes of each kernel for head size hd and element type
 * E: E tiles of BT rows, then the fp32 P / dS tiles (BT fa_hp E
 * values are a whole number of floats, so these stay aligned). */
template <typename E, int BT = FT_FA_BR>
static inline size_t fa_smem_fwd(int hd)
{
	return sizeof(E) * 3 * BT * fa_hp<E>(hd) + 4 * BT * (BT + 1);
}

template <typename E, int BT = FT_FA_BR>
static inline size_t fa_smem_dkdv(int hd)
{
	return sizeof(E) * 4 * BT * fa_hp<E>(hd) + 4 * 2 * BT * (BT + 1);
}

template <typename E, int BT = FT_FA_BR>
static inline size_t fa_smem_dq(int hd)
{
	return sizeof(E) * 4 * BT * fa_hp<E>(hd) + 4 * BT * (BT + 1);
}

#endif
