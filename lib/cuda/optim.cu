/* optim.cu - the optimizer step on the device (AdamW as lib/train/optim.c,
 * clip_grad_norm_ as torch, dynamic loss scaling for fp16), transfers
 * between the device model and the CPU model.  The device probe is in
 * probe.cu. */
#include <stdio.h>
#include <string.h>
#include "cuda/common.cuh"

/* torch.cuda.amp.GradScaler defaults */
#define SCALE_GROWTH_INTERVAL 2000

/* ---- data parallel beside the backward (ft_cuda.h) ----
 * Events are recorded only while a hook is set (the last micro-batch of a
 * step under mpirun), so a plain run pays nothing.  A group the backward
 * did not record (a rank without a micro-batch in the step, a failed
 * backward) is recorded when summed: everything queued so far, the lazy
 * zeroing included, comes before its sum. */
static int n_groups(const ft_cuda_model *dm) { return dm->v.L + 2; }

static int comm_init(ft_cuda_model *dm)
{
	if (dm->gev)
		return 0;
	CU(cudaStreamCreateWithFlags(&dm->comm, cudaStreamNonBlocking), "%s", "communication stream");
	cudaEvent_t *ev = (cudaEvent_t *)ft_xcalloc(n_groups(dm), sizeof *ev);
	dm->gev_set = (unsigned char *)ft_xcalloc(n_groups(dm), 1);
	dm->gev = ev;
	for (int s = 0; s < n_groups(dm); s++)
		CU(cudaEventCreateWithFlags(&ev[s], cudaEventDisableTiming), "gradient group %d", s - 1);
	return 0;
}

void ft_cu_comm_free(ft_cuda_model *dm)
{
	for (int s = 0; dm->gev && s < n_groups(dm); s++)
		if (dm->gev[s])
			cudaEventDestroy(dm->gev[s]);
	free(dm->gev);
	free(dm->gev_set);
	if (dm->comm)
		cudaStreamDestroy(dm->comm);
}

void ft_cuda_set_grads_ready(ft_cuda_model *dm, ft_cuda_ready_fn fn, void *ctx)
{
	dm->ready_fn = fn;
	dm->ready_ctx = ctx;
}

int ft_cu_grads_final(ft_cuda_model *dm, int group)
{
	if (!dm->ready_fn)
		return 0;
	TRY(comm_init(dm));
	CU(cudaEventRecord(dm->gev[group + 1], dm->stream), "gradient group %d", group);
	dm->gev_set[group + 1] = 1;
	dm->ready_fn(dm->ready_ctx, group);
	return 0;
}

int ft_cuda_grads_group(ft_cuda_model *dm, int group, ft_cuda_grad_fn fn, void *ctx)
{
	if (group < -1 || group > dm->v.L)
		return ft_fail("gradient group %d of a %d-layer model", group, dm->v.L);
	/* the calling thread may be another than the model's */
	CU(cudaSetDevice(dm->o.device), "device %d", dm->o.device);
	TRY(comm_init(dm));
	int s = group + 1;
	if (!dm->gev_set[s])
		CU(cudaEventRecord(dm->gev[s], dm->stream), "gradient group %d", group);
	dm->gev_set[s] = 0;
	CU(cudaStreamWaitEvent(dm->comm, dm->gev[s], 0), "gradient group %d", group);
	for (int i = 0; i < dm->ntens; i++)
		if (dm->tens[i].g && dm->tens[i].group == group &&
		    fn(ctx, dm->tens[i].g, dm->tens[i].n, (void *)dm->comm) < 0)
			return -1;
	for (int i = 0; group == -1 && i < dm->nxgrads; i++)
		if (fn(ctx, dm->xgrads[i].g, dm->xgrads[i].n, (void *)dm->comm) < 0)
			return -1;
	return 0;
}

int ft_cuda_grads_wait(ft_cuda_model *dm)
{
	if (!dm->comm)
		return 0;
	CU(cudaSetDevice(dm->o.device), "device %d", dm->o.device);
	CU(cudaStreamSynchronize(dm->comm), "%s", "the gradient all-reduce");
	return 0;
}

