/* api.cu - the exported table of libft_cuda.so (backend_internal.h).
 * Every other symbol of the .so is hidden (-fvisibility=hidden), so its
 * internal calls never bind to libft.a's forwarding wrappers of the same
 * names in the tool. */
#include "cuda/common.cuh"
#include "cuda/backend_internal.h"

#define FTP_EXPORT __attribute__((visibility("default")))

static const ftp_cuda_api api = {
	FTP_CUDA_ABI,
	sizeof(ftp_cuda_api),
	ft_cuda_plan_memory,
	ft_cuda_plan_format,
	ft_cuda_model_new,
	ft_cuda_model_free,
	ft_cuda_model_plan,
	ft_cuda_zero_grad,
	ft_cuda_forward_backward,
	ft_cuda_forward,
	ft_cuda_step,
	ft_cuda_steps,
	ft_cuda_loss_scale,
	ft_cuda_copy_grads_to_host,
	ft_cuda_copy_weights_to_host,
	ft_cuda_copy_weights_to_device,
	ft_cuda_adamw_get,
	ft_cuda_adamw_set,
	ft_cuda_set_position,
	ft_cuda_peak_bytes,
	ft_cuda_sync,
	ft_cuda_infer_plan_memory,
	ft_cuda_infer_plan_format,
	ft_cuda_infer_new,
	ft_cuda_infer_free,
	ft_cuda_infer_options,
	ft_cuda_infer_get_plan,
	ft_cuda_infer_reset,
	ft_cuda_infer_len,
	ft_cuda_infer_forward,
	ft_cuda_attention_run,
	ft_cuda_pref_new,
	ft_cuda_pref_free,
	ft_cuda_logps_forward,
	ft_cuda_logps_backward,
	ft_cuda_set_adapters,
	ft_cuda_value_forward,
	ft_cuda_value_backward,
	ft_cuda_value_head_set,
	ft_cuda_value_head_get,
	ft_cuda_pref_zero_grad,
	ft_cuda_pref_step,
	ft_cuda_set_grads_ready,
	ft_cuda_grads_group,
	ft_cuda_grads_wait,
	ft_cuda_scaler_get,
	ft_cuda_scaler_set,
	ft_cuda_eaft_entropy,
	ft_cuda_asft,
	ft_cuda_attention_run_as,
	ft_cuda_zero_gather,
	ft_cuda_logps_options,
	ft_cuda_step_ext,
	ft_cuda_step_x,
	ft_cuda_xstate,
	ft_cuda_infer_refresh,
};

extern "C" FTP_EXPORT const ftp_cuda_api *ftp_cuda_backend_api(void) { return &api; }
