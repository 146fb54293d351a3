/* dataset.c - dataset_info.json, local files and llamafactory 0.9.5's
 * alpaca / sharegpt converters (data/parser.py, loader.py, converter.py). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "data/dataset.h"
#include "util/json.h"
#include "util/sbuf.h"

const char *ft_bad_reason_name(int r)
{
	static const char *const n[FT_BAD_COUNT_] = {
		"ok", "missing column", "wrong type", "bad role order", "bad message count",
		"no response", "unrenderable (invalid tool or function-call JSON)",
		"kto neighbour unusable" };
	return r >= 0 && r < FT_BAD_COUNT_ ? n[r] : "?";
}


void ft_dataset_attr_free(ft_dataset_attr *a)
{
	char **f[] = { &a->name, &a->path, &a->prompt, &a->query, &a->response, &a->history,
		       &a->messages, &a->system, &a->tools, &a->chosen, &a->rejected, &a->kto_tag,
		       &a->role_tag, &a->content_tag, &a->user_tag, &a->assistant_tag,
		       &a->observation_tag, &a->function_tag, &a->system_tag };
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) { free(*f[i]); *f[i] = NULL; }
}

/* DatasetAttr's defaults. */
static void attr_defaults(ft_dataset_attr *a)
{
	memset(a, 0, sizeof *a);
	a->formatting = FT_FMT_ALPACA;
	a->num_samples = -1;
	a->prompt = ft_xstrdup("instruction");
	a->query = ft_xstrdup("input");
	a->response = ft_xstrdup("output");
	a->messages = ft_xstrdup("conversations");
	a->role_tag = ft_xstrdup("from");
	a->content_tag = ft_xstrdup("value");
	a->user_tag = ft_xstrdup("human");
	a->assistant_tag = ft_xstrdup("gpt");
	a->observation_tag = ft_xstrdup("observation");
	a->function_tag = ft_xstrdup("function_call");
	a->system_tag = ft_xstrdup("system");
}

/* DatasetAttr.set_attr: obj.get(key, None) */
static int set_from(char **dst, const json_t *obj, const char *key, const char *entry)
{
	const json_t *v = json_object_get(obj, key);
	free(*dst);
	*dst = NULL;
	if (!v || json_is_null(v)) return 0;
	if (!json_is_string(v)) return ft_fail("dataset '%s': \"%s\" must be a string", entry, key);
	*dst = ft_xstrdup(json_string_value(v));
	return 0;
}

