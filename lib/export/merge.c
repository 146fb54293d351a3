/* merge.c - write the merged model directory (see merge.h).
 *
 * Streams tensor by tensor: each base tensor is read from the mmap into
 * one float32 buffer, every adapter is applied in order, and the result is
 * converted into the export dtype and written at once, so the peak memory
 * is about one tensor (float32 plus its converted copy) plus the adapters.
 * Shards are planned up front as transformers' save_pretrained() does
 * (greedy in tensor order, a tensor bigger than the limit alone), the
 * disk space checked, and the whole directory built under a temporary
 * name and renamed into place at the end.
 */
#include <jansson.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include "util/atomicfile.h"
#include "util/dtype.h"
#include "util/error.h"
#include "util/sbuf.h"
#include "util/json.h"
#include "export/merge.h"
#include "export/merge_internal.h"
#include "format/safetensors.h"

/* Files of a model directory besides the weights that an export keeps. */
static const char *const copied_files[] = {
	"generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
	"special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
	"vocab.json", "merges.txt", "preprocessor_config.json",
	"value_head.safetensors",   /* a reward model's head (ft-train --stage rm), as LLaMA-Factory's export */
};

char *ft_merge_shard_name(size_t i, size_t nshards)
{
	if (nshards == 1) return ft_xstrdup("model.safetensors");
	return ft_xasprintf("model-%05zu-of-%05zu.safetensors", i + 1, nshards);
}

static int is_float(ft_dtype t)
{
	return t == FT_F32 || t == FT_F16 || t == FT_BF16 || t == FT_F64;
}

typedef struct {
	ft_st *base;
	json_t *config;
	ft_lora **ad;
	size_t nad;
	ft_dtype out;
	size_t n;            /* tensors */
	size_t *shard;       /* shard of each tensor */
	size_t nshards;
	uint64_t total, nparams;
} merge_job;

static ft_dtype out_dtype_of(const merge_job *j, const ft_st_tensor *t)
{
	return is_float(t->dtype) ? j->out : t->dtype;
}

static uint64_t out_bytes(const merge_job *j, const ft_st_tensor *t)
{
	return is_float(t->dtype) ? (uint64_t)t->numel * ft_dtype_size(j->out) : t->nbytes;
}

/* auto: the base config's dtype (transformers 5) or torch_dtype (4.x),
 * else the dtype of the base's first float tensor. */
static int pick_dtype(merge_job *j, int want, const char *cfg)
{
	if (want != FT_MERGE_DTYPE_AUTO) {
		if (want != FT_F32 && want != FT_F16 && want != FT_BF16)
			return ft_fail("export dtype must be float32, float16 or bfloat16");
		j->out = (ft_dtype)want;
		return 0;
	}
	const char *s = json_string_value(json_object_get(j->config, "dtype"));
	if (!s) s = json_string_value(json_object_get(j->config, "torch_dtype"));
	if (s) {
		if (ft_dtype_parse_torch(s, &j->out) < 0 || !is_float(j->out) || j->out == FT_F64)
			return ft_fail("%s: dtype \"%s\" cannot be exported (use --export_dtype)", cfg, s);
		return 0;
	}
	for (size_t i = 0; i < ft_st_count(j->base); i++) {
		const ft_st_tensor *t = ft_st_at(j->base, i);
		if (is_float(t->dtype) && t->dtype != FT_F64) {
			j->out = t->dtype;
			return 0;
		}
	}
	j->out = FT_F32;
	return 0;
}

static void plan_shards(merge_job *j, uint64_t max)
{
	j->n = ft_st_count(j->base);
	j->shard = ft_xcalloc(j->n ? j->n : 1, sizeof *j->shard);
	uint64_t cur = 0;
	size_t s = 0;
	for (size_t i = 0; i < j->n; i++) {
		const ft_st_tensor *t = ft_st_at(j->base, i);
		uint64_t b = out_bytes(j, t);
		if (cur > 0 && cur + b > max) {
			s++;
			cur = 0;
		}
		j->shard[i] = s;
		cur += b;
		j->total += b;
		j->nparams += t->numel;
	}
	j->nshards = s + 1;
}

