/* dist.h - data parallel across processes: ranks started by mpirun or
 * srun, gradients summed with MPI (CPU) or NCCL (GPU), and the watchdog
 * that ends a job whose peer died.  docs/DISTRIBUTED.md has the picture.
 *
 *   lib/train/dist.c        joining the job, collectives, watchdog, NCCL
 *   lib/train/dist_shard.c  which rank owns what (micro-batches, ZeRO-1
 *                           slices) and the sharded AdamW of --zero 1
 *   lib/train/dist_mpi.c    build/libft_mpi.so, the shim over <mpi.h>
 *
 * Without a launcher (plain ft-train) nothing here loads: every function
 * accepts a NULL ft_dist as the world of one process, in which the
 * collectives do nothing.  libmpi and libnccl are loaded with dlopen, so
 * the tools run on machines without either.
 */
#ifndef FT_DIST_H
#define FT_DIST_H

#include <stddef.h>
#include <stdint.h>
#include "model/model.h"
#include "train/optim.h"

typedef struct ft_dist ft_dist;

/* 1 when the environment says an MPI launcher started this process
 * (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK or SLURM's PMI variables
 * with more than one task), else 0. */
int ft_dist_launched(void);
/* The rank on this node (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID,
 * SLURM_LOCALID), 0 when unknown: the GPU a rank drives. */
int ft_dist_local_rank(void);

/* Join the job: load build/libft_mpi.so (found as libft_cuda.so is, or
 * $FT_MPI_LIB), MPI_Init, and start the watchdog.  A collective that
 * waits longer than timeout_s seconds (> 0) calls on_timeout(ctx, msg)
 * from the watchdog thread; msg names this rank, the collective and the
 * step.  on_timeout must end the process (the blocked MPI call cannot be
 * cancelled); NULL or timeout_s <= 0: no watchdog.  NULL after ft_fail. */
ft_dist *ft_dist_open(double timeout_s, void (*on_timeout)(void *ctx, const char *msg), void *ctx);
/* MPI_Finalize and free (d may be NULL). */
void ft_dist_close(ft_dist *d);
/* End every rank now (MPI_Abort): a rank that fails must not leave the
 * others waiting in a collective. */
void ft_dist_abort(ft_dist *d, int code);

int ft_dist_rank(const ft_dist *d);   /* 0 for NULL */
int ft_dist_size(const ft_dist *d);   /* 1 for NULL */
/* "Open MPI v4.1.4, ..." (the library's own words), "" for NULL. */
const char *ft_dist_version(const ft_dist *d);
/* Seconds this rank spent in collectives so far (waiting for slower ranks
 * included): the communication share of a run. */
double ft_dist_comm_seconds(const ft_dist *d);
/* Whether a thread other than the one that opened d may make the calls
 * (one thread at a time): MPI provided MPI_THREAD_SERIALIZED or more. */
int ft_dist_serialized(const ft_dist *d);
/* The trainer counts the gradient sums it ran beside a backward pass and
 * the seconds it still waited for them after the backward ended. */
void ft_dist_note_overlap(ft_dist *d, double exposed_s);
int64_t ft_dist_overlapped(const ft_dist *d, double *exposed_s);
/* The optimizer step the collectives belong to, for the watchdog's words. */
void ft_dist_set_step(ft_dist *d, int64_t step);

/* In place over all ranks; `what` names the exchange in errors. */
int ft_dist_sum_f32(ft_dist *d, float *x, size_t n, const char *what);
int ft_dist_sum_f64(ft_dist *d, double *x, size_t n, const char *what);
/* As ft_dist_sum_f64 for a few values (the per-step loss sum, the first
 * exchange of every step), polled: when it times out, rank 0 names the
 * ranks that never reached it (each rank tells rank 0 it arrived). */
int ft_dist_sum_f64_watched(ft_dist *d, double *x, size_t n, const char *what);
int ft_dist_bcast(ft_dist *d, void *buf, size_t bytes, int root, const char *what);
int ft_dist_barrier(ft_dist *d, const char *what);
/* Point to point (blocking): bytes from this rank to dest, or from src. */
int ft_dist_send(ft_dist *d, const void *buf, size_t bytes, int dest, const char *what);
int ft_dist_recv(ft_dist *d, void *buf, size_t bytes, int src, const char *what);
/* The watchdog around work that waits on other ranks without a call
 * here (NCCL's asynchronous all-reduce, until the step synchronizes). */
void ft_dist_watch(ft_dist *d, const char *what);
void ft_dist_unwatch(ft_dist *d);

/* ---- GPU: NCCL bootstrapped over MPI ----------------------------------
 * dlopen libnccl.so.2 ($FT_NCCL_LIB), rank 0's ncclGetUniqueId sent to
 * all with MPI_Bcast, ncclCommInitRank on the calling thread's current
 * CUDA device.  Then ft_dist_nccl_sum sums n floats of device memory in
 * place on a CUDA stream (cudaStream_t as void *); calls between
 * group_start and group_end are fused by NCCL into one launch. */
int ft_dist_nccl_open(ft_dist *d);
int ft_dist_nccl_active(const ft_dist *d);
int ft_dist_nccl_group(ft_dist *d, int start);
int ft_dist_nccl_sum(void *d, float *dev, size_t n, void *stream);
/* ZeRO-1 on GPUs: n floats of device memory from rank root to all, in
 * place (ncclBroadcast); ft_dist_nccl_group with a void * context, for
 * ft_cuda_zero_gather. */
