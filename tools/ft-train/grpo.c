/* grpo.c - ft-train --stage grpo: TRL 1.16's GRPOTrainer (docs/GRPO.md)
 * on a LoRA, freeze or full policy, rewards from Unix filters
 * (--reward_funcs); the reference (beta != 0) the LoRA policy with its
 * adapters off, or a frozen copy of the base.  The loop is
 * lib/train/grpo_loop.c; here are the options, the rewards, the
 * completions log, the checkpoints' model files and the outputs. */
#define _GNU_SOURCE
#include "ft-train.h"
#include "gen/generate.h"
#include "model/model_pref.h"
#include "text/tokenizer.h"
#include "train/grpo_loop.h"
#include "train/grpo_reward.h"
#include "train/ppo_reward.h"
#include "train/ppo_rm.h"
#include "plot/plot.h"
#include "util/atomicfile.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* GRPOConfig's names; the sampling ones are shared with --stage ppo */
static const char *const grpo_keys[] = {
	"reward_funcs", "reward_weights", "num_generations", "num_iterations", "epsilon", "epsilon_high",
	"beta", "loss_type", "scale_rewards", "max_completion_length", "log_completions",
	"mask_truncated_completions", "top_entropy_quantile", NULL,
};
/* --stage ppo's own, with what GRPO has instead */
static const char *const ppo_only[][2] = {
	{ "max_new_tokens", "--max_completion_length" }, { "ppo_epochs", "--num_iterations" },
	{ "ppo_buffer_size", "--num_generations and the batch size" }, { "ppo_target", "--beta" },
	{ "ppo_score_norm", "--scale_rewards" }, { "ppo_whiten_rewards", "--scale_rewards" },
	{ "do_sample", "nothing: GRPO always samples" },
};

#define MAX_REWARDS 16

static struct {
	int on, n_rewards, log_completions, mask_truncated;
	int rm_index;                 /* --reward_model's place among the rewards (the last); -1: none */
	const char *rm_dir;
	int rm_full;                  /* --reward_model_type full: a model directory of its own */
	const char *rm_adapters;      /* --reward_model_adapters (full only) */
	char *names[MAX_REWARDS], *cmds[MAX_REWARDS];
	float weights[MAX_REWARDS];
	int num_generations, num_iterations, max_completion_length;
	ft_grpo_opts o;
	ft_sampling s;
} P;

static int in_list(const char *const *l, const char *k)
{
	for (; *l; l++)
		if (!strcmp(*l, k)) return 1;
	return 0;
}

int grpo_known_key(const char *k)
{
	return in_list(grpo_keys, k);
}

int grpo_stage(const ft_cli_args *c)
{
	return !strcmp(c->stage, "grpo");
}

static double num(const ft_lfargs *a, const char *k, double def)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_double(k, v) : def;
}

/* NAME=CMD names it; otherwise the command's first word, without its
 * directory (TRL names a reward by its function). */
