/* cuda_pref.c - ft_pref_model on the CUDA backend (see cuda_pref.h).  The
 * functions follow ft_pref_model_of's order in pref.c: the trainer's
 * interface, then the model_pref.h operations. */
#include <stdlib.h>
#include "model/model_pref.h"
#include "train/cuda_pref.h"
#include "train/cuda_train.h"
#include "train/cuda_ext_internal.h"
#include "train/dist.h"
#include "util/error.h"

typedef struct {
	ft_model *m;
	ft_cuda_model *dm;
	ft_cuda_pref *dp;
	int need_zero;       /* the trainer asked for zeroed gradients */
	int64_t skipped;     /* fp16 steps skipped for overflow */
	ft_param *vh;        /* rm: the value head's host tensors (pref.c's) */
	int vh_stale;        /* the host head changed: upload before use */
	int64_t calls;       /* the device's dropout position, as it advances */
	float temp;          /* GRPO: the log-probs' temperature (1: none) */
	float *ent;          /* GRPO: where the entropies go (NULL: none) */
	ftp_cuda_ext ext;    /* dpo/kto: LLaMA-Factory's optimizer extras (cuda_ext.c) */
	ftp_cuda_state st;   /* the moments at checkpoints; st.zero: ZeRO-1's job (dpo/kto) */
} binding;

/* The host value head -> the device, when it changed there. */
static int head_up(binding *x)
{
	if (!x->vh || !x->vh_stale)
		return 0;
	for (int k = 0; k < 2; k++)
		if (ft_cuda_value_head_set(x->dp, k, x->vh[k].w, NULL, NULL) < 0)
			return -1;
	x->vh_stale = 0;
	return 0;
}

/* The device head -> the host, unless the host's is the newer (not yet
 * uploaded: PPO copies weights out before its first value pass). */
static int head_down(binding *x)
{
	if (x->vh_stale)
		return 0;
	for (int k = 0; x->vh && k < 2; k++)
		if (ft_cuda_value_head_get(x->dp, k, x->vh[k].w, NULL, NULL) < 0)
			return -1;
	return 0;
}

/* The gradients the trainer asked to zero, before the first backward pass
 * after it (zero_grad itself cannot fail). */
static int zero_now(binding *x)
{
	if (!x->need_zero)
		return 0;
	if (ft_cuda_pref_zero_grad(x->dp) < 0)
		return ft_fail_ctx("GPU: ");
	x->need_zero = 0;
	return 0;
}

/* ---- the trainer's interface ---- */

static size_t b_nparams(void *self) { return ft_model_nparams(((binding *)self)->m); }
static ft_param *b_param(void *self, size_t i) { return ft_model_param(((binding *)self)->m, i); }
static void b_zero_grad(void *self) { ((binding *)self)->need_zero = 1; }

static int b_save(void *self, const char *dir)
{
	binding *x = self;
	if (ft_cuda_copy_weights_to_host(x->dm) < 0 || head_down(x) < 0)
		return -1;
	return ft_model_save(x->m, dir);
}

static void b_set_position(void *self, int64_t n)
{
	binding *x = self;
	ft_cuda_set_position(x->dm, n);
	ft_model_set_dropout_position(x->m, n);
	x->calls = n;
}

static int b_step(void *self, const ft_adamw_opts *o, double lr, double max_norm, double *gnorm)
{
	binding *x = self;
	ft_cuda_adamw_opts co = { o->beta1, o->beta2, o->eps, o->weight_decay };
	int skipped = 0;
	if (zero_now(x) < 0 || head_up(x) < 0 ||
	    ft_cuda_pref_step(x->dp, &co, lr, max_norm, gnorm, &skipped) < 0)
		return -1;
	x->skipped += skipped;
	x->need_zero = 1;
	/* ZeRO-1: as cuda_train.c's step (every rank skips alike) */
	if (x->st.zero && !skipped && ft_cuda_train_zero_gather(x->dm, x->st.zero) < 0)
		return -1;
	return skipped;
}

/* dpo/kto with LLaMA-Factory's extras: cuda_train.c's device step.  No
 * value head here (rm refuses them: ft_pref_model_of_cuda). */
static int b_ext_step(void *self, const ft_optim_ext *e, const ft_adamw_opts *o, double lr,
		      double lambda, double max_norm, double *gnorm)
{
	binding *x = self;
	int skipped = 0;
	if (zero_now(x) < 0 ||
	    ftp_cuda_ext_step(&x->ext, e, o, lr, lambda, max_norm, gnorm, &skipped) < 0)
		return -1;
	x->skipped += skipped;
	x->need_zero = 1;
	return skipped;
}

/* fp16: the policy's loss scaler in checkpoints, as cuda_train.c's */
static int b_ckpt_save(void *self, const char *dir)
{
	return ft_cuda_train_scaler_save(((binding *)self)->dm, dir);
}

