/* dataset.c - ft-tokenize's dataset mode: datasets + chat template + HF
 * tokenizer -> token records (docs/FORMAT.md §2), as llamafactory 0.9.5's
 * get_dataset makes them. */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "data/dataset.h"
#include "ft-tokenize.h"
#include "util/json.h"
#include "data/stage.h"
#include "data/preprocess.h"
#include "util/sha256.h"
#include "format/batch_io.h"
#include "format/stream.h"
#include "text/template.h"
#include "text/tokenizer.h"
#include "cli/newtokens.h"

static const char usage_text[] =
"Usage: ft-tokenize --dataset NAMES --tokenizer PATH [--template NAME] [options] [-o FILE]\n"
"       ft-tokenize --tokenizer PATH --encode|--decode ...   (text mode, see --encode --help)\n"
"\n"
"Turn datasets into token records for one training stage, with exactly the\n"
"ids and labels of LLaMA-Factory 0.9.5's preprocessing.\n"
"\n"
"Input:\n"
"  --dataset NAMES          comma-separated names from DIR/dataset_info.json, or\n"
"                           paths of JSON / JSON lines / text files, or - (stdin)\n"
"  --dataset_dir DIR        where dataset_info.json and the files are (default: data)\n"
"  --formatting FMT         alpaca, sharegpt or text for paths and stdin\n"
"                           (default: detected from the first row's fields)\n"
"  --max_samples N          first N rows of each dataset\n"
"  --mix_strategy S         concat (default), interleave_under, interleave_over\n"
"  --interleave_probs P,..  sampling probabilities for interleaving (seeded)\n"
"  --seed N                 seed for interleaving (default 42)\n"
"\n"
"Tokenizer and template:\n"
"  --tokenizer PATH         model directory, tokenizer.json or tokenizer.model\n"
"  --model_name_or_path P   the same\n"
"  --template NAME|FILE     a built-in template or a template JSON file (default\n"
"                           empty); --template list prints the built-in names\n"
"  --default_system TEXT    replace the template's default system prompt\n"
"  --tool_format NAME       default, qwen, mistral, glm4 or llama3 tool formatting\n"
"  --enable_thinking[=B]    reasoning templates (qwen3, deepseekr1): true (default)\n"
"                           trains on an empty thought where a response has none;\n"
"                           false removes thoughts and puts the empty one in the prompt\n"
"  --preserve_thinking[=B]  keep the thoughts of earlier turns (default false)\n"
"  --add_tokens T,..        tokens added to the tokenizer (as LLaMA-Factory's\n"
"  --add_special_tokens T,.. patch_tokenizer: matched whole, ids after the\n"
"                           vocabulary); give ft-train the same flags\n"
"  --new_special_tokens_config FILE  a YAML mapping token: description whose\n"
"                           tokens are the special ones (instead of the above)\n"
"\n"
"Records:\n"
"  --stage S                pt, sft (default), rm, dpo, kto or ppo (ppo records keep\n"
"                           each row's columns the mapping does not read, such as\n"
"                           \"answer\", as extra_columns for reward commands)\n"
"  --predict_with_generate  prompt records (prompt ids + response) for prediction\n"
"  --cutoff_len N           longest sequence (default 2048), split between prompt\n"
"                           and response per turn as LLaMA-Factory does\n"
"  --train_on_prompt[=B]    labels on prompt tokens too\n"
"  --mask_history[=B]       train on the last turn only\n"
"  --preprocessing_batch_size N  window in which kto pairs each prompt with the\n"
"                           previous example's response (default 1000)\n"
"  --strict                 the first malformed example is an error\n"
"\n"
"Output and cache:\n"
"  -o, --output FILE        output stream (default stdout; - is stdout)\n"
"  -f, --force              write binary records to a terminal\n"
"  --cache_dir DIR          where finished outputs are kept, keyed by a sha256 of\n"
"                           the inputs' contents, the options and the tokenizer\n"
"                           (default $XDG_CACHE_HOME/ft, else ~/.cache/ft)\n"
"  --overwrite_cache        redo the work even when the cache has it\n"
"  --no_cache               neither read nor write the cache\n"
"  -q, --quiet / -v, --verbose   fewer / more messages on stderr\n"
"  -h, --help\n"
"\n"
"Malformed examples (missing column, wrong type, bad role order or count, no\n"
"response, invalid tool JSON) are skipped with a warning naming file and\n"
"index.  A summary goes to stderr: examples read, written, skipped by\n"
"reason, tokens, truncated.\n"
"\n"
"EXIT STATUS\n"
"  0 success; 1 bad data, missing files, I/O errors (or a malformed example with\n"
"  --strict); 2 usage errors.\n"
"\n"
"Example:\n"
"  ft-tokenize --dataset alpaca_en_demo --dataset_dir data --template qwen \\\n"
"      --tokenizer Qwen2.5-0.5B-Instruct --cutoff_len 1024 |\n"
"    ft-pack --cutoff_len 1024 --per_device_train_batch_size 4 -o batches/\n";

