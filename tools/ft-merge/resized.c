/* resized.c - ft-merge for LLaMA-Factory's vocabulary extension: the
 * tokenizer with add_tokens / add_special_tokens /
 * new_special_tokens_config (export's load_tokenizer patches it, and
 * save_pretrained writes it), and adapters whose embed_tokens and lm_head
 * were trained as PEFT modules_to_save on a resized vocabulary, merged
 * through the model (the streaming merge keeps the base's shapes). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli.h"
#include "cli/newtokens.h"
#include "export/merge.h"
#include "format/adapter_config.h"
#include "model/model.h"
#include "text/tokenizer.h"
#include "util/atomicfile.h"
#include "util/dtype.h"
#include "util/error.h"
#include "resized.h"

/* The base's tokenizer with the new tokens, NULL when none are given. */
ft_tokenizer *merge_tokenizer(const char *model_dir, const char *add, const char *special, const char *cfg)
{
	ft_new_tokens nt;
	int added;
	if (ft_new_tokens_parse(&nt, add, special, cfg) < 0) die_lib();
	if (!ft_new_tokens_any(&nt)) return NULL;
	ft_tokenizer *t = ft_tokenizer_load(model_dir);
	if (!t || ft_new_tokens_apply(&nt, t, &added) < 0) die_lib();
	ft_new_tokens_free(&nt);
	return t;
}

int merge_has_modules_to_save(const char *const *ad, size_t n)
{
	int any = 0;
	for (size_t i = 0; i < n && !any; i++) {
		char *p = ft_xasprintf("%s/" FT_ADAPTER_CONFIG_NAME, ad[i]);
		ft_adapter_config c;
		if (ft_adapter_config_load(p, &c) < 0) die_lib();
		any = c.n_modules_to_save > 0;
		ft_adapter_config_free(&c);
		free(p);
	}
	return any;
}

static int exists(const char *dir, const char *name)
{
	char *p = ft_xasprintf("%s/%s", dir, name);
	int e = access(p, R_OK) == 0;
	free(p);
	return e;
}

/* The tokenizer and generation files beside the weights: the base's; the
 * extended tokenizer.json when tokens were given, else the last adapter's
 * (ft-train saves the one it trained with there). */
static void copy_files(const ft_merge_opts *o, const ft_tokenizer *tok, const char *dir)
{
	static const char *const files[] = {
		"generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
		"special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
		"vocab.json", "merges.txt",
	};
	const char *last = o->adapters[o->nadapters - 1];
	for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
		const char *f = files[i], *from = o->model_dir;
		int tj = !strcmp(f, "tokenizer.json");
		if (tj && tok) continue;
		if (tj && exists(last, f)) from = last;
		if (!exists(from, f)) continue;
		char *p = ft_xasprintf("%s/%s", from, f);
		if (ft_copy_into(p, dir) < 0) die_lib();
		free(p);
	}
	if (tok) {
		char *p = ft_xasprintf("%s/tokenizer.json", dir);
		if (ft_tokenizer_save_json(tok, p) < 0) die_lib();
		free(p);
	}
}

void merge_resized(const ft_merge_opts *o, const ft_tokenizer *tok)
{
	ft_tune_opts t = { .type = FT_FT_LORA, .lora_rank = 8, .lora_alpha = 16,
			   .lora_targets = FT_MOD_ALL_LINEAR };
	ft_model *m = ft_model_load(o->model_dir, &t);
	if (!m) die_lib();
	for (size_t i = 0; i < o->nadapters; i++)
		if (ft_model_load_adapter(m, o->adapters[i]) < 0 || ft_model_merge_lora(m) < 0) die_lib();
	ft_atomic a = { 0 };
	if (ft_atomic_dir_open(&a, o->export_dir) < 0) die_lib();
	const char *dtype = o->export_dtype == FT_MERGE_DTYPE_AUTO ? NULL : ft_dtype_torch_name(o->export_dtype);
	if (ft_model_save_full(m, a.tmp, dtype) < 0) die_lib();
	copy_files(o, tok, a.tmp);
	if (ft_atomic_dir_commit(&a, o->overwrite) < 0) die_lib();
	note("the adapters train embed_tokens and lm_head (modules_to_save): merged through the model, "
	     "vocabulary %d, one model.safetensors", ft_model_config(m)->vocab_size);
	ft_model_free(m);
}