int ft_cuda_zero_grad(ft_cuda_model *dm)
{
	dm->unscaled = 0;
	for (int i = 0; i < dm->ntens; i++)
		if (dm->tens[i].g)
			TRY(ft_cu_zero(dm, dm->tens[i].g, dm->tens[i].n * sizeof(float)));
	return 0;
}

/* The k-th tensor with a gradient: the model's, then x's (NULL past the
 * end).  Every loop of the step walks this one order. */
static ft_dt *grad_tensor(ft_cuda_model *dm, const ft_cu_extra *x, int k)
{
	if (k < dm->ntens)
		return &dm->tens[k];
	k -= dm->ntens;
	return x && k < x->n ? x->t[k] : NULL;
}
#define EACH_GRAD(t, k, dm, x) \
	for (int k = 0; grad_tensor(dm, x, k); k++) \
		for (ft_dt *t = grad_tensor(dm, x, k); t && t->g; t = NULL)

/* fp16: any inf/nan in the scaled gradients? */
static int overflowed(ft_cuda_model *dm, const ft_cu_extra *x, int *yes)
{
	TRY(ft_cu_zero(dm, dm->flag, sizeof(int)));
	EACH_GRAD(t, k, dm, x)
		TRY(ft_cu_nonfinite(dm, dm->flag, t->g, t->n));
	CU(cudaMemcpyAsync(yes, dm->flag, sizeof(int), cudaMemcpyDeviceToHost, dm->stream),
	   "%s", "overflow flag");
	CU(cudaStreamSynchronize(dm->stream), "%s", "overflow check");
	return 0;
}

/* Per-tensor float norms combined in double, as ft_clip_grad_norm. */
static int grad_norm(ft_cuda_model *dm, const ft_cu_extra *x, float *total)
{
	size_t nb = (size_t)dm->ntens * FT_SUMSQ_BLOCKS;
	EACH_GRAD(t, k, dm, x)
		TRY(ft_cu_sumsq(dm, k < dm->ntens ? dm->sumsq + (size_t)k * FT_SUMSQ_BLOCKS
						 : x->sumsq + (size_t)(k - dm->ntens) * FT_SUMSQ_BLOCKS,
				t->g, t->n));
	TRY(ft_cu_copy(dm, dm->h_sumsq, dm->sumsq, nb * sizeof(double), cudaMemcpyDeviceToHost,
		       "gradient norm partials"));
	double xs[2 * FT_SUMSQ_BLOCKS];
	if (x && x->n)
		TRY(ft_cu_copy(dm, xs, x->sumsq, (size_t)x->n * FT_SUMSQ_BLOCKS * sizeof(double),
			       cudaMemcpyDeviceToHost, "gradient norm partials (extra)"));
	double t2 = 0;
	EACH_GRAD(t, k, dm, x) {
		const double *part = k < dm->ntens ? dm->h_sumsq + (size_t)k * FT_SUMSQ_BLOCKS
						   : xs + (size_t)(k - dm->ntens) * FT_SUMSQ_BLOCKS;
		double s = 0;
		for (int b = 0; b < FT_SUMSQ_BLOCKS; b++)
			s += part[b];
		float nrm = (float)sqrt(s);   /* per-tensor float norm, as torch */
		t2 += (double)nrm * nrm;
	}
	*total = (float)sqrt(t2);
	return 0;
}

static int scale_grads(ft_cuda_model *dm, const ft_cu_extra *x, float s)
{
	EACH_GRAD(t, k, dm, x)
		TRY(ft_cu_scale(dm, t->g, s, t->n));
	return 0;
}

int ft_cuda_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr,
		 double max_grad_norm, double *grad_norm_out, int *skipped)
{
	return ft_cu_step(dm, o, lr, max_grad_norm, grad_norm_out, skipped, NULL);
}