static void add_reward(const char *spec)
{
	if (P.n_rewards == MAX_REWARDS) die_usage("--reward_funcs: at most %d commands", MAX_REWARDS);
	const char *eq = strchr(spec, '='), *sp = strpbrk(spec, " \t");
	char *name, *cmd;
	if (eq && eq > spec && (!sp || eq < sp) && strspn(spec, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") == (size_t)(eq - spec)) {
		name = strndup(spec, (size_t)(eq - spec));
		cmd = ft_xstrdup(eq + 1);
	} else {
		cmd = ft_xstrdup(spec);
		size_t l = strcspn(spec, " \t");
		char *w = strndup(spec, l), *base = strrchr(w, '/');
		name = ft_xstrdup(base ? base + 1 : w);
		free(w);
	}
	while (*cmd == ' ') memmove(cmd, cmd + 1, strlen(cmd));
	if (!*cmd) die_usage("--reward_funcs: an empty command");
	for (int i = 0; i < P.n_rewards; i++)
		if (!strcmp(P.names[i], name)) {   /* two checkers run as the same program */
			char *n2 = ft_xasprintf("%s_%d", name, P.n_rewards + 1);
			free(name);
			name = n2;
			break;
		}
	P.names[P.n_rewards] = name;
	P.cmds[P.n_rewards++] = cmd;
}

/* --reward_model DIR: the last reward, named as TRL names a reward
 * model, by the last part of its path. */
static void add_rm(const char *dir)
{
	if (P.n_rewards == MAX_REWARDS) die_usage("--reward_model: at most %d rewards in all", MAX_REWARDS);
	char *d = ft_xstrdup(dir);
	for (size_t l = strlen(d); l > 1 && d[l - 1] == '/'; l--) d[l - 1] = 0;
	const char *base = strrchr(d, '/');
	char *name = ft_xstrdup(base && base[1] ? base + 1 : d);
	free(d);
	for (int i = 0; i < P.n_rewards; i++)
		if (!strcmp(P.names[i], name)) {
			char *n2 = ft_xasprintf("%s_%d", name, P.n_rewards + 1);
			free(name);
			name = n2;
			break;
		}
	P.rm_index = P.n_rewards;
	P.names[P.n_rewards] = name;
	P.cmds[P.n_rewards++] = NULL;
}

/* The commas of --reward_funcs that separate commands: those outside
 * shell quotes and brackets, so `awk '{ split($0, t, ",") }'` stays one. */
static void split_commands(const char *rf)
{
	char *s = ft_xstrdup(rf), *start = s;
	char q = 0;
	int depth = 0;
	for (char *p = s;; p++) {
		if (q) {
			if (*p == '\\' && q == '"' && p[1]) p++;
			else if (*p == q) q = 0;
			else if (!*p) die_usage("--reward_funcs: an unterminated %c quote", q);
			continue;
		}
		if (*p == '\'' || *p == '"') q = *p;
		else if (*p == '\\' && p[1]) p++;
		else if (*p == '(' || *p == '[' || *p == '{') depth++;
		else if ((*p == ')' || *p == ']' || *p == '}') && depth > 0) depth--;
		else if (!*p || (*p == ',' && depth == 0)) {
			int end = !*p;
			*p = 0;
			add_reward(start);
			if (end) break;
			start = p + 1;
		}
	}
	free(s);
}

static void parse_rewards(const ft_lfargs *a)
{
	const char *rf = ft_lfargs_get(a, "reward_funcs", NULL);
	P.rm_dir = ft_lfargs_get(a, "reward_model", NULL);
	P.rm_index = -1;
	const char *rt = ft_lfargs_get(a, "reward_model_type", "lora");
	if (!strcmp(rt, "api"))
		die_usage("--reward_model_type api: with --stage grpo a command is a --reward_funcs entry");
	if (strcmp(rt, "lora") && strcmp(rt, "full"))
		die_usage("--reward_model_type: '%s' (lora or full; commands are --reward_funcs entries)", rt);
	P.rm_full = !strcmp(rt, "full");
	P.rm_adapters = ft_lfargs_get(a, "reward_model_adapters", NULL);
	if (P.rm_adapters && !P.rm_full)
		die_usage("--reward_model_adapters: only --reward_model_type full uses them");
	if (P.rm_full && !P.rm_dir)
		die_usage("--reward_model_type full needs --reward_model DIR (a model directory with "
			  "value_head.safetensors)");
	if ((!rf || !*rf) && !P.rm_dir)
		die_usage("--stage grpo needs --reward_funcs CMD[,CMD...] (commands reading JSON lines, "
			  "answering one number per line) or --reward_model DIR (an rm adapter, or a "
			  "model with --reward_model_type full)");
	if (rf && *rf) split_commands(rf);
	if (P.rm_dir) add_rm(P.rm_dir);
	char *s, *save = NULL;
	const char *w = ft_lfargs_get(a, "reward_weights", NULL);
	for (int i = 0; i < P.n_rewards; i++) P.weights[i] = 1.0f;
	if (!w) return;
	int k = 0;
	s = ft_xstrdup(w);
	for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (k == P.n_rewards)
			die_usage("--reward_weights: more weights than the %d rewards (--reward_funcs, then --reward_model)",
				  P.n_rewards);
		P.weights[k++] = (float)ft_parse_double("reward_weights", t);
	}
	free(s);
	if (k != P.n_rewards)
		die_usage("--reward_weights: %d weights for %d rewards (one each: --reward_funcs, then --reward_model)",
			  k, P.n_rewards);
}

