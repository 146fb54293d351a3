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
 * broadcast per (rank, tensor) piece, straight into the tensors.
 *
 * Checkpoints stream, so that no rank ever holds more than its slice and
 * one tensor's pair of moments (the point of ZeRO-1; a 7B full
 * fine-tune's whole state is 56 GB): at a save rank 0's whole-model
 * ft_adamw gets a fetch that ft_adamw_save calls tensor by tensor, and
 * that receives the tensor's pieces from their owners just before the
 * tensor is written, while each other rank sends its pieces in the same
 * (tensor) order.  At a resume rank 0 alone reads optimizer.safetensors
 * and hands each tensor on as it is read: the weights to every rank
 * (they all need them whole), each rank its piece of the moments.  Only
 * rank 0 reads the file because only rank 0 wrote it: the other nodes of
 * a job without a shared filesystem never had it. */
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
	ft_dist_moments save; /* rank 0's fetch at a checkpoint */
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

static int bcast_weights(ft_zero1 *z, size_t k, size_t a, size_t b, void *ctx)
{
	const int *root = ctx;
	return ft_dist_bcast(z->d, z->p[k]->w + a, (b - a) * sizeof(float), *root,
			     "ZeRO-1 parameter all-gather");
}

int ft_zero1_step(ft_zero1 *z, double lr)
{
	ft_adamw_step(z->opt, lr);
	int n = ft_dist_size(z->d);
	for (int r = 0; r < n; r++) {
		size_t lo, hi;
		ft_dist_shard(z->total, n, r, &lo, &hi);
		if (each_piece(z, lo, hi, bcast_weights, &r) < 0) return -1;
	}
	return 0;
}

/* ---- checkpoints, one tensor at a time ---------------------------------- */

static const char save_what[] = "ZeRO-1 optimizer-state gather";
static const char load_what[] = "ZeRO-1 optimizer-state scatter";

/* Rank r's piece [*a, *b) of full's tensor k (*a == *b: none), in the
 * split of ft_zero1 over the same params.  Linear in the tensors, asked
 * tensors x ranks times a checkpoint: 5 million additions for a 7B's 291
 * tensors on 64 ranks, nothing next to the bytes. */
static void piece_of(const ft_adamw *full, int n, int r, size_t k, size_t *a, size_t *b)
{
	size_t off = 0, total = 0, lo, hi, len = ft_adamw_param(full, k)->n;
	for (size_t j = 0; j < ft_adamw_count(full); j++) {
		if (j == k) off = total;
		total += ft_adamw_param(full, j)->n;
	}
	ft_dist_shard(total, n, r, &lo, &hi);
	*a = lo > off ? lo - off : 0;
	*b = hi > off ? hi - off : 0;
	if (*a > len) *a = len;
	if (*b > len) *b = len;
	if (*b < *a) *b = *a;
}

/* A pair of floats as long as the longest tensor rank r has a piece of. */
static void scratch(const ft_adamw *full, int n, int r, float **m, float **v)
{
	size_t most = 1, a, b;
	for (size_t k = 0; k < ft_adamw_count(full); k++) {
		piece_of(full, n, r, k, &a, &b);
		if (a < b && ft_adamw_param(full, k)->n > most) most = ft_adamw_param(full, k)->n;
	}
	*m = ft_xmalloc(most * sizeof **m);
	*v = ft_xmalloc(most * sizeof **v);
}

/* Rank 0's fetch: its own piece of tensor k, then every other rank's,
 * each sent in tensor order (exp_avg, then exp_avg_sq). */
static int save_fetch(void *ctx, size_t k, float *m, float *v)
{
	const ft_dist_moments *s = ctx;
	int n = ft_dist_size(s->d);
	size_t a, b;
	piece_of(s->full, n, 0, k, &a, &b);
	if (a < b && s->own(s->ctx, k, m, v) < 0) return -1;
	for (int r = 1; r < n; r++) {
		piece_of(s->full, n, r, k, &a, &b);
		size_t bytes = (b - a) * sizeof(float);
		if (ft_dist_recv(s->d, m + a, bytes, r, save_what) < 0 ||
		    ft_dist_recv(s->d, v + a, bytes, r, save_what) < 0)
			return -1;
	}
	return 0;
}

/* The other ranks: each piece of their slice, in tensor order, as rank 0's
 * fetch asks for it (a blocking send waits for its receive). */
static int send_pieces(const ft_dist_moments *s)
{
	int n = ft_dist_size(s->d), rank = ft_dist_rank(s->d), rc = 0;
	float *m, *v;
	scratch(s->full, n, rank, &m, &v);
	for (size_t k = 0; k < ft_adamw_count(s->full) && rc == 0; k++) {
		size_t a, b;
		piece_of(s->full, n, rank, k, &a, &b);
		size_t bytes = (b - a) * sizeof(float);
		if (a == b) continue;
		rc = s->own(s->ctx, k, m, v);
		if (rc == 0) rc = ft_dist_send(s->d, m + a, bytes, 0, save_what);
		if (rc == 0) rc = ft_dist_send(s->d, v + a, bytes, 0, save_what);
	}
	free(m);
	free(v);
	return rc;
}

