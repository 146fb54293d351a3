/* runplan.c - LLaMA-Factory settings to ft commands; see runplan.h */
#include "cli/runplan.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Where each LLaMA-Factory setting goes.  T tokenize, P pack, R train,
 * G generate (prediction / chat), M merge; N: accepted, no effect in ft
 * (the note says why); V: accepted only with the listed value. */
enum { T = 1, P = 2, R = 4, G = 8, M = 16, N = 32 };

typedef struct { const char *key; unsigned to; const char *why; } route;

static const route routes[] = {
	{"stage", T | P | R, NULL},
	{"model_name_or_path", T | R | G | M, NULL},
	{"adapter_name_or_path", R | G | M, NULL},
	{"dataset", T, NULL}, {"eval_dataset", G, NULL}, {"dataset_dir", T | G, NULL}, {"template", T | G, NULL},
	{"cutoff_len", T | P, NULL}, {"max_samples", T, NULL}, {"overwrite_cache", T, NULL},
	{"train_on_prompt", T, NULL}, {"mask_history", T, NULL}, {"mix_strategy", T, NULL},
	{"interleave_probs", T, NULL}, {"default_system", T | G, NULL}, {"tool_format", T, NULL},
	{"preprocessing_batch_size", T | P, NULL},
	{"per_device_train_batch_size", P | R, NULL}, {"per_device_eval_batch_size", P | G, NULL},
	{"packing", P, NULL}, {"neat_packing", P, NULL}, {"val_size", P, NULL},
	{"seed", P | R | G, NULL}, {"dataloader_drop_last", P, NULL}, {"group_by_length", P, NULL},
	{"finetuning_type", R, NULL}, {"lora_rank", R, NULL}, {"lora_alpha", R, NULL},
	{"lora_dropout", R, NULL}, {"lora_target", R, NULL}, {"use_rslora", R, NULL},
	{"freeze_trainable_layers", R, NULL}, {"freeze_trainable_modules", R, NULL},
	{"learning_rate", R, NULL}, {"weight_decay", R, NULL}, {"adam_beta1", R, NULL},
	{"adam_beta2", R, NULL}, {"adam_epsilon", R, NULL}, {"optim", R, NULL}, {"max_grad_norm", R, NULL},
	{"lr_scheduler_type", R, NULL}, {"warmup_steps", R, NULL}, {"warmup_ratio", R, NULL},
	{"gradient_accumulation_steps", R, NULL}, {"num_train_epochs", P | R, NULL},
	{"max_steps", R, NULL}, {"logging_steps", R, NULL}, {"save_steps", R, NULL},
	{"save_total_limit", R, NULL}, {"eval_steps", R, NULL}, {"do_train", R, NULL},
	{"do_eval", R, NULL}, {"output_dir", R | G, NULL}, {"overwrite_output_dir", R | G, NULL},
	{"resume_from_checkpoint", R, NULL}, {"gradient_checkpointing", R, NULL},
	{"bf16", R, NULL}, {"fp16", R, NULL}, {"plot_loss", R, NULL},
	{"train_from_scratch", R, NULL},
	{"do_predict", G, NULL}, {"predict_with_generate", G, NULL}, {"max_new_tokens", G, NULL},
	{"do_sample", G, NULL}, {"temperature", G, NULL}, {"top_p", G, NULL}, {"top_k", G, NULL},
	{"repetition_penalty", G, NULL},
	{"export_dir", M, NULL}, {"export_size", M, NULL}, {"export_dtype", M, NULL},
	{"trust_remote_code", N, "ft runs no model code from the hub"},
	{"preprocessing_num_workers", N, "ft-tokenize uses every core"},
	{"dataloader_num_workers", N, "batches are prepared by ft-pack before training"},
	{"ddp_timeout", N, "ft-train runs one process"},
	{"report_to", N, "ft-train logs to trainer_log.jsonl only"},
	{"eval_strategy", R, NULL}, {"save_strategy", R, NULL}, {"logging_strategy", R, NULL},
	{"save_only_model", N, "checkpoints always hold the optimizer state, so resuming is exact"},
	{"flash_attn", N, "the CPU path has one attention implementation"},
	{"use_fast_tokenizer", N, "ft has one tokenizer implementation"},
	{"tokenized_path", N, "the pipeline keeps its batches in <output_dir>-data"},
};