static int b_ckpt_load(void *self, const char *dir)
{
	return ft_cuda_train_scaler_load(((binding *)self)->dm, dir);
}

static size_t b_metrics(void *self, int eval, const char **keys, double *vals, size_t cap)
{
	return ft_cuda_train_scale_metric(((binding *)self)->dm, eval, keys, vals, cap);
}

/* The k-th optimizer param: the model's (index >= 0), the head's weight
 * (-2) or bias (-3); -1 after ft_fail. */
static long param_index(binding *x, const ft_param *p)
{
	long i = ft_model_param_index(x->m, p);
	if (i >= 0)
		return i;
	for (int k = 0; x->vh && k < 2; k++)
		if (p == &x->vh[k])
			return -2 - k;
	return ft_fail("optimizer parameter %s is not the model's", p->name);
}

/* ftp_cuda_state's access to the moments of optimizer param p: the
 * model's or the value head's */
static int moments_get(void *b, const ft_param *p, float *m, float *v)
{
	binding *x = b;
	long i = param_index(x, p);
	return i >= 0 ? ft_cuda_adamw_get(x->dm, (size_t)i, m, v)
	       : i < -1 ? ft_cuda_value_head_get(x->dp, (int)(-2 - i), NULL, m, v) : -1;
}

static int moments_set(void *b, const ft_param *p, const float *m, const float *v, int64_t step)
{
	binding *x = b;
	long i = param_index(x, p);
	return i >= 0 ? ft_cuda_adamw_set(x->dm, (size_t)i, m, v, step)
	       : i < -1 ? ft_cuda_value_head_set(x->dp, (int)(-2 - i), NULL, m, v) : -1;
}

static int b_state_out(void *self, ft_adamw *opt)
{
	binding *x = self;
	if (ft_cuda_copy_weights_to_host(x->dm) < 0 || head_down(x) < 0)
		return -1;
	/* the host model's dropout position is the device's: GRPO's and
	 * PPO's checkpoints read it there (ft_model_dropout_position) */
	ft_model_set_dropout_position(x->m, (uint64_t)x->calls);
	/* ZeRO-1 has no value head here (ft_pref_model_cuda_zero) */
	return ftp_cuda_state_out(&x->st, opt);
}

static int b_zero_load(void *self, ft_adamw *opt, const char *path)
{
	return ftp_cuda_state_zero_load(&((binding *)self)->st, opt, path);
}

static int b_state_in(void *self, const ft_adamw *opt)
{
	binding *x = self;
	if (ft_cuda_copy_weights_to_device(x->dm) < 0)
		return -1;
	x->vh_stale = x->vh != NULL;
	if (head_up(x) < 0)
		return -1;
	if (ftp_cuda_state_in(&x->st, opt) < 0)
		return -1;
	x->need_zero = 1;
	return 0;
}

static size_t b_peak(void *self) { return ft_cuda_peak_bytes(((binding *)self)->dm); }

/* Data parallel (trainer_dist.c's sum_groups, after the micro-batch's
 * whole forward_backward: several backward passes run per micro-batch, so
 * no group is final before the last, and none is summed beside them).
 * The groups are cuda_train.c's; rm's value head goes with the last,
 * after the embeddings, where the CPU plan sums it (ft_cuda_grads_group).
 * A rank without a micro-batch in the step zeroes first: it adds zeros. */
static int b_sum_group(void *self, struct ft_dist *d, int group)
{
	binding *x = self;
	if (zero_now(x) < 0)
		return -1;
	return ft_cuda_train_sum_group(x->dm, d, group);
}

static int b_sum_wait(void *self, struct ft_dist *d)
{
	(void)d;
	return ft_cuda_grads_wait(((binding *)self)->dm);
}

/* ---- the model_pref.h operations ---- */

/* Each training forward draws the next dropout masks on the device: the
 * count kept here reaches the host model at state_out only.  Advancing
 * the host's own count per forward would advance it twice where the
 * device computes with the host model itself (the fake backend,
 * tests/emu/fake_backend.c) and shift every later mask there. */
static void follow_position(binding *x, int train)
{
	if (train)
		x->calls++;
}

static int b_logps_fwd(void *self, const ft_batch *b, int train, float *lp, float *lmean)
{
	binding *x = self;
	ft_cuda_batch c = ft_cuda_batch_of(b);
	follow_position(x, train);
	return ft_cuda_logps_forward(x->dp, &c, train, lp, lmean);
}

static int b_temp(void *self, float t)
{
	binding *x = self;
	if (ft_cuda_logps_options(x->dp, t, x->ent) < 0)
		return -1;
	x->temp = t;
	return 0;
}

static void b_entropy(void *self, float *ent)
{
	binding *x = self;
	x->ent = ent;
	ft_cuda_logps_options(x->dp, x->temp, ent);   /* x->temp was accepted: cannot fail */
}

static int b_logps_bwd(void *self, const ft_batch *b, const float *d)
{
	binding *x = self;
	ft_cuda_batch c = ft_cuda_batch_of(b);
	if (zero_now(x) < 0)
		return -1;
	return ft_cuda_logps_backward(x->dp, &c, d);
}

