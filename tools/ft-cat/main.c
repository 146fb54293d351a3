/* ft-cat - any ft stream to JSON lines, and JSON lines back to a stream. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/atomicfile.h"
#include "cli/cli.h"
#include "util/json.h"
#include "format/stream.h"

static void usage(FILE *fp)
{
	fprintf(fp,
"Usage: ft-cat [OPTION]... [FILE|DIR|-]...\n"
"       ft-cat --encode [OPTION]... [FILE|-] [-o OUT | -d DIR]\n"
"\n"
"Decode ft record streams (ft-tokenize, ft-pack output: zstd-compressed\n"
"msgpack) to JSON lines on stdout, the header record first; or, with\n"
"--encode, turn such JSON lines (first line the header) back into a stream.\n"
"Several inputs, concatenated streams and directories of shards\n"
"(shard-NNNNN.*.zst, read in name order) decode as one stream when their\n"
"headers agree.  With no FILE, or when FILE is -, read standard input.\n"
"\n"
"Decoding:\n"
"  -H, --no-header        omit the header line\n"
"      --header           print only the header line\n"
"\n"
"Encoding:\n"
"  -e, --encode           JSON lines in, stream out\n"
"  -o, --output=OUT       write the stream to OUT (- for stdout, the default)\n"
"  -d, --dir=DIR          write shards DIR/shard-00000.ftb.zst ... instead\n"
"      --shard-records=N  start a new shard after N records (with -d)\n"
"      --shard-size=SIZE  start a new shard after about SIZE compressed\n"
"                         bytes (500MB, 64KiB, ...; with -d)\n"
"      --overwrite        let -d replace shards already in DIR\n"
"  -l, --level=N          zstd compression level (default 3)\n"
"  -f, --force            write binary output to a terminal anyway\n"
"\n"
"  -h, --help             show this help and exit\n"
"\n"
"Integers stay integers and floats stay floats (printed in the shortest\n"
"form that reads back bit-identical), so decode and encode round-trip.\n"
"\n"
"EXIT STATUS\n"
"  0  success\n"
"  1  bad, truncated or corrupt input (the message names the file, the\n"
"     byte offset and the record; records before the fault are printed),\n"
"     or an I/O error\n"
"  2  usage error\n"
"\n"
"Examples:\n"
"  ft-tokenize --dataset alpaca_en_demo ... | ft-cat | jq .input_ids | head\n"
"  ft-cat tokens.ftb.zst | jq -c 'select(.n_tokens < 512)' \\\n"
"      | ft-cat --encode -o short.ftb.zst\n");
}

enum { OPT_HEADER = 256, OPT_SHARD_RECORDS, OPT_SHARD_SIZE, OPT_OVERWRITE };

static const struct option longopts[] = {
	{"no_header", no_argument, NULL, 'H'},
	{"header", no_argument, NULL, OPT_HEADER},
	{"encode", no_argument, NULL, 'e'},
	{"output", required_argument, NULL, 'o'},
	{"dir", required_argument, NULL, 'd'},
	{"shard_records", required_argument, NULL, OPT_SHARD_RECORDS},
	{"shard_size", required_argument, NULL, OPT_SHARD_SIZE},
	{"overwrite", no_argument, NULL, OPT_OVERWRITE},
	{"level", required_argument, NULL, 'l'},
	{"force", no_argument, NULL, 'f'},
	{"help", no_argument, NULL, 'h'},
	{NULL, 0, NULL, 0},
};

typedef struct {
	int no_header, header_only, encode, force;
	const char *output;
	ft_writer_opts wopts;
} options;

static void decode(const options *o, char **paths, int n)
{
	ft_reader *r = ft_reader_open_many((const char *const *)paths, (size_t)n);
	if (!r) die_lib();
	if (!o->no_header && ft_reader_write_header_json(r, stdout) < 0) {
		if (ferror(stdout)) exit(FT_EXIT_DATA);
		die("%s: header: %s", ft_reader_path(r), ft_errmsg());
	}
	if (o->header_only) {
		ft_reader_close(r);
		return;
	}
	ft_rec *rec;
	int rc;
	while ((rc = ft_reader_next(r, &rec)) > 0) {
		if (ft_rec_write_json(rec, stdout) == 0) continue;
		if (ferror(stdout)) exit(FT_EXIT_DATA);   /* the exit-time stdout check says why */
		die("%s: record %llu: %s", ft_reader_path(r), (unsigned long long)ft_reader_index(r), ft_errmsg());
	}
	if (rc < 0) die_lib();
	ft_reader_close(r);
}

