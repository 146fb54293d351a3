/* batch.c - ft_batch's own memory; see batch.h.  Apart from batch_io.c
 * so that code which only builds or consumes batches (packing, the
 * training loop) links without the stream module. */
#include "format/batch.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

void ft_batch_free(ft_batch *b)
{
	free(b->input_ids);
	free(b->labels);
	free(b->position_ids);
	free(b->segment_ids);
	free(b->kto_tags);
	free(b->lengths);
	memset(b, 0, sizeof *b);
}

static int32_t *dup_i32(const int32_t *src, size_t n)
{
	if (!src) return NULL;
	int32_t *d = ft_xmalloc(n * sizeof *d);
	memcpy(d, src, n * sizeof *d);
	return d;
}

void ft_batch_copy(ft_batch *dst, const ft_batch *src)
{
	size_t n = (size_t)src->B * src->T;
	ft_batch_free(dst);
	*dst = *src;
	dst->input_ids = dup_i32(src->input_ids, n);
	dst->labels = dup_i32(src->labels, n);
	dst->position_ids = dup_i32(src->position_ids, n);
	dst->segment_ids = dup_i32(src->segment_ids, n);
	dst->lengths = dup_i32(src->lengths, (size_t)src->B);
	dst->kto_tags = dup_i32(src->kto_tags, (size_t)src->B);
	dst->cap_ = n;
}
