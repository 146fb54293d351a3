/* tokenizer.c - loading a tokenizer from a model directory, tokenizer.json
 * or tokenizer.model; the special-token settings of tokenizer_config.json,
 * special_tokens_map.json and generation_config.json; identity; lookups. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#include "util/error.h"
#include "util/sha256.h"
#include "text/tokenizer_internal.h"

static int is_dir(const char *p)
{
	struct stat st;
	return !stat(p, &st) && S_ISDIR(st.st_mode);
}

static int exists(const char *p)
{
	struct stat st;
	return !stat(p, &st);
}

static int ends_with(const char *s, const char *suf)
{
	size_t n = strlen(s), m = strlen(suf);
	return n >= m && !strcmp(s + n - m, suf);
}

/* "<dir>" for a directory or a file called tokenizer.json/.model in it,
 * else the file name; trailing slashes ignored. */
static char *identity_name(const char *path, int dir)
{
	char *p = ft_xstrdup(path);
	size_t n = strlen(p);
	while (n > 1 && p[n - 1] == '/') p[--n] = 0;
	if (!dir) {
		char *slash = strrchr(p, '/');
		const char *base = slash ? slash + 1 : p;
		if (strcmp(base, "tokenizer.json") && strcmp(base, "tokenizer.model")) {
			char *r = ft_xstrdup(base);
			free(p);
			return r;
		}
		if (!slash) { free(p); p = ft_xstrdup("."); }
		else if (slash == p) slash[1] = 0;
		else *slash = 0;
	}
	char *r = NULL;
	if (!strcmp(p, ".") || !strcmp(p, "..") || ends_with(p, "/.") || ends_with(p, "/..")) {
		char *real = realpath(p, NULL);
		if (real) { free(p); p = real; }
	}
	char *slash = strrchr(p, '/');
	r = ft_xstrdup(slash && slash[1] ? slash + 1 : p);
	free(p);
	return r;
}

/* ---- tokenizer_config.json and friends ---- */
static json_t *load_opt(const char *dir, const char *name)
{
	char *p = ft_xasprintf("%s/%s", dir, name);
	json_t *j = NULL;
	if (exists(p)) {
		json_error_t e;
		/* INT_AS_REAL: model_max_length is often 1e30 written as an integer */
		j = json_load_file(p, JSON_DECODE_INT_AS_REAL, &e);
		if (!j) ft_fail("%s:%d:%d: %s", p, e.line, e.column, e.text);
	}
	free(p);
	return j;
}

/* A token given as "text" or {"content": "text", ...}. */
static const char *token_text(const json_t *v)
{
	if (json_is_string(v)) return json_string_value(v);
	if (json_is_object(v)) {
		const json_t *c = json_object_get(v, "content");
		if (json_is_string(c)) return json_string_value(c);
	}
	return NULL;
}

static void set_token(char **slot, const char *text)
{
	if (!text || *slot) return;
	*slot = ft_xstrdup(text);
}

static int load_configs(ft_tokenizer *t, const char *dir)
{
	json_t *cfg = load_opt(dir, "tokenizer_config.json");
	if (!cfg && exists(dir) && strstr(ft_errmsg(), "tokenizer_config.json")) {
		char *p = ft_xasprintf("%s/tokenizer_config.json", dir);
		int had = exists(p);
		free(p);
		if (had) return -1;
	}
	json_t *map = load_opt(dir, "special_tokens_map.json");
	json_t *gen = load_opt(dir, "generation_config.json");
	ft_tokenizer_info *in = &t->info;
	const char *keys[3] = { "bos_token", "eos_token", "pad_token" };
	char **slots[3] = { &t->bos_s, &t->eos_s, &t->pad_s };
	for (int i = 0; i < 3; i++) {
		const json_t *v = cfg ? json_object_get(cfg, keys[i]) : NULL;
		if (v && json_is_null(v)) { free(*slots[i]); *slots[i] = NULL; continue; }
		const char *s = cfg ? token_text(v) : NULL;
		if (s) { free(*slots[i]); *slots[i] = ft_xstrdup(s); continue; }
		if (map) set_token(slots[i], token_text(json_object_get(map, keys[i])));
	}
	if (cfg) {
		const json_t *v;
		if (json_is_boolean(v = json_object_get(cfg, "add_bos_token"))) in->add_bos = json_is_true(v);
		if (json_is_boolean(v = json_object_get(cfg, "add_eos_token"))) in->add_eos = json_is_true(v);
		if (json_is_number(v = json_object_get(cfg, "model_max_length"))) {
			double d = json_number_value(v);
			in->model_max_length = d >= 9.2e18 ? LLONG_MAX : d < 0 ? 0 : (long long)d;
		}
		const char *unk = token_text(json_object_get(cfg, "unk_token"));
		if (unk && ftp_tk_strmap_get(&t->vocab, unk, strlen(unk)) >= 0 && t->info.unk_id < 0)
			t->info.unk_id = ftp_tk_strmap_get(&t->vocab, unk, strlen(unk));
	}
	if (gen) {
		const json_t *e = json_object_get(gen, "eos_token_id"), *x;
		size_t i;
		if (json_is_number(e)) in->extra_eos_ids[in->n_extra_eos++] = (int32_t)json_number_value(e);
		else json_array_foreach(e, i, x)
			if (json_is_number(x) && in->n_extra_eos < 8)
				in->extra_eos_ids[in->n_extra_eos++] = (int32_t)json_number_value(x);
	}
	json_decref(cfg); json_decref(map); json_decref(gen);
	ft_errclear();
	return 0;
}