static void encode(const options *o, const char *in)
{
	ft_jsonl *j = ft_jsonl_open(in);
	if (!j) die_lib();
	const char *name = ft_display_name(in);
	json_t *v;
	int rc = ft_jsonl_next(j, &v);
	if (rc < 0) die_lib();
	if (rc == 0) die("%s: empty input: the first line must be the stream header", name);
	if (!json_is_object(v))
		die("%s:%ld: the first line must be the stream header (a JSON object)", name, ft_jsonl_line(j));
	ft_writer *w = ft_writer_open(&o->wopts, v);
	if (!w) die("%s:%ld: %s", name, ft_jsonl_line(j), ft_errmsg());
	json_decref(v);
	while ((rc = ft_jsonl_next(j, &v)) > 0) {
		if (ft_writer_put_json(w, v) < 0) {
			ft_writer_abort(w);
			if (ferror(stdout)) exit(FT_EXIT_DATA);   /* reported at exit */
			die("%s:%ld: %s", name, ft_jsonl_line(j), ft_errmsg());
		}
		json_decref(v);
	}
	if (rc < 0) {
		ft_writer_abort(w);
		die_lib();
	}
	ft_jsonl_close(j);
	if (ft_writer_close(w) < 0) {
		if (ferror(stdout)) exit(FT_EXIT_DATA);
		die_lib();
	}
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	ft_atomic_install_signal_cleanup();
	options o = {0};
	int c;
	while ((c = getopt_long(argc, argv, "Heo:d:l:fh", longopts, NULL)) != -1) {
		switch (c) {
		case 'H': o.no_header = 1; break;
		case OPT_HEADER: o.header_only = 1; break;
		case 'e': o.encode = 1; break;
		case 'o': o.output = optarg; break;
		case 'd': o.wopts.dir = optarg; break;
		case OPT_SHARD_RECORDS:
			o.wopts.shard_records = (uint64_t)ft_parse_int("shard_records", optarg);
			if ((long long)o.wopts.shard_records <= 0) die_usage("--shard-records must be positive");
			break;
		case OPT_SHARD_SIZE:
			o.wopts.shard_bytes = ft_parse_size("shard_size", optarg);
			if (!o.wopts.shard_bytes) die_usage("--shard-size must be positive");
			break;
		case OPT_OVERWRITE: o.wopts.replace = 1; break;
		case 'l':
			o.wopts.level = (int)ft_parse_int("level", optarg);
			if (o.wopts.level < 1 || o.wopts.level > 22) die_usage("--level must be 1 to 22");
			break;
		case 'f': o.force = 1; break;
		case 'h': usage(stdout); return 0;
		default: die_usage("unknown option");
		}
	}
	char **ops = argv + optind;
	int nops = argc - optind;
	if (o.no_header && o.header_only) die_usage("--header and --no-header contradict each other");
	if (!o.encode) {
		if (o.output || o.wopts.dir || o.wopts.shard_records || o.wopts.shard_bytes ||
		    o.wopts.level || o.wopts.replace || o.force)
			die_usage("-o, -d, --shard-*, --overwrite, --level and -f are for --encode");
		if (nops == 0 && ft_stdin_is_terminal()) {
			usage(stderr);
			return FT_EXIT_USAGE;
		}
		decode(&o, ops, nops);
		return 0;
	}
	if (o.no_header || o.header_only) die_usage("--header and --no-header are for decoding");
	if (nops > 1) die_usage("--encode takes one input");
	if (o.output && o.wopts.dir) die_usage("-o and -d exclude each other");
	if ((o.wopts.shard_records || o.wopts.shard_bytes) && !o.wopts.dir)
		die_usage("--shard-records and --shard-size need -d DIR");
	if (o.wopts.replace && !o.wopts.dir) die_usage("--overwrite goes with -d DIR");
	const char *in = nops ? ops[0] : "-";
	if (nops == 0 && ft_stdin_is_terminal()) {
		usage(stderr);
		return FT_EXIT_USAGE;
	}
	if (!o.wopts.dir) {
		o.wopts.path = o.output;
		if (ft_is_stdio(o.output)) ft_check_binary_output(stdout, o.force);
	}
	encode(&o, in);
	return 0;
}