int ft_dataset_resolve(const char *dir, const char *name, ft_dataset_attr *a)
{
	char *info_path = ft_xasprintf("%s/dataset_info.json", dir);
	json_t *info = ft_json_load_file(info_path);
	if (!info) {
		ft_fail_ctx("cannot read the dataset registry (--dataset_dir %s)", dir);
		free(info_path);
		return -1;
	}
	int rc = -1;
	const json_t *e = json_object_get(info, name);
	attr_defaults(a);
	a->name = ft_xstrdup(name);
	a->detected = 1;   /* the registry says it all */
	if (!e) {
		ft_fail("dataset '%s' is not defined in %s", name, info_path);
		goto out;
	}
	static const char *const hub[] = { "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url",
					   "cloud_file_name" };
	for (size_t i = 0; i < 5; i++)
		if (json_object_get(e, hub[i])) {
			const char *v = ft_json_str(e, hub[i], "?");
			ft_fail("dataset '%s' in %s lives at %s '%s': ft reads local files only "
				"(download it and give its file with --dataset PATH or a file_name entry)",
				name, info_path, hub[i], v);
			goto out;
		}
	const char *file = ft_json_str(e, "file_name", NULL);
	if (!file) {
		ft_fail("dataset '%s' in %s has no file_name", name, info_path);
		goto out;
	}
	a->path = ft_xasprintf("%s/%s", dir, file);
	struct stat st;
	if (stat(a->path, &st) != 0) {
		ft_fail("dataset '%s': file %s not found (ft reads local files only)", name, a->path);
		goto out;
	}
	const char *fmt = ft_json_str(e, "formatting", "alpaca");
	if (!strcmp(fmt, "alpaca")) a->formatting = FT_FMT_ALPACA;
	else if (!strcmp(fmt, "sharegpt")) a->formatting = FT_FMT_SHAREGPT;
	else {
		ft_fail("dataset '%s': formatting '%s' is not supported (alpaca or sharegpt)", name, fmt);
		goto out;
	}
	a->ranking = ft_json_bool(e, "ranking", 0);
	a->num_samples = ft_json_int(e, "num_samples", -1);
	const json_t *cols = json_object_get(e, "columns");
	if (cols) {
		char **dst[] = { &a->prompt, &a->query, &a->response, &a->history, &a->messages,
				 &a->system, &a->tools, &a->chosen, &a->rejected, &a->kto_tag };
		const char *keys[] = { "prompt", "query", "response", "history", "messages", "system",
				       "tools", "chosen", "rejected", "kto_tag" };
		for (size_t i = 0; i < 10; i++)
			if (set_from(dst[i], cols, keys[i], name) < 0) goto out;
		static const char *const media[] = { "images", "videos", "audios" };
		for (size_t i = 0; i < 3; i++)
			if (json_object_get(cols, media[i])) {
				ft_fail("dataset '%s' has %s: multimodal data is not supported", name, media[i]);
				goto out;
			}
	}
	const json_t *tags = json_object_get(e, "tags");
	if (tags) {
		char **dst[] = { &a->role_tag, &a->content_tag, &a->user_tag, &a->assistant_tag,
				 &a->observation_tag, &a->function_tag, &a->system_tag };
		const char *keys[] = { "role_tag", "content_tag", "user_tag", "assistant_tag",
				       "observation_tag", "function_tag", "system_tag" };
		for (size_t i = 0; i < 7; i++)
			if (set_from(dst[i], tags, keys[i], name) < 0) goto out;
	}
	rc = 0;
out:
	json_decref(info);
	free(info_path);
	return rc;
}

void ft_dataset_from_path(const char *path, int formatting, ft_dataset_attr *a)
{
	attr_defaults(a);
	a->name = ft_xstrdup(path);
	a->path = ft_xstrdup(path);
	a->formatting = formatting;
	a->detected = 0;
}

/* ---- examples -------------------------------------------------------- */

void ft_example_free(ft_example *e)
{
	for (size_t i = 0; i < e->n_prompt; i++) free((char *)e->prompt[i].content);
	for (size_t i = 0; i < e->n_response; i++) free((char *)e->response[i].content);
	free(e->prompt);
	free(e->response);
	free(e->system);
	free(e->tools);
	free(e->why);
	json_decref(e->extra);
}

void ft_dataset_free(ft_dataset *d)
{
	for (size_t i = 0; i < d->n; i++) ft_example_free(&d->v[i]);
	free(d->v);
	for (size_t i = 0; i < d->n_sources; i++) free(d->sources[i]);
	free(d->sources);
	memset(d, 0, sizeof *d);
}

static ft_example *new_example(ft_dataset *d)
{
	if (d->n == d->cap) {
		d->cap = d->cap ? d->cap * 2 : 256;
		d->v = ft_xrealloc(d->v, d->cap * sizeof *d->v);
	}
	ft_example *e = &d->v[d->n++];
	memset(e, 0, sizeof *e);
	e->kto = -1;
	return e;
}

static void push_msg(ft_message **v, size_t *n, int role, const char *content)
{
	*v = ft_xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[*n].role = role;
	(*v)[*n].content = ft_xstrdup(content);
	(*n)++;
}

static int mark(ft_example *e, int reason, const char *fmt, const char *arg)
{
	e->bad = reason;
	free(e->why);
	e->why = ft_xasprintf(fmt, arg ? arg : "");
	return -1;
}

