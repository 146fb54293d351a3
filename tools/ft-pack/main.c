/* ft-pack - token records -> shuffled fixed-shape micro-batches, sharded,
 * with a manifest.  Options, input/output choice and statistics live
 * here; the packing itself is lib/data/pack.c. */
#include "ft-pack.h"
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "format/stream.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
"Usage: ft-pack [OPTION]... [FILE]...\n"
"Turn token records (ft-tokenize's output) into shuffled micro-batches of\n"
"shape [per_device_train_batch_size, seq_len] that ft-train reads as they are.\n"
"With no FILE, or when FILE is -, read standard input.  Several FILEs are\n"
"read as one dataset; they must come from the same tokenizer and stage.\n"
"\n"
"Layout:\n"
"  --cutoff_len N            longest row in tokens (default: the input's, as\n"
"                            ft-tokenize wrote it, else 2048); longer sequences\n"
"                            are truncated with a warning.  With --packing,\n"
"                            LLaMA-Factory tokenizes with cutoff_len - 1: run\n"
"                            ft-tokenize --cutoff_len N-1 for its exact rows\n"
"  --per_device_train_batch_size N\n"
"                            examples (pairs for rm/dpo, rows when packed)\n"
"                            per batch (default 8)\n"
"  --per_device_eval_batch_size N\n"
"                            the same for the validation set (default 8, as\n"
"                            the HF Trainer)\n"
"  --pad_to_multiple_of N    padded layout: round each batch's length up to a\n"
"                            multiple of N (default 8; 1 = none)\n"
"  --packing [BOOL]          concatenate examples into rows of cutoff_len\n"
"                            (default: on for pt, off otherwise)\n"
"  --neat_packing [BOOL]     packing with segment ids and per-example position\n"
"                            ids, so attention never crosses examples\n"
"  --group_by_length [BOOL]  batch examples of similar length (less padding)\n"
"  --preprocessing_batch_size N\n"
"                            examples per packing window (default 1000, as\n"
"                            LLaMA-Factory; pt drops each window's tail)\n"
"Data:\n"
"  --stage STAGE             check that the records are for this stage\n"
"  --max_samples N           use the first N records of each input\n"
"  --val_size X              fraction (0 < X < 1) or count (X >= 1) of examples\n"
"                            held out as a validation set\n"
"  --seed N                  shuffle and split seed (default 42)\n"
"  --data_seed N             the shuffle's own seed (HF's data_seed; the split keeps --seed)\n"
"  --shuffle BOOL            shuffle the training batches (default true)\n"
"  --num_train_epochs X      write ceil(X) epochs of training batches, each\n"
"                            reshuffled (seed + epoch) as the HF Trainer's\n"
"                            sampler does; ft-train reads epoch e from the\n"
"                            e-th (default 1: every epoch repeats the order)\n"
"  --dataloader_drop_last [BOOL]\n"
"                            drop the last incomplete batch (default false)\n"
"Output:\n"
"  -o, --output FILE         one batch stream to FILE (default -, stdout); a\n"
"                            directory (DIR/ or existing) means --output_dir\n"
"      --val_output FILE     the validation stream, with -o\n"
"      --output_dir DIR      shards DIR/shard-NNNNN.ftb.zst, DIR/manifest.json,\n"
"                            validation in DIR/val/\n"
"      --shard_size SIZE     with --output_dir: start a new shard after SIZE\n"
"                            compressed bytes (500MB, 2GB) or N batches (64batches)\n"
"      --overwrite_output_dir [BOOL]\n"
"                            replace an earlier ft-pack output in DIR\n"
"  -f, --force               write binary data to a terminal\n"
"  -q, --quiet               no statistics;  -v, --verbose: more\n"
"  -h, --help                show this help\n"
"\n"
"Statistics (examples, batches, tokens, label tokens, padding and fill\n"
"ratios, truncations) go to standard error.  Examples are held in memory as\n"
"int32 ids and labels: about 8 bytes per token (4 for pt) plus 16 per\n"
"example; there is no external pass, so the input must fit in memory.\n"
"\n"
"EXIT STATUS\n"
"  0  success\n"
"  1  bad, truncated or mismatched input, or an I/O error\n"
"  2  usage error\n"
"\n"
"Example:\n"
"  ft-tokenize --dataset alpaca_en_demo --dataset_dir data --template qwen \\\n"
"      --tokenizer Qwen2.5-0.5B-Instruct --cutoff_len 1024 |\n"
"    ft-pack --per_device_train_batch_size 4 --val_size 0.1 -o batches/\n"
"  ft-pack --packing --cutoff_len 1024 c4.tok.zst -o - | ft-cat | head -c 300\n");
}

