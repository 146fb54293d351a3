/* test_lfargs.c - LLaMA-Factory YAML/JSON configs and overrides */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "cli/lfargs.h"
#include "util/error.h"

static char *write_tmp(const char *suffix, const char *text)
{
	char *path = ft_xasprintf("/tmp/ft-lfargs-%d%s", (int)getpid(), suffix);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

int main(void)
{
	ft_lfargs a = {0};
	char *y = write_tmp(".yaml",
		"### model\nmodel_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n"
		"trust_remote_code: true\n\n### method\nstage: sft\ndo_train: true\n"
		"lora_target: all\ndataset: identity,alpaca_en_demo\n"
		"learning_rate: 1.0e-4\nnum_train_epochs: 3.0\n"
		"lora_targets_list: [q_proj, v_proj]\n");
	ok(ft_lfargs_load_file(&a, y) == 0, "YAML loads (%s)", ft_errmsg());
	ok(!strcmp(ft_lfargs_get(&a, "stage", ""), "sft"), "scalar value");
	ok(!strcmp(ft_lfargs_get(&a, "learning_rate", ""), "1.0e-4"), "number kept as written");
	ok(!strcmp(ft_lfargs_get(&a, "lora_targets_list", ""), "q_proj,v_proj"), "list joined with commas");
	ok(ft_lfargs_bool(&a, "do_train", 0) == 1 && ft_lfargs_bool(&a, "absent", 7) == 7, "booleans and defaults");
	const ft_lfarg *o = ft_lfargs_find(&a, "stage");
	ok(o && strstr(o->origin, ".yaml:6"), "origin names file and line (%s)", o ? o->origin : "-");

	char *argv[] = {"learning_rate=5e-4", "--num-train-epochs", "20.0", "--plot_loss", "--fp16=true"};
	ok(ft_lfargs_parse_argv(&a, 5, argv) == 0, "overrides parse");
	ok(!strcmp(ft_lfargs_get(&a, "learning_rate", ""), "5e-4"), "key=value overrides the file");
	ok(!strcmp(ft_lfargs_get(&a, "num_train_epochs", ""), "20.0"), "--dashed-key value");
	ok(!strcmp(ft_lfargs_get(&a, "plot_loss", ""), "true") && !strcmp(ft_lfargs_get(&a, "fp16", ""), "true"),
	   "bare flag and --key=value");
	char *nulls[] = {"lora_target=null", "--dataset=~", "stage=", "num_train_epochs=nulls"};
	ok(ft_lfargs_parse_argv(&a, 4, nulls) == 0, "null overrides parse");
	ok(!ft_lfargs_find(&a, "lora_target") && !ft_lfargs_find(&a, "dataset") && !ft_lfargs_find(&a, "stage"),
	   "key=null, --key=~ and key= unset the key (OmegaConf reads them as None)");
	ok(!strcmp(ft_lfargs_get(&a, "num_train_epochs", ""), "nulls"), "only YAML's exact nulls unset");
	char *bad[] = {"oops"};
	ok(ft_lfargs_parse_argv(&a, 1, bad) == -1 && strstr(ft_errmsg(), "oops"), "stray word refused");
	ft_lfargs_free(&a);

	char *broken = write_tmp(".yml", "stage: sft\n  bad: [indent\n");
	ok(ft_lfargs_load_file(&a, broken) == -1 && strstr(ft_errmsg(), ".yml:"), "YAML error names file:line:col (%s)", ft_errmsg());
	ft_lfargs_free(&a);
	char *notmap = write_tmp(".yaml", "- a\n- b\n");
	ok(ft_lfargs_load_file(&a, notmap) == -1 && strstr(ft_errmsg(), "mapping"), "a list is not a config");
	ft_lfargs_free(&a);

	char *j = write_tmp(".json", "{\"stage\": \"pt\", \"cutoff_len\": 1024, \"bf16\": true, \"warmup_ratio\": 0.1}");
	ok(ft_lfargs_load_file(&a, j) == 0 && !strcmp(ft_lfargs_get(&a, "cutoff_len", ""), "1024")
	   && !strcmp(ft_lfargs_get(&a, "bf16", ""), "true"), "JSON config");
	ft_lfargs_free(&a);
	char *jbad = write_tmp(".json", "{\"stage\": }");
	ok(ft_lfargs_load_file(&a, jbad) == -1 && strstr(ft_errmsg(), ".json:1:"), "JSON error with position (%s)", ft_errmsg());
	ok(ft_lfargs_load_file(&a, "x.toml") == -1, "unknown extension refused");
	ft_lfargs_free(&a);
	for (char **p = (char *[]){y, broken, notmap, j, jbad, NULL}; *p; p++) { unlink(*p); free(*p); }
	return tap_done();
}
