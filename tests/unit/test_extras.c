/* test_extras.c - LLaMA-Factory's extras in lib/model and lib/train:
 * NEFTune's magnitude and noise, LLaMA Pro's layer ids, BAdam's blocks and
 * switching.  Fixtures: tests/fixtures/extras/{neftune,llama_pro}.txt
 * (tests/reference/make_extras_fixtures.py: transformers' hook,
 * LLaMA-Factory's formula). */
#include "tap.h"
#include "export/merge.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "train/optim_ext.h"
#include "util/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void neftune(void)
{
	FILE *f = fopen("tests/fixtures/extras/neftune.txt", "r");
	if (!ok(f != NULL, "neftune.txt opens")) return;
	char line[256];
	while (fgets(line, sizeof line, f)) {
		double alpha, want;
		int T, D;
		if (sscanf(line, "max %lf %d %d %la", &alpha, &T, &D, &want) == 4) {
			/* torch's draws stay within mag; ours (ft's generator) too, and
			 * reach it: 4*T*D >= 1024 draws all below 0.99 mag has
			 * probability 0.99^1024 < 4e-5 */
			float mag = ft_neftune_magnitude(alpha, T, D);
			size_t n = (size_t)4 * T * D;
			float *x = calloc(n, sizeof *x);
			ft_neftune_add(x, n, mag, 42);
			float mx = 0;
			for (size_t i = 0; i < n; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
			ok(want <= mag && mx <= mag && mx >= 0.99f * mag,
			   "NEFTune %dx%d: |noise| max %g (torch %g) within mag %g", T, D, mx, want, mag);
			free(x);
		} else if (sscanf(line, "%lf %d %d %la", &alpha, &T, &D, &want) == 4) {
			/* the same correctly rounded float32 operations as the hook (sqrt,
			 * reciprocal, multiply): bit-equal */
			float got = ft_neftune_magnitude(alpha, T, D);
			ok(got == (float)want, "NEFTune mag(alpha %g, T %d, d %d) = %a (transformers %a)", alpha, T,
			   D, got, want);
		}
	}
	fclose(f);
	/* the distribution: mean 0, variance mag^2/3.  n = 2^20 draws: the
	 * mean's standard error is mag/sqrt(3n) ~ 6e-4 mag (bound 5 of them),
	 * the variance's relative one sqrt(0.8/n) ~ 1e-3 (bound 1%) */
	size_t n = 1 << 20;
	float *x = calloc(n, sizeof *x);
	ft_neftune_add(x, n, 1.0f, 7);
	double s = 0, s2 = 0;
	for (size_t i = 0; i < n; i++) {
		s += x[i];
		s2 += (double)x[i] * x[i];
	}
	double mean = s / n, var = s2 / n - mean * mean;
	ok(fabs(mean) < 5 / sqrt(3.0 * n), "NEFTune noise mean %g ~ 0", mean);
	ok(fabs(var * 3 - 1) < 0.01, "NEFTune noise variance %g ~ 1/3", var);
	/* a different seed, a different stream; the same seed, the same */
	float a[8] = {0}, b[8] = {0}, c[8] = {0};
	ft_neftune_add(a, 8, 1, 1);
	ft_neftune_add(b, 8, 1, 2);
	ft_neftune_add(c, 8, 1, 1);
	ok(memcmp(a, b, sizeof a) && !memcmp(a, c, sizeof a), "NEFTune noise is seeded");
	free(x);
}

static void llama_pro(void)
{
	FILE *f = fopen("tests/fixtures/extras/llama_pro.txt", "r");
	if (!ok(f != NULL, "llama_pro.txt opens")) return;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		int L, n, off;
		if (sscanf(line, "%d %d%n", &L, &n, &off) != 2) continue;
		int want[128] = {0}, id, k;
		for (char *p = line + off; sscanf(p, "%d%n", &id, &k) == 1; p += k) want[id] = 1;
		int same = 1;
		for (int l = 0; l < L; l++) same &= ft_llama_pro_layer(L, n, l) == want[l];
		ok(same, "LLaMA Pro: %d layers, %d expanded: LLaMA-Factory's ids", L, n);
	}
	fclose(f);
	ok(!ft_llama_pro_layer(8, 3, 2) && !ft_llama_pro_layer(8, -2, 7), "LLaMA Pro: no layer when L %% n != 0");

	/* the model's trainable tensors follow it (freeze tuning) */
	ft_config c = { .arch = FT_ARCH_LLAMA, .vocab_size = 16, .hidden_size = 8, .intermediate_size = 8,
			.num_hidden_layers = 4, .num_attention_heads = 2, .num_key_value_heads = 2, .head_dim = 4,
			.max_position_embeddings = 16, .rms_norm_eps = 1e-6, .rope_theta = 1e4, .rope_factor = 1,
			.initializer_range = 0.02 };
	snprintf(c.rope_type, sizeof c.rope_type, "default");
	ft_tune_opts o = { .type = FT_FT_FREEZE, .freeze_trainable_layers = 2, .use_llama_pro = 1 };
	ft_model *m = ft_model_from_config(&c, &o);
	if (!ok(m != NULL, "LLaMA Pro: a 4-layer model")) return;
	int right = 1, any = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		int l = -1;
		sscanf(p->name, "model.layers.%d.", &l);
		right &= p->trainable == (l == 1 || l == 3);
		any += p->trainable;
	}
	ok(right && any == 18, "LLaMA Pro: layers 1 and 3 train (%d tensors), nothing else", any);
	ft_model_free(m);
}

