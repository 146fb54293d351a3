/* vec.h - growable arrays of token ids and floats */
#ifndef FT_VEC_H
#define FT_VEC_H

#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"

typedef struct { int32_t *v; size_t n, cap; } ft_i32vec;
typedef struct { float *v; size_t n, cap; } ft_f32vec;

static inline void ft_i32vec_reserve(ft_i32vec *a, size_t need)
{
	if (need <= a->cap) return;
	size_t cap = a->cap ? a->cap * 2 : 64;
	while (cap < need) cap *= 2;
	a->v = (__typeof__(a->v))ft_xrealloc(a->v, cap * sizeof *a->v);   /* also C++ */
	a->cap = cap;
}
static inline void ft_i32vec_push(ft_i32vec *a, int32_t x)
{
	ft_i32vec_reserve(a, a->n + 1);
	a->v[a->n++] = x;
}
static inline void ft_i32vec_append(ft_i32vec *a, const int32_t *x, size_t n)
{
	ft_i32vec_reserve(a, a->n + n);
	if (n) memcpy(a->v + a->n, x, n * sizeof *x);
	a->n += n;
}
static inline void ft_i32vec_free(ft_i32vec *a) { free(a->v); a->v = NULL; a->n = a->cap = 0; }

static inline void ft_f32vec_reserve(ft_f32vec *a, size_t need)
{
	if (need <= a->cap) return;
	size_t cap = a->cap ? a->cap * 2 : 64;
	while (cap < need) cap *= 2;
	a->v = (__typeof__(a->v))ft_xrealloc(a->v, cap * sizeof *a->v);   /* also C++ */
	a->cap = cap;
}
static inline void ft_f32vec_push(ft_f32vec *a, float x)
{
	ft_f32vec_reserve(a, a->n + 1);
	a->v[a->n++] = x;
}
static inline void ft_f32vec_free(ft_f32vec *a) { free(a->v); a->v = NULL; a->n = a->cap = 0; }

#endif