static uint64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* statvfs of the directory the export goes into.  FT_MERGE_DISK_FREE
 * (bytes) stands in for the free space so tests can reach the refusal. */
int ftp_export_disk_check(const char *parent, uint64_t need)
{
	struct statvfs sv;
	if (statvfs(parent, &sv) != 0) return ft_fail("%s:", parent);
	uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	const char *fake = getenv("FT_MERGE_DISK_FREE");
	if (fake && *fake) avail = strtoull(fake, NULL, 10);
	if (avail < need) {
		char n[32], a[32];
		ft_bytes_fmt((double)need, n, sizeof n);
		ft_bytes_fmt((double)avail, a, sizeof a);
		return ft_fail("not enough disk space in %s: the exported model needs %s, %s available",
			       parent, n, a);
	}
	return 0;
}

static int check_space(const merge_job *j, const char *parent, uint64_t extra)
{
	return ftp_export_disk_check(parent, j->total + extra + (uint64_t)j->n * 256 + 65536);
}

static int same_path(const char *a, const char *b)
{
	char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
	int same = ra && rb && !strcmp(ra, rb);
	free(ra);
	free(rb);
	return same;
}

/* The export dir: absent, empty, or replaced with overwrite; never one of
 * the inputs.  Creates its parent. */
int ftp_export_dir_prepare(const ft_merge_opts *o, int *exists, char **parent)
{
	struct stat st;
	*exists = stat(o->export_dir, &st) == 0;
	if (*exists && !S_ISDIR(st.st_mode)) return ft_fail("%s: exists and is not a directory", o->export_dir);
	if (*exists && same_path(o->export_dir, o->model_dir))
		return ft_fail("%s: the export directory is the base model directory", o->export_dir);
	for (size_t i = 0; i < o->nadapters; i++)
		if (*exists && same_path(o->export_dir, o->adapters[i]))
			return ft_fail("%s: the export directory is an adapter directory", o->export_dir);
	/* one that cannot be listed is refused with the reason, not taken for empty */
	int empty = *exists && !o->overwrite ? ft_dir_is_empty(o->export_dir) : 1;
	if (empty < 0) return -1;
	if (!empty)
		return ft_fail("%s: export directory is not empty (use --overwrite to replace it)", o->export_dir);
	char *p = ft_xstrdup(o->export_dir);
	size_t n = strlen(p);
	while (n > 1 && p[n - 1] == '/') p[--n] = 0;
	char *slash = strrchr(p, '/');
	if (!slash) strcpy(p, ".");
	else if (slash == p) p[1] = 0;
	else *slash = 0;
	*parent = p;
	return ft_mkdirs(p);
}

static int copy_file(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb");
	if (!in) return ft_fail("%s:", from);
	FILE *out = fopen(to, "wb");
	if (!out) {
		fclose(in);
		return ft_fail("%s:", to);
	}
	char buf[65536];
	size_t n;
	int bad = 0;
	while ((n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, out) != n) bad = 1;
	if (ferror(in)) bad = 1;
	fclose(in);
	if (fclose(out) != 0) bad = 1;
	return bad ? ft_fail("%s: copy failed:", to) : 0;
}

/* Float conversion split across threads: tensors are up to ~1 GB. */
static int to_f32(float *dst, const ft_st_tensor *t)
{
	size_t n = t->numel, es = ft_dtype_size(t->dtype), chunk = 1 << 20;
	int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
	for (size_t c = 0; c < (n + chunk - 1) / chunk; c++) {
		size_t a = c * chunk, m = a + chunk > n ? n - a : chunk;
		bad |= ft_convert_to_f32(dst + a, (const char *)t->data + a * es, t->dtype, m) < 0;
	}
	return bad ? ft_fail("%s: cannot convert %s to float32", t->name, ft_dtype_name(t->dtype)) : 0;
}

static void from_f32(void *dst, ft_dtype to, const float *src, size_t n)
{
	size_t es = ft_dtype_size(to), chunk = 1 << 20;
#pragma omp parallel for schedule(static)
	for (size_t c = 0; c < (n + chunk - 1) / chunk; c++) {
		size_t a = c * chunk, m = a + chunk > n ? n - a : chunk;
		ft_convert_from_f32((char *)dst + a * es, to, src + a, m);
	}
}

