/* cuda_train.c - ft_train_model on the CUDA backend (see cuda_train.h). */
#include <stdlib.h>
#include <unistd.h>
#include "train/cuda_train.h"
#include "train/cuda_losses.h"
#include "train/dist.h"
#include "train/cuda_ext_internal.h"
#include "model/cuda_view.h"
#include "util/error.h"
#include "util/json.h"

typedef struct {
	ft_model *m;
	ft_cuda_model *dm;
	int need_zero;       /* the trainer asked for zeroed gradients */
	int64_t skipped;     /* fp16 steps skipped for overflow */
	int loss;            /* FT_SFT_LOSS_*: DFT and EAFT go through dp's log-probs, */
	double alpha;        /* ASFT through the reference's device model ref */
	ft_cuda_pref *dp;
	ft_cuda_model *ref;
	ftp_cuda_ext ext;    /* LLaMA-Factory's optimizer extras on the device */
	ftp_cuda_state st;   /* the moments at checkpoints; st.zero: ZeRO-1's job */
} binding;

ft_cuda_batch ft_cuda_batch_of(const ft_batch *b)
{
	ft_cuda_batch c = { b->B, b->T, b->input_ids, b->labels, b->position_ids,
			    b->segment_ids, b->lengths };
	return c;
}

static size_t b_nparams(void *self) { return ft_model_nparams(((binding *)self)->m); }

static ft_param *b_param(void *self, size_t i)
{
	return ft_model_param(((binding *)self)->m, i);
}

/* The interface's zero_grad cannot fail; the device zeroes lazily at the
 * next forward_backward, where an error can be returned. */
static void b_zero_grad(void *self) { ((binding *)self)->need_zero = 1; }

/* ASFT: each micro-batch's mean with *n = 1 (batch_mean, as the CPU) */
static int asft(binding *x, const ft_batch *b, int train, float scale, double *ls, int64_t *n)
{
	ft_cuda_batch c = ft_cuda_batch_of(b);
	double loss;
	if (ft_cuda_asft(x->dm, x->ref, &c, train, scale, x->alpha, &loss) < 0)
		return -1;
	if (ls) *ls = loss;
	if (n) *n = 1;
	return 0;
}

static int b_fwd_bwd(void *self, const ft_batch *b, float scale, double *ls, int64_t *n)
{
	binding *x = self;
	ft_cuda_batch c = ft_cuda_batch_of(b);
	if (x->need_zero && ft_cuda_zero_grad(x->dm) < 0)
		return ft_fail_ctx("GPU: ");
	x->need_zero = 0;
	if (x->dp)
		return ft_cuda_tokloss(x->dm, x->dp, x->loss, x->alpha, b, 1, scale, ls, n);
	if (x->ref)
		return asft(x, b, 1, scale, ls, n);
	return ft_cuda_forward_backward(x->dm, &c, scale, ls, n);
}

static int b_fwd(void *self, const ft_batch *b, double *ls, int64_t *n)
{
	binding *x = self;
	ft_cuda_batch c = ft_cuda_batch_of(b);
	if (x->dp)
		return ft_cuda_tokloss(x->dm, x->dp, x->loss, x->alpha, b, 0, 0, ls, n);
	if (x->ref)
		return asft(x, b, 0, 0, ls, n);
	return ft_cuda_forward(x->dm, &c, NULL, ls, n);
}

static int b_step(void *self, const ft_adamw_opts *o, double lr, double max_norm, double *gnorm)
{
	binding *x = self;
	ft_cuda_adamw_opts co = { o->beta1, o->beta2, o->eps, o->weight_decay };
	int skipped = 0;
	if (ft_cuda_step(x->dm, &co, lr, max_norm, gnorm, &skipped) < 0)
		return -1;
	x->skipped += skipped;
	x->need_zero = 1;
	/* every rank skips together: the same gradients */
	if (x->st.zero && !skipped && ft_cuda_train_zero_gather(x->dm, x->st.zero) < 0)
		return -1;
	return skipped;
}

int ft_cuda_train_zero_gather(ft_cuda_model *dm, ft_dist *d)
{
	ft_dist_watch(d, "ZeRO-1 parameter all-gather");
	int rc = ft_cuda_zero_gather(dm, ft_dist_nccl_bcast, ft_dist_nccl_group_of, d);
	if (rc == 0) rc = ft_cuda_sync(dm);
	ft_dist_unwatch(d);
	return rc;
}

/* LLaMA-Factory's extras on the device (cuda_ext.c). */
static int b_ext_step(void *self, const ft_optim_ext *e, const ft_adamw_opts *o, double lr,
		      double lambda, double max_norm, double *gnorm)
{
	binding *x = self;
	int skipped = 0;
	if (ftp_cuda_ext_step(&x->ext, e, o, lr, lambda, max_norm, gnorm, &skipped) < 0)
		return -1;
	x->skipped += skipped;
	x->need_zero = 1;
	return skipped;
}

