/* optim_impl.h - the AdamW state shared by optim.c and optim_state.c */
#ifndef FT_OPTIM_IMPL_H
#define FT_OPTIM_IMPL_H

#include "train/optim.h"

struct ft_adamw {
	ft_param **p;
	float **m, **v;
	size_t n;
	int64_t step;
	ft_adamw_opts o;
};

#endif
