/* zero.cu - ZeRO-1 on the device (docs/DISTRIBUTED.md): this rank keeps
 * the AdamW moments of its slice of the trainable parameters only.
 *
 * The slice is the CPU trainer's (lib/train/dist_shard.c): the trainable
 * parameters in ft_model_param order, laid end to end, split by
 * util/shard.h.  A device tensor is a parameter or (Phi-3's fused
 * modules) a row block of one, so it covers one contiguous range of that
 * concatenation, and the slice meets it in one contiguous piece (or not
 * at all).  The slice's moments are one buffer in concatenation order;
 * each tensor's m, v point at the moments of its first owned element, so
 * AdamW over the piece (ft_cu_zero_piece) is element for element the
 * whole-model update, and checkpoints copy pieces at their offsets.
 *
 * After the step every rank holds the full, summed gradients (the
 * gradient exchange stays the overlapped all-reduce: see DISTRIBUTED.md
 * for why), so the norm, clipping and fp16's overflow check are computed
 * on every rank as without ZeRO; only the update is sliced, and
 * ft_cuda_zero_gather sends each slice from its owner to the others (one
 * broadcast per tensor piece, in place, in one NCCL group: an all-gather
 * whose pieces are neither equal nor contiguous, which ncclAllGather's
 * equal, contiguous blocks would need a full-size staging copy for).
 */
#include "cuda/common.cuh"
#include "util/shard.h"

struct ft_cu_zero {
	int ranks, rank;
	size_t total, lo, hi;    /* this rank's slice of the trainable elements */
	size_t *goff;            /* [ntens] a trainable tensor's first element */
};

int ft_cu_zero_init(ft_cuda_model *dm)
{
	const ft_cuda_view *v = &dm->v;
	size_t *poff = (size_t *)ft_xcalloc(v->nparams + 1, sizeof *poff), total = 0, covered = 0;
	for (size_t i = 0; i < v->nparams; i++) {
		poff[i] = total;
		if (v->params[i].trainable && v->params[i].g)
			total += v->params[i].n;
	}
	struct ft_cu_zero *z = (struct ft_cu_zero *)ft_xcalloc(1, sizeof *z);
	z->goff = (size_t *)ft_xcalloc(dm->ntens ? dm->ntens : 1, sizeof *z->goff);
	int bad = -1;
	for (int k = 0; k < dm->ntens; k++) {
		const ft_dt *t = &dm->tens[k];
		if (!t->hg)
			continue;
		if (t->pidx < 0 || !v->params[t->pidx].trainable)
			bad = k;
		else
			z->goff[k] = poff[t->pidx] + t->poff;
		covered += t->n;
	}
	free(poff);
	z->ranks = dm->o.zero_ranks;
	z->rank = dm->o.zero_rank;
	z->total = total;
	ft_shard_range(total, z->ranks, z->rank, &z->lo, &z->hi);
	dm->zero = z;
	if (bad >= 0 || covered != total)
		return ft_fail("ZeRO-1 on the device: the trainable tensors (%zu elements%s) are not the "
			       "trainable parameters (%zu)", covered, bad >= 0 ? ", one of no parameter" : "",
			       total);
	if (z->rank < 0 || z->rank >= z->ranks)
		return ft_fail("ZeRO-1: rank %d of %d", z->rank, z->ranks);
	return 0;
}

void ft_cu_zero_free(ft_cuda_model *dm)
{
	if (!dm->zero)
		return;
	free(dm->zero->goff);
	free(dm->zero);
	dm->zero = NULL;
}

/* Tensor k's part of [lo, hi), relative to the tensor. */
static void piece_of(const struct ft_cu_zero *z, const ft_dt *t, int k, size_t lo, size_t hi,
		     size_t *a, size_t *b)
{
	size_t g = z->goff[k], s = lo > g ? lo : g, e = hi < g + t->n ? hi : g + t->n;
	*a = *b = 0;
	if (t->hg && s < e)
		*a = s - g, *b = e - g;
}

void ft_cu_zero_range(const ft_cuda_model *dm, int k, size_t *a, size_t *b)
{
	const ft_dt *t = &dm->tens[k];
	if (!dm->zero) {
		*a = 0, *b = t->n;
		return;
	}
	piece_of(dm->zero, t, k, dm->zero->lo, dm->zero->hi, a, b);
}

void ft_cu_zero_layout(ft_cuda_model *dm, ft_arena *ar)
{
	struct ft_cu_zero *z = dm->zero;
	size_t n = z->hi - z->lo;
	float *m = (float *)ft_arena_take(ar, n * sizeof(float), A_OPTIM);
	float *v = (float *)ft_arena_take(ar, n * sizeof(float), A_OPTIM);
	for (int k = 0; k < dm->ntens; k++) {
		ft_dt *t = &dm->tens[k];
		size_t a, b;
		ft_cu_zero_range(dm, k, &a, &b);
		t->m = t->v = NULL;
		if (a < b && !dm->o.inference) {
			t->m = m + (z->goff[k] + a - z->lo);
			t->v = v + (z->goff[k] + a - z->lo);
		}
	}
}

ft_dt *ft_cu_zero_piece(ft_cuda_model *dm, int k, ft_dt *t, ft_dt *s)
{
	if (!dm->zero || k >= dm->ntens)   /* extras (pref.cu's value head) are whole */
		return t;
	size_t a, b;
	ft_cu_zero_range(dm, k, &a, &b);
	if (a == b)
		return NULL;
	*s = *t;   /* m, v already point at element a */
	s->w = t->w + a;
	s->g = t->g + a;
	s->h = NULL;
	s->n = b - a;
	return s;
}

int ft_cuda_zero_gather(ft_cuda_model *dm, ft_cuda_bcast_fn bcast,
			int (*group)(void *ctx, int start), void *ctx)
{
	const struct ft_cu_zero *z = dm->zero;
	if (!z)
		return ft_fail("%s", "ZeRO-1 gather on a model without a slice (ft_cuda_opts.zero_ranks)");
	CU(cudaSetDevice(dm->o.device), "device %d", dm->o.device);
	int rc = group(ctx, 1);
	for (int r = 0; r < z->ranks && rc == 0; r++) {
		size_t lo, hi;
		ft_shard_range(z->total, z->ranks, r, &lo, &hi);
		for (int k = 0; k < dm->ntens && rc == 0; k++) {
			ft_dt *t = &dm->tens[k];
			size_t a, b;
			piece_of(z, t, k, lo, hi, &a, &b);
			if (a < b)
				rc = bcast(ctx, t->w + a, b - a, r, (void *)dm->stream);
		}
	}
	if (group(ctx, 0) < 0 || rc < 0)
		return -1;
	/* the working copies from the gathered masters: launched after the
	 * group, so on the stream after its broadcasts */
	for (int k = 0; k < dm->ntens; k++)
		if (dm->tens[k].hg && dm->tens[k].h)
			TRY(ft_cu_cast_to_half(dm, dm->tens[k].h, dm->tens[k].w, dm->tens[k].n));
	return 0;
}