/* example[col] for a declared column; NULL for an absent key (as the
 * None that datasets fills in for rows without it). */
static const json_t *col(const json_t *row, const char *name)
{
	const json_t *v = name ? json_object_get(row, name) : NULL;
	return v && !json_is_null(v) ? v : NULL;
}

/* A string column (absent = ""), as the converters read system/tools. */
static int str_col(ft_example *e, const json_t *row, const char *name, char **out, int keep_null)
{
	*out = NULL;
	if (!name) { if (!keep_null) *out = ft_xstrdup(""); return 0; }
	const json_t *v = col(row, name);
	if (!v) return 0;
	if (json_is_string(v)) { *out = ft_xstrdup(json_string_value(v)); return 0; }
	if (json_is_array(v) || json_is_object(v)) {   /* tools given as JSON, not text */
		*out = ft_pyjson_dumps(v, -1);
		return 0;
	}
	return mark(e, FT_BAD_TYPE, "column \"%s\" is not a string", name);
}

static int kto_value(const ft_dataset_attr *a, const json_t *row)
{
	const json_t *v = col(row, a->kto_tag);
	return a->kto_tag && v && json_is_boolean(v) ? json_is_true(v) : -1;
}

/* Response for a kto row: [resp, ""] when desirable, ["", resp] if not. */
static void kto_response(ft_example *e, int tag, int role, const char *content)
{
	e->kto = tag;
	if (tag) {
		push_msg(&e->response, &e->n_response, role, content);
		push_msg(&e->response, &e->n_response, FT_ROLE_ASSISTANT, "");
	} else {
		push_msg(&e->response, &e->n_response, FT_ROLE_ASSISTANT, "");
		push_msg(&e->response, &e->n_response, role, content);
	}
}

static int convert_alpaca(const ft_dataset_attr *a, const json_t *row, ft_example *e)
{
	const json_t *h = col(row, a->history);
	if (a->history && h && json_is_array(h)) {
		size_t i;
		json_t *turn;
		json_array_foreach(h, i, turn) {
			if (!json_is_array(turn) || json_array_size(turn) != 2 ||
			    !json_is_string(json_array_get(turn, 0)) || !json_is_string(json_array_get(turn, 1)))
				return mark(e, FT_BAD_TYPE, "column \"%s\" must hold [prompt, response] string pairs",
					    a->history);
			push_msg(&e->prompt, &e->n_prompt, FT_ROLE_USER, json_string_value(json_array_get(turn, 0)));
			push_msg(&e->prompt, &e->n_prompt, FT_ROLE_ASSISTANT,
				 json_string_value(json_array_get(turn, 1)));
		}
	}
	ft_sbuf q = { 0 };
	const char *cols[2] = { a->prompt, a->query };
	for (int k = 0; k < 2; k++) {
		const json_t *v = col(row, cols[k]);
		if (!cols[k] || !v) continue;
		if (!json_is_string(v)) {
			free(q.s);
			return mark(e, FT_BAD_TYPE, "column \"%s\" is not a string", cols[k]);
		}
		if (!json_string_length(v)) continue;   /* falsy: left out */
		if (q.n || q.s) ft_sbuf_addc(&q, '\n');
		ft_sbuf_add(&q, json_string_value(v));
	}
	char *query = ft_sbuf_take(&q);
	push_msg(&e->prompt, &e->n_prompt, FT_ROLE_USER, query);
	free(query);

	const json_t *resp = col(row, a->response);
	int tag = kto_value(a, row);
	if (tag >= 0) {
		if (!resp || !json_is_string(resp))
			return mark(e, resp ? FT_BAD_TYPE : FT_BAD_MISSING, "column \"%s\" is not a string",
				    a->response);
		kto_response(e, tag, FT_ROLE_ASSISTANT, json_string_value(resp));
	} else if (a->ranking && json_is_string(col(row, a->chosen)) && json_is_string(col(row, a->rejected))) {
		push_msg(&e->response, &e->n_response, FT_ROLE_ASSISTANT, json_string_value(col(row, a->chosen)));
		push_msg(&e->response, &e->n_response, FT_ROLE_ASSISTANT, json_string_value(col(row, a->rejected)));
	} else if (a->response && resp && json_is_string(resp)) {
		push_msg(&e->response, &e->n_response, FT_ROLE_ASSISTANT, json_string_value(resp));
	} else if (a->response) {
		/* unsupervised: no response; said if a stage needs one */
		free(e->why);
		e->why = ft_xasprintf("column \"%s\" (dataset_info.json columns.response) is %s",
				      a->response, resp ? "not a string" : "missing");
	}
	if (str_col(e, row, a->system, &e->system, 1) < 0) return -1;
	return str_col(e, row, a->tools, &e->tools, 0);
}

