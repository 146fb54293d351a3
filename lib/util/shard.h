/* shard.h - the one split of `total` elements into n contiguous parts,
 * shared by the CPU trainer's ZeRO-1 (lib/train/dist_shard.c) and the
 * device's (lib/cuda/zero.cu), so both shard the AdamW state the same
 * way and a checkpoint is the same whoever wrote it. */
#ifndef FT_SHARD_H
#define FT_SHARD_H

#include <stddef.h>

/* Part k: [*lo, *hi); the first total % n parts get one element more. */
static inline void ft_shard_range(size_t total, int n, int k, size_t *lo, size_t *hi)
{
	if (n < 1) n = 1;
	size_t base = total / (size_t)n, extra = total % (size_t)n, kk = (size_t)k;
	*lo = kk * base + (kk < extra ? kk : extra);
	*hi = *lo + base + (kk < extra);
}

#endif
