/* ft-generate - answer prompts with a model (and LoRA adapters), as
 * llamafactory-cli chat / --do_predict --predict_with_generate do. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cli/cli.h"
#include "ft-generate.h"
#include "data/stage.h"
#include "gen/beam.h"
#include "model/quant.h"
#include "cli/newtokens.h"

static void usage(void)
{
	printf("Usage: ft-generate --model_name_or_path DIR [OPTION]... [FILE|-]\n"
"Generate answers for prompts with a model, optionally with LoRA adapters\n"
"applied on the fly, rendering each prompt with a LLaMA-Factory template.\n"
"\n"
"Input (FILE or stdin): JSON lines with \"prompt\", \"messages\" (role/content\n"
"or from/value) or \"instruction\"/\"input\", plus optional \"system\", \"tools\",\n"
"\"label\"; plain text lines with --lines; or ft-tokenize's prediction records\n"
"(an ft stream, detected by its magic).  Output: JSON lines\n"
"{\"prompt\", \"predict\", \"label\"} on stdout (or -o FILE).\n"
"\n"
"Model:\n"
"  --model_name_or_path DIR     Hugging Face model directory (required)\n"
"  --adapter_name_or_path A[,B] LoRA adapters; all but the last are merged first\n"
"  --tokenizer PATH             tokenizer (default: the model directory)\n"
"  --add_tokens T,.. --add_special_tokens T,.. --new_special_tokens_config FILE\n"
"                               the tokens the model was trained with (as ft-train)\n"
"  --template NAME|FILE         chat template (default: empty)\n"
"  --default_system TEXT        replace the template's system prompt\n"
"  --device cpu|cuda|cuda:N|auto  where to decode (cpu); auto: the GPU when one\n"
"                               is present, else the CPU with a note\n"
"  --bf16, --fp16               GPU: half-precision weights, matmul inputs and KV\n"
"                               cache, fp32 accumulation (as ft-train); CPU:\n"
"                               float32 with a note\n"
"  --quantization_bit 4|8       QLoRA base: bitsandbytes 4-bit (NF4/FP4) or 8-bit\n"
"                               (LLM.int8()) weights, as the adapter was trained on\n"
"  --quantization_type nf4|fp4 (nf4)  --double_quantization BOOL (true)\n"
"  --quantization_method bnb    (gptq, awq, hqq, eetq: not implemented)\n"
"  --enable_thinking[=B]        reasoning templates (qwen3, deepseekr1): false puts\n"
"                               an empty thought in the prompt (default true)\n"
"  --preserve_thinking[=B]      keep earlier turns' thoughts (default false)\n"
"  --rope_scaling TYPE          linear, dynamic, yarn or llama3: RoPE stretched 2x,\n"
"                               as LLaMA-Factory's inference\n"
"Sampling (defaults as LLaMA-Factory's generating arguments):\n"
"  --do_sample BOOL             sample (default true); false = greedy\n"
"  --temperature X              default 0.95\n"
"  --top_p X                    default 0.7\n"
"  --top_k N                    default 50 (0 disables)\n"
"  --repetition_penalty X       default 1.0\n"
"  --max_new_tokens N           default 1024\n"
"  --num_beams N                beam search when > 1 (default 1), as transformers'\n"
"                               generate; needs --do_sample false (beam sampling\n"
"                               is refused); runs on the CPU\n"
"  --length_penalty X           beams: a finished hypothesis scores\n"
"                               sum(logprob) / length^X (default 1.0)\n"
"  --early_stopping false|true|never  beams: when to stop (default false: once\n"
"                               no running beam can beat the finished ones)\n"
"  --seed N                     default 42; same seed, same output\n"
"  --per_device_eval_batch_size N  prompts decoded together (default 8)\n"
"  --skip_special_tokens BOOL   drop special tokens from answers (default true)\n"
"Input and output:\n"
"  --lines                      input is plain text, one prompt per line\n"
"  --strict                     a malformed input line is fatal (default: skip, count)\n"
"  -o, --output FILE            write JSON lines to FILE (default stdout)\n"
"  -i, --interactive            chat on the terminal, keeping the history\n"
"Prediction (llamafactory --do_predict --predict_with_generate):\n"
"  --do_predict                 write generated_predictions.jsonl and\n"
"                               predict_results.json (BLEU-4, ROUGE) to --output_dir\n"
"  --dataset A[,B] --dataset_dir DIR  prompts from a dataset (else from the input)\n"
"  --max_samples N --cutoff_len N     as ft-tokenize\n"
"  --output_dir DIR  --overwrite_output_dir\n"
"  -q, -v, -h/--help\n"
"\n"
"Exit status: 0 success, 1 bad input or runtime error, 2 usage error.\n"
"\n"
"Examples:\n"
"  echo '{\"prompt\": \"Who are you?\"}' | ft-generate --model_name_or_path base \\\n"
"      --adapter_name_or_path out --template default --do_sample false\n"
"  ft-tokenize --stage sft --predict --dataset alpaca_en_demo --dataset_dir data \\\n"
"      --template qwen --tokenizer M | ft-generate --model_name_or_path M \\\n"
"      --template qwen --do_predict --output_dir out/predict\n");
}

enum {
	O_MODEL = 256, O_ADAPTER, O_TOKENIZER, O_TEMPLATE, O_SYSTEM, O_DEVICE, O_DO_SAMPLE,
	O_TEMP, O_TOP_P, O_TOP_K, O_REP, O_MAX_NEW, O_SEED, O_BATCH, O_SKIP, O_LINES, O_STRICT,
	O_PREDICT, O_DATASET, O_DATASET_DIR, O_MAX_SAMPLES, O_CUTOFF, O_OUTPUT_DIR, O_OVERWRITE,
	O_BF16, O_FP16,
	O_QBIT, O_QTYPE, O_QDOUBLE, O_QMETHOD,
	O_ENABLE_THINKING, O_PRESERVE_THINKING, O_ROPE_SCALING,
	O_ADD_TOKENS, O_ADD_SPECIAL, O_NEW_SPECIAL_CFG,
	O_NUM_BEAMS, O_LENGTH_PENALTY, O_EARLY_STOPPING,
};

static const struct option longopts[] = {
	{"model_name_or_path", required_argument, 0, O_MODEL},
	{"adapter_name_or_path", required_argument, 0, O_ADAPTER},
	{"tokenizer", required_argument, 0, O_TOKENIZER},
	{"template", required_argument, 0, O_TEMPLATE},
	{"default_system", required_argument, 0, O_SYSTEM},
	{"enable_thinking", optional_argument, 0, O_ENABLE_THINKING},
	{"rope_scaling", required_argument, 0, O_ROPE_SCALING},
	{"preserve_thinking", optional_argument, 0, O_PRESERVE_THINKING},
	{"device", required_argument, 0, O_DEVICE},
	{"do_sample", optional_argument, 0, O_DO_SAMPLE},
	{"temperature", required_argument, 0, O_TEMP},
	{"top_p", required_argument, 0, O_TOP_P},
	{"top_k", required_argument, 0, O_TOP_K},
	{"repetition_penalty", required_argument, 0, O_REP},
	{"max_new_tokens", required_argument, 0, O_MAX_NEW},
	{"num_beams", required_argument, 0, O_NUM_BEAMS},
	{"length_penalty", required_argument, 0, O_LENGTH_PENALTY},
	{"early_stopping", required_argument, 0, O_EARLY_STOPPING},
	{"seed", required_argument, 0, O_SEED},
	{"per_device_eval_batch_size", required_argument, 0, O_BATCH},
	{"batch_size", required_argument, 0, O_BATCH},
	{"skip_special_tokens", optional_argument, 0, O_SKIP},
	{"lines", no_argument, 0, O_LINES},
	{"strict", no_argument, 0, O_STRICT},
	{"output", required_argument, 0, 'o'},
	{"interactive", no_argument, 0, 'i'},
	{"do_predict", optional_argument, 0, O_PREDICT},
	{"predict_with_generate", optional_argument, 0, O_PREDICT},
	{"dataset", required_argument, 0, O_DATASET},
	{"eval_dataset", required_argument, 0, O_DATASET},
	{"dataset_dir", required_argument, 0, O_DATASET_DIR},
	{"max_samples", required_argument, 0, O_MAX_SAMPLES},
	{"cutoff_len", required_argument, 0, O_CUTOFF},
	{"output_dir", required_argument, 0, O_OUTPUT_DIR},
	{"overwrite_output_dir", optional_argument, 0, O_OVERWRITE},
	{"bf16", optional_argument, 0, O_BF16},
	{"fp16", optional_argument, 0, O_FP16},
	{"quantization_bit", required_argument, 0, O_QBIT},
	{"quantization_type", required_argument, 0, O_QTYPE},
	{"double_quantization", optional_argument, 0, O_QDOUBLE},
	{"quantization_method", required_argument, 0, O_QMETHOD},
	{"add_tokens", required_argument, 0, O_ADD_TOKENS},
	{"add_special_tokens", required_argument, 0, O_ADD_SPECIAL},
	{"new_special_tokens_config", required_argument, 0, O_NEW_SPECIAL_CFG},
	{"quiet", no_argument, 0, 'q'},
	{"verbose", no_argument, 0, 'v'},
	{"help", no_argument, 0, 'h'},
	{0, 0, 0, 0},
};

static void parse_number_option(gen_cli *o, int c, const char *a)
{
	switch (c) {
	case O_TEMP: o->gen.sampling.temperature = ft_parse_double("temperature", a); break;
	case O_TOP_P: o->gen.sampling.top_p = ft_parse_double("top_p", a); break;
	case O_TOP_K: o->gen.sampling.top_k = (int)ft_parse_int("top_k", a); break;
	case O_REP: o->gen.sampling.repetition_penalty = ft_parse_double("repetition_penalty", a); break;
	case O_MAX_NEW: o->gen.max_new_tokens = (int)ft_parse_int("max_new_tokens", a); break;
	case O_NUM_BEAMS: o->gen.num_beams = (int)ft_parse_int("num_beams", a); break;
	case O_LENGTH_PENALTY: o->gen.length_penalty = ft_parse_double("length_penalty", a); break;
	case O_EARLY_STOPPING:
		if (ft_early_stopping_parse(a, &o->gen.early_stopping) < 0) die_usage("--%s", ft_errmsg());
		break;
	case O_SEED: o->gen.seed = (uint64_t)ft_parse_int("seed", a); break;
	case O_BATCH: o->gen.batch_size = (int)ft_parse_int("per_device_eval_batch_size", a); break;
	case O_MAX_SAMPLES: o->max_samples = ft_parse_int("max_samples", a); break;
	case O_CUTOFF:
		o->cutoff_len = ft_parse_int("cutoff_len", a);
		if (o->cutoff_len < 1) die_usage("--cutoff_len must be >= 1");
		break;
	}
}

static void parse_args(gen_cli *o, int argc, char **argv)
{
	int c;
	while ((c = getopt_long(argc, argv, "o:iqvh", longopts, NULL)) != -1) {
		switch (c) {
		case O_MODEL: o->model_dir = optarg; break;
		case O_ADAPTER: o->adapters = optarg; break;
		case O_TOKENIZER: o->tokenizer_path = optarg; break;
		case O_TEMPLATE: o->template_name = optarg; break;
		case O_SYSTEM: o->default_system = optarg; break;
		case O_DEVICE: o->device = optarg, o->device_given = 1; break;
		case O_BF16: o->bf16 = ft_optarg_bool("bf16", argc, argv); break;
		case O_FP16: o->fp16 = ft_optarg_bool("fp16", argc, argv); break;
		case O_ROPE_SCALING: o->rope_scaling = optarg; break;
		case O_ENABLE_THINKING: o->enable_thinking = ft_optarg_bool("enable_thinking", argc, argv); break;
		case O_PRESERVE_THINKING:
			o->preserve_thinking = ft_optarg_bool("preserve_thinking", argc, argv);
			break;
		case O_DO_SAMPLE: o->gen.sampling.do_sample = ft_optarg_bool("do_sample", argc, argv); break;
		case O_SKIP: o->skip_special = ft_optarg_bool("skip_special_tokens", argc, argv); break;
		case O_LINES: o->lines = 1; break;
		case O_STRICT: o->strict = 1; break;
		case 'o': o->output = optarg; break;
		case 'i': o->interactive = 1; break;
		case O_PREDICT: o->do_predict = ft_optarg_bool("do_predict", argc, argv); break;
		case O_DATASET: o->dataset = optarg; break;
		case O_DATASET_DIR: o->dataset_dir = optarg; break;
		case O_OUTPUT_DIR: o->output_dir = optarg; break;
		case O_OVERWRITE: o->overwrite_output_dir = ft_optarg_bool("overwrite_output_dir", argc, argv); break;
		case O_QBIT: o->q_bit = optarg; break;
		case O_QTYPE: o->q_type = optarg; break;
		case O_QDOUBLE:
			o->q_double = ft_optarg_bool("double_quantization", argc, argv) ? "true" : "false";
			break;
		case O_QMETHOD: o->q_method = optarg; break;
		case O_ADD_TOKENS: o->add_tokens = optarg; break;
		case O_ADD_SPECIAL: o->add_special_tokens = optarg; break;
		case O_NEW_SPECIAL_CFG: o->new_special_tokens_config = optarg; break;
		case 'q': ft_verbose--; break;
		case 'v': ft_verbose++; break;
		case 'h': usage(); exit(0);
		case '?': die_usage("unknown or incomplete option");
		default: parse_number_option(o, c, optarg);
		}
	}
	if (!o->model_dir) die_usage("--model_name_or_path is required");
	if (o->do_predict && !o->output_dir) die_usage("--do_predict needs --output_dir");
	if (o->dataset && !o->do_predict) die_usage("--dataset is for --do_predict (else give prompts on the input)");
	if (o->interactive && o->do_predict) die_usage("--interactive and --do_predict exclude each other");
	if (optind < argc) o->input = argv[optind++];
	if (optind < argc) die_usage("one input at most ('%s' is extra)", argv[optind]);
	if (ft_sampling_check(&o->gen.sampling) < 0) die_usage("%s", ft_errmsg());
	if (o->gen.max_new_tokens < 1) die_usage("--max_new_tokens must be at least 1");
	if (o->gen.num_beams > 1 && o->gen.sampling.do_sample)
		die_usage("--num_beams %d with --do_sample true (LLaMA-Factory's default) is transformers' beam "
			  "sampling, whose torch.multinomial draws ft cannot reproduce: add --do_sample false",
			  o->gen.num_beams);
	if (ft_beam_check(&o->gen) < 0) die_usage("--%s", ft_errmsg());
	if (o->gen.batch_size < 1) die_usage("--per_device_eval_batch_size must be at least 1");
	if (o->bf16 && o->fp16) die_usage("--bf16 and --fp16 exclude each other");
	/* LLaMA-Factory checks these against finetuning_type lora, which
	 * inference with adapters is; a bare quantized model is fine too */
	ft_tune_opts q = { .type = FT_FT_LORA };
	if (ft_quant_parse(&q, o->q_bit, o->q_type, o->q_double, o->q_method) < 0)
		die_usage("%s", ft_errmsg());
	if (q.quantization_bit && o->adapters && strchr(o->adapters, ','))   /* adapter.py's words */
		die_usage("--quantization_bit: Quantized model only accepts a single adapter.");
}