typedef struct {
	char *datasets, *dataset_dir, *formatting, *tokenizer, *template, *default_system, *tool_format;
	char *mix, *probs, *output, *cache_dir;
	char *add_tokens, *add_special_tokens, *new_special_tokens_config;
	long long max_samples, cutoff_len, seed, window;
	int stage, predict, train_on_prompt, mask_history, strict, force, overwrite_cache, no_cache;
	int enable_thinking, preserve_thinking;
} opts;

enum { O_DATASET = 256, O_DATASET_DIR, O_FORMATTING, O_TOKENIZER, O_TEMPLATE, O_DEFAULT_SYSTEM,
       O_TOOL_FORMAT, O_MIX, O_PROBS, O_SEED, O_MAX_SAMPLES, O_CUTOFF, O_STAGE, O_PREDICT,
       O_TRAIN_ON_PROMPT, O_MASK_HISTORY, O_WINDOW, O_STRICT, O_CACHE_DIR, O_OVERWRITE, O_NO_CACHE,
       O_ENABLE_THINKING, O_PRESERVE_THINKING, O_ADD_TOKENS, O_ADD_SPECIAL, O_NEW_SPECIAL_CFG };

static void parse_args(int argc, char **argv, opts *o)
{
	static const struct option lo[] = {
		{ "dataset", required_argument, 0, O_DATASET },
		{ "dataset_dir", required_argument, 0, O_DATASET_DIR },
		{ "formatting", required_argument, 0, O_FORMATTING },
		{ "tokenizer", required_argument, 0, O_TOKENIZER },
		{ "model_name_or_path", required_argument, 0, O_TOKENIZER },
		{ "template", required_argument, 0, O_TEMPLATE },
		{ "default_system", required_argument, 0, O_DEFAULT_SYSTEM },
		{ "tool_format", required_argument, 0, O_TOOL_FORMAT },
		{ "mix_strategy", required_argument, 0, O_MIX },
		{ "interleave_probs", required_argument, 0, O_PROBS },
		{ "seed", required_argument, 0, O_SEED },
		{ "max_samples", required_argument, 0, O_MAX_SAMPLES },
		{ "cutoff_len", required_argument, 0, O_CUTOFF },
		{ "stage", required_argument, 0, O_STAGE },
		{ "predict_with_generate", optional_argument, 0, O_PREDICT },
		{ "train_on_prompt", optional_argument, 0, O_TRAIN_ON_PROMPT },
		{ "mask_history", optional_argument, 0, O_MASK_HISTORY },
		{ "enable_thinking", optional_argument, 0, O_ENABLE_THINKING },
		{ "preserve_thinking", optional_argument, 0, O_PRESERVE_THINKING },
		{ "preprocessing_batch_size", required_argument, 0, O_WINDOW },
		{ "add_tokens", required_argument, 0, O_ADD_TOKENS },
		{ "add_special_tokens", required_argument, 0, O_ADD_SPECIAL },
		{ "new_special_tokens_config", required_argument, 0, O_NEW_SPECIAL_CFG },
		{ "strict", no_argument, 0, O_STRICT },
		{ "cache_dir", required_argument, 0, O_CACHE_DIR },
		{ "overwrite_cache", optional_argument, 0, O_OVERWRITE },
		{ "no_cache", no_argument, 0, O_NO_CACHE },
		{ "output", required_argument, 0, 'o' },
		{ "force", no_argument, 0, 'f' },
		{ "quiet", no_argument, 0, 'q' },
		{ "verbose", no_argument, 0, 'v' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 } };
	memset(o, 0, sizeof *o);
	o->dataset_dir = "data";
	o->max_samples = -1;
	o->cutoff_len = 2048;
	o->enable_thinking = 1;   /* llamafactory's data_args default */
	o->seed = 42;
	o->window = 1000;
	o->stage = FT_STAGE_SFT;
	o->mix = "concat";
	int c;
	while ((c = getopt_long(argc, argv, "o:fqvh", lo, NULL)) != -1) {
		const char *name = NULL;
		for (int i = 0; lo[i].name; i++) if (lo[i].val == c) { name = lo[i].name; break; }
		switch (c) {
		case O_DATASET: o->datasets = optarg; break;
		case O_DATASET_DIR: o->dataset_dir = optarg; break;
		case O_FORMATTING: o->formatting = optarg; break;
		case O_TOKENIZER: o->tokenizer = optarg; break;
		case O_TEMPLATE: o->template = optarg; break;
		case O_DEFAULT_SYSTEM: o->default_system = optarg; break;
		case O_TOOL_FORMAT: o->tool_format = optarg; break;
		case O_MIX: o->mix = optarg; break;
		case O_PROBS: o->probs = optarg; break;
		case O_SEED: o->seed = ft_parse_int(name, optarg); break;
		case O_MAX_SAMPLES: o->max_samples = ft_parse_int(name, optarg); break;
		case O_CUTOFF: o->cutoff_len = ft_parse_int(name, optarg); break;
		case O_WINDOW: o->window = ft_parse_int(name, optarg); break;
		case O_STAGE:
			o->stage = ft_stage_parse(optarg);
			if (o->stage < 0) die_usage("--stage: %s", ft_errmsg());
			break;
		case O_PREDICT: o->predict = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_TRAIN_ON_PROMPT: o->train_on_prompt = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_MASK_HISTORY: o->mask_history = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_ENABLE_THINKING: o->enable_thinking = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_PRESERVE_THINKING: o->preserve_thinking = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_OVERWRITE: o->overwrite_cache = optarg ? ft_parse_bool(name, optarg) : 1; break;
		case O_STRICT: o->strict = 1; break;
		case O_CACHE_DIR: o->cache_dir = optarg; break;
		case O_ADD_TOKENS: o->add_tokens = optarg; break;
		case O_ADD_SPECIAL: o->add_special_tokens = optarg; break;
		case O_NEW_SPECIAL_CFG: o->new_special_tokens_config = optarg; break;
		case O_NO_CACHE: o->no_cache = 1; break;
		case 'o': o->output = optarg; break;
		case 'f': o->force = 1; break;
		case 'q': ft_verbose--; break;
		case 'v': ft_verbose++; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		default: die_usage("unknown option");
		}
	}
	if (optind < argc) die_usage("unexpected argument '%s'", argv[optind]);
	if (o->template && !strcmp(o->template, "list")) {
		printf("%s\n", ft_template_names());
		exit(0);
	}
	if (!o->datasets) die_usage("--dataset is required");
	if (!o->tokenizer) die_usage("--tokenizer (or --model_name_or_path) is required");
	if (o->cutoff_len <= 0) die_usage("--cutoff_len must be positive");
	if (o->max_samples < -1 || o->max_samples == 0) die_usage("--max_samples must be positive");
	if (o->window <= 0) die_usage("--preprocessing_batch_size must be positive");
	if (o->seed < 0) die_usage("--seed must not be negative");
	if (o->formatting && strcmp(o->formatting, "alpaca") && strcmp(o->formatting, "sharegpt") &&
	    strcmp(o->formatting, "text"))
		die_usage("--formatting must be alpaca, sharegpt or text");
	if (ft_mix_parse(o->mix) < 0) die_usage("--mix_strategy: %s", ft_errmsg());
	if (o->probs && !strncmp(o->mix, "concat", 6))
		die_usage("--interleave_probs needs --mix_strategy interleave_under or interleave_over");
	if (o->tool_format && ft_tool_format_parse(o->tool_format) < 0) die_usage("--tool_format: %s", ft_errmsg());
	if (o->train_on_prompt && o->stage != FT_STAGE_SFT)
		note("--train_on_prompt only changes sft records");
}

