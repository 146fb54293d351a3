/* test_gemma_emu.cc - the CUDA kernels Gemma adds, run on the host under
 * tests/emu/emu.h against the CPU functions:
 *  - the flash-attention kernels (lib/cuda/flash_kernels.cuh) with
 *    query_pre_attn_scalar's scale and Gemma 2's soft-capped scores,
 *    forward and backward (the tanh derivative), against
 *    ft_attention_forward/backward with the same ft_attn_shape;
 *  - GeGLU forward and the in-place backward over a fused gate|up buffer
 *    (lib/cuda/gemma_kernels.cuh), and the final-logit soft-cap, against
 *    ft_geglu_* and ft_softcap_forward (lib/model/layers_gemma.c,
 *    layers.c), and the norms' 1 + weight.
 *
 * Tolerances.  Attention: 1e-5 of the largest element, as
 * test_flash_emu.cc (fmaf and butterfly sums against BLAS sums; the cap
 * is one tanhf of the same float on both sides).  The caps are small (2
 * and 5 against scores up to ~6) so that tanh is far from linear: a
 * missing cap or a missing (1 - tanh^2) factor is an O(1) error.  GeGLU
 * and the soft-cap: the same kernels.h expression on the same floats,
 * so bit-identical. */
#include "emu.h"
extern "C" {
#include "model/flash.h"
#include "model/layers.h"
}
#include "tap.h"
#include "emu_test.h"
#include "cuda/flash_kernels.cuh"
#include "cuda/gemma_kernels.cuh"

static unsigned rng = 2024;
static std::vector<float> rnd(size_t n, float amp) { return rnd_vec(rng, n, amp); }