/* The base tensor's pages are not needed again: let them go, so the
 * resident size stays about one tensor rather than growing to the whole
 * mmap'd model (they are clean file pages; nothing is lost). */
static void release_pages(const ft_st_tensor *t)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)t->data + page - 1) & ~(page - 1);
	uintptr_t b = ((uintptr_t)t->data + t->nbytes) & ~(page - 1);
	if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* One tensor into the open shard: untouched tensors already in the
 * export dtype are copied byte for byte. */
static int put_tensor(merge_job *j, ft_st_writer *w, const ft_st_tensor *t, float **f32, void **conv,
		      size_t *cap)
{
	int touched = 0;
	for (size_t a = 0; a < j->nad; a++) touched |= ft_lora_touches(j->ad[a], t->name);
	if (!is_float(t->dtype) || (!touched && t->dtype == j->out)) return ft_st_stream_put(w, t->data, t->nbytes);
	if (t->numel > *cap) {
		free(*f32);
		free(*conv);
		*f32 = ft_xmalloc(t->numel * sizeof **f32);
		*conv = ft_xmalloc(t->numel * 4);
		*cap = t->numel;
	}
	if (to_f32(*f32, t) < 0) return -1;
	for (size_t a = 0; a < j->nad; a++)
		if (ft_lora_apply(j->ad[a], t->name, *f32, t->numel) < 0) return -1;
	from_f32(*conv, j->out, *f32, t->numel);
	return ft_st_stream_put(w, *conv, t->numel * ft_dtype_size(j->out));
}

static int write_shards(merge_job *j, const char *dir, const ft_merge_opts *o)
{
	float *f32 = NULL;
	void *conv = NULL;
	size_t cap = 0, done = 0;
	uint64_t bytes = 0;
	int rc = 0;
	for (size_t s = 0; s < j->nshards && rc == 0; s++) {
		char *name = ft_merge_shard_name(s, j->nshards);
		char *path = ft_xasprintf("%s/%s", dir, name);
		free(name);
		ft_st_writer *w = ft_st_writer_new();
		ft_st_writer_meta(w, "format", "pt");
		for (size_t i = 0; i < j->n && rc == 0; i++) {
			if (j->shard[i] != s) continue;
			const ft_st_tensor *t = ft_st_at(j->base, i);
			rc = ft_st_writer_add(w, t->name, out_dtype_of(j, t), t->ndim, t->shape, NULL);
		}
		if (rc == 0) rc = ft_st_stream_begin(w, path);
		for (size_t i = 0; i < j->n && rc == 0; i++) {
			if (j->shard[i] != s) continue;
			const ft_st_tensor *t = ft_st_at(j->base, i);
			rc = put_tensor(j, w, t, &f32, &conv, &cap);
			release_pages(t);
			bytes += out_bytes(j, t);
			if (rc == 0 && o->progress && o->progress(o->progress_ctx, ++done, j->n, bytes, j->total))
				rc = ft_fail("interrupted");
		}
		if (rc == 0) rc = ft_st_stream_end(w);
		else ft_st_stream_abort(w);
		ft_st_writer_free(w);
		if (rc < 0) ft_fail_ctx("%s: ", path);
		free(path);
	}
	free(f32);
	free(conv);
	return rc;
}

/* Indented, sorted keys and a final newline, as transformers writes. */
static int save_json(const json_t *v, const char *path)
{
	char *text = json_dumps(v, JSON_INDENT(2) | JSON_SORT_KEYS);
	FILE *f = fopen(path, "w");
	int bad = !text || !f || fputs(text, f) < 0 || fputc('\n', f) < 0;
	if (f && fclose(f) != 0) bad = 1;
	free(text);
	return bad ? ft_fail("%s: write failed:", path) : 0;
}