/* ---- datasets -------------------------------------------------------- */

static int formatting_of(const char *s)
{
	if (!s) return FT_FMT_AUTO;
	return !strcmp(s, "alpaca") ? FT_FMT_ALPACA : !strcmp(s, "sharegpt") ? FT_FMT_SHAREGPT : FT_FMT_TEXT;
}

static int registry_has(const char *dir, const char *name)
{
	char *p = ft_xasprintf("%s/dataset_info.json", dir);
	json_t *info = access(p, R_OK) == 0 ? ft_json_load_file(p) : NULL;
	int has = info && json_object_get(info, name) != NULL;
	json_decref(info);
	free(p);
	return has;
}

/* Split "a,b" into trimmed names. */
static size_t split_list(const char *s, char ***out)
{
	char *copy = ft_xstrdup(s), *save = NULL;
	size_t n = 0;
	*out = NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ') t++;
		size_t l = strlen(t);
		while (l && t[l - 1] == ' ') t[--l] = 0;
		if (!l) continue;
		*out = ft_xrealloc(*out, (n + 1) * sizeof **out);
		(*out)[n++] = ft_xstrdup(t);
	}
	free(copy);
	return n;
}

static void resolve_all(const opts *o, char **names, size_t n, ft_dataset_attr *attrs)
{
	for (size_t i = 0; i < n; i++) {
		const char *nm = names[i];
		struct stat st;
		if (!strcmp(nm, "-")) {
			ft_dataset_from_path("-", formatting_of(o->formatting), &attrs[i]);
		} else if (registry_has(o->dataset_dir, nm)) {
			if (ft_dataset_resolve(o->dataset_dir, nm, &attrs[i]) < 0) die_lib();
			if (o->formatting) note("--formatting applies to paths; '%s' uses its registry entry", nm);
		} else if (stat(nm, &st) == 0) {
			ft_dataset_from_path(nm, formatting_of(o->formatting), &attrs[i]);
		} else {
			die("dataset '%s' is neither defined in %s/dataset_info.json nor a file", nm, o->dataset_dir);
		}
		/* prompt records keep the other columns for reward commands */
		attrs[i].keep_extra = o->stage == FT_STAGE_PPO || o->predict;
	}
}