static const route *find_route(const char *key)
{
	for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
		if (!strcmp(routes[i].key, key)) return &routes[i];
	return NULL;
}

char *ft_shell_quote(const char *s)
{
	int plain = *s != 0;
	for (const char *p = s; *p && plain; p++)
		plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:,=+@%", *p) != NULL;
	if (plain) return ft_xstrdup(s);
	size_t n = 2;
	for (const char *p = s; *p; p++) n += *p == '\'' ? 4 : 1;
	char *q = ft_xmalloc(n + 1), *o = q;
	*o++ = '\'';
	for (const char *p = s; *p; p++) {
		if (*p == '\'') { memcpy(o, "'\\''", 4); o += 4; }
		else *o++ = *p;
	}
	*o++ = '\'';
	*o = 0;
	return q;
}

/* A growing command line. */
typedef struct { char *s; } cmd;

static void add_word(cmd *c, const char *w)
{
	char *q = ft_shell_quote(w), *t = ft_xasprintf("%s%s%s", c->s ? c->s : "", c->s ? " " : "", q);
	free(c->s);
	free(q);
	c->s = t;
}

/* Booleans as every ft tool takes them: "--flag" for true and
 * "--flag=false" for false (a separate "true" word would be an operand
 * for tools that do not look ahead). */
static void add_flag(cmd *c, const char *key, const char *value)
{
	int t = value && (!strcasecmp(value, "true")), f = value && !strcasecmp(value, "false");
	char *w = f ? ft_xasprintf("--%s=false", key) : ft_xasprintf("--%s", key);
	add_word(c, w);
	free(w);
	if (value && !t && !f) add_word(c, value);
}

/* Every setting routed to `tool`, except those in skip (NULL-ended). */
static void add_routed(cmd *c, const ft_lfargs *a, unsigned tool, const char *const *skip)
{
	for (size_t i = 0; i < a->n; i++) {
		const route *r = find_route(a->v[i].key);
		int skipped = 0;
		for (const char *const *s = skip; s && *s && !skipped; s++) skipped = !strcmp(*s, a->v[i].key);
		if (r && (r->to & tool) && !skipped) add_flag(c, a->v[i].key, a->v[i].value);
	}
}

static void plan_add(ft_runplan *p, char *line)
{
	p->lines = ft_xrealloc(p->lines, (p->n + 1) * sizeof *p->lines);
	p->lines[p->n++] = line;
}

static void plan_note(ft_runplan *p, char *note)
{
	p->notes = ft_xrealloc(p->notes, (p->n_notes + 1) * sizeof *p->notes);
	p->notes[p->n_notes++] = note;
}

static int check_settings(const ft_lfargs *a, ft_runplan *p)
{
	for (size_t i = 0; i < a->n; i++) {
		const route *r = find_route(a->v[i].key);
		if (!r)
			return ft_fail("%s: setting '%s' is not supported by ft (see README's flag table)",
				       a->v[i].origin, a->v[i].key);
		if (r->to == N)
			plan_note(p, ft_xasprintf("%s: %s accepted with no effect: %s", a->v[i].origin, r->key, r->why));
	}
	const char *stage = ft_lfargs_get(a, "stage", "sft");
	if (strcmp(stage, "sft") && strcmp(stage, "pt"))
		return ft_fail("stage %s: ft-train supports pt and sft in this version", stage);
	return 0;
}

