/* optim_ext.c - what the optimizer extensions share; see optim_ext.h */
#include "train/optim_ext.h"

#include <stdlib.h>

void ft_optim_ext_free(ft_optim_ext *e)
{
	if (!e) return;
	if (e->free) e->free(e->self);
	free(e);
}