/* Read, count and mix the datasets as llamafactory's _get_merged_dataset. */
static void load_datasets(const opts *o, char **names, size_t n, ft_dataset_attr *attrs, ft_dataset *merged)
{
	ft_dataset *ds = ft_xcalloc(n, sizeof *ds);
	for (size_t i = 0; i < n; i++) {
		long long max = o->max_samples;
		if (attrs[i].num_samples >= 0) {
			warn("dataset '%s': num_samples %lld takes the first rows (cycling), not a random sample "
			     "as llamafactory does", names[i], attrs[i].num_samples);
		}
		if (ft_dataset_read(&attrs[i], attrs[i].num_samples >= 0 ? -1 : max, &ds[i]) < 0) die_lib();
		if (attrs[i].num_samples >= 0) {   /* then max_samples, as llamafactory */
			ft_dataset_take(&ds[i], (size_t)attrs[i].num_samples);
			if (max >= 0 && (size_t)max < ds[i].n) ft_dataset_take(&ds[i], (size_t)max);
		}
		int pairwise = o->stage == FT_STAGE_RM || o->stage == FT_STAGE_DPO;
		if (attrs[i].ranking != pairwise)
			die("dataset '%s' %s a ranking dataset: it cannot be used for stage %s (LLaMA-Factory: "
			    "The dataset is not applicable in the current training stage.)", names[i],
			    attrs[i].ranking ? "is" : "is not", ft_stage_name(o->stage));
		note("%s: %zu rows", names[i], ds[i].n);
		ft_dataset_attr_free(&attrs[i]);
	}
	free(attrs);
	double *probs = NULL;
	if (o->probs) {
		char **p;
		size_t np = split_list(o->probs, &p);
		if (np != n) die_usage("--interleave_probs has %zu values for %zu datasets", np, n);
		probs = ft_xcalloc(n, sizeof *probs);
		for (size_t i = 0; i < n; i++) { probs[i] = ft_parse_double("interleave_probs", p[i]); free(p[i]); }
		free(p);
	}
	if (ft_dataset_mix(ds, n, ft_mix_parse(o->mix), probs, (uint64_t)o->seed, merged) < 0) die_lib();
	free(probs);
	free(ds);
}

/* ---- records --------------------------------------------------------- */

typedef struct {
	ft_prep_rec *v;
	char **label_text;
	json_t **extra;          /* ppo/prediction records: the row's extra columns */
	size_t n, cap;
	long long read, skipped[FT_BAD_COUNT_], tokens, label_tokens, truncated;
} records;

static void count_tokens(records *rs, const ft_prep_rec *r, int stage)
{
	rs->tokens += (long long)(r->ids.n + r->ids2.n);
	const ft_i32vec *labs[2] = { &r->labels, &r->labels2 };
	if (stage == FT_STAGE_PT) { rs->label_tokens += (long long)r->ids.n; return; }
	if (stage == FT_STAGE_PPO) return;
	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < labs[k]->n; i++) rs->label_tokens += labs[k]->v[i] != -100;
}

