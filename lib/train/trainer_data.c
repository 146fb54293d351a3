/* trainer_data.c - batch sources for the training loop; see trainer.h */
#include "train/trainer.h"
#include "format/batch_io.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- ft-pack streams ---------------------------------------------------- */

typedef struct {
	char **paths;
	size_t n;
	ft_reader *r;
	int is_stdin, started;
	/* The training loop stops after the manifests' count of batches, so
	 * the last one is followed by a check that the input ends there
	 * intact (frame checksum, manifest sha256): 0 when not known. */
	uint64_t total, served;
} stream_src;

/* Batches the inputs hold: each manifest's count times its epochs. */
static uint64_t expected_batches(stream_src *s)
{
	uint64_t total = 0;
	for (size_t i = 0; i < s->n; i++) {
		ft_manifest m;
		int rc = s->is_stdin ? ft_manifest_from_json(json_object_get(ft_reader_header(s->r), "meta"), &m)
				     : ft_manifest_load(s->paths[i], &m);
		if (rc < 0) {
			ft_errclear();
			return 0;
		}
		total += (uint64_t)m.n_batches * (uint64_t)m.epochs;
	}
	return total;
}

static int stream_rewind(void *self)
{
	stream_src *s = self;
	if (s->is_stdin && s->started)
		return ft_fail("<stdin>: cannot read the batches a second time (more than one epoch, "
			       "or evaluation data on stdin): give a file or directory instead");
	if (s->r && s->is_stdin) return 0;   /* opened but nothing read yet */
	if (s->r) ft_reader_close(s->r);
	s->served = 0;
	s->r = ft_reader_open_many((const char *const *)s->paths, s->n);
	return s->r ? 0 : -1;
}

static int stream_next(void *self, ft_batch *b)
{
	stream_src *s = self;
	if (!s->r && stream_rewind(s) < 0) return -1;
	s->started = 1;
	int rc = ft_batch_read(s->r, b);
	if (rc == 1 && s->total && ++s->served == s->total && ft_reader_expect_end(s->r) < 0)
		return -1;
	return rc;
}

static void stream_close(void *self)
{
	stream_src *s = self;
	if (!s) return;
	if (s->r) ft_reader_close(s->r);
	for (size_t i = 0; i < s->n; i++) free(s->paths[i]);
	free(s->paths);
	free(s);
}

int ft_batch_source_open(ft_batch_source *src, const char *const *paths, size_t n)
{
	stream_src *s = ft_xcalloc(1, sizeof *s);
	s->paths = ft_xcalloc(n ? n : 1, sizeof *s->paths);
	s->n = n;
	for (size_t i = 0; i < n; i++) {
		s->paths[i] = ft_xstrdup(paths[i]);
		if (strcmp(paths[i], "-") == 0) s->is_stdin = 1;
	}
	if (s->is_stdin && n > 1) {
		stream_close(s);
		return ft_fail("'-' (stdin) cannot be combined with other batch inputs");
	}
	src->self = s;
	src->rewind = stream_rewind;
	src->next = stream_next;
	src->close = stream_close;
	/* open now so a bad path fails before any work */
	s->r = ft_reader_open_many((const char *const *)s->paths, s->n);
	if (!s->r) {
		stream_close(s);
		return -1;
	}
	s->total = expected_batches(s);
	return 0;
}


int ft_batch_source_manifest(ft_batch_source *src, ft_manifest *m)
{
	stream_src *s = src->self;
	if (!s->r) return ft_fail("the batch input is not open");
	const char *kind = ft_reader_kind(s->r);
	if (!kind || strcmp(kind, "batches") != 0)
		return ft_fail("%s: not a batch stream (kind '%s'; make one with ft-pack)",
			       ft_reader_path(s->r), kind ? kind : "?");
	const json_t *h = ft_reader_header(s->r);
	if (ft_manifest_from_json(json_object_get(h, "meta"), m) < 0)
		return ft_fail_ctx("%s: header: ", ft_reader_path(s->r));
	return 0;
}
