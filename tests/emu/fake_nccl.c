/* fake_nccl.c - build/libnccl_emu.so: the part of NCCL 2's C API that
 * lib/train/dist.c calls, across the processes of one host, for the
 * emulated CUDA backend (build/libft_cuda_emu.so, whose device memory is
 * host memory).  FT_NCCL_LIB=build/libnccl_emu.so loads it where dist.c
 * loads libnccl.so.2 (tests/bats/ft-train-nccl-emu.bats).
 *
 * The communicator is shared memory with no name to leave behind: rank 0's
 * ncclGetUniqueId makes an anonymous file (memfd_create) and writes its pid
 * and descriptor into the id (sent to the others over MPI by dist.c); each
 * rank maps it through /proc/<pid>/fd/<fd>, and rank 0 closes the
 * descriptor once all have.  The memory goes with the last mapping, so no
 * /dev/shm segment outlives a rank that dies, is killed or times out, at
 * any point (a rank that comes after rank 0 died fails to open it:
 * ncclSystemError).  It holds a sense-reversing barrier and one staging
 * slot per rank.  ncclAllReduce
 * copies each rank's piece into its slot, meets the others, and every rank
 * adds the slots in rank order, ((x0 + x1) + x2) + ..., into its result,
 * so every rank gets the same bits and a rerun gives them again.  (Real
 * NCCL's ring or tree order is its own; only the bits of this emulation
 * are reproducible, not NCCL's.)  ncclBroadcast (ZeRO-1's all-gather of
 * the updated slices) copies the root's piece through slot 0.
 *
 * Calls run synchronously on the calling thread, whatever the stream (the
 * emulated runtime completes every call before returning as well), and
 * ncclGroupStart/End only count nesting: every rank issues the same calls
 * in the same order, which is all a blocking emulation needs.  Only sums
 * and broadcasts of float32 (and float64) are implemented; other types and operations
 * return ncclInvalidArgument, as an unsupported one would in NCCL.  A
 * peer that never arrives leaves the caller waiting: the trainer's
 * watchdog (--ddp_timeout) covers that, as it does for real NCCL.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

typedef struct { char internal[128]; } ncclUniqueId;
enum { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5 };
enum { ncclFloat32 = 7, ncclFloat64 = 8 };
enum { ncclSum = 0 };

#define ID_TAG "ft-nccl-emu "
#define MEMFD_NAME "ft-nccl-emu"
#define MEMFD_LINK "/memfd:" MEMFD_NAME   /* what /proc/<pid>/fd/<fd> reads */
#define SLOT ((size_t)4 << 20)   /* bytes staged per rank and round */

typedef struct {
	_Atomic unsigned count, sense;   /* zero-filled by ftruncate */
} shm_head;

typedef struct {
	int rank, n;
	shm_head *h;
	char *slots;                     /* n x SLOT */
	size_t bytes;
	unsigned sense;
} comm_t;

static __thread int group_depth;   /* NCCL's group state is per thread */

API const char *ncclGetErrorString(int rc)
{
	switch (rc) {
	case ncclSuccess: return "no error";
	case ncclSystemError: return "unhandled system error (fake NCCL: shared memory, or rank 0 gone)";
	case ncclInvalidArgument: return "invalid argument (fake NCCL: only float32/float64 sums)";
	case ncclInvalidUsage: return "invalid usage (fake NCCL: unbalanced group calls)";
	default: return "unknown NCCL error";
	}
}

API int ncclGetVersion(int *v)
{
	*v = 21804;   /* the 2.18 API dist.c declares */
	return ncclSuccess;
}

/* The id: the tag, then "<pid> <fd>" of rank 0's anonymous file. */
API int ncclGetUniqueId(ncclUniqueId *id)
{
	int fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC);
	if (fd < 0) return ncclSystemError;
	memset(id, 0, sizeof *id);
	snprintf(id->internal, sizeof id->internal, ID_TAG "%ld %d", (long)getpid(), fd);
	return ncclSuccess;
}

/* All n ranks meet; the segment's memory is ordered by the atomics. */
static void meet(comm_t *c)
{
	c->sense ^= 1u;
	if (atomic_fetch_add(&c->h->count, 1) + 1 == (unsigned)c->n) {
		atomic_store(&c->h->count, 0);
		atomic_store(&c->h->sense, c->sense);
		return;
	}
	for (unsigned spins = 0; atomic_load(&c->h->sense) != c->sense; spins++)
		if (spins > 64) {
			struct timespec t = { 0, 20000 };
			nanosleep(&t, NULL);
		} else {
			sched_yield();
		}
}