void grpo_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	P.on = grpo_stage(c);
	if (!P.on) {
		for (const char *const *p = grpo_keys; *p; p++)
			if (ft_lfargs_get(a, *p, NULL))
				die_usage("--%s: only --stage grpo uses it (this is --stage %s)", *p, c->stage);
		return;
	}
	for (size_t i = 0; i < sizeof ppo_only / sizeof *ppo_only; i++)
		if (ft_lfargs_get(a, ppo_only[i][0], NULL))
			die_usage("--%s: a --stage ppo setting; --stage grpo uses %s", ppo_only[i][0], ppo_only[i][1]);
	parse_rewards(a);
	ft_grpo_opts_default(&P.o);
	const char *lt = ft_lfargs_get(a, "loss_type", "dapo");
	if ((P.o.loss_type = ft_grpo_loss_type(lt)) < 0)
		die_usage("--loss_type: '%s' (grpo, bnpo, dr_grpo or dapo; TRL's cispo, sapo, vespo and luspo "
			  "are not built)", lt);
	const char *sr = ft_lfargs_get(a, "scale_rewards", "group");
	if ((P.o.scale_rewards = ft_grpo_scale(sr)) < 0)
		die_usage("--scale_rewards: '%s' (group or true, batch, none or false)", sr);
	P.o.epsilon_low = num(a, "epsilon", 0.2);
	P.o.epsilon_high = num(a, "epsilon_high", P.o.epsilon_low);
	if (!(P.o.epsilon_low >= 0) || !(P.o.epsilon_high >= 0)) die_usage("--epsilon and --epsilon_high must be >= 0");
	P.o.beta = num(a, "beta", 0.0);
	if (!(P.o.beta >= 0)) die_usage("--beta must be >= 0");
	if (c->ref_model && P.o.beta == 0)   /* TRL makes no reference at beta 0 */
		die_usage("--ref_model: --beta 0 (the default) uses no reference; give --beta B > 0");
	if (c->tune.type != FT_FT_LORA && c->from_scratch && P.o.beta != 0 && !c->ref_model)
		die_usage("--stage grpo --train_from_scratch --finetuning_type %s --beta %g: the reference "
			  "would be the base, which is random here; give --ref_model DIR",
			  c->tune.type == FT_FT_FULL ? "full" : "freeze", P.o.beta);
	P.o.top_entropy_quantile = num(a, "top_entropy_quantile", 1.0);
	if (!(P.o.top_entropy_quantile >= 0 && P.o.top_entropy_quantile <= 1))
		die_usage("--top_entropy_quantile %g: must be in [0, 1]", P.o.top_entropy_quantile);
	const char *mt = ft_lfargs_get(a, "mask_truncated_completions", NULL);
	P.mask_truncated = mt ? ft_parse_bool("mask_truncated_completions", mt) : 0;
	P.num_generations = (int)num(a, "num_generations", 8);
	if (P.num_generations < 2)
		die_usage("--num_generations %d: GRPO needs at least 2 completions per prompt for the group "
			  "advantages", P.num_generations);
	P.num_iterations = (int)num(a, "num_iterations", 1);
	if (P.num_iterations < 1) die_usage("--num_iterations must be >= 1");
	P.max_completion_length = (int)num(a, "max_completion_length", 512);
	if (P.max_completion_length < 1) die_usage("--max_completion_length must be >= 1");
	P.o.max_completion_length = P.max_completion_length;
	const char *lc = ft_lfargs_get(a, "log_completions", NULL);
	P.log_completions = lc ? ft_parse_bool("log_completions", lc) : 0;
	ft_sampling_defaults(&P.s);
	P.s.do_sample = 1;
	P.s.temperature = num(a, "temperature", 1.0);   /* GRPOConfig's defaults, not LLaMA-Factory's */
	if (!(P.s.temperature > 0))   /* do_sample is always on: greedy is not GRPO */
		die_usage("--temperature %g: must be > 0 (GRPO samples)", P.s.temperature);
	P.s.top_p = num(a, "top_p", 1.0);
	P.s.top_k = (int)num(a, "top_k", 0);
	P.s.repetition_penalty = num(a, "repetition_penalty", 1.0);
	if (ft_sampling_check(&P.s) < 0) die_usage("%s", ft_errmsg());
}

/* The text a reward sees: decoded without special tokens as TRL's
 * batch_decode, or the ids space-separated for a model without a
 * tokenizer. */
