/* trainer_dist.c - the trainer's side of data parallelism (dist.h): the
 * exchange after a step's backward passes, and ZeRO-1's optimizer.
 *
 * Every rank reads every micro-batch of a step (the stream is sequential
 * and the reading is cheap next to a forward pass), counts the label
 * tokens of all of them, so num_items_in_batch is the global batch's as on
 * one process, and runs forward and backward on its own share
 * (ft_dist_owner).  Its gradients are then sums over its micro-batches of
 * loss_sum / global_tokens, and the sum over ranks is exactly the
 * gradient one process computes for the whole global batch, up to the
 * order of the float additions.  That is why the exchange sums rather
 * than averages (DDP averages after scaling the loss by the world size:
 * the same number, one more rounding).
 *
 * The gradients are summed in a fixed plan that every rank follows in the
 * same order: the final norm and an untied lm_head, then each decoder
 * layer from the last down, then the embeddings, then anything else (a
 * value head) - the order in which the backward pass finishes them.
 * Small tensors share a bucket (as DDP's), flushed when the next tensor
 * does not fit or when a group ends with the bucket at least FLUSH full,
 * so the calls depend only on the tensors' sizes, never on timing.
 *
 * Overlap with the backward: on the CPU model (set_grads_ready), a rank's
 * last micro-batch of the step runs its backward while a communication
 * thread sums each group as soon as the model reports it final
 * (ft_model_set_grads_ready), so the all-reduce of layer l runs beside the
 * backward of layer l-1.  Only one thread calls MPI at a time (the main
 * thread waits for the communication thread before the loss all-reduce),
 * as MPI_THREAD_SERIALIZED allows.  With accumulation only the last
 * micro-batch overlaps: before it no gradient is final.  A rank without
 * a micro-batch in the step, or a model without the hook (the preference
 * stages), runs the same plan after its backward.
 *
 * On GPUs (sum_group: the CUDA binding) the plan is the groups
 * themselves, in the same order: each group's gradients are one NCCL group
 * of all-reduces on the device's communication stream, issued by the same
 * communication thread as the device backward reports the group final
 * (after an event on its compute stream, which the communication stream
 * waits for), and the step waits for the stream.  Overlapped or not, every
 * rank issues the same NCCL calls on the same buffers, so the sums are the
 * same bits either way.
 */
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include "train/trainer_internal.h"
#include "train/dist.h"
#include "util/error.h"

/* 4M floats (16 MiB) at most per bucket; a group that ends with 1M floats
 * (4 MiB) or more in the bucket flushes it, so a layer's sum can start
 * while the next layer's backward runs. */
#define BUCKET ((size_t)4 << 20)
#define FLUSH ((size_t)1 << 20)

/* The group a parameter's gradient belongs to, by its name: a decoder
 * layer (>= 0), the head (n_layers), the embeddings (-1), other (-2). */
static int group_of(const char *name, int n_layers)
{
	const char *l = strstr(name, "layers.");
	if (l) return atoi(l + 7);
	if (strstr(name, "embed_tokens")) return -1;
	if (strstr(name, "lm_head") || strstr(name, ".norm.") || !strncmp(name, "norm.", 5)) return n_layers;
	return -2;
}

/* Plan position of a group: the head first, then layers from the last
 * down, then embeddings, then the rest. */
static int rank_of(int group, int n_layers)
{
	return group == -2 ? n_layers + 2 : group == -1 ? n_layers + 1 : n_layers - group;
}

typedef struct {
	ft_param **p;          /* the trainable params in plan order */
	int *pos;              /* each one's plan position */
	size_t np;
	int n_layers;
} plan;

