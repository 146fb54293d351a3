/* trainer_model.c - ft_model behind the trainer's model interface */
#include "train/trainer.h"
#include "model/model.h"

static size_t tm_nparams(void *self) { return ft_model_nparams(self); }
static ft_param *tm_param(void *self, size_t i) { return ft_model_param(self, i); }
static void tm_zero_grad(void *self) { ft_model_zero_grad(self); }

static int tm_fwd_bwd(void *self, const ft_batch *b, float scale, double *ls, int64_t *n)
{
	return ft_model_forward_backward(self, b, scale, ls, n);
}

static int tm_fwd(void *self, const ft_batch *b, double *ls, int64_t *n)
{
	return ft_model_forward(self, b, NULL, ls, n);
}

static int tm_save(void *self, const char *dir)
{
	return ft_model_save(self, dir);
}

static void tm_set_position(void *self, int64_t n)
{
	ft_model_set_dropout_position(self, (uint64_t)n);
}

static void tm_set_grads_ready(void *self, ft_grads_ready_fn fn, void *ctx)
{
	ft_model_set_grads_ready(self, fn, ctx);
}

/* compute_accuracy (ft_model_set_accuracy): eval_accuracy after an
 * evaluation, the mean of the rows' accuracies as ComputeAccuracy's
 * np.mean; nothing when it is off or saw no row. */
static size_t tm_metrics(void *self, int eval, const char **keys, double *vals, size_t cap)
{
	double sum;
	int64_t rows;
	ft_model_accuracy_take(self, &sum, &rows);
	if (!eval || rows == 0 || cap < 1) return 0;
	keys[0] = "eval_accuracy";
	vals[0] = sum / (double)rows;
	return 1;
}

ft_train_model ft_train_model_of(ft_model *m)
{
	ft_train_model t = { .self = m, .nparams = tm_nparams, .param = tm_param,
			     .zero_grad = tm_zero_grad, .forward_backward = tm_fwd_bwd,
			     .forward = tm_fwd, .save = tm_save, .set_position = tm_set_position,
			     .set_grads_ready = tm_set_grads_ready, .metrics = tm_metrics,
			     .batch_mean = ft_model_asft_on(m) ? FT_BATCH_MEAN_SUM : 0 };
	return t;
}
