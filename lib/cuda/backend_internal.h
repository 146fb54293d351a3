/* backend_internal.h - the one table between libft.a and libft_cuda.so.
 *
 * The CUDA backend is a shared object loaded with dlopen (lib/model/device.c
 * finds it), so a tool starts and trains on the CPU on a machine without a
 * CUDA driver or without the .so.  Everything in the .so is hidden except
 * the two entry points below; lib/cuda/backend.c implements ft_cuda.h in
 * libft.a by calling through this table.  The .so calls back into the tool
 * for the library's helpers (ft_fail, ft_xmalloc, ft_cuda_view_of,
 * ft_rope_tables, ...): the tools are linked with -rdynamic, and
 * backend.c references those helpers so they are always linked in.
 *
 * FTP_CUDA_ABI changes whenever this struct does, or a struct passed
 * through it (the history below); a .so
 * from another build is refused with a message rather than called with
 * the wrong layout.
 */
#ifndef FTP_CUDA_BACKEND_INTERNAL_H
#define FTP_CUDA_BACKEND_INTERNAL_H

#include "cuda/ft_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 7: ft_cuda_batch.lengths, ft_cuda_attn_shape.len (key padding);
 * 8: ft_cuda_view carries the quantized linears (QLoRA);
 * 9: the gradient groups of the data-parallel overlap;
 * 10: ft_cuda_attn_shape has scale, softcap (Gemma);
 * 11: the fp16 loss scaler's state (checkpoints);
 * 12: ft_cuda_view.neftune_alpha, the SFT token losses (tokloss.cu, asft.cu);
 * 13: ft_cuda_view carries DoRA's magnitudes and OFT's modules;
 * 14: attention_run_as (the device attention alone in bf16/fp16);
 * 15: ZeRO-1's gather (ft_cuda_opts.zero_ranks, zero_rank);
 * 16: GRPO's tempered log-probs and entropies (logps_options);
 * 17: the optimizer extras: per-param updates (LoRA+, BAdam) and the
 *     optimizers that replace AdamW (Adam-mini, Muon, GaLore, APOLLO);
 * 18: ft_cuda_infer_opts.knobs (the caller's names in the memory message),
 *     infer_refresh (a decoder kept across grpo/ppo's generations),
 *     ft_cuda_opts.weights_of (a decoder over the policy's weights),
 *     ft_cuda_view.gen_neftune (NEFTune in GRPO's device decoder);
 * 19: ft_cuda_view.fp8 (torchao's Float8Linear modules, fp8.cu) */
#define FTP_CUDA_ABI 19

typedef struct {
	int abi;
	size_t size;             /* sizeof(ftp_cuda_api) where it was built */
	int (*plan_memory)(const ft_cuda_view *, const ft_cuda_opts *, ft_cuda_plan *);
	void (*plan_format)(const ft_cuda_plan *, char *, size_t);
	ft_cuda_model *(*model_new)(struct ft_model *, const ft_cuda_opts *);
	void (*model_free)(ft_cuda_model *);
	const ft_cuda_plan *(*model_plan)(const ft_cuda_model *);
	int (*zero_grad)(ft_cuda_model *);
	int (*forward_backward)(ft_cuda_model *, const ft_cuda_batch *, float, double *, int64_t *);
	int (*forward)(ft_cuda_model *, const ft_cuda_batch *, float *, double *, int64_t *);
	int (*step)(ft_cuda_model *, const ft_cuda_adamw_opts *, double, double, double *, int *);
	int64_t (*steps)(const ft_cuda_model *);
	double (*loss_scale)(const ft_cuda_model *);
	int (*copy_grads_to_host)(ft_cuda_model *);
	int (*copy_weights_to_host)(ft_cuda_model *);
	int (*copy_weights_to_device)(ft_cuda_model *);
	int (*adamw_get)(ft_cuda_model *, size_t, float *, float *);
	int (*adamw_set)(ft_cuda_model *, size_t, const float *, const float *, int64_t);
	void (*set_position)(ft_cuda_model *, int64_t);
	size_t (*peak_bytes)(const ft_cuda_model *);
	int (*sync)(ft_cuda_model *);
	/* ABI 3: KV-cache decoding */
	int (*infer_plan_memory)(const ft_cuda_view *, const ft_cuda_infer_opts *,
				 ft_cuda_infer_plan *);
	void (*infer_plan_format)(const ft_cuda_infer_plan *, char *, size_t);
	ft_cuda_infer *(*infer_new)(struct ft_model *, const ft_cuda_infer_opts *);
	void (*infer_free)(ft_cuda_infer *);
	const ft_cuda_infer_opts *(*infer_options)(const ft_cuda_infer *);
	const ft_cuda_infer_plan *(*infer_get_plan)(const ft_cuda_infer *);
	void (*infer_reset)(ft_cuda_infer *);
	int (*infer_len)(const ft_cuda_infer *, int);
	int (*infer_forward)(ft_cuda_infer *, const int32_t *, const int *, int, const int *,
			     float *);
	/* ABI 5: the device attention alone (tests/gpu) */
	int (*attention_run)(int, const ft_cuda_attn_shape *, const float *, const float *,
			     const float *, const float *, float *, float *, float *, float *,
			     float *);
	/* ABI 6: the preference stages (pref.cu) */
	ft_cuda_pref *(*pref_new)(ft_cuda_model *, int);
	void (*pref_free)(ft_cuda_pref *);
	int (*logps_forward)(ft_cuda_pref *, const ft_cuda_batch *, int, float *, float *);
	int (*logps_backward)(ft_cuda_pref *, const ft_cuda_batch *, const float *);
	void (*set_adapters)(ft_cuda_model *, int);
	int (*value_forward)(ft_cuda_pref *, const ft_cuda_batch *, int, const int32_t *, int, float,
			     uint64_t, float *);
	int (*value_backward)(ft_cuda_pref *, const ft_cuda_batch *, const int32_t *, int, float,
			      uint64_t, const float *);
	int (*value_head_set)(ft_cuda_pref *, int, const float *, const float *, const float *);
	int (*value_head_get)(ft_cuda_pref *, int, float *, float *, float *);
	int (*pref_zero_grad)(ft_cuda_pref *);
	int (*pref_step)(ft_cuda_pref *, const ft_cuda_adamw_opts *, double, double, double *, int *);
	/* ABI 7: gradient groups summed beside the backward */
	void (*set_grads_ready)(ft_cuda_model *, ft_cuda_ready_fn, void *);
	int (*grads_group)(ft_cuda_model *, int, ft_cuda_grad_fn, void *);
	int (*grads_wait)(ft_cuda_model *);
	/* ABI 10: the fp16 loss scaler's state */
	int (*scaler_get)(const ft_cuda_model *, double *, int64_t *);
	int (*scaler_set)(ft_cuda_model *, double, int64_t);
	/* ABI 12: EAFT's entropies, the ASFT loss */
	int (*eaft_entropy)(ft_cuda_model *, int, double *);
	int (*asft)(ft_cuda_model *, ft_cuda_model *, const ft_cuda_batch *, int, float, double,
		    double *);
	/* ABI 14: the device attention alone in a given element type */
	int (*attention_run_as)(int, ft_cuda_precision, const ft_cuda_attn_shape *, const float *,
				const float *, const float *, const float *, float *, float *,
				float *, float *, float *);
	/* ABI 15: ZeRO-1's gather (ft_cuda_opts.zero_ranks, zero_rank) */
	int (*zero_gather)(ft_cuda_model *, ft_cuda_bcast_fn, int (*)(void *, int), void *);
	/* ABI 16: GRPO's log-probs at a temperature, with entropies */
	int (*logps_options)(ft_cuda_pref *, float, float *);
	/* ABI 17: the optimizer extras (optim_ext.cu, optim_x.cu) */
	int (*step_ext)(ft_cuda_model *, const ft_cuda_adamw_opts *, const ft_cuda_pstep *, size_t,
			int64_t, double, double *, int *);
	int (*step_x)(ft_cuda_model *, const ft_cuda_xopt *, const ft_cuda_xparam *, size_t, double,
		      double *, int *);
	int (*xstate)(ft_cuda_model *, size_t, float *, size_t, float *, size_t, float *, size_t, int);
	/* ABI 18: a kept decoder's trained tensors from the host again */
	int (*infer_refresh)(ft_cuda_infer *);
} ftp_cuda_api;

/* The .so's entry points (exported; looked up by name with dlsym). */
#define FTP_CUDA_API_SYMBOL "ftp_cuda_backend_api"
#define FTP_CUDA_PROBE_SYMBOL "ftp_cuda_backend_probe"
const ftp_cuda_api *ftp_cuda_backend_api(void);
/* Device count (>= 0), or -1 after ft_fail; desc gets device 0's name. */
int ftp_cuda_backend_probe(char *desc, size_t desc_size);

#ifdef __cplusplus
}
#endif

#endif
