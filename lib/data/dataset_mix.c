/* dataset_mix.c - datasets.interleave_datasets as llamafactory calls it
 * (mix_strategy interleave_under = first_exhausted, interleave_over =
 * all_exhausted), including numpy's default_rng(seed).choice(p=...) so the
 * same seed picks the same rows: SeedSequence, PCG64 (XSL-RR 128/64),
 * random() doubles and the cdf search of Generator.choice. */
#include <stdlib.h>
#include <string.h>
#include "data/dataset.h"
#include "util/error.h"

/* ---- numpy SeedSequence -> PCG64 -------------------------------------- */

#define INIT_A 0x43b0d7e5u
#define MULT_A 0x931e8875u
#define INIT_B 0x8b51f9ddu
#define MULT_B 0x58f38dedu
#define MIX_MULT_L 0xca01f9ddu
#define MIX_MULT_R 0x4973f715u

static uint32_t hashmix(uint32_t v, uint32_t *hc)
{
	v ^= *hc;
	*hc *= MULT_A;
	v *= *hc;
	v ^= v >> 16;
	return v;
}

static uint32_t mix(uint32_t x, uint32_t y)
{
	uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
	return r ^ (r >> 16);
}

/* SeedSequence(seed).generate_state(4, uint64) */
static void seed_state(uint64_t seed, uint64_t out[4])
{
	uint32_t ent[2];
	size_t nent = 0;
	ent[nent++] = (uint32_t)seed;
	if (seed >> 32) ent[nent++] = (uint32_t)(seed >> 32);
	uint32_t pool[4], hc = INIT_A;
	for (size_t i = 0; i < 4; i++) pool[i] = hashmix(i < nent ? ent[i] : 0, &hc);
	for (size_t s = 0; s < 4; s++)
		for (size_t d = 0; d < 4; d++)
			if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], &hc));
	uint32_t w[8], hb = INIT_B;
	for (size_t i = 0; i < 8; i++) {
		uint32_t v = pool[i % 4];
		v ^= hb;
		hb *= MULT_B;
		v *= hb;
		v ^= v >> 16;
		w[i] = v;
	}
	for (size_t i = 0; i < 4; i++) out[i] = (uint64_t)w[2 * i] | ((uint64_t)w[2 * i + 1] << 32);
}

typedef unsigned __int128 u128;
typedef struct { u128 state, inc; } pcg64;

static const u128 PCG_MULT = ((u128)0x2360ed051fc65da4ULL << 64) | 0x4385df649fccf645ULL;

static void pcg_step(pcg64 *r) { r->state = r->state * PCG_MULT + r->inc; }

static uint64_t pcg_next(pcg64 *r)
{
	pcg_step(r);
	uint64_t hi = (uint64_t)(r->state >> 64), lo = (uint64_t)r->state;
	unsigned rot = (unsigned)(hi >> 58);
	uint64_t x = hi ^ lo;
	return (x >> rot) | (x << ((64 - rot) & 63));
}

static void pcg_seed(pcg64 *r, uint64_t seed)
{
	uint64_t v[4];
	seed_state(seed, v);
	u128 initstate = ((u128)v[0] << 64) | v[1], initseq = ((u128)v[2] << 64) | v[3];
	r->state = 0;
	r->inc = (initseq << 1) | 1;
	pcg_step(r);
	r->state += initstate;
	pcg_step(r);
}

void ft_numpy_choice(uint64_t seed, const double *p, size_t n, size_t count, int *out)
{
	/* a generator per call: callers ask for consecutive 1000-draw blocks
	 * through one long call, as datasets draws them */
	pcg64 r;
	pcg_seed(&r, seed);
	double *cdf = ft_xmalloc(n * sizeof *cdf);
	double acc = 0;
	for (size_t i = 0; i < n; i++) cdf[i] = acc += p[i];
	for (size_t i = 0; i < n; i++) cdf[i] /= cdf[n - 1];
	for (size_t k = 0; k < count; k++) {
		double u = (double)(pcg_next(&r) >> 11) * (1.0 / 9007199254740992.0);
		size_t j = 0;   /* searchsorted(side="right"): first cdf > u */
		while (j < n && cdf[j] <= u) j++;
		out[k] = (int)(j < n ? j : n - 1);
	}
	free(cdf);
}

/* ---- mixing ---------------------------------------------------------- */

int ft_mix_parse(const char *s)
{
	if (!strcmp(s, "concat")) return FT_MIX_CONCAT;
	if (!strcmp(s, "interleave_under")) return FT_MIX_UNDER;
	if (!strcmp(s, "interleave_over")) return FT_MIX_OVER;
	return ft_fail("unknown mix strategy '%s' (concat, interleave_under, interleave_over)", s);
}

