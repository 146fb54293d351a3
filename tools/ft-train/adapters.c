/* adapters.c - --adapter_name_or_path as LLaMA-Factory's init_adapter:
 * a comma-separated list, all but the last merged into the base (PEFT's
 * merge_and_unload, in order) and the last trained further; with
 * --create_new_adapter every one is merged and a new adapter trains on
 * the merged base.  The adapter ft-train saves is that last (or new) one,
 * to be applied over the base with the others merged (ft-merge A,B,...). */
#include <stdlib.h>
#include <string.h>
#include "ft-train.h"
#include "util/error.h"

/* How many entries the list has. */
static int count(const char *list)
{
	int n = 1;
	for (const char *p = list; *p; p++) n += *p == ',';
	return n;
}

/* The last entry of the list (its adapter_config.json says how the
 * adapter trains on). */
const char *adapters_last(const ft_cli_args *c)
{
	const char *comma = c->adapter ? strrchr(c->adapter, ',') : NULL;
	return comma ? comma + 1 : c->adapter;
}

int adapters_resumed(const ft_cli_args *c) { return c->adapter && !c->create_new_adapter; }

/* LLaMA-Factory's refusals for the list (hparams/parser.py), and where ft
 * has it. */
void adapters_check(const ft_cli_args *c)
{
	if (!c->adapter) return;
	int n = count(c->adapter);
	if (c->tune.quantization_bit && n > 1)
		die_usage("--adapter_name_or_path: Quantized model only accepts a single adapter. Merge them first.");
	if (c->tune.quantization_bit && c->create_new_adapter)
		die_usage("--create_new_adapter: Cannot create new adapter upon a quantized model.");
	if ((n > 1 || c->create_new_adapter) && strcmp(c->stage, "pt") && strcmp(c->stage, "sft"))
		die_usage("--adapter_name_or_path with %s and --stage %s is not implemented in ft yet (pt and sft)",
			  n > 1 ? "several adapters" : "--create_new_adapter", c->stage);
	if ((n > 1 || c->create_new_adapter) && c->tune.type != FT_FT_LORA)
		die_usage("--adapter_name_or_path with %s needs --finetuning_type lora in ft",
			  n > 1 ? "several adapters" : "--create_new_adapter");
	if (c->create_new_adapter && (c->v.resize || c->v.emb_target))
		die_usage("--create_new_adapter with resize_vocab or additional_target is not implemented in ft yet");
}

void adapters_load(ft_cli_args *c, ft_model *m)
{
	if (!c->adapter) return;
	if (c->tune.type != FT_FT_LORA && c->tune.type != FT_FT_OFT)
		die_usage("--adapter_name_or_path needs --finetuning_type lora (or oft)");
	char *list = ft_xstrdup(c->adapter), *save = NULL;
	int n = count(c->adapter), i = 0;
	for (char *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save), i++) {
		if (ft_model_load_adapter(m, a) < 0) die("%s", ft_errmsg());
		if ((i < n - 1 || c->create_new_adapter) && ft_model_merge_lora(m) < 0)
			die("%s: %s", a, ft_errmsg());
	}
	free(list);
	if (c->create_new_adapter && ft_model_new_lora(m) < 0) die("%s", ft_errmsg());
	if (n > 1 || c->create_new_adapter)
		note("Merged %d adapter(s); %s.", c->create_new_adapter ? n : n - 1,
		     c->create_new_adapter ? "a new adapter trains on the merged base"
					   : "the last one trains further");
}
