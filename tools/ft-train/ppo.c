/* ppo.c - ft-train --stage ppo: LLaMA-Factory's CustomPPOTrainer over
 * TRL 0.9.6's PPOTrainer (docs/PPO.md), a LoRA, freeze or full policy
 * with a value head, rewards from a Unix filter (--reward_model_type api),
 * an rm adapter on the same base (lora) or a separate rm model (full).  The loop is
 * lib/train/ppo_loop.c; here are the options, the prompts, the generator,
 * the reward and the outputs. */
#define _GNU_SOURCE
#include "ft-train.h"
#include "gen/generate.h"
#include "model/model_pref.h"
#include "text/tokenizer.h"
#include "train/ppo_loop.h"
#include "train/ppo_reward.h"
#include "train/ppo_rm.h"
#include "format/safetensors.h"
#include "plot/plot.h"
#include "util/atomicfile.h"
#include "util/json.h"
#include "util/rng.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const ppo_keys[] = {
	"reward_model", "reward_model_type", "reward_model_adapters", "ppo_buffer_size", "ppo_epochs",
	"ppo_target", "ppo_score_norm", "ppo_whiten_rewards", "max_new_tokens", "top_k", "top_p",
	"temperature", "do_sample", "repetition_penalty", NULL,
};

static struct {
	int on;
	const char *reward_model, *reward_type, *reward_adapters;
	int buffer_size, ppo_epochs, max_new_tokens;
	ft_ppo_opts o;
	ft_sampling s;
} P;

int ppo_known_key(const char *k)
{
	for (const char *const *p = ppo_keys; *p; p++)
		if (!strcmp(*p, k)) return 1;
	return 0;
}

static double num(const ft_lfargs *a, const char *k, double def)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_double(k, v) : def;
}

static int flag(const ft_lfargs *a, const char *k, int def)
{
	const char *v = ft_lfargs_get(a, k, NULL);
	return v ? ft_parse_bool(k, v) : def;
}

void ppo_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	P.on = !strcmp(c->stage, "ppo");
	if (!strcmp(c->stage, "grpo")) return;   /* it shares the sampling keys (grpo.c checks them) */
	if (!P.on) {
		for (const char *const *p = ppo_keys; *p; p++)
			if (ft_lfargs_get(a, *p, NULL))
				die_usage("--%s: only --stage ppo uses it (this is --stage %s)", *p, c->stage);
		return;
	}
	if (c->tune.type != FT_FT_LORA && c->from_scratch)
		die_usage("--stage ppo --train_from_scratch --finetuning_type %s: the reference would be "
			  "the base, which is random here", c->tune.type == FT_FT_FULL ? "full" : "freeze");
	P.reward_model = ft_lfargs_get(a, "reward_model", NULL);
	if (!P.reward_model)
		die_usage("--stage ppo needs --reward_model (an rm adapter directory with "
			  "--reward_model_type lora, or a command with --reward_model_type api)");
	P.reward_type = ft_lfargs_get(a, "reward_model_type", "lora");
	if (strcmp(P.reward_type, "lora") && strcmp(P.reward_type, "api") && strcmp(P.reward_type, "full"))
		die_usage("--reward_model_type: '%s' (lora, full or api)", P.reward_type);
	if (!strcmp(P.reward_type, "lora") && c->tune.type != FT_FT_LORA)   /* FinetuningArguments' check */
		die_usage("--reward_model_type lora cannot be used for freeze/full PPO training (the rm adapter "
			  "needs the LoRA policy's base): use --reward_model_type full or api");
	P.reward_adapters = ft_lfargs_get(a, "reward_model_adapters", NULL);
	if (P.reward_adapters && strcmp(P.reward_type, "full"))   /* LLaMA-Factory uses them only there */
		die_usage("--reward_model_adapters: only --reward_model_type full uses them");
	P.buffer_size = (int)num(a, "ppo_buffer_size", 1);
	if (P.buffer_size < 1) die_usage("--ppo_buffer_size must be >= 1 (got %d)", P.buffer_size);
	P.ppo_epochs = (int)num(a, "ppo_epochs", 4);
	if (P.ppo_epochs < 1) die_usage("--ppo_epochs must be >= 1");
	ft_ppo_opts_default(&P.o);
	P.o.target = num(a, "ppo_target", 6.0);
	P.o.score_norm = flag(a, "ppo_score_norm", 0);
	P.o.whiten_rewards = flag(a, "ppo_whiten_rewards", 0);
	ft_sampling_defaults(&P.s);
	P.s.do_sample = flag(a, "do_sample", 1);
	P.s.temperature = num(a, "temperature", P.s.temperature);
	P.s.top_p = num(a, "top_p", P.s.top_p);
	P.s.top_k = (int)num(a, "top_k", P.s.top_k);
	P.s.repetition_penalty = num(a, "repetition_penalty", P.s.repetition_penalty);
	if (ft_sampling_check(&P.s) < 0) die_usage("%s", ft_errmsg());
	P.max_new_tokens = (int)num(a, "max_new_tokens", 1024);
	if (P.max_new_tokens < 1) die_usage("--max_new_tokens must be >= 1");
}

