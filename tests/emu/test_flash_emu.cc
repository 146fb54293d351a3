/* test_flash_emu.cc - the CUDA flash-attention kernels themselves
 * (lib/cuda/flash_kernels.cuh, the source nvcc compiles into
 * libft_cuda.so) run on the host with emulated CUDA built-ins, against
 * the CPU attention ft_attention_forward/backward.  No GPU needed.
 *
 * The emulation is tests/emu/emu.h; the dynamic shared memory is of
 * exactly the launcher's size (fa_smem_*) and NaN before every block, so
 * ASan reports any access past it and a read of a tile element that was
 * never loaded turns the result into NaN.
 *
 * Tolerance: as tests/unit/test_flash.c (1e-5 of the largest element):
 * the kernels use fmaf and butterfly sums where the CPU uses BLAS sums
 * (measured at most 8e-7).  These are the fp32 kernels; the bf16 and
 * fp16 ones (tensor cores) are test_flash_tc_emu.cc's.
 *
 * The 16-row tiles (FA_BT_SMALL, what fp32 runs at hd 256 on sm_86 /
 * sm_89's 99 KiB) under the same bound: per row they do the same
 * arithmetic, except that the forward's online softmax folds 16 keys a
 * step, so a row whose maximum rises in a 16-key half tile is rescaled
 * once more (one multiply by exp(m_old - m_new), a few ulp, at most
 * T / 16 times: ~1e-6 at T 130, under the 1e-5).  Every dK, dV, dQ
 * element is the same fmaf chain over the same allowed (query, key)
 * pairs in the same order (masked pairs inside a visited tile add an
 * exact zero, and a skipped tile has none allowed), so from the same O
 * and lse the backward passes are equal to the 32-row ones element for
 * element, which test_small_backward checks.
 */
#include "emu.h"
extern "C" {
#include "model/flash.h"
#include "model/layers.h"
}
#include "tap.h"
#include "emu_test.h"

#include "cuda/flash_kernels.cuh"

/* The kernels on BT x BT tiles, BT groups of 8 lanes a block, as
 * attention.cu's run_pass launches them. */
