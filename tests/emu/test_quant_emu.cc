/* test_quant_emu.cc - QLoRA's device kernels (lib/cuda/quant_kernels.cuh,
 * the source nvcc compiles into libft_cuda.so) run on the host under
 * tests/emu/emu.h, against the CPU path (lib/model/quant.c,
 * model_quant.c), on the bitsandbytes fixture tensors
 * (tests/fixtures/quant/llama-tensors.safetensors).
 *
 * Tolerance: none.  The kernels compute each weight with the CPU's float32
 * operations in its order (lib/model/quant_kernels.h; this build has
 * -ffp-contract=off as the library, and on the device FT_QMUL/FT_QADD are
 * the uncontracted intrinsics), so
 *  - 4-bit NF4/FP4, plain and double-quantized, from row 0 and from a row
 *    that starts mid-block: bit-equal to ft_qweight_rows and to bnb's
 *    dequantize_4bit in the fixture;
 *  - 8-bit CB * (SCB / 127): bit-equal to ft_qweight_rows;
 *  - LLM.int8() (the kernel chain of quant.cu's int8_forward, its GEMMs
 *    done here by ft_sgemm on integer-valued floats, exact as on cuBLAS):
 *    bit-equal to ft_qweight_int8_forward, for one row and several, with
 *    outlier columns, and with more inputs than one exact chunk.
 * A wrong block, nibble, row or column would be off by O(1). */
#include "emu.h"
extern "C" {
#include "model/layers.h"
#include "model/quant.h"
#include "format/safetensors.h"
}
#include "tap.h"
#include "cuda/quant_kernels.cuh"

#define FX "tests/fixtures/quant/llama-tensors.safetensors"