int ft_cu_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr, double max_grad_norm,
	       double *grad_norm_out, int *skipped, const ft_cu_extra *x)
{
	if (x && x->n > 2)
		return ft_fail("CUDA step: %d extra tensors (at most 2)", x->n);
	if (skipped)
		*skipped = 0;
	if (dm->o.precision == FT_CUDA_F16) {
		int bad = 0;
		TRY(overflowed(dm, x, &bad));
		if (bad) {
			dm->loss_scale *= 0.5;
			dm->good_steps = 0;
			if (skipped)
				*skipped = 1;
			if (grad_norm_out)
				*grad_norm_out = INFINITY;
			return 0;
		}
		TRY(scale_grads(dm, x, (float)(1.0 / dm->loss_scale)));
		dm->unscaled = 1;
	}
	float total = 0;
	TRY(grad_norm(dm, x, &total));
	if (grad_norm_out)
		*grad_norm_out = total;
	if (max_grad_norm > 0)
		TRY(scale_grads(dm, x, ft_k_clip_coef(total, max_grad_norm)));
	dm->step++;
	EACH_GRAD(t, k, dm, x) {
		int decay = k < dm->ntens ? t->pidx >= 0 && dm->v.params[t->pidx].decay
					  : x->decay[k - dm->ntens];
		/* the extras (optim_ext.cu): the param's own lr and decay, or none */
		const ft_cuda_pstep *ps = dm->pstep && k < dm->ntens && t->pidx >= 0 ? &dm->pstep[t->pidx]
										   : NULL;
		if (ps && !ps->on)
			continue;
		if (dm->xupdate && k < dm->ntens) {   /* Adam-mini, Muon (optim_x.cu) */
			TRY(dm->xupdate(dm, t));
			if (t->h)
				TRY(ft_cu_cast_to_half(dm, t->h, t->w, t->n));
			continue;
		}
		ft_k_adamw kk = ft_k_adamw_prepare(ps ? ps->lr : lr,
						   ps ? ps->weight_decay : decay ? o->weight_decay : 0.0, o->beta1,
						   o->beta2, o->eps, (double)(float)dm->step);
		ft_dt piece;   /* ZeRO-1: this rank's slice only (zero.cu) */
		ft_dt *u = ft_cu_zero_piece(dm, k, t, &piece);
		if (u)
			TRY(ft_cu_adamw(dm, u, &kk));
		if (t->h && !dm->zero)   /* ZeRO-1: after the gather */
			TRY(ft_cu_cast_to_half(dm, t->h, t->w, t->n));
	}
	if (dm->o.precision == FT_CUDA_F16 && ++dm->good_steps >= SCALE_GROWTH_INTERVAL) {
		dm->loss_scale *= 2;
		dm->good_steps = 0;
	}
	ft_cu_sample_peak(dm);
	return 0;
}

int64_t ft_cuda_steps(const ft_cuda_model *dm) { return dm->step; }
double ft_cuda_loss_scale(const ft_cuda_model *dm) { return dm->loss_scale; }

/* GradScaler's state_dict (scale, _growth_tracker), for checkpoints: a
 * resumed run must overflow, skip and grow where the uninterrupted one did. */
int ft_cuda_scaler_get(const ft_cuda_model *dm, double *scale, int64_t *growth_tracker)
{
	if (dm->o.precision != FT_CUDA_F16)
		return ft_fail("%s", "the loss scale is fp16's only");
	*scale = dm->loss_scale;
	*growth_tracker = dm->good_steps;
	return 0;
}

int ft_cuda_scaler_set(ft_cuda_model *dm, double scale, int64_t growth_tracker)
{
	if (dm->o.precision != FT_CUDA_F16)
		return ft_fail("%s", "the loss scale is fp16's only");
	if (!(scale > 0) || isinf(scale))
		return ft_fail("loss scale %g (a finite number > 0)", scale);
	if (growth_tracker < 0 || growth_tracker >= SCALE_GROWTH_INTERVAL)
		return ft_fail("growth tracker %lld (0 to %d)", (long long)growth_tracker,
			       SCALE_GROWTH_INTERVAL - 1);
	dm->loss_scale = scale;
	dm->good_steps = (int)growth_tracker;
	return 0;
}

