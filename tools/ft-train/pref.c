/* pref.c - ft-train's preference stages (rm, dpo, kto): their options,
 * the reference model, the binding (lib/train/pref.h), evaluation-only
 * runs, rm predictions and the loss plots LLaMA-Factory's workflows draw. */
#define _GNU_SOURCE
#include "ft-train.h"
#include "model/model_pref.h"
#include "plot/plot.h"
#include "util/atomicfile.h"
#include "util/json.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const pref_keys[] = {
	"pref_beta", "pref_loss", "pref_ftx", "dpo_label_smoothing", "simpo_gamma",
	"kto_chosen_weight", "kto_rejected_weight", "ref_model", "ref_model_adapters", "do_predict",
	"pref_bco_weight", "ld_alpha", NULL,
};

int pref_known_key(const char *k)
{
	for (const char *const *p = pref_keys; *p; p++)
		if (!strcmp(*p, k)) return 1;
	return 0;
}

int pref_stage_of(const char *stage)
{
	if (!strcmp(stage, "rm")) return FT_PREF_RM;
	if (!strcmp(stage, "dpo")) return FT_PREF_DPO;
	if (!strcmp(stage, "kto")) return FT_PREF_KTO;
	return -1;
}

static double num(const ft_lfargs *a, const char *k, double def)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_double(k, v) : def;
}

void pref_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	int st = pref_stage_of(c->stage);
	c->pref = st >= 0;
	ft_pref_opts *o = &c->pref_opts;
	ft_pref_opts_default(o, st >= 0 ? st : FT_PREF_DPO);
	const char *loss = ft_lfargs_get(a, "pref_loss", "sigmoid");
	if (!strcmp(loss, "kto_pair"))
		die_usage("--pref_loss kto_pair: TRL removed it (0.12); use --stage kto with kto batches");
	if ((o->loss = ft_pref_loss_parse(loss)) < 0) die_usage("%s", ft_errmsg());
	o->beta = num(a, "pref_beta", 0.1);
	o->ftx = num(a, "pref_ftx", 0.0);
	o->label_smoothing = num(a, "dpo_label_smoothing", 0.0);
	o->simpo_gamma = num(a, "simpo_gamma", 0.5);
	o->kto_chosen_weight = num(a, "kto_chosen_weight", 1.0);
	o->kto_rejected_weight = num(a, "kto_rejected_weight", 1.0);
	o->bco_weight = num(a, "pref_bco_weight", 0.0);
	const char *ld = ft_lfargs_get(a, "ld_alpha", NULL);
	o->ld = ld && strcmp(ld, "None") && strcmp(ld, "null");   /* a YAML null: LLaMA-Factory's default */
	o->ld_alpha = o->ld ? ft_parse_double("ld_alpha", ld) : 0;
	o->seed = c->tune.seed;
	if (!(o->beta > 0)) die_usage("--pref_beta must be > 0");
	if (o->bco_weight < 0) die_usage("--pref_bco_weight must be >= 0");
	if (o->ld && o->ld_alpha < 0) die_usage("--ld_alpha must be >= 0 (the verbose tokens' weight)");
	/* LLaMA-Factory ignores both silently where its trainers do not read
	 * them; ft refuses, so that a run is what was asked */
	if (o->bco_weight > 1e-6 && !(st == FT_PREF_DPO && ft_pref_uses_ref(o)))
		die_usage("--pref_bco_weight: the BCO loss is mixed into dpo's losses with a reference "
			  "model (--pref_loss sigmoid, hinge, ipo), not %s%s", st == FT_PREF_DPO ?
			  "--pref_loss " : "--stage ", st == FT_PREF_DPO ? loss : c->stage);
	if (o->ld && st != FT_PREF_DPO)
		die_usage("--ld_alpha: LD-DPO weighs --stage dpo's log-probs, not --stage %s's", c->stage);
	if (o->ftx < 0) die_usage("--pref_ftx must be >= 0");
	if (o->label_smoothing < 0 || o->label_smoothing > 0.5)
		die_usage("--dpo_label_smoothing must be in [0, 0.5]");
	if (o->kto_chosen_weight < 0 || o->kto_rejected_weight < 0)
		die_usage("--kto_chosen_weight and --kto_rejected_weight must be >= 0");
	/* LLaMA-Factory's FinetuningArguments check */
	if (st == FT_PREF_DPO && o->loss != FT_PREF_SIGMOID && o->label_smoothing > 1e-6)
		die_usage("--dpo_label_smoothing is only valid for sigmoid loss function "
			  "(--pref_loss %s)", loss);
	c->ref_model = ft_lfargs_get(a, "ref_model", NULL);
	c->ref_model_adapters = ft_lfargs_get(a, "ref_model_adapters", NULL);
	if (c->ref_model_adapters && !c->ref_model)
		die_usage("--ref_model_adapters needs --ref_model");
	const char *dp = ft_lfargs_get(a, "do_predict", NULL);
	c->do_predict = dp ? ft_parse_bool("do_predict", dp) : 0;
	if (c->do_predict && st != FT_PREF_RM)
		die_usage("--do_predict: ft-train predicts reward scores (--stage rm); for generation "
			  "use ft-generate");
	/* sft's reference: the ASFT loss (extras.c) */
	int asft = ft_lfargs_get(a, "use_asft_loss", NULL) && ft_parse_bool("use_asft_loss",
				ft_lfargs_get(a, "use_asft_loss", NULL));
	if (c->ref_model && !(st >= 0 && ft_pref_uses_ref(o)) && !(asft && !strcmp(c->stage, "sft")) &&
	    strcmp(c->stage, "ppo") && strcmp(c->stage, "grpo"))   /* grpo checks it against --beta */
		die_usage("--ref_model: stage %s%s%s uses no reference model", c->stage,
			  st == FT_PREF_DPO ? " with --pref_loss " : "", st == FT_PREF_DPO ? loss : "");
	/* dpo and kto: LLaMA-Factory's trainers call disable_dropout_in_model,
	 * which zeroes LoRA's dropout too */
	if ((st == FT_PREF_DPO || st == FT_PREF_KTO) && c->tune.lora_dropout > 0) {
		warn("note: --lora_dropout %g: stage %s disables dropout (as LLaMA-Factory's trainer)",
		     c->tune.lora_dropout, c->stage);
		c->tune.lora_dropout = 0;
	}
}

