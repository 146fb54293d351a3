/* dist_ckpt.c - a resume under mpirun from a checkpoint that only rank 0's
 * machine has (dist.h; docs/DISTRIBUTED.md "Several machines").
 *
 * Checkpoints are written by rank 0 alone, so on a cluster without a
 * shared filesystem the other machines never see them.  At a resume rank 0
 * reads every file the trainer needs and sends it over the job's MPI:
 *
 *   - the optimizer state (optimizer.safetensors, which holds the trainable
 *     weights too) tensor by tensor, straight into every rank's params and
 *     moments (ft_dist_adamw_load; ZeRO-1's slices: ft_dist_load_moments);
 *   - every other file of the directory (trainer_state.json, scaler.json,
 *     rng_state.json, grpo_state.json, grpo_buffer.safetensors, the extras'
 *     optimizer states, ...) into a private copy on each other rank, in
 *     pieces of at most CHUNK bytes, so the stages' readers run unchanged
 *     on the same bytes: the resume is rank 0's bit for bit;
 *   - not the weights files (model*.safetensors, adapter_model.safetensors):
 *     a resume takes the trainable weights from the optimizer state and the
 *     frozen ones from --model_name_or_path.
 *
 * A failure on rank 0 is its own (it names the file); the tool then ends
 * the job (ft_dist_abort), which takes the other ranks out of the
 * broadcast they wait in.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "train/dist.h"
#include "util/atomicfile.h"
#include "util/error.h"

#define CHUNK ((size_t)16 << 20)   /* 16 MiB per broadcast */

static const char what[] = "checkpoint broadcast";

static int bcast_u64(ft_dist *d, uint64_t *x)
{
	return ft_dist_bcast(d, x, sizeof *x, 0, what);
}

/* Rank 0's *s to every rank (allocated there). */
static int bcast_str(ft_dist *d, char **s)
{
	uint64_t n = ft_dist_rank(d) == 0 ? strlen(*s) : 0;
	if (bcast_u64(d, &n) < 0) return -1;
	if (ft_dist_rank(d) != 0) {
		*s = ft_xmalloc(n + 1);
		(*s)[n] = 0;
	}
	return n ? ft_dist_bcast(d, *s, n, 0, what) : 0;
}

/* The weights files, which a resume does not read. */
static int weights_file(const char *name)
{
	size_t n = strlen(name);
	int st = n > 12 && !strcmp(name + n - 12, ".safetensors");
	return !strcmp(name, "optimizer.safetensors") || !strcmp(name, "adapter_model.safetensors") ||
	       !strcmp(name, "model.safetensors.index.json") || (st && !strncmp(name, "model", 5));
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rank 0: the regular files of dir to send, sorted. */
static char **list_files(const char *dir, size_t *n)
{
	DIR *dp = opendir(dir);
	*n = 0;
	if (!dp) {
		ft_fail("%s:", dir);
		return NULL;
	}
	char **v = NULL;
	size_t cap = 0;
	struct dirent *e;
	while ((e = readdir(dp))) {
		struct stat sb;
		char *f = ft_xasprintf("%s/%s", dir, e->d_name);
		int reg = stat(f, &sb) == 0 && S_ISREG(sb.st_mode);
		free(f);
		if (!reg || weights_file(e->d_name)) continue;
		if (*n == cap) v = ft_xrealloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v);
		v[(*n)++] = ft_xstrdup(e->d_name);
	}
	closedir(dp);
	if (*n) qsort(v, *n, sizeof *v, by_name);
	return v ? v : ft_xcalloc(1, sizeof *v);
}

/* One file: its size, then its bytes in pieces; rank 0 reads path, the
 * others write it. */
static int send_file(ft_dist *d, const char *path, char *buf)
{
	int root = ft_dist_rank(d) == 0;
	FILE *fp = fopen(path, root ? "rb" : "wb");
	if (!fp) return ft_fail("%s:", path);
	uint64_t size = 0;
	struct stat sb;
	int rc = 0;
	if (root && (fstat(fileno(fp), &sb) < 0 || sb.st_size < 0)) rc = ft_fail("%s:", path);
	if (root) size = (uint64_t)sb.st_size;
	if (rc == 0) rc = bcast_u64(d, &size);
	for (uint64_t off = 0; off < size && rc == 0; off += CHUNK) {
		size_t k = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		if (root && fread(buf, 1, k, fp) != k)
			rc = ferror(fp) ? ft_fail("%s:", path) : ft_fail("%s: shorter than it was", path);
		if (rc == 0) rc = ft_dist_bcast(d, buf, k, 0, what);
		if (rc == 0 && !root && fwrite(buf, 1, k, fp) != k) rc = ft_fail("%s:", path);
	}
	if (fclose(fp) != 0 && rc == 0 && !root) rc = ft_fail("%s:", path);
	return rc;
}

/* The other ranks' private directory: $TMPDIR/ft-resume-XXXXXX/NAME, NAME
 * the last part of rank 0's path (messages then read naturally). */