/* model.safetensors.index.json as transformers 5 writes it. */
static int write_index(const merge_job *j, const char *dir)
{
	json_t *map = json_object();
	for (size_t i = 0; i < j->n; i++) {
		char *name = ft_merge_shard_name(j->shard[i], j->nshards);
		json_object_set_new(map, ft_st_at(j->base, i)->name, json_string(name));
		free(name);
	}
	json_t *idx = json_pack("{s:{s:I,s:I},s:o}", "metadata", "total_parameters", (json_int_t)j->nparams,
				"total_size", (json_int_t)j->total, "weight_map", map);
	char *path = ft_xasprintf("%s/model.safetensors.index.json", dir);
	int rc = save_json(idx, path);
	free(path);
	json_decref(idx);
	return rc;
}

/* config.json with the dtype field(s) it had set to the export dtype.
 * The text is edited rather than re-serialized so every other byte stays
 * as the base had it (jansson would print 1e-05 as 1.0000000000000001e-05):
 * each "dtype" / "torch_dtype" string value is replaced (nested configs of
 * multimodal models too); with neither, "dtype" is added first. */
int ftp_export_write_config(const char *base_dir, const char *dir, ft_dtype dtype)
{
	const char *name = ft_dtype_torch_name(dtype);
	char *src = ft_xasprintf("%s/config.json", base_dir), *dst = ft_xasprintf("%s/config.json", dir);
	char *text = NULL, *out = NULL;
	size_t len = 0;
	int rc = -1;
	FILE *f = fopen(src, "rb");
	if (!f || getdelim(&text, &len, 0, f) < 0) {
		ft_fail("%s:", src);
		goto done;
	}
	int err;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR) "(\"(?:torch_)?dtype\"\\s*:\\s*)\"[^\"]*\"",
				       PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
	char *repl = ft_xasprintf("$1\"%s\"", name);
	size_t cap = strlen(text) + 4096;
	out = ft_xmalloc(cap);
	PCRE2_SIZE outlen = cap;
	int n = re ? pcre2_substitute(re, (PCRE2_SPTR)text, PCRE2_ZERO_TERMINATED, 0, PCRE2_SUBSTITUTE_GLOBAL, NULL,
				      NULL, (PCRE2_SPTR)repl, PCRE2_ZERO_TERMINATED, (PCRE2_UCHAR *)out, &outlen)
		     : -1;
	pcre2_code_free(re);
	free(repl);
	if (n < 0) {
		ft_fail("%s: cannot update the dtype", src);
		goto done;
	}
	FILE *o = fopen(dst, "wb");
	int bad = !o;
	if (o && n == 0) {   /* no dtype field: add one after the opening brace */
		char *brace = strchr(out, '{');
		if (!brace) bad = 1;
		else bad = fprintf(o, "%.*s{\n  \"dtype\": \"%s\",%s", (int)(brace - out), out, name, brace + 1) < 0;
	} else if (o) {
		bad = fwrite(out, 1, outlen, o) != outlen;
	}
	if (o && fclose(o) != 0) bad = 1;
	rc = bad ? ft_fail("%s: write failed:", dst) : 0;
done:
	if (f) fclose(f);
	free(text);
	free(out);
	free(src);
	free(dst);
	return rc;
}

/* The caller's edit of the exported config (re-serialized only then). */
static int edit_config(const ft_merge_opts *o, const char *dir)
{
	if (!o->config_edit) return 0;
	char *dst = ft_xasprintf("%s/config.json", dir);
	json_t *cj = ft_json_load_file(dst);
	int rc = !cj || o->config_edit(cj, o->config_edit_ctx) < 0 || ft_json_save_file(cj, dst, 2) < 0 ? -1 : 0;
	json_decref(cj);
	free(dst);
	return rc;
}

/* Tokenizer and generation files: from the base, else from the last
 * adapter that has them (LLaMA-Factory saves the tokenizer beside the
 * adapter). */
static const char *source_of(const ft_merge_opts *o, const char *file, char **buf)
{
	free(*buf);
	*buf = ft_xasprintf("%s/%s", o->model_dir, file);
	if (access(*buf, F_OK) == 0) return *buf;
	for (size_t a = o->nadapters; a-- > 0;) {
		free(*buf);
		*buf = ft_xasprintf("%s/%s", o->adapters[a], file);
		if (access(*buf, F_OK) == 0) return *buf;
	}
	return NULL;
}

