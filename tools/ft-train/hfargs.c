/* hfargs.c - ft-train's settings of transformers' Seq2SeqTrainingArguments
 * and LLaMA-Factory's FinetuningArguments that the pt and sft trainers
 * read (docs/TRAINING.md): --label_smoothing_factor, --compute_accuracy,
 * --load_best_model_at_end, --metric_for_best_model, --greater_is_better,
 * --early_stopping_steps. */
#include "ft-train.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const hf_keys[] = {
	"label_smoothing_factor", "compute_accuracy", "load_best_model_at_end", "metric_for_best_model",
	"greater_is_better", "early_stopping_steps", NULL,
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

/* LLaMA-Factory's Optional fields: absent, "null" or "none" */
static const char *optional(const ft_lfargs *a, const char *k)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v && *v && strcasecmp(v, "null") && strcasecmp(v, "none") ? v : NULL;
}

/* TrainingArguments.__post_init__: load_best_model_at_end needs the eval
 * and save strategies equal and, by steps, save_steps a round multiple of
 * eval_steps */
static void load_best_check(const ft_cli_args *c)
{
	const ft_train_opts *o = &c->t;
	static const char *const names[] = { "steps", "epoch", "no" };
	if (o->eval_strategy != o->save_strategy)
		die_usage("--load_best_model_at_end requires the save and eval strategy to match, but found "
			  "eval_strategy %s and save_strategy %s", names[o->eval_strategy],
			  names[o->save_strategy]);
	int64_t ev = o->eval_steps > 0 ? o->eval_steps : o->logging_steps;
	if (o->eval_strategy == FT_STRATEGY_STEPS && (ev == 0 || o->save_steps % ev != 0))
		die_usage("--load_best_model_at_end requires the saving steps to be a round multiple of the "
			  "evaluation steps, but found %lld, which is not a round multiple of %lld",
			  (long long)o->save_steps, (long long)ev);
}

/* The best model's settings; early_stopping_steps as LLaMA-Factory's
 * tuner adds EarlyStoppingCallback(early_stopping_patience=N), whose
 * on_train_begin asserts a metric and an eval strategy. */
static void best_parse(ft_lfargs *a, ft_cli_args *c)
{
	ft_train_opts *o = &c->t;
	o->load_best_model_at_end = flag(a, "load_best_model_at_end");
	const char *es = optional(a, "early_stopping_steps"), *mb = optional(a, "metric_for_best_model");
	const char *gb = optional(a, "greater_is_better");
	if (es) {
		long long n = (long long)ft_parse_double("early_stopping_steps", es);
		if (n < 0 || (double)n != ft_parse_double("early_stopping_steps", es))
			die_usage("--early_stopping_steps must be a whole number >= 0");
		o->early_stopping = 1;
		o->early_stopping_patience = n;
	}
	if (!o->load_best_model_at_end && !es && !mb) {
		if (gb) die_usage("--greater_is_better needs --metric_for_best_model");
		return;
	}
	if (strcmp(c->stage, "pt") && strcmp(c->stage, "sft"))
		die_usage("--%s: only --stage pt and sft are implemented", es ? "early_stopping_steps" :
			  mb ? "metric_for_best_model" : "load_best_model_at_end");
	if (!mb && !o->load_best_model_at_end)
		die_usage("--early_stopping_steps: EarlyStoppingCallback requires --metric_for_best_model "
			  "(or --load_best_model_at_end, whose default is loss)");
	const char *name = mb ? mb : "loss";
	o->greater_is_better = gb ? ft_parse_bool("greater_is_better", gb)
		: !(strlen(name) >= 4 && !strcmp(name + strlen(name) - 4, "loss"));
	static char metric[256];
	snprintf(metric, sizeof metric, "%s%s", strncmp(name, "eval_", 5) ? "eval_" : "", name);
	o->metric_for_best_model = metric;
	if (es && (o->eval_strategy == FT_STRATEGY_NO || !c->n_val))
		die_usage("--early_stopping_steps: EarlyStoppingCallback requires evaluation (--val and an "
			  "eval_strategy of steps or epoch)");
	if (o->load_best_model_at_end) {
		if (!c->n_val) die_usage("--load_best_model_at_end needs evaluation (--val BATCHES)");
		load_best_check(c);
	}
}

void hfargs_parse(ft_lfargs *a, ft_cli_args *c)
{
	label_smoothing_parse(a, c);
	accuracy_parse(a, c);
	best_parse(a, c);
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
