/* ft-generate.h - shared state of the ft-generate tool's files. */
#ifndef FT_GENERATE_TOOL_H
#define FT_GENERATE_TOOL_H

#include <stdio.h>
#include "gen/chat.h"
#include "gen/generate.h"
#include "model/model.h"

typedef struct {
	/* model */
	const char *model_dir, *adapters, *tokenizer_path, *template_name;
	const char *default_system;
	int enable_thinking, preserve_thinking;   /* reasoning templates */
	const char *rope_scaling;                 /* --rope_scaling, inference factor 2 */
	/* input / output */
	const char *input, *output;
	int lines, strict, interactive, skip_special;
	/* prediction */
	int do_predict;
	const char *dataset, *dataset_dir, *output_dir;
	long long max_samples, cutoff_len;
	int overwrite_output_dir;
	ft_gen_opts gen;
	/* device (device.c) */
	const char *device;
	int device_given, device_kind, device_index, bf16, fp16;
	/* QLoRA: --quantization_bit/_type/_method, --double_quantization */
	const char *q_bit, *q_type, *q_double, *q_method;
	/* LLaMA-Factory's add_tokens, add_special_tokens, new_special_tokens_config */
	const char *add_tokens, *add_special_tokens, *new_special_tokens_config;
} gen_cli;

typedef struct gen_device gen_device;

typedef struct {
	ft_model *model;
	ft_tokenizer *tok;
	ft_template *tmpl;
	ft_prep *prep;
	int32_t stop[64];
	size_t n_stop;
	gen_device *dev;     /* the GPU decoder, NULL on the CPU */
} gen_env;

/* One prompt to answer. */
typedef struct {
	ft_i32vec ids;
	char *label;        /* reference answer or NULL */
} gen_item;

typedef struct {
	gen_item *v;
	size_t n, cap;
	size_t skipped;     /* malformed inputs skipped */
} gen_items;

void gen_items_free(gen_items *it);

/* input.c: prompts from JSON lines, plain lines, an ft stream of prompt
 * records, or a dataset (prediction). */
int read_prompts(const gen_cli *o, const gen_env *e, gen_items *out);
int read_dataset_prompts(const gen_cli *o, const gen_env *e, gen_items *out);

/* device.c: --device as ft-train resolves it (usage errors exit 2, a
 * missing GPU 1), the GPU decoder planned for the prompts (nothing on the
 * CPU; `extra`: a prompt length to plan for beyond these), and
 * ft_generate on whichever it is. */
void gen_device_resolve(gen_cli *o);
void gen_device_bind(const gen_cli *o, gen_env *e, const ft_i32vec *prompts, size_t n,
		     size_t extra);
int gen_run(gen_env *e, const ft_i32vec *prompts, size_t n, const ft_gen_opts *g,
	    ft_i32vec *outs, ft_gen_token_fn fn, void *ctx);
void gen_device_free(gen_env *e);

/* output.c */
int write_results(const gen_cli *o, const gen_env *e, const gen_items *it,
		  const ft_i32vec *outs, double seconds);
int run_interactive(const gen_cli *o, gen_env *e);

#endif
