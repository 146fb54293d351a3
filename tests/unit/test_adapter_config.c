/* test_adapter_config.c - lib/format/adapter_config.c: PEFT's
 * adapter_config.json fields, PEFT's rank_pattern / alpha_pattern
 * matching, Python truthiness of options, and errors naming the file. */
#define _GNU_SOURCE
#include "format/adapter_config.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MERGE "tests/fixtures/merge"

static char tmpdir[] = "/tmp/test_adapter_config.XXXXXX";

/* Write `json` to a file of its own; returns its path (free it). */
static char *config(const char *name, const char *json)
{
	char *p = ft_xasprintf("%s/%s.json", tmpdir, name);
	FILE *f = fopen(p, "wb");
	fputs(json, f);
	fclose(f);
	return p;
}

static void test_fixtures(void)
{
	ft_adapter_config c;
	int rc = ft_adapter_config_load(MERGE "/llama-r4/adapter/adapter_config.json", &c);
	ok(rc == 0, "PEFT 0.21 LoRA config loads%s%s", rc ? ": " : "", rc ? ft_errmsg() : "");
	ok(c.peft_type && !strcmp(c.peft_type, "LORA") && c.r == 4 && c.lora_alpha == 8 &&
	   !c.use_rslora && !c.use_dora && !c.fan_in_fan_out, "peft_type, r, lora_alpha, flags");
	ok(c.n_target_modules == 7 && !strcmp(c.target_modules[0], "q_proj") && !c.target_regex,
	   "target_modules as a list, in file order");
	ok(!c.n_rank_pattern && !c.n_alpha_pattern && !c.n_modules_to_save && !strcmp(c.bias, "none") &&
	   c.base_model_name_or_path && !strcmp(c.base_model_name_or_path, "tests/fixtures/models/tiny-llama"),
	   "empty patterns, no modules_to_save, bias, base model");
	ok(ft_adapter_config_rank(&c, "model.layers.0.self_attn.q_proj") == 4 &&
	   ft_adapter_config_alpha(&c, "model.layers.0.self_attn.q_proj") == 8, "no pattern: r and lora_alpha");
	ok(!ft_adapter_config_sets(&c, "layer_replication") && !ft_adapter_config_sets(&c, "use_dora") &&
	   !ft_adapter_config_sets(&c, "loftq_config") && ft_adapter_config_sets(&c, "target_modules") &&
	   ft_adapter_config_sets(&c, "inference_mode"), "null, false and {} are not set; a list and true are");
	ft_adapter_config_free(&c);

	rc = ft_adapter_config_load(MERGE "/qwen2-rslora/adapter/adapter_config.json", &c);
	ok(rc == 0 && c.use_rslora && c.n_rank_pattern == 1 && c.n_alpha_pattern == 1, "rslora config loads");
	ok(ft_adapter_config_rank(&c, "model.layers.1.self_attn.v_proj") == 4 &&
	   ft_adapter_config_rank(&c, "model.layers.1.self_attn.q_proj") == 8 &&
	   ft_adapter_config_alpha(&c, "model.layers.0.mlp.down_proj") == 32 &&
	   ft_adapter_config_alpha(&c, "model.layers.0.mlp.up_proj") == 16,
	   "rank_pattern v_proj: 4, alpha_pattern down_proj: 32, others r=8 alpha=16");
	ft_adapter_config_free(&c);

	rc = ft_adapter_config_load(MERGE "/llama-mts/adapter/adapter_config.json", &c);
	ok(rc == 0 && c.n_modules_to_save == 1 && !strcmp(c.modules_to_save[0], "lm_head"),
	   "modules_to_save: [lm_head]");
	ft_adapter_config_free(&c);
}

/* PEFT's get_pattern_key(): re.match(rf"(.*\.)?({key})$", module), the
 * first key in the file's order. */