static void copy_example(ft_example *d, const ft_example *s)
{
	*d = *s;
	d->prompt = ft_xmalloc((s->n_prompt ? s->n_prompt : 1) * sizeof *d->prompt);
	d->response = ft_xmalloc((s->n_response ? s->n_response : 1) * sizeof *d->response);
	for (size_t i = 0; i < s->n_prompt; i++) {
		d->prompt[i].role = s->prompt[i].role;
		d->prompt[i].content = ft_xstrdup(s->prompt[i].content);
	}
	for (size_t i = 0; i < s->n_response; i++) {
		d->response[i].role = s->response[i].role;
		d->response[i].content = ft_xstrdup(s->response[i].content);
	}
	d->system = s->system ? ft_xstrdup(s->system) : NULL;
	d->tools = s->tools ? ft_xstrdup(s->tools) : NULL;
	d->why = s->why ? ft_xstrdup(s->why) : NULL;
	d->extra = json_incref(s->extra);   /* shared, read only */
}

static void take(ft_dataset *out, const ft_dataset *src, size_t row)
{
	if (out->n == out->cap) {
		out->cap = out->cap ? out->cap * 2 : 256;
		out->v = ft_xrealloc(out->v, out->cap * sizeof *out->v);
	}
	copy_example(&out->v[out->n++], &src->v[row]);
}

void ft_dataset_take(ft_dataset *d, size_t n)
{
	if (n <= d->n) {
		for (size_t i = n; i < d->n; i++) ft_example_free(&d->v[i]);
		d->n = n;
		return;
	}
	size_t have = d->n;
	for (size_t i = have; i < n && have; i++) take(d, d, i % have);
}

int ft_dataset_mix(ft_dataset *ds, size_t n, int strategy, const double *probs, uint64_t seed,
		   ft_dataset *out)
{
	memset(out, 0, sizeof *out);
	if (strategy == FT_MIX_CONCAT || n == 1) {
		for (size_t i = 0; i < n; i++) ft_dataset_concat(out, &ds[i]);
		return 0;
	}
	size_t minlen = (size_t)-1, maxlen = 0;
	for (size_t i = 0; i < n; i++) {
		if (ds[i].n < minlen) minlen = ds[i].n;
		if (ds[i].n > maxlen) maxlen = ds[i].n;
	}
	if (!probs) {   /* round robin over the sources */
		size_t rounds = strategy == FT_MIX_UNDER ? minlen : maxlen;
		for (size_t k = 0; k < rounds; k++)
			for (size_t i = 0; i < n; i++)
				if (ds[i].n) take(out, &ds[i], k % ds[i].n);
	} else {
		for (size_t i = 0; i < n; i++) {
			if (probs[i] < 0) return ft_fail("interleave_probs must not be negative");
			if (probs[i] > 0 && ds[i].n == 0)
				return ft_fail("dataset %zu is empty but has a non-zero interleave probability", i + 1);
			if (strategy == FT_MIX_OVER && probs[i] == 0)
				return ft_fail("interleave_over cannot exhaust dataset %zu: its probability is 0", i + 1);
		}
		size_t *count = ft_xcalloc(n, sizeof *count);
		size_t reached = 0, drawable = 0, cap = 0, used = 0;
		for (size_t i = 0; i < n; i++) drawable += probs[i] > 0;
		int *draws = NULL;
		int done = 0;
		while (!done) {
			/* the k-th block of 1000 draws of one generator */
			cap += 1000;
			draws = ft_xrealloc(draws, cap * sizeof *draws);
			ft_numpy_choice(seed, probs, n, cap, draws);
			for (; used < cap && !done; used++) {
				size_t s = (size_t)draws[used];
				take(out, &ds[s], count[s] % ds[s].n);
				if (++count[s] == ds[s].n) reached++;
				done = strategy == FT_MIX_UNDER ? reached > 0 : reached == drawable;
			}
		}
		free(draws);
		free(count);
	}
	/* the outputs reference the inputs' source names: keep them */
	for (size_t i = 0; i < n; i++) {
		out->sources = ft_xrealloc(out->sources, (out->n_sources + ds[i].n_sources) * sizeof *out->sources);
		memcpy(out->sources + out->n_sources, ds[i].sources, ds[i].n_sources * sizeof *ds[i].sources);
		out->n_sources += ds[i].n_sources;
		free(ds[i].sources);
		ds[i].sources = NULL;
		ds[i].n_sources = 0;
		ft_dataset_free(&ds[i]);
	}
	return 0;
}