/* All adapters but the last are merged into the base weights, the last is
 * applied on the fly (as llamafactory's init_adapter for inference). */
static void load_model(const gen_cli *o, gen_env *e)
{
	ft_tune_opts t = {0};
	t.type = o->adapters ? FT_FT_LORA : FT_FT_FREEZE;   /* freeze, 0 layers: no gradients */
	/* placeholders until the adapter's config replaces them (all linear:
	 * valid for every family, Phi-3's fused modules included) */
	t.lora_rank = 8, t.lora_alpha = 16, t.lora_targets = FT_MOD_ALL_LINEAR;
	ft_tune_opts q = { .type = FT_FT_LORA };
	ft_quant_parse(&q, o->q_bit, o->q_type, o->q_double, o->q_method);   /* checked in parse_args */
	t.quantization_bit = q.quantization_bit;
	t.quantization_fp4 = q.quantization_fp4;
	t.double_quantization = q.double_quantization;
	if (o->rope_scaling) {   /* llamafactory: prediction stretches to cutoff_len, chat 2x */
		ft_config conf;
		const char *why;
		char *cfg = ft_xasprintf("%s/config.json", o->model_dir);
		if (ft_config_load(cfg, &conf) < 0) die_lib();
		free(cfg);
		t.model_max_length = o->do_predict ? o->cutoff_len : 0;
		int rc = ft_config_rope_override(&conf, o->rope_scaling, t.model_max_length, &why);
		if (rc < 0) die_usage("%s", ft_errmsg());
		if (rc == 1) warn("--rope_scaling %s: %s", o->rope_scaling, why);
		else t.rope_scaling = o->rope_scaling;
	}
	e->model = ft_model_load(o->model_dir, &t);
	if (!e->model) die_lib();
	if (!o->adapters) return;
	char *list = ft_xstrdup(o->adapters), *save = NULL;
	for (char *a = strtok_r(list, ",", &save); a; ) {
		char *next = strtok_r(NULL, ",", &save);
		if (ft_model_load_adapter(e->model, a) < 0) die_lib();
		if (next && ft_model_merge_lora(e->model) < 0) die_lib();
		a = next;
	}
	free(list);
}