static void test_patterns(void)
{
	char *p = config("patterns", "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16,"
			 " \"target_modules\": \".*proj\","
			 " \"rank_pattern\": {\"layers.1.self_attn.v_proj\": 2, \"v_proj\": 4,"
			 " \"layers\\\\.[2-3]\\\\..*q_proj\": 6},"
			 " \"alpha_pattern\": {\"mlp.*\": 1.5}}");
	ft_adapter_config c;
	int rc = ft_adapter_config_load(p, &c);
	ok(rc == 0 && c.target_regex && !strcmp(c.target_regex, ".*proj") && !c.n_target_modules,
	   "a string target_modules is kept as a regular expression");
	ok(ft_adapter_config_rank(&c, "model.layers.1.self_attn.v_proj") == 2,
	   "a module path key matches its module");
	ok(ft_adapter_config_rank(&c, "model.layers.11.self_attn.v_proj") == 4,
	   "... but not another layer ending the same (the dot boundary); the next key does");
	ok(ft_adapter_config_rank(&c, "model.layers.0.self_attn.xv_proj") == 8,
	   "a key matches after a dot only, never inside a name");
	ok(ft_adapter_config_rank(&c, "model.layers.3.self_attn.q_proj") == 6 &&
	   ft_adapter_config_rank(&c, "model.layers.4.self_attn.q_proj") == 8, "keys are regular expressions");
	ok(ft_adapter_config_alpha(&c, "model.layers.0.mlp.up_proj") == 1.5 &&
	   ft_adapter_config_alpha(&c, "model.layers.0.self_attn.o_proj") == 16,
	   "a key matches from a dot to the end (mlp.* against ...mlp.up_proj)");
	ft_adapter_config_free(&c);
	free(p);
}

/* PEFT's check_target_module_exists: a string is re.fullmatch over the
 * whole name, a list entry the name or its end after a dot. */
static void test_targets(void)
{
	char *p = config("targets", "{\"r\": 8, \"lora_alpha\": 16,"
			 " \"target_modules\": \".*\\\\.(q|v)_proj\"}");
	ft_adapter_config c;
	int rc = ft_adapter_config_load(p, &c);
	ok(rc == 0 && ft_adapter_config_targets(&c, "model.layers.0.self_attn.q_proj") &&
	   ft_adapter_config_targets(&c, "model.layers.7.self_attn.v_proj") &&
	   !ft_adapter_config_targets(&c, "model.layers.0.self_attn.k_proj"),
	   "a string target_modules is a regular expression over the whole name");
	ok(!ft_adapter_config_targets(&c, "model.layers.0.self_attn.q_proj.base"),
	   "... matched to the end (fullmatch), not as a prefix");
	ft_adapter_config_free(&c);
	free(p);
	p = config("targets2", "{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": \"q_proj\"}");
	rc = ft_adapter_config_load(p, &c);
	ok(rc == 0 && !ft_adapter_config_targets(&c, "model.layers.0.self_attn.q_proj") &&
	   ft_adapter_config_targets(&c, "q_proj"), "... and from the start: a bare name matches only itself");
	ft_adapter_config_free(&c);
	free(p);
	p = config("targets3", "{\"r\": 8, \"lora_alpha\": 16,"
		   " \"target_modules\": [\"v_proj\", \"layers.1.self_attn.q_proj\"]}");
	rc = ft_adapter_config_load(p, &c);
	ok(rc == 0 && ft_adapter_config_targets(&c, "model.layers.3.self_attn.v_proj") &&
	   ft_adapter_config_targets(&c, "model.layers.1.self_attn.q_proj") &&
	   !ft_adapter_config_targets(&c, "model.layers.11.self_attn.q_proj") &&
	   !ft_adapter_config_targets(&c, "model.layers.0.self_attn.xv_proj"),
	   "a list entry matches the name or its end after a dot");
	ft_adapter_config_free(&c);
	free(p);
	p = config("targets4", "{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": \"(q_proj\"}");
	rc = ft_adapter_config_load(p, &c);
	ok(rc < 0 && strstr(ft_errmsg(), "target_modules \"(q_proj\" is not a regular expression"),
	   "a string that does not compile is refused by name");
	ft_adapter_config_free(&c);
	free(p);
}

