/* dist.c - ft-train as one rank of `mpirun -np N ft-train ...`
 * (lib/train/dist.h, docs/DISTRIBUTED.md): joining the job, words and
 * exits that name the rank, and the test hook that kills a rank. */
#define _GNU_SOURCE
#include "ft-train.h"
#include "train/dist.h"
#include "util/atomicfile.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static ft_dist *job;          /* open until dist_finish */
static char progname[64];
static struct timespec started;

/* The watchdog's end: the blocked collective cannot be cancelled, so the
 * process goes, and the launcher takes the others down. */
static void on_timeout(void *ctx, const char *msg)
{
	(void)ctx;
	ft_progress_done();
	fprintf(stderr, "ft-train: %s\n", msg);
	fflush(stderr);
	_exit(FT_EXIT_DATA);
}

/* A rank that exits before dist_finish (die, an error) ends the job at
 * once rather than leave the others in a collective until --ddp_timeout,
 * with its exit status (2: usage) as the job's. */
static void abort_job(int status, void *arg)
{
	(void)arg;
	if (job) ft_dist_abort(job, status ? status : FT_EXIT_DATA);
}

ft_dist *dist_start(ft_cli_args *c)
{
	if (!ft_dist_launched()) {
		if (c->zero && ft_verbose >= 1)
			warn("note: --zero 1 on one process: the optimizer state is not sharded "
			     "(start the ranks with mpirun -np N)");
		return NULL;
	}
	ft_dist *d = ft_dist_open(c->ddp_timeout, on_timeout, NULL);
	if (!d) die("%s", ft_errmsg());
	if (ft_dist_size(d) < 2) {   /* mpirun -np 1: one process, as without */
		ft_dist_close(d);
		return NULL;
	}
	job = d;
	clock_gettime(CLOCK_MONOTONIC, &started);
	on_exit(abort_job, NULL);
	/* every rank reads the batches; mpirun gives stdin to rank 0 only */
	for (size_t i = 0; i < c->n_train + c->n_val; i++)
		if (!strcmp(i < c->n_train ? c->train[i] : c->val[i - c->n_train], "-"))
			die_usage("--%s -: under mpirun every rank reads the batches, and only rank 0 "
				  "gets stdin: give the ft-pack output as a file or directory",
				  i < c->n_train ? "train" : "val");
	/* every message says which rank it comes from; only rank 0 shows
	 * progress and notes, as LLaMA-Factory logs on the main process */
	snprintf(progname, sizeof progname, "ft-train: rank %d", ft_dist_rank(d));
	ft_progname = progname;
	if (ft_dist_rank(d) != 0) ft_verbose = -1;
	return d;
}

void dist_finish(ft_dist *d)
{
	if (!d) return;
	job = NULL;
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	double run = (t.tv_sec - started.tv_sec) + 1e-9 * (t.tv_nsec - started.tv_nsec);
	double comm = ft_dist_comm_seconds(d);
	/* rank 0 waits for the others too: its share is the job's overhead */
	double exposed;
	long long ov = (long long)ft_dist_overlapped(d, &exposed);
	if (ft_verbose >= 1 && ov)
		warn("note: %d ranks (%s): %.3f s of %.3f s in collectives on rank 0; the gradient sums of "
		     "%lld step%s ran beside the backward, %.3f s of them not hidden by it", ft_dist_size(d),
		     ft_dist_version(d), comm, run, ov, ov == 1 ? "" : "s", exposed);
	else if (ft_verbose >= 1)
		warn("note: %d ranks (%s): %.3f s of %.3f s (%.1f%%) in collectives on rank 0",
		     ft_dist_size(d), ft_dist_version(d), comm, run, run > 0 ? 100 * comm / run : 0.0);
	ft_dist_close(d);
}

/* rank != 0: its private copy of rank 0's checkpoint, removed at exit */
static char *resume_copy;

static void remove_copy(int status, void *arg)
{
	(void)status;
	(void)arg;
	if (resume_copy) ft_remove_tree(resume_copy);
	free(resume_copy);
	resume_copy = NULL;
}

char *dist_resume(ft_dist *d, char *dir)
{
	if (!d) return dir;
	char *local = ft_dist_ckpt_share(d, dir, &resume_copy);
	if (!local) die("--resume_from_checkpoint %s: %s", dir ? dir : "(rank 0's)", ft_errmsg());
	if (resume_copy) on_exit(remove_copy, NULL);
	free(dir);
	return local;
}

/* Tests only: FT_DIST_TEST_FAULT=kill:R:S (or stop:R:S) kills (stops)
 * rank R after optimizer step S, to check that the others end the job. */
void dist_test_fault(int64_t step)
{
	static int parsed, rank = -1;
	static long long at = -1;
	static char how[8];
	const ft_dist *d = job;
	if (!d) return;
	if (!parsed) {
		parsed = 1;
		const char *v = getenv("FT_DIST_TEST_FAULT");
		if (!v || sscanf(v, "%7[a-z]:%d:%lld", how, &rank, &at) != 3) rank = -1;
	}
	if (rank != ft_dist_rank(d) || step != at) return;
	raise(!strcmp(how, "stop") ? SIGSTOP : SIGKILL);
}
