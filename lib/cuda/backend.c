/* backend.c - ft_cuda.h in libft.a: every call forwards to libft_cuda.so
 * through its table (backend_internal.h), loaded on first use by
 * lib/model/device.c.  Without the .so each call fails with the loader's
 * message; the model functions that cannot fail (plan, steps, ...) are
 * only reachable with a model, which needs the .so. */
#include <stdio.h>
#include "cuda/backend_internal.h"
#include "model/device.h"
#include "model/infer_batch.h"
#include "model/layers.h"
#include "util/error.h"

/* The .so calls these back in the executable (-rdynamic); naming them
 * here links them into every tool that can load the backend. */
void *const ftp_cuda_host_helpers[] = {
	(void *)ft_fail, (void *)ft_xmalloc, (void *)ft_xcalloc, (void *)ft_cuda_view_of,
	(void *)ft_cuda_view_free, (void *)ft_cuda_view_lin_name, (void *)ft_rope_tables,
	(void *)ft_rope_inv_freq, (void *)ft_rope_scale_tables, (void *)ft_infer_batch_plan,
	(void *)ft_infer_batch_free, (void *)ft_infer_batch_commit, (void *)ft_infer_batch_prefill_maps,
	(void *)ft_cuda_view_neftune, (void *)ft_cuda_view_neftune_tokens,
};

static const ftp_cuda_api *api(void)
{
	static const ftp_cuda_api *t;
	if (t)
		return t;
	const ftp_cuda_api *(*get)(void) =
		(const ftp_cuda_api *(*)(void))ft_device_cuda_symbol(FTP_CUDA_API_SYMBOL);
	if (!get)
		return NULL;
	const ftp_cuda_api *a = get();
	if (!a || a->abi != FTP_CUDA_ABI || a->size != sizeof *a) {
		ft_fail("%s is from another build of ft (backend ABI %d, this tool's %d): "
			"rebuild it with this tree's make", ft_device_cuda_path(), a ? a->abi : -1,
			FTP_CUDA_ABI);
		return NULL;
	}
	return t = a;
}

int ft_cuda_plan_memory(const ft_cuda_view *v, const ft_cuda_opts *o, ft_cuda_plan *p)
{
	const ftp_cuda_api *a = api();
	return a ? a->plan_memory(v, o, p) : -1;
}

void ft_cuda_plan_format(const ft_cuda_plan *p, char *buf, size_t n)
{
	const ftp_cuda_api *a = api();
	if (a)
		a->plan_format(p, buf, n);
	else if (n)
		snprintf(buf, n, "%zu bytes", p->total);
}

ft_cuda_model *ft_cuda_model_new(struct ft_model *m, const ft_cuda_opts *o)
{
	const ftp_cuda_api *a = api();
	return a ? a->model_new(m, o) : NULL;
}

/* The calls below take a model, which exists only once the table was
 * loaded by ft_cuda_model_new: api() is then the cached table. */
#define BACKEND (api())

void ft_cuda_model_free(ft_cuda_model *dm)
{
	if (dm)
		BACKEND->model_free(dm);
}

const ft_cuda_plan *ft_cuda_model_plan(const ft_cuda_model *dm) { return BACKEND->model_plan(dm); }
int ft_cuda_zero_grad(ft_cuda_model *dm) { return BACKEND->zero_grad(dm); }

int ft_cuda_forward_backward(ft_cuda_model *dm, const ft_cuda_batch *b, float grad_scale,
			     double *loss_sum, int64_t *n_tokens)
{
	return BACKEND->forward_backward(dm, b, grad_scale, loss_sum, n_tokens);
}

int ft_cuda_forward(ft_cuda_model *dm, const ft_cuda_batch *b, float *logits,
		    double *loss_sum, int64_t *n_tokens)
{
	return BACKEND->forward(dm, b, logits, loss_sum, n_tokens);
}

int ft_cuda_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr,
		 double max_grad_norm, double *grad_norm, int *skipped)
{
	return BACKEND->step(dm, o, lr, max_grad_norm, grad_norm, skipped);
}

int ft_cuda_step_ext(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, const ft_cuda_pstep *ps,
		     size_t n, int64_t step, double max_grad_norm, double *grad_norm, int *skipped)
{
	return BACKEND->step_ext(dm, o, ps, n, step, max_grad_norm, grad_norm, skipped);
}

