/* dist_mpi.c - libft_mpi.so, the MPI shim (see dist_internal.h).
 * Built with mpicc, never part of libft.a; each function is the plain
 * MPI call over MPI_COMM_WORLD, split where MPI's int counts require. */
#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "train/dist_internal.h"

/* 2^30 elements per call: below INT_MAX for any element size we use */
#define PIECE ((size_t)1 << 30)

static int s_init(int *rank, int *size, int *serialized)
{
	int inited = 0, rc, provided = MPI_THREAD_SINGLE;
	MPI_Initialized(&inited);
	/* serialized: the gradient sum runs on a thread of its own beside the
	 * backward (lib/train/trainer_dist.c) */
	if (!inited && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided)) != MPI_SUCCESS)
		return rc;
	if (inited) MPI_Query_thread(&provided);
	*serialized = provided >= MPI_THREAD_SERIALIZED;
	/* errors come back as codes, so the trainer can say which
	 * collective failed instead of MPI aborting the job silently */
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	MPI_Comm_rank(MPI_COMM_WORLD, rank);
	return MPI_Comm_size(MPI_COMM_WORLD, size);
}

static int s_allreduce_sum(void *buf, size_t n, int f64)
{
	size_t es = f64 ? sizeof(double) : sizeof(float);
	for (size_t off = 0; off < n; off += PIECE) {
		size_t k = n - off < PIECE ? n - off : PIECE;
		int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * es, (int)k,
				       f64 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return 0;
}

static int s_bcast(void *buf, size_t bytes, int root)
{
	for (size_t off = 0; off < bytes; off += PIECE) {
		size_t k = bytes - off < PIECE ? bytes - off : PIECE;
		int rc = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return 0;
}

static int s_send(const void *buf, size_t bytes, int dest)
{
	for (size_t off = 0; off < bytes; off += PIECE) {
		size_t k = bytes - off < PIECE ? bytes - off : PIECE;
		int rc = MPI_Send((const char *)buf + off, (int)k, MPI_BYTE, dest, 0, MPI_COMM_WORLD);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return 0;
}

static int s_recv(void *buf, size_t bytes, int src)
{
	for (size_t off = 0; off < bytes; off += PIECE) {
		size_t k = bytes - off < PIECE ? bytes - off : PIECE;
		int rc = MPI_Recv((char *)buf + off, (int)k, MPI_BYTE, src, 0, MPI_COMM_WORLD,
				  MPI_STATUS_IGNORE);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return 0;
}

#define ARRIVED_TAG 7019

/* The arrival notes to rank 0 and a non-blocking all-reduce, polled until
 * it completes or the time is up.  Small messages only (the per-step loss
 * sum), where MPI_Iallreduce costs what MPI_Allreduce does. */
static int s_sum_watched(void *buf, size_t n, int f64, double timeout, unsigned char *missing)
{
	int rank, size, rc, one = 1, flag = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	MPI_Request *arr = calloc((size_t)size, sizeof *arr), red;
	int *got = calloc((size_t)size, sizeof *got);
	if (!arr || !got) {
		free(arr);
		free(got);
		return MPI_ERR_NO_MEM;
	}
	for (int r = 0; r < size; r++) arr[r] = MPI_REQUEST_NULL;
	if (rank == 0) {
		for (int r = 1; r < size; r++)
			MPI_Irecv(&got[r], 1, MPI_INT, r, ARRIVED_TAG, MPI_COMM_WORLD, &arr[r]);
	} else {
		MPI_Isend(&one, 1, MPI_INT, 0, ARRIVED_TAG, MPI_COMM_WORLD, &arr[0]);
	}
	rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, f64 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM,
			    MPI_COMM_WORLD, &red);
	double deadline = MPI_Wtime() + timeout;
	while (rc == MPI_SUCCESS && (rc = MPI_Test(&red, &flag, MPI_STATUS_IGNORE)) == MPI_SUCCESS && !flag) {
		if (MPI_Wtime() > deadline) {
			for (int r = 0; r < size; r++) {
				int done = 1;
				if (rank == 0 && r > 0) MPI_Test(&arr[r], &done, MPI_STATUS_IGNORE);
				missing[r] = rank == 0 && !done;
			}
			/* arr and got stay allocated: a late peer may still
			 * complete the requests, and the caller ends the job */
			return FTP_MPI_TIMEOUT;
		}
		sched_yield();
	}
	if (rc == MPI_SUCCESS)   /* everyone arrived: the notes are in */
		rc = MPI_Waitall(size, arr, MPI_STATUSES_IGNORE);
	free(arr);
	free(got);
	return rc;
}

static int s_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }
static void s_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static int s_finalize(void)
{
	int fin = 0;
	MPI_Finalized(&fin);
	return fin ? 0 : MPI_Finalize();
}

static void s_errstr(int code, char *buf, size_t n)
{
	char s[MPI_MAX_ERROR_STRING];
	int len = 0;
	if (MPI_Error_string(code, s, &len) != MPI_SUCCESS)
		snprintf(s, sizeof s, "MPI error %d", code);
	snprintf(buf, n, "%s", s);
}

static void s_version(char *buf, size_t n)
{
	char s[MPI_MAX_LIBRARY_VERSION_STRING];
	int len = 0;
	MPI_Get_library_version(s, &len);
	char *nl = strpbrk(s, ",\n");   /* "Open MPI v4.1.4" of "Open MPI v4.1.4, package: ..." */
	if (nl)
		*nl = 0;
	snprintf(buf, n, "%s", s);
}

static const ftp_mpi_api api = {
	FTP_MPI_ABI, sizeof(ftp_mpi_api), s_init, s_allreduce_sum, s_bcast, s_send, s_recv,
	s_sum_watched, s_barrier, s_abort, s_finalize, s_errstr, s_version,
};

__attribute__((visibility("default"))) const ftp_mpi_api *ftp_mpi_api_get(void) { return &api; }