static char *text_of(ft_tokenizer *tok, const ft_i32vec *v)
{
	if (tok) return ft_tokenizer_decode_lossy(tok, v->v, v->n, 1);
	char *s = ft_xmalloc(12 * v->n + 1);
	size_t len = 0;
	s[0] = 0;
	for (size_t i = 0; i < v->n; i++) len += (size_t)sprintf(s + len, i ? " %d" : "%d", v->v[i]);
	return s;
}

typedef struct {
	ft_tokenizer *tok;
	const ft_i32vec *prompts;
	json_t *const *extra;           /* each prompt's extra dataset columns (or NULL) */
	ft_grpo_reward *r[MAX_REWARDS];  /* NULL at rm_index */
	ft_ppo_rm rm;                   /* --reward_model */
	FILE *samples;
	char **ptext, **ctext;      /* the last batch's texts, for the completions log */
	size_t n;
} reward_ctx;

static void texts_free(reward_ctx *R)
{
	for (size_t i = 0; i < R->n; i++) { free(R->ptext[i]); free(R->ctext[i]); }
	free(R->ptext);
	free(R->ctext);
	R->ptext = R->ctext = NULL;
	R->n = 0;
}

/* The rm's value head at the last token of prompt + completion (the stop
 * token dropped, as TRL's decoded completion has no special tokens). */
static int score_rm(reward_ctx *R, const size_t *pidx, const ft_i32vec *comp, size_t n, float *out)
{
	ft_i32vec *q = ft_xmalloc(n * sizeof *q);
	for (size_t i = 0; i < n; i++) q[i] = R->prompts[pidx[i]];   /* shallow: read only */
	int rc = ft_ppo_rm_score(&R->rm, q, comp, n, out);
	free(q);
	if (rc < 0) {
		char *why = ft_xstrdup(ft_errmsg());   /* ft_fail formats into the same buffer */
		ft_fail("--reward_model %s: %s", P.rm_dir, why);
		free(why);
	}
	return rc;
}

static int score(void *ctx, const size_t *pidx, const ft_i32vec *comp, size_t n, float *per_func)
{
	reward_ctx *R = ctx;
	texts_free(R);
	R->n = n;
	R->ptext = ft_xcalloc(n, sizeof *R->ptext);
	R->ctext = ft_xcalloc(n, sizeof *R->ctext);
	char **lines = ft_xcalloc(n, sizeof *lines);
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		R->ptext[i] = text_of(R->tok, &R->prompts[pidx[i]]);
		R->ctext[i] = text_of(R->tok, &comp[i]);
		if (!R->ptext[i] || !R->ctext[i]) { rc = -1; break; }
		/* TRL's reward kwargs: the row's other columns beside prompt and completion */
		lines[i] = ft_reward_request_line(R->ptext[i], "completion", R->ctext[i], R->extra[pidx[i]]);
		if (!lines[i]) rc = ft_fail_ctx("completion %zu: ", i + 1);
	}
	float *one = ft_xmalloc(n * sizeof *one);
	for (int k = 0; k < P.n_rewards && rc == 0; k++) {
		rc = k == P.rm_index ? score_rm(R, pidx, comp, n, one)
				     : ft_grpo_reward_score(R->r[k], (const char *const *)lines, n, one);
		for (size_t i = 0; rc == 0 && i < n; i++) per_func[i * P.n_rewards + k] = one[i];
	}
	free(one);
	for (size_t i = 0; i < n; i++) free(lines[i]);
	free(lines);
	return rc;
}

/* --log_completions: TRL's completions table as JSON lines */
static int samples(void *ctx, int64_t step, const size_t *pidx, const ft_i32vec *comp, size_t n,
		   const float *per_func, const float *adv)
{
	reward_ctx *R = ctx;
	(void)pidx;
	(void)comp;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_object(), *rw = json_object();
		json_object_set_new(o, "step", json_integer(step));
		json_object_set_new(o, "prompt", json_string(R->ptext[i]));
		json_object_set_new(o, "completion", json_string(R->ctext[i]));
		for (int k = 0; k < P.n_rewards; k++) json_object_set_new(rw, P.names[k], json_real(per_func[i * P.n_rewards + k]));
		json_object_set_new(o, "rewards", rw);
		json_object_set_new(o, "advantage", json_real(adv[i]));
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		json_decref(o);
		int bad = fputs(s, R->samples) < 0 || fputc('\n', R->samples) < 0;
		free(s);
		if (bad) return ft_fail("completions.jsonl: write failed");
	}
	return fflush(R->samples) == 0 ? 0 : ft_fail("completions.jsonl: write failed");
}

