/* device.c - ft-generate --device: resolving it as ft-train does
 * (lib/model/device.h) and the decoder the prompts run on: the CPU's
 * (ft_generate) or the GPU's KV-cache decoder (lib/cuda/decoder.h),
 * planned for the prompts before anything is allocated. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "cuda/decoder.h"
#include "model/device.h"
#include "ft-generate.h"

struct gen_device {
	ft_cuda_decoder *c;
	char desc[320];
};

/* Beam search runs on the CPU: the device decoder cannot copy KV-cache
 * rows between beams (gen/beam.h's ft_kv_copy_fn). */
static void beams_on_cpu(gen_cli *o)
{
	if (o->gen.num_beams <= 1 || !strcmp(o->device, "cpu")) return;
	if (!strcmp(o->device, "auto")) {
		warn("note: --device auto: --num_beams %d runs on the CPU (the device decoder cannot "
		     "copy KV-cache rows between beams)", o->gen.num_beams);
		o->device = "cpu";
	} else if (!strncmp(o->device, "cuda", 4)) {
		die_usage("--device %s: --num_beams %d runs on the CPU only (the device decoder cannot copy "
			  "KV-cache rows between beams); use --device cpu or auto", o->device, o->gen.num_beams);
	}
}

void gen_device_resolve(gen_cli *o)
{
	char why[5000];
	beams_on_cpu(o);
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

/* The device decoder for these prompts (NULL on the CPU): planned for
 * the batch size and the longest prompt, so a plan that does not fit is
 * refused before any generation. */
void gen_device_bind(const gen_cli *o, gen_env *e, const ft_i32vec *prompts, size_t n,
		     size_t extra)
{
	if (o->device_kind != FT_DEV_CUDA || (n == 0 && extra == 0)) return;   /* nothing to decode */
	gen_device *d = ft_xcalloc(1, sizeof *d);
	size_t longest = extra;
	for (size_t i = 0; i < n; i++)
		if (prompts[i].n > longest) longest = prompts[i].n;
	int rows = n == 0 ? 1 : (size_t)o->gen.batch_size > n ? (int)n : o->gen.batch_size;
	ft_cuda_precision prec = o->bf16 ? FT_CUDA_BF16 : o->fp16 ? FT_CUDA_F16 : FT_CUDA_F32;
	ft_cuda_infer_opts io = { .precision = prec, .device = o->device_index, .rows = rows,
				  .max_prompt = (int)longest,
				  .knobs = { "--per_device_eval_batch_size", "--max_new_tokens", "--cutoff_len" } };
	d->c = ft_cuda_decoder_new(e->model, &io, o->gen.max_new_tokens);
	if (!d->c) die("--device %s: %s", o->device, ft_errmsg());
	char name[256] = "";
	ft_device_cuda_count(name, sizeof name);
	const char *pn = o->bf16 ? "bf16" : o->fp16 ? "fp16" : "fp32";
	if (o->device_index == 0) snprintf(d->desc, sizeof d->desc, "cuda:0 (%s), %s", name, pn);
	else snprintf(d->desc, sizeof d->desc, "cuda:%d, %s", o->device_index, pn);
	char plan[256];
	ft_cuda_infer_plan_format(ft_cuda_decoder_plan(d->c), plan, sizeof plan);
	if (ft_verbose > 0) warn("note: generating on %s; device memory planned %s", d->desc, plan);
	e->dev = d;
}

int gen_run(gen_env *e, const ft_i32vec *prompts, size_t n, const ft_gen_opts *g,
	    ft_i32vec *outs, ft_gen_token_fn fn, void *ctx)
{
	if (!e->dev) return ft_generate(e->model, prompts, n, g, outs, fn, ctx);
	ft_decoder d = ft_cuda_decoder_ops(e->dev->c);
	return ft_generate_on(&d, prompts, n, g, outs, fn, ctx);
}

void gen_device_free(gen_env *e)
{
	if (!e->dev) return;
	ft_cuda_decoder_free(e->dev->c);
	free(e->dev);
	e->dev = NULL;
}
