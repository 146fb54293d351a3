/* rl_device.c - --stage grpo and ppo on --device cuda: the policy (with
 * PPO's value head) and its reference (a model of its own: --ref_model,
 * or the frozen base of a freeze/full policy) bound as the preference
 * stages' device models (lib/train/cuda_pref.h), planned for the
 * rollouts' micro-batches.  The loops (lib/train/grpo_loop.c,
 * ppo_loop.c) step the policy there and copy its weights into the host
 * model before each generation; rl_generate then decodes the rollouts on
 * the device's KV-cache decoder (lib/cuda/decoder.h over infer.cu) built
 * from that host model in the training's precision, while the sampling
 * stays on the host with the CPU path's generator and seeds.  The
 * decoder decodes with the policy's own device weights (ft_cuda_opts
 * .weights_of: no second copy, nothing uploaded; its plan is the KV cache
 * and its buffers) and is built at the first generation and kept; before
 * each later one it waits for the policy's steps and recomputes what
 * decoding derives once from the weights (DoRA's factors, OFT's
 * rotations). */
#include "ft-train.h"
#include "cuda/decoder.h"
#include "model/device.h"
#include "model/model_pref.h"

#include <string.h>

int rl_longest(const ft_i32vec *q, size_t n)
{
	size_t l = 1;
	for (size_t i = 0; i < n; i++)
		if (q[i].n > l) l = q[i].n;
	return (int)l;
}

int rl_device_bind(ft_cli_args *c, ft_model *m, ft_model *ref, int value_head, int rows, int max_seq,
		   rl_device *d)
{
	memset(d, 0, sizeof *d);
	int idx;
	if (device_pick(c, m, &idx) == FT_DEV_CPU) return 0;   /* under mpirun: the local rank's GPU */
	ft_cuda_opts o = { .precision = c->bf16 ? FT_CUDA_BF16 : c->fp16 ? FT_CUDA_F16 : FT_CUDA_F32,
			   .device = idx, .max_tokens = rows * max_seq, .max_seq = max_seq };
	if (ft_pref_model_of_cuda(m, &o, value_head, &d->pm) < 0) die("--device %s: %s", c->device, ft_errmsg());
	if (ref && ft_pref_model_of_cuda(ref, &o, 0, &d->rpm) < 0)
		die("--device %s: the reference model: %s", c->device, ft_errmsg());
	/* grpo and ppo under mpirun: the gradients summed over
	 * NCCL (cuda_pref.h), bound after the device models, to this device */
	if (c->t.dist && ft_dist_nccl_open(c->t.dist) < 0) die("%s", ft_errmsg());
	d->on = 1 + (ref != NULL);
	d->index = idx;
	d->knobs = value_head ? (ft_cuda_infer_knobs){ "the rollout batch (per_device_train_batch_size x "
			"gradient_accumulation_steps x --ppo_buffer_size)", "--max_new_tokens", "--cutoff_len" }
		: (ft_cuda_infer_knobs){ "the generation batch (per_device_train_batch_size x "
			"gradient_accumulation_steps)", "--max_completion_length", "--cutoff_len" };
	d->precision = o.precision;
	char plan[256];
	ft_cuda_plan_format(ft_cuda_model_plan(ft_pref_model_cuda_device(&d->pm)), plan, sizeof plan);
	device_desc(c, idx, d->desc, sizeof d->desc);
	warn("note: training on %s; device memory planned %s%s", d->desc, plan,
	     ref ? " (and as much for the reference)" : "");
	note_quant_device(m, &c->tune, c->bf16 || c->fp16);
	return 1;
}

void rl_device_end(const ft_cli_args *c, rl_device *d)
{
	if (!d->on) return;
	ft_cuda_model *dm = ft_pref_model_cuda_device(&d->pm);
	size_t peak = d->pm.base.peak_bytes(d->pm.base.self);
	if (d->on == 2) peak += d->rpm.base.peak_bytes(d->rpm.base.self);
	if (ft_verbose >= 0 && d->decoder)
		warn("note: peak GPU memory %.2f GiB training, %.2f GiB more while decoding the rollouts",
		     (double)peak / (1 << 30), (double)d->decoder / (1 << 30));
	else if (ft_verbose >= 0) warn("note: peak GPU memory %.2f GiB", (double)peak / (1 << 30));
	if (c->fp16 && ft_verbose >= 0) {
		int64_t skipped = ft_pref_model_cuda_skipped(&d->pm);
		warn("note: fp16 loss scale %g at the end, %lld step%s skipped for overflow", ft_cuda_loss_scale(dm),
		     (long long)skipped, skipped == 1 ? "" : "s");
	}
	ft_cuda_decoder_free(d->dec);
	d->dec = NULL;
	if (d->on == 2) ft_pref_model_cuda_free(&d->rpm);
	ft_pref_model_cuda_free(&d->pm);
	d->on = 0;
}

int rl_generate(rl_device *d, ft_model *m, const ft_i32vec *q, size_t n, const ft_gen_opts *o,
		ft_i32vec *outs)
{
	if (!d || !d->on || n == 0) return ft_generate(m, q, n, o, outs, NULL, NULL);
	int bs = o->batch_size > 0 ? o->batch_size : 1;
	if (d->dec && ft_cuda_decoder_refresh(d->dec) < 0)
		return ft_fail_ctx("the rollouts' decoder on %s: ", d->desc);
	if (!d->dec) {
		ft_cuda_infer_opts io = { .precision = d->precision, .device = d->index,
					  .rows = n < (size_t)bs ? (int)n : bs, .max_prompt = rl_longest(q, n),
					  .knobs = d->knobs, .weights_of = ft_pref_model_cuda_device(&d->pm) };
		d->dec = ft_cuda_decoder_new(m, &io, o->max_new_tokens);
		if (!d->dec) return ft_fail_ctx("the rollouts' decoder on %s: ", d->desc);
		char plan[256];
		ft_cuda_infer_plan_format(ft_cuda_decoder_plan(d->dec), plan, sizeof plan);
		warn("note: rollouts decoded on %s over the policy's device weights; device memory planned "
		     "%s beside the training's", d->desc, plan);
	}
	ft_decoder ops = ft_cuda_decoder_ops(d->dec);
	int rc = ft_generate_on(&ops, q, n, o, outs, NULL, NULL);
	const ft_cuda_infer_plan *p = ft_cuda_decoder_plan(d->dec);   /* a larger group rebuilds it */
	if (p->total > d->decoder) d->decoder = p->total;
	return rc;
}