static void b_adapters(void *self, int on) { ft_cuda_set_adapters(((binding *)self)->dm, on); }

/* vw, vb and hd are pref.c's host copies: the device has its own */
static int b_value_fwd(void *self, const ft_batch *b, int train, const int32_t *pos, int n,
		       const float *vw, float vb, float p_drop, uint64_t seed, float *hd, float *score)
{
	binding *x = self;
	(void)vw, (void)vb, (void)hd;
	ft_cuda_batch c = ft_cuda_batch_of(b);
	if (head_up(x) < 0)
		return -1;
	follow_position(x, train);
	return ft_cuda_value_forward(x->dp, &c, train, pos, n, p_drop, seed, score);
}

static int b_value_bwd(void *self, const ft_batch *b, const int32_t *pos, int n, const float *vw,
		       float p_drop, uint64_t seed, const float *hd, const float *ds, float *dvw,
		       double *dvb)
{
	binding *x = self;
	(void)vw, (void)hd, (void)dvw, (void)dvb;   /* the head's gradient stays on the device */
	ft_cuda_batch c = ft_cuda_batch_of(b);
	if (zero_now(x) < 0)
		return -1;
	return ft_cuda_value_backward(x->dp, &c, pos, n, p_drop, seed, ds);
}

static void b_own_head(void *self, ft_param *vh)
{
	binding *x = self;
	x->vh = vh;
	x->vh_stale = 1;
}

int ft_pref_model_of_cuda(ft_model *m, const ft_cuda_opts *o, int value_head, ft_pref_model *pm)
{
	binding *x = ft_xcalloc(1, sizeof *x);
	x->m = m;
	x->temp = 1;
	if (!(x->dm = ft_cuda_model_new(m, o))) {
		free(x);
		return -1;
	}
	if (!(x->dp = ft_cuda_pref_new(x->dm, value_head))) {
		ft_cuda_model_free(x->dm);
		free(x);
		return -1;
	}
	ftp_cuda_ext_init(&x->ext, m, x->dm);
	ftp_cuda_state_init(&x->st, x->dm, &x->ext, moments_get, moments_set, x);
	const ft_config *c = ft_model_config(m);
	int f16 = o->precision == FT_CUDA_F16;
	/* forward_backward / forward (the sft loss) are not part of these
	 * stages: pref.c calls the operations below */
	ft_pref_model r = {
		.base = { .self = x, .nparams = b_nparams, .param = b_param, .zero_grad = b_zero_grad,
			  .save = b_save, .set_position = b_set_position, .step = b_step,
			  .state_out = b_state_out, .state_in = b_state_in, .peak_bytes = b_peak,
			  .ckpt_save = f16 ? b_ckpt_save : NULL, .ckpt_load = f16 ? b_ckpt_load : NULL,
			  .metrics = f16 ? b_metrics : NULL,
			  .ext_step = value_head ? NULL : b_ext_step,
			  .sum_group = b_sum_group, .sum_wait = b_sum_wait,
			  .grad_layers = c->num_hidden_layers,
			  .zero_load = b_zero_load },   /* called only under ZeRO-1 */
		.hidden_size = c->hidden_size, .vocab_size = c->vocab_size,
		.has_adapters = ft_model_has_adapters(m),
		.logps_forward = b_logps_fwd, .logps_backward = b_logps_bwd, .set_adapters = b_adapters,
		.value_forward = b_value_fwd, .value_backward = b_value_bwd,
		.own_value_head = value_head ? b_own_head : NULL,
		.set_logp_temperature = b_temp, .set_logp_entropy = b_entropy,
	};
	*pm = r;
	return 0;
}

int ft_pref_model_cuda_zero(ft_pref_model *pm, struct ft_dist *d)
{
	binding *x = pm->base.self;
	/* the head is outside the device's slices (zero.cu) while the
	 * checkpoint's streamed save and load (ft_dist_save_moments) slice the
	 * optimizer's params, the head's included: the two would not meet */
	if (pm->own_value_head)
		return ft_fail("ZeRO-1 on the device: rm's value head is not in the device's slices");
	x->st.zero = d;
	return 0;
}

ft_cuda_model *ft_pref_model_cuda_device(const ft_pref_model *pm)
{
	return pm && pm->base.self ? ((binding *)pm->base.self)->dm : NULL;
}

int64_t ft_pref_model_cuda_skipped(const ft_pref_model *pm)
{
	return pm && pm->base.self ? ((binding *)pm->base.self)->skipped : 0;
}

void ft_pref_model_cuda_free(ft_pref_model *pm)
{
	if (!pm || !pm->base.self)
		return;
	binding *x = pm->base.self;
	ft_cuda_pref_free(x->dp);
	ft_cuda_model_free(x->dm);
	free(x);
	pm->base.self = NULL;
}