/* ftp_cuda_state's access to the moments of optimizer param p */
static int moments_get(void *b, const ft_param *p, float *m, float *v)
{
	binding *x = b;
	long i = ftp_cuda_param_index(x->m, p);
	return i < 0 ? -1 : ft_cuda_adamw_get(x->dm, (size_t)i, m, v);
}

static int moments_set(void *b, const ft_param *p, const float *m, const float *v, int64_t step)
{
	binding *x = b;
	long i = ftp_cuda_param_index(x->m, p);
	return i < 0 ? -1 : ft_cuda_adamw_set(x->dm, (size_t)i, m, v, step);
}

static int b_state_out(void *self, ft_adamw *opt)
{
	binding *x = self;
	if (ft_cuda_copy_weights_to_host(x->dm) < 0)
		return -1;
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
	if (ftp_cuda_state_in(&x->st, opt) < 0)
		return -1;
	x->need_zero = 1;
	return 0;
}

/* The CPU model writes the files, from the device's current weights. */
static int b_save(void *self, const char *dir)
{
	binding *x = self;
	if (ft_cuda_copy_weights_to_host(x->dm) < 0)
		return -1;
	return ft_model_save(x->m, dir);
}

static void b_set_position(void *self, int64_t n)
{
	ft_cuda_set_position(((binding *)self)->dm, n);
}

/* Data parallel on GPUs: the trainer's plan (lib/train/trainer_dist.c)
 * calls b_sum_group for the gradient groups in the order the backward
 * finishes them, beside the backward (from its communication thread, as
 * each group is reported final) or after it; each group's tensors go as
 * one NCCL group of ncclAllReduce on the model's communication stream,
 * which first waits for the group's event on the compute stream.  b_sum_wait
 * waits for the stream, so the step that follows sees the sums. */
int ft_cuda_train_sum_group(ft_cuda_model *dm, ft_dist *d, int group)
{
	if (!ft_dist_nccl_active(d))
		return ft_fail("rank %d: the GPU gradients need NCCL (ft_dist_nccl_open)", ft_dist_rank(d));
	int rc = ft_dist_nccl_group(d, 1);
	if (rc == 0) rc = ft_cuda_grads_group(dm, group, ft_dist_nccl_sum, d);
	if (ft_dist_nccl_group(d, 0) < 0) rc = -1;
	return rc;
}

static int b_sum_group(void *self, ft_dist *d, int group)
{
	binding *x = self;
	/* a rank with no micro-batch in this step (the epoch's last, shorter
	 * one) has not run the lazy zeroing: it contributes zeros, not the
	 * last step's gradients */
	if (x->need_zero && ft_cuda_zero_grad(x->dm) < 0)
		return ft_fail_ctx("GPU: ");
	x->need_zero = 0;
	return ft_cuda_train_sum_group(x->dm, d, group);
}

static int b_sum_wait(void *self, ft_dist *d)
{
	(void)d;
	return ft_cuda_grads_wait(((binding *)self)->dm);
}

static void b_set_grads_ready(void *self, ft_grads_ready_fn fn, void *ctx)
{
	ft_cuda_set_grads_ready(((binding *)self)->dm, fn, ctx);
}

/* ASFT's reference is a device model of its own: both count */
static size_t b_peak(void *self)
{
	binding *x = self;
	return ft_cuda_peak_bytes(x->dm) + (x->ref ? ft_cuda_peak_bytes(x->ref) : 0);
}

/* ---- fp16: the loss scaler in checkpoints and logs (cuda_train.h) ----
 * scaler.json holds torch's GradScaler.state_dict() (transformers writes
 * it pickled as scaler.pt): a resume must overflow, skip and grow where the
 * uninterrupted run did.  A checkpoint without it (another precision)
 * resumes with a fresh scaler, as transformers without scaler.pt. */
#define SCALER_FILE "scaler.json"

int ft_cuda_train_scaler_save(const ft_cuda_model *dm, const char *dir)
{
	double scale;
	int64_t tracker;
	if (ft_cuda_scaler_get(dm, &scale, &tracker) < 0)
		return ft_fail_ctx("%s: ", dir);
	json_t *j = json_pack("{s:f, s:f, s:f, s:i, s:I}", "scale", scale, "growth_factor", 2.0,
			      "backoff_factor", 0.5, "growth_interval", 2000,
			      "_growth_tracker", (json_int_t)tracker);
	char *f = ft_xasprintf("%s/" SCALER_FILE, dir);
	int rc = ft_json_save_file_sorted(j, f, 2);
	json_decref(j);
	free(f);
	return rc;
}

