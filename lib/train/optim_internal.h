/* optim_impl.h - the AdamW state shared by optim.c and optim_state.c */
#ifndef FT_OPTIM_IMPL_H
#define FT_OPTIM_IMPL_H

#include "train/optim.h"

struct ft_adamw {
	ft_param **p;
	float **m, **v;   /* NULL: not on the host (zeros, or get's) */
	size_t n;
	ft_adamw_fetch get;   /* moments kept elsewhere, or NULL */
	void *get_ctx;
	int64_t step;
	ft_adamw_opts o;
};

#endif
