/* batch.c - ft_batch's own memory; see batch.h.  Apart from batch_io.c
 * so that code which only builds or consumes batches (packing, the
 * training loop) links without the stream module. */
#include "format/batch.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void ft_batch_free(ft_batch *b)
{
	free(b->input_ids);
	free(b->labels);
	free(b->position_ids);
	free(b->segment_ids);
	free(b->kto_tags);
	json_decref(b->extra_columns);
	memset(b, 0, sizeof *b);
}
