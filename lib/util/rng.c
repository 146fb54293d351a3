/* rng.c - splitmix64-seeded xoshiro256** and MT19937; see rng.h */
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

/* ---- MT19937 (CPython's Modules/_randommodule.c, torch's mt19937) ---- */

static void init_genrand(ft_mt *g, uint32_t s)
{
	g->s[0] = s;
	for (int i = 1; i < 624; i++)
		g->s[i] = 1812433253u * (g->s[i - 1] ^ (g->s[i - 1] >> 30)) + (uint32_t)i;
	g->next = 624;
}

void ft_mt_seed_torch(ft_mt *g, uint64_t seed)
{
	init_genrand(g, (uint32_t)seed);
}

/* init_by_array over seed's 32-bit words, least significant first ([0]
 * for 0), as random.seed(n) does for an int n >= 0. */
void ft_mt_seed_python(ft_mt *g, uint64_t seed)
{
	uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
	int len = key[1] ? 2 : 1;
	init_genrand(g, 19650218u);
	uint32_t *mt = g->s;
	int i = 1, j = 0;
	for (int k = 624 > len ? 624 : len; k; k--) {
		mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
		i++;
		j++;
		if (i >= 624) {
			mt[0] = mt[623];
			i = 1;
		}
		if (j >= len) j = 0;
	}
	for (int k = 623; k; k--) {
		mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
		i++;
		if (i >= 624) {
			mt[0] = mt[623];
			i = 1;
		}
	}
	mt[0] = 0x80000000u;
	g->next = 624;
}

uint32_t ft_mt_next(ft_mt *g)
{
	uint32_t *mt = g->s, y;
	if (g->next >= 624) {
		int k;
		for (k = 0; k < 624 - 397; k++) {
			y = (mt[k] & 0x80000000u) | (mt[k + 1] & 0x7fffffffu);
			mt[k] = mt[k + 397] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
		}
		for (; k < 623; k++) {
			y = (mt[k] & 0x80000000u) | (mt[k + 1] & 0x7fffffffu);
			mt[k] = mt[k + (397 - 624)] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
		}
		y = (mt[623] & 0x80000000u) | (mt[0] & 0x7fffffffu);
		mt[623] = mt[396] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
		g->next = 0;
	}
	y = mt[g->next++];
	y ^= y >> 11;
	y ^= (y << 7) & 0x9d2c5680u;
	y ^= (y << 15) & 0xefc60000u;
	y ^= y >> 18;
	return y;
}