API int ncclCommInitRank(void **comm, int nranks, ncclUniqueId id, int rank)
{
	long pid;
	int owner_fd;
	if (strncmp(id.internal, ID_TAG, strlen(ID_TAG)) ||
	    sscanf(id.internal + strlen(ID_TAG), "%ld %d", &pid, &owner_fd) != 2 || nranks < 1 || rank < 0 ||
	    rank >= nranks)
		return ncclInvalidArgument;
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/fd/%d", pid, owner_fd);
	/* the number may be another file's once rank 0 closed ours (a rank
	 * arriving late, or twice): refuse anything but our anonymous file */
	char target[64] = "";
	if (readlink(path, target, sizeof target - 1) < 0 || strncmp(target, MEMFD_LINK, strlen(MEMFD_LINK)))
		return ncclSystemError;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) return ncclSystemError;
	size_t bytes = 64 + (size_t)nranks * SLOT;
	if (ftruncate(fd, (off_t)bytes) != 0) {   /* every rank: the same size */
		close(fd);
		return ncclSystemError;
	}
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) return ncclSystemError;
	comm_t *c = calloc(1, sizeof *c);
	if (!c) {
		munmap(p, bytes);
		return ncclSystemError;
	}
	c->rank = rank;
	c->n = nranks;
	c->h = p;
	c->slots = (char *)p + 64;
	c->bytes = bytes;
	meet(c);   /* everyone has it mapped: the owner's descriptor can go */
	if (pid == (long)getpid()) close(owner_fd);
	*comm = c;
	return ncclSuccess;
}

API int ncclCommDestroy(void *comm)
{
	comm_t *c = comm;
	if (!c) return ncclSuccess;
	munmap(c->h, c->bytes);
	free(c);
	return ncclSuccess;
}

#define SUM_PIECE(T) do { \
		T *out = (T *)((char *)recv + off); \
		for (size_t i = 0; i < k / sizeof(T); i++) { \
			T s = ((const T *)c->slots)[i]; \
			for (int r = 1; r < c->n; r++) s += ((const T *)(c->slots + (size_t)r * SLOT))[i]; \
			out[i] = s; \
		} \
	} while (0)

API int ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op, void *comm,
		      void *stream)
{
	(void)stream;   /* synchronous: the emulated streams are too */
	comm_t *c = comm;
	if (!c || op != ncclSum || (dtype != ncclFloat32 && dtype != ncclFloat64))
		return ncclInvalidArgument;
	size_t es = dtype == ncclFloat64 ? 8 : 4, total = count * es;
	for (size_t off = 0; off < total; off += SLOT) {
		size_t k = total - off < SLOT ? total - off : SLOT;
		memcpy(c->slots + (size_t)c->rank * SLOT, (const char *)send + off, k);
		meet(c);   /* every slot is filled */
		if (es == 8) SUM_PIECE(double);
		else SUM_PIECE(float);
		meet(c);   /* every rank has read them: the slots may be reused */
	}
	return ncclSuccess;
}

/* ZeRO-1's all-gather (lib/cuda/zero.cu): the root stages its piece, the
 * ranks meet, the others copy it out, and they meet again before the slot
 * is reused.  Bytes are copied, so every rank gets the root's bits. */
API int ncclBroadcast(const void *send, void *recv, size_t count, int dtype, int root, void *comm,
		      void *stream)
{
	(void)stream;
	comm_t *c = comm;
	if (!c || root < 0 || root >= c->n || (dtype != ncclFloat32 && dtype != ncclFloat64))
		return ncclInvalidArgument;
	size_t total = count * (dtype == ncclFloat64 ? 8 : 4);
	for (size_t off = 0; off < total; off += SLOT) {
		size_t k = total - off < SLOT ? total - off : SLOT;
		if (c->rank == root) memcpy(c->slots, (const char *)send + off, k);
		meet(c);   /* the root's piece is staged */
		if (c->rank != root) memcpy((char *)recv + off, c->slots, k);
		else if (recv != send) memmove((char *)recv + off, (const char *)send + off, k);
		meet(c);   /* every rank has it: the slot may be reused */
	}
	return ncclSuccess;
}

API int ncclGroupStart(void)
{
	group_depth++;
	return ncclSuccess;
}

API int ncclGroupEnd(void)
{
	if (group_depth == 0) return ncclInvalidUsage;
	group_depth--;
	return ncclSuccess;
}
