/* ft-merge - base model + LoRA adapter(s) -> merged Hugging Face model
 * directory, as `llamafactory-cli export` does.  The work is in
 * lib/merge*.c; main reads the arguments (flags, or a LLaMA-Factory
 * merge YAML) and shows progress. */
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include "cli/cli.h"
#include "util/dtype.h"
#include "cli/lfargs.h"
#include "cli/runplan.h"
#include "export/gptq.h"
#include "export/merge.h"
#include "resized.h"
#include "model/model.h"
#include "text/tokenizer.h"

static void usage(FILE *fp)
{
	fprintf(fp,
"Usage: ft-merge [CONFIG.yaml] --model_name_or_path BASE [--adapter_name_or_path A[,B...]]\n"
"                --export_dir DIR [OPTION]...\n"
"Merge LoRA adapters into their base model (W' = W + alpha/r * B A, rsLoRA\n"
"alpha/sqrt(r), per-module rank_pattern/alpha_pattern; computed in float32)\n"
"and write a complete Hugging Face model directory: safetensors weights\n"
"(sharded with model.safetensors.index.json when larger than --export_size),\n"
"config.json with its dtype updated, generation_config.json and the tokenizer\n"
"files.  PEFT OFT adapters merge too (W' = W blockdiag(R)^T, R PEFT's\n"
"Cayley-Neumann rotations).  PiSSA adapters (DoRA's too) merge into the original\n"
"base: their init is redone on it first, as PEFT's from_pretrained does.\n"
"Adapters are PEFT LoRA adapters (adapter_config.json +\n"
"adapter_model.safetensors) for Llama/Mistral/Qwen2/Qwen3/Gemma models:\n"
"ft-train's or any other, e.g. LLaMA-Factory's.  Several are applied in the order given; with\n"
"none, the model itself is exported (dtype, shards), as llamafactory-cli\n"
"export does for a full fine-tune.  A LLaMA-Factory merge YAML may come\n"
"first; flags after it override its keys; its other settings are ignored or\n"
"refused as ft-run does.  Options may be spelt with - or _.\n"
"\n"
"      --model_name_or_path DIR     base model directory\n"
"      --adapter_name_or_path LIST  adapter directories, comma-separated (optional)\n"
"      --export_dir DIR             output directory (written atomically)\n"
"      --export_dtype T             auto (the base config's dtype), bf16, fp16, fp32\n"
"      --rope_scaling TYPE          linear, dynamic, yarn or llama3: the exported\n"
"                                   config stretches RoPE 2x (LLaMA-Factory's export)\n"
"      --export_size SIZE           largest shard: GB as a bare number (LLaMA-Factory's\n"
"                                   export_size, default 5), or 2GB, 500MB, 1GiB\n"
"      --overwrite                  replace a non-empty export directory\n"
"GPTQ export (LLaMA-Factory's export_quantization_*; docs/FORMAT.md):\n"
"      --export_quantization_bit N  quantize every decoder linear to N bits (2, 3, 4, 8)\n"
"                                   with GPTQ: group size 128, symmetric, act-group-aware\n"
"                                   order, damp 0.1; fp16 checkpoint in gptq_v2 format\n"
"      --export_quantization_dataset FILE  calibration texts: JSON lines (or a JSON\n"
"                                   array) with a \"text\" field, e.g. data/c4_demo.jsonl\n"
"      --export_quantization_nsamples N  calibration windows (default 128)\n"
"      --export_quantization_maxlen N    tokens per window (default 1024)\n"
"      --seed N                     seeds the window sampling as Python's random.seed(N)\n"
"                                   (default 42; LLaMA-Factory leaves it unseeded)\n"
"  -j, --threads N                  threads (default: all cores)\n"
"  -q, --quiet                      no progress\n"
"  -v, --verbose                    say which LLaMA-Factory keys are ignored, and when done\n"
"  -h, --help                       this help\n"
"\n"
"Refused with a message: an adapter for another base (shapes), unknown target\n"
"modules, export_quantization_bit with an adapter (merge first, as LLaMA-Factory\n"
"says), a calibration file with no text longer than maxlen tokens,\n"
"adapters neither LoRA (DoRA included) nor OFT, adapter_model.bin (safetensors only), a\n"
"non-empty export directory without --overwrite, too little disk space.\n"
"\n"
"EXIT STATUS\n"
"  0  merged (or quantized) model written\n"
"  1  bad input or a refusal above, I/O error (nothing is left at --export_dir)\n"
"  2  usage error\n"
"\n"
"Example:\n"
"  ft-train sft_lora.yaml output_dir=out/lora        # writes out/lora/adapter_*\n"
"  ft-merge --model_name_or_path models/Qwen2.5-0.5B --adapter_name_or_path out/lora \\\n"
"           --export_dir out/merged --export_dtype bf16 --export_size 2GB\n"
"  ft-merge examples/lf/qwen_lora_merge.yaml          # a LLaMA-Factory merge config\n"
"  ft-merge --model_name_or_path out/merged --export_dir out/gptq \\\n"
"           --export_quantization_bit 4 --export_quantization_dataset data/c4_demo.jsonl\n");
}