int ft_cuda_step_x(ft_cuda_model *dm, const ft_cuda_xopt *o, const ft_cuda_xparam *xp, size_t n,
		   double max_grad_norm, double *grad_norm, int *skipped)
{
	return BACKEND->step_x(dm, o, xp, n, max_grad_norm, grad_norm, skipped);
}

int ft_cuda_xstate(ft_cuda_model *dm, size_t i, float *s1, size_t n1, float *s2, size_t n2,
		   float *s3, size_t n3, int to_host)
{
	return BACKEND->xstate(dm, i, s1, n1, s2, n2, s3, n3, to_host);
}

int64_t ft_cuda_steps(const ft_cuda_model *dm) { return BACKEND->steps(dm); }
double ft_cuda_loss_scale(const ft_cuda_model *dm) { return BACKEND->loss_scale(dm); }
int ft_cuda_scaler_get(const ft_cuda_model *dm, double *scale, int64_t *growth_tracker)
{
	return BACKEND->scaler_get(dm, scale, growth_tracker);
}
int ft_cuda_scaler_set(ft_cuda_model *dm, double scale, int64_t growth_tracker)
{
	return BACKEND->scaler_set(dm, scale, growth_tracker);
}
int ft_cuda_copy_grads_to_host(ft_cuda_model *dm) { return BACKEND->copy_grads_to_host(dm); }
int ft_cuda_copy_weights_to_host(ft_cuda_model *dm) { return BACKEND->copy_weights_to_host(dm); }
int ft_cuda_copy_weights_to_device(ft_cuda_model *dm) { return BACKEND->copy_weights_to_device(dm); }

int ft_cuda_adamw_get(ft_cuda_model *dm, size_t i, float *exp_avg, float *exp_avg_sq)
{
	return BACKEND->adamw_get(dm, i, exp_avg, exp_avg_sq);
}

int ft_cuda_adamw_set(ft_cuda_model *dm, size_t i, const float *exp_avg,
		      const float *exp_avg_sq, int64_t step)
{
	return BACKEND->adamw_set(dm, i, exp_avg, exp_avg_sq, step);
}

void ft_cuda_set_position(ft_cuda_model *dm, int64_t n) { BACKEND->set_position(dm, n); }
size_t ft_cuda_peak_bytes(const ft_cuda_model *dm) { return BACKEND->peak_bytes(dm); }
int ft_cuda_sync(ft_cuda_model *dm) { return BACKEND->sync(dm); }

/* ---- KV-cache decoding ---- */

int ft_cuda_infer_plan_memory(const ft_cuda_view *v, const ft_cuda_infer_opts *o,
			      ft_cuda_infer_plan *p)
{
	const ftp_cuda_api *a = api();
	return a ? a->infer_plan_memory(v, o, p) : -1;
}

void ft_cuda_infer_plan_format(const ft_cuda_infer_plan *p, char *buf, size_t n)
{
	const ftp_cuda_api *a = api();
	if (a)
		a->infer_plan_format(p, buf, n);
	else if (n)
		snprintf(buf, n, "%zu bytes", p->total);
}

ft_cuda_infer *ft_cuda_infer_new(struct ft_model *m, const ft_cuda_infer_opts *o)
{
	const ftp_cuda_api *a = api();
	return a ? a->infer_new(m, o) : NULL;
}

void ft_cuda_infer_free(ft_cuda_infer *c)
{
	if (c)
		BACKEND->infer_free(c);
}

int ft_cuda_infer_refresh(ft_cuda_infer *c)
{
	return BACKEND->infer_refresh(c);
}

const ft_cuda_infer_opts *ft_cuda_infer_options(const ft_cuda_infer *c)
{
	return BACKEND->infer_options(c);
}

const ft_cuda_infer_plan *ft_cuda_infer_get_plan(const ft_cuda_infer *c)
{
	return BACKEND->infer_get_plan(c);
}

void ft_cuda_infer_reset(ft_cuda_infer *c) { BACKEND->infer_reset(c); }
int ft_cuda_infer_len(const ft_cuda_infer *c, int row) { return BACKEND->infer_len(c, row); }

int ft_cuda_infer_forward(ft_cuda_infer *c, const int32_t *tokens, const int *rows, int N,
			  const int *want, float *logits)
{
	return BACKEND->infer_forward(c, tokens, rows, N, want, logits);
}