static int tag_role(const ft_dataset_attr *a, const char *tag)
{
	/* later entries of llamafactory's tag_mapping win on equal tags */
	int role = -1;
	if (a->user_tag && !strcmp(tag, a->user_tag)) role = FT_ROLE_USER;
	if (a->assistant_tag && !strcmp(tag, a->assistant_tag)) role = FT_ROLE_ASSISTANT;
	if (a->observation_tag && !strcmp(tag, a->observation_tag)) role = FT_ROLE_OBSERVATION;
	if (a->function_tag && !strcmp(tag, a->function_tag)) role = FT_ROLE_FUNCTION;
	if (a->system_tag && !strcmp(tag, a->system_tag)) role = FT_ROLE_SYSTEM;
	return role;
}

/* message[role_tag], message[content_tag] as strings. */
static int msg_fields(const ft_dataset_attr *a, const json_t *m, ft_example *e, const char **role,
		      const char **content)
{
	const json_t *r = a->role_tag ? json_object_get(m, a->role_tag) : NULL;
	const json_t *c = a->content_tag ? json_object_get(m, a->content_tag) : NULL;
	if (!json_is_object(m)) return mark(e, FT_BAD_TYPE, "a message is not an object%s", NULL);
	if (!r || !c) return mark(e, FT_BAD_MISSING, "a message has no \"%s\"", !r ? a->role_tag : a->content_tag);
	if (!json_is_string(r) || !json_is_string(c))
		return mark(e, FT_BAD_TYPE, "a message's \"%s\" is not a string",
			    !json_is_string(r) ? a->role_tag : a->content_tag);
	*role = json_string_value(r);
	*content = json_string_value(c);
	return 0;
}

static int in_tags(const char *role, const char *t1, const char *t2)
{
	return (t1 && !strcmp(role, t1)) || (t2 && !strcmp(role, t2));
}