int ppo_stage(const ft_cli_args *c)
{
	(void)c;
	return P.on;
}

/* The prompts of one pass over the batches: each row's ids up to its
 * right padding (ft-pack pads ppo rows with pad_id, labels all -100, and
 * records each row's length; older batch files: trailing pad_ids), and
 * the row's extra columns when the batch carries them. */
ft_i32vec *read_prompts(ft_batch_source *src, const ft_manifest *man, size_t *n, json_t ***extra)
{
	ft_i32vec *q = NULL;
	json_t **x = NULL;
	size_t cap = 0;
	*n = 0;
	ft_batch b = { 0 };
	for (int64_t k = 0; k < man->n_batches; k++) {
		int rc = src->next(src->self, &b);
		if (rc < 0) die("--train: %s", ft_errmsg());
		if (rc == 0) break;
		for (int i = 0; i < b.B; i++) {
			const int32_t *r = b.input_ids + (size_t)i * b.T;
			int len = b.T;
			if (b.lengths) {
				len = b.lengths[i];
			} else if (b.segment_ids) {
				while (len > 0 && b.segment_ids[(size_t)i * b.T + len - 1] == 0) len--;
			} else {
				while (len > 0 && r[len - 1] == man->pad_id) len--;
			}
			if (len == 0) continue;
			if (*n == cap) {
				cap = cap ? 2 * cap : 64;
				q = ft_xrealloc(q, cap * sizeof *q);
				x = ft_xrealloc(x, cap * sizeof *x);
			}
			x[*n] = json_incref(json_array_get(b.extra_columns, (size_t)i));
			q[*n] = (ft_i32vec){ 0 };
			ft_i32vec_append(&q[(*n)++], r, (size_t)len);
		}
	}
	ft_batch_free(&b);
	if (extra) *extra = x;
	else prompts_free(NULL, x, *n);
	return q;
}

void prompts_free(ft_i32vec *q, json_t **extra, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (q) ft_i32vec_free(&q[i]);
		if (extra) json_decref(extra[i]);
	}
	free(q);
	free(extra);
}

/* eos_token_id of the model's generation_config.json, else config.json
 * (the first of a list); -1 when neither has one. */
int32_t model_eos(const char *dir)
{
	const char *files[2] = { "generation_config.json", "config.json" };
	for (int i = 0; i < 2; i++) {
		char *p = ft_xasprintf("%s/%s", dir, files[i]);
		json_t *j = access(p, R_OK) == 0 ? ft_json_load_file(p) : NULL;
		free(p);
		json_t *v = j ? json_object_get(j, "eos_token_id") : NULL;
		if (v && json_is_array(v)) v = json_array_get(v, 0);
		int32_t id = v && json_is_integer(v) ? (int32_t)json_integer_value(v) : -1;
		json_decref(j);
		ft_errclear();
		if (id >= 0) return id;
	}
	return -1;
}

static int gen(void *ctx, ft_model *m, const ft_i32vec *q, size_t n, uint64_t seed, ft_i32vec *outs)
{
	rl_gen *G = ctx;
	ft_gen_opts o = G->g;
	o.seed = seed;
	return rl_generate(G->dev, m, q, n, &o, outs);
}

typedef struct {
	const char *cmd;
	json_t *const *extra;    /* each prompt's extra dataset columns (or NULL) */
	ft_tokenizer *tok;       /* NULL: the text is the token ids, space-separated */
	ft_ppo_rm rm;            /* lora: the base with the rm adapter; full: the rm model (rm.m NULL: api) */
} reward_ctx;

