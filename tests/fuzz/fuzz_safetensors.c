/* fuzz_safetensors.c - a safetensors header and every tensor read as f32 */
#include "fuzz.h"
#include "format/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	ft_st *st = ft_st_open(fuzz_file("model.safetensors", data, n));
	if (!st) return 0;
	for (size_t i = 0; i < ft_st_count(st); i++) {
		const ft_st_tensor *t = ft_st_at(st, i);
		size_t elems = 1;
		for (int d = 0; d < t->ndim; d++) elems *= (size_t)t->shape[d];
		if (elems > (1u << 20)) continue;
		float *buf = malloc((elems ? elems : 1) * sizeof *buf);
		ft_st_read_f32(t, buf);
		free(buf);
	}
	ft_st_close(st);
	return 0;
}
