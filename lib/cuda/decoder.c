/* decoder.c - ft_cuda_infer as an ft_decoder; see decoder.h */
#include "cuda/decoder.h"
#include "util/error.h"

#include <stdlib.h>

struct ft_cuda_decoder {
	ft_model *m;
	ft_cuda_infer_opts o;    /* precision, device, knobs, weights_of */
	int max_new;
	ft_cuda_infer *c;
};

/* (Re)build the device decoder for at least rows x cap tokens; prompts
 * up to max_prompt go through the batched prefill, longer ones through
 * the cache path (ft_cuda.h).  A rebuild keeps the larger dimensions, so
 * alternating group shapes do not upload the weights again each time. */
static int build(ft_cuda_decoder *d, int rows, int cap, int max_prompt)
{
	ft_cuda_infer_opts io = d->o;
	io.rows = rows, io.cap = cap, io.max_prompt = max_prompt;
	if (d->c) {
		const ft_cuda_infer_opts *h = ft_cuda_infer_options(d->c);
		if (h->rows > io.rows) io.rows = h->rows;
		if (h->cap > io.cap) io.cap = h->cap;
		if (h->max_prompt > io.max_prompt) io.max_prompt = h->max_prompt;
		ft_cuda_infer_free(d->c);
	}
	if (io.max_prompt > io.cap) io.max_prompt = io.cap;
	d->c = ft_cuda_infer_new(d->m, &io);
	return d->c ? 0 : -1;
}

ft_cuda_decoder *ft_cuda_decoder_new(ft_model *m, const ft_cuda_infer_opts *o, int max_new)
{
	ft_cuda_decoder *d = ft_xcalloc(1, sizeof *d);
	*d = (ft_cuda_decoder){ m, *o, max_new, NULL };
	int rows = o->rows < 1 ? 1 : o->rows, max_prompt = o->max_prompt < 1 ? 1 : o->max_prompt;
	if (build(d, rows, max_prompt + max_new, max_prompt) < 0) {
		free(d);
		return NULL;
	}
	return d;
}

int ft_cuda_decoder_refresh(ft_cuda_decoder *d)
{
	return ft_cuda_infer_refresh(d->c);
}

static void *dev_open(void *ctx, int rows, int cap)
{
	ft_cuda_decoder *d = ctx;
	const ft_cuda_infer_opts *h = ft_cuda_infer_options(d->c);
	if (rows > h->rows || cap > h->cap) {
		int mp = cap - d->max_new > 0 ? cap - d->max_new : 1;
		if (build(d, rows, cap, mp) < 0) return NULL;
	}
	ft_cuda_infer_reset(d->c);
	return d->c;
}

static int dev_forward(void *ctx, void *cache, const int32_t *tokens, const int *rows, int N,
		       const int *want, float *logits)
{
	(void)ctx;
	return ft_cuda_infer_forward(cache, tokens, rows, N, want, logits);
}

static void dev_close(void *ctx, void *cache) { (void)ctx, (void)cache; }

ft_decoder ft_cuda_decoder_ops(ft_cuda_decoder *d)
{
	return (ft_decoder){ d, ft_model_config(d->m)->vocab_size, dev_open, dev_forward, dev_close };
}

const ft_cuda_infer_plan *ft_cuda_decoder_plan(const ft_cuda_decoder *d)
{
	return ft_cuda_infer_get_plan(d->c);
}

void ft_cuda_decoder_free(ft_cuda_decoder *d)
{
	if (!d) return;
	ft_cuda_infer_free(d->c);   /* NULL after a failed rebuild */
	free(d);
}
