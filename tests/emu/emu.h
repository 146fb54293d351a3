/* emu.h - the CUDA execution model emulated on the host: blocks of up to
 * 1024 threads over a 1-3D grid, __syncthreads, __syncwarp, warp
 * shuffles, static and dynamic shared memory.  Two users:
 *
 *  - tests/emu/test_*.cc include it, then a kernel header
 *    (lib/cuda/flash_kernels.cuh, norm_kernels.cuh, pref_kernels.cuh), and
 *    run those very kernels with launch() (256 threads unless told);
 *  - build/libft_cuda_emu.so: the real the .cu files of lib/cuda compiled by g++ as
 *    C++ against tests/emu/include/ (cuda_runtime.h, cublas_v2.h,
 *    cuda_fp16.h, cuda_bf16.h), which include this header; the launch
 *    sites are FT_LAUNCH (lib/cuda/common.cuh), an emulated launch here.
 *
 * How a launch runs.  Each CUDA thread is a fiber (its own stack, a
 * register switch in a few instructions: no OS thread per CUDA thread).
 * A block's fibers run on one OS thread, one at a time, each until it
 * reaches a barrier or returns; a __syncthreads releases when every live
 * thread of the block waits at one, a __syncwarp when every live thread of
 * the warp does (a thread that returned counts as arrived, as on sm_70+).
 * A barrier nobody can release (a __syncthreads inside a branch only some
 * threads take) aborts with the kernel's name: it is undefined on a GPU.
 * Blocks are spread over a persistent pool of OS threads (FT_EMU_THREADS,
 * default 2), so blocks of one launch really run concurrently and a
 * kernel whose blocks write the same memory is nondeterministic here too.
 * __shared__ is a thread_local static (one block per OS thread at a
 * time); dynamic shared memory is a per-thread heap block of exactly the
 * launch's size, filled with NaN before every block.  FT_EMU_ORDER=reverse
 * runs each block's threads in the opposite order between barriers: a
 * kernel that reads shared memory another thread wrote without a barrier
 * then gives a different result (what the tests compare).
 *
 * Not shown: timing and occupancy, warp-synchronous behaviour beyond the
 * barriers (threads of a warp do not run in lockstep here), intra-warp
 * races the barriers would hide, and memory-model effects (all memory is
 * coherent host memory).  Launches are synchronous (see cuda_runtime.h).
 */
#ifndef FT_TESTS_EMU_H
#define FT_TESTS_EMU_H

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FT_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "tests/emu/emu.h switches fiber stacks with x86-64 assembly"
#endif