static void process(const opts *o, ft_prep *prep, ft_dataset *d, records *rs)
{
	for (size_t i = 0; i < d->n; i++) {
		ft_example *e = &d->v[i];
		/* kto: the previous example of the window (the window's last for its first) */
		size_t w0 = i / (size_t)o->window * (size_t)o->window;
		size_t wend = w0 + (size_t)o->window < d->n ? w0 + (size_t)o->window : d->n;
		const ft_example *kl = &d->v[i == w0 ? wend - 1 : i - 1];
		ft_prep_rec r;
		rs->read++;
		int rc = ft_prep_example(prep, e, kl, &r);
		if (rc < 0) die("%s: example %zu: %s", e->source, e->index, ft_errmsg());
		if (rc > 0) {
			if (o->strict) die("%s: example %zu: %s: %s", e->source, e->index, ft_bad_reason_name(e->bad),
					   e->why ? e->why : "");
			if (ft_verbose > 0)
				warn("%s: example %zu skipped: %s%s%s", e->source, e->index, ft_bad_reason_name(e->bad),
				     e->why ? ": " : "", e->why ? e->why : "");
			rs->skipped[e->bad]++;
			ft_prep_rec_free(&r);
			continue;
		}
		if (rs->n == rs->cap) {
			rs->cap = rs->cap ? rs->cap * 2 : 1024;
			rs->v = ft_xrealloc(rs->v, rs->cap * sizeof *rs->v);
			rs->label_text = ft_xrealloc(rs->label_text, rs->cap * sizeof *rs->label_text);
			rs->extra = ft_xrealloc(rs->extra, rs->cap * sizeof *rs->extra);
		}
		if (e->extra && ft_extra_columns_check(e->extra) < 0)
			die("%s: example %zu: %s", e->source, e->index, ft_errmsg());
		rs->extra[rs->n] = json_incref(e->extra);
		rs->label_text[rs->n] = e->n_response == 1 ? ft_xstrdup(e->response[0].content) : ft_xstrdup("");
		rs->truncated += r.truncated;
		count_tokens(rs, &r, o->stage);
		rs->v[rs->n++] = r;
		if (ft_progress_enabled() && rs->n % 1000 == 0)
			ft_progress("%zu of %zu examples", i + 1, d->n);
	}
	ft_progress_done();
}

static json_t *counts_json(const records *rs)
{
	json_t *c = json_object(), *sk = json_object();
	long long skipped = 0;
	for (int i = 1; i < FT_BAD_COUNT_; i++)
		if (rs->skipped[i]) {
			json_object_set_new(sk, ft_bad_reason_name(i), json_integer(rs->skipped[i]));
			skipped += rs->skipped[i];
		}
	json_object_set_new(c, "examples", json_integer(rs->read));
	json_object_set_new(c, "records", json_integer((json_int_t)rs->n));
	json_object_set_new(c, "skipped", json_integer(skipped));
	json_object_set_new(c, "skipped_by_reason", sk);
	json_object_set_new(c, "tokens", json_integer(rs->tokens));
	json_object_set_new(c, "label_tokens", json_integer(rs->label_tokens));
	json_object_set_new(c, "truncated", json_integer(rs->truncated));
	return c;
}

static json_t *make_header(const opts *o, const ft_tokenizer *tok, const ft_template *t, const ft_prep *prep,
			   char **names, size_t n, const records *rs)
{
	const ft_tokenizer_info *inf = ft_tokenizer_info_get(tok);
	json_t *meta = json_object(), *ds = json_array();
	for (size_t i = 0; i < n; i++) json_array_append_new(ds, json_string(names[i]));
	/* 2: ppo and prediction records carry extra_columns */
	json_object_set_new(meta, "record_version", json_integer(FT_TOKENS_RECORD_VERSION));
	json_object_set_new(meta, "tokenizer", json_string(ft_tokenizer_identity(tok)));
	json_object_set_new(meta, "template", json_string(ft_template_name(t)));
	json_object_set_new(meta, "stage", json_string(ft_stage_name(o->stage)));
	json_object_set_new(meta, "predict", json_boolean(o->predict));
	json_object_set_new(meta, "vocab_size", json_integer((json_int_t)ft_tokenizer_vocab_size(tok)));
	int32_t ids[3] = { ft_prep_bos_id(prep), ft_prep_eos_id(prep), ft_prep_pad_id(prep) };
	const char *keys[3] = { "bos_id", "eos_id", "pad_id" };
	for (int i = 0; i < 3; i++)
		json_object_set_new(meta, keys[i], ids[i] >= 0 ? json_integer(ids[i]) : json_null());
	json_object_set_new(meta, "eos_token", json_string(ft_prep_eos_token(prep) ? ft_prep_eos_token(prep) : ""));
	json_object_set_new(meta, "add_bos_token", json_boolean(inf->add_bos));
	json_object_set_new(meta, "cutoff_len", json_integer(o->cutoff_len));
	json_object_set_new(meta, "train_on_prompt", json_boolean(o->train_on_prompt));
	json_object_set_new(meta, "mask_history", json_boolean(o->mask_history));
	if (ft_template_is_reasoning(t)) {
		json_object_set_new(meta, "enable_thinking", json_boolean(o->enable_thinking));
		json_object_set_new(meta, "preserve_thinking", json_boolean(o->preserve_thinking));
	}
	json_object_set_new(meta, "datasets", ds);
	json_object_set_new(meta, "counts", counts_json(rs));
	json_t *h = json_object();
	json_object_set_new(h, "kind", json_string("tokens"));
	json_object_set_new(h, "producer", json_string("ft-tokenize"));
	json_object_set_new(h, "meta", meta);
	return h;
}

