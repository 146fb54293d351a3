/* rng.h - the project's random generators: ft's own, splitmix64-seeded
 * xoshiro256**, so the same seed gives the same shuffles, dropout-free
 * draws and samples on every machine; and MT19937 where ft must draw
 * exactly what torch's CPU generator or Python's random module draws. */
#ifndef FT_RNG_H
#define FT_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } ft_rng;
void ft_rng_seed(ft_rng *g, uint64_t seed);
uint64_t ft_rng_next(ft_rng *g);
uint64_t ft_rng_below(ft_rng *g, uint64_t n);   /* uniform in [0, n) */
double ft_rng_uniform(ft_rng *g);               /* [0, 1), 53 random bits */
void ft_shuffle_i64(ft_rng *g, int64_t *v, size_t n);

/* MT19937, seeded as torch.manual_seed(seed) (init_genrand with the low
 * 32 bits) or as Python's random.seed(seed) for an int seed >= 0
 * (init_by_array over its 32-bit words); ft_mt_next is genrand_uint32. */
typedef struct { uint32_t s[624]; int next; } ft_mt;
void ft_mt_seed_torch(ft_mt *g, uint64_t seed);
void ft_mt_seed_python(ft_mt *g, uint64_t seed);
uint32_t ft_mt_next(ft_mt *g);

#endif