/* LLaMA-Factory's patch_tokenizer, and patch_model's resize where the
 * tokens outgrow the model (an adapter trained with them brings its
 * vocabulary: modules_to_save) */
static void add_new_tokens(const gen_cli *o, gen_env *e)
{
	ft_new_tokens nt;
	int added;
	if (ft_new_tokens_parse(&nt, o->add_tokens, o->add_special_tokens, o->new_special_tokens_config) < 0 ||
	    ft_new_tokens_apply(&nt, e->tok, &added) < 0)
		die_lib();
	int64_t len = (int64_t)ft_tokenizer_vocab_size(e->tok), V = ft_model_config(e->model)->vocab_size;
	if (added > 0 && len > V) {
		ft_i32vec ids = {0};
		ft_new_tokens_ids(&nt, e->tok, (len + 63) / 64 * 64, &ids);
		ft_vocab_resize r = { .tokenizer_len = len, .new_ids = ids.v, .n_new = ids.n,
				      .method = FT_INIT_NOISE };
		if (ft_model_resize_vocab(e->model, &r) < 0) die_lib();
		warn("note: %lld new token%s beyond the model's %lld rows: resized with noise_init rows, as "
		     "LLaMA-Factory does without an adapter that trained them", (long long)(len - V),
		     len - V == 1 ? "" : "s", (long long)V);
		ft_i32vec_free(&ids);
	}
	ft_new_tokens_free(&nt);
}

