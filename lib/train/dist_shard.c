/* dist_shard.c - who owns what across ranks, and ZeRO-1's sharded AdamW;
 * see dist.h.
 *
 * ZeRO-1 splits the trainable parameters, laid end to end in the
 * trainer's order, into one contiguous slice per rank (ft_dist_shard).
 * A rank's AdamW runs over views of its slice: ft_params whose w and g
 * point into the real tensors, so the moments it allocates are the
 * slice's only and the update is element for element the one
 * ft_adamw_step makes over the whole model: ZeRO-1 changes no bit of the
 * result.  The slices then travel from their owner to the others, one
 * broadcast per (rank, tensor) piece, straight into the tensors.  For a
 * checkpoint the moments go the same way, but only to rank 0. */
#include <stdlib.h>
#include <string.h>
#include "train/dist.h"
#include "util/error.h"
#include "util/shard.h"

void ft_dist_shard(size_t total, int n, int k, size_t *lo, size_t *hi)
{
	ft_shard_range(total, n, k, lo, hi);
}

struct ft_zero1 {
	ft_dist *d;
	ft_param **p;         /* borrowed: the trainer's trainable params */
	size_t n, total, lo, hi;
	ft_param *views;      /* this rank's pieces of them */
	ft_param **vp;
	size_t nv;
	size_t *vk, *voff;    /* each view's tensor and offset in it */
	ft_adamw *opt;        /* over the views */
};

/* Call fn for each piece of [lo, hi) in tensor k: elements [a, b) of it. */
typedef int (*piece_fn)(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx);

static int each_piece(ft_zero1 *z, size_t lo, size_t hi, piece_fn fn, void *ctx)
{
	size_t off = 0;
	for (size_t k = 0; k < z->n && off < hi; k++) {
		size_t n = z->p[k]->n, a = lo > off ? lo - off : 0, b = hi - off < n ? hi - off : n;
		if (off + n > lo && a < b && fn(z, k, a, b, ctx) < 0) return -1;
		off += n;
	}
	return 0;
}

static int add_view(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx)
{
	(void)ctx;
	ft_param *v = &z->views[z->nv];
	*v = *z->p[k];   /* name and decay as the tensor's */
	v->w = z->p[k]->w + a;
	v->g = z->p[k]->g + a;
	v->n = b - a;
	v->ndim = 1;
	v->shape[0] = (int64_t)(b - a);
	v->shape[1] = 0;
	z->vk[z->nv] = k;
	z->voff[z->nv] = a;
	z->vp[z->nv] = v;
	z->nv++;
	return 0;
}

ft_zero1 *ft_zero1_new(ft_dist *d, ft_param *const *params, size_t n, const ft_adamw_opts *o)
{
	ft_zero1 *z = ft_xcalloc(1, sizeof *z);
	z->d = d;
	z->n = n;
	z->p = ft_xcalloc(n ? n : 1, sizeof *z->p);
	memcpy(z->p, params, n * sizeof *params);
	z->total = ft_params_elements(z->p, n);
	ft_dist_shard(z->total, ft_dist_size(d), ft_dist_rank(d), &z->lo, &z->hi);
	/* a slice meets at most every tensor once */
	z->views = ft_xcalloc(n ? n : 1, sizeof *z->views);
	z->vp = ft_xcalloc(n ? n : 1, sizeof *z->vp);
	z->vk = ft_xcalloc(n ? n : 1, sizeof *z->vk);
	z->voff = ft_xcalloc(n ? n : 1, sizeof *z->voff);
	each_piece(z, z->lo, z->hi, add_view, NULL);
	z->opt = ft_adamw_new(z->vp, z->nv, o);
	return z;
}

void ft_zero1_free(ft_zero1 *z)
{
	if (!z) return;
	ft_adamw_free(z->opt);
	free(z->p); free(z->views); free(z->vp); free(z->vk); free(z->voff);
	free(z);
}

size_t ft_zero1_slice(const ft_zero1 *z, size_t *total)
{
	if (total) *total = z->total;
	return z->hi - z->lo;
}

typedef struct { int root; ft_adamw *full; } bc_ctx;

static int bcast_weights(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx)
{
	const bc_ctx *c = ctx;
	return ft_dist_bcast(z->d, z->p[k]->w + a, (b - a) * sizeof(float), c->root,
			     "ZeRO-1 parameter all-gather");
}

static const char gather_what[] = "ZeRO-1 optimizer-state gather";

/* On rank 0: rank c->root's piece of the moments, received in the order
 * that rank sends its views (tensor order, exp_avg then exp_avg_sq). */
