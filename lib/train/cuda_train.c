/* cuda_train.c - ft_train_model on the CUDA backend (see cuda_train.h).
 *
 * The ft_cuda_* functions are weak references: libft.a links without the
 * backend, and then ft_cuda_model_new is NULL and the binding refuses.
 * With `make CUDA_LINK=1` the backend is linked in whole (the probe is
 * forced in and pulls the rest). */
#include <stdlib.h>
#include "train/cuda_train.h"
#include "util/error.h"

#pragma weak ft_cuda_model_new
#pragma weak ft_cuda_model_free
#pragma weak ft_cuda_zero_grad
#pragma weak ft_cuda_forward_backward
#pragma weak ft_cuda_forward
#pragma weak ft_cuda_copy_grads_to_host
#pragma weak ft_cuda_copy_weights_to_device
#pragma weak ft_cuda_set_position

typedef struct {
	ft_model *m;
	ft_cuda_model *dm;
	int stale;           /* the CPU weights changed since the last upload */
} binding;

static ft_cuda_batch cb(const ft_batch *b)
{
	ft_cuda_batch c = { b->B, b->T, b->input_ids, b->labels, b->position_ids,
			    b->segment_ids };
	return c;
}

/* Bring the device up to date with the CPU model after an optimizer step. */
static int sync_weights(binding *x)
{
	if (!x->stale)
		return 0;
	if (ft_cuda_copy_weights_to_device(x->dm) < 0 || ft_cuda_zero_grad(x->dm) < 0)
		return ft_fail_ctx("GPU: ");
	x->stale = 0;
	return 0;
}

static size_t b_nparams(void *self) { return ft_model_nparams(((binding *)self)->m); }

static ft_param *b_param(void *self, size_t i)
{
	return ft_model_param(((binding *)self)->m, i);
}

/* Called at the start and after every optimizer step: the device gets the
 * new weights (and zeroed gradients) lazily, where errors can be returned. */
static void b_zero_grad(void *self)
{
	binding *x = self;
	ft_model_zero_grad(x->m);
	x->stale = 1;
}

static int b_fwd_bwd(void *self, const ft_batch *b, float scale, double *ls, int64_t *n)
{
	binding *x = self;
	ft_cuda_batch c = cb(b);
	if (sync_weights(x) < 0 || ft_cuda_forward_backward(x->dm, &c, scale, ls, n) < 0 ||
	    ft_cuda_copy_grads_to_host(x->dm) < 0)
		return -1;
	return 0;
}

static int b_fwd(void *self, const ft_batch *b, double *ls, int64_t *n)
{
	binding *x = self;
	ft_cuda_batch c = cb(b);
	if (sync_weights(x) < 0)
		return -1;
	return ft_cuda_forward(x->dm, &c, NULL, ls, n);
}

/* The CPU model holds the current weights (the optimizer runs there). */
static int b_save(void *self, const char *dir)
{
	return ft_model_save(((binding *)self)->m, dir);
}

static void b_set_position(void *self, int64_t n)
{
	ft_cuda_set_position(((binding *)self)->dm, n);
}

int ft_train_model_of_cuda(ft_model *m, const ft_cuda_opts *o, ft_train_model *t)
{
	if (!ft_cuda_model_new)
		return ft_fail("this build has no CUDA backend (rebuild with "
			       "`make CUDA_LINK=1` on a machine with nvcc)");
	if (o->precision == FT_CUDA_F16)
		return ft_fail("fp16 training through the trainer's CPU optimizer is not "
			       "supported (dynamic loss scaling needs the device optimizer); "
			       "use bf16");
	binding *x = ft_xcalloc(1, sizeof *x);
	x->m = m;
	x->stale = 1;
	if (!(x->dm = ft_cuda_model_new(m, o))) {
		free(x);
		return -1;
	}
	ft_train_model r = { x, b_nparams, b_param, b_zero_grad, b_fwd_bwd, b_fwd, b_save,
			     b_set_position };
	*t = r;
	return 0;
}

ft_cuda_model *ft_cuda_train_device(const ft_train_model *t)
{
	return t && t->self ? ((binding *)t->self)->dm : NULL;
}

void ft_cuda_train_free(ft_train_model *t)
{
	if (!t || !t->self)
		return;
	binding *x = t->self;
	if (ft_cuda_model_free)
		ft_cuda_model_free(x->dm);
	free(x);
	t->self = NULL;
}
