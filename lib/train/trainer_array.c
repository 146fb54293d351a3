/* trainer_array.c - an in-memory batch source (tests, tools that build
 * batches themselves); apart from trainer_data.c so it links without the
 * stream module. */
#include "train/trainer.h"
#include "format/batch.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- in-memory arrays ------------------------------------------------------ */

typedef struct {
	const ft_batch *b;
	size_t n, i;
} array_src;

static int array_rewind(void *self)
{
	((array_src *)self)->i = 0;
	return 0;
}

/* Copies into the caller's batch (it owns and frees its arrays). */
static int array_next(void *self, ft_batch *out)
{
	array_src *s = self;
	if (s->i >= s->n) return 0;
	ft_batch_copy(out, &s->b[s->i++]);
	return 1;
}

static void array_close(void *self)
{
	free(self);
}

ft_batch_source ft_batch_source_array(const ft_batch *b, size_t n)
{
	array_src *s = ft_xcalloc(1, sizeof *s);
	s->b = b;
	s->n = n;
	ft_batch_source src = { s, array_rewind, array_next, array_close };
	return src;
}