/* The manifest agrees with the stage's batch shape. */
void pref_check_manifest(const ft_cli_args *c, const char *path, const ft_manifest *m)
{
	int st = pref_stage_of(c->stage);
	if (st == FT_PREF_KTO && !m->kto_kl)
		die("%s: kto batches without KL rows (kto_kl: false); re-pack them with this ft-pack",
		    ft_display_name(path));
	if ((st == FT_PREF_RM || st == FT_PREF_DPO) && !m->pairwise)
		die("%s: stage %s needs pairwise batches (chosen and rejected rows); these are not",
		    ft_display_name(path), c->stage);
}

/* A frozen model: loaded with LoRA, the adapter (if any) merged, so the
 * weights are the base (plus the adapter) and nothing is trainable. */
ft_model *pref_frozen_model(const char *what, const char *dir, const char *adapters, uint64_t seed)
{
	ft_tune_opts t;
	memset(&t, 0, sizeof t);
	t.type = FT_FT_LORA;
	t.lora_rank = 8;
	t.lora_alpha = 16;
	t.lora_targets = FT_MOD_Q | FT_MOD_V;
	t.seed = seed;
	ft_model *m = ft_model_load(dir, &t);
	if (!m) die("%s %s: %s", what, dir, ft_errmsg());
	if (adapters) {
		char *s = ft_xstrdup(adapters), *save = NULL;
		for (char *a = strtok_r(s, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
			if (ft_model_load_adapter(m, a) < 0) die("%s: adapter %s: %s", what, a, ft_errmsg());
			if (ft_model_merge_lora(m) < 0) die("%s", ft_errmsg());
		}
		free(s);
	}
	if (ft_model_has_adapters(m) && ft_model_merge_lora(m) < 0) die("%s", ft_errmsg());
	return m;
}

/* The PPO and GRPO reference, as LLaMA-Factory's create_ref_model:
 * --ref_model (+ adapters) when given, else for full and freeze a frozen
 * copy of the base; LoRA disables the policy's adapters instead (NULL). */
ft_model *pref_rl_ref(const ft_cli_args *c, const ft_model *m)
{
	ft_model *ref = NULL;
	if (c->ref_model)
		ref = pref_frozen_model("--ref_model", c->ref_model, c->ref_model_adapters, c->tune.seed);
	else if (c->tune.type != FT_FT_LORA)
		ref = pref_frozen_model("the reference (a frozen copy of the base)", c->model, c->adapter, c->tune.seed);
	if (ref && ft_model_config(ref)->vocab_size != ft_model_config(m)->vocab_size)
		die("--ref_model %s: vocabulary of %d tokens, the policy's has %d", c->ref_model ? c->ref_model : c->model,
		    ft_model_config(ref)->vocab_size, ft_model_config(m)->vocab_size);
	return ref;
}

void pref_rl_reward_full(ft_ppo_rm *rm, const char *dir, const char *adapters, uint64_t seed,
			 const ft_model *policy)
{
	ft_model *r = pref_frozen_model("--reward_model", dir, adapters, seed);
	const ft_config *rc = ft_model_config(r), *pc = ft_model_config(policy);
	if (rc->vocab_size != pc->vocab_size || rc->hidden_size != pc->hidden_size)
		die("--reward_model %s: vocabulary %d and hidden size %d, the policy's are %d and %d "
		    "(the reward model must share the policy's tokenizer)", dir,
		    rc->vocab_size, rc->hidden_size, pc->vocab_size, pc->hidden_size);
	/* load_model's value head: from the last adapter when there are any */
	const char *last = adapters ? strrchr(adapters, ',') : NULL;
	char *head = adapters ? ft_xstrdup(last ? last + 1 : adapters) : ft_xstrdup(dir);
	if (ft_ppo_rm_open_model(rm, r, head) < 0)
		die("--reward_model %s: %s", dir, ft_errmsg());
	free(head);
}

/* The value head of an earlier rm run, from the adapter or model dir. */
static void load_value_head(ft_cli_args *c, ft_pref *p)
{
	const char *dirs[2] = { c->adapter, c->model };
	for (int i = 0; i < 2; i++) {
		if (!dirs[i]) continue;
		char *f = ft_xasprintf("%s/value_head.safetensors", dirs[i]);
		int have = access(f, R_OK) == 0;
		free(f);
		if (!have) continue;
		if (ft_pref_load_value_head(p, dirs[i]) < 0)
			die("--stage rm: the value head cannot be attached: %s", ft_errmsg());
		return;
	}
}

/* TRL's ValueHead: dropout config.summary_dropout_prob when the model's
 * config.json has it, else 0.1. */
double pref_value_dropout(const ft_cli_args *c)
{
	char *path = c->from_scratch && c->config ? ft_xstrdup(c->config)
		   : c->model ? ft_xasprintf("%s/config.json", c->model) : NULL;
	double p = 0.1;
	json_t *j = path ? ft_json_load_file(path) : NULL;
	json_t *v = j ? json_object_get(j, "summary_dropout_prob") : NULL;
	if (v && json_is_number(v)) p = json_number_value(v);
	else if (v && json_is_null(v)) p = 0;
	if (p < 0 || p >= 1) die("%s: summary_dropout_prob %g is not in [0, 1)", path, p);
	json_decref(j);
	ft_errclear();
	free(path);
	return p;
}

ft_train_model pref_bind(ft_cli_args *c, ft_model *m, const ft_cuda_opts *dev)
{
	ft_pref_opts *o = &c->pref_opts;
	if (o->stage == FT_PREF_RM) o->value_dropout = pref_value_dropout(c);
	ft_model *ref = NULL;
	if (ft_pref_uses_ref(o)) {
		if (c->ref_model) {
			ref = pref_frozen_model("--ref_model", c->ref_model, c->ref_model_adapters, c->tune.seed);
		} else if (!c->do_train) {
			ref = m;   /* LLaMA-Factory evaluates against the model itself */
		} else if (c->tune.type != FT_FT_LORA) {
			if (c->from_scratch)
				die_usage("--stage %s --train_from_scratch --finetuning_type %s: the reference "
					  "would be the base, which is random here; give --ref_model DIR",
					  c->stage, c->tune.type == FT_FT_FULL ? "full" : "freeze");
			ref = pref_frozen_model("the reference (a frozen copy of the base)", c->model, c->adapter,
					   c->tune.seed);
		}
	}
	c->ref = ref != m ? ref : NULL;
	c->ref_is_policy = ref == m;
	o->dist = c->t.dist;   /* mpirun: metrics over the global batch */
	if (ft_pref_uses_bco(o) && ft_dist_size(o->dist) > 1)
		die_usage("--pref_bco_weight under mpirun: TRL's RunningMoments gathers the batch rewards "
			  "of every rank at each micro-batch (get_global_statistics), which ft does not; "
			  "run it in one process");
	ft_pref *p;
	if (dev) {   /* the device bindings, the reference's own when it is another model */
		if (ft_pref_model_of_cuda(m, dev, o->stage == FT_PREF_RM, &c->pref_pm) < 0)
			die("--device %s: %s", c->device, ft_errmsg());
		c->pref_gpu = 1;
		if (ref && ref != m) {
			ft_cuda_opts ro = *dev;   /* frozen: no ZeRO-1 slice of nothing */
			ro.zero_ranks = ro.zero_rank = 0;
			if (ft_pref_model_of_cuda(ref, &ro, 0, &c->pref_rpm) < 0)
				die("--device %s: the reference model: %s", c->device, ft_errmsg());
			c->pref_gpu = 2;
		}
		p = ft_pref_new_with(&c->pref_pm, !ref ? NULL : ref == m ? &c->pref_pm : &c->pref_rpm, o);
	} else {
		p = ft_pref_new(m, ref, o);
	}
	if (!p) die("--stage %s: %s", c->stage, ft_errmsg());
	if (o->stage == FT_PREF_RM) load_value_head(c, p);
	c->pref_state = p;
	return ft_pref_train_model(p);
}

void pref_free(ft_cli_args *c)
{
	ft_pref_free(c->pref_state);
	if (c->pref_gpu == 2) ft_pref_model_cuda_free(&c->pref_rpm);
	if (c->pref_gpu) ft_pref_model_cuda_free(&c->pref_pm);
	c->pref_gpu = 0;
	if (c->ref) ft_model_free(c->ref);
}

/* --do_eval without --do_train: eval_loss and the stage's eval_ metrics.
 * With the model as its own reference the rewards are meaningless and
 * LLaMA-Factory drops them. */
int pref_eval_only(ft_cli_args *c, ft_train_model *tm, ft_batch_source *val)
{
	double loss;
	int64_t nb, rows;
	if (ft_dist_rank(c->t.dist) != 0) return 0;   /* rank 0 evaluates and writes */
	ft_pref_set_dist(c->pref_state, NULL);
	if (ft_mkdirs(c->output_dir) < 0) die("%s", ft_errmsg());
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (ft_evaluate(tm, val, &loss, &nb, &rows) < 0) die("evaluation: %s", ft_errmsg());
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double rt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
	const char *k[5 + FT_MAX_METRICS] = { "eval_loss", "eval_runtime", "eval_samples_per_second",
					      "eval_steps_per_second" };
	double v[5 + FT_MAX_METRICS] = { loss, round(rt * 1e4) / 1e4, rt > 0 ? round(rows / rt * 1e3) / 1e3 : 0,
					 rt > 0 ? round(nb / rt * 1e3) / 1e3 : 0 };
	const char *mk[FT_MAX_METRICS];
	double mv[FT_MAX_METRICS];
	size_t n = 4, nm = tm->metrics(tm->self, 1, mk, mv, FT_MAX_METRICS);
	for (size_t i = 0; i < nm; i++) {
		if (c->ref_is_policy && strstr(mk[i], "rewards")) continue;
		k[n] = mk[i];
		v[n++] = mv[i];
	}
	if (ft_save_results(c->output_dir, "eval_results.json", k, v, n) < 0 ||
	    ft_save_results(c->output_dir, "all_results.json", k, v, n) < 0)
		die("%s", ft_errmsg());
	if (ft_verbose >= 1) {
		fprintf(stderr, "***** eval metrics *****\n");
		for (size_t i = 0; i < n; i++) fprintf(stderr, "  %-24s = %.4f\n", k[i], v[i]);
	}
	return 0;
}

/* rm --do_predict on the --val batches. */
void pref_predict(ft_cli_args *c, ft_batch_source *val)
{
	if (ft_dist_rank(c->t.dist) != 0) return;   /* rank 0 scores and writes */
	if (ft_mkdirs(c->output_dir) < 0) die("%s", ft_errmsg());
	char *path = ft_xasprintf("%s/generated_predictions.jsonl", c->output_dir);
	int64_t n;
	if (ft_pref_predict(c->pref_state, val, path, &n) < 0) die("--do_predict: %s", ft_errmsg());
	note("saved %lld predictions to %s", (long long)n, path);
	free(path);
}

/* LLaMA-Factory's plot_loss keys per workflow. */
void pref_plot(const ft_cli_args *c)
{
	static const char *const dpo[] = { "loss", "rewards/accuracies", "eval_loss" };
	static const char *const kto[] = { "loss", "rewards/chosen", "eval_loss" };
	static const char *const rm[] = { "loss", "eval_loss", "eval_accuracy" };
	int st = pref_stage_of(c->stage);
	const char *const *k = st == FT_PREF_RM ? rm : st == FT_PREF_KTO ? kto : dpo;
	if (ft_plot_loss_files_keys(c->output_dir, k, 3) < 0) warn("--plot_loss: %s", ft_errmsg());
}