static int plan_train(const ft_lfargs *a, ft_runplan *p)
{
	const char *out = ft_lfargs_get(a, "output_dir", NULL);
	if (!out) return ft_fail("output_dir is required");
	if (!ft_lfargs_get(a, "dataset", NULL) && !ft_lfargs_get(a, "eval_dataset", NULL))
		return ft_fail("dataset is required");
	char *data = ft_xasprintf("%s-data", out);
	int do_train = ft_lfargs_bool(a, "do_train", 1), do_predict = ft_lfargs_bool(a, "do_predict", 0);
	if (do_train) {
		cmd tok = {0}, pack = {0}, train = {0};
		add_word(&tok, "ft-tokenize");
		add_routed(&tok, a, T, NULL);
		add_word(&pack, "ft-pack");
		add_routed(&pack, a, P, NULL);
		/* ft-pack writes one reshuffled epoch per pass, as the HF Trainer
		 * samples them; ft-train's default is 3 epochs */
		if (!ft_lfargs_get(a, "num_train_epochs", NULL) && !ft_lfargs_get(a, "max_steps", NULL))
			add_flag(&pack, "num_train_epochs", "3");
		add_flag(&pack, "overwrite_output_dir", NULL);
		add_flag(&pack, "output_dir", data);
		add_word(&pack, "-");
		plan_add(p, ft_xasprintf("%s | \\\n  %s", tok.s, pack.s));
		add_word(&train, "ft-train");
		add_routed(&train, a, R, NULL);
		add_flag(&train, "train", data);
		if (ft_lfargs_get(a, "val_size", NULL)) {
			char *val = ft_xasprintf("%s/val", data);
			add_flag(&train, "val", val);
			free(val);
		}
		plan_add(p, train.s);
		free(tok.s); free(pack.s);
	}
	if (do_predict) {
		static const char *const not_to_gen[] = {"output_dir", "adapter_name_or_path", "dataset_dir",
							 "do_predict", "eval_dataset", NULL};
		static const char *const not_dataset[] = {"dataset", NULL};
		const char *eval = ft_lfargs_get(a, "eval_dataset", NULL);
		cmd tok = {0}, gen = {0};
		add_word(&tok, "ft-tokenize");
		add_routed(&tok, a, T, eval ? not_dataset : NULL);
		if (eval) add_flag(&tok, "dataset", eval);
		add_flag(&tok, "predict_with_generate", NULL);
		add_word(&gen, "ft-generate");
		add_routed(&gen, a, G, not_to_gen);
		const char *lora = ft_lfargs_get(a, "finetuning_type", "lora");
		const char *adapter = do_train && !strcmp(lora, "lora") ? out : ft_lfargs_get(a, "adapter_name_or_path", NULL);
		if (adapter) add_flag(&gen, "adapter_name_or_path", adapter);
		add_flag(&gen, "do_predict", NULL);
		char *pred = ft_xasprintf("%s/predict", out);
		add_flag(&gen, "output_dir", pred);
		add_flag(&gen, "overwrite_output_dir", NULL);
		add_word(&gen, "-");
		plan_add(p, ft_xasprintf("%s | \\\n  %s", tok.s, gen.s));
		free(pred); free(tok.s); free(gen.s);
	}
	free(data);
	if (!p->n) return ft_fail("nothing to do: set do_train or do_predict");
	return 0;
}

static int plan_export(const ft_lfargs *a, ft_runplan *p)
{
	if (!ft_lfargs_get(a, "export_dir", NULL)) return ft_fail("export_dir is required");
	cmd c = {0};
	add_word(&c, "ft-merge");
	add_routed(&c, a, M, NULL);
	plan_add(p, c.s);
	return 0;
}

static int plan_chat(const ft_lfargs *a, ft_runplan *p)
{
	static const char *const skip[] = {"output_dir", "dataset_dir", "do_predict", "predict_with_generate", NULL};
	cmd c = {0};
	add_word(&c, "ft-generate");
	add_word(&c, "-i");
	add_routed(&c, a, G, skip);
	plan_add(p, c.s);
	return 0;
}

int ft_runplan_build(const ft_lfargs *a, const char *command, ft_runplan *p)
{
	memset(p, 0, sizeof *p);
	int rc = check_settings(a, p);
	if (rc == 0) {
		if (!strcmp(command, "train")) rc = plan_train(a, p);
		else if (!strcmp(command, "export")) rc = plan_export(a, p);
		else if (!strcmp(command, "chat")) rc = plan_chat(a, p);
		else rc = ft_fail("unknown command '%s' (train, export or chat)", command);
	}
	if (rc < 0) ft_runplan_free(p);
	return rc;
}

char *ft_runplan_script(const ft_runplan *p)
{
	char *s = ft_xstrdup("set -euo pipefail\n");
	for (size_t i = 0; i < p->n; i++) {
		char *t = ft_xasprintf("%s%s\n", s, p->lines[i]);
		free(s);
		s = t;
	}
	return s;
}

void ft_runplan_free(ft_runplan *p)
{
	for (size_t i = 0; i < p->n; i++) free(p->lines[i]);
	for (size_t i = 0; i < p->n_notes; i++) free(p->notes[i]);
	free(p->lines);
	free(p->notes);
	memset(p, 0, sizeof *p);
}