int ft_dist_save_moments(ft_dist_moments *s, ft_dist *d, ft_adamw *full, ft_dist_own_out own, void *ctx)
{
	*s = (ft_dist_moments){ d, full, own, ctx };
	if (ft_dist_rank(d) != 0) return send_pieces(s);
	ft_adamw_set_fetch(full, save_fetch, s);
	return 0;
}

typedef struct {
	ft_dist *d;
	ft_adamw *full;
	ft_dist_own_in own;
	void *ctx;
} load_ctx;

/* Rank 0's put, as tensor k is read: the step first (with the first
 * tensor), the weights to all, its own piece, each other rank its own. */
static int load_put(void *ctx, size_t k, const float *m, const float *v)
{
	const load_ctx *c = ctx;
	int n = ft_dist_size(c->d);
	int64_t step = ft_adamw_steps(c->full);
	const ft_param *p = ft_adamw_param(c->full, k);
	size_t a, b;
	if (k == 0 && ft_dist_bcast(c->d, &step, sizeof step, 0, load_what) < 0) return -1;
	if (ft_dist_bcast(c->d, p->w, p->n * sizeof(float), 0, load_what) < 0) return -1;
	piece_of(c->full, n, 0, k, &a, &b);
	if (a < b && c->own(c->ctx, k, m, v) < 0) return -1;
	for (int r = 1; r < n; r++) {
		piece_of(c->full, n, r, k, &a, &b);
		size_t bytes = (b - a) * sizeof(float);
		if (ft_dist_send(c->d, m + a, bytes, r, load_what) < 0 ||
		    ft_dist_send(c->d, v + a, bytes, r, load_what) < 0)
			return -1;
	}
	return 0;
}

/* The other ranks: the same calls, receiving. */
static int load_pieces(const load_ctx *c)
{
	int n = ft_dist_size(c->d), rank = ft_dist_rank(c->d);
	int64_t step;
	if (ft_dist_bcast(c->d, &step, sizeof step, 0, load_what) < 0) return -1;
	ft_adamw_set_steps(c->full, step);
	float *m, *v;
	scratch(c->full, n, rank, &m, &v);
	int rc = 0;
	for (size_t k = 0; k < ft_adamw_count(c->full) && rc == 0; k++) {
		const ft_param *p = ft_adamw_param(c->full, k);
		size_t a, b;
		rc = ft_dist_bcast(c->d, p->w, p->n * sizeof(float), 0, load_what);
		piece_of(c->full, n, rank, k, &a, &b);
		size_t bytes = (b - a) * sizeof(float);
		if (rc < 0 || a == b) continue;
		rc = ft_dist_recv(c->d, m + a, bytes, 0, load_what);
		if (rc == 0) rc = ft_dist_recv(c->d, v + a, bytes, 0, load_what);
		if (rc == 0) rc = c->own(c->ctx, k, m, v);
	}
	free(m);
	free(v);
	return rc;
}

int ft_dist_load_moments(ft_dist *d, ft_adamw *full, const char *path, ft_dist_own_in own, void *ctx)
{
	load_ctx c = { d, full, own, ctx };
	if (ft_dist_rank(d) != 0) return load_pieces(&c);
	return ft_adamw_load_each(full, path, load_put, &c);
}

/* ---- the CPU's slice optimizer as the owner of its pieces --------------- */

/* The view of tensor k (a slice meets a tensor at most once), or -1. */
static long view_of(const ft_zero1 *z, size_t k)
{
	for (size_t i = 0; i < z->nv; i++)
		if (z->vk[i] == k) return (long)i;
	return -1;
}

static int zero1_out(void *ctx, size_t k, float *m, float *v)
{
	ft_zero1 *z = ctx;
	long i = view_of(z, k);
	if (i < 0) return 0;
	size_t a = z->voff[i], bytes = z->vp[i]->n * sizeof(float);
	memcpy(m + a, ft_adamw_exp_avg(z->opt, (size_t)i), bytes);
	memcpy(v + a, ft_adamw_exp_avg_sq(z->opt, (size_t)i), bytes);
	return 0;
}

static int zero1_in(void *ctx, size_t k, const float *m, const float *v)
{
	ft_zero1 *z = ctx;
	long i = view_of(z, k);
	if (i < 0) return 0;
	size_t a = z->voff[i], bytes = z->vp[i]->n * sizeof(float);
	memcpy(ft_adamw_exp_avg(z->opt, (size_t)i), m + a, bytes);
	memcpy(ft_adamw_exp_avg_sq(z->opt, (size_t)i), v + a, bytes);
	return 0;
}

static int same_params(const ft_zero1 *z, const ft_adamw *full)
{
	if (ft_adamw_count(full) != z->n)
		return ft_fail("ZeRO-1: the full optimizer has %zu tensors, the slices %zu",
			       ft_adamw_count(full), z->n);
	return 0;
}

int ft_zero1_save(ft_zero1 *z, ft_adamw *full)
{
	if (same_params(z, full) < 0) return -1;
	ft_adamw_set_steps(full, ft_adamw_steps(z->opt));
	return ft_dist_save_moments(&z->save, z->d, full, zero1_out, z);
}

int ft_zero1_load(ft_zero1 *z, ft_adamw *full, const char *path)
{
	if (same_params(z, full) < 0) return -1;
	if (ft_dist_load_moments(z->d, full, path, zero1_in, z) < 0) return -1;
	ft_adamw_set_steps(z->opt, ft_adamw_steps(full));
	return 0;
}
