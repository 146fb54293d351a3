/* hfargs.c - ft-train's settings of transformers' Seq2SeqTrainingArguments
 * and LLaMA-Factory's FinetuningArguments that the pt and sft trainers
 * read (docs/TRAINING.md): --label_smoothing_factor, --compute_accuracy. */
#include "ft-train.h"

#include <string.h>

static const char *const hf_keys[] = {
	"label_smoothing_factor", "compute_accuracy", NULL,
};

int hfargs_known_key(const char *k)
{
	for (const char *const *p = hf_keys; *p; p++)
		if (!strcmp(*p, k)) return 1;
	return 0;
}

static int plain_stage(const ft_cli_args *c)
{
	return !strcmp(c->stage, "pt") || !strcmp(c->stage, "sft");
}

/* transformers' Trainer builds a LabelSmoother when the factor is not 0
 * and applies it in compute_loss only when no compute_loss_func is set:
 * LLaMA-Factory's DFT and EAFT set one, its ASFT overrides compute_loss,
 * and the rm/dpo/kto/ppo/grpo trainers compute their own losses, so the
 * factor would be accepted there and do nothing. */
static void label_smoothing_parse(ft_lfargs *a, ft_cli_args *c)
{
	const char *v = ft_lfargs_get(a, "label_smoothing_factor", NULL);
	double e = v ? ft_parse_double("label_smoothing_factor", v) : 0;
	if (!(e >= 0 && e <= 1))
		die_usage("--label_smoothing_factor must be in [0, 1]");
	if (e == 0) return;
	if (!plain_stage(c))
		die_usage("--label_smoothing_factor: only --stage pt and sft apply it (LLaMA-Factory's %s "
			  "trainer computes its own loss and never reads it)", c->stage);
	if (c->tune.sft_loss || c->x.asft)
		die_usage("--label_smoothing_factor with --use_%s_loss: LLaMA-Factory's loss replaces "
			  "transformers' LabelSmoother, which would be ignored; choose one",
			  c->x.asft ? "asft" : c->tune.sft_loss == FT_SFT_LOSS_DFT ? "dft" : "eaft");
	c->tune.label_smoothing = e;
}

static int flag(const ft_lfargs *a, const char *k)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_bool(k, v) : 0;
}

/* LLaMA-Factory's sft workflow only: ComputeAccuracy with
 * eval_logit_processor (its parser refuses predict_with_generate with it). */
static void accuracy_parse(ft_lfargs *a, ft_cli_args *c)
{
	c->compute_accuracy = flag(a, "compute_accuracy");
	if (!c->compute_accuracy) return;
	if (strcmp(c->stage, "sft"))
		die_usage("--compute_accuracy: only --stage sft computes it (LLaMA-Factory's %s workflow "
			  "never reads it)", c->stage);
	if (flag(a, "predict_with_generate"))
		die_usage("Cannot use --predict_with_generate and --compute_accuracy together (as "
			  "LLaMA-Factory)");
	if (c->tune.sft_loss || c->x.asft)
		die_usage("--compute_accuracy with --use_%s_loss is not implemented (the accuracy is "
			  "taken from the plain loss's logits)",
			  c->x.asft ? "asft" : c->tune.sft_loss == FT_SFT_LOSS_DFT ? "dft" : "eaft");
}

void hfargs_parse(ft_lfargs *a, ft_cli_args *c)
{
	label_smoothing_parse(a, c);
	accuracy_parse(a, c);
}

void hfargs_bound(ft_cli_args *c, ft_model *m, int on_gpu)
{
	if (!c->compute_accuracy) return;
	if (on_gpu)
		die_usage("--compute_accuracy is not implemented on --device %s yet (run it with "
			  "--device cpu)", c->device);
	if (ft_dist_size(c->t.dist) > 1)
		die_usage("--compute_accuracy is not implemented with %d ranks yet (one process only)",
			  ft_dist_size(c->t.dist));
	ft_model_set_accuracy(m, 1);
}