/* BAdam over fake params: blocks from the names, the switch schedule. */
static void badam(void)
{
	const char *names[] = { "model.embed_tokens.weight", "model.layers.0.a.weight",
				"model.layers.0.b.bias", "model.layers.1.a.weight", "model.layers.10.a.weight",
				"model.layers.1.b.weight", "model.norm.weight", "lm_head.weight" };
	enum { NP = sizeof names / sizeof *names };
	int blk[NP] = { -1, 0, 0, 1, 2, 1, -1, -1 };
	ft_param ps[NP];
	ft_param *pp[NP];
	float w[NP][2], g[NP][2];
	for (int i = 0; i < NP; i++) {
		ps[i] = (ft_param){ .name = (char *)names[i], .w = w[i], .g = g[i], .n = 2, .ndim = 1,
				    .shape = { 2, 0 }, .trainable = 1 };
		pp[i] = &ps[i];
		w[i][0] = w[i][1] = 1;
	}
	ft_badam_opts o = { .mode = FT_BADAM_ASCENDING, .switch_interval = 3, .beta1 = 0.9, .beta2 = 0.999,
			    .eps = 1e-8 };
	ft_optim_ext *e = ft_badam_new(pp, NP, &o);
	if (!ok(e != NULL, "BAdam over named params")) return;
	/* (global_step + 1) % 3 == 0 switches: block 0 for 2 steps, then 3 each */
	int want[] = { 0, 0, 1, 1, 1, 2, 2, 2, 0, 0 }, right = 1;
	for (int s = 0; s < 10; s++) {
		float before[NP];
		for (int i = 0; i < NP; i++) {
			g[i][0] = g[i][1] = 1;
			before[i] = w[i][0];
		}
		e->pre_clip(e->self);
		for (int i = 0; i < NP; i++) right &= (g[i][0] != 0) == (blk[i] == want[s]);
		e->step(e->self, NULL, 1e-2, 1);
		for (int i = 0; i < NP; i++) right &= (w[i][0] != before[i]) == (blk[i] == want[s]);
	}
	ok(right, "BAdam: layers.0, layers.1 (not layers.10), layers.10 in turn; the rest never moves");
	ft_optim_ext_free(e);
	o.switch_interval = 0;
	ok(ft_badam_new(pp, NP, &o) == NULL, "BAdam: interval 0 refused");
	o.switch_interval = 3;
	o.has_start_block = 1;
	o.start_block = 3;
	ok(ft_badam_new(pp, NP, &o) == NULL, "BAdam: start block out of range refused");
	ok(ft_badam_new(pp, 1, &o) == NULL, "BAdam: no layer params refused");
}

/* ft-merge of adapter against PEFT's merge_and_unload (the two modules of
 * fixture), within bound times the largest weight:
 * - PEFT's DoRA adapter (llama-dora-init): W + sBA, each row scaled by
 *   magnitude / norm; float32 sums in another order, measured 2e-7, bound
 *   1e-6;
 * - ft's DoRA+PiSSA adapter (llama-pissa-dora): the PiSSA init redone on
 *   the original base (the residual W_res), then the same on W_res + sBA.
 *   The float32 SVD of these flat spectra (sigma_4 and sigma_5 of down_proj
 *   0.5% apart) is ill-conditioned: PEFT's own merge is 2.9e-5 from the
 *   float64 one (2.5e-6 on q_proj), ft's 6.6e-6 from PEFT's (2.8e-6), so
 *   the bound is 1e-4; merging without the residual or without the
 *   magnitude is 0.13 to 0.33 off. */
