/* optim_ext.cu - LLaMA-Factory's optimizer extras (lib/train/optim_ext.h)
 * on the device, each mirroring its CPU function in lib/train/optim_*.c:
 *
 *   LoRA+  ft_cuda_step_lrs: ft_cuda_step with one learning rate per
 *          param (optim_loraplus.c's lp_step -> ft_adamw_step_lrs).
 *
 * The others (BAdam, Muon, Adam-mini, GaLore, APOLLO) run on the CPU only
 * for now; tools/ft-train refuses them with --device cuda. */
#include "cuda/common.cuh"

int ft_cuda_step_lrs(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, const double *lrs,
		     size_t n, double max_grad_norm, double *grad_norm, int *skipped)
{
	if (!lrs || n != dm->v.nparams)
		return ft_fail("CUDA step: %zu learning rates for %zu parameters", n, dm->v.nparams);
	/* ft_cu_step reads dm->param_lr for the model's tensors only */
	dm->param_lr = lrs;
	int rc = ft_cu_step(dm, o, 0.0, max_grad_norm, grad_norm, skipped, NULL);
	dm->param_lr = NULL;
	return rc;
}