uint64_t ftp_export_copied_size(const ft_merge_opts *o)
{
	uint64_t n = 0;
	char *buf = NULL;
	for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files; i++) {
		const char *src = source_of(o, copied_files[i], &buf);
		if (src) n += file_size(src);
	}
	free(buf);
	return n;
}

int ftp_export_copy_files(const ft_merge_opts *o, const char *dir)
{
	char *buf = NULL;
	int rc = 0;
	for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files && rc == 0; i++) {
		const char *src = source_of(o, copied_files[i], &buf);
		if (!src) continue;
		char *dst = ft_xasprintf("%s/%s", dir, copied_files[i]);
		rc = copy_file(src, dst);
		free(dst);
	}
	free(buf);
	return rc;
}

static void job_free(merge_job *j)
{
	for (size_t a = 0; a < j->nad; a++) ft_lora_close(j->ad[a]);
	free(j->ad);
	free(j->shard);
	json_decref(j->config);
	if (j->base) ft_st_close(j->base);
}

static int open_inputs(merge_job *j, const ft_merge_opts *o)
{
	char *cfg = ft_xasprintf("%s/config.json", o->model_dir);
	int rc = -1;
	if (!(j->config = ft_json_load_file(cfg))) goto out;
	const json_t *quant = json_object_get(j->config, "quantization_config");
	if (quant) {   /* LLaMA-Factory's refusal; packed weights are not tensors to merge */
		ft_fail(o->nadapters ? "%s: Cannot merge adapters to a quantized model (%s)"
				     : "%s: a pre-quantized checkpoint (%s): ft exports unquantized weights only",
			cfg, ft_json_str(quant, "quant_method", "unknown method"));
		goto out;
	}
	if (!(j->base = ft_st_open(o->model_dir))) goto out;
	if (pick_dtype(j, o->export_dtype, cfg) < 0) goto out;
	j->ad = ft_xcalloc(o->nadapters + 1, sizeof *j->ad);
	for (size_t a = 0; a < o->nadapters; a++, j->nad++)
		if (!(j->ad[a] = ft_lora_open(o->adapters[a], j->base))) goto out;
	rc = 0;
out:
	free(cfg);
	return rc;
}

int ft_merge(const ft_merge_opts *opts)
{
	if (!opts->model_dir || !opts->export_dir || !*opts->export_dir)
		return ft_fail("a base model and an export directory are needed");
	/* "out/" names the directory "out": the temporary sibling must not
	 * land inside it */
	ft_merge_opts oo = *opts;
	char *export_dir = ft_xstrdup(opts->export_dir);
	for (size_t n = strlen(export_dir); n > 1 && export_dir[n - 1] == '/';) export_dir[--n] = 0;
	oo.export_dir = export_dir;
	const ft_merge_opts *o = &oo;
	if (o->threads > 0) {
		omp_set_num_threads(o->threads);
	}
	merge_job j = { 0 };
	int exists = 0, rc = -1;
	char *parent = NULL;
	ft_atomic dir = { 0 };
	if (open_inputs(&j, o) < 0) goto out;
	plan_shards(&j, o->shard_size ? o->shard_size : 5000000000ull);
	if (ftp_export_dir_prepare(o, &exists, &parent) < 0) goto out;
	if (check_space(&j, parent, ftp_export_copied_size(o)) < 0) goto out;
	if (ft_atomic_dir_open(&dir, o->export_dir) < 0) goto out;
	if (write_shards(&j, dir.tmp, o) < 0 || (j.nshards > 1 && write_index(&j, dir.tmp) < 0) ||
	    ftp_export_write_config(o->model_dir, dir.tmp, j.out) < 0 || edit_config(o, dir.tmp) < 0 || ftp_export_copy_files(o, dir.tmp) < 0) {
		ft_atomic_dir_abort(&dir);
		goto out;
	}
	rc = ft_atomic_dir_commit(&dir, exists);
out:
	free(parent);
	free(export_dir);
	job_free(&j);
	return rc;
}