static void dora_merge(const char *adapter, const char *fixture, const char *what, double bound)
{
	char dir[] = "/tmp/ft-test-dora-XXXXXX";
	if (!ok(mkdtemp(dir) != NULL, "a scratch directory")) return;
	char *out = ft_xasprintf("%s/merged", dir);
	const char *ad[] = { adapter };
	ft_merge_opts o = { .model_dir = "tests/fixtures/models/tiny-llama", .adapters = ad, .nadapters = 1,
			    .export_dir = out, .export_dtype = FT_F32, .threads = 1 };
	int rc = ft_merge(&o);
	if (!ok(rc == 0, "ft_merge of a %s adapter: %s", what, rc ? ft_errmsg() : "ok")) return;
	ft_st *want = ft_st_open(fixture), *got = ft_st_open(out);
	if (!ok(want && got, "both merged models open")) return;
	for (size_t i = 0; i < ft_st_count(want); i++) {
		const ft_st_tensor *w = ft_st_at(want, i), *g = ft_st_find(got, w->name);
		if (!ok(g && g->numel == w->numel, "%s merged", w->name)) continue;
		float *a = malloc(w->numel * sizeof *a), *b = malloc(w->numel * sizeof *b);
		ft_st_read_f32(w, a);
		ft_st_read_f32(g, b);
		double mx = 0, d = 0;
		for (size_t k = 0; k < w->numel; k++) {
			mx = fabs(a[k]) > mx ? fabs(a[k]) : mx;
			d = fabs(a[k] - b[k]) > d ? fabs(a[k] - b[k]) : d;
		}
		ok(d <= bound * mx, "%s: ft-merge vs PEFT's %s merge, max error %.3g of %.3g", w->name, what, d, mx);
		free(a);
		free(b);
	}
	ft_st_close(want);
	ft_st_close(got);
	char *cmd = ft_xasprintf("rm -rf '%s'", dir);
	ok(system(cmd) == 0, "scratch removed");
	free(cmd);
	free(out);
}

static float *embeddings(ft_model *m)
{
	for (size_t i = 0; i < ft_model_nparams(m); i++)
		if (strcmp(ft_model_param(m, i)->name, "model.embed_tokens.weight") == 0)
			return ft_model_param(m, i)->w;
	return NULL;
}

/* Gemma: transformers' hook noises the embedding module's output, which
 * Gemma{2,3}TextScaledWordEmbedding has already scaled by sqrt(d): the
 * first layer sees wte[id] * sqrt(d) + noise, bit for bit (the stream of
 * the model's current forward call: none made yet, call 0), not
 * (wte[id] + noise) * sqrt(d); without noise (eval), wte[id] * sqrt(d). */
static void neftune_gemma(void)
{
	ft_tune_opts o = { .type = FT_FT_FULL, .seed = 11, .neftune_noise_alpha = 5 };
	ft_model *m = ft_model_load("tests/fixtures/families/gemma2/model", &o);
	float *w = m ? embeddings(m) : NULL;
	if (!ok(w != NULL, "gemma2 loads, its embeddings a parameter (%s)", m ? "" : ft_errmsg())) {
		ft_model_free(m);
		return;
	}
	enum { T = 6 };
	int D = ft_model_config(m)->hidden_size, V = ft_model_config(m)->vocab_size;
	int32_t ids[T];
	for (int i = 0; i < T; i++) ids[i] = (i * 29 + 3) % V;
	size_t n = (size_t)T * D;
	float *x = malloc(n * sizeof *x), *x0 = malloc(n * sizeof *x0);
	float *after = malloc(n * sizeof *after), *before = malloc(n * sizeof *before);
	float mag = ft_neftune_magnitude(5, T, D), sc = (float)sqrt((double)D);
	for (size_t i = 0; i < n; i++) {
		float e = w[(size_t)ids[i / D] * D + i % D];
		after[i] = e * sc;
		before[i] = e;
	}
	ft_neftune_add(after, n, mag, ft_neftune_seed(11, 0));
	ft_neftune_add(before, n, mag, ft_neftune_seed(11, 0));
	for (size_t i = 0; i < n; i++) before[i] *= sc;
	ft_model_embed(m, ids, 1, T, 1, x);
	ft_model_embed(m, ids, 1, T, 0, x0);
	int clean = 1;
	for (size_t i = 0; i < n; i++) clean &= x0[i] == w[(size_t)ids[i / D] * D + i % D] * sc;
	ok(!memcmp(x, after, n * sizeof *x) && memcmp(x, before, n * sizeof *x) && clean,
	   "gemma2: NEFTune noises the sqrt(d)-scaled embeddings (transformers' scaled embedding module), "
	   "not before the scale; eval's input is the scaled rows alone");
	free(x), free(x0), free(after), free(before);
	ft_model_free(m);
}

int main(void)
{
	neftune();
	neftune_gemma();
	llama_pro();
	badam();
	dora_merge("tests/fixtures/extras/llama-dora-init", "tests/fixtures/extras/llama-dora-merged.safetensors",
		   "DoRA", 1e-6);
	dora_merge("tests/fixtures/extras/llama-pissa-dora",
		   "tests/fixtures/extras/llama-pissa-dora-merged.safetensors", "DoRA+PiSSA", 1e-4);
	return tap_done();
}