static void load_env(const gen_cli *o, gen_env *e)
{
	load_model(o, e);
	e->tok = ft_tokenizer_load(o->tokenizer_path ? o->tokenizer_path : o->model_dir);
	if (!e->tok) die_lib();
	add_new_tokens(o, e);
	e->tmpl = ft_template_open(o->template_name ? o->template_name : "empty");
	if (!e->tmpl) die_usage("%s", ft_errmsg());
	if (o->default_system) ft_template_set_default_system(e->tmpl, o->default_system);
	ft_template_set_thinking(e->tmpl, o->enable_thinking, o->preserve_thinking);
	ft_prep_opts po = {0};
	po.stage = FT_STAGE_SFT, po.predict = 1, po.cutoff_len = o->cutoff_len;
	e->prep = ft_prep_new(e->tok, e->tmpl, &po);
	if (!e->prep) die_lib();
	const char *w = ft_prep_eos_warning(e->prep);
	if (w) warn("%s", w);
	e->n_stop = ft_chat_stop_ids(e->prep, e->tok, e->tmpl, e->stop, 64);
	if ((int)ft_tokenizer_vocab_size(e->tok) > ft_model_config(e->model)->vocab_size)
		warn("the tokenizer has %zu tokens but the model only %d", ft_tokenizer_vocab_size(e->tok),
		     ft_model_config(e->model)->vocab_size);
}