static void write_records(const opts *o, const char *path, const json_t *header, const records *rs)
{
	ft_writer_opts wo = { .path = path };
	ft_writer *w = ft_writer_open(&wo, header);
	if (!w) die_lib();
	for (size_t i = 0; i < rs->n; i++) {
		const ft_prep_rec *r = &rs->v[i];
		switch (o->stage) {
		case FT_STAGE_PT:
			ft_w_begin(w, 1);
			ft_w_i32s(w, "input_ids", r->ids.v, r->ids.n);
			break;
		case FT_STAGE_RM: case FT_STAGE_DPO:
			ft_w_begin(w, 4);
			ft_w_i32s(w, "chosen_input_ids", r->ids.v, r->ids.n);
			ft_w_i32s(w, "chosen_labels", r->labels.v, r->labels.n);
			ft_w_i32s(w, "rejected_input_ids", r->ids2.v, r->ids2.n);
			ft_w_i32s(w, "rejected_labels", r->labels2.v, r->labels2.n);
			break;
		case FT_STAGE_KTO:
			ft_w_begin(w, 5);
			ft_w_i32s(w, "input_ids", r->ids.v, r->ids.n);
			ft_w_i32s(w, "labels", r->labels.v, r->labels.n);
			ft_w_i32s(w, "kl_input_ids", r->ids2.v, r->ids2.n);
			ft_w_i32s(w, "kl_labels", r->labels2.v, r->labels2.n);
			ft_w_bool(w, "kto_tag", r->kto_tag);
			break;
		default:
			if (o->stage == FT_STAGE_PPO || o->predict) {
				ft_w_begin(w, 3 + (rs->extra[i] != NULL));
				ft_w_i32s(w, "input_ids", r->ids.v, r->ids.n);
				ft_w_i32s(w, "label_ids", r->labels.v, r->labels.n);
				ft_w_str(w, "label_text", rs->label_text[i]);
				if (rs->extra[i]) ft_w_json(w, "extra_columns", rs->extra[i]);
			} else {
				ft_w_begin(w, 2);
				ft_w_i32s(w, "input_ids", r->ids.v, r->ids.n);
				ft_w_i32s(w, "labels", r->labels.v, r->labels.n);
			}
		}
		if (ft_w_end(w) < 0) { ft_writer_abort(w); die_lib(); }
	}
	if (ft_writer_close(w) < 0) die_lib();
}

/* ---- summary and cache ----------------------------------------------- */

static void summary(const json_t *c, const char *how)
{
	if (ft_verbose < 1) return;
	fprintf(stderr, "%s: %s%lld examples read, %lld records written, %lld skipped", ft_progname, how,
		ft_json_int(c, "examples", 0), ft_json_int(c, "records", 0), ft_json_int(c, "skipped", 0));
	const json_t *sk = json_object_get(c, "skipped_by_reason");
	const char *k;
	json_t *v;
	int first = 1;
	json_object_foreach((json_t *)sk, k, v) {
		fprintf(stderr, "%s%s: %lld", first ? " (" : ", ", k, (long long)json_integer_value(v));
		first = 0;
	}
	fprintf(stderr, "%s, %lld tokens (%lld with labels), %lld truncated\n", first ? "" : ")",
		ft_json_int(c, "tokens", 0), ft_json_int(c, "label_tokens", 0), ft_json_int(c, "truncated", 0));
}

static char *default_cache_dir(void)
{
	const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
	if (x && *x) return ft_xasprintf("%s/ft", x);
	if (h && *h) return ft_xasprintf("%s/.cache/ft", h);
	return NULL;
}

static void hash_file(ft_sha256_ctx *c, const char *path)
{
	char hex[65];
	struct stat st;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {   /* a directory dataset: its name */
		ft_sha256_update(c, path, strlen(path));
		return;
	}
	if (ft_sha256_file(path, hex) < 0) die_lib();
	ft_sha256_update(c, hex, 64);
}