int ft_dist_nccl_bcast(void *d, float *dev, size_t n, int root, void *stream);
int ft_dist_nccl_group_of(void *d, int start);

/* ---- sharding arithmetic (dist_shard.c) ------------------------------- */

/* Rank k's contiguous part [*lo, *hi) of total elements split n ways:
 * the first total % n ranks get one element more. */
void ft_dist_shard(size_t total, int n, int k, size_t *lo, size_t *hi);
/* Micro-batch i of an optimizer step (0-based, the manifest's order) is
 * rank i % n's: each rank takes every n-th one. */
static inline int ft_dist_owner(int64_t i, int n) { return n > 1 ? (int)(i % n) : 0; }
/* The micro-batches a step holds on all ranks together: n x accumulation
 * (the global batch in micro-batches). */
static inline int64_t ft_dist_step_batches(int accum, int n) { return (int64_t)accum * (n > 1 ? n : 1); }

/* ZeRO-1: this rank's AdamW over its slice of the trainable parameters
 * (concatenated in order and split by ft_dist_shard), so each rank keeps
 * 1/n of the moments.  step updates the slice, then every rank's updated
 * slice is broadcast to the others.  Checkpoints hold the whole state in
 * the single-process format, so a run resumes on any number of ranks. */
typedef struct ft_zero1 ft_zero1;
ft_zero1 *ft_zero1_new(ft_dist *d, ft_param *const *params, size_t n, const ft_adamw_opts *o);
void ft_zero1_free(ft_zero1 *z);
int ft_zero1_step(ft_zero1 *z, double lr);
/* A checkpoint of the slices into full (a whole-model ft_adamw over the
 * same params, its moments dropped), streamed: every rank takes part.  On
 * rank 0 full's moments become a fetch (ft_adamw_set_fetch) that
 * ft_adamw_save(full) runs tensor by tensor, receiving the tensor's pieces
 * from their owners just before it writes them; every other rank sends its
 * pieces in the same order and returns once rank 0 has taken the last, so
 * it waits (watched, --ddp_timeout) while rank 0 writes the checkpoint.  No
 * rank holds more than its slice and one tensor's pair of moments. */
int ft_zero1_save(ft_zero1 *z, ft_adamw *full);
/* A resume from the optimizer state file path: rank 0 reads it
 * (ft_adamw_load_each) and, tensor by tensor, broadcasts the weights into
 * every rank's params and sends each rank its piece of the moments; the
 * other ranks do not open path.  Every rank ends with the whole trainable
 * weights, full's step and its slice; full's moments stay dropped. */
int ft_zero1_load(ft_zero1 *z, ft_adamw *full, const char *path);
/* The same for a model that keeps its slice itself (the device): own_out
 * writes this rank's piece of the moments of full's k-th param at its
 * offsets into m and v (the param's size; the rest is not read), own_in
 * reads it from there.  s is the fetch's context on rank 0: it must
 * outlive the ft_adamw_save(full) that follows. */
typedef int (*ft_dist_own_out)(void *ctx, size_t k, float *m, float *v);
typedef int (*ft_dist_own_in)(void *ctx, size_t k, const float *m, const float *v);
typedef struct {
	ft_dist *d;
	ft_adamw *full;
	ft_dist_own_out own;
	void *ctx;
} ft_dist_moments;
int ft_dist_save_moments(ft_dist_moments *s, ft_dist *d, ft_adamw *full, ft_dist_own_out own, void *ctx);
int ft_dist_load_moments(ft_dist *d, ft_adamw *full, const char *path, ft_dist_own_in own, void *ctx);
/* ---- a resume from rank 0's checkpoint (dist_ckpt.c) -------------------
 * The checkpoint need be on rank 0's machine only.  ft_dist_ckpt_share
 * (every rank; dir is read on rank 0 only, the others may pass NULL):
 * rank 0 sends each file of dir but the weights and optimizer.safetensors
 * (which ft_dist_adamw_load and ft_dist_load_moments send tensor by
 * tensor) to the other ranks in pieces of at most 16 MiB; each writes them
 * into a private directory under $TMPDIR and returns its path, *tmp_root
 * set to the directory to remove (ft_remove_tree) when the resume is done.
 * Rank 0 returns a copy of dir, *tmp_root NULL.  One process: a copy of
 * dir.  NULL after ft_fail; a rank 0 that fails must end the job (the
 * others wait in a broadcast). */
char *ft_dist_ckpt_share(ft_dist *d, const char *dir, char **tmp_root);
/* ft_adamw_load of rank 0's file into every rank's a (weights, moments,
 * step), one tensor at a time: only rank 0 opens path. */
int ft_dist_adamw_load(ft_dist *d, ft_adamw *a, const char *path);
/* After a check every rank makes on the same bytes (a resume's settings
 * against the checkpoint's state; every rank passes its own rc): a failure
 * on rank 0 is reported by rank 0 only.  Rank 0 gets rc back; another rank
 * gets rc where rank 0 passed, and where rank 0 failed waits for rank 0 to
 * end the job (the watchdog ends a wait that lasts --ddp_timeout).  A
 * collective: every rank calls it at the same point. */
int ft_dist_rank0_verdict(ft_dist *d, int rc);
/* Elements of the slice this rank updates, and of all params. */
size_t ft_zero1_slice(const ft_zero1 *z, size_t *total);

#endif