template <int NDR>
static void run(fa_args<float> &p, int B)
{
	unsigned tiles = (unsigned)((p.T + FT_FA_BR - 1) / FT_FA_BR);
	launch([&] { fa_fwd_k<float, NDR>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
	       fa_smem_fwd<float>(p.hd));
	size_t NH = (size_t)B * p.T * p.Hq;
	launch([&] { rowdot_k<float>(p.Di, p.o, p.dout, NH, p.hd); },
	       { (unsigned)((NH + 255) / 256), 1, 1 }, 0);
	launch([&] { fa_dkdv_k<float, NDR>(p); }, { tiles, (unsigned)p.Hk, (unsigned)B },
	       fa_smem_dkdv<float>(p.hd));
	launch([&] { fa_dq_k<float, NDR>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
	       fa_smem_dq<float>(p.hd));
}

/* The kernels against the CPU attention with scale and cap; cap 0 with
 * the scale alone, and the CPU with the cap against the kernels
 * without it (the test can fail) */
static void test_attention(int B, int T, int Hq, int Hk, int hd, int window, float scale,
			   float cap)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	std::vector<float> q = rnd(nq, 3), k = rnd(nk, 3), v = rnd(nk, 1), go = rnd(nq, 1);
	std::vector<int32_t> seg(N);
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			seg[(size_t)b * T + t] = t >= T - 3 ? 0 : 1 + t / 29;
	ft_attn_shape s = { B, T, Hq, Hk, hd, window, B > 1 ? seg.data() : NULL, scale, cap, NULL };
	std::vector<float> o1(nq), o2(nq), l1(nl), l2(nl), Di(nl);
	std::vector<float> g1[3] = { std::vector<float>(nq), std::vector<float>(nk),
				     std::vector<float>(nk) };
	std::vector<float> g2[3] = { std::vector<float>(nq, NAN), std::vector<float>(nk, NAN),
				     std::vector<float>(nk, NAN) };
	ft_attention_forward(o1.data(), l1.data(), q.data(), k.data(), v.data(), &s);
	ft_attention_backward(g1[0].data(), g1[1].data(), g1[2].data(), go.data(), q.data(),
			      k.data(), v.data(), o1.data(), l1.data(), &s);
	fa_args<float> p;
	memset(&p, 0, sizeof p);
	p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = o2.data(), p.dout = go.data();
	p.out = o2.data(), p.lse = l2.data(), p.Di = Di.data(), p.seg = s.seg;
	p.dq = g2[0].data(), p.dk = g2[1].data(), p.dv = g2[2].data();
	p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window;
	p.scale = scale, p.softcap = cap;
	p.ldq = p.lddq = Hq * hd;
	p.ldk = p.ldv = p.lddk = p.lddv = Hk * hd;
	run<8>(p, B);
	double eo = max_rel01(o2.data(), o1.data(), nq), el = max_rel01(l2.data(), l1.data(), nl);
	double e0 = max_rel01(g2[0].data(), g1[0].data(), nq), e1 = max_rel01(g2[1].data(), g1[1].data(), nk);
	double e2 = max_rel01(g2[2].data(), g1[2].data(), nk);
	ok(eo <= 1e-5 && el <= 1e-5 && e0 <= 1e-5 && e1 <= 1e-5 && e2 <= 1e-5,
	   "attention B=%d T=%d Hq=%d Hk=%d hd=%d window=%d scale=%g softcap=%g: out %.2g "
	   "lse %.2g dq %.2g dk %.2g dv %.2g", B, T, Hq, Hk, hd, window, scale, cap, eo, el, e0,
	   e1, e2);
	if (!(cap > 0))
		return;
	p.softcap = 0;
	run<8>(p, B);
	double d0 = max_rel01(o2.data(), o1.data(), nq), d1 = max_rel01(g2[1].data(), g1[1].data(), nk);
	ok(d0 > 1e-2 && d1 > 1e-2, "the cap matters here: without it out %.2g dk %.2g", d0, d1);
}

/* gate|up rows of stride ld = 2F + 3 (a fused buffer with LoRA columns) */
static void test_geglu(int N, int F)
{
	size_t ld = 2 * (size_t)F + 3, n = (size_t)N * F;
	std::vector<float> buf = rnd(N * ld, 4), dh = rnd(n, 1), g(n), u(n), h1(n), h2(n);
	std::vector<float> dg(n), du(n), orig = buf;
	for (int i = 0; i < N; i++)
		for (int f = 0; f < F; f++) {
			g[(size_t)i * F + f] = buf[i * ld + f];
			u[(size_t)i * F + f] = buf[i * ld + F + f];
		}
	ft_geglu_forward(h1.data(), g.data(), u.data(), n);
	ft_geglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
	unsigned nb = (unsigned)((n + FT_GEMMA_TPB - 1) / FT_GEMMA_TPB);
	float *G = buf.data(), *U = buf.data() + F;
	launch([&] { geglu_forward_k(h2.data(), FT_ACT_F32, G, U, FT_ACT_F32, ld, N, F); }, { nb, 1, 1 }, 0);
	/* the half modes' hidden: the fp32 value rounded once at the store */
	std::vector<uint16_t> hb(n), hf(n);
	launch([&] { geglu_forward_k(hb.data(), FT_ACT_BF16, G, U, FT_ACT_F32, ld, N, F); }, { nb, 1, 1 }, 0);
	launch([&] { geglu_forward_k(hf.data(), FT_ACT_F16, G, U, FT_ACT_F32, ld, N, F); }, { nb, 1, 1 }, 0);
	int hsame = 1;
	for (size_t i = 0; i < n; i++)
		hsame = hsame && hb[i] == ft_k_f32_to_bf16(h1[i]) && hf[i] == ft_k_f32_to_f16(h1[i]);
	ok(hsame, "geglu N=%d F=%d: bf16 and f16 hidden = the fp32 one rounded", N, F);
	/* a bf16 gate|up buffer (half training): read widened, as the fp32
	 * kernels on the widened values, the fp32 gradients elsewhere */
	std::vector<uint16_t> bb(N * ld);
	std::vector<float> wb(N * ld), hw(n), hh(n), d1(N * ld, -7), d2(N * ld, -7);
	for (size_t i = 0; i < bb.size(); i++) {
		bb[i] = ft_k_f32_to_bf16(buf[i]);
		wb[i] = ft_k_bf16_to_f32(bb[i]);
	}
	const uint16_t *BG = bb.data(), *BU = bb.data() + F;
	float *WG = wb.data(), *WU = wb.data() + F;
	launch([&] { geglu_forward_k(hw.data(), FT_ACT_F32, WG, WU, FT_ACT_F32, ld, N, F); }, { nb, 1, 1 }, 0);
	launch([&] { geglu_forward_k(hh.data(), FT_ACT_F32, BG, BU, FT_ACT_BF16, ld, N, F); }, { nb, 1, 1 }, 0);
	launch([&] { geglu_backward_k(d1.data(), d1.data() + F, dh.data(), WG, WU, FT_ACT_F32, ld, N,
				      F); }, { nb, 1, 1 }, 0);
	launch([&] { geglu_backward_k(d2.data(), d2.data() + F, dh.data(), BG, BU, FT_ACT_BF16, ld, N,
				      F); }, { nb, 1, 1 }, 0);
	ok(!memcmp(hw.data(), hh.data(), n * 4) && !memcmp(d1.data(), d2.data(), d1.size() * 4),
	   "geglu from a bf16 gate|up N=%d F=%d: forward and backward bit-identical to fp32 on the "
	   "widened values", N, F);
	launch([&] { geglu_backward_k(G, U, dh.data(), G, U, FT_ACT_F32, ld, N, F); }, { nb, 1, 1 }, 0);
	int same = !memcmp(h1.data(), h2.data(), n * 4), kept = 1;
	for (int i = 0; i < N; i++) {
		for (int f = 0; f < F; f++)
			same = same && buf[i * ld + f] == dg[(size_t)i * F + f] &&
			       buf[i * ld + F + f] == du[(size_t)i * F + f];
		for (size_t c = 2 * F; c < ld; c++)
			kept = kept && buf[i * ld + c] == orig[i * ld + c];   /* LoRA columns */
	}
	ok(same && kept, "geglu N=%d F=%d (fused, in place): forward and backward bit-identical "
	   "to ft_geglu_*", N, F);
}

static void test_softcap(size_t n, float cap)
{
	std::vector<float> x = rnd(n, 80), y = x;
	ft_softcap_forward(x.data(), n, cap);
	launch([&] { softcap_k(y.data(), n, cap); },
	       { (unsigned)((n + FT_GEMMA_TPB - 1) / FT_GEMMA_TPB), 1, 1 }, 0);
	ok(!memcmp(x.data(), y.data(), n * 4), "final soft-cap n=%zu cap=%g bit-identical", n, cap);
	std::vector<float> w = rnd(n, 0.5f), e(n);   /* the norms' 1 + weight */
	launch([&] { plus_one_k(e.data(), w.data(), (int)n); },
	       { (unsigned)((n + FT_GEMMA_TPB - 1) / FT_GEMMA_TPB), 1, 1 }, 0);
	int same = 1;
	for (size_t i = 0; i < n; i++)
		same = same && e[i] == 1.0f + w[i];
	ok(same, "1 + weight n=%zu", n);
}

int main(void)
{
	emu_init();
	test_attention(1, 40, 4, 2, 16, 0, 0.0625f, 2);      /* query_pre_attn_scalar 256 */
	test_attention(2, 97, 2, 1, 16, 9, 0.25f, 5);        /* window, packed, tiles skipped */
	test_attention(1, 70, 4, 4, 8, 0, 0.3f, 0);          /* the scale alone */
	test_geglu(7, 45);
	test_softcap(1000, 30);
	return tap_done();
}