static int convert_sharegpt(const ft_dataset_attr *a, const json_t *row, ft_example *e)
{
	const json_t *msgs = col(row, a->messages);
	if (!msgs) return mark(e, FT_BAD_MISSING, "no column \"%s\"", a->messages);
	if (!json_is_array(msgs)) return mark(e, FT_BAD_TYPE, "column \"%s\" is not a list", a->messages);
	size_t start = 0, n = json_array_size(msgs);
	const char *role, *content;
	if (a->system_tag && n) {
		if (msg_fields(a, json_array_get(msgs, 0), e, &role, &content) < 0) return -1;
		if (!strcmp(role, a->system_tag)) {
			e->system = ft_xstrdup(content);
			start = 1;
		}
	}
	if (!start && str_col(e, row, a->system, &e->system, 1) < 0) return -1;
	if (str_col(e, row, a->tools, &e->tools, 0) < 0) return -1;

	ft_message *al = NULL;
	size_t nal = 0;
	for (size_t i = start; i < n; i++) {
		if (msg_fields(a, json_array_get(msgs, i), e, &role, &content) < 0) goto fail;
		size_t turn = i - start;
		int okr = turn % 2 == 0 ? in_tags(role, a->user_tag, a->observation_tag)
					: in_tags(role, a->assistant_tag, a->function_tag);
		if (!okr) {
			e->bad = FT_BAD_ROLE;
			free(e->why);
			e->why = ft_xasprintf("unexpected role \"%s\" at message %zu", role, i);
			goto fail;
		}
		push_msg(&al, &nal, tag_role(a, role), content);
	}
	if ((!a->ranking && nal % 2 != 0) || (a->ranking && nal % 2 == 0)) {
		mark(e, FT_BAD_COUNT, "%s", a->ranking ? "a ranking conversation needs an odd number of messages"
						       : "a conversation needs an even number of messages");
		goto fail;
	}
	int tag = kto_value(a, row);
	if (tag >= 0) {
		e->prompt = al;
		e->n_prompt = nal ? nal - 1 : 0;
		if (nal) {
			kto_response(e, tag, al[nal - 1].role, al[nal - 1].content);
			free((char *)al[nal - 1].content);
		}
		if (!nal) { free(al); e->prompt = NULL; }
		return 0;
	}
	const json_t *ch = col(row, a->chosen), *rj = col(row, a->rejected);
	if (a->ranking && json_is_object(ch) && json_is_object(rj)) {
		e->prompt = al;
		e->n_prompt = nal;
		const json_t *pair[2] = { ch, rj };
		for (int k = 0; k < 2; k++) {
			if (msg_fields(a, pair[k], e, &role, &content) < 0) return -1;
			int r = tag_role(a, role);
			if (r < 0) return mark(e, FT_BAD_ROLE, "unexpected role \"%s\" in chosen/rejected", role);
			push_msg(&e->response, &e->n_response, r, content);
		}
		return 0;
	}
	e->prompt = al;
	e->n_prompt = nal ? nal - 1 : 0;
	if (nal) {
		e->response = ft_xmalloc(sizeof *e->response);
		e->response[0] = al[nal - 1];
		e->n_response = 1;
	}
	if (!nal) { free(al); e->prompt = NULL; }
	return 0;
fail:
	for (size_t i = 0; i < nal; i++) free((char *)al[i].content);
	free(al);
	return -1;
}

/* ---- files ----------------------------------------------------------- */

/* A path-given dataset's format (unless given) and columns, from its first
 * row's fields. */
static void detect(ft_dataset_attr *a, const json_t *row)
{
	if (a->detected) return;
	a->detected = 1;
	const char *mcol = json_object_get(row, "conversations") ? "conversations"
			 : json_object_get(row, "messages") ? "messages" : NULL;
	if (a->formatting == FT_FMT_AUTO)
		a->formatting = mcol ? FT_FMT_SHAREGPT
			      : json_object_get(row, "instruction") || json_object_get(row, "output") ? FT_FMT_ALPACA
			      : FT_FMT_TEXT;
	if (a->formatting == FT_FMT_SHAREGPT && mcol) {
		free(a->messages);
		a->messages = ft_xstrdup(mcol);
		const json_t *m0 = json_array_get(json_object_get(row, mcol), 0);
		if (json_object_get(m0, "role")) {   /* OpenAI-style role/content tags */
			char **dst[] = { &a->role_tag, &a->content_tag, &a->user_tag, &a->assistant_tag,
					 &a->observation_tag, &a->function_tag };
			const char *val[] = { "role", "content", "user", "assistant", "observation", "function" };
			for (int i = 0; i < 6; i++) { free(*dst[i]); *dst[i] = ft_xstrdup(val[i]); }
		}
	}
	if (a->formatting == FT_FMT_ALPACA && json_object_get(row, "history")) a->history = ft_xstrdup("history");
	if (json_object_get(row, "system")) a->system = ft_xstrdup("system");
	if (json_object_get(row, "tools")) a->tools = ft_xstrdup("tools");
	if (json_object_get(row, "chosen") && json_object_get(row, "rejected")) {
		a->ranking = 1;
		a->chosen = ft_xstrdup("chosen");
		a->rejected = ft_xstrdup("rejected");
	}
	const json_t *label = json_object_get(row, "label");
	if (label && json_is_boolean(label)) a->kto_tag = ft_xstrdup("label");
}

