/* flash_mask.cuh - the per-row work of the flash-attention kernels that
 * the fp32 CUDA-core kernels (flash_kernels.cuh) and the bf16/fp16
 * tensor-core ones (flash_tc.cuh) share: the group reductions, the mask,
 * scale and soft-cap of a row of scores, the forward's online softmax
 * step and the backward's P and dS.  One copy, so that the two families
 * cannot drift apart; where the scores come from (registers from dots(),
 * or an fp32 shared tile filled by WMMA) and where P and dS go (an fp32
 * tile, or a half one for the next product, rounded by put) is the
 * caller's.
 *
 * Thread mapping (attention.cu): 8 lanes share a row; lane `lane` holds
 * the row's elements lane + 8 j, j < SPR (FA_SPR on 32-wide tiles, 2 on
 * the CUDA-core kernels' 16-wide ones).  Included by
 * flash_kernels.cuh, which defines FA_LANES, FA_SPR and put(float *). */
#ifndef FT_CUDA_FLASH_MASK_CUH
#define FT_CUDA_FLASH_MASK_CUH

#include "model/flash.h"

/* Reductions over the 8 lanes of a group (fixed butterfly order). */
static __device__ __forceinline__ float grp_max(float x)
{
	for (int o = FA_LANES / 2; o > 0; o >>= 1)
		x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o, FA_LANES));
	return x;
}

static __device__ __forceinline__ float grp_sum(float x)
{
	for (int o = FA_LANES / 2; o > 0; o >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, o, FA_LANES);
	return x;
}

/* A score after the scale (and the soft-cap), as ft_attention_forward:
 * cap * tanh(s / cap) when cap > 0. */
static __device__ __forceinline__ float fa_score(float s, float cap)
{
	return cap > 0 ? ft_k_softcap(s, cap) : s;
}

/* dS through the cap: dS (1 - tanh^2), tanh from the uncapped score as
 * ft_attention_backward computes it. */
static __device__ __forceinline__ float fa_ds_capped(float ds, float s, float cap)
{
	if (!(cap > 0))
		return ds;
	float th = tanhf(s / cap);
	return ds * (1 - th * th);
}

/* One row of a tile against the other side's tile: the row is position
 * `pos` (a query, or a key in the dK/dV pass: keys_row), live when it is
 * a real row of the tile; the other side starts at c0, holds n elements,
 * their segment ids in segs (shared). */
struct fa_row {
	int live, pos, c0, n, window, len, keys_row;
	int32_t seg;
	const int32_t *segs;
};

static __device__ __forceinline__ int fa_allowed(const fa_row &r, int c)
{
	if (!r.live || c >= r.n)
		return 0;
	return r.keys_row ? ft_k_attn_allowed(r.c0 + c, r.pos, r.window, r.segs[c], r.seg, r.len)
			  : ft_k_attn_allowed(r.pos, r.c0 + c, r.window, r.seg, r.segs[c], r.len);
}

/* The forward's step over one key tile: the raw products s[j] masked,
 * scaled and capped, the running max *m moved, P = exp(s - m) written to
 * prow[lane + 8 j] (in P's type), *l rescaled and added to; returns the
 * rescale factor alpha of the output accumulators. */
template <typename P, int SPR = FA_SPR>
static __device__ __forceinline__ float fa_fwd_row(const fa_row &r, float *s, float scale,
						   float cap, float *m, float *l, P *prow, int lane)
{
	float tmax = -INFINITY, psum = 0;
#pragma unroll
	for (int j = 0; j < SPR; j++) {
		s[j] = fa_allowed(r, lane + FA_LANES * j) ? fa_score(s[j] * scale, cap) : -INFINITY;
		tmax = fmaxf(tmax, s[j]);
	}
	float alpha = ft_fa_rescale(m, grp_max(tmax));
#pragma unroll
	for (int j = 0; j < SPR; j++) {
		float e = ft_fa_p(s[j], *m);
		psum += e;
		put(prow + lane + FA_LANES * j, e);
	}
	*l = *l * alpha + grp_sum(psum);
	return alpha;
}

/* The backward's elements of a row: from the raw products sq[j] and dP's
 * dp[j], P = exp(s - lse) and dS = P (dP - D) (through the cap), zero
 * where masked, into prow (when not NULL) and dsrow at lane + 8 j.  lse
 * and D are the row's (L, D: the dQ pass) or, where the row is a key,
 * the other side's queries' (Ls[c], Ds[c]: the dK/dV pass). */
template <typename T, int SPR = FA_SPR>
static __device__ __forceinline__ void fa_bwd_row(const fa_row &r, const float *sq,
						  const float *dp, float L, float D,
						  const float *Ls, const float *Ds, float scale,
						  float cap, T *prow, T *dsrow, int lane)
{
#pragma unroll
	for (int j = 0; j < SPR; j++) {
		int c = lane + FA_LANES * j;
		float pv = 0, dsv = 0;
		if (fa_allowed(r, c)) {
			float sc = sq[j] * scale, lse = Ls ? Ls[c] : L, d = Ds ? Ds[c] : D;
			pv = ft_fa_bwd_p(fa_score(sc, cap), lse, 1);
			dsv = fa_ds_capped(ft_fa_ds(pv, dp[j], d), sc, cap);
		}
		if (prow)
			put(prow + c, pv);
		put(dsrow + c, dsv);
	}
}

#endif
