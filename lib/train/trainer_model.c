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

ft_train_model ft_train_model_of(ft_model *m)
{
	ft_train_model t = { .self = m, .nparams = tm_nparams, .param = tm_param,
			     .zero_grad = tm_zero_grad, .forward_backward = tm_fwd_bwd,
			     .forward = tm_fwd, .save = tm_save, .set_position = tm_set_position,
			     .set_grads_ready = tm_set_grads_ready,
			     .batch_mean = ft_model_asft_on(m) ? FT_BATCH_MEAN_SUM : 0 };
	return t;
}