/* Text datasets: the "text" column is the prompt (as c4_demo's entry). */
static void text_columns(ft_dataset_attr *a)
{
	char **cols[] = { &a->prompt, &a->query, &a->response, &a->history };
	for (int i = 0; i < 4; i++) { free(*cols[i]); *cols[i] = NULL; }
	a->prompt = ft_xstrdup("text");
}

/* The columns the formatting's converter reads (llamafactory's
 * converter.py; images, videos and audios are refused before here). */
static int used_column(const ft_dataset_attr *a, const char *key)
{
	const char *alpaca[] = { a->prompt, a->query, a->response, a->history };
	const char *both[] = { a->system, a->tools, a->kto_tag, a->ranking ? a->chosen : NULL,
			       a->ranking ? a->rejected : NULL,
			       a->formatting == FT_FMT_SHAREGPT ? a->messages : NULL };
	for (size_t i = 0; i < sizeof both / sizeof *both; i++)
		if (both[i] && !strcmp(both[i], key)) return 1;
	for (size_t i = 0; a->formatting != FT_FMT_SHAREGPT && i < 4; i++)
		if (alpaca[i] && !strcmp(alpaca[i], key)) return 1;
	return 0;
}

static json_t *extra_columns(const ft_dataset_attr *a, const json_t *row)
{
	json_t *x = json_object(), *v;
	const char *k;
	json_object_foreach((json_t *)row, k, v)
		if (!used_column(a, k)) json_object_set(x, k, v);
	return x;
}

static int convert(ft_dataset_attr *a, const json_t *row, ft_dataset *d, size_t index)
{
	ft_example *e = new_example(d);
	e->source = d->sources[d->n_sources - 1];
	e->index = index;
	if (!json_is_object(row)) { mark(e, FT_BAD_TYPE, "a row is not a JSON object%s", NULL); return 0; }
	detect(a, row);
	if (a->formatting == FT_FMT_TEXT) {
		text_columns(a);
		a->formatting = FT_FMT_ALPACA;
	}
	if (a->formatting == FT_FMT_SHAREGPT) convert_sharegpt(a, row, e);
	else convert_alpaca(a, row, e);
	if (a->keep_extra) e->extra = extra_columns(a, row);
	return 0;
}

static char *slurp(FILE *fp, size_t *len)
{
	ft_sbuf b = { 0 };
	char buf[65536];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, fp)) > 0) ft_sbuf_addn(&b, buf, n);
	*len = b.n;
	return ft_sbuf_take(&b);
}

static int has_ext(const char *p, const char *ext)
{
	size_t n = strlen(p), m = strlen(ext);
	return n > m && !strcmp(p + n - m, ext);
}