static int export_dtype(const char *s)
{
	if (!strcmp(s, "auto")) return FT_MERGE_DTYPE_AUTO;
	if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) return FT_BF16;
	if (!strcmp(s, "fp16") || !strcmp(s, "float16") || !strcmp(s, "half")) return FT_F16;
	if (!strcmp(s, "fp32") || !strcmp(s, "float32") || !strcmp(s, "float")) return FT_F32;
	die_usage("--export_dtype: '%s' is not auto, bf16, fp16 or fp32", s);
}

/* A bare number is GB, as LLaMA-Factory's export_size; else cli's sizes. */
static uint64_t export_size(const char *s)
{
	char *end;
	double gb = strtod(s, &end);
	if (end != s && !*end) {
		if (!(gb > 0) || gb > 1e6) die_usage("--export_size: '%s' is not a size", s);
		return (uint64_t)(gb * 1e9);
	}
	uint64_t n = ft_parse_size("--export_size", s);
	if (n == 0) die_usage("--export_size must be positive");
	return n;
}

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

/* SIGINT, SIGTERM, SIGHUP only set interrupted: the progress callback then
 * stops the export, which removes its temporary directory. */
static void catch_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

/* A failed export: its message, and when a signal stopped it, that signal
 * again with its default action (so the shell sees the signal). */
static void export_failed(void)
{
	ft_progress_done();
	if (interrupted) {
		warn("%s", ft_errmsg());
		signal(interrupted, SIG_DFL);
		raise(interrupted);
	}
	die_lib();
}

/* Also the cancellation point: ^C stops between tensors and the library
 * removes the half-built export directory. */
static int progress(void *ctx, size_t done, size_t total, uint64_t bytes, uint64_t bytes_total)
{
	if (!*(int *)ctx)
		ft_progress("merging: %zu/%zu tensors, %.2f/%.2f GB", done, total, bytes / 1e9, bytes_total / 1e9);
	return interrupted != 0;
}

static char **split_list(const char *s, size_t *n)
{
	char *copy = ft_xstrdup(s), **v = NULL;
	*n = 0;
	for (char *save, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ') tok++;
		size_t l = strlen(tok);
		while (l && tok[l - 1] == ' ') tok[--l] = 0;
		if (!l) continue;
		v = ft_xrealloc(v, (*n + 1) * sizeof *v);
		v[(*n)++] = ft_xstrdup(tok);
	}
	free(copy);
	return v;
}

