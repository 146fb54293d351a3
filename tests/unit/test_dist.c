/* test_dist.c - the arithmetic of data parallelism (lib/train/dist.h):
 * shard bounds, micro-batch owners, the global batch, the one-process
 * world of a NULL ft_dist, and ZeRO-1's sliced AdamW, which must give
 * bit-identical weights and moments to ft_adamw over the whole model
 * (the same element operations in the same order), and checkpoints
 * streamed from and back into the slices in ft_adamw's file format. */
#include "tap.h"
#include "train/dist.h"
#include "train/optim.h"
#include "format/trainlog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/error.h"

static int same_file(const char *x, const char *y)
{
	FILE *f = fopen(x, "rb"), *g = fopen(y, "rb");
	int same = f && g, c;
	while (same && (c = getc(f)) != EOF) same = c == getc(g);
	if (same) same = getc(g) == EOF;
	if (f) fclose(f);
	if (g) fclose(g);
	return same;
}

static void check_shards(size_t total, int n)
{
	size_t prev_hi = 0, min = (size_t)-1, max = 0;
	int contiguous = 1;
	for (int k = 0; k < n; k++) {
		size_t lo, hi;
		ft_dist_shard(total, n, k, &lo, &hi);
		contiguous &= lo == prev_hi && hi >= lo;
		prev_hi = hi;
		if (hi - lo < min) min = hi - lo;
		if (hi - lo > max) max = hi - lo;
	}
	ok(contiguous && prev_hi == total && max - min <= 1,
	   "shard %zu elements %d ways: contiguous, cover all, sizes %zu..%zu", total, n, min, max);
}

static ft_param mk(const char *name, size_t n, int decay, unsigned seed)
{
	ft_param p = {0};
	p.name = (char *)name;
	p.n = n;
	p.ndim = 1;
	p.shape[0] = (int64_t)n;
	p.trainable = 1;
	p.decay = decay;
	p.w = malloc(n * sizeof *p.w);
	p.g = malloc(n * sizeof *p.g);
	srand(seed);
	for (size_t i = 0; i < n; i++) p.w[i] = (float)rand() / RAND_MAX - 0.5f;
	return p;
}