static void test_truthiness(void)
{
	char *p = config("truth", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": null,"
			 " \"use_dora\": 0, \"use_rslora\": 1, \"fan_in_fan_out\": false,"
			 " \"a\": \"\", \"b\": [], \"c\": {}, \"d\": 0.0, \"e\": \"x\", \"f\": [0], \"g\": -1}");
	ft_adapter_config c;
	ok(ft_adapter_config_load(p, &c) == 0 && !c.use_dora && c.use_rslora && !c.fan_in_fan_out &&
	   !c.n_target_modules && !c.target_regex, "flags read as Python's bool(): 0 no, 1 yes");
	ok(!ft_adapter_config_sets(&c, "a") && !ft_adapter_config_sets(&c, "b") &&
	   !ft_adapter_config_sets(&c, "c") && !ft_adapter_config_sets(&c, "d") &&
	   !ft_adapter_config_sets(&c, "missing"), "\"\", [], {}, 0.0, absent: not set");
	ok(ft_adapter_config_sets(&c, "e") && ft_adapter_config_sets(&c, "f") && ft_adapter_config_sets(&c, "g"),
	   "\"x\", [0], -1: set");
	ft_adapter_config_free(&c);
	free(p);

	p = config("ia3", "{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"]}");
	ok(ft_adapter_config_load(p, &c) == 0 && !strcmp(c.peft_type, "IA3") && c.r == 0,
	   "another PEFT method: peft_type read, LoRA fields left zero");
	ft_adapter_config_free(&c);
	free(p);
	p = config("noptype", "{\"r\": 4, \"lora_alpha\": 8}");
	ok(ft_adapter_config_load(p, &c) == 0 && !c.peft_type && c.r == 4,
	   "no peft_type but r: read as LoRA (the caller decides)");
	ft_adapter_config_free(&c);
	free(p);
}

/* Each bad file: -1, and the message names the file and says why. */
static void refuse(const char *name, const char *json, const char *why)
{
	char *p = config(name, json);
	ft_adapter_config c;
	int rc = ft_adapter_config_load(p, &c);
	ok(rc < 0 && strstr(ft_errmsg(), p) && strstr(ft_errmsg(), why), "%s: %s", name, ft_errmsg());
	ft_adapter_config_free(&c);
	ft_errclear();
	free(p);
}

static void test_errors(void)
{
	refuse("malformed", "{\"peft_type\": \"LORA\", \"r\": 4,\n", "");
	refuse("array", "[1, 2]", "not a JSON object");
	refuse("not-peft", "{\"model_type\": \"llama\"}", "no peft_type (not a PEFT adapter)");
	refuse("no-r", "{\"peft_type\": \"LORA\", \"lora_alpha\": 8}", "r is not a positive integer");
	refuse("r-zero", "{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 8}", "r is not a positive integer");
	refuse("r-real", "{\"peft_type\": \"LORA\", \"r\": 4.5, \"lora_alpha\": 8}", "r is not a positive integer");
	refuse("alpha", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": \"8\"}", "lora_alpha is not a number");
	refuse("ptype", "{\"peft_type\": 1, \"r\": 4, \"lora_alpha\": 8}", "peft_type is not a string");
	refuse("targets", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", 1]}",
	       "target_modules[1] is not a string");
	refuse("targets-type", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": 1}",
	       "target_modules is not a list or a string");
	refuse("rank-pattern", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": []}",
	       "rank_pattern is not an object");
	refuse("rank-value", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"q\": 2.5}}",
	       "rank_pattern[\"q\"] is not a positive integer");
	refuse("alpha-value", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"alpha_pattern\": {\"q\": null}}",
	       "alpha_pattern[\"q\"] is not a number");
	refuse("regex", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"q_(proj\": 2}}",
	       "rank_pattern key \"q_(proj\" is not a regular expression");
	refuse("mts", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"modules_to_save\": \"lm_head\"}",
	       "modules_to_save is not a list");
	char *missing = ft_xasprintf("%s/none/adapter_config.json", tmpdir);
	ft_adapter_config c;
	int rc = ft_adapter_config_load(missing, &c);
	ok(rc < 0 && strstr(ft_errmsg(), missing), "missing file: %s", ft_errmsg());
	ft_adapter_config_free(&c);
	free(missing);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		ok(0, "mkdtemp");
		return tap_done();
	}
	test_fixtures();
	test_patterns();
	test_targets();
	test_truthiness();
	test_errors();
	ft_remove_tree(tmpdir);
	return tap_done();
}
