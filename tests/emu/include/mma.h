/* mma.h - the WMMA API (nvcuda::wmma) for the host emulation
 * (tests/emu/emu.h): the 16x16x16 shape with __nv_bfloat16 or __half
 * inputs and fp32 accumulators, which lib/cuda/flash_tc.cuh uses.
 *
 * A fragment's layout over the lanes is opaque in CUDA; here lane l
 * holds the 8 elements e = 8 l .. 8 l + 7 of the tile in row-major order
 * (row e / 16, column e % 16; for matrix_a rows are m and columns k, for
 * matrix_b rows k and columns n).  Any kernel that only reaches fragment
 * elements through load/store/mma and uniform x[i] updates (what CUDA
 * allows) sees CUDA's results.
 *
 * load_matrix_sync and store_matrix_sync touch only the calling lane's
 * elements; they check what CUDA requires of them (a 256-bit aligned
 * pointer, ldm a multiple of 16 bytes) and abort otherwise.  mma_sync is
 * warp-collective: each lane publishes where its A and B fragments are
 * through the warp's exchange slots (as the shuffles do), waits at the
 * warp barrier, computes its own 8 outputs from the other lanes' A and B,
 * and waits again so no lane changes its fragments before every lane has
 * read them.  Products of two half inputs are exact in fp32; the sum runs
 * in fp32 from C over k = 0..15 (a tensor core's order of addition is
 * unspecified; tests bound the difference by fp32 rounding).
 */
#ifndef FT_EMU_MMA_H
#define FT_EMU_MMA_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include "emu.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
	static_assert(M == 16 && N == 16 && K == 16, "emulated WMMA: the 16x16x16 shape only");
	enum { num_elements = 8 };
	T x[num_elements];
};

static inline float emu_f(float v) { return v; }
static inline float emu_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static inline float emu_f(__half v) { return __half2float(v); }

/* CUDA's requirements on a load or store: the pointer 256-bit aligned,
 * ldm a multiple of 8 half or 4 fp32 elements. */
static inline void emu_check(const void *p, unsigned ldm, size_t esize, const char *what)
{
	if ((uintptr_t)p % 32 || (ldm * esize) % 16) {
		fprintf(stderr, "emu: wmma::%s: pointer %p (needs 32-byte alignment), ldm %u "
			"(needs a multiple of %zu elements)\n", what, p, ldm, 16 / esize);
		abort();
	}
}

static inline unsigned emu_lane() { return ft_emu_tid() % 32; }

/* the (row, column) of element i of this lane */
static inline int emu_row(int i) { return (int)(emu_lane() * 8 + i) / 16; }
static inline int emu_col(int i) { return (int)(emu_lane() * 8 + i) % 16; }

template <typename Use, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &a, const T *p, unsigned ldm)
{
	static_assert(sizeof(T) == 2, "emulated WMMA: half inputs only");
	emu_check(p, ldm, sizeof(T), "load_matrix_sync");
	bool rm = std::is_same<L, row_major>::value;
	for (int i = 0; i < 8; i++) {
		int r = emu_row(i), c = emu_col(i);
		a.x[i] = rm ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
	}
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &a, const float *p,
				    unsigned ldm, layout_t l)
{
	emu_check(p, ldm, 4, "load_matrix_sync");
	for (int i = 0; i < 8; i++) {
		int r = emu_row(i), c = emu_col(i);
		a.x[i] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
	}
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &a,
				     unsigned ldm, layout_t l)
{
	emu_check(p, ldm, 4, "store_matrix_sync");
	for (int i = 0; i < 8; i++) {
		int r = emu_row(i), c = emu_col(i);
		(l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = a.x[i];
	}
}

template <typename Use, typename T, typename L, typename V>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &a, const V &v)
{
	for (int i = 0; i < 8; i++)
		a.x[i] = v;
}

/* d = a b + c over the warp (see the top). */
template <typename T, typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
			    const fragment<matrix_a, 16, 16, 16, T, LA> &a,
			    const fragment<matrix_b, 16, 16, 16, T, LB> &b,
			    const fragment<accumulator, 16, 16, 16, float> &c)
{
	typedef fragment<matrix_a, 16, 16, 16, T, LA> fa;
	typedef fragment<matrix_b, 16, 16, 16, T, LB> fb;
	struct mine { const fa *a; const fb *b; } me = { &a, &b };
	ft_emu::worker *w = ft_emu::tls_w;
	unsigned t = ft_emu_tid(), base = t - t % 32;
	const mine *me_p = &me;
	memcpy(&w->xchg[t], &me_p, sizeof me_p);
	__syncwarp();
	const mine *lanes[32];
	for (int l = 0; l < 32; l++)
		memcpy(&lanes[l], &w->xchg[base + l], sizeof lanes[l]);
	float out[8];
	for (int i = 0; i < 8; i++) {
		int r = emu_row(i), col = emu_col(i);
		float s = c.x[i];
		for (int k = 0; k < 16; k++) {
			int ea = r * 16 + k, eb = k * 16 + col;   /* row-major element numbers */
			s += emu_f(lanes[ea / 8]->a->x[ea % 8]) * emu_f(lanes[eb / 8]->b->x[eb % 8]);
		}
		out[i] = s;
	}
	for (int i = 0; i < 8; i++)
		d.x[i] = out[i];
	__syncwarp();
}

} /* namespace wmma */
} /* namespace nvcuda */

#endif