/* sha256 over every input's contents, the options and the tokenizer; NULL
 * when the output cannot be cached (stdin input). */
static char *cache_key(const opts *o, const ft_tokenizer *tok, int argc, char **argv)
{
	char **names;
	size_t n = split_list(o->datasets, &names);
	ft_sha256_ctx c;
	ft_sha256_init(&c);
	/* the record version: a cache of older records is not reused */
	char ver[32];
	int vl = snprintf(ver, sizeof ver, "ft-tokenize %d\n", FT_TOKENS_RECORD_VERSION);
	ft_sha256_update(&c, ver, (size_t)vl);
	int cacheable = 1;
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(names[i], "-")) cacheable = 0;
		else if (registry_has(o->dataset_dir, names[i])) {
			char *p = ft_xasprintf("%s/dataset_info.json", o->dataset_dir);
			hash_file(&c, p);
			free(p);
			ft_dataset_attr a;
			if (ft_dataset_resolve(o->dataset_dir, names[i], &a) < 0) die_lib();
			hash_file(&c, a.path);
			ft_dataset_attr_free(&a);
		} else {
			hash_file(&c, names[i]);
		}
		free(names[i]);
	}
	free(names);
	if (o->template && (strchr(o->template, '/') || strstr(o->template, ".json"))) hash_file(&c, o->template);
	const char *id = ft_tokenizer_identity(tok);
	ft_sha256_update(&c, id, strlen(id) + 1);
	/* every option that changes records (output, cache and verbosity do not) */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int skip_next = 0, skip = !strcmp(a, "-q") || !strcmp(a, "-v") || !strcmp(a, "-f") ||
			!strncmp(a, "--quiet", 7) || !strncmp(a, "--verbose", 9) || !strncmp(a, "--force", 7) ||
			!strncmp(a, "--overwrite_cache", 17) || !strcmp(a, "--no_cache") || !strcmp(a, "--strict");
		if (!strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--cache_dir")) skip = skip_next = 1;
		if (!strncmp(a, "--output=", 9) || !strncmp(a, "--cache_dir=", 12) || !strncmp(a, "-o", 2)) skip = 1;
		if (!skip) ft_sha256_update(&c, a, strlen(a) + 1);
		if (skip_next) i++;
	}
	uint8_t d[32];
	char hex[65];
	ft_sha256_final(&c, d);
	ft_hex(d, 32, hex);
	return cacheable ? ft_xstrdup(hex) : NULL;
}

static void copy_out(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb");
	if (!in) die("%s:", from);
	ft_atomic a = { 0 };
	FILE *out = stdout;
	if (!ft_is_stdio(to)) {
		if (ft_atomic_open(&a, to) < 0) die_lib();
		out = a.fp;
	}
	char buf[1 << 16];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, out) != n) {
			if (out != stdout) ft_atomic_abort(&a);
			die("%s: write error:", ft_display_name(to));
		}
	if (ferror(in)) die("%s: read error", from);
	fclose(in);
	if (out != stdout && ft_atomic_commit(&a) < 0) die_lib();
}

/* 1 when the cached output was copied to the output. */
static int use_cache(const char *cached, const char *output)
{
	if (access(cached, R_OK) != 0) return 0;
	ft_reader *r = ft_reader_open(cached);
	if (!r) { warn("ignoring the unreadable cache file %s: %s", cached, ft_errmsg()); return 0; }
	json_t *counts = json_deep_copy(json_object_get(json_object_get(ft_reader_header(r), "meta"), "counts"));
	ft_reader_close(r);
	copy_out(cached, output);
	char *how = ft_xasprintf("reused %s (--overwrite_cache to redo): ", cached);
	summary(counts, how);
	free(how);
	json_decref(counts);
	return 1;
}

/* LLaMA-Factory's patch_tokenizer: the new tokens before any record (the
 * stream's tokenizer identity and vocab_size are the extended ones) */
static void add_new_tokens(const opts *o, ft_tokenizer *tok)
{
	ft_new_tokens nt;
	int added;
	if (ft_new_tokens_parse(&nt, o->add_tokens, o->add_special_tokens, o->new_special_tokens_config) < 0)
		die_lib();
	if (nt.both)
		warn("Both 'new_special_tokens_config' and 'add_special_tokens' are set: using the tokens from %s",
		     o->new_special_tokens_config);
	if (ft_new_tokens_apply(&nt, tok, &added) < 0) die_lib();
	if (ft_new_tokens_any(&nt))
		note("added %d token%s: vocab_size %zu", added, added == 1 ? "" : "s", ft_tokenizer_vocab_size(tok));
	ft_new_tokens_free(&nt);
}