static void resolve_info(ft_tokenizer *t)
{
	ft_tokenizer_info *in = &t->info;
	in->bos_token = t->bos_s; in->eos_token = t->eos_s; in->pad_token = t->pad_s;
	in->bos_id = t->bos_s ? ft_tokenizer_token_to_id(t, t->bos_s) : in->bos_id;
	in->eos_id = t->eos_s ? ft_tokenizer_token_to_id(t, t->eos_s) : in->eos_id;
	in->pad_id = t->pad_s ? ft_tokenizer_token_to_id(t, t->pad_s) : in->pad_id;
	if (in->unk_id < 0) in->unk_id = t->unk_id;
}

static char *dir_of(const char *file)
{
	const char *slash = strrchr(file, '/');
	if (!slash) return ft_xstrdup(".");
	if (slash == file) return ft_xstrdup("/");
	char *d = ft_xmalloc((size_t)(slash - file) + 1);
	memcpy(d, file, (size_t)(slash - file));
	d[slash - file] = 0;
	return d;
}

/* The file a directory's tokenizer is read from: tokenizer.json, else
 * tokenizer.model; NULL when it has neither. */
static char *tokenizer_file_in(const char *dir)
{
	char *file = ft_xasprintf("%s/tokenizer.json", dir);
	if (exists(file)) return file;
	free(file);
	file = ft_xasprintf("%s/tokenizer.model", dir);
	if (exists(file)) return file;
	free(file);
	return NULL;
}

int ft_tokenizer_dir_sha256(const char *dir, char hex[65])
{
	char *file = is_dir(dir) ? tokenizer_file_in(dir) : NULL;
	if (!file) return 0;
	int rc = ft_sha256_file(file, hex) < 0 ? -1 : 1;
	free(file);
	return rc;
}

ft_tokenizer *ft_tokenizer_load(const char *path)
{
	int dir = is_dir(path);
	char *file = NULL, *cdir = NULL;
	if (dir) {
		file = tokenizer_file_in(path);
		if (!file) {
			ft_fail("%s: no tokenizer.json or tokenizer.model in this directory", path);
			return NULL;
		}
		cdir = ft_xstrdup(path);
	} else {
		if (!exists(path)) { ft_fail("%s:", path); return NULL; }
		file = ft_xstrdup(path);
		cdir = dir_of(path);
	}
	ft_tokenizer *t = ft_xcalloc(1, sizeof *t);
	pthread_mutex_init(&t->lock, NULL);
	ftp_tk_strmap_init(&t->vocab);
	ftp_tk_strmap_init(&t->enc);
	t->unk_id = -1;
	t->path = ft_xstrdup(path);
	t->info.bos_id = t->info.eos_id = t->info.pad_id = t->info.unk_id = -1;
	int spm = ends_with(file, ".model");
	char hex[65];
	if ((spm ? ftp_tk_load_spm(t, file) : ftp_tk_load_json(t, file)) || ftp_tk_finish_load(t) ||
	    ft_sha256_file(file, hex) || load_configs(t, cdir))
		goto fail;
	if (!spm) {
		/* transformers 5 encodes with tokenizer.json's post-processor
		 * whatever add_bos_token/add_eos_token say, so report that */
		t->info.add_bos = t->npost_pre > 0;
		t->info.add_eos = t->npost_post > 0;
	} else {
		/* LlamaTokenizer: bos unless add_bos_token is false, eos when
		 * add_eos_token (from tokenizer_config.json) */
		free(t->post_pre); free(t->post_post);
		t->post_pre = t->post_post = NULL; t->npost_pre = t->npost_post = 0;
	}
	resolve_info(t);
	if (spm) {
		if (t->info.add_bos && t->info.bos_id >= 0) {
			t->post_pre = ft_xmalloc(sizeof *t->post_pre);
			t->post_pre[t->npost_pre++] = t->info.bos_id;
		}
		if (t->info.add_eos && t->info.eos_id >= 0) {
			t->post_post = ft_xmalloc(sizeof *t->post_post);
			t->post_post[t->npost_post++] = t->info.eos_id;
		}
	}
	if (!spm) t->json_file = ft_xstrdup(file);
	t->name = identity_name(path, dir);
	t->identity = ft_xasprintf("%s:%s", t->name, hex);
	free(file); free(cdir);
	return t;
fail:
	free(file); free(cdir);
	ft_tokenizer_free(t);
	return NULL;
}