static int gen(void *ctx, ft_model *m, const ft_i32vec *q, size_t n, uint64_t seed, uint64_t first, ft_i32vec *outs)
{
	rl_gen *G = ctx;
	ft_gen_opts o = G->g;
	o.seed = seed;
	o.first_index = first;
	return rl_generate(G->dev, m, q, n, &o, outs);
}

/* A checkpoint's model files, as the final outputs: the adapter (LoRA) or
 * the model directory (freeze, full). */
static int save_model(void *ctx, const char *dir)
{
	const ft_cli_args *c = ((void **)ctx)[0];
	ft_model *m = ((void **)ctx)[1];
	return (c->tune.type == FT_FT_LORA ? ft_model_save_adapter(m, dir) : ft_model_save(m, dir));
}

/* The adapter (LoRA) or the whole model with the base's tokenizer files
 * (freeze, full: as sft's and ppo's outputs), written in a temporary
 * sibling, then moved into output_dir file by file. */
static void save_outputs(const ft_cli_args *c, ft_model *m)
{
	char *stage = ft_xasprintf("%s/grpo-final", c->output_dir);
	ft_atomic a;
	if (ft_atomic_dir_open(&a, stage) < 0) die("%s", ft_errmsg());
	void *ctx[2] = { (void *)c, m };
	int bad = save_model(ctx, a.tmp) < 0;
	for (const char *const *f = c->t.extra_files; !bad && c->tune.type != FT_FT_LORA && f && *f; f++)
		bad = ft_copy_into(*f, a.tmp) < 0;
	if (bad) {
		ft_atomic_dir_abort(&a);
		die("saving to %s: %s", c->output_dir, ft_errmsg());
	}
	move_outputs(a.tmp, c->output_dir);
	ft_atomic_dir_abort(&a);
	free(stage);
}

/* completions.jsonl: fresh, or on resume the lines of the generations
 * before the checkpoint's step (a generation at step k is logged with
 * "step": k, so the one at the checkpoint's own step comes again). */
static FILE *open_completions(const ft_cli_args *c, int resume, int64_t from)
{
	char *path = ft_xasprintf("%s/completions.jsonl", c->output_dir);
	char *keep = NULL;
	size_t keepn = 0;
	FILE *in = resume ? fopen(path, "r") : NULL;
	if (in) {
		FILE *mem = open_memstream(&keep, &keepn);
		char *line = NULL;
		size_t cap = 0;
		ssize_t n;
		while ((n = getline(&line, &cap, in)) > 0) {
			json_t *j = json_loadb(line, (size_t)n, 0, NULL);
			if (j && json_integer_value(json_object_get(j, "step")) < from) fwrite(line, 1, (size_t)n, mem);
			json_decref(j);
		}
		free(line);
		fclose(in);
		fclose(mem);
	}
	FILE *fp = fopen(path, "w");
	if (!fp) die("%s: %m", path);
	if (keepn && fwrite(keep, 1, keepn, fp) != keepn) die("%s: %m", path);
	free(keep);
	free(path);
	return fp;
}

/* The reference when beta != 0 (pref_rl_ref). */
static ft_model *open_ref(const ft_cli_args *c, const ft_model *m)
{
	return P.o.beta == 0 ? NULL : pref_rl_ref(c, m);
}