enum {
	O_CUTOFF = 256, O_BS, O_PADM, O_PACKING, O_NEAT, O_GROUP, O_WINDOW, O_STAGE, O_MAX,
	O_VAL, O_SEED, O_DATA_SEED, O_SHUFFLE, O_EPOCHS, O_DROP, O_VALOUT, O_DIR, O_SHARD, O_OVERWRITE, O_EBS,
};

static const struct option long_opts[] = {
	{ "cutoff_len", required_argument, 0, O_CUTOFF },
	{ "per_device_train_batch_size", required_argument, 0, O_BS },
	{ "per_device_eval_batch_size", required_argument, 0, O_EBS },
	{ "pad_to_multiple_of", required_argument, 0, O_PADM },
	{ "packing", optional_argument, 0, O_PACKING },
	{ "neat_packing", optional_argument, 0, O_NEAT },
	{ "group_by_length", optional_argument, 0, O_GROUP },
	{ "preprocessing_batch_size", required_argument, 0, O_WINDOW },
	{ "stage", required_argument, 0, O_STAGE },
	{ "max_samples", required_argument, 0, O_MAX },
	{ "val_size", required_argument, 0, O_VAL },
	{ "seed", required_argument, 0, O_SEED },
	{ "data_seed", required_argument, 0, O_DATA_SEED },
	{ "shuffle", optional_argument, 0, O_SHUFFLE },
	{ "num_train_epochs", required_argument, 0, O_EPOCHS },
	{ "dataloader_drop_last", optional_argument, 0, O_DROP },
	{ "drop_last", optional_argument, 0, O_DROP },
	{ "output", required_argument, 0, 'o' },
	{ "val_output", required_argument, 0, O_VALOUT },
	{ "output_dir", required_argument, 0, O_DIR },
	{ "shard_size", required_argument, 0, O_SHARD },
	{ "overwrite_output_dir", optional_argument, 0, O_OVERWRITE },
	{ "force", no_argument, 0, 'f' },
	{ "quiet", no_argument, 0, 'q' },
	{ "verbose", no_argument, 0, 'v' },
	{ "help", no_argument, 0, 'h' },
	{ 0, 0, 0, 0 },
};

static int pos_int(const char *name, const char *s, long long lo)
{
	long long v = ft_parse_int(name, s);
	if (v < lo || v > (1 << 30)) die_usage("--%s: %s is out of range (at least %lld)", name, s, lo);
	return (int)v;
}

static void parse_shard_size(pack_opts *o, const char *s)
{
	char *end;
	unsigned long long n = strtoull(s, &end, 10);
	while (*end == ' ') end++;
	if (end != s && (!strcasecmp(end, "batches") || !strcasecmp(end, "batch"))) {
		if (n == 0) die_usage("--shard_size: '%s' must be at least one batch", s);
		o->shard_batches = n;
		return;
	}
	o->shard_bytes = ft_parse_size("shard_size", s);
	if (o->shard_bytes == 0) die_usage("--shard_size: '%s' must be more than 0", s);
}

