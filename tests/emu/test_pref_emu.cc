/* test_pref_emu.cc - the preference stages' kernels (lib/cuda/pref_kernels.cuh,
 * the source nvcc compiles into libft_cuda.so) run on the host under
 * tests/emu/emu.h, against the CPU path's arithmetic (lib/model/model_pref.c
 * and the shared ft_k_ce_row of lib/model/kernels.h).
 *
 * Tolerances, from the computation:
 *  - label log-prob: the kernel sums exp in 256 thread-strided double
 *    partials and a tree, the CPU left to right; both in double, so they
 *    agree to ~1e-15 relative of sum (then one float rounding): 1e-6
 *    absolute on values of order log V;
 *  - its gradient: the same per-element expression (ft_k_ce_grad) with the
 *    same max and a sum equal to ~1e-15: 1e-6 of the row's largest entry;
 *  - the mean over the vocabulary of W: one thread per column adds the rows
 *    in the CPU's order in double: bit-identical;
 *  - the row dot (mean logit) and the value-head score: double sums in
 *    another order, then one float rounding: 2 float ulps (4e-7 relative)
 *    of the largest term;
 *  - the head's weight gradient: float adds in the CPU's order (this build
 *    has -ffp-contract=off as the library): bit-identical; the bias's
 *    double sum, then float: bit-identical; d(hidden): one product each,
 *    bit-identical.
 * A wrong row, column or target would be off by O(1). */
#include "emu.h"
#include "tap.h"
#include "cuda/reduce.cuh"
#include "cuda/pref_kernels.cuh"