static void loop_opts(const ft_cli_args *c, const ft_manifest *man, size_t n, ft_grpo_loop_opts *o)
{
	memset(o, 0, sizeof *o);
	o->grpo = P.o;
	o->batch_size = man->batch_size;
	o->grad_accum = c->t.gradient_accumulation_steps;
	o->num_generations = P.num_generations;
	o->num_iterations = P.num_iterations;
	o->dist = c->t.dist;
	int W = ft_dist_size(o->dist), per_gen = ft_grpo_prompts_per_generation(o);
	if (per_gen == 0 && W > 1)
		die_usage("the generation batch, per_device_train_batch_size x gradient_accumulation_steps x "
			  "ranks = %d x %d x %d, must be divisible by --num_generations %d (GRPOConfig's rule; "
			  "the batch size is ft-pack's)", o->batch_size, o->grad_accum, W, P.num_generations);
	if (per_gen == 0)
		die_usage("the generation batch, per_device_train_batch_size x gradient_accumulation_steps = "
			  "%d x %d, must be divisible by --num_generations %d (GRPOConfig's rule; the batch "
			  "size is ft-pack's)", o->batch_size, o->grad_accum, P.num_generations);
	if (n < (size_t)per_gen)
		die("%s: %zu prompts, fewer than one generation batch needs (%d)", ft_display_name(c->train[0]), n, per_gen);
	int64_t per_epoch = (int64_t)(n / (size_t)per_gen) * P.num_iterations;   /* RepeatSampler drops the tail */
	o->max_steps = c->t.max_steps > 0 ? c->t.max_steps : (int64_t)ceil(c->t.num_train_epochs * per_epoch);
	if (o->max_steps < 1) o->max_steps = 1;
	o->steps_per_epoch = (double)per_epoch;
	o->logging_steps = c->t.logging_steps > 0 ? (int)c->t.logging_steps : 1;
	o->max_completion_length = P.max_completion_length;
	o->temperature = (float)P.s.temperature;   /* the log-probabilities of what was sampled at it */
	o->mask_truncated = P.mask_truncated;
	o->pad_id = man->pad_id;
	o->n_rewards = P.n_rewards;
	o->reward_weights = P.weights;
	o->reward_names = (const char *const *)P.names;
	ft_adamw_opts_default(&o->adamw);
	o->adamw.beta1 = c->t.adam_beta1;
	o->adamw.beta2 = c->t.adam_beta2;
	o->adamw.eps = c->t.adam_epsilon;
	o->adamw.weight_decay = c->t.weight_decay;
	o->max_grad_norm = c->t.max_grad_norm;
	int64_t warm = c->t.warmup >= 1 ? (int64_t)c->t.warmup : (int64_t)ceil(c->t.warmup * o->max_steps);
	if (ft_sched_init(&o->sched, c->t.lr_scheduler_type, c->t.learning_rate, warm, o->max_steps) < 0 ||
	    ft_sched_kwargs(&o->sched, c->t.lr_scheduler_kwargs) < 0)
		die_usage("%s", ft_errmsg());
	o->seed = c->t.seed;
	o->save_steps = c->t.save_steps;
	o->save_total_limit = c->t.save_total_limit;
	o->output_dir = c->output_dir;
	o->resume_dir = c->t.resume_dir;
}

/* What data parallel grpo does not do, refused before any work. */
static void check_dist(const ft_cli_args *c)
{
	if (ft_dist_size(c->t.dist) < 2) return;
	if (P.log_completions)
		die_usage("--log_completions: under mpirun each rank holds only its own completions' texts; "
			  "run it in one process");
	if (c->zero)
		die_usage("--zero %d: --stage grpo under mpirun keeps the whole AdamW state on every rank", c->zero);
	if (c->t.save_steps > 0 && c->t.save_steps % P.num_iterations)
		die_usage("--save_steps %lld: under mpirun a checkpoint must fall between generation batches "
			  "(a multiple of --num_iterations %d: each rank's batch is its own)",
			  (long long)c->t.save_steps, P.num_iterations);
}

