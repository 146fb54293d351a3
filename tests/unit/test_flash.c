/* test_flash.c - the tiled flash-attention algorithm of the CUDA kernels
 * (its host reference, lib/model/flash_ref.c, with lib/model/flash.h's
 * per-tile arithmetic that the kernels share) against the CPU attention
 * ft_attention_forward/backward (lib/model/layers.c), and the tile skip
 * test against the mask it must agree with.
 *
 * Tolerance: max |flash - cpu| / max |cpu| per tensor <= 1e-5 (see max_rel01() in tap.h).  Both are
 * fp32 with the same exp (ft_vexpf); they differ only in summation
 * order: the online softmax adds exp(s - m_tile) rescaled by
 * exp(m_tile - m_row) per 32-key tile and normalises at the end, the CPU
 * normalises a whole row first; the backward sums over query and key
 * tiles in another order.  Each reordering is a few ulps (1e-7) per
 * term; with rows of up to 130 terms the measured worst is about 1e-6
 * (printed by each check), so 1e-5 leaves room for other CPUs' BLAS
 * summation orders in the CPU side without hiding a masking error (a
 * wrong mask is an O(1) difference).
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "model/flash.h"
#include "model/layers.h"

#define TOL 1e-5

static unsigned rng = 12345;
static float frand(void)
{
	rng = rng * 1103515245u + 12345u;
	return ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *rnd(size_t n, float amp)
{
	float *x = malloc(n * sizeof *x);
	for (size_t i = 0; i < n; i++)
		x[i] = amp * frand();
	return x;
}

enum { SEG_NONE, SEG_PACKED, SEG_MIXED, SEG_LENS };

/* packed: ft-pack's neat packing (runs 1, 2, 3, ... then padding 0);
 * mixed: ids that come back after other ids, and padding in between. */
static int32_t *segs(int B, int T, int mode)
{
	if (mode == SEG_NONE || mode == SEG_LENS)
		return NULL;
	int32_t *s = malloc((size_t)B * T * sizeof *s);
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++) {
			int32_t id;
			if (mode == SEG_PACKED)
				id = t >= T - 5 - b ? 0 : 1 + (t + 7 * b) / 23;
			else
				id = t % 11 == 4 ? 0 : 1 + (t / 6) % 3;
			s[(size_t)b * T + t] = id;
		}
	return s;
}

/* lens: right padding (ft_attn_shape.len), rows of T - 37 b real
 * tokens, at least 1; the others: NULL. */
static int32_t *lens_of(int B, int T, int mode)
{
	if (mode != SEG_LENS)
		return NULL;
	int32_t *l = malloc((size_t)B * sizeof *l);
	for (int b = 0; b < B; b++)
		l[b] = T - 37 * b > 0 ? T - 37 * b : 1;
	return l;
}

static const char *seg_name(int mode)
{
	return mode == SEG_NONE ? "none" : mode == SEG_PACKED ? "packed" :
	       mode == SEG_MIXED ? "mixed" : "right padding";
}

static int same(const float *a, const float *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!(a[i] == b[i]))
			return 0;
	return 1;
}

static void test_case(int B, int T, int Hq, int Hk, int hd, int window, int mode)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	float *q = rnd(nq, 1.5f), *k = rnd(nk, 1.5f), *v = rnd(nk, 1), *go = rnd(nq, 1);
	int32_t *seg = segs(B, T, mode), *len = lens_of(B, T, mode);
	ft_attn_shape s = { B, T, Hq, Hk, hd, window, seg, 0, 0, len };
	float *o1 = malloc(nq * 4), *o2 = malloc(nq * 4), *o3 = malloc(nq * 4);
	float *l1 = malloc(nl * 4), *l2 = malloc(nl * 4), *l3 = malloc(nl * 4);
	ft_attention_forward(o1, l1, q, k, v, &s);
	ft_flash_ref_forward(o2, l2, q, k, v, &s, 0);
	ft_flash_ref_forward(o3, l3, q, k, v, &s, 1);
	double eo = max_rel01(o2, o1, nq), el = max_rel01(l2, l1, nl);
	char what[160];
	snprintf(what, sizeof what, "B=%d T=%d Hq=%d Hk=%d hd=%d window=%d seg=%s", B, T, Hq,
		 Hk, hd, window, seg_name(mode));
	ok(eo <= TOL && el <= TOL, "%s forward: out %.2g, lse %.2g", what, eo, el);
	ok(same(o2, o3, nq) && same(l2, l3, nl), "%s forward: tile skipping is exact", what);

	float *g1[3], *g2[3], *g3[3];
	size_t ng[3] = { nq, nk, nk };
	for (int i = 0; i < 3; i++) {
		g1[i] = malloc(ng[i] * 4);
		g2[i] = malloc(ng[i] * 4);
		g3[i] = malloc(ng[i] * 4);
	}
	ft_attention_backward(g1[0], g1[1], g1[2], go, q, k, v, o1, l1, &s);
	ft_flash_ref_backward(g2[0], g2[1], g2[2], go, q, k, v, o2, l2, &s, 0);
	ft_flash_ref_backward(g3[0], g3[1], g3[2], go, q, k, v, o2, l2, &s, 1);
	double e[3];
	int sk = 1;
	for (int i = 0; i < 3; i++) {
		e[i] = max_rel01(g2[i], g1[i], ng[i]);
		sk = sk && same(g2[i], g3[i], ng[i]);
	}
	ok(e[0] <= TOL && e[1] <= TOL && e[2] <= TOL, "%s backward: dq %.2g, dk %.2g, dv %.2g",
	   what, e[0], e[1], e[2]);
	ok(sk, "%s backward: tile skipping is exact", what);
	for (int i = 0; i < 3; i++) {
		free(g1[i]);
		free(g2[i]);
		free(g3[i]);
	}
	free(q); free(k); free(v); free(go); free(seg); free(len);
	free(o1); free(o2); free(o3); free(l1); free(l2); free(l3);
}

