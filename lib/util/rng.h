/* rng.h - the project's one random generator: splitmix64-seeded
 * xoshiro256**, so the same seed gives the same shuffles, dropout-free
 * draws and samples on every machine. */
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

#endif