int grpo_run(ft_cli_args *c, ft_model *m, ft_batch_source *train, const ft_manifest *man)
{
	check_dist(c);
	int rank0 = ft_dist_rank(c->t.dist) == 0;
	if (c->tune.type == FT_FT_LORA && !ft_model_has_adapters(m))
		die("--stage grpo: the policy has no LoRA adapters (--finetuning_type lora)");
	ft_model *ref = open_ref(c, m);
	size_t n;
	json_t **extra;
	ft_i32vec *q = read_prompts(train, man, &n, &extra);
	if (n == 0) die("%s: no prompts", ft_display_name(c->train[0]));
	ft_grpo_loop_opts o;
	loop_opts(c, man, n, &o);
	rl_gen G = { .dev = NULL };
	ft_gen_defaults(&G.g);
	G.g.sampling = P.s;
	G.g.max_new_tokens = P.max_completion_length;
	int32_t eos = model_eos(c->model);
	G.g.stop_ids = eos >= 0 ? &eos : NULL;
	G.g.n_stop = eos >= 0;
	G.g.batch_size = o.batch_size * o.grad_accum;
	o.generate = gen;
	o.gen_ctx = &G;
	o.eos_id = eos;
	reward_ctx R;
	memset(&R, 0, sizeof R);
	R.prompts = q;
	R.extra = extra;
	char *tj = ft_xasprintf("%s/tokenizer.json", c->model);
	if (access(tj, R_OK) == 0 && !(R.tok = ft_tokenizer_load(c->model))) die("%s: %s", c->model, ft_errmsg());
	free(tj);
	if (rank0 && ft_mkdirs(c->output_dir) < 0) die("%s", ft_errmsg());
	o.ref = ref;
	void *sctx[2] = { c, m };
	o.save_model = save_model;
	o.save_ctx = sctx;
	int64_t from = 0;
	/* every rank reads its copy (dist_resume); rank 0 reports */
	if (o.resume_dir &&
	    ft_dist_rank0_verdict(c->t.dist, (from = ft_grpo_checkpoint_step(o.resume_dir)) < 0 ? -1 : 0) < 0)
		die("--resume_from_checkpoint: %s", ft_errmsg());
	o.log = rank0 ? ft_train_log_open(c->output_dir, o.resume_dir != NULL, from) : NULL;   /* rank 0 writes */
	if (rank0 && !o.log) die("%s", ft_errmsg());
	if (P.log_completions) {
		R.samples = open_completions(c, o.resume_dir != NULL, from);
		o.on_samples = samples;
		o.samples_ctx = &R;
	}
	if (P.rm_full) {   /* create_reward_model: its own weights, adapters merged */
		pref_rl_reward_full(&R.rm, P.rm_dir, P.rm_adapters, c->tune.seed, m);
	} else if (P.rm_dir && c->tune.type == FT_FT_LORA) {
		/* the rm adapter over the policy's own base weights */
		char why[256];
		if (ft_ppo_rm_open_lora(&R.rm, c->model, &c->tune, P.rm_dir, m, why, sizeof why) < 0)
			die("--reward_model: %s", ft_errmsg());
		if (why[0]) warn("note: --reward_model %s: a second copy of the base (%s)", P.rm_dir, why);
	} else if (P.rm_dir) {
		/* a freeze or full policy's base moves: the rm keeps its own copy */
		ft_tune_opts t = c->tune;
		t.type = FT_FT_LORA;
		if (ft_ppo_rm_open_lora(&R.rm, c->model, &t, P.rm_dir, NULL, NULL, 0) < 0)
			die("--reward_model: %s", ft_errmsg());
	}
	for (int k = 0; k < P.n_rewards; k++)
		if (k != P.rm_index && !(R.r[k] = ft_grpo_reward_start(P.names[k], P.cmds[k])))
			die("--reward_funcs: %s", ft_errmsg());
	o.score = score;
	o.score_ctx = &R;
	rl_device dev;
	if (rl_device_bind(c, m, ref, 0, o.batch_size, rl_longest(q, n) + P.max_completion_length, &dev)) {
		o.policy = &dev.pm;
		o.ref_ops = dev.on == 2 ? &dev.rpm : NULL;
		G.dev = &dev;   /* the rollouts decoded there too */
	}
	int rc = ft_grpo_train(m, q, n, &o);
	if (rc < 0) die("--stage grpo: %s", ft_errmsg());
	rl_device_end(c, &dev);
	if (ref) ft_model_free(ref);
	for (int k = 0; k < P.n_rewards; k++)
		if (R.r[k] && ft_grpo_reward_close(R.r[k]) < 0) die("--reward_funcs: %s", ft_errmsg());
	ft_ppo_rm_close(&R.rm);
	if (o.log && fclose(o.log) != 0) die("%s/trainer_log.jsonl: %m", c->output_dir);
	if (R.samples && fclose(R.samples) != 0) die("completions.jsonl: %m");
	if (rank0) save_outputs(c, m);
	if (rank0) note("saved the GRPO %s to %s", c->tune.type == FT_FT_LORA ? "adapter" : "model", c->output_dir);
	static const char *const plot_keys[] = { "loss", "reward" };
	if (rank0 && c->plot_loss && ft_plot_loss_files_keys(c->output_dir, plot_keys, 2) < 0)
		warn("--plot_loss: %s", ft_errmsg());
	texts_free(&R);
	if (R.tok) ft_tokenizer_free(R.tok);
	for (int k = 0; k < P.n_rewards; k++) { free(P.names[k]); free(P.cmds[k]); }
	prompts_free(q, extra, n);
	return 0;
}