static void plan_make(plan *pl, ft_param **params, size_t np)
{
	int nl = 0;
	for (size_t k = 0; k < np; k++) {
		const char *l = strstr(params[k]->name, "layers.");
		if (l && atoi(l + 7) + 1 > nl) nl = atoi(l + 7) + 1;
	}
	pl->n_layers = nl;
	pl->p = ft_xmalloc((np + 1) * sizeof *pl->p);
	pl->pos = ft_xmalloc((np + 1) * sizeof *pl->pos);
	pl->np = 0;
	for (int r = 0; r <= nl + 2; r++)   /* stable within a group */
		for (size_t k = 0; k < np; k++)
			if (params[k]->g && rank_of(group_of(params[k]->name, nl), nl) == r) {
				pl->p[pl->np] = params[k];
				pl->pos[pl->np++] = r;
			}
}

static void plan_free(plan *pl)
{
	free(pl->p);
	free(pl->pos);
}

/* Waits until plan position `pos` is final; NULL: everything is. */
typedef struct ready ready;
static void wait_ready(ready *r, int pos);

static int flush(ft_dist *d, ft_param **p, size_t first, size_t end, float *buf, size_t fill)
{
	if (!fill) return 0;
	if (ft_dist_sum_f32(d, buf, fill, "gradient all-reduce") < 0) return -1;
	for (size_t j = first, off = 0; j < end; j++) {
		memcpy(p[j]->g, buf + off, p[j]->n * sizeof(float));
		off += p[j]->n;
	}
	return 0;
}

/* A watched meeting of all ranks before the step's first gradient sum:
 * a rank that died or hangs is named by rank 0 after --ddp_timeout
 * (ft_dist_sum_f64_watched) instead of every rank waiting in a plain
 * all-reduce.  One double: latency only, hidden by the backward when the
 * sum overlaps it. */
static int arrive(ft_dist *d)
{
	double one = 1;
	return ft_dist_sum_f64_watched(d, &one, 1, "gradient all-reduce");
}

static int sum_plan(ft_dist *d, const plan *pl, ready *r)
{
	float *buf = NULL;
	size_t fill = 0, first = 0;
	int rc = arrive(d);
	for (size_t k = 0; k < pl->np && rc == 0; k++) {
		ft_param *q = pl->p[k];
		if (fill && fill + q->n > BUCKET) {
			rc = flush(d, pl->p, first, k, buf, fill);
			fill = 0;
		}
		if (rc) break;
		wait_ready(r, pl->pos[k]);
		if (q->n > BUCKET) {   /* big tensors: in place */
			rc = ft_dist_sum_f32(d, q->g, q->n, "gradient all-reduce");
			continue;
		}
		if (!buf) buf = ft_xmalloc(BUCKET * sizeof *buf);
		if (fill == 0) first = k;
		memcpy(buf + fill, q->g, q->n * sizeof(float));
		fill += q->n;
		int group_ends = k + 1 == pl->np || pl->pos[k + 1] != pl->pos[k];
		if (group_ends && (fill >= FLUSH || k + 1 == pl->np)) {
			rc = flush(d, pl->p, first, k + 1, buf, fill);
			fill = 0;
		}
	}
	free(buf);
	return rc;
}

/* The GPU plan: the groups in the backward's order, head first (plan
 * position 0 is group n_layers, position n_layers + 1 the embeddings), the
 * NCCL sums watched until the communication stream has finished them. */
static int sum_groups(ft_dist *d, ft_train_model *m, ready *r)
{
	int L = m->grad_layers, rc = arrive(d);
	if (rc) return rc;
	ft_dist_watch(d, "gradient all-reduce");
	for (int pos = 0; pos <= L + 1 && rc == 0; pos++) {
		wait_ready(r, pos);
		rc = m->sum_group(m->self, d, pos == L + 1 ? -1 : L - pos);
	}
	if (m->sum_wait(m->self, d) < 0) rc = -1;
	ft_dist_unwatch(d);
	return rc;
}

/* ---- the communication thread ---------------------------------------- */

struct ready {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int upto;              /* plan positions < upto are final */
};

