/* runplan.c - LLaMA-Factory settings to ft commands; see runplan.h */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "cli/runplan_internal.h"
#include "util/error.h"

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
		const ftp_route *r = ftp_route_find(a->v[i].key);
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

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* LLaMA-Factory trains and generates on the GPU when there is one; so
 * does ft-run unless the settings name a device (ft-train's and
 * ft-generate's own default is the CPU). */
static void add_device(cmd *c, const ft_lfargs *a)
{
	if (!ft_lfargs_get(a, "device", NULL))
		add_flag(c, "device", ft_lfargs_bool(a, "use_cpu", 0) == 1 ? "cpu" : "auto");
}

/* ft-tokenize | ft-pack into dir. */
static void plan_pack(const ft_lfargs *a, ft_runplan *p, const char *dir, int replace)
{
	cmd tok = {0}, pack = {0};
	add_word(&tok, "ft-tokenize");
	add_routed(&tok, a, FTP_T, NULL);
	add_word(&pack, "ft-pack");
	add_routed(&pack, a, FTP_P, NULL);
	/* ft-pack writes one reshuffled epoch per pass, as the HF Trainer
	 * samples them; ft-train's default is 3 epochs */
	if (!ft_lfargs_get(a, "num_train_epochs", NULL) && !ft_lfargs_get(a, "max_steps", NULL))
		add_flag(&pack, "num_train_epochs", "3");
	/* LLaMA-Factory's disable_shuffling (its SequentialSampler), HF's
	 * train_sampling_strategy sequential: the records' order */
	if (ft_lfargs_bool(a, "disable_shuffling", 0) == 1 ||
	    !strcmp(ft_lfargs_get(a, "train_sampling_strategy", "random"), "sequential"))
		add_flag(&pack, "shuffle", "false");
	if (replace) add_flag(&pack, "overwrite_output_dir", NULL);
	add_flag(&pack, "output_dir", dir);
	add_word(&pack, "-");
	plan_add(p, ft_xasprintf("%s | \\\n  %s", tok.s, pack.s));
	free(tok.s);
	free(pack.s);
}

static void plan_fit(const ft_lfargs *a, ft_runplan *p, const char *data)
{
	cmd train = {0};
	add_word(&train, "ft-train");
	add_routed(&train, a, FTP_R, NULL);
	/* DeepSpeed's ZeRO and FSDP's sharding: ZeRO-1 is ft's (a note says
	 * what is not done); an explicit zero setting wins */
	if (!ft_lfargs_get(a, "zero", NULL) && ftp_zero_of(a)) add_flag(&train, "zero", "1");
	/* ppo samples its responses while training: LLaMA-Factory's
	 * generating arguments are ft-train's then */
	static const char *const sampling[] = {"max_new_tokens", "do_sample", "temperature", "top_p",
					       "top_k", "repetition_penalty", NULL};
	if (!strcmp(ft_lfargs_get(a, "stage", "sft"), "ppo"))
		for (const char *const *k = sampling; *k; k++)
			if (ft_lfargs_get(a, *k, NULL)) add_flag(&train, *k, ft_lfargs_get(a, *k, NULL));
	/* LLaMA-Factory checkpoints the layers unless disable_gradient_checkpointing
	 * (model_utils/checkpointing.py); an explicit gradient_checkpointing was
	 * routed above.  ft's checkpointing gives the same numbers. */
	if (!ft_lfargs_get(a, "gradient_checkpointing", NULL) &&
	    ft_lfargs_bool(a, "disable_gradient_checkpointing", 0) != 1)
		add_flag(&train, "gradient_checkpointing", "true");
	add_device(&train, a);
	add_flag(&train, "train", data);
	if (ft_lfargs_get(a, "val_size", NULL)) {
		char *val = ft_xasprintf("%s/val", data);
		add_flag(&train, "val", val);
		free(val);
	}
	plan_add(p, train.s);
}

static void plan_predict(const ft_lfargs *a, ft_runplan *p, int trained)
{
	static const char *const not_to_gen[] = {"output_dir", "adapter_name_or_path", "dataset_dir",
						 "do_predict", "eval_dataset", "overwrite_output_dir", NULL};
	static const char *const not_dataset[] = {"dataset", NULL};
	const char *out = ft_lfargs_get(a, "output_dir", NULL);
	const char *eval = ft_lfargs_get(a, "eval_dataset", NULL);
	cmd tok = {0}, gen = {0};
	add_word(&tok, "ft-tokenize");
	add_routed(&tok, a, FTP_T, eval ? not_dataset : NULL);
	if (eval) add_flag(&tok, "dataset", eval);
	add_flag(&tok, "predict_with_generate", NULL);
	add_word(&gen, "ft-generate");
	add_routed(&gen, a, FTP_G, not_to_gen);
	add_device(&gen, a);
	/* after training a LoRA model, predict with the new adapter */
	const char *lora = ft_lfargs_get(a, "finetuning_type", "lora");
	const char *adapter = trained && (!strcmp(lora, "lora") || !strcmp(lora, "oft")) ? out : ft_lfargs_get(a, "adapter_name_or_path", NULL);
	if (adapter) add_flag(&gen, "adapter_name_or_path", adapter);
	add_flag(&gen, "do_predict", NULL);
	/* LLaMA-Factory writes a predict-only run's files into output_dir */
	char *pred = trained ? ft_xasprintf("%s/predict", out) : ft_xstrdup(out);
	add_flag(&gen, "output_dir", pred);
	add_flag(&gen, "overwrite_output_dir", NULL);
	add_word(&gen, "-");
	plan_add(p, ft_xasprintf("%s | \\\n  %s", tok.s, gen.s));
	free(pred); free(tok.s); free(gen.s);
}

static int plan_train(const ft_lfargs *a, ft_runplan *p)
{
	const char *out = ft_lfargs_get(a, "output_dir", NULL);
	if (!out) return ft_fail("output_dir is required");
	/* as transformers' TrainingArguments: nothing runs unless asked */
	int do_train = ft_lfargs_bool(a, "do_train", 0), do_predict = ft_lfargs_bool(a, "do_predict", 0);
	if (do_train < 0 || do_predict < 0) return ft_fail("do_train and do_predict take true or false");
	if (!do_train && !do_predict) return ft_fail("nothing to do: set do_train or do_predict");
	if (do_train && !ft_lfargs_get(a, "dataset", NULL))
		return ft_fail("do_train needs a dataset");
	if (do_predict && !do_train && !ft_lfargs_get(a, "eval_dataset", NULL) && !ft_lfargs_get(a, "dataset", NULL))
		return ft_fail("do_predict needs an eval_dataset (or a dataset)");
	const char *stage = ft_lfargs_get(a, "stage", "sft");
	if (do_predict && (!strcmp(stage, "rm") || !strcmp(stage, "dpo") || !strcmp(stage, "kto")))
		return ft_fail("do_predict with stage %s: ft-run plans generation only; score rm pairs with "
			       "ft-train --stage rm --do_predict --val BATCHES", stage);
	const char *tokenized = ft_lfargs_get(a, "tokenized_path", NULL);
	if (do_train) {
		char *data = tokenized ? ft_xstrdup(tokenized) : ft_xasprintf("%s-data", out);
		if (tokenized && !exists(tokenized)) {
			/* LLaMA-Factory saves the dataset there and exits */
			plan_pack(a, p, data, 0);
			ftp_plan_note(p, ft_xasprintf("tokenized_path %s does not exist yet: the batches are "
						      "written there and the run stops, as LLaMA-Factory does; run "
						      "again to train from them", tokenized));
			free(data);
			return 0;
		}
		if (tokenized)
			ftp_plan_note(p, ft_xasprintf("tokenized_path %s: training from the batches there "
						      "(dataset settings are not read again)", tokenized));
		else
			plan_pack(a, p, data, 1);
		plan_fit(a, p, data);
		free(data);
	}
	if (do_predict)
		plan_predict(a, p, do_train);
	return 0;
}

static int plan_export(const ft_lfargs *a, ft_runplan *p)
{
	if (!ft_lfargs_get(a, "export_dir", NULL)) return ft_fail("export_dir is required");
	cmd c = {0};
	add_word(&c, "ft-merge");
	add_routed(&c, a, FTP_M, NULL);
	const char *qbit = ft_lfargs_get(a, "export_quantization_bit", NULL);
	if (qbit && ft_lfargs_get(a, "adapter_name_or_path", NULL))   /* LLaMA-Factory's export_model */
		return ft_fail("Please merge adapters before quantizing the model. (export_quantization_bit "
			       "with adapter_name_or_path: export the merged model first, then quantize it)");
	if (qbit)
		ftp_plan_note(p, ft_xasprintf("%s is quantized to %s-bit GPTQ on %s", ft_lfargs_get(a, "model_name_or_path", "the model"),
					      qbit, ft_lfargs_get(a, "export_quantization_dataset", "(no dataset)")));
	else if (!ft_lfargs_get(a, "adapter_name_or_path", NULL))
		ftp_plan_note(p, ft_xasprintf("no adapter_name_or_path: %s is exported as it is "
					      "(dtype and shards as asked)", ft_lfargs_get(a, "model_name_or_path", "the model")));
	plan_add(p, c.s);
	return 0;
}

static int plan_chat(const ft_lfargs *a, ft_runplan *p)
{
	static const char *const skip[] = {"output_dir", "dataset_dir", "do_predict", "predict_with_generate", NULL};
	cmd c = {0};
	add_word(&c, "ft-generate");
	add_word(&c, "-i");
	add_routed(&c, a, FTP_G, skip);
	add_device(&c, a);
	plan_add(p, c.s);
	return 0;
}

int ft_runplan_build(const ft_lfargs *a, const char *command, ft_runplan *p)
{
	memset(p, 0, sizeof *p);
	if (strcmp(command, "train") && strcmp(command, "export") && strcmp(command, "chat"))
		return ft_fail("unknown command '%s' (train, export or chat)", command);
	ftp_check_settings(a, p);
	if (p->n_problems)
		return ft_fail("%zu setting%s ft cannot run", p->n_problems, p->n_problems == 1 ? "" : "s");
	if (!strcmp(command, "train")) return plan_train(a, p);
	if (!strcmp(command, "export")) return plan_export(a, p);
	return plan_chat(a, p);
}

int ft_runplan_accepts(const char *key, const char **why)
{
	const ftp_route *r = ftp_route_find(key);
	*why = r ? r->why : NULL;
	return !r ? -1 : r->to == FTP_X ? 0 : 1;
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
	for (size_t i = 0; i < p->n_problems; i++) free(p->problems[i]);
	free(p->lines);
	free(p->notes);
	free(p->problems);
	memset(p, 0, sizeof *p);
}
