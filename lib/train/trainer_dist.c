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
 * Overlap with the backward: not done.  The CPU backward is one call
 * (ft_model_forward_backward) that uses every core through OpenMP; an
 * all-reduce started per layer would need a hook inside the model and an
 * MPI progress thread competing for those cores, and with accumulation a
 * layer's gradient is final only in the last micro-batch.  The bucketed
 * sum below is a few percent of a step at LoRA sizes (bench/train-dist).
 */
#include <stdlib.h>
#include <string.h>
#include "train/trainer_internal.h"
#include "train/dist.h"
#include "util/error.h"

/* 4M floats (16 MiB) per all-reduce: small tensors (LoRA A/B, norms) go
 * together, as DDP's gradient buckets, instead of one call each. */
#define BUCKET ((size_t)4 << 20)

static int sum_grads_cpu(ft_dist *d, ft_param **params, size_t np)
{
	float *buf = NULL;
	size_t fill = 0, first = 0;
	int rc = 0;
	for (size_t k = 0; k <= np && rc == 0; k++) {
		/* flush the bucket before a tensor that does not fit, and at the end */
		if (fill && (k == np || fill + params[k]->n > BUCKET)) {
			rc = ft_dist_sum_f32(d, buf, fill, "gradient all-reduce");
			for (size_t j = first, off = 0; rc == 0 && j < k; j++) {
				memcpy(params[j]->g, buf + off, params[j]->n * sizeof(float));
				off += params[j]->n;
			}
			fill = 0;
		}
		if (k == np || rc) break;
		if (params[k]->n > BUCKET) {   /* big tensors: in place */
			rc = ft_dist_sum_f32(d, params[k]->g, params[k]->n, "gradient all-reduce");
			first = k + 1;
			continue;
		}
		if (!buf) buf = ft_xmalloc(BUCKET * sizeof *buf);
		if (fill == 0) first = k;
		memcpy(buf + fill, params[k]->g, params[k]->n * sizeof(float));
		fill += params[k]->n;
	}
	free(buf);
	return rc;
}

int ftp_dist_reduce(const ft_train_opts *o, ft_train_model *m, ft_param **params, size_t np,
		    double *ls, int n)
{
	ft_dist *d = o->dist;
	if (ft_dist_size(d) < 2) return 0;
	/* the per-micro-batch losses (zeros where another rank's) and, in
	 * the last slot, any rank's stop request: every rank then logs the
	 * same global losses and stops at the same step */
	if (ft_dist_sum_f64_watched(d, ls, (size_t)n + 1, "loss all-reduce") < 0) return -1;
	if (m->sum_grads) return m->sum_grads(m->self, d);
	return sum_grads_cpu(d, params, np);
}