static void wait_ready(ready *r, int pos)
{
	if (!r) return;
	pthread_mutex_lock(&r->mu);
	while (r->upto <= pos) pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
}

static void set_ready(ready *r, int upto)
{
	pthread_mutex_lock(&r->mu);
	if (upto > r->upto) r->upto = upto;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

struct ftp_overlap {
	ft_dist *d;
	ft_train_model *m;
	plan pl;
	ready r;
	pthread_t th;
	int rc;
	char err[1024];
};

/* The model's hook: group g final means every plan position up to g's. */
static void on_grads_ready(void *ctx, int group)
{
	ftp_overlap *ov = ctx;
	set_ready(&ov->r, rank_of(group, ov->pl.n_layers) + 1);
}

static void *comm_main(void *arg)
{
	ftp_overlap *ov = arg;
	ov->rc = ov->m->sum_group ? sum_groups(ov->d, ov->m, &ov->r) : sum_plan(ov->d, &ov->pl, &ov->r);
	if (ov->rc) snprintf(ov->err, sizeof ov->err, "%s", ft_errmsg());
	return NULL;
}

ftp_overlap *ftp_dist_overlap_begin(const ft_train_opts *o, ft_train_model *m, ft_param **params,
				    size_t np)
{
	if (ft_dist_size(o->dist) < 2 || !ft_dist_serialized(o->dist) || !m->set_grads_ready)
		return NULL;
	const char *off = getenv("FT_DIST_NO_OVERLAP");   /* tests and measurements: sum after */
	if (off && *off && strcmp(off, "0")) return NULL;
	ftp_overlap *ov = ft_xcalloc(1, sizeof *ov);
	ov->d = o->dist;
	ov->m = m;
	plan_make(&ov->pl, params, np);
	if (m->sum_group) ov->pl.n_layers = m->grad_layers;   /* the device's groups */
	pthread_mutex_init(&ov->r.mu, NULL);
	pthread_cond_init(&ov->r.cv, NULL);
	if (pthread_create(&ov->th, NULL, comm_main, ov) != 0) {   /* run it after instead */
		pthread_mutex_destroy(&ov->r.mu);
		pthread_cond_destroy(&ov->r.cv);
		plan_free(&ov->pl);
		free(ov);
		return NULL;
	}
	m->set_grads_ready(m->self, on_grads_ready, ov);
	return ov;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + 1e-9 * t.tv_nsec;
}

int ftp_dist_overlap_end(ftp_overlap *ov)
{
	if (!ov) return 0;
	ov->m->set_grads_ready(ov->m->self, NULL, NULL);
	double t0 = now_s();
	set_ready(&ov->r, ov->pl.n_layers + 3);   /* the rest (even after a failed backward) */
	pthread_join(ov->th, NULL);
	ft_dist_note_overlap(ov->d, now_s() - t0);
	int rc = ov->rc;
	if (rc) ft_fail("%s", ov->err);
	pthread_mutex_destroy(&ov->r.mu);
	pthread_cond_destroy(&ov->r.cv);
	plan_free(&ov->pl);
	free(ov);
	return rc;
}

int ftp_dist_reduce(const ft_train_opts *o, ft_train_model *m, ft_param **params, size_t np,
		    double *ls, int n, int grads_summed)
{
	ft_dist *d = o->dist;
	if (ft_dist_size(d) < 2) return 0;
	if (!grads_summed) {
		if (m->sum_group) {
			if (sum_groups(d, m, NULL) < 0) return -1;
		} else {
			plan pl;
			plan_make(&pl, params, np);
			int rc = sum_plan(d, &pl, NULL);
			plan_free(&pl);
			if (rc < 0) return -1;
		}
	}
	/* the per-micro-batch losses (zeros where another rank's) and, in
	 * the last slot, any rank's stop request: every rank then logs the
	 * same global losses and stops at the same step */
	return ft_dist_sum_f64_watched(d, ls, (size_t)n + 1, "loss all-reduce");
}