/* ---- main -------------------------------------------------------------- */

int tokenize_dataset_main(int argc, char **argv)
{
	opts o;
	parse_args(argc, argv, &o);
	ft_atomic_install_signal_cleanup();
	const char *output = o.output ? o.output : "-";
	struct stat ost;
	if (!ft_is_stdio(output) && stat(output, &ost) == 0 && !S_ISREG(ost.st_mode)) {
		/* a device or pipe: write into it, never rename over it */
		if (!freopen(output, "wb", stdout)) die("%s:", output);
		output = "-";
	}
	if (ft_is_stdio(output)) ft_check_binary_output(stdout, o.force);
	char **names;
	size_t n = split_list(o.datasets, &names);
	if (!n) die_usage("--dataset is empty");
	ft_dataset_attr *attrs = ft_xcalloc(n, sizeof *attrs);
	resolve_all(&o, names, n, attrs);

	ft_template *t = ft_template_open(o.template ? o.template : "empty");
	if (!t) {   /* a bad name is a usage error, a bad file a data error */
		if (o.template && (strchr(o.template, '/') || strstr(o.template, ".json"))) die_lib();
		die_usage("--template: %s", ft_errmsg());
	}
	if (!o.template) warn("no --template: using 'empty' (llamafactory would parse the tokenizer's chat template)");
	if (o.default_system) ft_template_set_default_system(t, o.default_system);
	if (o.tool_format) ft_template_set_tool_format(t, ft_tool_format_parse(o.tool_format));
	ft_template_set_thinking(t, o.enable_thinking, o.preserve_thinking);
	if (o.train_on_prompt && ft_template_efficient_eos(t))
		die_usage("template '%s' does not support --train_on_prompt (efficient_eos)", ft_template_name(t));
	ft_tokenizer *tok = ft_tokenizer_load(o.tokenizer);
	if (!tok) die_lib();
	add_new_tokens(&o, tok);
	ft_prep_opts po = { .stage = o.stage, .predict = o.predict, .cutoff_len = o.cutoff_len,
			    .train_on_prompt = o.train_on_prompt, .mask_history = o.mask_history };
	ft_prep *prep = ft_prep_new(tok, t, &po);
	if (!prep) die_lib();
	if (ft_prep_eos_warning(prep)) warn("%s", ft_prep_eos_warning(prep));

	char *cdir = o.no_cache ? NULL : o.cache_dir ? ft_xstrdup(o.cache_dir) : default_cache_dir();
	char *key = cdir ? cache_key(&o, tok, argc, argv) : NULL;
	char *cached = key ? ft_xasprintf("%s/tokens-%s.ftt.zst", cdir, key) : NULL;
	if (cached && !o.overwrite_cache && use_cache(cached, output)) goto done;

	ft_dataset d;
	load_datasets(&o, names, n, attrs, &d);
	attrs = NULL;
	records rs = { 0 };
	process(&o, prep, &d, &rs);
	json_t *header = make_header(&o, tok, t, prep, names, n, &rs);
	/* LLaMA-Factory: "Cannot find valid samples" (and no output) */
	if (rs.n == 0)
		die("Cannot find valid samples: every one of the %lld examples was skipped (run with -v "
		    "for the reasons, e.g. a column missing from the data or from dataset_info.json)",
		    rs.read);
	if (cached && ft_mkdirs(cdir) == 0) {
		write_records(&o, cached, header, &rs);
		copy_out(cached, output);
		note("cached in %s", cached);
	} else {
		if (cached) warn("cannot create the cache directory %s: %s", cdir, ft_errmsg());
		write_records(&o, output, header, &rs);
	}
	summary(json_object_get(json_object_get(header, "meta"), "counts"), "");
	json_decref(header);
	for (size_t i = 0; i < rs.n; i++) { ft_prep_rec_free(&rs.v[i]); free(rs.label_text[i]); json_decref(rs.extra[i]); }
	free(rs.v);
	free(rs.label_text);
	free(rs.extra);
	ft_dataset_free(&d);
done:
	if (attrs)
		for (size_t i = 0; i < n; i++) ft_dataset_attr_free(&attrs[i]);
	free(attrs);
	for (size_t i = 0; i < n; i++) free(names[i]);
	free(names);
	free(cached);
	free(key);
	free(cdir);
	ft_prep_free(prep);
	ft_tokenizer_free(tok);
	ft_template_free(t);
	return 0;
}
