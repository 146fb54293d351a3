/* dist.c - joining an MPI job, the collectives, the watchdog and NCCL;
 * see dist.h.  libft_mpi.so and libnccl.so.2 are loaded with dlopen, so
 * libft.a links neither. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "train/dist.h"
#include "train/dist_internal.h"
#include "model/device.h"
#include "util/error.h"

#define MPI_SO "libft_mpi.so"

/* NCCL's stable C API (nccl.h of 2.x), declared here so the build needs
 * no NCCL headers: ids are 128 opaque bytes, communicators pointers,
 * ncclFloat32 = 7, ncclSum = 0, ncclSuccess = 0. */
typedef struct { char internal[128]; } nccl_id;
typedef int (*nccl_get_id_fn)(nccl_id *);
typedef int (*nccl_init_rank_fn)(void **comm, int nranks, nccl_id id, int rank);
typedef int (*nccl_allreduce_fn)(const void *, void *, size_t, int dtype, int op, void *comm,
				 void *stream);
typedef int (*nccl_bcast_fn)(const void *, void *, size_t, int dtype, int root, void *comm,
			     void *stream);
typedef int (*nccl_void_fn)(void);
typedef int (*nccl_destroy_fn)(void *comm);
typedef const char *(*nccl_errstr_fn)(int);
enum { NCCL_FLOAT32 = 7, NCCL_SUM = 0 };

struct ft_dist {
	int rank, size;
	int serialized;              /* MPI_THREAD_SERIALIZED provided */
	int64_t overlapped;          /* gradient sums run beside a backward */
	double exposed_s;            /* their time not hidden by it */
	void *so;
	const ftp_mpi_api *mpi;
	char version[256];
	/* watchdog */
	double timeout;
	void (*on_timeout)(void *, const char *);
	void *ctx;
	pthread_t wd;
	int wd_on, quit;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	const char *what;        /* the collective in progress, NULL when none */
	double since;
	int64_t step;
	double t0, comm_s;       /* the collective in progress began; all of them took */
	/* NCCL */
	void *nccl, *comm;
	nccl_allreduce_fn allreduce;
	nccl_bcast_fn bcast;          /* ZeRO-1's all-gather; NULL: not loaded */
	nccl_void_fn group_start, group_end;
	nccl_destroy_fn destroy;
	nccl_errstr_fn errstr;
};

static long env_long(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? strtol(v, NULL, 10) : -1;
}

int ft_dist_launched(void)
{
	/* Open MPI's mpirun, MPICH/Intel (PMI), PMIx launchers (Open MPI 5,
	 * srun --mpi=pmix), srun with PMI2 */
	return env_long("OMPI_COMM_WORLD_SIZE") > 0 || env_long("PMI_SIZE") > 0 ||
	       getenv("PMIX_RANK") != NULL;
}

int ft_dist_local_rank(void)
{
	static const char *const names[] = { "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
					     "PMI_LOCAL_RANK", "SLURM_LOCALID" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		long v = env_long(names[i]);
		if (v >= 0) return (int)v;
	}
	return 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* ---- loading the shim ------------------------------------------------------ */

/* RTLD_GLOBAL: Open MPI loads its own components with dlopen and they
 * resolve symbols of libmpi, which must therefore be global. */
static void *open_shim(char *why, size_t n)
{
	const char *env = getenv("FT_MPI_LIB");
	if (env && *env) {
		void *h = dlopen(env, RTLD_NOW | RTLD_GLOBAL);
		if (!h) snprintf(why, n, "FT_MPI_LIB=%s: %s", env, dlerror());
		return h;
	}
	char dir[PATH_MAX - 64];
	if (ft_device_exe_dir(dir, sizeof dir) < 0) {
		snprintf(why, n, "cannot read /proc/self/exe to find " MPI_SO " (set FT_MPI_LIB)");
		return NULL;
	}
	static const char *const rel[] = { "", "../lib/ft/", "../build/", "../", "../../" };
	for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s" MPI_SO, dir, rel[i]);
		if (access(p, F_OK) != 0) continue;
		void *h = dlopen(p, RTLD_NOW | RTLD_GLOBAL);
		if (!h) snprintf(why, n, "%s does not load: %s", p, dlerror());
		return h;
	}
	snprintf(why, n, MPI_SO " is not beside %s (build it with make where mpicc is installed: "
		 "Debian's libopenmpi-dev; or set FT_MPI_LIB)", dir);
	return NULL;
}

