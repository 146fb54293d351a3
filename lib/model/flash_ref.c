/* flash_ref.c - the host reference of the CUDA flash-attention kernels
 * (lib/cuda/attention.cu): the same tiles, the same loops over them, the
 * same per-tile arithmetic (lib/model/flash.h), serially.  Only the
 * parallel part differs: the kernels reduce a row's maximum and sum with
 * warp shuffles, here they are added left to right.  Used by
 * tests/unit/test_flash.c against ft_attention_forward/backward, so the
 * algorithm (tiling, online softmax, masks, tile skipping, the
 * deterministic dQ pass) is checked on any machine. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/flash.h"
#include "util/error.h"

typedef struct {
	const ft_attn_shape *s;
	int ldq, ldk, grp, noskip;
	float scale;
} fa_ctx;

static fa_ctx ctx_of(const ft_attn_shape *s, int noskip)
{
	fa_ctx c = { s, s->Hq * s->hd, s->Hk * s->hd, s->Hq / s->Hk, noskip,
		     1.0f / sqrtf((float)s->hd) };
	return c;
}

static float dot(const float *a, const float *b, int n)
{
	float r = 0;
	for (int i = 0; i < n; i++)
		r += a[i] * b[i];
	return r;
}

static int tile_len(int start, int tile, int T)
{
	return T - start < tile ? T - start : tile;
}

/* Row b's real length (ft_attn_shape.len; T when absent). */
static int row_len(const fa_ctx *c, int b)
{
	return c->s->len ? c->s->len[b] : c->s->T;
}

/* Should query tile r0 and key tile c0 of batch row b be skipped? */
static int skip(const fa_ctx *c, int b, int r0, int nr, int c0, int nc)
{
	if (c->noskip)
		return c0 > r0 + nr - 1;           /* causal tiles are never visited */
	const int32_t *seg = c->s->seg ? c->s->seg + (size_t)b * c->s->T : NULL;
	ft_fa_segs qs = ft_fa_tile_segs(seg ? seg + r0 : NULL, nr);
	ft_fa_segs ks = ft_fa_tile_segs(seg ? seg + c0 : NULL, nc);
	return ft_fa_tile_skip(r0, nr, c0, nc, c->s->window, &qs, &ks, row_len(c, b));
}

static int allowed(const fa_ctx *c, int b, int t, int u)
{
	const int32_t *seg = c->s->seg ? c->s->seg + (size_t)b * c->s->T : NULL;
	return ft_k_attn_allowed(t, u, c->s->window, seg ? seg[t] : 1, seg ? seg[u] : 1,
				 row_len(c, b));
}

/* One query tile of head h in row b (the forward kernel's block). */
static void fwd_tile(const fa_ctx *c, float *out, float *lse, const float *q,
		     const float *k, const float *v, int b, int h, int r0, float *acc)
{
	const ft_attn_shape *s = c->s;
	int T = s->T, hd = s->hd, g = h / c->grp, nr = tile_len(r0, FT_FA_BR, T);
	const float *qb = q + (size_t)b * T * c->ldq + (size_t)h * hd;
	const float *kb = k + (size_t)b * T * c->ldk + (size_t)g * hd;
	const float *vb = v + (size_t)b * T * c->ldk + (size_t)g * hd;
	float m[FT_FA_BR], l[FT_FA_BR], sc[FT_FA_BC];
	for (int r = 0; r < nr; r++)
		m[r] = -INFINITY, l[r] = 0;
	memset(acc, 0, (size_t)nr * hd * sizeof *acc);
	for (int ct = 0; ct < ft_fa_key_tiles(r0, nr); ct++) {
		int c0 = ct * FT_FA_BC, nc = tile_len(c0, FT_FA_BC, T);
		if (skip(c, b, r0, nr, c0, nc))
			continue;
		for (int r = 0; r < nr; r++) {
			int t = r0 + r;
			float tmax = -INFINITY, psum = 0, *a = acc + (size_t)r * hd;
			for (int j = 0; j < nc; j++) {
				int u = c0 + j;
				sc[j] = allowed(c, b, t, u)
					? dot(qb + (size_t)t * c->ldq, kb + (size_t)u * c->ldk, hd) * c->scale
					: -INFINITY;
				tmax = fmaxf(tmax, sc[j]);
			}
			float alpha = ft_fa_rescale(&m[r], tmax);
			for (int j = 0; j < nc; j++) {
				sc[j] = ft_fa_p(sc[j], m[r]);
				psum += sc[j];
			}
			l[r] = l[r] * alpha + psum;
			for (int d = 0; d < hd; d++) {
				float x = a[d] * alpha;
				for (int j = 0; j < nc; j++)
					x += sc[j] * vb[(size_t)(c0 + j) * c->ldk + d];
				a[d] = x;
			}
		}
	}
	for (int r = 0; r < nr; r++) {
		int t = r0 + r;
		float inv = 1.0f / l[r];
		for (int d = 0; d < hd; d++)
			out[((size_t)b * T + t) * c->ldq + (size_t)h * hd + d] = acc[(size_t)r * hd + d] * inv;
		lse[((size_t)b * s->Hq + h) * T + t] = ft_fa_lse(m[r], l[r]);
	}
}

