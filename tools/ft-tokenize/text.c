/* text.c - ft-tokenize's text mode: --encode turns JSON lines with a
 * "text" field (or plain lines) into JSON arrays of ids, --decode turns
 * arrays of ids back into {"text": ...} lines (or plain lines).  Lines are
 * processed in batches, in parallel with -j, and written in input order. */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "text/tokenizer.h"
#include "ft-tokenize.h"

#define BATCH_LINES 8192
#define BATCH_BYTES (8u << 20)

static void usage(FILE *f)
{
	fprintf(f,
"Usage: ft-tokenize --tokenizer PATH --encode [options] [FILE|-]\n"
"       ft-tokenize --tokenizer PATH --decode [options] [FILE|-]\n"
"\n"
"Text mode: tokenize or detokenize text with a Hugging Face tokenizer, giving\n"
"the same ids as the `tokenizers` package.\n"
"\n"
"  --tokenizer PATH        a model directory, a tokenizer.json or a tokenizer.model\n"
"  --encode                read JSON lines with a \"text\" field; write one JSON\n"
"                          array of ids per line\n"
"  --decode                read one JSON array of ids per line; write JSON lines\n"
"                          {\"text\": ...}\n"
"  --lines                 plain text lines instead of JSON: --encode reads each\n"
"                          line as the text, --decode writes the text and a\n"
"                          newline (a text holding newlines spans lines)\n"
"  --add_special_tokens    --encode: add bos/eos as the tokenizer's post-processor\n"
"                          does (HF add_special_tokens=True); default off\n"
"  --skip_special_tokens   --decode: leave special tokens out of the text\n"
"  -j, --threads N         encode/decode with N threads (output order is kept)\n"
"  -o, --output FILE       write to FILE (atomically) instead of stdout\n"
"  -q, --quiet / -v        less / more messages\n"
"  -h, --help              this help\n"
"\n"
"FILE defaults to stdin (\"-\").  Blank lines are skipped in JSON mode and\n"
"encode to [] with --lines (a trailing CR is dropped there).  Errors name\n"
"the file and line.\n"
"\n"
"EXIT STATUS\n"
"  0  success\n"
"  1  bad input (invalid JSON, missing \"text\", bad id, invalid UTF-8), an\n"
"     unreadable tokenizer, or an I/O error\n"
"  2  usage error\n"
"\n"
"Example:\n"
"  echo '{\"text\": \"Hello, 世界\"}' | ft-tokenize --tokenizer ../shared/tokenizers/qwen3 --encode \\\n"
"    | ft-tokenize --tokenizer ../shared/tokenizers/qwen3 --decode\n");
}

typedef struct {
	const ft_tokenizer *tok;
	int decode, lines, add_special, skip_special, threads;
	const char *in_name;
} opts;

typedef struct {
	char **line; size_t *len; long *lineno;
	char **out; size_t *outlen;
	char **err;
	size_t n, cap;
} batch;

static void put_int(char **p, int32_t v)
{
	char tmp[16];
	int n = 0;
	uint32_t u = v < 0 ? (uint32_t)-(int64_t)v : (uint32_t)v;
	do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
	if (v < 0) *(*p)++ = '-';
	while (n) *(*p)++ = tmp[--n];
}

static char *encode_line(const opts *o, const char *line, size_t len, size_t *olen, char **err)
{
	const char *text = line;
	size_t tlen = len;
	json_t *j = NULL;
	if (!o->lines) {
		json_error_t e;
		j = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
		if (!j) { *err = ft_xasprintf("column %d: %s", e.column, e.text); return NULL; }
		json_t *tv = json_object_get(j, "text");
		if (!json_is_object(j) || !json_is_string(tv)) {
			json_decref(j);
			*err = ft_xstrdup("expected an object with a string \"text\" field");
			return NULL;
		}
		text = json_string_value(tv);
		tlen = json_string_length(tv);
	}
	ft_i32vec ids = {0};
	int rc = ft_tokenizer_encode(o->tok, text, tlen, o->add_special, &ids);
	json_decref(j);
	if (rc) { *err = ft_xstrdup(ft_errmsg()); ft_i32vec_free(&ids); return NULL; }
	char *out = ft_xmalloc(ids.n * 12 + 4), *p = out;
	*p++ = '[';
	for (size_t i = 0; i < ids.n; i++) {
		if (i) *p++ = ',';
		put_int(&p, ids.v[i]);
	}
	*p++ = ']'; *p++ = '\n';
	*olen = (size_t)(p - out);
	ft_i32vec_free(&ids);
	return out;
}