/* ---- the CUDA built-in types ---- */
struct dim3 {
	unsigned x, y, z;
	constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;
typedef dim3 emu_dim3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define FA_DYNAMIC_SMEM(name) float *name = (float *)ft_emu::tls.smem
#define FA_TC_SMEM(name) unsigned char *name = (unsigned char *)ft_emu::tls.smem

namespace ft_emu {

enum { MAX_THREADS = 1024, STACK = 128 << 10 };
enum { READY, AT_BLOCK, AT_WARP, DONE };

struct fiber {
	void *sp;
	dim3 tid;
	int state;
};

/* One OS thread's state: its fibers and the block they run. */
struct worker {
	fiber f[MAX_THREADS];
	char *stacks;            /* MAX_THREADS stacks of STACK bytes */
	fiber *cur;
	void *sched_sp;
	dim3 bid, bdim, gdim;    /* the block this thread runs, the launch's shape */
	float *smem;
	size_t smem_cap;
	uint64_t xchg[MAX_THREADS];
#ifdef FT_EMU_ASAN
	const void *sched_bottom;
	size_t sched_size;
#endif
};

/* The launch every worker runs blocks of. */
struct job {
	void (*body)(void *);
	void *ctx;
	const char *name;
	dim3 grid, block;
	size_t smem;
	std::atomic<unsigned long> next;
	std::atomic<int> left;     /* workers still running blocks */
};

/* initial-exec: this pointer is read on every threadIdx; the __shared__
 * arrays keep the default model (too big for the static TLS surplus a
 * dlopen'ed object may use) */
#define FT_EMU_TLS
inline thread_local worker *tls_w FT_EMU_TLS;
struct tls_smem { float *smem; };
inline thread_local tls_smem tls;

extern "C" void ft_emu_switch(void **save, void *to);
__asm__(".text\n"
	".weak ft_emu_switch\n"
	".hidden ft_emu_switch\n"
	".type ft_emu_switch,@function\n"
	"ft_emu_switch:\n"
	"\tpushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n"
	"\tmovq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n"
	"\tpopq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n"
	"\tret\n"
	".size ft_emu_switch, .-ft_emu_switch\n");

inline job *cur_job;

/* fiber -> scheduler; done: the fiber's stack is finished with */
inline void yield_to_sched(int done)
{
	worker *w = tls_w;
#ifdef FT_EMU_ASAN
	void *fake = NULL;
	__sanitizer_start_switch_fiber(done ? NULL : &fake, w->sched_bottom, w->sched_size);
#endif
	ft_emu_switch(&w->cur->sp, w->sched_sp);
#ifdef FT_EMU_ASAN
	__sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

[[noreturn]] inline void trampoline()
{
#ifdef FT_EMU_ASAN
	__sanitizer_finish_switch_fiber(NULL, &tls_w->sched_bottom, &tls_w->sched_size);
#endif
	cur_job->body(cur_job->ctx);
	tls_w->cur->state = DONE;
	yield_to_sched(1);
	abort();   /* a finished fiber is never resumed */
}

inline char *stack_of(worker *w, unsigned t) { return w->stacks + (size_t)t * STACK; }

/* A fresh stack whose first switch "returns" into trampoline().  The
 * switch keeps the callee-saved registers but not MXCSR or the x87
 * control word: nothing here changes them.  The tops are staggered by
 * t % 64 cache lines: stacks a power of two apart would otherwise all
 * map to the same cache sets. */
inline void *fresh_sp(worker *w, unsigned t)
{
	uintptr_t top = (uintptr_t)(stack_of(w, t) + STACK - 64 * (t % 64)) & ~(uintptr_t)15;
	uint64_t *a = (uint64_t *)(top - 16);
	a[0] = (uint64_t)(uintptr_t)&trampoline;
	a[1] = 0;
	uint64_t *sp = a - 6;   /* r15, r14, r13, r12, rbx, rbp */
	for (int i = 0; i < 6; i++)
		sp[i] = 0;
	return sp;
}

inline worker *new_worker()
{
	worker *w = new worker();
	size_t bytes = (size_t)MAX_THREADS * STACK;
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "emu: cannot map fiber stacks\n");
		abort();
	}
	w->stacks = (char *)p;
	for (unsigned t = 0; t < MAX_THREADS; t++)   /* a guard page under each stack */
		mprotect(stack_of(w, t), 4096, PROT_NONE);
	return w;
}

inline void resume(worker *w, fiber *f, unsigned t)
{
	w->cur = f;
	f->state = READY;
#ifdef FT_EMU_ASAN
	void *fake = NULL;
	__sanitizer_start_switch_fiber(&fake, stack_of(w, t), STACK);
#endif
	(void)t;
	ft_emu_switch(&w->sched_sp, f->sp);
#ifdef FT_EMU_ASAN
	__sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

inline bool reverse_order()
{
	static const bool r = [] {
		const char *e = getenv("FT_EMU_ORDER");
		return e && !strcmp(e, "reverse");
	}();
	return r;
}

/* Run block bid of j on this OS thread. */
inline void run_block(worker *w, job *j, dim3 bid)
{
	unsigned n = j->block.x * j->block.y * j->block.z;
	if (j->smem > w->smem_cap) {
		/* 128-byte aligned, as a block's shared memory is at least:
		 * WMMA loads need 32 (tests/emu/include/mma.h checks) */
		void *m = NULL;
		free(w->smem);
		if (posix_memalign(&m, 128, j->smem ? j->smem : 1))
			abort();
		w->smem = (float *)m;
		w->smem_cap = j->smem;
	}
	for (size_t i = 0; i < j->smem / sizeof(float); i++)
		w->smem[i] = NAN;
	tls.smem = w->smem;
	w->bid = bid;
	w->bdim = j->block;
	w->gdim = j->grid;
	for (unsigned t = 0; t < n; t++) {
		fiber *f = &w->f[t];
		f->tid = dim3(t % j->block.x, t / j->block.x % j->block.y,
			      t / (j->block.x * j->block.y));
		f->sp = fresh_sp(w, t);
		f->state = READY;
	}
	bool rev = reverse_order();
	unsigned nw = (n + 31) / 32;
	for (;;) {
		for (unsigned i = 0; i < n; i++) {
			unsigned t = rev ? n - 1 - i : i;
			if (w->f[t].state == READY)
				resume(w, &w->f[t], t);
		}
		/* every fiber now waits or is done: release what can go on */
		bool any = false, live = false, all_block = true;
		for (unsigned wi = 0; wi < nw; wi++) {
			bool warp_all = true, warp_any = false;
			for (unsigned t = wi * 32; t < n && t < wi * 32 + 32; t++) {
				int s = w->f[t].state;
				if (s == DONE)
					continue;
				live = true;
				warp_all &= s == AT_WARP;
				warp_any |= s == AT_WARP;
				all_block &= s == AT_BLOCK;
			}
			if (warp_any && warp_all) {
				for (unsigned t = wi * 32; t < n && t < wi * 32 + 32; t++)
					if (w->f[t].state == AT_WARP)
						w->f[t].state = READY;
				any = true;
			}
		}
		if (!live)
			break;
		if (any)
			continue;
		if (all_block) {
			for (unsigned t = 0; t < n; t++)
				if (w->f[t].state == AT_BLOCK)
					w->f[t].state = READY;
			continue;
		}
		fprintf(stderr, "emu: kernel %s, block (%u,%u,%u): a barrier no thread can pass "
			"(__syncthreads or __syncwarp in divergent code)\n", j->name, bid.x, bid.y,
			bid.z);
		abort();
	}
}

inline void run_blocks(worker *w, job *j)
{
	unsigned long nb = (unsigned long)j->grid.x * j->grid.y * j->grid.z;
	for (;;) {
		unsigned long b = j->next.fetch_add(1);
		if (b >= nb)
			break;
		run_block(w, j, dim3(b % j->grid.x, b / j->grid.x % j->grid.y,
				     b / ((unsigned long)j->grid.x * j->grid.y)));
	}
}

/* The persistent pool: workers wait for a job, run its blocks, report. */
struct pool {
	std::mutex mu;
	std::condition_variable go, done;
	job *j = nullptr;
	unsigned long gen = 0;
	int nthreads = 1;
	std::vector<std::thread> ts;
};

inline pool *the_pool()
{
	static pool *p = [] {
		pool *q = new pool();
		const char *e = getenv("FT_EMU_THREADS");
		q->nthreads = e && atoi(e) > 0 ? atoi(e) : 2;
		for (int i = 1; i < q->nthreads; i++)
			q->ts.emplace_back([q] {
				tls_w = new_worker();
				unsigned long seen = 0;
				for (;;) {
					job *j;
					{
						std::unique_lock<std::mutex> l(q->mu);
						q->go.wait(l, [&] { return q->gen != seen; });
						seen = q->gen;
						j = q->j;
					}
					run_blocks(tls_w, j);
					std::lock_guard<std::mutex> l(q->mu);
					if (--j->left == 0)
						q->done.notify_all();
				}
			});
		for (auto &t : q->ts)
			t.detach();
		return q;
	}();
	return p;
}

/* Run body(ctx) as every thread of every block; returns when all are
 * done.  Not reentrant: one launch at a time (the backend has one host
 * thread; the tests too). */
inline void run(const char *name, dim3 grid, dim3 block, size_t smem, void (*body)(void *),
		void *ctx)
{
	static std::mutex one;
	std::lock_guard<std::mutex> l1(one);
	if (!tls_w)
		tls_w = new_worker();
	job j;
	j.body = body, j.ctx = ctx, j.name = name, j.grid = grid, j.block = block, j.smem = smem;
	j.next = 0;
	cur_job = &j;
	pool *p = the_pool();
	unsigned long nb = (unsigned long)grid.x * grid.y * grid.z;
	int helpers = nb > 1 ? p->nthreads - 1 : 0;
	if (helpers) {
		std::lock_guard<std::mutex> l(p->mu);
		j.left = helpers;
		p->j = &j;
		p->gen++;
		p->go.notify_all();
	}
	run_blocks(tls_w, &j);
	if (helpers) {
		std::unique_lock<std::mutex> l(p->mu);
		p->done.wait(l, [&] { return j.left == 0; });
	}
	cur_job = nullptr;
}

template <typename F> void call(void *f) { (*(F *)f)(); }

} /* namespace ft_emu */

/* ---- the CUDA built-ins the kernels use ---- */
#define threadIdx (ft_emu::tls_w->cur->tid)
#define blockIdx (ft_emu::tls_w->bid)
#define blockDim (ft_emu::tls_w->bdim)
#define gridDim (ft_emu::tls_w->gdim)

static inline void __syncthreads()
{
	ft_emu::tls_w->cur->state = ft_emu::AT_BLOCK;
	ft_emu::yield_to_sched(0);
}

static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
	(void)mask;
	ft_emu::tls_w->cur->state = ft_emu::AT_WARP;
	ft_emu::yield_to_sched(0);
}