void ft_flash_ref_forward(float *out, float *lse, const float *q, const float *k,
			  const float *v, const ft_attn_shape *s, int noskip)
{
	fa_ctx c = ctx_of(s, noskip);
	float *acc = ft_xmalloc((size_t)FT_FA_BR * s->hd * sizeof *acc);
	for (int b = 0; b < s->B; b++)
		for (int h = 0; h < s->Hq; h++)
			for (int r0 = 0; r0 < s->T; r0 += FT_FA_BR)
				fwd_tile(&c, out, lse, q, k, v, b, h, r0, acc);
	free(acc);
}

/* The inputs of one (query tile, key tile) pair of the backward pass. */
typedef struct {
	const float *q, *k, *v, *dout, *lse, *D;
	int b, h, r0, nr, c0, nc;
} fa_pair;

/* P and dS of one pair into p, ds ([nr][nc]). */
static void pair_p_ds(const fa_ctx *c, const fa_pair *x, float *p, float *ds)
{
	const ft_attn_shape *s = c->s;
	int T = s->T, hd = s->hd, g = x->h / c->grp;
	for (int r = 0; r < x->nr; r++) {
		int t = x->r0 + r;
		size_t qi = ((size_t)x->b * T + t) * c->ldq + (size_t)x->h * hd;
		float L = x->lse[((size_t)x->b * s->Hq + x->h) * T + t];
		float D = x->D[((size_t)x->b * T + t) * s->Hq + x->h];
		for (int j = 0; j < x->nc; j++) {
			int u = x->c0 + j;
			size_t ki = ((size_t)x->b * T + u) * c->ldk + (size_t)g * hd;
			float sc = dot(x->q + qi, x->k + ki, hd) * c->scale;
			float pu = ft_fa_bwd_p(sc, L, allowed(c, x->b, t, u));
			p[r * x->nc + j] = pu;
			ds[r * x->nc + j] = ft_fa_ds(pu, dot(x->dout + qi, x->v + ki, hd), D);
		}
	}
}

/* dK, dV of key tile c0 of kv head g (the dK/dV kernel's block):
 * every query head of the group, every query tile that may see it. */
static void dkdv_tile(const fa_ctx *c, float *dk, float *dv, fa_pair *x, int g,
		      float *ak, float *av, float *p, float *ds)
{
	const ft_attn_shape *s = c->s;
	int T = s->T, hd = s->hd;
	memset(ak, 0, (size_t)x->nc * hd * sizeof *ak);
	memset(av, 0, (size_t)x->nc * hd * sizeof *av);
	for (x->h = g * c->grp; x->h < (g + 1) * c->grp; x->h++)
		for (x->r0 = x->c0 / FT_FA_BR * FT_FA_BR; x->r0 < T; x->r0 += FT_FA_BR) {
			x->nr = tile_len(x->r0, FT_FA_BR, T);
			if (skip(c, x->b, x->r0, x->nr, x->c0, x->nc))
				continue;
			pair_p_ds(c, x, p, ds);
			for (int j = 0; j < x->nc; j++)
				for (int d = 0; d < hd; d++) {
					float sv = av[j * hd + d], sk = ak[j * hd + d];
					for (int r = 0; r < x->nr; r++) {
						size_t qi = ((size_t)x->b * T + x->r0 + r) * c->ldq +
							    (size_t)x->h * hd + d;
						sv += p[r * x->nc + j] * x->dout[qi];
						sk += ds[r * x->nc + j] * x->q[qi];
					}
					av[j * hd + d] = sv;
					ak[j * hd + d] = sk;
				}
		}
	for (int j = 0; j < x->nc; j++)
		for (int d = 0; d < hd; d++) {
			size_t ki = ((size_t)x->b * T + x->c0 + j) * c->ldk + (size_t)g * hd + d;
			dk[ki] = ak[j * hd + d] * c->scale;
			dv[ki] = av[j * hd + d];
		}
}