/* -h, -q, -j N are taken out before the LLaMA-Factory style parse. */
static int take_short(int *argc, char **argv, int *threads, int *quiet)
{
	int k = 1;
	for (int i = 1; i < *argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
		if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
			*quiet = 1;
			ft_verbose--;
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			ft_verbose++;
		} else if (!strcmp(a, "-j") || !strcmp(a, "--threads")) {
			if (i + 1 >= *argc) die_usage("%s needs a number", a);
			*threads = (int)ft_parse_int(a, argv[++i]);
		} else if (!strncmp(a, "-j", 2) && a[2]) {
			*threads = (int)ft_parse_int("-j", a + 2);
		} else if (a[0] == '-' && a[1] != '-' && a[1]) {
			die_usage("unknown option '%s'", a);
		} else {
			argv[k++] = argv[i];
		}
	}
	*argc = k;
	return 0;
}

static int rope_edit(void *config_json, void *ctx)
{
	ft_config_rope_to_json(config_json, ctx);
	return 0;
}

/* The tokenizer's __call__ on one calibration text. */
static int encode(void *ctx, const char *text, size_t len, ft_i32vec *ids)
{
	return ft_tokenizer_encode(ctx, text, len, 1, ids);
}

static int positive(const ft_lfargs *a, const char *key, int def)
{
	const char *v = ft_lfargs_get(a, key, NULL);
	if (!v) return def;
	long long n = ft_parse_int(key, v);
	if (n <= 0 || n > (1 << 24)) die_usage("--%s must be a positive number", key);
	return (int)n;
}

static int gptq_progress(void *ctx, int layer, int nlayers, const char *module)
{
	if (!*(int *)ctx) ft_progress("quantizing: layer %d/%d %s", layer + 1, nlayers, module);
	return interrupted != 0;
}