/* the linear thread index, whose low 5 bits are the lane */
static inline unsigned ft_emu_tid()
{
	return (unsigned)(ft_emu::tls_w->cur - ft_emu::tls_w->f);
}

/* Lane arithmetic of the shuffles, as the PTX manual states it: width
 * splits the warp into segments; a source outside the segment reads the
 * caller's own value. */
template <typename T> static inline T ft_emu_shfl(T v, int src_lane)
{
	static_assert(sizeof(T) <= 8, "shuffle of a type over 8 bytes");
	ft_emu::worker *w = ft_emu::tls_w;
	unsigned t = ft_emu_tid(), base = t - t % 32;
	memcpy(&w->xchg[t], &v, sizeof v);
	__syncwarp();
	T r;
	memcpy(&r, &w->xchg[base + (unsigned)src_lane], sizeof r);
	__syncwarp();
	return r;
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32)
{
	(void)mask;
	int lane = (int)(ft_emu_tid() % 32);
	int src = (lane & ~(width - 1)) | ((lane ^ o) & (width - 1));
	return ft_emu_shfl(v, src);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32)
{
	(void)mask;
	int lane = (int)(ft_emu_tid() % 32), seg = lane & ~(width - 1);
	int src = lane - seg + (int)d < width ? lane + (int)d : lane;
	return ft_emu_shfl(v, src);
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
	(void)mask;
	int lane = (int)(ft_emu_tid() % 32);
	return ft_emu_shfl(v, (lane & ~(width - 1)) + (src & (width - 1)));
}

static inline float atomicAdd(float *p, float v)
{
	float o, n;
	__atomic_load(p, &o, __ATOMIC_RELAXED);
	do
		n = o + v;
	while (!__atomic_compare_exchange(p, &o, &n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	return o;
}
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned *p, unsigned v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline int atomicMax(int *p, int v)
{
	int o = __atomic_load_n(p, __ATOMIC_RELAXED);
	while (o < v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	return o;
}
static inline int atomicOr(int *p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }

/* device math that glibc lacks */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

/* The tests' launch: blockDim.x threads (256 unless told) over grid. */
template <typename F>
static void launch(F body, dim3 grid, size_t smem, unsigned threads = 256)
{
	ft_emu::run("test kernel", grid, dim3(threads), smem, ft_emu::call<F>, &body);
}

/* Kept for the tests written before the pool: nothing to set up now. */
static inline void emu_init(void) {}

#endif
