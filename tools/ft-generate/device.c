/* device.c - ft-generate --device: resolving it as ft-train does
 * (lib/model/device.h) and the decoder the prompts run on: the CPU's
 * (ft_generate) or the GPU's KV-cache decoder (lib/cuda/ft_cuda.h),
 * planned for the prompts before anything is allocated. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "ft-generate.h"

struct gen_device {
	ft_model *m;
	int index;
	ft_cuda_precision precision;
	int max_new;
	ft_cuda_infer *c;
	char desc[320];
};

void gen_device_resolve(gen_cli *o)
{
	char why[5000];
	int idx, kind = ft_device_resolve(o->device, &idx, why, sizeof why);
	if (kind < 0) {
		if (strcmp(o->device, "auto") && strncmp(o->device, "cuda", 4))
			die_usage("--device: '%s' is not a device (cpu, cuda, cuda:N, auto)", o->device);
		if (!strncmp(ft_errmsg(), "--device '", 10)) die_usage("%s", ft_errmsg());   /* cuda:x */
		die("%s", ft_errmsg());
	}
	o->device_kind = kind;
	o->device_index = idx;
	if (kind == FT_DEV_CPU) {
		if (o->device_given && why[0]) warn("note: --device %s: running on the CPU (%s)", o->device, why);
		if (o->bf16 || o->fp16)
			warn("note: --%s: the CPU computes in float32", o->bf16 ? "bf16" : "fp16");
	}
}

/* (Re)build the device decoder for at least rows x cap tokens; prompts
 * up to max_prompt go through the batched prefill, longer ones through
 * the cache path (ft_cuda.h). */
static int device_build(gen_device *d, int rows, int cap, int max_prompt)
{
	ft_cuda_infer_opts io = { .precision = d->precision, .device = d->index, .rows = rows,
				  .cap = cap, .max_prompt = max_prompt };
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

static void *dev_open(void *ctx, int rows, int cap)
{
	gen_device *d = ctx;
	const ft_cuda_infer_opts *h = d->c ? ft_cuda_infer_options(d->c) : NULL;
	if (!h || rows > h->rows || cap > h->cap) {
		int mp = cap - d->max_new > 0 ? cap - d->max_new : 1;
		if (device_build(d, rows, cap, mp) < 0) return NULL;
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

/* The device decoder for these prompts (NULL on the CPU): planned for
 * the batch size and the longest prompt, so a plan that does not fit is
 * refused before any generation. */
void gen_device_bind(const gen_cli *o, gen_env *e, const ft_i32vec *prompts, size_t n,
		     size_t extra)
{
	if (o->device_kind != FT_DEV_CUDA || (n == 0 && extra == 0)) return;   /* nothing to decode */
	gen_device *d = ft_xcalloc(1, sizeof *d);
	d->m = e->model;
	d->index = o->device_index;
	d->precision = o->bf16 ? FT_CUDA_BF16 : o->fp16 ? FT_CUDA_F16 : FT_CUDA_F32;
	d->max_new = o->gen.max_new_tokens;
	size_t longest = extra;
	for (size_t i = 0; i < n; i++)
		if (prompts[i].n > longest) longest = prompts[i].n;
	if (longest < 1) longest = 1;
	int rows = n == 0 ? 1 : (size_t)o->gen.batch_size > n ? (int)n : o->gen.batch_size;
	if (device_build(d, rows, (int)longest + d->max_new, (int)longest) < 0)
		die("--device %s: %s", o->device, ft_errmsg());
	char name[256] = "";
	ft_device_cuda_count(name, sizeof name);
	const char *prec = o->bf16 ? "bf16" : o->fp16 ? "fp16" : "fp32";
	if (d->index == 0) snprintf(d->desc, sizeof d->desc, "cuda:0 (%s), %s", name, prec);
	else snprintf(d->desc, sizeof d->desc, "cuda:%d, %s", d->index, prec);
	char plan[256];
	ft_cuda_infer_plan_format(ft_cuda_infer_get_plan(d->c), plan, sizeof plan);
	if (ft_verbose > 0) warn("note: generating on %s; device memory planned %s", d->desc, plan);
	e->dev = d;
}

int gen_run(gen_env *e, const ft_i32vec *prompts, size_t n, const ft_gen_opts *g,
	    ft_i32vec *outs, ft_gen_token_fn fn, void *ctx)
{
	if (!e->dev) return ft_generate(e->model, prompts, n, g, outs, fn, ctx);
	ft_decoder d = { e->dev, ft_model_config(e->model)->vocab_size, dev_open, dev_forward, dev_close };
	return ft_generate_on(&d, prompts, n, g, outs, fn, ctx);
}

void gen_device_free(gen_env *e)
{
	if (!e->dev) return;
	ft_cuda_infer_free(e->dev->c);
	free(e->dev);
	e->dev = NULL;
}
