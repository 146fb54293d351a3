/* rng.c - splitmix64-seeded xoshiro256**; see rng.h */
#include "util/rng.h"

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void ft_rng_seed(ft_rng *g, uint64_t seed)
{
	for (int i = 0; i < 4; i++) g->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ft_rng_next(ft_rng *g)
{
	uint64_t *s = g->s, r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
	s[2] ^= t; s[3] = rotl(s[3], 45);
	return r;
}

uint64_t ft_rng_below(ft_rng *g, uint64_t n)
{
	/* Rejection sampling: no modulo bias, same results everywhere. */
	uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
	do x = ft_rng_next(g); while (x >= limit);
	return x % n;
}

double ft_rng_uniform(ft_rng *g)
{
	return (ft_rng_next(g) >> 11) * 0x1.0p-53;
}

void ft_shuffle_i64(ft_rng *g, int64_t *v, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)ft_rng_below(g, i);
		int64_t t = v[i - 1]; v[i - 1] = v[j]; v[j] = t;
	}
}