int ft_cuda_sync(ft_cuda_model *dm)
{
	CU(cudaStreamSynchronize(dm->stream), "%s", "sync");
	return 0;
}

int ft_cuda_copy_grads_to_host(ft_cuda_model *dm)
{
	TRY(ft_cuda_sync(dm));
	for (int i = 0; i < dm->ntens; i++) {
		ft_dt *t = &dm->tens[i];
		if (!t->g || !t->hg)
			continue;
		TRY(ft_cu_copy(dm, t->hg, t->g, t->n * sizeof(float), cudaMemcpyDeviceToHost,
			       "gradient"));
		if (dm->o.precision == FT_CUDA_F16 && !dm->unscaled) {   /* true gradients */
			/* the scale they were computed with: after an overflow
			 * ft_cuda_step has already halved dm->loss_scale */
			float s = (float)(1.0 / dm->grads_scale);
			for (size_t j = 0; j < t->n; j++)
				t->hg[j] *= s;
		}
	}
	return 0;
}

int ft_cuda_copy_weights_to_host(ft_cuda_model *dm)
{
	TRY(ft_cuda_sync(dm));
	for (int i = 0; i < dm->ntens; i++) {
		ft_dt *t = &dm->tens[i];
		if (t->g && t->w)
			TRY(ft_cu_copy(dm, t->hw, t->w, t->n * sizeof(float),
				       cudaMemcpyDeviceToHost, "weights"));
	}
	return 0;
}

int ft_cuda_copy_weights_to_device(ft_cuda_model *dm)
{
	TRY(ft_cuda_sync(dm));
	for (int i = 0; i < dm->ntens; i++)
		if (dm->tens[i].g)
			TRY(ft_cu_upload(dm, &dm->tens[i]));
	return 0;
}

/* The moments of parameter i: the device tensors that are it or (Phi-3's
 * fused modules) its row blocks, each at its offset. */
static int param_moments(ft_cuda_model *dm, size_t i, float *m, float *v, int to_host)   /* m, v read only unless to_host */
{
	int found = 0;
	TRY(ft_cuda_sync(dm));
	for (int k = 0; k < dm->ntens; k++) {
		ft_dt *t = &dm->tens[k];
		if (t->pidx != (int)i || !t->g)
			continue;
		size_t a, e;   /* ZeRO-1: this rank's piece, t->m its element a */
		ft_cu_zero_range(dm, k, &a, &e);
		size_t b = (e - a) * 4, o = t->poff + a;
		found = 1;
		if (!b)
			continue;
		if (to_host) {
			TRY(ft_cu_copy(dm, m + o, t->m, b, cudaMemcpyDeviceToHost, "exp_avg"));
			TRY(ft_cu_copy(dm, v + o, t->v, b, cudaMemcpyDeviceToHost, "exp_avg_sq"));
		} else {
			TRY(ft_cu_copy(dm, t->m, m + o, b, cudaMemcpyHostToDevice, "exp_avg"));
			TRY(ft_cu_copy(dm, t->v, v + o, b, cudaMemcpyHostToDevice, "exp_avg_sq"));
		}
	}
	return found ? 0 : ft_fail("parameter %zu has no optimizer state on the device (frozen?)", i);
}

int ft_cuda_adamw_get(ft_cuda_model *dm, size_t i, float *exp_avg, float *exp_avg_sq)
{
	return param_moments(dm, i, exp_avg, exp_avg_sq, 1);
}

int ft_cuda_adamw_set(ft_cuda_model *dm, size_t i, const float *exp_avg,
		      const float *exp_avg_sq, int64_t step)
{
	TRY(param_moments(dm, i, (float *)exp_avg, (float *)exp_avg_sq, 0));
	dm->step = step;
	return 0;
}

size_t ft_cuda_peak_bytes(const ft_cuda_model *dm) { return dm->peak; }

void ft_cuda_set_position(ft_cuda_model *dm, int64_t n) { dm->dropout_calls = (uint64_t)n; }
