/* test_fake_nccl.c - the emulated NCCL (tests/emu/fake_nccl.c,
 * build/libnccl_emu.so) leaves nothing behind: its communicator is an
 * anonymous file, never a /dev/shm name, so a rank that dies (here one
 * SIGKILLed right after a sum) cannot leak a segment; rank 0's descriptor
 * is closed once every rank has mapped it, so nothing stays open either.
 * Two forked ranks also check the sum itself. */
#define _GNU_SOURCE
#include "tap.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct { char internal[128]; } nccl_id;
typedef int (*get_id_fn)(nccl_id *);
typedef int (*init_fn)(void **, int, nccl_id, int);
typedef int (*allreduce_fn)(const void *, void *, size_t, int, int, void *, void *);
typedef int (*destroy_fn)(void *);

#define LIB "build/libnccl_emu.so"

/* This process's shared mappings of the communicator: how many are
 * anonymous files (memfd) and how many live in /dev/shm. */
static void mappings(int *memfd, int *shm)
{
	*memfd = *shm = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	while (f && fgets(line, sizeof line, f)) {
		if (strstr(line, "/memfd:ft-nccl-emu")) ++*memfd;
		if (strstr(line, "/dev/shm/")) ++*shm;
	}
	if (f) fclose(f);
}

/* The /dev/shm entries named as the earlier fake NCCL named its segments. */
static int shm_names(void)
{
	FILE *p = popen("ls /dev/shm 2>/dev/null | grep -c '^ftnccl-'", "r");
	int n = -1;
	if (p && fscanf(p, "%d", &n) != 1) n = -1;
	if (p) pclose(p);
	return n;
}

int main(void)
{
	void *h = dlopen(LIB, RTLD_NOW);
	if (!h) {
		skip("%s is not built (make unit)", LIB);
		return tap_done();
	}
	get_id_fn get_id = (get_id_fn)dlsym(h, "ncclGetUniqueId");
	init_fn init = (init_fn)dlsym(h, "ncclCommInitRank");
	allreduce_fn allreduce = (allreduce_fn)dlsym(h, "ncclAllReduce");
	destroy_fn destroy = (destroy_fn)dlsym(h, "ncclCommDestroy");
	if (!ok(get_id && init && allreduce && destroy, "the NCCL calls are there")) return tap_done();
	int before = shm_names();
	nccl_id id;
	if (!ok(get_id(&id) == 0, "ncclGetUniqueId")) return tap_done();
	long pid;
	int fd;
	ok(sscanf(id.internal, "ft-nccl-emu %ld %d", &pid, &fd) == 2 && pid == getpid(),
	   "the id names rank 0's process and descriptor");
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {   /* rank 1: a sum, then it dies */
		void *c;
		float x = 2, y = 0;
		close(fd);   /* not inherited in a real job: it opens rank 0's through /proc */
		if (init(&c, 2, id, 1) != 0 || allreduce(&x, &y, 1, 7, 0, c, NULL) != 0 || y != 3) _exit(1);
		raise(SIGKILL);
		_exit(2);
	}
	void *c = NULL;
	float x = 1, y = 0;
	ok(init(&c, 2, id, 0) == 0, "rank 0 joins rank 1");
	ok(allreduce(&x, &y, 1, 7, 0, c, NULL) == 0 && y == 3, "the two ranks' sum: 1 + 2 = 3");
	int memfd, shm;
	mappings(&memfd, &shm);
	ok(memfd == 1 && shm == 0, "the communicator is an anonymous file, no /dev/shm name (%d, %d)", memfd,
	   shm);
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ok(access(path, F_OK) != 0, "rank 0's descriptor closed once both ranks mapped it");
	int st = 0;
	waitpid(child, &st, 0);
	ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "rank 1 summed and was killed");
	ok(shm_names() == before, "nothing of it in /dev/shm after the kill");
	ok(destroy(c) == 0, "ncclCommDestroy");
	mappings(&memfd, &shm);
	ok(memfd == 0, "nothing mapped after ncclCommDestroy");
	/* a rank arriving after the others are gone: an error, not a new segment */
	nccl_id late = id;
	void *c2 = NULL;
	ok(init(&c2, 2, late, 1) != 0 && shm_names() == before, "a late rank fails and creates nothing");
	dlclose(h);
	return tap_done();
}