template <typename E, int NDR, int BT = FT_FA_BR>
static void run(fa_args<E> &p, int B, int backward)
{
	unsigned tiles = (unsigned)((p.T + BT - 1) / BT), nt = FA_BT_THREADS(BT);
	if (!backward) {
		launch([&] { fa_fwd_k<E, NDR, BT>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
		       fa_smem_fwd<E, BT>(p.hd), nt);
		return;
	}
	size_t NH = (size_t)B * p.T * p.Hq;
	launch([&] { rowdot_k<E>(p.Di, p.o, p.dout, NH, p.hd); },
	       { (unsigned)((NH + 255) / 256), 1, 1 }, 0);
	launch([&] { fa_dkdv_k<E, NDR, BT>(p); }, { tiles, (unsigned)p.Hk, (unsigned)B },
	       fa_smem_dkdv<E, BT>(p.hd), nt);
	launch([&] { fa_dq_k<E, NDR, BT>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
	       fa_smem_dq<E, BT>(p.hd), nt);
}

/* Contiguous [B*T, H*hd] inputs and gradients (attention.cu's default). */
template <typename E>
static void contiguous(fa_args<E> &p)
{
	p.ldq = p.lddq = p.Hq * p.hd;
	p.ldk = p.ldv = p.lddk = p.lddv = p.Hk * p.hd;
}

/* bt 16: the small tiles, with the launcher's one accumulator width */
template <typename E>
static void run_hd(fa_args<E> &p, int B, int pass, int bt = FT_FA_BR)
{
	if (bt == FA_BT_SMALL) run<E, FA_MAX_NDR, FA_BT_SMALL>(p, B, pass);
	else if (p.hd <= 64) run<E, 8>(p, B, pass);
	else if (p.hd <= 128) run<E, 16>(p, B, pass);
	else run<E, 32>(p, B, pass);
}

static unsigned rng = 777;
static std::vector<float> rnd(size_t n, float amp) { return rnd_vec(rng, n, amp); }

/* packed 1: ft-pack's neat packing; 2: right padding, rows of T - 37 b
 * real tokens (at least 1; ft_attn_shape.len).  bt: the tile rows; cap:
 * Gemma 2's soft-cap (0: none). */
static void test_case(int B, int T, int Hq, int Hk, int hd, int window, int packed,
		      int bt = FT_FA_BR, float cap = 0)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	std::vector<float> q = rnd(nq, 1.5f), k = rnd(nk, 1.5f), v = rnd(nk, 1), go = rnd(nq, 1);
	std::vector<int32_t> seg(N);
	for (int b = 0; b < B; b++)              /* ft-pack's neat packing */
		for (int t = 0; t < T; t++)
			seg[(size_t)b * T + t] = t >= T - 5 - b ? 0 : 1 + (t + 7 * b) / 23;
	std::vector<int32_t> len(B);
	for (int b = 0; b < B; b++)
		len[b] = T - 37 * b > 0 ? T - 37 * b : 1;
	ft_attn_shape s = { B, T, Hq, Hk, hd, window, packed == 1 ? seg.data() : NULL, 0, cap,
			    packed == 2 ? len.data() : NULL };
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
	p.out = o2.data(), p.lse = l2.data(), p.Di = Di.data(), p.seg = s.seg, p.len = s.len;
	p.dq = g2[0].data(), p.dk = g2[1].data(), p.dv = g2[2].data();
	p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window;
	p.scale = 1.0f / sqrtf((float)hd);
	p.softcap = cap;
	contiguous(p);
	for (int pass = 0; pass < 2; pass++)
		run_hd(p, B, pass, bt);
	double eo = max_rel01(o2.data(), o1.data(), nq), el = max_rel01(l2.data(), l1.data(), nl);
	double e0 = max_rel01(g2[0].data(), g1[0].data(), nq), e1 = max_rel01(g2[1].data(), g1[1].data(), nk);
	double e2 = max_rel01(g2[2].data(), g1[2].data(), nk);
	ok(eo <= 1e-5 && el <= 1e-5 && e0 <= 1e-5 && e1 <= 1e-5 && e2 <= 1e-5,
	   "kernels %dx%d tiles B=%d T=%d Hq=%d Hk=%d hd=%d window=%d packed=%d cap=%g: out %.2g "
	   "lse %.2g dq %.2g dk %.2g dv %.2g", bt, bt, B, T, Hq, Hk, hd, window, packed, cap, eo,
	   el, e0, e1, e2);
}

/* The backward passes on 16-row tiles against the 32-row ones from the
 * same forward (the 32-row one's O and lse): equal element for element
 * (== : a zero's sign may differ); and the two forwards apart by no
 * more than the 1e-5 bound. */
static void test_small_backward(int B, int T, int Hq, int Hk, int hd, int window, float cap)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	std::vector<float> q = rnd(nq, 1.5f), k = rnd(nk, 1.5f), v = rnd(nk, 1), go = rnd(nq, 1);
	std::vector<int32_t> seg(N);
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			seg[(size_t)b * T + t] = t >= T - 5 - b ? 0 : 1 + (t + 7 * b) / 23;
	std::vector<float> o[2] = { std::vector<float>(nq), std::vector<float>(nq) };
	std::vector<float> l[2] = { std::vector<float>(nl), std::vector<float>(nl) }, Di(nl);
	std::vector<float> g[2][3];
	fa_args<float> p;
	memset(&p, 0, sizeof p);
	p.q = q.data(), p.k = k.data(), p.v = v.data(), p.dout = go.data(), p.Di = Di.data();
	p.seg = seg.data(), p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window;
	p.scale = 1.0f / sqrtf((float)hd), p.softcap = cap;
	contiguous(p);
	for (int i = 0; i < 2; i++) {
		p.out = o[i].data(), p.lse = l[i].data();
		run_hd(p, B, 0, i ? FA_BT_SMALL : FT_FA_BR);
	}
	p.o = o[0].data(), p.lse = l[0].data();
	int same = 1;
	for (int i = 0; i < 2; i++) {
		size_t n[3] = { nq, nk, nk };
		for (int j = 0; j < 3; j++)
			g[i][j].assign(n[j], NAN);
		p.dq = g[i][0].data(), p.dk = g[i][1].data(), p.dv = g[i][2].data();
		run_hd(p, B, 1, i ? FA_BT_SMALL : FT_FA_BR);
	}
	for (int j = 0; j < 3; j++)
		for (size_t e = 0; e < g[0][j].size(); e++)
			same = same && g[0][j][e] == g[1][j][e];
	double eo = max_rel01(o[1].data(), o[0].data(), nq), el = max_rel01(l[1].data(), l[0].data(), nl);
	ok(same && eo <= 1e-5 && el <= 1e-5, "16-row tiles B=%d T=%d Hq=%d Hk=%d hd=%d window=%d "
	   "cap=%g: dq, dk, dv %s the 32-row tiles' from the same O, lse; forwards apart by out "
	   "%.2g lse %.2g", B, T, Hq, Hk, hd, window, cap, same ? "equal to" : "NOT equal to", eo, el);
}

/* q, k, v read from one fused [N, tot] q|k|v buffer (tot = qd + 2 kd +
 * 5 LoRA columns, as layer.cu's) and dq, dk, dv written into another:
 * results bit-identical to the contiguous layout (only the addresses
 * change), and the LoRA columns of the gradient buffer left untouched. */