/* export_quantization_bit: LLaMA-Factory's GPTQ export (docs/FORMAT.md). */
static int gptq(const ft_lfargs *a, const char *qbit, int threads, int quiet)
{
	ft_gptq_export_opts o = { .threads = threads, .progress = gptq_progress, .progress_ctx = &quiet };
	o.bits = (int)ft_parse_int("--export_quantization_bit", qbit);
	if (o.bits != 2 && o.bits != 3 && o.bits != 4 && o.bits != 8)
		die_usage("--export_quantization_bit %s: AutoGPTQ only accepts 2/3/4/8-bit quantization.", qbit);
	const char *ds = ft_lfargs_get(a, "export_quantization_dataset", NULL);
	if (!ds) die_usage("Quantization dataset is necessary for exporting. (--export_quantization_dataset)");
	const char *dt = ft_lfargs_get(a, "export_dtype", "auto");
	if (strcmp(dt, "auto") && export_dtype(dt) != FT_F16)
		die_usage("--export_dtype %s: a GPTQ export is float16 (LLaMA-Factory forces it)", dt);
	if (ft_lfargs_get(a, "rope_scaling", NULL)) die_usage("--rope_scaling is not supported with a GPTQ export");
	o.model_dir = ft_lfargs_get(a, "model_name_or_path", NULL);
	o.export_dir = ft_lfargs_get(a, "export_dir", NULL);
	if (!o.model_dir) die_usage("--model_name_or_path is required");
	if (!o.export_dir) die_usage("--export_dir is required");
	o.nsamples = positive(a, "export_quantization_nsamples", 128);
	o.maxlen = positive(a, "export_quantization_maxlen", 1024);
	const char *seed = ft_lfargs_get(a, "seed", NULL);
	long long sd = seed ? ft_parse_int("--seed", seed) : 42;
	if (sd < 0) die_usage("--seed must not be negative");
	const char *size = ft_lfargs_get(a, "export_size", NULL);
	if (size) o.shard_size = export_size(size);
	int ow = ft_lfargs_bool(a, "overwrite", 0);
	if (ow < 0) die_usage("--overwrite: expected true or false");
	o.overwrite = ow;
	if (ft_gptq_check_model(o.model_dir, o.bits) < 0) die_lib();
	ft_tokenizer *tok = ft_tokenizer_load(o.model_dir);
	if (!tok) die_lib();
	int32_t *win = ft_xmalloc((size_t)o.nsamples * o.maxlen * sizeof *win);
	if (ft_gptq_calibration(ds, o.nsamples, o.maxlen, (uint64_t)sd, encode, tok, win) < 0) die_lib();
	ft_tokenizer_free(tok);
	o.windows = win;
	catch_signals();
	if (ft_gptq_export(&o) < 0) export_failed();
	ft_progress_done();
	note("quantized %s to %d-bit GPTQ in %s", o.model_dir, o.bits, o.export_dir);
	free(win);
	return 0;
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	int threads = 0, quiet = 0;
	if (take_short(&argc, argv, &threads, &quiet)) {
		usage(stdout);
		return 0;
	}
	if (threads < 0 || threads > 4096) die_usage("--threads must be between 1 and 4096");
	ft_lfargs args = { 0 };
	int first = 1;
	if (argc > 1 && strncmp(argv[1], "--", 2) != 0 && !strchr(argv[1], '=')) {
		if (ft_lfargs_load_file(&args, argv[1]) < 0) die_lib();
		first = 2;
	}
	if (ft_lfargs_parse_argv(&args, argc - first, argv + first) < 0) {
		warn("%s", ft_errmsg());
		die_usage("bad arguments");
	}
	static const char *const known[] = {
		"model_name_or_path", "adapter_name_or_path", "export_dir", "export_dtype", "export_size",
		"overwrite", "finetuning_type", "export_legacy_format", "export_quantization_bit",
		"quantization_bit", "quantization_type", "double_quantization", "quantization_method",
		"rope_scaling", "add_tokens", "add_special_tokens", "new_special_tokens_config",
		"export_quantization_dataset", "export_quantization_nsamples",
		"export_quantization_maxlen", "seed",
	};
	for (size_t i = 0; i < args.n; i++) {
		int ok = 0;
		for (size_t k = 0; k < sizeof known / sizeof *known; k++) ok |= !strcmp(args.v[i].key, known[k]);
		if (ok) continue;
		/* the rest of a LLaMA-Factory config: what ft-run accepts is
		 * ignored here, what it refuses is refused with its reason */
		const char *why = NULL;
		int acc = ft_runplan_accepts(args.v[i].key, &why);
		if (acc < 0) die_usage("%s: unknown option '%s'", args.v[i].origin, args.v[i].key);
		if (acc == 0) die_usage("%s: '%s' is not supported: %s", args.v[i].origin, args.v[i].key, why);
		note("%s: ignoring %s (no effect on a merge)", args.v[i].origin, args.v[i].key);
	}
	const char *al = ft_lfargs_get(&args, "adapter_name_or_path", NULL);
	const char *ft = ft_lfargs_get(&args, "finetuning_type", "lora");
	if (al && strcmp(ft, "lora") && strcmp(ft, "oft")) die_usage("finetuning_type %s: only LoRA and OFT adapters can be merged", ft);
	if (ft_lfargs_bool(&args, "export_legacy_format", 0) != 0)
		die_usage("export_legacy_format (.bin weights) is not supported: ft-merge writes safetensors");
	const char *qbit = ft_lfargs_get(&args, "export_quantization_bit", NULL);
	if (qbit && strcmp(qbit, "null") && strcmp(qbit, "None") && *qbit) {
		if (al) die_usage("Please merge adapters before quantizing the model. (LLaMA-Factory's export: "
				  "ft-merge the adapter first, then quantize the merged model)");
		int rc = gptq(&args, qbit, threads, quiet);
		ft_lfargs_free(&args);
		return rc;
	}
	for (size_t i = 0; i < args.n; i++)
		if (!strncmp(args.v[i].key, "export_quantization_", 20) || !strcmp(args.v[i].key, "seed"))
			note("%s: ignoring %s (no export_quantization_bit)", args.v[i].origin, args.v[i].key);
	/* a QLoRA adapter merges into the unquantized base (LLaMA-Factory's
	 * export refuses a quantized one with these words) */
	const char *qb = ft_lfargs_get(&args, "quantization_bit", NULL);
	if (qb && strcmp(qb, "null") && strcmp(qb, "None") && *qb)
		die_usage(al ? "Cannot merge adapters to a quantized model. (drop quantization_bit: "
			       "the adapter merges into the unquantized base)"
			     : "quantization_bit: quantized export is not supported");
	ft_merge_opts o = { .threads = threads, .export_dtype = FT_MERGE_DTYPE_AUTO };
	o.model_dir = ft_lfargs_get(&args, "model_name_or_path", NULL);
	o.export_dir = ft_lfargs_get(&args, "export_dir", NULL);
	if (!o.model_dir) die_usage("--model_name_or_path is required");
	if (!o.export_dir) die_usage("--export_dir is required");
	/* no adapter: export the model itself (dtype, shards), as
	 * llamafactory-cli export does for a full fine-tune */
	size_t nad = 0;
	char **ad = al ? split_list(al, &nad) : NULL;
	if (al && nad == 0) die_usage("--adapter_name_or_path is empty");
	o.adapters = (const char *const *)ad;
	o.nadapters = nad;
	o.export_dtype = export_dtype(ft_lfargs_get(&args, "export_dtype", "auto"));
	const char *size = ft_lfargs_get(&args, "export_size", NULL);
	if (size) o.shard_size = export_size(size);
	int ow = ft_lfargs_bool(&args, "overwrite", 0);
	if (ow < 0) die_usage("--overwrite: expected true or false");
	o.overwrite = ow;
	o.progress = progress;
	o.progress_ctx = &quiet;
	/* the export copies config.json: check it with the loaders' code
	 * first, so that no export is written that no tool loads */
	ft_config conf;
	char *cfg = ft_xasprintf("%s/config.json", o.model_dir);
	if (ft_config_load(cfg, &conf) < 0) die("%s", ft_errmsg());
	free(cfg);
	const char *rope = ft_lfargs_get(&args, "rope_scaling", NULL), *why;
	if (rope) {   /* llamafactory's export loads for inference: factor 2 */
		if (ft_config_rope_override(&conf, rope, 0, &why) < 0) die_usage("%s", ft_errmsg());
		o.config_edit = rope_edit;
		o.config_edit_ctx = &conf;
	}
	ft_tokenizer *tok = merge_tokenizer(o.model_dir, ft_lfargs_get(&args, "add_tokens", NULL),
					    ft_lfargs_get(&args, "add_special_tokens", NULL),
					    ft_lfargs_get(&args, "new_special_tokens_config", NULL));
	if (nad && merge_has_modules_to_save(o.adapters, nad)) {
		if (rope) die_usage("--rope_scaling with adapters that train the embeddings is not implemented in ft yet");
		merge_resized(&o, tok);
		ft_tokenizer_free(tok);
		for (size_t i = 0; i < nad; i++) free(ad[i]);
		free(ad);
		ft_lfargs_free(&args);
		return 0;
	}
	catch_signals();
	if (ft_merge(&o) < 0) export_failed();
	ft_progress_done();
	if (tok) {   /* export's tokenizer.save_pretrained: the patched tokenizer */
		char *p = ft_xasprintf("%s/tokenizer.json", o.export_dir);
		if (ft_tokenizer_save_json(tok, p) < 0) die_lib();
		free(p);
		ft_tokenizer_free(tok);
	}
	if (nad)
		note("merged %zu adapter%s into %s", nad, nad == 1 ? "" : "s", o.export_dir);
	else
		note("exported %s to %s", o.model_dir, o.export_dir);
	for (size_t i = 0; i < nad; i++) free(ad[i]);
	free(ad);
	ft_lfargs_free(&args);
	return 0;
}