static void parse_args(int argc, char **argv, pack_opts *o)
{
	*o = (pack_opts){ .stage = -1, .max_samples = -1, .packing = -1, .cutoff_len = 0,
			  .batch_size = 8, .eval_batch_size = 8, .pad_to_multiple_of = 8, .window = 1000, .shuffle = 1,
			  .seed = 42, .data_seed = -1, .epochs = 1 };
	int c;
	while ((c = getopt_long(argc, argv, "o:fqvh", long_opts, NULL)) != -1) {
		switch (c) {
		case O_CUTOFF: o->cutoff_len = pos_int("cutoff_len", optarg, 2); break;
		case O_BS: o->batch_size = pos_int("per_device_train_batch_size", optarg, 1); break;
		case O_EBS: o->eval_batch_size = pos_int("per_device_eval_batch_size", optarg, 1); break;
		case O_PADM: o->pad_to_multiple_of = pos_int("pad_to_multiple_of", optarg, 1); break;
		case O_PACKING: o->packing = ft_optarg_bool("packing", argc, argv); break;
		case O_NEAT: o->neat_packing = ft_optarg_bool("neat_packing", argc, argv); break;
		case O_GROUP: o->group_by_length = ft_optarg_bool("group_by_length", argc, argv); break;
		case O_WINDOW: o->window = pos_int("preprocessing_batch_size", optarg, 1); break;
		case O_STAGE:
			if ((o->stage = ft_stage_parse(optarg)) < 0) die_usage("--stage: %s", ft_errmsg());
			break;
		case O_MAX: o->max_samples = ft_parse_int("max_samples", optarg);
			if (o->max_samples < 1) die_usage("--max_samples: must be at least 1");
			break;
		case O_VAL: o->val_size = ft_parse_double("val_size", optarg);
			if (o->val_size < 0 || (o->val_size >= 1 && o->val_size != (double)(long long)o->val_size))
				die_usage("--val_size: '%s' is neither a fraction in [0, 1) nor a count", optarg);
			break;
		case O_SEED: {
			long long v = ft_parse_int("seed", optarg);
			if (v < 0) die_usage("--seed: must not be negative");
			o->seed = (uint64_t)v;
			break;
		}
		case O_DATA_SEED:
			if ((o->data_seed = ft_parse_int("data_seed", optarg)) < 0)
				die_usage("--data_seed: must not be negative");
			break;
		case O_SHUFFLE: o->shuffle = ft_optarg_bool("shuffle", argc, argv); break;
		case O_EPOCHS: {
			double x = ft_parse_double("num_train_epochs", optarg);
			if (!(x > 0) || x > 100000)
				die_usage("--num_train_epochs: '%s' must be more than 0 (and at most 100000)", optarg);
			o->epochs = (int)ceil(x);
			break;
		}
		case O_DROP: o->drop_last = ft_optarg_bool("dataloader_drop_last", argc, argv); break;
		case 'o': o->output = optarg; break;
		case O_VALOUT: o->val_output = optarg; break;
		case O_DIR: o->output_dir = optarg; break;
		case O_SHARD: parse_shard_size(o, optarg); break;
		case O_OVERWRITE: o->overwrite = ft_optarg_bool("overwrite_output_dir", argc, argv); break;
		case 'f': o->force = 1; break;
		case 'q': ft_verbose--; break;
		case 'v': ft_verbose++; break;
		case 'h': usage(stdout); exit(0);
		default: die_usage("unknown option");
		}
	}
	static const char *stdin_only[] = { "-" };
	if (optind < argc) {
		o->inputs = (const char **)argv + optind;
		o->n_inputs = (size_t)(argc - optind);
	} else {
		if (ft_stdin_is_terminal()) { usage(stderr); exit(FT_EXIT_USAGE); }
		o->inputs = stdin_only;
		o->n_inputs = 1;
	}
	if (o->output && o->output_dir) die_usage("use either -o or --output_dir, not both");
	struct stat st;
	size_t ol = o->output ? strlen(o->output) : 0;
	if (ol && (o->output[ol - 1] == '/' || (stat(o->output, &st) == 0 && S_ISDIR(st.st_mode)))) {
		o->output_dir = o->output;   /* -o batches/ */
		o->output = NULL;
	}
	if ((o->shard_bytes || o->shard_batches) && !o->output_dir)
		die_usage("--shard_size needs --output_dir");
	if (o->val_output && o->output_dir) die_usage("--val_output goes with -o; --output_dir writes DIR/val/");
	if (o->val_output && o->val_size <= 1e-6) die_usage("--val_output without --val_size");
	if (!o->output_dir && !o->output) o->output = "-";
	if (o->val_size > 1e-6 && !o->output_dir && !o->val_output)
		die_usage("--val_size with -o needs --val_output FILE (or use --output_dir)");
	if (o->val_output && ft_is_stdio(o->val_output) && ft_is_stdio(o->output))
		die_usage("-o and --val_output cannot both be standard output");
}

/* ft-pack's own names in an output directory */
static int pack_entry(const char *n)
{
	size_t l = strlen(n);
	return !strcmp(n, "manifest.json") || !strcmp(n, "val") ||
	       (!strncmp(n, "shard-", 6) && l > 8 && !strcmp(n + l - 8, ".ftb.zst"));
}

/* --output_dir: 1 when it holds an earlier ft-pack output to replace
 * (--overwrite_output_dir), 0 when absent or empty.  The output itself
 * is written into a temporary sibling and renamed when complete
 * (main), so a killed run never leaves shards that look usable. */