static char *decode_line(const opts *o, const char *line, size_t len, size_t *olen, char **err)
{
	json_error_t e;
	json_t *j = json_loadb(line, len, 0, &e);
	if (!j) { *err = ft_xasprintf("column %d: %s", e.column, e.text); return NULL; }
	if (!json_is_array(j)) {
		json_decref(j);
		*err = ft_xstrdup("expected a JSON array of token ids");
		return NULL;
	}
	size_t n = json_array_size(j);
	int32_t *ids = ft_xmalloc((n ? n : 1) * sizeof *ids);
	for (size_t i = 0; i < n; i++) {
		json_t *x = json_array_get(j, i);
		if (!json_is_integer(x) || json_integer_value(x) < 0 ||
		    json_integer_value(x) > INT32_MAX) {
			*err = ft_xasprintf("element %zu is not a token id", i);
			free(ids); json_decref(j);
			return NULL;
		}
		ids[i] = (int32_t)json_integer_value(x);
	}
	json_decref(j);
	char *text = ft_tokenizer_decode(o->tok, ids, n, o->skip_special);
	free(ids);
	if (!text) { *err = ft_xstrdup(ft_errmsg()); return NULL; }
	char *out;
	if (o->lines) {
		out = ft_xasprintf("%s\n", text);
	} else {
		json_t *obj = json_pack("{s:s}", "text", text);
		char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
		json_decref(obj);
		if (!s) { free(text); *err = ft_xstrdup("cannot write the text as JSON"); return NULL; }
		out = ft_xasprintf("%s\n", s);
		free(s);
	}
	free(text);
	*olen = strlen(out);
	return out;
}

static void run_batch(const opts *o, batch *b)
{
	#pragma omp parallel for schedule(dynamic, 8) num_threads(o->threads) if (o->threads > 1 && b->n > 16)
	for (size_t i = 0; i < b->n; i++) {
		b->err[i] = NULL;
		b->out[i] = o->decode ? decode_line(o, b->line[i], b->len[i], &b->outlen[i], &b->err[i])
				      : encode_line(o, b->line[i], b->len[i], &b->outlen[i], &b->err[i]);
	}
}

static ft_atomic out_file;
static int out_atomic;

static _Noreturn void fail(const char *fmt, const char *a, long line, const char *msg)
{
	if (out_atomic) ft_atomic_abort(&out_file);
	die(fmt, a, line, msg);
}

/* Write the batch in order; the first bad line ends the run. */
static void flush_batch(const opts *o, batch *b, FILE *out)
{
	run_batch(o, b);
	for (size_t i = 0; i < b->n; i++) {
		if (b->err[i])
			fail("%s:%ld: %s", o->in_name, b->lineno[i], b->err[i]);
		if (fwrite(b->out[i], 1, b->outlen[i], out) != b->outlen[i]) {
			if (out_atomic) ft_atomic_abort(&out_file);
			die("write error:");
		}
		free(b->out[i]);
		free(b->line[i]);
	}
	b->n = 0;
}

static void batch_add(batch *b, char *line, size_t len, long lineno)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 1024;
		b->line = ft_xrealloc(b->line, b->cap * sizeof *b->line);
		b->len = ft_xrealloc(b->len, b->cap * sizeof *b->len);
		b->lineno = ft_xrealloc(b->lineno, b->cap * sizeof *b->lineno);
		b->out = ft_xrealloc(b->out, b->cap * sizeof *b->out);
		b->outlen = ft_xrealloc(b->outlen, b->cap * sizeof *b->outlen);
		b->err = ft_xrealloc(b->err, b->cap * sizeof *b->err);
	}
	b->line[b->n] = line; b->len[b->n] = len; b->lineno[b->n] = lineno;
	b->n++;
}

