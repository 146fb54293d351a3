/* flash.h - tiled ("flash") attention: the per-tile arithmetic shared by
 * the CUDA kernels (lib/cuda/attention.cu) and the host reference
 * (lib/model/flash_ref.c), which tests/unit/test_flash.c compares with
 * the CPU's ft_attention_forward/backward (lib/model/layers.c).
 *
 * The algorithm is FlashAttention-2's.  Forward: for a tile of FT_FA_BR
 * queries, walk the key tiles of FT_FA_BC keys keeping per row a running
 * maximum m, a running sum l of exp(s - m) and an unnormalised output
 * acc; a new tile with maximum tmax rescales both by exp(m_old - m_new).
 * Only the output acc / l and the row's log-sum-exp m + log(l) are
 * stored.  Backward: D = rowsum(dO * O) first; then per key tile the
 * probabilities are recomputed from the saved lse, P = exp(s - lse), and
 * dV += P^T dO, dS = P (dP - D) with dP = dO V^T, dK += dS^T Q (scaled);
 * dQ = dS K (scaled) in a separate pass over query tiles, so no two
 * threads ever add into the same element (no atomics, run-to-run
 * identical).
 *
 * The mask is ft_k_attn_allowed (kernels.h), the CPU's: causal, Mistral's
 * sliding window, segment ids (0 = padding attends to itself only), the
 * row's real length (keys past it are padding, hidden as HF's
 * attention_mask hides them).  Every row keeps at least one allowed key
 * (a real query its diagonal, a padding query the real tokens or, when
 * none is in reach, itself), so no row is ever fully masked.  A (query
 * tile, key tile) pair in which provably no element is allowed is
 * skipped (ft_fa_tile_skip); a skipped tile would have changed nothing
 * (ft_fa_rescale leaves m, l, acc unchanged for a tile with no allowed
 * element), so skipping is exact, which test_flash.c checks bit for bit.
 *
 * Every function is `static inline FT_HD` (kernels.h); nothing allocates.
 */
#ifndef FT_FLASH_H
#define FT_FLASH_H

#include <stdint.h>
#include "model/kernels.h"

/* Tile sizes: queries x keys.  The CUDA kernels map a block of 256
 * threads as 32 groups of 8 (one group per tile row), so both are 32.
 * (The CUDA-core kernels also come with 16 x 16 tiles, 128 threads, for
 * devices whose shared memory is too small for these: attention.cu.) */
#define FT_FA_BR 32
#define FT_FA_BC 32

/* The segment ids of one tile: range of its non-zero ids and whether it
 * holds padding (id 0).  lo > hi when it has no non-zero id. */
typedef struct {
	int32_t lo, hi;
	int pad;
} ft_fa_segs;

/* seg: the tile's n ids, or NULL (no segment ids: one segment). */
static inline FT_HD ft_fa_segs ft_fa_tile_segs(const int32_t *seg, int n)
{
	ft_fa_segs s = { 1, 1, 0 };
	if (!seg)
		return s;
	s.lo = INT32_MAX;
	s.hi = INT32_MIN;
	for (int i = 0; i < n; i++) {
		if (seg[i] == 0) {
			s.pad = 1;
			continue;
		}
		s.lo = seg[i] < s.lo ? seg[i] : s.lo;
		s.hi = seg[i] > s.hi ? seg[i] : s.hi;
	}
	return s;
}

/* 1 when no query t in [r0, r0+nr) may attend to any key u in
 * [c0, c0+nc) under ft_k_attn_allowed; conservative (0 means "maybe").
 * q, k: the tiles' segment summaries; len: the row's real length (T when
 * every position is real). */
static inline FT_HD int ft_fa_tile_skip(int r0, int nr, int c0, int nc, int window,
					const ft_fa_segs *q, const ft_fa_segs *k, int len)
{
	int rl = r0 + nr - 1, cl = c0 + nc - 1;
	if (c0 > rl)                               /* above the diagonal */
		return 1;
	if (window > 0 && r0 - cl >= window)       /* every t - u >= window */
		return 1;
	if (c0 >= len) {
		/* only padding keys: a blind query's own diagonal, if any; the
		 * last diagonal query is the blindest (ft_k_attn_blind grows) */
		int dl = rl < cl ? rl : cl;
		return !(r0 <= cl && ft_k_attn_blind(dl, window, len));
	}
	if (c0 <= rl && r0 <= cl)                  /* shares positions: the diagonal */
		return 0;
	/* strictly below the diagonal: a padding query sees only itself, a
	 * real one only keys of its own id */
	return q->lo > q->hi || k->lo > k->hi || q->hi < k->lo || k->hi < q->lo;
}

/* One past the last key tile of bc keys that query tile [r0, r0+nr)
 * needs (causal: keys <= the tile's last query).  bc: FT_FA_BC, or the
 * CUDA-core kernels' smaller tiles (lib/cuda/flash_kernels.cuh). */
static inline FT_HD int ft_fa_key_tiles_of(int r0, int nr, int bc)
{
	return (r0 + nr - 1) / bc + 1;
}

static inline FT_HD int ft_fa_key_tiles(int r0, int nr)
{
	return ft_fa_key_tiles_of(r0, nr, FT_FA_BC);
}

/* Online softmax: fold a tile whose largest allowed score is tmax (-inf
 * when it has none) into the running maximum *m; returns the factor the
 * running sum and output are multiplied by.  With no allowed score
 * nothing changes (factor 1, *m kept), so skipping such a tile is exact. */
static inline FT_HD float ft_fa_rescale(float *m, float tmax)
{
	if (!(tmax > *m))
		return 1.0f;
	float alpha = *m == -INFINITY ? 0.0f : ft_vexpf(*m - tmax);
	*m = tmax;
	return alpha;
}

/* The unnormalised probability of a score (-inf: masked) under max m. */
static inline FT_HD float ft_fa_p(float s, float m)
{
	return s == -INFINITY ? 0.0f : ft_vexpf(s - m);
}

/* The row's log-sum-exp, as the CPU saves it: max + log(sum). */
static inline FT_HD float ft_fa_lse(float m, float l)
{
	return m + logf(l);
}

/* Backward: the probability recomputed from the saved lse. */
static inline FT_HD float ft_fa_bwd_p(float s, float lse, int allowed)
{
	return allowed ? ft_vexpf(s - lse) : 0.0f;
}

/* Backward: dS = P (dP - D), D = rowsum(dO * O). */
static inline FT_HD float ft_fa_ds(float p, float dp, float D)
{
	return p * (dp - D);
}

/* The host reference (lib/model/flash_ref.c) of the CUDA kernels' tiled
 * algorithm, same arguments and layouts as ft_attention_forward/backward
 * (lib/model/layers.h).  noskip = 1 visits every causal tile (the tile
 * skipping must give bit-identical results). */
#ifndef __CUDACC__
#include "model/layers.h"
void ft_flash_ref_forward(float *out, float *lse, const float *q, const float *k,
			  const float *v, const ft_attn_shape *s, int noskip);
void ft_flash_ref_backward(float *dq, float *dk, float *dv, const float *dout,
			   const float *q, const float *k, const float *v,
			   const float *out, const float *lse, const ft_attn_shape *s,
			   int noskip);
#endif

#endif