static unsigned rng = 777;
static float frand(void)
{
	rng = rng * 1103515245u + 12345u;
	return ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* pref_logp_k forward and backward over n rows of V logits, one target -100 */
static void test_logp(int n, int V)
{
	std::vector<float> l((size_t)n * V), l0, ref((size_t)n * V), g(n);
	std::vector<int32_t> tg(n);
	std::vector<double> lp(n);
	for (auto &x : l)
		x = 4 * frand();
	for (int i = 0; i < n; i++) {
		tg[i] = i == 1 ? -100 : (int)((unsigned)(frand() * 1e4f + 2e4f) % (unsigned)V);
		g[i] = 0.5f * frand();
	}
	l0 = l;
	launch([&] { pref_logp_k(l.data(), lp.data(), tg.data(), NULL, V); }, { (unsigned)n, 1, 1 }, 0);
	double elp = 0;
	for (int i = 0; i < n; i++) {
		/* the CPU's log-prob: -(the cross-entropy) of the row */
		double want = -ft_k_ce_row(NULL, l0.data() + (size_t)i * V, V, tg[i], 1);
		elp = fmax(elp, fabs(lp[i] - want));
	}
	ok(elp <= 1e-6 && memcmp(l.data(), l0.data(), l.size() * 4) == 0,
	   "logp n=%d V=%d: within %.2g of the CPU, logits untouched", n, V, elp);
	/* backward: the gradient of g * logp is the CE gradient with scale -g */
	for (int i = 0; i < n; i++)
		ft_k_ce_row(ref.data() + (size_t)i * V, l0.data() + (size_t)i * V, V, tg[i], -g[i]);
	launch([&] { pref_logp_k(l.data(), lp.data(), tg.data(), g.data(), V); }, { (unsigned)n, 1, 1 },
	       0);
	double eg = 0, mx = 0;
	for (size_t i = 0; i < l.size(); i++) {
		eg = fmax(eg, fabs((double)l[i] - ref[i]));
		mx = fmax(mx, fabs((double)ref[i]));
	}
	int zero = 1;
	for (int j = 0; j < V; j++)
		zero &= l[(size_t)1 * V + j] == 0;
	ok(eg <= 1e-6 * mx && zero, "dlogp n=%d V=%d: within %.2g of the CPU's (max %.2g), no-target row 0",
	   n, V, eg, mx);
}

/* Gemma 2's soft-capped logits (cap 5 on logits up to 12): the log-prob
 * gradient through the cap, as model_pref.c (the CE gradient of the
 * capped row, then ft_k_softcap_grad: the same two float expressions,
 * within the ce tolerance above), and pref_rowmean_k's mean of a capped
 * row against capped_means (a double sum in another order, then one
 * float rounding: 2 ulps of the mean, which does not cancel here). */
static void test_capped(int n, int V, float cap)
{
	std::vector<float> l((size_t)n * V), ref((size_t)n * V), g(n), mean(n);
	std::vector<int32_t> tg(n);
	std::vector<double> lp(n);
	for (auto &x : l)
		x = ft_k_softcap(12 * frand() + 3, cap);
	for (int i = 0; i < n; i++) {
		tg[i] = (int)((unsigned)(frand() * 1e4f + 2e4f) % (unsigned)V);
		g[i] = 0.5f * frand();
	}
	std::vector<float> l0 = l;
	launch([&] { pref_rowmean_k(mean.data(), l.data(), V); }, { (unsigned)n, 1, 1 }, 0);
	double em = 0;
	for (int i = 0; i < n; i++) {
		double s = 0;
		for (int j = 0; j < V; j++)
			s += l0[(size_t)i * V + j];
		float want = (float)(s / V);
		em = fmax(em, fabs((double)mean[i] - want) / fabs((double)want));
	}
	for (int i = 0; i < n; i++) {
		float *r = ref.data() + (size_t)i * V;
		const float *c = l0.data() + (size_t)i * V;
		ft_k_ce_row(r, c, V, tg[i], -g[i]);
		for (int j = 0; j < V; j++)
			r[j] = ft_k_softcap_grad(r[j], c[j], cap);
	}
	launch([&] { pref_logp_k(l.data(), lp.data(), tg.data(), g.data(), V, cap); },
	       { (unsigned)n, 1, 1 }, 0);
	double eg = 0, mx = 0;
	for (size_t i = 0; i < l.size(); i++) {
		eg = fmax(eg, fabs((double)l[i] - ref[i]));
		mx = fmax(mx, fabs((double)ref[i]));
	}
	ok(em <= 2.4e-7 && eg <= 1e-6 * mx, "capped logits n=%d V=%d cap=%g: mean %.2g, dlogp "
	   "within %.2g of the CPU's (max %.2g)", n, V, cap, em, eg, mx);
}

/* pref_colmean_k (fp32 and bf16 copies) and pref_rowdot_k: the logits/ metrics */
static void test_means(int N, int V, int D)
{
	std::vector<float> W((size_t)V * D), h((size_t)N * D), out(N);
	std::vector<uint16_t> Wh(W.size());
	std::vector<double> wm(D), want(D, 0), wmh(D);
	for (auto &x : W)
		x = frand();
	for (auto &x : h)
		x = 2 * frand();
	for (size_t i = 0; i < W.size(); i++)
		Wh[i] = ft_k_f32_to_bf16(W[i]);
	for (int v = 0; v < V; v++)           /* logit_means in model_pref.c */
		for (int d = 0; d < D; d++)
			want[d] += W[(size_t)v * D + d];
	for (int d = 0; d < D; d++)
		want[d] /= V;
	unsigned gb = (unsigned)((D + 255) / 256);
	launch([&] { pref_colmean_k(wm.data(), W.data(), NULL, 1, V, D); }, { gb, 1, 1 }, 0);
	launch([&] { pref_colmean_k(wmh.data(), NULL, Wh.data(), 1, V, D); }, { gb, 1, 1 }, 0);
	double eh = 0;
	for (int d = 0; d < D; d++)
		eh = fmax(eh, fabs(wmh[d] - want[d]));
	ok(memcmp(wm.data(), want.data(), D * sizeof(double)) == 0 && eh <= 4e-3,
	   "mean of lm_head rows V=%d D=%d: fp32 bit-identical, bf16 copy within %.2g", V, D, eh);
	launch([&] { pref_rowdot_k(out.data(), h.data(), wm.data(), D); }, { (unsigned)N, 1, 1 }, 0);
	double e = 0;
	for (int i = 0; i < N; i++) {
		double s = 0, big = 0;
		for (int d = 0; d < D; d++) {
			s += h[(size_t)i * D + d] * want[d];
			big = fmax(big, fabs(h[(size_t)i * D + d] * want[d]));
		}
		e = fmax(e, fabs((double)out[i] - (float)s) / fmax(big * D, 1e-30));
	}
	ok(e <= 4e-7, "mean logit per row N=%d D=%d: within %.2g of the CPU's double sum", N, D, e);
}

/* The value head: score, dW, db and d(hidden) as ft_model_value_forward /
 * _backward and rm_step. */
static void test_value_head(int n, int D)
{
	std::vector<float> h((size_t)n * D), w(D), sc(n), ds(n), dw(D), dw0(D), dh((size_t)n * D);
	float b = 0.25f, db = 0.5f, db0 = db;
	for (auto &x : h)
		x = frand();
	for (int d = 0; d < D; d++) {
		w[d] = frand() / 8;
		dw[d] = dw0[d] = frand() / 100;   /* accumulates onto an earlier micro-batch's */
	}
	for (int k = 0; k < n; k++)
		ds[k] = frand();
	launch([&] { pref_score_k(sc.data(), h.data(), w.data(), &b, D); }, { (unsigned)n, 1, 1 }, 0);
	double e = 0;
	for (int k = 0; k < n; k++) {
		double s = 0, big = fabs((double)b);
		for (int d = 0; d < D; d++) {
			s += (double)w[d] * h[(size_t)k * D + d];
			big = fmax(big, fabs((double)w[d] * h[(size_t)k * D + d]));
		}
		e = fmax(e, fabs((double)sc[k] - (float)(s + b)) / (big * D));
	}
	ok(e <= 4e-7, "value-head score n=%d D=%d: within %.2g of the CPU's", n, D, e);
	unsigned gb = (unsigned)((D + 1 + 255) / 256);
	launch([&] { pref_vgrad_k(dw.data(), &db, h.data(), ds.data(), n, D); }, { gb, 1, 1 }, 0);
	double dvb = 0;
	for (int k = 0; k < n; k++) {
		for (int d = 0; d < D; d++)
			dw0[d] += ds[k] * h[(size_t)k * D + d];
		dvb += ds[k];
	}
	db0 += (float)dvb;
	ok(memcmp(dw.data(), dw0.data(), D * sizeof(float)) == 0 && db == db0,
	   "value-head dW, db n=%d D=%d: bit-identical to the CPU's", n, D);
	launch([&] { pref_dh_k(dh.data(), ds.data(), w.data(), n, D); }, { 3, 1, 1 }, 0);
	int same = 1;
	for (int k = 0; k < n; k++)
		for (int d = 0; d < D; d++)
			same &= dh[(size_t)k * D + d] == ds[k] * w[d];
	ok(same, "value-head d(hidden) n=%d D=%d (3 blocks, grid-strided): exact", n, D);
}

int main(void)
{
	emu_init();
	test_logp(4, 100);      /* fewer logits than threads */
	test_logp(3, 1000);     /* V off the 256 threads */
	test_capped(3, 700, 5);
	test_means(5, 300, 64);
	test_means(3, 40, 600);  /* columns over two blocks */
	test_value_head(6, 64);
	test_value_head(4, 1000);
	return tap_done();
}