static unsigned rng = 2024;
static float frand(void)
{
	rng = rng * 1103515245u + 12345u;
	return ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static emu_dim3 grid(size_t n) { return { (unsigned)((n + 255) / 256), 1, 1 }; }

/* The device view of q, host pointers (the emulated device's memory). */
static ft_cu_qweight dev_of(const ft_qweight *q)
{
	ft_cu_qweight d;
	memset(&d, 0, sizeof d);
	d.bits = q->bits, d.fp4 = q->fp4, d.in = q->in, d.out = q->out;
	d.packed = q->packed, d.qabsmax = q->qabsmax, d.absmax = q->absmax;
	d.absmax2 = q->absmax2, d.offset = q->offset, d.cb = q->cb, d.scb = q->scb;
	d.code4 = q->fp4 ? ft_fp4_code : ft_nf4_code;
	d.code8 = ft_dynamic_code;
	return d;
}

/* Elements [i0, i0 + n) through the kernel, as quant.cu's dequant_rows
 * launches it. */
static std::vector<float> kernel_elems(const ft_qweight *q, size_t i0, size_t n)
{
	ft_cu_qweight d = dev_of(q);
	std::vector<float> out(n);
	float *dst = out.data();
	if (q->bits == 8)
		launch([&] { dequant8_k(dst, d, i0, n); }, grid(n), 0);
	else
		launch([&] { dequant4_k(dst, d, i0, n); }, grid(dequant4_threads(n)), 0);
	return out;
}

/* Rows [r0, out). */
static std::vector<float> kernel_rows(const ft_qweight *q, int r0)
{
	return kernel_elems(q, (size_t)r0 * q->in, (size_t)(q->out - r0) * q->in);
}

static int same(const float *a, const float *b, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (memcmp(&a[i], &b[i], sizeof(float))) {
			printf("# %s[%zu]: kernel %.9g, cpu %.9g\n", what, i, a[i], b[i]);
			return 0;
		}
	return 1;
}

static void test_dequant(const ft_st *st, const char *name)
{
	char k[256];
	snprintf(k, sizeof k, "w.%s", name);
	const ft_st_tensor *t = ft_st_find(st, k);
	if (!ok(t != NULL, "fixture tensor %s", k))
		return;
	int out = (int)t->shape[0], in = (int)t->shape[1];
	size_t n = t->numel;
	std::vector<float> w(n), cpu(n), ref(n);
	ft_st_read_f32(t, w.data());
	for (int v = 0; v < 4; v++) {
		int fp4 = v & 1, dbl = v >> 1;
		ft_qweight q;
		ft_qweight_make(&q, w.data(), out, in, 4, fp4, dbl);
		ft_qweight_rows(&q, 0, out, cpu.data());
		snprintf(k, sizeof k, "%s%s.%s.dequant", fp4 ? "fp4" : "nf4", dbl ? "_dq" : "", name);
		const ft_st_tensor *rt = ft_st_find(st, k);
		int have = rt && rt->numel == n;
		if (have)
			ft_st_read_f32(rt, ref.data());
		std::vector<float> g0 = kernel_rows(&q, 0), g3 = kernel_rows(&q, 3);
		/* a span starting mid-run and crossing blocks, cut by n mid-run:
		 * the per-element path of an unaligned tile (odd in) */
		size_t u0 = FT_Q4_BLOCK - 3, un = 2 * FT_Q4_BLOCK + 5;
		std::vector<float> gu = kernel_elems(&q, u0, un);
		ok(have && same(g0.data(), cpu.data(), n, "rows 0-") &&
		   same(g0.data(), ref.data(), n, "bnb") &&
		   same(g3.data(), cpu.data() + (size_t)3 * in, n - (size_t)3 * in, "rows 3-") &&
		   same(gu.data(), cpu.data() + u0, un, "unaligned span"),
		   "%s: dequant4_k bit-equal to ft_qweight_rows and bnb's dequantize_4bit "
		   "(from row 0, from row 3, mid-block, and a span unaligned to its runs)", k);
		ft_qweight_free(&q);
	}
	ft_qweight q;
	ft_qweight_make(&q, w.data(), out, in, 8, 0, 0);
	ft_qweight_rows(&q, 0, out, cpu.data());
	std::vector<float> g = kernel_rows(&q, 1);
	ok(same(g.data(), cpu.data() + in, n - in, "int8"),
	   "int8 %s: dequant8_k bit-equal to ft_qweight_rows (CB * SCB / 127)", name);
	ft_qweight_free(&q);
}

/* quant.cu's int8_forward on the emulated device; one tile of every row,
 * chunks of 1024 inputs. */
static void int8_chain(const ft_qweight *q, float *y, const float *x, int N)
{
	ft_cu_qweight d = dev_of(q);
	int in = q->in, out = q->out;
	std::vector<int> outl(in), cols(in), nc(1);
	std::vector<float> sca(N), caf((size_t)N * in), cbf((size_t)out * in), tmp((size_t)N * out);
	std::vector<int32_t> acc((size_t)N * out);
	int *po = outl.data(), *pc = cols.data(), *pn = nc.data();
	float *ps = sca.data(), *pa = caf.data(), *pb = cbf.data(), *pt = tmp.data();
	int32_t *pacc = acc.data();
	size_t nw = (size_t)out * in, nt = (size_t)N * out;
	launch([&] { int8_outliers_k(po, x, FT_ACT_F32, N, in); }, grid(in), 0);
	launch([&] { int8_compact_k(pc, pn, po, in); }, grid(1), 0);
	launch([&] { int8_rowmax_k(ps, x, FT_ACT_F32, N, in); }, grid(N), 0);
	launch([&] { int8_act_k(pa, x, FT_ACT_F32, ps, po, N, in); }, grid((size_t)N * in), 0);
	launch([&] { int8_cbf_k(pb, q->cb, nw); }, grid(nw), 0);
	for (int k0 = 0; k0 < in; k0 += 1024) {
		int K = k0 + 1024 < in ? 1024 : in - k0;
		ft_sgemm(0, 1, N, out, K, 1, pa + k0, in, pb + k0, in, 0, pt, out);
		launch([&] { int8_accum_k(pacc, pt, nt, k0 == 0); }, grid(nt), 0);
	}
	launch([&] { int8_out_k(y, out, pacc, ps, x, FT_ACT_F32, pc, pn, d, 0, out, N); }, grid(nt), 0);
}

static void test_int8(const char *what, const float *w, int out, int in, int N, int outliers)
{
	ft_qweight q;
	ft_qweight_make(&q, w, out, in, 8, 0, 0);
	std::vector<float> x((size_t)N * in), yc((size_t)N * out), yg((size_t)N * out);
	for (auto &v : x)
		v = 2 * frand();
	for (int c = 0; c < outliers; c++)   /* an outlier feature: one row over 6, column c*7 */
		x[(size_t)(c % N) * in + (size_t)c * 7 % in] = 6.5f + c;
	ft_qweight_int8_forward(&q, yc.data(), x.data(), N);
	int8_chain(&q, yg.data(), x.data(), N);
	ok(same(yg.data(), yc.data(), yc.size(), what),
	   "LLM.int8() %s [%d, %d] x %d rows, %d outlier columns: kernels bit-equal to "
	   "ft_qweight_int8_forward", what, out, in, N, outliers);
	ft_qweight_free(&q);
}

int main(void)
{
	emu_init();
	ft_st *st = ft_st_open(FX);
	if (!ok(st != NULL, "open %s", FX))
		return tap_done();
	test_dequant(st, "model.layers.0.self_attn.q_proj.weight");
	test_dequant(st, "model.layers.1.mlp.down_proj.weight");
	const ft_st_tensor *t = ft_st_find(st, "w.model.layers.1.mlp.down_proj.weight");
	if (ok(t != NULL, "fixture down_proj")) {
		std::vector<float> w(t->numel);
		ft_st_read_f32(t, w.data());
		int out = (int)t->shape[0], in = (int)t->shape[1];
		test_int8("down_proj", w.data(), out, in, 5, 3);
		test_int8("down_proj", w.data(), out, in, 1, 1);
		test_int8("down_proj", w.data(), out, in, 4, 0);
	}
	std::vector<float> big((size_t)12 * 2100);   /* three exact chunks of inputs */
	for (auto &v : big)
		v = 0.05f * frand();
	test_int8("wide", big.data(), 12, 2100, 3, 2);
	ft_st_close(st);
	return tap_done();
}