static int check_dir(const pack_opts *o)
{
	const char *d = o->output_dir;
	DIR *dir = opendir(d);
	if (!dir) {
		if (errno != ENOENT) die("%s:", d);
		return 0;
	}
	struct dirent *de;
	const char *foreign = NULL;
	int busy = 0;
	while ((de = readdir(dir)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			busy = 1;
			if (!foreign && !pack_entry(de->d_name)) foreign = ft_xstrdup(de->d_name);
		}
	closedir(dir);
	if (!busy) return 0;
	if (!o->overwrite)
		die("%s: output directory is not empty (use --overwrite_output_dir to replace it)", d);
	if (foreign)
		die("%s: --overwrite_output_dir replaces the whole directory, and %s in it was not "
		    "written by ft-pack: move it, or choose another --output_dir", d, foreign);
	return 1;
}

static void resolve_layout(pack_opts *o, int stage, ft_batch_opts *bo)
{
	if (o->neat_packing) o->packing = 1;
	if (o->packing < 0) o->packing = stage == FT_STAGE_PT;
	if (o->packing && (stage == FT_STAGE_KTO || stage == FT_STAGE_PPO))
		die_usage("--packing is not available for %s: its records are batched one per row",
			  ft_stage_name(stage));
	if (o->packing && !o->neat_packing && ft_stage_pairwise(stage))
		die_usage("--packing for %s needs --neat_packing, so that each pair's sequences stay apart",
			  ft_stage_name(stage));
	*bo = (ft_batch_opts){
		.stage = stage,
		.layout = o->neat_packing ? FT_LAYOUT_NEAT : o->packing ? FT_LAYOUT_PACKED : FT_LAYOUT_PADDED,
		.batch_size = o->batch_size, .pad_to_multiple_of = o->pad_to_multiple_of,
		.seq_len = o->cutoff_len, .bos_id = -1, .drop_last = o->drop_last,
	};
}

static void stat_line(const char *fmt, ...) FT_PRINTF(1, 2);
static void stat_line(const char *fmt, ...)
{
	if (ft_verbose < 1) return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", ft_progname);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static double pct(int64_t a, int64_t b) { return b ? 100.0 * (double)a / (double)b : 0.0; }

static void report_split(const char *name, const ft_pack_totals *t)
{
	stat_line("%s: %lld examples in %lld batches (seq_len up to %d), %lld tokens, %lld label tokens, "
		  "padding %.1f%%", name, (long long)t->units, (long long)t->batches, t->seq_len_max,
		  (long long)t->tokens, (long long)t->label_tokens, pct(t->pad_tokens, t->positions));
}

static void report_rows(const pack_opts *o, const input_info *in, const ft_batch_opts *bo,
			const ft_rows_stats *st, const ft_rows *r, const ft_examples *e)
{
	stat_line("%lld %s examples from %zu input%s (tokenizer %s); layout %s, cutoff_len %d, "
		  "batch size %d, seed %llu", (long long)st->examples, ft_stage_name(in->stage),
		  o->n_inputs, o->n_inputs == 1 ? "" : "s", *in->tokenizer ? in->tokenizer : "unnamed",
		  ft_layout_name(bo->layout), o->cutoff_len, o->batch_size, (unsigned long long)o->seed);
	if (st->truncated)
		warn("truncated %lld sequence%s longer than %lld tokens (%lld tokens removed)%s",
		     (long long)st->truncated, st->truncated == 1 ? "" : "s", (long long)st->capacity,
		     (long long)st->truncated_tokens,
		     bo->layout != FT_LAYOUT_PADDED && in->stage != FT_STAGE_PT
		     ? "; packed rows hold cutoff_len - 1 tokens, as LLaMA-Factory's: tokenize with "
		       "--cutoff_len N-1" : "");
	if (bo->layout == FT_LAYOUT_PADDED) return;
	int64_t used = 0;
	for (size_t i = 0; i < r->n_spans; i++) used += r->spans[i].len;
	stat_line("packed into %lld rows of %d: fill %.1f%% (%lld of %lld token slots)",
		  (long long)st->rows, o->cutoff_len, pct(used, st->rows * o->cutoff_len),
		  (long long)used, (long long)(st->rows * o->cutoff_len));
	if (st->dropped_tokens)
		stat_line("dropped %lld tokens: the tail of each window of %d texts that does not fill a "
			  "block, as LLaMA-Factory does", (long long)st->dropped_tokens, o->window);
	(void)e;
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	ft_atomic_install_signal_cleanup();
	pack_opts o;
	parse_args(argc, argv, &o);
	if (o.output && ft_is_stdio(o.output)) ft_check_binary_output(stdout, o.force);
	if (o.val_output && ft_is_stdio(o.val_output)) ft_check_binary_output(stdout, o.force);

	ft_examples e;
	input_info in;
	read_inputs(&o, &e, &in);
	if (o.cutoff_len == 0) o.cutoff_len = in.cutoff_len >= 2 ? in.cutoff_len : 2048;
	ft_batch_opts bo;
	resolve_layout(&o, in.stage, &bo);
	bo.pad_id = in.pad_id;
	if (in.stage == FT_STAGE_PT && bo.layout == FT_LAYOUT_PACKED && in.add_bos) bo.bos_id = in.bos_id;
	if (ft_examples_count(&e) == 0) die("no examples in the input");

	ft_rows rows;
	ft_rows_stats rst;
	ft_rows_opts ro = { in.stage, bo.layout, o.cutoff_len, o.window };
	if (ft_rows_build(&e, &ro, &rows, &rst) < 0) die_lib();
	report_rows(&o, &in, &bo, &rst, &rows, &e);
	int64_t nu = (int64_t)ft_rows_units(&rows);
	if (nu == 0)
		die("no rows: the input's %zu tokens do not fill one block of %d (pt packing drops "
		    "each window's tail)", e.ids.n, o.cutoff_len);

	int64_t n_val = ft_val_count(o.val_size, nu), n_train;
	if (n_val >= nu)
		die("--val_size %g leaves no training examples (%lld in all)", o.val_size, (long long)nu);
	int64_t *base, *val;
	ft_split_units(o.seed, nu, n_val, &base, &n_train, &val);
	int64_t *train = ft_xmalloc((size_t)(n_train ? n_train : 1) * sizeof *train);
	ft_epoch_order(order_seed(&o), o.shuffle, o.group_by_length, o.batch_size, &rows, base,
		       (size_t)n_train, 0, train);

	ft_pack_totals tt, tv;
	ft_pack_totals_compute(&e, &rows, train, (size_t)n_train, &bo, &tt);
	ft_batch_opts bv = bo;
	bv.batch_size = o.eval_batch_size;
	ft_pack_totals_compute(&e, &rows, val, (size_t)n_val, &bv, &tv);
	if (tt.batches == 0)
		die("no training batches: %lld examples and --dataloader_drop_last with batch size %d",
		    (long long)n_train, o.batch_size);
	report_split("train", &tt);
	if (o.epochs > 1)
		stat_line("train: %d epochs of %lld batches, each epoch reshuffled", o.epochs,
			  (long long)tt.batches);
	if (n_val) report_split("val", &tv);

	split_out st = { "train", &e, &rows, &rst, train, (size_t)n_train, &bo, &tt, base, o.epochs };
	split_out sv = { "val", &e, &rows, &rst, val, (size_t)n_val, &bv, &tv, val, 1 };
	if (o.output_dir) {
		int replace = check_dir(&o);
		ft_atomic out;
		if (ft_atomic_dir_open(&out, o.output_dir) < 0) die_lib();
		char *vdir = ft_xasprintf("%s/val", out.tmp);
		if (n_val && tv.batches) {
			if (mkdir(vdir, 0777) < 0) die("%s:", vdir);
			write_split(&o, &in, &sv, NULL, vdir, NULL);
		}
		write_split(&o, &in, &st, NULL, out.tmp, n_val && tv.batches ? "val" : NULL);
		free(vdir);
		if (ft_atomic_dir_commit(&out, replace) < 0) die_lib();
	} else {
		/* what killed runs left beside the output files */
		if (!ft_is_stdio(o.output) && ft_atomic_reclaim(o.output) < 0) die_lib();
		if (o.val_output && !ft_is_stdio(o.val_output) && ft_atomic_reclaim(o.val_output) < 0)
			die_lib();
		if (n_val) {
			write_split(&o, &in, &sv, o.val_output, NULL, NULL);
		}
		write_split(&o, &in, &st, o.output, NULL, NULL);
	}
	free(train); free(base); free(val);
	ft_rows_free(&rows);
	ft_examples_free(&e);
	free(in.tokenizer);
	json_decref(in.meta);
	return 0;
}