static void free_env(gen_env *e)
{
	gen_device_free(e);
	ft_prep_free(e->prep);
	ft_template_free(e->tmpl);
	ft_tokenizer_free(e->tok);
	ft_model_free(e->model);
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	gen_cli o = {0};
	o.device = "cpu";
	ft_gen_defaults(&o.gen);
	o.gen.seed = 42;
	o.skip_special = 1;
	o.cutoff_len = 2048;
	o.enable_thinking = 1;   /* llamafactory's data_args default */
	parse_args(&o, argc, argv);
	if (!o.input && !o.dataset && !o.interactive && ft_stdin_is_terminal()) {
		usage();
		return FT_EXIT_USAGE;
	}
	gen_device_resolve(&o);
	gen_env e = {0};
	load_env(&o, &e);
	o.gen.stop_ids = e.stop, o.gen.n_stop = e.n_stop;
	if (o.interactive) {
		/* one row; a conversation up to cutoff_len tokens prefills in one batch */
		gen_device_bind(&o, &e, NULL, 0, (size_t)o.cutoff_len);
		int rc = run_interactive(&o, &e);
		free_env(&e);
		return rc;
	}
	gen_items it = {0};
	if ((o.dataset ? read_dataset_prompts(&o, &e, &it) : read_prompts(&o, &e, &it)) < 0) die_lib();
	if (it.skipped) warn("skipped %zu malformed input%s (use --strict to stop at the first)",
			     it.skipped, it.skipped == 1 ? "" : "s");
	ft_i32vec *outs = ft_xcalloc(it.n ? it.n : 1, sizeof *outs);
	ft_i32vec *prompts = ft_xcalloc(it.n ? it.n : 1, sizeof *prompts);
	for (size_t i = 0; i < it.n; i++) prompts[i] = it.v[i].ids;
	gen_device_bind(&o, &e, prompts, it.n, 0);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (gen_run(&e, prompts, it.n, &o.gen, outs, NULL, NULL) < 0) die_lib();
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
	if (write_results(&o, &e, &it, outs, secs) < 0) die_lib();
	for (size_t i = 0; i < it.n; i++) ft_i32vec_free(&outs[i]);
	free(outs);
	free(prompts);
	gen_items_free(&it);
	free_env(&e);
	return 0;
}
