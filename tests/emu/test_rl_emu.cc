/* test_rl_emu.cc - the RL stages' use of the log-prob kernel
 * (pref_logp_k in lib/cuda/pref_kernels.cuh, the source nvcc compiles
 * into libft_cuda.so; test_pref_emu.cc checks it without a temperature)
 * on the host under tests/emu/emu.h: GRPO's temperature and the
 * entropies GRPO and PPO log, against the CPU path's arithmetic
 * (lib/model/model_pref.c: ft_k_temper and ft_k_row_entropy of the
 * shared lib/model/kernels.h, which model_pref.c calls; the log-prob
 * backward's g / t and the cap's gradient, restated here from the same
 * header's ft_k_ce_row and ft_k_softcap_grad).
 *
 * Tolerances, from the computation (as test_pref_emu.cc):
 *  - the tempered logit is the same float division z / t on both sides,
 *    so the max is bit-equal and the exp sums agree to ~1e-15 relative
 *    (256 strided double partials and a tree against a left-to-right
 *    loop): log-probs within 1e-6 absolute of values of order log V;
 *  - the entropy: two double sums in another order, then log and one
 *    float rounding: 2 float ulps of values of order log V (1e-6);
 *  - the gradient: the same per-element expressions (ft_k_ce_grad of the
 *    tempered logit, the scale g / t, ft_k_softcap_grad of the capped
 *    one) with a sum equal to ~1e-15: 1e-6 of the row's largest entry;
 *  - temperature 1 divides exactly (z / 1 == z, g / 1 == g): bit-identical
 *    to no temperature; asking for the entropies leaves the log-probs bit
 *    for bit.
 * A missed division (t = 0.7) moves log-probs and entropies by > 1e-2. */
#include "emu.h"
#include "tap.h"
#include "cuda/reduce.cuh"
/* pref_kernels.cuh's other kernels are not exercised here */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "cuda/pref_kernels.cuh"

static unsigned rng = 4242;
static float frand(void)
{
	rng = rng * 1103515245u + 12345u;
	return ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* n rows of V (capped when cap > 0) logits at temperature t: log-probs,
 * entropies, and the gradient of g * logp, one row without a target */
static void test_tempered(int n, int V, float t, float cap)
{
	std::vector<float> l((size_t)n * V), zt((size_t)n * V), ref((size_t)n * V), g(n), ent(n);
	std::vector<int32_t> tg(n);
	std::vector<double> lp(n);
	for (auto &x : l)
		x = cap > 0 ? ft_k_softcap(12 * frand() + 3, cap) : 4 * frand();
	for (int i = 0; i < n; i++) {
		tg[i] = i == 1 ? -100 : (int)((unsigned)(frand() * 1e4f + 2e4f) % (unsigned)V);
		g[i] = 0.5f * frand();
	}
	for (size_t i = 0; i < l.size(); i++)
		zt[i] = ft_k_temper(l[i], t);   /* model_pref.c's temper() */
	std::vector<float> l0 = l;
	launch([&] { pref_logp_k(l.data(), lp.data(), tg.data(), NULL, V, cap, t, ent.data()); },
	       { (unsigned)n, 1, 1 }, 0);
	double elp = 0, ee = 0;
	int notarget = lp[1] == 0 && ent[1] == 0;
	for (int i = 0; i < n; i++) {
		if (tg[i] < 0) continue;
		const float *r = zt.data() + (size_t)i * V;
		elp = fmax(elp, fabs(lp[i] + ft_k_ce_row(NULL, r, V, tg[i], 1)));
		ee = fmax(ee, fabs((double)ent[i] - ft_k_row_entropy(r, V)));
	}
	ok(elp <= 1e-6 && ee <= 1e-6 && notarget && memcmp(l.data(), l0.data(), l.size() * 4) == 0,
	   "t=%g cap=%g n=%d V=%d: logp within %.2g, entropy within %.2g of the CPU's, logits untouched",
	   (double)t, (double)cap, n, V, elp, ee);
	/* backward: model_pref.c's g / t, the CE gradient of the tempered row,
	 * then through the cap with the capped logits */
	for (int i = 0; i < n; i++) {
		float *r = ref.data() + (size_t)i * V;
		float gi = g[i] / t;
		ft_k_ce_row(r, zt.data() + (size_t)i * V, V, tg[i], -gi);
		for (int j = 0; cap > 0 && j < V; j++)
			r[j] = ft_k_softcap_grad(r[j], l0[(size_t)i * V + j], cap);
	}
	launch([&] { pref_logp_k(l.data(), lp.data(), tg.data(), g.data(), V, cap, t); },
	       { (unsigned)n, 1, 1 }, 0);
	double eg = 0, mx = 0;
	for (size_t i = 0; i < l.size(); i++) {
		eg = fmax(eg, fabs((double)l[i] - ref[i]));
		mx = fmax(mx, fabs((double)ref[i]));
	}
	ok(eg <= 1e-6 * mx, "t=%g cap=%g n=%d V=%d: dlogp within %.2g of the CPU's (max %.2g)", (double)t,
	   (double)cap, n, V, eg, mx);
}

/* temperature 1 is no temperature, and the entropies change nothing
 * else: log-probs and gradients bit for bit */
static void test_untempered(int n, int V)
{
	std::vector<float> a((size_t)n * V), g(n), ent(n);
	std::vector<int32_t> tg(n);
	std::vector<double> la(n), lb(n), lc(n);
	for (auto &x : a) x = 4 * frand();
	for (int i = 0; i < n; i++) {
		tg[i] = (int)((unsigned)(frand() * 1e4f + 2e4f) % (unsigned)V);
		g[i] = 0.5f * frand();
	}
	std::vector<float> b = a, c = a;
	launch([&] { pref_logp_k(c.data(), lc.data(), tg.data(), NULL, V, 0, 0, ent.data()); }, { (unsigned)n, 1, 1 }, 0);
	launch([&] { pref_logp_k(a.data(), la.data(), tg.data(), g.data(), V); }, { (unsigned)n, 1, 1 }, 0);
	launch([&] { pref_logp_k(b.data(), lb.data(), tg.data(), g.data(), V, 0, 1); }, { (unsigned)n, 1, 1 }, 0);
	ok(memcmp(a.data(), b.data(), a.size() * 4) == 0 && memcmp(la.data(), lb.data(), n * 8) == 0 &&
	   memcmp(la.data(), lc.data(), n * 8) == 0 && ent[0] > 0,
	   "n=%d V=%d: t=1 bit-identical to none, log-probs with entropies bit-identical to without", n, V);
}

int main(void)
{
	emu_init();
	test_tempered(4, 100, 0.7f, 0);     /* fewer logits than threads */
	test_tempered(3, 1000, 1.3f, 0);    /* V off the 256 threads */
	test_tempered(3, 700, 0.7f, 5);     /* Gemma 2's cap: the gradient through it */
	test_untempered(3, 1000);
	return tap_done();
}