int main(void)
{
	check_shards(0, 1);
	check_shards(10, 3);
	check_shards(7, 8);       /* more ranks than elements: some get none */
	check_shards(1000003, 4);
	size_t lo, hi;
	ft_dist_shard(10, 3, 0, &lo, &hi);
	ok(lo == 0 && hi == 4, "10 over 3: rank 0 takes [0, 4) (the remainder goes first)");
	ft_dist_shard(10, 3, 2, &lo, &hi);
	ok(lo == 7 && hi == 10, "10 over 3: rank 2 takes [7, 10)");

	int owners[6];
	for (int i = 0; i < 6; i++) owners[i] = ft_dist_owner(i, 2);
	ok(owners[0] == 0 && owners[1] == 1 && owners[4] == 0 && owners[5] == 1,
	   "2 ranks: micro-batch i is rank i %% 2's");
	ok(ft_dist_owner(5, 1) == 0 && ft_dist_owner(5, 0) == 0, "one rank owns everything");
	ok(ft_dist_step_batches(4, 2) == 8 && ft_dist_step_batches(4, 1) == 4 &&
	   ft_dist_step_batches(3, 0) == 3, "a step holds ranks x accumulation micro-batches");

	/* a NULL job is one process: collectives leave the data alone */
	float x[3] = { 1, 2, 3 };
	double y[2] = { 4, 5 };
	ok(ft_dist_size(NULL) == 1 && ft_dist_rank(NULL) == 0 && !ft_dist_nccl_active(NULL),
	   "NULL job: rank 0 of 1, no NCCL");
	ok(ft_dist_sum_f32(NULL, x, 3, "t") == 0 && ft_dist_sum_f64(NULL, y, 2, "t") == 0 &&
	   ft_dist_bcast(NULL, x, sizeof x, 0, "t") == 0 && ft_dist_barrier(NULL, "t") == 0 &&
	   ft_dist_sum_f64_watched(NULL, y, 2, "t") == 0 && ft_dist_send(NULL, x, 4, 0, "t") == 0 &&
	   ft_dist_recv(NULL, x, 4, 0, "t") == 0 && ft_dist_comm_seconds(NULL) == 0 &&
	   x[2] == 3 && y[1] == 5, "NULL job: collectives are no-ops");

	/* ZeRO-1 on one rank: the sliced optimizer over views == ft_adamw */
	ft_param a[3] = { mk("a", 37, 1, 1), mk("b", 5, 0, 2), mk("c", 130, 1, 3) };
	ft_param b[3] = { mk("a", 37, 1, 1), mk("b", 5, 0, 2), mk("c", 130, 1, 3) };
	ft_param *pa[3] = { &a[0], &a[1], &a[2] }, *pb[3] = { &b[0], &b[1], &b[2] };
	ft_adamw_opts o = { 0.9, 0.999, 1e-8, 0.1 };
	ft_adamw *ref = ft_adamw_new(pa, 3, &o);
	ft_zero1 *z = ft_zero1_new(NULL, pb, 3, &o);
	size_t total;
	ok(ft_zero1_slice(z, &total) == 172 && total == 172, "one rank's slice is all 172 elements");
	int same = 1;
	for (int step = 0; step < 5; step++) {
		for (int k = 0; k < 3; k++)
			for (size_t i = 0; i < a[k].n; i++)
				a[k].g[i] = b[k].g[i] = (float)((i * 7 + k * 3 + step) % 11) / 11 - 0.4f;
		ft_adamw_step(ref, 1e-2);
		same &= ft_zero1_step(z, 1e-2) == 0;
	}
	for (int k = 0; k < 3; k++) same &= !memcmp(a[k].w, b[k].w, a[k].n * sizeof(float));
	ok(same, "5 ZeRO-1 steps: weights bit-identical to ft_adamw's");
	/* a checkpoint streamed from the slices (one rank: its own pieces
	 * only) is byte for byte ft_adamw's file, and a resume from it puts
	 * the state back into a fresh slice optimizer */
	ft_adamw *full = ft_adamw_new(pb, 3, &o);
	ft_adamw_drop_moments(full);
	char dir[] = "/tmp/test_dist.XXXXXX";
	if (!mkdtemp(dir)) return 1;
	char *fz = ft_xasprintf("%s/zero.safetensors", dir), *fr = ft_xasprintf("%s/ref.safetensors", dir);
	ok(ft_zero1_save(z, full) == 0 && ft_adamw_save(full, fz) == 0 && ft_adamw_save(ref, fr) == 0 &&
	   ft_adamw_steps(full) == 5, "save: the slices stream into the file, step 5");
	ok(same_file(fz, fr), "the streamed file is ft_adamw's, byte for byte");
	ft_zero1 *z2 = ft_zero1_new(NULL, pb, 3, &o);
	ft_adamw *loaded = ft_adamw_new(pb, 3, &o);
	ft_adamw_drop_moments(loaded);
	ok(ft_zero1_load(z2, loaded, fz) == 0 && ft_adamw_steps(loaded) == 5, "load: step 5 loaded");
	ft_adamw_step(ref, 1e-2);
	ft_zero1_step(z2, 1e-2);
	same = 1;
	for (int k = 0; k < 3; k++) same &= !memcmp(a[k].w, b[k].w, a[k].n * sizeof(float));
	ok(same, "load then step: still bit-identical (resume path)");
	/* a missing file fails with its name */
	char *none = ft_xasprintf("%s/none.safetensors", dir);
	ok(ft_zero1_load(z2, loaded, none) < 0 && strstr(ft_errmsg(), "none.safetensors"),
	   "load: a missing file fails naming it");
	unlink(fz);
	unlink(fr);
	rmdir(dir);
	free(fz);
	free(fr);
	free(none);
	ft_adamw_free(loaded);
	/* trainer_log.jsonl: world_size on a DP run's lines only */
	ft_trainlog_entry e, back;
	ft_trainlog_entry_init(&e);
	e.current_steps = 3;
	e.loss = 1.5;
	char *one = ft_trainlog_format(&e);
	e.world_size = 4;
	char *four = ft_trainlog_format(&e);
	ok(!strstr(one, "world_size") && strstr(four, "\"world_size\": 4") &&
	   ft_trainlog_parse(four, strlen(four), &back) == 0 && back.world_size == 4 &&
	   ft_trainlog_parse(one, strlen(one), &back) == 0 && back.world_size == -1,
	   "log lines: world_size written when > 1 and read back");
	free(one);
	free(four);
	ft_zero1_free(z);
	ft_zero1_free(z2);
	ft_adamw_free(ref);
	ft_adamw_free(full);
	for (int k = 0; k < 3; k++) { free(a[k].w); free(a[k].g); free(b[k].w); free(b[k].g); }
	return tap_done();
}