static int mpi_fail(ft_dist *d, int code, const char *what)
{
	char s[512];
	d->mpi->errstr(code, s, sizeof s);
	return ft_fail("rank %d: %s: %s", d->rank, what, s);
}

/* ---- watchdog ---------------------------------------------------------------- */

static void *watchdog(void *arg)
{
	ft_dist *d = arg;
	pthread_mutex_lock(&d->mu);
	while (!d->quit) {
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_nsec += 250 * 1000000L;
		if (t.tv_nsec >= 1000000000L) { t.tv_sec++; t.tv_nsec -= 1000000000L; }
		pthread_cond_timedwait(&d->cv, &d->mu, &t);
		if (d->quit || !d->what || now_s() - d->since <= d->timeout) continue;
		char msg[512];
		snprintf(msg, sizeof msg, "rank %d of %d: the %s of step %lld has waited %.0f s "
			 "(--ddp_timeout): another rank died or hangs; stopping the job", d->rank,
			 d->size, d->what, (long long)d->step, d->timeout);
		pthread_mutex_unlock(&d->mu);
		d->on_timeout(d->ctx, msg);   /* does not return */
		pthread_mutex_lock(&d->mu);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

static void arm(ft_dist *d, const char *what)
{
	d->t0 = now_s();
	if (!d->wd_on) return;
	pthread_mutex_lock(&d->mu);
	d->what = what;
	d->since = now_s();
	pthread_mutex_unlock(&d->mu);
}

static void disarm(ft_dist *d)
{
	d->comm_s += now_s() - d->t0;
	if (!d->wd_on) return;
	pthread_mutex_lock(&d->mu);
	d->what = NULL;
	pthread_mutex_unlock(&d->mu);
}

/* ---- the job ----------------------------------------------------------------- */

ft_dist *ft_dist_open(double timeout_s, void (*on_timeout)(void *, const char *), void *ctx)
{
	char why[PATH_MAX + 512];
	void *so = open_shim(why, sizeof why);
	if (!so) {
		ft_fail("started by an MPI launcher, but %s", why);
		return NULL;
	}
	const ftp_mpi_api *(*get)(void) = (const ftp_mpi_api *(*)(void))dlsym(so, FTP_MPI_API_SYMBOL);
	const ftp_mpi_api *a = get ? get() : NULL;
	if (!a || a->abi != FTP_MPI_ABI || a->size != sizeof *a) {
		ft_fail(MPI_SO " is from another build of ft (ABI %d, this tool's %d): rebuild it "
			"with this tree's make", a ? a->abi : -1, FTP_MPI_ABI);
		dlclose(so);
		return NULL;
	}
	ft_dist *d = ft_xcalloc(1, sizeof *d);
	d->so = so;
	d->mpi = a;
	int rc = a->init(&d->rank, &d->size, &d->serialized);
	if (rc) {
		mpi_fail(d, rc, "MPI_Init");
		free(d);
		return NULL;
	}
	a->version(d->version, sizeof d->version);
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	if (timeout_s > 0 && on_timeout) {
		d->timeout = timeout_s;
		d->on_timeout = on_timeout;
		d->ctx = ctx;
		d->wd_on = pthread_create(&d->wd, NULL, watchdog, d) == 0;
	}
	return d;
}

void ft_dist_close(ft_dist *d)
{
	if (!d) return;
	if (d->wd_on) {
		pthread_mutex_lock(&d->mu);
		d->quit = 1;
		pthread_cond_signal(&d->cv);
		pthread_mutex_unlock(&d->mu);
		pthread_join(d->wd, NULL);
	}
	if (d->comm && d->destroy) d->destroy(d->comm);
	d->mpi->finalize();
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->cv);
	/* the shim stays loaded: Open MPI does not support being unloaded */
	free(d);
}

void ft_dist_abort(ft_dist *d, int code)
{
	if (d) d->mpi->abort(code);
}

int ft_dist_rank(const ft_dist *d) { return d ? d->rank : 0; }
int ft_dist_size(const ft_dist *d) { return d ? d->size : 1; }
const char *ft_dist_version(const ft_dist *d) { return d ? d->version : ""; }

double ft_dist_comm_seconds(const ft_dist *d) { return d ? d->comm_s : 0; }
int ft_dist_serialized(const ft_dist *d) { return d && d->serialized; }

void ft_dist_note_overlap(ft_dist *d, double exposed_s)
{
	if (!d) return;
	d->overlapped++;
	d->exposed_s += exposed_s;
}

int64_t ft_dist_overlapped(const ft_dist *d, double *exposed_s)
{
	if (exposed_s) *exposed_s = d ? d->exposed_s : 0;
	return d ? d->overlapped : 0;
}

void ft_dist_set_step(ft_dist *d, int64_t step)
{
	if (!d) return;
	if (d->wd_on) pthread_mutex_lock(&d->mu);   /* the watchdog reads it */
	d->step = step;
	if (d->wd_on) pthread_mutex_unlock(&d->mu);
}

static int done(ft_dist *d, int rc, const char *what)
{
	disarm(d);
	return rc ? mpi_fail(d, rc, what) : 0;
}

int ft_dist_sum_f32(ft_dist *d, float *x, size_t n, const char *what)
{
	if (!d || d->size < 2 || n == 0) return 0;
	arm(d, what);
	return done(d, d->mpi->allreduce_sum(x, n, 0), what);
}

int ft_dist_sum_f64(ft_dist *d, double *x, size_t n, const char *what)
{
	if (!d || d->size < 2 || n == 0) return 0;
	arm(d, what);
	return done(d, d->mpi->allreduce_sum(x, n, 1), what);
}

/* The timeout found by the polling call: rank 0 knows who did not come. */
static int watched_timeout(ft_dist *d, const unsigned char *missing, const char *what)
{
	char who[256] = "";
	size_t k = 0;
	int n = 0;
	for (int r = 0; r < d->size && k + 16 < sizeof who; r++)
		if (missing[r]) k += (size_t)snprintf(who + k, sizeof who - k, "%s%d", n++ ? ", " : "", r);
	char msg[768];
	if (n)
		snprintf(msg, sizeof msg, "rank %d of %d: rank%s %s did not reach the %s of step %lld "
			 "within %.0f s (--ddp_timeout): dead or hung; stopping the job", d->rank, d->size,
			 n > 1 ? "s" : "", who, what, (long long)d->step, d->timeout);
	else
		snprintf(msg, sizeof msg, "rank %d of %d: the %s of step %lld has waited %.0f s "
			 "(--ddp_timeout): another rank died or hangs; stopping the job", d->rank, d->size,
			 what, (long long)d->step, d->timeout);
	d->on_timeout(d->ctx, msg);   /* does not return */
	return ft_fail("%s", msg);
}

int ft_dist_sum_f64_watched(ft_dist *d, double *x, size_t n, const char *what)
{
	if (!d || d->size < 2 || n == 0) return 0;
	if (!d->wd_on || n >= ((size_t)1 << 30)) return ft_dist_sum_f64(d, x, n, what);
	unsigned char *missing = ft_xcalloc((size_t)d->size, 1);
	d->t0 = now_s();
	int rc = d->mpi->sum_watched(x, n, 1, d->timeout, missing);
	d->comm_s += now_s() - d->t0;
	if (rc == FTP_MPI_TIMEOUT) rc = watched_timeout(d, missing, what);
	else if (rc) rc = mpi_fail(d, rc, what);
	free(missing);
	return rc;
}

int ft_dist_bcast(ft_dist *d, void *buf, size_t bytes, int root, const char *what)
{
	if (!d || d->size < 2 || bytes == 0) return 0;
	arm(d, what);
	return done(d, d->mpi->bcast(buf, bytes, root), what);
}

int ft_dist_send(ft_dist *d, const void *buf, size_t bytes, int dest, const char *what)
{
	if (!d || d->size < 2 || bytes == 0) return 0;
	arm(d, what);
	return done(d, d->mpi->send(buf, bytes, dest), what);
}

int ft_dist_recv(ft_dist *d, void *buf, size_t bytes, int src, const char *what)
{
	if (!d || d->size < 2 || bytes == 0) return 0;
	arm(d, what);
	return done(d, d->mpi->recv(buf, bytes, src), what);
}

int ft_dist_barrier(ft_dist *d, const char *what)
{
	if (!d || d->size < 2) return 0;
	arm(d, what);
	return done(d, d->mpi->barrier(), what);
}

/* ---- NCCL -------------------------------------------------------------------- */

static int nccl_fail(ft_dist *d, int rc, const char *what)
{
	return ft_fail("rank %d: %s: %s", d->rank, what,
		       d->errstr ? d->errstr(rc) : "NCCL error");
}

int ft_dist_nccl_open(ft_dist *d)
{
	if (!d || d->size < 2 || d->comm) return 0;
	const char *env = getenv("FT_NCCL_LIB");
	const char *name = env && *env ? env : "libnccl.so.2";
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return ft_fail("rank %d: the GPU path sums gradients with NCCL, and %s does not load "
			       "(%s): install NCCL (libnccl2) or set FT_NCCL_LIB", d->rank, name, dlerror());
	nccl_get_id_fn get_id = (nccl_get_id_fn)dlsym(h, "ncclGetUniqueId");
	nccl_init_rank_fn init = (nccl_init_rank_fn)dlsym(h, "ncclCommInitRank");
	d->allreduce = (nccl_allreduce_fn)dlsym(h, "ncclAllReduce");
	d->bcast = (nccl_bcast_fn)dlsym(h, "ncclBroadcast");   /* checked where used */
	d->group_start = (nccl_void_fn)dlsym(h, "ncclGroupStart");
	d->group_end = (nccl_void_fn)dlsym(h, "ncclGroupEnd");
	d->destroy = (nccl_destroy_fn)dlsym(h, "ncclCommDestroy");
	d->errstr = (nccl_errstr_fn)dlsym(h, "ncclGetErrorString");
	if (!get_id || !init || !d->allreduce || !d->group_start || !d->group_end || !d->destroy) {
		dlclose(h);
		return ft_fail("rank %d: %s lacks the NCCL 2 API (ncclCommInitRank ...)", d->rank, name);
	}
	d->nccl = h;
	nccl_id id;
	memset(&id, 0, sizeof id);
	int rc;
	if (d->rank == 0 && (rc = get_id(&id)) != 0) return nccl_fail(d, rc, "ncclGetUniqueId");
	if (ft_dist_bcast(d, &id, sizeof id, 0, "NCCL id broadcast") < 0) return -1;
	arm(d, "NCCL communicator setup");
	rc = init(&d->comm, d->size, id, d->rank);
	disarm(d);
	if (rc) {
		d->comm = NULL;
		return nccl_fail(d, rc, "ncclCommInitRank");
	}
	return 0;
}

int ft_dist_nccl_active(const ft_dist *d) { return d && d->comm; }

int ft_dist_nccl_group(ft_dist *d, int start)
{
	if (!ft_dist_nccl_active(d)) return 0;
	int rc = start ? d->group_start() : d->group_end();
	return rc ? nccl_fail(d, rc, start ? "ncclGroupStart" : "ncclGroupEnd") : 0;
}

int ft_dist_nccl_sum(void *ctx, float *dev, size_t n, void *stream)
{
	ft_dist *d = ctx;
	if (!ft_dist_nccl_active(d) || n == 0) return 0;
	int rc = d->allreduce(dev, dev, n, NCCL_FLOAT32, NCCL_SUM, d->comm, stream);
	return rc ? nccl_fail(d, rc, "ncclAllReduce of the gradients") : 0;
}

int ft_dist_nccl_bcast(void *ctx, float *dev, size_t n, int root, void *stream)
{
	ft_dist *d = ctx;
	if (!ft_dist_nccl_active(d) || n == 0) return 0;
	if (!d->bcast) return ft_fail("rank %d: this NCCL has no ncclBroadcast (ZeRO-1)", d->rank);
	int rc = d->bcast(dev, dev, n, NCCL_FLOAT32, root, d->comm, stream);
	return rc ? nccl_fail(d, rc, "ncclBroadcast of the updated ZeRO-1 slices") : 0;
}

int ft_dist_nccl_group_of(void *ctx, int start) { return ft_dist_nccl_group(ctx, start); }

void ft_dist_watch(ft_dist *d, const char *what)
{
	if (d && d->size > 1) arm(d, what);
}

void ft_dist_unwatch(ft_dist *d)
{
	if (d && d->size > 1) disarm(d);
}