void ft_tokenizer_free(ft_tokenizer *t)
{
	if (!t) return;
	for (size_t i = 0; i < t->npool; i++) ftp_tk_work_free(t->pool[i]);
	free(t->pool);
	pthread_mutex_destroy(&t->lock);
	for (size_t i = 0; i < t->ntok; i++) free(t->tok[i]);
	free(t->tok); free(t->toklen);
	ftp_tk_strmap_free(&t->vocab); ftp_tk_strmap_free(&t->enc);
	ftp_tk_mergemap_free(&t->merges);
	free(t->score); free(t->ptype); free(t->sp_trie); free(t->sp_normstr);
	ftp_tk_trie_free(&t->sp_user);
	for (size_t i = 0; i < t->sp_nuser; i++) free(t->sp_user_tok[i].content);
	free(t->sp_user_tok);
	for (size_t i = 0; i < t->nadded; i++) { free(t->added[i].content); free(t->added[i].orig); }
	free(t->added);
	for (size_t i = 0; i < t->nextra; i++) free(t->extra[i].content);
	free(t->extra); free(t->json_file);
	ftp_tk_trie_free(&t->trie_raw); ftp_tk_trie_free(&t->trie_norm);
	free(t->raw_tok); free(t->norm_tok); free(t->is_special);
	for (size_t i = 0; i < t->nnorm; i++) {
		free(t->norm[i].a); free(t->norm[i].b);
		pcre2_code_free(t->norm[i].re);
	}
	free(t->norm);
	for (size_t i = 0; i < t->npre; i++) pcre2_code_free(t->pre[i].re);
	free(t->pre);
	for (size_t i = 0; i < t->ndec; i++) { free(t->dec[i].a); free(t->dec[i].b); }
	free(t->dec);
	free(t->post_pre); free(t->post_post);
	free(t->bos_s); free(t->eos_s); free(t->pad_s);
	free(t->path); free(t->identity); free(t->name);
	free(t);
}

size_t ft_tokenizer_vocab_size(const ft_tokenizer *t) { return t->ntok; }

int32_t ft_tokenizer_token_to_id(const ft_tokenizer *t, const char *piece)
{
	size_t n = strlen(piece);
	for (size_t i = 0; i < t->nadded; i++) {
		const ftp_tk_added *a = &t->added[i];
		if (!strcmp(a->orig ? a->orig : a->content, piece)) return a->id;
	}
	return ftp_tk_strmap_get(&t->vocab, piece, n);
}

const char *ft_tokenizer_id_to_token(const ft_tokenizer *t, int32_t id)
{
	return id >= 0 && (size_t)id < t->ntok ? t->tok[id] : NULL;
}

int ft_tokenizer_is_special(const ft_tokenizer *t, int32_t id)
{
	return id >= 0 && (size_t)id < t->ntok && t->is_special[id];
}

const ft_tokenizer_info *ft_tokenizer_info_get(const ft_tokenizer *t) { return &t->info; }

const char *ft_tokenizer_identity(const ft_tokenizer *t) { return t->identity; }
