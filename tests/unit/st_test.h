/* st_test.h - reading reference tensors from a safetensors fixture, for
 * the C tests (tests/unit, tests/gpu). */
#ifndef FT_TESTS_ST_TEST_H
#define FT_TESTS_ST_TEST_H

#include <stdlib.h>
#include "format/safetensors.h"

/* tensor NAME of ST as n floats (malloc'd), or NULL when it is absent or
 * has another size: a fixture that does not match fails the check */
__attribute__((unused))
static float *tensor_f32(const ft_st *st, const char *name, size_t n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t || t->numel != n)
		return NULL;
	float *r = malloc(n * sizeof(float));
	ft_st_read_f32(t, r);
	return r;
}

/* tensor NAME of ST as floats (malloc'd; *n its count when n is not
 * NULL), or NULL when it is absent */
__attribute__((unused))
static float *st_f32(const ft_st *st, const char *name, size_t *n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return NULL;
	float *v = malloc(t->numel * sizeof *v);
	ft_st_read_f32(t, v);
	if (n) *n = t->numel;
	return v;
}

#endif
