/* optim_loraplus.c - LoRA+ (Hayou et al. 2024) as LLaMA-Factory's
 * _create_loraplus_optimizer: four AdamW param groups,
 *   lora_a          everything else            lr,         weight_decay
 *   lora_b          "lora_B" or 1-D, decaying  lr * ratio, weight_decay
 *   lora_b_nodecay  "lora_B" or 1-D, no decay  lr * ratio, 0
 *   embedding       "lora_embedding_B"         lr_embedding, weight_decay
 * Each group's lr follows the schedule as LambdaLR does: its own initial
 * lr times the schedule's factor.  ft_param.decay already says which
 * params decay (transformers' get_decay_parameter_names), so the groups
 * differ only in their lr here. */
#include "train/optim_ext.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
	double lr, ratio, lr_embedding;
} loraplus;

static double group_lr(const loraplus *x, const ft_param *p)
{
	if (strstr(p->name, "lora_embedding_B")) return x->lr_embedding;
	if (strstr(p->name, "lora_B") || p->ndim == 1) return x->lr * x->ratio;
	return x->lr;
}

/* The scheduled lr of p's group, as LambdaLR: initial lr x factor. */
static double lp_param_lr(void *self, const ft_param *p, double lambda)
{
	return group_lr(self, p) * lambda;
}

static int lp_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	size_t n = ft_adamw_count(opt);
	double *lrs = ft_xcalloc(n ? n : 1, sizeof *lrs);
	(void)lr;
	for (size_t k = 0; k < n; k++)
		lrs[k] = lp_param_lr(self, ft_adamw_param(opt, k), lambda);
	ft_adamw_step_lrs(opt, lrs);
	free(lrs);
	return 0;
}

static void lp_free(void *self) { free(self); }

ft_optim_ext *ft_loraplus_new(double learning_rate, double ratio, double lr_embedding)
{
	loraplus *x = ft_xcalloc(1, sizeof *x);
	*x = (loraplus){ learning_rate, ratio, lr_embedding };
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = lp_step, .free = lp_free, .param_lr = lp_param_lr };
	return e;
}