static char *private_dir(const char *dir, char **root)
{
	const char *t = getenv("TMPDIR");
	char *r = ft_xasprintf("%s/ft-resume-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(r)) {
		ft_fail("%s:", r);
		free(r);
		return NULL;
	}
	char *base = ft_xstrdup(dir);
	size_t n = strlen(base);
	while (n > 1 && base[n - 1] == '/') base[--n] = 0;   /* a trailing slash */
	const char *b = strrchr(base, '/') ? strrchr(base, '/') + 1 : base;
	char *l = ft_xasprintf("%s/%s", r, *b && strcmp(b, ".") && strcmp(b, "..") ? b : "checkpoint");
	free(base);
	if (mkdir(l, 0700) < 0) {
		ft_fail("%s:", l);
		ft_remove_tree(r);
		free(r);
		free(l);
		return NULL;
	}
	*root = r;
	return l;
}

char *ft_dist_ckpt_share(ft_dist *d, const char *dir, char **tmp_root)
{
	*tmp_root = NULL;
	if (ft_dist_size(d) < 2) return ft_xstrdup(dir);
	const int root = ft_dist_rank(d) == 0;
	char *name = root ? ft_xstrdup(dir) : NULL, *local = NULL, *buf = NULL;
	char **files = NULL;
	uint64_t n = 0;
	size_t nf = 0;
	int rc = -1;
	if (root && !(files = list_files(dir, &nf))) goto out;
	n = nf;
	if (bcast_str(d, &name) < 0 || bcast_u64(d, &n) < 0) goto out;
	local = root ? ft_xstrdup(dir) : private_dir(name, tmp_root);
	if (!local) goto out;
	if (!root) files = ft_xcalloc(n ? n : 1, sizeof *files);
	nf = n;
	buf = ft_xmalloc(CHUNK);
	rc = 0;
	for (size_t i = 0; i < nf && rc == 0; i++) {
		rc = bcast_str(d, &files[i]);
		if (rc == 0 && (!*files[i] || strchr(files[i], '/')))
			rc = ft_fail("%s: rank 0 sent a bad file name", name);
		char *f = rc == 0 ? ft_xasprintf("%s/%s", local, files[i]) : NULL;
		if (rc == 0) rc = send_file(d, f, buf);
		free(f);
	}
out:
	for (size_t i = 0; files && i < nf; i++) free(files[i]);
	free(files);
	free(buf);
	free(name);
	if (rc < 0 && *tmp_root) {
		ft_remove_tree(*tmp_root);
		free(*tmp_root);
		*tmp_root = NULL;
	}
	if (rc < 0) {
		free(local);
		local = NULL;
	}
	return local;
}

/* ---- the whole optimizer state (no ZeRO) ------------------------------- */

typedef struct {
	ft_dist *d;
	ft_adamw *a;
} whole;

/* The weights and both moments of one param (rank 0: as they were read),
 * every rank receiving into its own. */
static int bcast_param(ft_dist *d, ft_adamw *a, size_t k)
{
	const ft_param *p = ft_adamw_param(a, k);
	size_t bytes = p->n * sizeof(float);
	return ft_dist_bcast(d, p->w, bytes, 0, what) < 0 ||
	       ft_dist_bcast(d, ft_adamw_exp_avg(a, k), bytes, 0, what) < 0 ||
	       ft_dist_bcast(d, ft_adamw_exp_avg_sq(a, k), bytes, 0, what) < 0 ? -1 : 0;
}

/* Rank 0's put as tensor k is read: the step first (with the first
 * tensor), then the tensor's state into its own optimizer and to all. */
static int whole_put(void *ctx, size_t k, const float *m, const float *v)
{
	whole *w = ctx;
	int64_t step = ft_adamw_steps(w->a);
	size_t bytes = ft_adamw_param(w->a, k)->n * sizeof(float);
	if (k == 0 && ft_dist_bcast(w->d, &step, sizeof step, 0, what) < 0) return -1;
	memcpy(ft_adamw_exp_avg(w->a, k), m, bytes);
	memcpy(ft_adamw_exp_avg_sq(w->a, k), v, bytes);
	return bcast_param(w->d, w->a, k);
}

int ft_dist_adamw_load(ft_dist *d, ft_adamw *a, const char *path)
{
	if (ft_dist_size(d) < 2) return ft_adamw_load(a, path);
	whole w = { d, a };
	if (ft_dist_rank(d) == 0) return ft_adamw_load_each(a, path, whole_put, &w);
	int64_t step;
	if (ft_dist_bcast(d, &step, sizeof step, 0, what) < 0) return -1;
	ft_adamw_set_steps(a, step);
	for (size_t k = 0; k < ft_adamw_count(a); k++)
		if (bcast_param(d, a, k) < 0) return -1;
	return 0;
}

/* ---- rank 0's verdict ------------------------------------------------ */

int ft_dist_rank0_verdict(ft_dist *d, int rc)
{
	if (ft_dist_size(d) < 2) return rc;
	const int root = ft_dist_rank(d) == 0;
	double failed[2] = { root && rc < 0, rc < 0 };
	if (ft_dist_sum_f64_watched(d, failed, 2, "the resume's check") < 0) return -1;
	if (root || failed[0] == 0) return rc;
	/* rank 0 failed too and names the checkpoint as the user gave it:
	 * wait for it to end the job (ft_dist_abort) rather than race it with
	 * words about this rank's private copy; the watchdog still ends a
	 * wait rank 0 never ends */
	ft_dist_barrier(d, "rank 0's end of the job after its resume failed");
	return ft_fail("rank 0 could not resume (its message names the checkpoint)");
}