/* ft_fa_tile_skip never skips a pair with an allowed element (checked
 * element by element over every tile pair of small rows), and does skip
 * what the masks make skippable. */
static void test_skip(int T, int window, int mode, int len, int want_skipped)
{
	int32_t *seg = segs(1, T, mode);
	int wrong = 0, skipped = 0, pairs = 0;
	for (int r0 = 0; r0 < T; r0 += FT_FA_BR) {
		int nr = T - r0 < FT_FA_BR ? T - r0 : FT_FA_BR;
		for (int c0 = 0; c0 < T; c0 += FT_FA_BC) {
			int nc = T - c0 < FT_FA_BC ? T - c0 : FT_FA_BC, any = 0;
			for (int t = r0; t < r0 + nr; t++)
				for (int u = c0; u < c0 + nc; u++)
					any |= ft_k_attn_allowed(t, u, window, seg ? seg[t] : 1,
								 seg ? seg[u] : 1, len);
			ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
			ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
			int sk = ft_fa_tile_skip(r0, nr, c0, nc, window, &qs, &ks, len);
			wrong += sk && any;
			if (c0 <= r0 + nr - 1) {          /* causal pairs only */
				pairs++;
				skipped += sk;
			}
		}
	}
	ok(wrong == 0 && skipped == want_skipped,
	   "tile skip T=%d window=%d seg=%s len=%d: %d of %d causal tile pairs skipped, "
	   "none wrongly", T, window, seg_name(mode), len, skipped, pairs);
	free(seg);
}

int main(void)
{
	test_case(1, 1, 1, 1, 8, 0, SEG_NONE);
	test_case(2, 31, 4, 2, 16, 0, SEG_NONE);
	test_case(1, 70, 4, 1, 16, 0, SEG_NONE);       /* 4 heads per kv head */
	test_case(1, 64, 2, 2, 8, 0, SEG_NONE);        /* exact multiple */
	test_case(1, 100, 6, 2, 8, 17, SEG_NONE);      /* window < tile */
	test_case(1, 130, 2, 2, 16, 40, SEG_NONE);
	test_case(2, 97, 4, 2, 16, 0, SEG_PACKED);
	test_case(1, 80, 2, 1, 8, 0, SEG_MIXED);
	test_case(1, 90, 4, 2, 8, 25, SEG_PACKED);
	test_case(1, 200, 2, 1, 64, 0, SEG_NONE);      /* a real head size */
	/* right padding: rows of 130 and 93 tokens (93 - 1 + 17 < 130: the
	 * window moves past the real tokens, those queries see themselves) */
	test_case(2, 130, 4, 2, 16, 0, SEG_LENS);
	test_case(2, 130, 2, 1, 8, 17, SEG_LENS);
	test_case(3, 70, 2, 2, 8, 0, SEG_LENS);         /* 70, 33, 1 tokens */
	test_skip(130, 0, SEG_NONE, 130, 0);
	test_skip(130, 40, SEG_NONE, 130, 3);    /* q tiles 96, 128 vs keys < 64 */
	test_skip(200, 0, SEG_PACKED, 200, 15);  /* runs of 23 */
	test_skip(97, 0, SEG_PACKED, 97, 4);     /* and the padded tail */
	test_skip(80, 0, SEG_MIXED, 80, 0);
	/* keys from 64 on are padding: the pairs (64, 64), (96, 64), (96, 96),
	 * (128, 64), (128, 96), (128, 128) hold no real key and no blind query */
	test_skip(130, 0, SEG_NONE, 50, 6);
	/* window 17 past 50 real tokens: queries >= 66 are blind, so the
	 * diagonal pairs (64, 64), (96, 96), (128, 128) keep their
	 * self-attention; the window skips 6 pairs, the padding (96, 64) and
	 * (128, 96) */
	test_skip(130, 17, SEG_NONE, 50, 8);
	/* an empty row: every query blind, only (32, 0) is empty */
	test_skip(40, 0, SEG_NONE, 0, 1);
	return tap_done();
}