static void test_strided(int B, int T, int Hq, int Hk, int hd, int window)
{
	size_t N = (size_t)B * T, qd = (size_t)Hq * hd, kd = (size_t)Hk * hd, nl = N * Hq;
	size_t tot = qd + 2 * kd + 5;
	std::vector<float> q = rnd(N * qd, 1.5f), k = rnd(N * kd, 1.5f), v = rnd(N * kd, 1);
	std::vector<float> go = rnd(N * qd, 1), fused(N * tot), dfused(N * tot, 12345.0f);
	for (size_t n = 0; n < N; n++) {
		memcpy(&fused[n * tot], &q[n * qd], qd * 4);
		memcpy(&fused[n * tot + qd], &k[n * kd], kd * 4);
		memcpy(&fused[n * tot + qd + kd], &v[n * kd], kd * 4);
	}
	std::vector<float> o1(N * qd), o2(N * qd), l1(nl), l2(nl), Di(nl);
	std::vector<float> g[3] = { std::vector<float>(N * qd), std::vector<float>(N * kd),
				    std::vector<float>(N * kd) };
	fa_args<float> p;
	memset(&p, 0, sizeof p);
	p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window;
	p.scale = 1.0f / sqrtf((float)hd);
	p.q = q.data(), p.k = k.data(), p.v = v.data(), p.dout = go.data(), p.Di = Di.data();
	p.o = p.out = o1.data(), p.lse = l1.data();
	p.dq = g[0].data(), p.dk = g[1].data(), p.dv = g[2].data();
	contiguous(p);
	run_hd(p, B, 0);
	run_hd(p, B, 1);
	p.q = fused.data(), p.k = fused.data() + qd, p.v = fused.data() + qd + kd;
	p.o = p.out = o2.data(), p.lse = l2.data();
	p.dq = dfused.data(), p.dk = dfused.data() + qd, p.dv = dfused.data() + qd + kd;
	p.ldq = p.ldk = p.ldv = p.lddq = p.lddk = p.lddv = (int)tot;
	run_hd(p, B, 0);
	run_hd(p, B, 1);
	int same = !memcmp(o1.data(), o2.data(), o1.size() * 4) &&
		   !memcmp(l1.data(), l2.data(), nl * 4), kept = 1;
	size_t off[3] = { 0, qd, qd + kd }, w[3] = { qd, kd, kd };
	for (size_t n = 0; n < N; n++) {
		for (int i = 0; i < 3; i++)
			same = same && !memcmp(&dfused[n * tot + off[i]], &g[i][n * w[i]], w[i] * 4);
		for (size_t c = qd + 2 * kd; c < tot; c++)
			kept = kept && dfused[n * tot + c] == 12345.0f;
	}
	ok(same && kept, "strided q|k|v B=%d T=%d Hq=%d Hk=%d hd=%d window=%d: out, lse, dq, dk, "
	   "dv bit-identical to the contiguous layout%s", B, T, Hq, Hk, hd, window,
	   kept ? "" : " (LoRA columns overwritten)");
}

int main(void)
{
	emu_init();
	test_case(1, 1, 1, 1, 8, 0, 0);
	test_case(2, 31, 4, 2, 16, 0, 0);
	test_case(1, 70, 4, 1, 36, 0, 0);     /* hd off the 8 lanes, 4 heads per kv */
	test_case(1, 100, 2, 1, 8, 17, 0);    /* window: tiles skipped */
	test_case(2, 97, 4, 2, 16, 0, 1);     /* packed rows: tiles skipped */
	test_case(1, 45, 2, 2, 72, 9, 1);     /* 16 accumulators per lane */
	test_case(1, 33, 2, 1, 136, 0, 0);    /* 32 accumulators per lane */
	test_case(2, 130, 4, 2, 16, 0, 2);    /* right padding: pad key tiles skipped */
	test_case(3, 75, 2, 1, 8, 17, 2);     /* and blind queries past the window */
	test_strided(2, 45, 4, 2, 16, 0);
	test_strided(1, 70, 2, 1, 72, 20);
	/* the 16-row tiles: Gemma's hd 256 (scale 1/16 = query_pre_attn_scalar
	 * 256's, cap 50 as Gemma 2's), GQA, windows, packing, right padding,
	 * T off the tile and a single token; hd off the 8 lanes */
	test_case(1, 1, 1, 1, 256, 0, 0, FA_BT_SMALL);
	test_case(2, 45, 4, 2, 256, 0, 0, FA_BT_SMALL, 50);
	test_case(1, 70, 2, 1, 256, 17, 1, FA_BT_SMALL);
	test_case(2, 61, 2, 2, 256, 0, 2, FA_BT_SMALL, 5);
	test_case(3, 40, 2, 1, 36, 9, 2, FA_BT_SMALL);
	test_small_backward(2, 70, 4, 2, 256, 0, 0);
	test_small_backward(1, 83, 2, 1, 256, 20, 5);
	return tap_done();
}