static char *as_text(const reward_ctx *R, const ft_i32vec *v)
{
	/* skip_special_tokens, as LLaMA-Factory's batch_decode for the api */
	if (R->tok) return ft_tokenizer_decode_lossy(R->tok, v->v, v->n, 1);
	size_t cap = 12 * v->n + 1, len = 0;
	char *s = ft_xmalloc(cap);
	s[0] = 0;
	for (size_t i = 0; i < v->n; i++) len += (size_t)snprintf(s + len, cap - len, i ? " %d" : "%d", v->v[i]);
	return s;
}

static int score_api(reward_ctx *R, const size_t *qi, const ft_i32vec *q, const ft_i32vec *a, size_t n,
		     float *scores)
{
	char **pq = ft_xcalloc(n, sizeof *pq), **pa = ft_xcalloc(n, sizeof *pa);
	const json_t **x = ft_xcalloc(n, sizeof *x);
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		pq[i] = as_text(R, &q[i]);
		pa[i] = as_text(R, &a[i]);
		x[i] = R->extra[qi[i]];
		if (!pq[i] || !pa[i]) rc = -1;
	}
	if (rc == 0)
		rc = ft_ppo_reward_cmd(R->cmd, (const char *const *)pq, (const char *const *)pa, x, n, scores);
	for (size_t i = 0; i < n; i++) { free(pq[i]); free(pa[i]); }
	free(pq);
	free(pa);
	free(x);
	return rc;
}

/* a reward model ignores the extra columns (it scores the ids) */
static int score(void *ctx, const size_t *qi, const ft_i32vec *q, const ft_i32vec *a, size_t n, float *scores)
{
	reward_ctx *R = ctx;
	return R->rm.m ? ft_ppo_rm_score(&R->rm, q, a, n, scores) : score_api(R, qi, q, a, n, scores);
}

static void reward_open(ft_cli_args *c, ft_model *m, reward_ctx *R)
{
	memset(R, 0, sizeof *R);
	R->cmd = P.reward_model;
	if (!strcmp(P.reward_type, "api")) {
		char *tj = ft_xasprintf("%s/tokenizer.json", c->model);
		if (access(tj, R_OK) == 0 && !(R->tok = ft_tokenizer_load(c->model)))
			die("%s: %s", c->model, ft_errmsg());
		free(tj);
		return;
	}
	if (!strcmp(P.reward_type, "full")) {
		/* create_reward_model: the rm directory with its adapters merged, its value head */
		pref_rl_reward_full(&R->rm, P.reward_model, P.reward_adapters, c->tune.seed, m);
	} else {   /* the rm adapter over the policy's own base weights */
		char why[256];
		if (ft_ppo_rm_open_lora(&R->rm, c->model, &c->tune, P.reward_model, m, why, sizeof why) < 0)
			die("--reward_model: %s", ft_errmsg());
		if (why[0])
			warn("note: --reward_model %s: a second copy of the base (%s)", P.reward_model, why);
	}
}

static void reward_close(reward_ctx *R)
{
	if (R->tok) ft_tokenizer_free(R->tok);
	ft_ppo_rm_close(&R->rm);
}

static int write_value_head(const char *dir, const float *w, int D, const float *b)
{
	ft_st_writer *wr = ft_st_writer_new();
	int64_t sw[2] = { 1, D }, sb[1] = { 1 };
	ft_st_writer_add(wr, "v_head.summary.weight", FT_F32, 2, sw, w);
	ft_st_writer_add(wr, "v_head.summary.bias", FT_F32, 1, sb, b);
	ft_st_writer_meta(wr, "format", "pt");
	char *path = ft_xasprintf("%s/value_head.safetensors", dir);
	int rc = ft_st_writer_write(wr, path);
	free(path);
	ft_st_writer_free(wr);
	return rc;
}

typedef struct {
	const ft_cli_args *c;
	ft_model *m;
	const float *vw, *vb;
	int D;
} save_ctx;