/* dQ of query tile r0 of head h (the dQ kernel's block). */
static void dq_tile(const fa_ctx *c, float *dq, fa_pair *x, float *aq, float *p, float *ds)
{
	const ft_attn_shape *s = c->s;
	int T = s->T, hd = s->hd, g = x->h / c->grp;
	x->nr = tile_len(x->r0, FT_FA_BR, T);
	memset(aq, 0, (size_t)x->nr * hd * sizeof *aq);
	for (int ct = 0; ct < ft_fa_key_tiles(x->r0, x->nr); ct++) {
		x->c0 = ct * FT_FA_BC;
		x->nc = tile_len(x->c0, FT_FA_BC, T);
		if (skip(c, x->b, x->r0, x->nr, x->c0, x->nc))
			continue;
		pair_p_ds(c, x, p, ds);
		for (int r = 0; r < x->nr; r++)
			for (int d = 0; d < hd; d++) {
				float a = aq[r * hd + d];
				for (int j = 0; j < x->nc; j++)
					a += ds[r * x->nc + j] *
					     x->k[((size_t)x->b * T + x->c0 + j) * c->ldk + (size_t)g * hd + d];
				aq[r * hd + d] = a;
			}
	}
	for (int r = 0; r < x->nr; r++)
		for (int d = 0; d < hd; d++)
			dq[((size_t)x->b * T + x->r0 + r) * c->ldq + (size_t)x->h * hd + d] =
				aq[r * hd + d] * c->scale;
}

void ft_flash_ref_backward(float *dq, float *dk, float *dv, const float *dout,
			   const float *q, const float *k, const float *v,
			   const float *out, const float *lse, const ft_attn_shape *s,
			   int noskip)
{
	fa_ctx c = ctx_of(s, noskip);
	size_t N = (size_t)s->B * s->T, nh = N * s->Hq, hd = s->hd;
	float *D = ft_xmalloc(nh * sizeof *D);
	for (size_t i = 0; i < nh; i++)                 /* the rowdot kernel */
		D[i] = dot(out + i * hd, dout + i * hd, s->hd);
	float *a1 = ft_xmalloc((size_t)FT_FA_BR * hd * sizeof(float));
	float *a2 = ft_xmalloc((size_t)FT_FA_BR * hd * sizeof(float));
	float *p = ft_xmalloc(FT_FA_BR * FT_FA_BC * sizeof(float));
	float *ds = ft_xmalloc(FT_FA_BR * FT_FA_BC * sizeof(float));
	fa_pair x = { q, k, v, dout, lse, D, 0, 0, 0, 0, 0, 0 };
	for (x.b = 0; x.b < s->B; x.b++)
		for (int g = 0; g < s->Hk; g++)
			for (x.c0 = 0; x.c0 < s->T; x.c0 += FT_FA_BC) {
				x.nc = tile_len(x.c0, FT_FA_BC, s->T);
				dkdv_tile(&c, dk, dv, &x, g, a1, a2, p, ds);
			}
	for (x.b = 0; x.b < s->B; x.b++)
		for (x.h = 0; x.h < s->Hq; x.h++)
			for (x.r0 = 0; x.r0 < s->T; x.r0 += FT_FA_BR)
				dq_tile(&c, dq, &x, a1, p, ds);
	free(D);
	free(a1);
	free(a2);
	free(p);
	free(ds);
}
