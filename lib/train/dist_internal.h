/* dist_internal.h - the one table between libft.a and libft_mpi.so.
 *
 * ft-train must start on machines without an MPI runtime, so libft.a
 * never links libmpi: lib/train/dist_mpi.c is compiled with mpicc into
 * build/libft_mpi.so (by make, whenever mpicc is present) and loaded with
 * dlopen only when the process was started by mpirun or srun
 * (lib/train/dist.c).  Going through a shim compiled against <mpi.h>,
 * rather than declaring MPI's functions here, keeps ft independent of an
 * implementation's ABI: MPI_COMM_WORLD is a pointer in Open MPI and an int
 * in MPICH, and only the shim sees either.
 *
 * Counts are size_t here; the shim splits calls into pieces MPI's int
 * counts can hold.  Every call returns 0 or an MPI error code, which
 * errstr turns into words.  FTP_MPI_ABI changes whenever this struct does.
 */
#ifndef FTP_DIST_INTERNAL_H
#define FTP_DIST_INTERNAL_H

#include <stddef.h>

#define FTP_MPI_ABI 2
#define FTP_MPI_API_SYMBOL "ftp_mpi_api_get"
#define FTP_MPI_TIMEOUT (-2)

typedef struct {
	int abi;
	size_t size;                 /* sizeof(ftp_mpi_api) where it was built */
	/* *serialized: 1 when any thread may call MPI, one at a time
	 * (MPI_THREAD_SERIALIZED or more was provided) */
	int (*init)(int *rank, int *size, int *serialized);
	/* in place, over MPI_COMM_WORLD; f64: double, else float */
	int (*allreduce_sum)(void *buf, size_t n, int f64);
	int (*bcast)(void *buf, size_t bytes, int root);
	/* point to point, blocking (ZeRO-1's gather to rank 0) */
	int (*send)(const void *buf, size_t bytes, int dest);
	int (*recv)(void *buf, size_t bytes, int src);
	/* allreduce_sum of n < 2^30 elements that gives up after timeout
	 * seconds (> 0), returning FTP_MPI_TIMEOUT; then on rank 0 the
	 * ranks that have not reached the call are flagged in missing[size]
	 * (every rank tells rank 0 it arrived, point to point). */
	int (*sum_watched)(void *buf, size_t n, int f64, double timeout, unsigned char *missing);
	int (*barrier)(void);
	void (*abort)(int code);
	int (*finalize)(void);
	void (*errstr)(int code, char *buf, size_t n);
	/* the MPI library's own version string ("Open MPI v4.1.4, ...") */
	void (*version)(char *buf, size_t n);
} ftp_mpi_api;

const ftp_mpi_api *ftp_mpi_api_get(void);

#endif