static int blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr(" \t\r\n", s[i])) return 0;
	return 1;
}

int tokenize_text_main(int argc, char **argv)
{
	enum { O_TOK = 256, O_ENC, O_DEC, O_LINES, O_ADD, O_SKIP };
	static const struct option lo[] = {
		{ "tokenizer", required_argument, 0, O_TOK },
		{ "encode", no_argument, 0, O_ENC },
		{ "decode", no_argument, 0, O_DEC },
		{ "lines", no_argument, 0, O_LINES },
		{ "add_special_tokens", no_argument, 0, O_ADD },
		{ "skip_special_tokens", no_argument, 0, O_SKIP },
		{ "threads", required_argument, 0, 'j' },
		{ "output", required_argument, 0, 'o' },
		{ "quiet", no_argument, 0, 'q' },
		{ "verbose", no_argument, 0, 'v' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 }
	};
	opts o = { .threads = 1 };
	const char *tok_path = NULL, *out_path = NULL;
	int enc = 0, dec = 0, c;
	while ((c = getopt_long(argc, argv, "j:o:qvh", lo, NULL)) != -1) {
		switch (c) {
		case O_TOK: tok_path = optarg; break;
		case O_ENC: enc = 1; break;
		case O_DEC: dec = 1; break;
		case O_LINES: o.lines = 1; break;
		case O_ADD: o.add_special = 1; break;
		case O_SKIP: o.skip_special = 1; break;
		case 'j':
			o.threads = (int)ft_parse_int("-j", optarg);
			if (o.threads < 1 || o.threads > 1024) die_usage("-j must be between 1 and 1024");
			break;
		case 'o': out_path = optarg; break;
		case 'q': ft_verbose--; break;
		case 'v': ft_verbose++; break;
		case 'h': usage(stdout); return 0;
		default: die_usage("unknown option");
		}
	}
	if (enc && dec) die_usage("--encode and --decode exclude each other");
	if (!tok_path) die_usage("--tokenizer PATH is required");
	if (o.add_special && dec) die_usage("--add_special_tokens goes with --encode");
	if (o.skip_special && enc) die_usage("--skip_special_tokens goes with --decode");
	if (argc - optind > 1) die_usage("one input file at most");
	const char *in_path = optind < argc ? argv[optind] : "-";
	if (optind >= argc && ft_stdin_is_terminal()) { usage(stderr); exit(FT_EXIT_USAGE); }
	o.decode = dec;
	o.in_name = ft_display_name(in_path);

	ft_tokenizer *t = ft_tokenizer_load(tok_path);
	if (!t) die("%s", ft_errmsg());
	o.tok = t;
	FILE *in = ft_open_input(in_path);
	FILE *out = stdout;
	if (out_path && !ft_is_stdio(out_path)) {
		if (ft_atomic_open(&out_file, out_path)) die("%s", ft_errmsg());
		out_atomic = 1;
		out = out_file.fp;
	}
	batch b = {0};
	char *line = NULL;
	size_t cap = 0, bytes = 0;
	ssize_t n;
	long lineno = 0;
	while ((n = getline(&line, &cap, in)) >= 0) {
		lineno++;
		size_t len = (size_t)n;
		if (len && line[len - 1] == '\n') len--;
		if (o.lines && len && line[len - 1] == '\r') len--;
		if (!o.lines && blank(line, len)) continue;
		char *copy = ft_xmalloc(len + 1);
		memcpy(copy, line, len); copy[len] = 0;
		batch_add(&b, copy, len, lineno);
		bytes += len;
		if (b.n >= BATCH_LINES || bytes >= BATCH_BYTES) { flush_batch(&o, &b, out); bytes = 0; }
	}
	if (ferror(in)) fail("%s:%ld: %s", o.in_name, lineno, "read error");
	flush_batch(&o, &b, out);
	free(line);
	if (in != stdin) fclose(in);
	free(b.line); free(b.len); free(b.lineno); free(b.out); free(b.outlen); free(b.err);
	if (out_atomic && ft_atomic_commit(&out_file)) die("%s", ft_errmsg());
	ft_tokenizer_free(t);
	return 0;
}