/* A checkpoint's model files: as the final outputs */
static int save_ckpt_model(void *ctx, const char *dir)
{
	save_ctx *S = ctx;
	int lora = S->c->tune.type == FT_FT_LORA;
	if ((lora ? ft_model_save_adapter(S->m, dir) : ft_model_save(S->m, dir)) < 0) return -1;
	return write_value_head(dir, S->vw, S->D, S->vb);
}

/* The adapter (LoRA) or the whole model (freeze, full: LLaMA-Factory's
 * save_model writes the model directory) and the value head, written in a
 * temporary sibling then moved into output_dir file by file (each rename
 * atomic). */
static void save_outputs(const ft_cli_args *c, ft_model *m, const float *vw, int D, const float *vb)
{
	char *stage = ft_xasprintf("%s/ppo-final", c->output_dir);
	ft_atomic a;
	if (ft_atomic_dir_open(&a, stage) < 0) die("%s", ft_errmsg());
	int lora = c->tune.type == FT_FT_LORA;
	int bad = (lora ? ft_model_save_adapter(m, a.tmp) : ft_model_save(m, a.tmp)) < 0 ||
		  write_value_head(a.tmp, vw, D, vb) < 0;
	for (const char *const *f = c->t.extra_files; !bad && f && *f; f++)   /* as sft's outputs */
		bad = ft_copy_into(*f, a.tmp) < 0;
	if (bad) {
		ft_atomic_dir_abort(&a);
		die("saving to %s: %s", c->output_dir, ft_errmsg());
	}
	move_outputs(a.tmp, c->output_dir);
	ft_atomic_dir_abort(&a);
	free(stage);
}

void move_outputs(const char *from_dir, const char *output_dir)
{
	DIR *d = opendir(from_dir);
	if (!d) die("%s: %m", from_dir);
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.') continue;
		char *from = ft_xasprintf("%s/%s", from_dir, e->d_name), *to = ft_xasprintf("%s/%s", output_dir, e->d_name);
		if (rename(from, to) < 0) die("rename %s: %m", to);
		free(from);
		free(to);
	}
	closedir(d);
}

/* Under mpirun (docs/PPO.md "Several processes") */
static void check_dist(const ft_cli_args *c)
{
	if (ft_dist_size(c->t.dist) < 2) return;
	if (c->zero)
		die_usage("--zero %d: --stage ppo under mpirun keeps the whole AdamW state on every rank", c->zero);
}