int ft_cuda_train_scaler_load(ft_cuda_model *dm, const char *dir)
{
	char *f = ft_xasprintf("%s/" SCALER_FILE, dir);
	int rc = 0;
	if (access(f, F_OK) == 0) {
		json_t *j = ft_json_load_file(f);
		double scale;
		long long tracker;
		if (!j)   /* the message names the file */
			rc = -1;
		else if (ft_json_req_num(j, "scale", &scale) < 0 ||
			 ft_json_req_int(j, "_growth_tracker", &tracker) < 0 ||
			 ft_cuda_scaler_set(dm, scale, tracker) < 0)
			rc = ft_fail_ctx("%s: ", f);
		json_decref(j);
	}
	free(f);
	return rc;
}

static int b_ckpt_save(void *self, const char *dir)
{
	return ft_cuda_train_scaler_save(((binding *)self)->dm, dir);
}

static int b_ckpt_load(void *self, const char *dir)
{
	return ft_cuda_train_scaler_load(((binding *)self)->dm, dir);
}

/* The scale after the step, beside the loss (transformers does not log it) */
size_t ft_cuda_train_scale_metric(const ft_cuda_model *dm, int eval, const char **keys, double *vals,
				  size_t cap)
{
	if (eval || cap < 1)
		return 0;
	keys[0] = "loss_scale";
	vals[0] = ft_cuda_loss_scale(dm);
	return 1;
}

static size_t b_metrics(void *self, int eval, const char **keys, double *vals, size_t cap)
{
	return ft_cuda_train_scale_metric(((binding *)self)->dm, eval, keys, vals, cap);
}

int ft_train_model_of_cuda(ft_model *m, const ft_cuda_opts *o, ft_train_model *t)
{
	binding *x = ft_xcalloc(1, sizeof *x);
	x->m = m;
	if (!(x->dm = ft_cuda_model_new(m, o))) {
		free(x);
		return -1;
	}
	ftp_cuda_ext_init(&x->ext, m, x->dm);
	ftp_cuda_state_init(&x->st, x->dm, &x->ext, moments_get, moments_set, x);
	x->loss = ft_model_sft_loss(m, &x->alpha);
	if (((x->loss == FT_SFT_LOSS_DFT || x->loss == FT_SFT_LOSS_EAFT) &&
	     !(x->dp = ft_cuda_pref_new(x->dm, 0))) ||
	    (x->loss == FT_SFT_LOSS_ASFT && !(x->ref = ft_cuda_model_new(ft_model_asft_ref(m), o)))) {
		if (x->loss == FT_SFT_LOSS_ASFT)
			ft_fail_ctx("the ASFT reference model: ");
		ft_cuda_model_free(x->dm);
		free(x);
		return -1;
	}
	ft_train_model r = { x, b_nparams, b_param, b_zero_grad, b_fwd_bwd, b_fwd, b_save,
			     b_set_position, b_step, b_state_out, b_state_in, b_peak, 0, NULL,
			     b_sum_group, b_sum_wait, ft_model_config(m)->num_hidden_layers,
			     b_set_grads_ready, NULL, NULL, b_ext_step, NULL };
	if (x->ref)
		r.batch_mean = FT_BATCH_MEAN_SUM;
	if (o->precision == FT_CUDA_F16) {
		r.ckpt_save = b_ckpt_save;
		r.ckpt_load = b_ckpt_load;
		r.metrics = b_metrics;
	}
	*t = r;
	return 0;
}

void ft_cuda_train_zero(ft_train_model *t, ft_dist *d)
{
	((binding *)t->self)->st.zero = d;
	t->zero_load = b_zero_load;
}

ft_cuda_model *ft_cuda_train_device(const ft_train_model *t)
{
	return t && t->self ? ((binding *)t->self)->dm : NULL;
}

ft_cuda_model *ft_cuda_train_ref(const ft_train_model *t)
{
	return t && t->self ? ((binding *)t->self)->ref : NULL;
}

int64_t ft_cuda_train_skipped(const ft_train_model *t)
{
	return t && t->self ? ((binding *)t->self)->skipped : 0;
}

void ft_cuda_train_free(ft_train_model *t)
{
	if (!t || !t->self)
		return;
	binding *x = t->self;
	ft_cuda_pref_free(x->dp);
	ft_cuda_model_free(x->ref);
	ft_cuda_model_free(x->dm);
	free(x);
	t->self = NULL;
}

int ft_train_cuda_supports(ft_model *m)
{
	ft_cuda_view v;
	int r = ft_cuda_view_of(m, &v);
	ft_cuda_view_free(&v);
	return r;
}