static int recv_moments(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx)
{
	const bc_ctx *c = ctx;
	size_t bytes = (b - a) * sizeof(float);
	if (ft_dist_recv(z->d, ft_adamw_exp_avg(c->full, k) + a, bytes, c->root, gather_what) < 0)
		return -1;
	return ft_dist_recv(z->d, ft_adamw_exp_avg_sq(c->full, k) + a, bytes, c->root, gather_what);
}

int ft_zero1_step(ft_zero1 *z, double lr)
{
	ft_adamw_step(z->opt, lr);
	int n = ft_dist_size(z->d);
	for (int r = 0; r < n; r++) {
		size_t lo, hi;
		ft_dist_shard(z->total, n, r, &lo, &hi);
		bc_ctx c = { r, NULL };
		if (each_piece(z, lo, hi, bcast_weights, &c) < 0) return -1;
	}
	return 0;
}

int ft_zero1_gather(ft_zero1 *z, ft_adamw *full)
{
	if (ft_adamw_count(full) != z->n)
		return ft_fail("ZeRO-1: the full optimizer has %zu tensors, the slices %zu",
			       ft_adamw_count(full), z->n);
	int rank = ft_dist_rank(z->d), n = ft_dist_size(z->d);
	ft_adamw_set_steps(full, ft_adamw_steps(z->opt));
	if (rank == 0) {   /* rank 0's own slice, then every other rank's */
		for (size_t i = 0; i < z->nv; i++) {
			size_t k = z->vk[i], a = z->voff[i], len = z->vp[i]->n;
			memcpy(ft_adamw_exp_avg(full, k) + a, ft_adamw_exp_avg(z->opt, i), len * sizeof(float));
			memcpy(ft_adamw_exp_avg_sq(full, k) + a, ft_adamw_exp_avg_sq(z->opt, i),
			       len * sizeof(float));
		}
		for (int r = 1; r < n; r++) {
			size_t lo, hi;
			ft_dist_shard(z->total, n, r, &lo, &hi);
			bc_ctx c = { r, full };
			if (each_piece(z, lo, hi, recv_moments, &c) < 0) return -1;
		}
		return 0;
	}
	/* the others send their slice's moments from their slice optimizer */
	for (size_t i = 0; i < z->nv; i++) {
		size_t bytes = z->vp[i]->n * sizeof(float);
		if (ft_dist_send(z->d, ft_adamw_exp_avg(z->opt, i), bytes, 0, gather_what) < 0 ||
		    ft_dist_send(z->d, ft_adamw_exp_avg_sq(z->opt, i), bytes, 0, gather_what) < 0)
			return -1;
	}
	return 0;
}

void ft_zero1_scatter(ft_zero1 *z, ft_adamw *full)
{
	for (size_t i = 0; i < z->nv; i++) {
		size_t k = z->vk[i], a = z->voff[i], len = z->vp[i]->n;
		memcpy(ft_adamw_exp_avg(z->opt, i), ft_adamw_exp_avg(full, k) + a, len * sizeof(float));
		memcpy(ft_adamw_exp_avg_sq(z->opt, i), ft_adamw_exp_avg_sq(full, k) + a,
		       len * sizeof(float));
	}
	ft_adamw_set_steps(z->opt, ft_adamw_steps(full));
}

/* On rank r: its piece of full's moments to rank 0. */
static int send_moments(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx)
{
	const bc_ctx *c = ctx;
	size_t bytes = (b - a) * sizeof(float);
	if (ft_dist_send(z->d, ft_adamw_exp_avg(c->full, k) + a, bytes, 0, gather_what) < 0)
		return -1;
	return ft_dist_send(z->d, ft_adamw_exp_avg_sq(c->full, k) + a, bytes, 0, gather_what);
}

int ft_dist_gather_moments(ft_dist *d, ft_adamw *full)
{
	int rank = ft_dist_rank(d), n = ft_dist_size(d), rc = 0;
	if (n < 2) return 0;
	/* the slices of full's own params, walked as ft_zero1's */
	ft_zero1 z = { .d = d, .n = ft_adamw_count(full) };
	z.p = ft_xcalloc(z.n ? z.n : 1, sizeof *z.p);
	for (size_t k = 0; k < z.n; k++) z.p[k] = ft_adamw_param(full, k);
	z.total = ft_params_elements(z.p, z.n);
	for (int r = 1; r < n && rc == 0; r++) {
		if (rank != 0 && rank != r) continue;
		size_t lo, hi;
		ft_dist_shard(z.total, n, r, &lo, &hi);
		bc_ctx c = { r, full };
		rc = each_piece(&z, lo, hi, rank == 0 ? recv_moments : send_moments, &c);
	}
	free(z.p);
	return rc;
}