int ppo_run(ft_cli_args *c, ft_model *m, ft_batch_source *train, const ft_manifest *man)
{
	check_dist(c);
	int rank0 = ft_dist_rank(c->t.dist) == 0;
	if (c->tune.type == FT_FT_LORA && !ft_model_has_adapters(m))
		die("--stage ppo: the policy has no LoRA adapters (--finetuning_type lora)");
	ft_model *ref = pref_rl_ref(c, m);
	size_t n;
	json_t **extra;
	ft_i32vec *q = read_prompts(train, man, &n, &extra);
	if (n == 0) die("%s: no prompts", ft_display_name(c->train[0]));
	reward_ctx R;
	reward_open(c, m, &R);
	R.extra = extra;
	ft_ppo_loop_opts o;
	memset(&o, 0, sizeof o);
	o.ppo = P.o;
	o.batch_size = man->batch_size;
	o.grad_accum = c->t.gradient_accumulation_steps;
	o.buffer_size = P.buffer_size;
	o.ppo_epochs = P.ppo_epochs;
	int64_t N = (int64_t)o.batch_size * o.grad_accum * o.buffer_size, Nw = N * ft_dist_size(c->t.dist);
	/* LLaMA-Factory: ceil(len(dataset) / N), N x world_size under mpirun */
	int64_t per_epoch = ((int64_t)n + Nw - 1) / Nw;
	/* ppo_train: max_steps overrides (and is then the epoch's length) */
	o.max_steps = c->t.max_steps > 0 ? c->t.max_steps : (int64_t)ceil(c->t.num_train_epochs * per_epoch);
	if (o.max_steps < 1) o.max_steps = 1;
	o.steps_per_epoch = c->t.max_steps > 0 ? (double)c->t.max_steps : (double)per_epoch;
	o.logging_steps = c->t.logging_steps > 0 ? (int)c->t.logging_steps : 1;
	rl_gen G = { .dev = NULL };
	ft_gen_defaults(&G.g);
	G.g.sampling = P.s;
	G.g.max_new_tokens = P.max_new_tokens;
	int32_t eos = model_eos(c->model);
	G.g.stop_ids = eos >= 0 ? &eos : NULL;
	G.g.n_stop = eos >= 0;
	G.g.batch_size = (int)N;
	o.generate = gen;
	o.gen_ctx = &G;
	o.max_new_tokens = P.max_new_tokens;
	ft_adamw_opts_default(&o.adamw);
	o.adamw.beta1 = c->t.adam_beta1;
	o.adamw.beta2 = c->t.adam_beta2;
	o.adamw.eps = c->t.adam_epsilon;
	o.adamw.weight_decay = c->t.weight_decay;
	o.max_grad_norm = c->t.max_grad_norm;
	int64_t warm = c->t.warmup >= 1 ? (int64_t)c->t.warmup : (int64_t)ceil(c->t.warmup * o.max_steps);
	if (ft_sched_init(&o.sched, c->t.lr_scheduler_type, c->t.learning_rate, warm, o.max_steps) < 0 ||
	    ft_sched_kwargs(&o.sched, c->t.lr_scheduler_kwargs) < 0)
		die_usage("%s", ft_errmsg());
	o.pad_id = man->pad_id;
	o.eos_id = eos;
	o.value_dropout = (float)pref_value_dropout(c);   /* TRL's ValueHead, as rm's */
	o.seed = c->t.seed;
	o.score = score;
	o.score_ctx = &R;
	o.ref = ref;
	int D = ft_model_config(m)->hidden_size;
	float *vw = ft_xmalloc((size_t)D * sizeof(float)), vb;
	ft_rng g;
	ft_rng_seed(&g, c->t.seed ^ 0x76686561645f7631ULL);   /* as rm's initial head */
	double bound = 1 / sqrt((double)D);   /* nn.Linear's kaiming_uniform(a=sqrt(5)) */
	for (int i = 0; i < D; i++) vw[i] = (float)((2 * ft_rng_uniform(&g) - 1) * bound);
	vb = (float)((2 * ft_rng_uniform(&g) - 1) * bound);
	if (rank0 && ft_mkdirs(c->output_dir) < 0) die("%s", ft_errmsg());
	save_ctx S = { c, m, vw, &vb, D };
	o.save_steps = c->t.save_steps;
	o.save_total_limit = c->t.save_total_limit;
	o.output_dir = c->output_dir;
	o.resume_dir = c->t.resume_dir;
	o.save_model = save_ckpt_model;
	o.save_ctx = &S;
	int64_t from = 0;
	if (o.resume_dir && (from = ft_ppo_checkpoint_step(o.resume_dir)) < 0)
		die("--resume_from_checkpoint: %s", ft_errmsg());
	char *logp = ft_xasprintf("%s/trainer_log.jsonl", c->output_dir);
	o.log = rank0 ? ft_train_log_open(c->output_dir, o.resume_dir != NULL, from) : NULL;   /* rank 0 writes */
	if (rank0 && !o.log) die("%s", ft_errmsg());
	o.dist = c->t.dist;
	rl_device dev;   /* the old passes take the whole rollout: N rows */
	if (rl_device_bind(c, m, ref, 1, (int)N, rl_longest(q, n) + P.max_new_tokens, &dev)) {
		o.policy = &dev.pm;
		o.ref_ops = dev.on == 2 ? &dev.rpm : NULL;
		G.dev = &dev;   /* the rollouts decoded there too */
	}
	int rc = ft_ppo_train(m, q, n, vw, &vb, &o);
	if (o.log) fclose(o.log);
	if (rc < 0) die("--stage ppo: %s", ft_errmsg());
	rl_device_end(c, &dev);
	if (rank0) save_outputs(c, m, vw, D, &vb);
	if (rank0) note("saved the PPO adapter and value head to %s", c->output_dir);
	static const char *const plot_keys[] = { "loss", "reward" };   /* LLaMA-Factory's ppo workflow */
	if (rank0 && c->plot_loss && ft_plot_loss_files_keys(c->output_dir, plot_keys, 2) < 0)
		warn("--plot_loss: %s", ft_errmsg());
	free(logp);
	free(vw);
	reward_close(&R);
	if (ref) ft_model_free(ref);
	prompts_free(q, extra, n);
	return 0;
}