void ft_cuda_set_grads_ready(ft_cuda_model *dm, ft_cuda_ready_fn fn, void *ctx)
{
	BACKEND->set_grads_ready(dm, fn, ctx);
}

int ft_cuda_grads_group(ft_cuda_model *dm, int group, ft_cuda_grad_fn fn, void *ctx)
{
	return BACKEND->grads_group(dm, group, fn, ctx);
}

int ft_cuda_grads_wait(ft_cuda_model *dm) { return BACKEND->grads_wait(dm); }

int ft_cuda_zero_gather(ft_cuda_model *dm, ft_cuda_bcast_fn bcast, int (*group)(void *, int),
			void *ctx)
{
	return BACKEND->zero_gather(dm, bcast, group, ctx);
}

int ft_cuda_attention_run(int device, const ft_cuda_attn_shape *s, const float *q,
			  const float *k, const float *v, const float *dout, float *out,
			  float *lse, float *dq, float *dk, float *dv)
{
	const ftp_cuda_api *a = api();   /* no model: the table may not be loaded yet */
	return a ? a->attention_run(device, s, q, k, v, dout, out, lse, dq, dk, dv) : -1;
}

int ft_cuda_attention_run_as(int device, ft_cuda_precision p, const ft_cuda_attn_shape *s,
			     const float *q, const float *k, const float *v, const float *dout,
			     float *out, float *lse, float *dq, float *dk, float *dv)
{
	const ftp_cuda_api *a = api();
	return a ? a->attention_run_as(device, p, s, q, k, v, dout, out, lse, dq, dk, dv) : -1;
}

/* ---- the preference stages ---- */

ft_cuda_pref *ft_cuda_pref_new(ft_cuda_model *dm, int value_head)
{
	return BACKEND->pref_new(dm, value_head);
}

void ft_cuda_pref_free(ft_cuda_pref *p)
{
	if (p)
		BACKEND->pref_free(p);
}

int ft_cuda_logps_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, float *logp,
			  float *lmean)
{
	return BACKEND->logps_forward(p, b, train, logp, lmean);
}

int ft_cuda_logps_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const float *dlogp)
{
	return BACKEND->logps_backward(p, b, dlogp);
}

void ft_cuda_set_adapters(ft_cuda_model *dm, int on) { BACKEND->set_adapters(dm, on); }

int ft_cuda_value_forward(ft_cuda_pref *p, const ft_cuda_batch *b, int train, const int32_t *pos,
			  int n, float p_drop, uint64_t seed, float *score)
{
	return BACKEND->value_forward(p, b, train, pos, n, p_drop, seed, score);
}

int ft_cuda_value_backward(ft_cuda_pref *p, const ft_cuda_batch *b, const int32_t *pos, int n,
			   float p_drop, uint64_t seed, const float *dscore)
{
	return BACKEND->value_backward(p, b, pos, n, p_drop, seed, dscore);
}

int ft_cuda_value_head_set(ft_cuda_pref *p, int k, const float *w, const float *m, const float *v)
{
	return BACKEND->value_head_set(p, k, w, m, v);
}

int ft_cuda_value_head_get(ft_cuda_pref *p, int k, float *w, float *m, float *v)
{
	return BACKEND->value_head_get(p, k, w, m, v);
}

int ft_cuda_pref_zero_grad(ft_cuda_pref *p) { return BACKEND->pref_zero_grad(p); }

int ft_cuda_logps_options(ft_cuda_pref *p, float temperature, float *entropy)
{
	return BACKEND->logps_options(p, temperature, entropy);
}

int ft_cuda_pref_step(ft_cuda_pref *p, const ft_cuda_adamw_opts *o, double lr,
		      double max_grad_norm, double *grad_norm, int *skipped)
{
	return BACKEND->pref_step(p, o, lr, max_grad_norm, grad_norm, skipped);
}

int ft_cuda_eaft_entropy(ft_cuda_model *dm, int n, double *h)
{
	return BACKEND->eaft_entropy(dm, n, h);
}

int ft_cuda_asft(ft_cuda_model *dm, ft_cuda_model *ref, const ft_cuda_batch *b, int train,
		 float grad_scale, double alpha, double *loss)
{
	return BACKEND->asft(dm, ref, b, train, grad_scale, alpha, loss);
}
