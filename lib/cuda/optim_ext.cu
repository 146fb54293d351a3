/* optim_ext.cu - LLaMA-Factory's optimizer extras (lib/train/optim_ext.h)
 * on the device, each mirroring its CPU function in lib/train/optim_*.c:
 *
 *   LoRA+  ft_cuda_step_ext with each param's lr (optim_loraplus.c's
 *          lp_step -> ft_adamw_step_lrs)
 *   BAdam  ft_cuda_step_ext over the active block (optim_badam.c's
 *          bd_pre_clip, then bd_step's ft_adamw_step with the block's own
 *          step count and weight decay); the binding (cuda_train.c) keeps
 *          the block's moments in step with the CPU extension's AdamW.
 *
 * Muon, Adam-mini, GaLore and APOLLO run on the CPU only for now;
 * tools/ft-train refuses them with --device cuda. */
#include "cuda/common.cuh"

int ft_cuda_step_ext(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, const ft_cuda_pstep *ps,
		     size_t n, int64_t step, double max_grad_norm, double *grad_norm, int *skipped)
{
	if (!ps || n != dm->v.nparams)
		return ft_fail("CUDA step: %zu parameter updates for %zu parameters", n, dm->v.nparams);
	/* bd_pre_clip: an inactive param's gradient is None in torch */
	for (int i = 0; i < dm->ntens; i++) {
		ft_dt *t = &dm->tens[i];
		if (t->g && t->pidx >= 0 && !ps[t->pidx].on)
			TRY(ft_cu_zero(dm, t->g, t->n * sizeof(float)));
	}
	/* ft_cu_step counts dm->step up and reads dm->pstep for the model's
	 * tensors; an update with its own count leaves the model's alone */
	int64_t own = dm->step;
	if (step > 0)
		dm->step = step - 1;
	dm->pstep = ps;
	int rc = ft_cu_step(dm, o, 0.0, max_grad_norm, grad_norm, skipped, NULL);
	dm->pstep = NULL;
	if (step > 0)
		dm->step = own;
	return rc;
}