/* Rows of one file: a JSON array, JSON lines, or text lines. */
static int read_file(ft_dataset_attr *a, const char *path, long long max, ft_dataset *d)
{
	int is_stdin = !strcmp(path, "-");
	const char *name = is_stdin ? "<stdin>" : path;
	FILE *fp = is_stdin ? stdin : fopen(path, "rb");
	if (!fp) return ft_fail("%s:", path);
	size_t len;
	char *text = slurp(fp, &len);
	int rerr = ferror(fp);
	if (!is_stdin) fclose(fp);
	if (rerr) { free(text); return ft_fail("%s: read error", name); }
	d->sources = ft_xrealloc(d->sources, (d->n_sources + 1) * sizeof *d->sources);
	d->sources[d->n_sources++] = ft_xstrdup(name);

	size_t i = 0;
	while (i < len && strchr(" \t\r\n", text[i])) i++;
	int as_text = a->formatting == FT_FMT_TEXT || has_ext(path, ".txt") ||
		      (i < len && text[i] != '[' && text[i] != '{');
	long long nrows = 0;
	int rc = 0;
	if (as_text) {
		/* datasets' text builder: one row per line */
		char *p = text, *end = text + len;
		while (p < end && (max < 0 || nrows < max)) {
			char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
			if (l && p[l - 1] == '\r') l--;
			json_t *row = json_object();
			json_object_set_new(row, "text", json_stringn(p, l));
			if (a->formatting == FT_FMT_AUTO) a->formatting = FT_FMT_TEXT;
			convert(a, row, d, (size_t)nrows++);
			json_decref(row);
			p = nl ? nl + 1 : end;
		}
	} else if (i < len && text[i] == '[') {
		json_t *all = ft_json_load_string(text, len, name);
		if (!all) { rc = -1; goto out; }
		size_t k;
		json_t *row;
		json_array_foreach(all, k, row) {
			if (max >= 0 && nrows >= max) break;
			convert(a, row, d, (size_t)nrows++);
		}
		json_decref(all);
	} else {
		FILE *mf = fmemopen(text, len, "r");
		ft_jsonl *jl = mf ? ft_jsonl_open_fp(mf, name) : NULL;
		if (!jl) { if (mf) fclose(mf); rc = ft_fail("%s: cannot read", name); goto out; }
		json_t *row;
		int r;
		while ((max < 0 || nrows < max) && (r = ft_jsonl_next(jl, &row)) != 0) {
			if (r < 0) { rc = -1; break; }
			convert(a, row, d, (size_t)nrows++);
			json_decref(row);
		}
		ft_jsonl_close(jl);
		fclose(mf);
	}
out:
	free(text);
	return rc;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

int ft_dataset_read(ft_dataset_attr *a, long long max, ft_dataset *out)
{
	struct stat st;
	if (strcmp(a->path, "-") && stat(a->path, &st) != 0)
		return ft_fail("dataset '%s': %s: %s (ft reads local files only)", a->name, a->path, strerror(errno));
	if (strcmp(a->path, "-") && S_ISDIR(st.st_mode)) {
		/* llamafactory reads every file of a directory; in name order here */
		DIR *dir = opendir(a->path);
		if (!dir) return ft_fail("%s:", a->path);
		char **names = NULL;
		size_t n = 0;
		struct dirent *de;
		while ((de = readdir(dir)))
			if (de->d_name[0] != '.') {
				names = ft_xrealloc(names, (n + 1) * sizeof *names);
				names[n++] = ft_xasprintf("%s/%s", a->path, de->d_name);
			}
		closedir(dir);
		qsort(names, n, sizeof *names, cmp_str);
		int rc = 0;
		size_t before = out->n;
		for (size_t i = 0; i < n; i++) {
			long long left = max < 0 ? -1 : max - (long long)(out->n - before);
			if (rc == 0 && left != 0) rc = read_file(a, names[i], left, out);
			free(names[i]);
		}
		free(names);
		return rc;
	}
	return read_file(a, a->path, max, out);
}

void ft_dataset_concat(ft_dataset *dst, ft_dataset *src)
{
	for (size_t i = 0; i < src->n; i++) *new_example(dst) = src->v[i];
	/* sources are referenced by the examples: move them too */
	dst->sources = ft_xrealloc(dst->sources, (dst->n_sources + src->n_sources) * sizeof *dst->sources);
	memcpy(dst->sources + dst->n_sources, src->sources, src->n_sources * sizeof *src->sources);
	dst->n_sources += src->n_sources;
	free(src->v);
	free(src->sources);
	memset(src, 0, sizeof *src);
}
