/* input.c - prompts for ft-generate: JSON lines, plain lines, ft streams
 * of prediction records, or a dataset. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli/cli.h"
#include "data/dataset.h"
#include "ft-generate.h"
#include "util/json.h"
#include "format/stream.h"

void gen_items_free(gen_items *it)
{
	for (size_t i = 0; i < it->n; i++) {
		ft_i32vec_free(&it->v[i].ids);
		free(it->v[i].label);
	}
	free(it->v);
	memset(it, 0, sizeof *it);
}

static gen_item *new_item(gen_items *it)
{
	if (it->n == it->cap) {
		it->cap = it->cap ? 2 * it->cap : 64;
		it->v = ft_xrealloc(it->v, it->cap * sizeof *it->v);
	}
	memset(&it->v[it->n], 0, sizeof *it->v);
	return &it->v[it->n++];
}

/* The whole input in memory: prompt sets are small, and it lets us look
 * at the first bytes to tell a stream from text even on a pipe. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = ft_open_input(path);
	size_t cap = 1 << 16, n = 0;
	char *buf = ft_xmalloc(cap + 1);
	for (size_t got; (got = fread(buf + n, 1, cap - n, f)) > 0; ) {
		n += got;
		if (n == cap) buf = ft_xrealloc(buf, (cap *= 2) + 1);
	}
	if (ferror(f)) die("%s: read error:", ft_display_name(path));
	if (f != stdin) fclose(f);
	buf[n] = 0;
	*len = n;
	return buf;
}

static int is_stream(const unsigned char *b, size_t n)
{
	if (n < 4) return 0;
	uint32_t m = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
	return m == 0xFD2FB528u || (m & 0xFFFFFFF0u) == 0x184D2A50u;
}

static char *decode_label(const gen_env *e, const int32_t *ids, size_t n)
{
	ft_i32vec keep = {0};
	for (size_t i = 0; i < n; i++)
		if (ids[i] >= 0) ft_i32vec_push(&keep, ids[i]);
	char *s = ft_tokenizer_decode(e->tok, keep.v, keep.n, 1);
	ft_i32vec_free(&keep);
	return s;
}

/* An error about the temporary copy names the user's input instead. */
static int name_input(const char *tmp, const char *name)
{
	const char *msg = ft_errmsg();
	size_t n = strlen(tmp);
	if (strncmp(msg, tmp, n) != 0) return -1;
	char *rest = ft_xstrdup(msg + n);
	ft_fail("%s%s", name, rest);
	free(rest);
	return -1;
}

static int read_records(const char *buf, size_t len, const gen_env *e, gen_items *out, const char *name)
{
	char tmp[] = "/tmp/ft-generate-XXXXXX";
	int fd = mkstemp(tmp);
	if (fd < 0) return ft_fail("%s:", tmp);
	int bad = write(fd, buf, len) != (ssize_t)len;
	close(fd);
	if (bad) { unlink(tmp); return ft_fail("%s: write failed:", tmp); }
	ft_reader *r = ft_reader_open(tmp);
	unlink(tmp);
	if (!r) return name_input(tmp, name);
	const json_t *meta = json_object_get(ft_reader_header(r), "meta");
	if (!json_is_true(json_object_get(meta, "predict")) &&
	    strcmp(json_string_value(json_object_get(meta, "stage")) ?: "", "ppo")) {
		ft_reader_close(r);
		return ft_fail("<input>: the stream holds training records; make prompt records with ft-tokenize --predict");
	}
	ft_rec *rec;
	ft_i32vec labels = {0};
	int rc;
	while ((rc = ft_reader_next(r, &rec)) == 1) {
		gen_item *it = new_item(out);
		if (ft_rec_i32s(rec, "input_ids", &it->ids) < 0) { rc = -1; break; }
		if (ft_rec_has(rec, "labels") && ft_rec_i32s(rec, "labels", &labels) == 0)
			it->label = decode_label(e, labels.v, labels.n);
	}
	ft_i32vec_free(&labels);
	if (rc < 0) name_input(tmp, name);
	ft_reader_close(r);
	return rc;
}

/* Messages of one JSON object: prompt | instruction(+input) | messages.
 * A trailing assistant message in "messages" is the label. */
static int object_messages(json_t *o, ft_message **msgs, size_t *n, const char **label)
{
	const char *p = ft_json_str(o, "prompt", NULL);
	const char *ins = ft_json_str(o, "instruction", NULL);
	json_t *arr = json_object_get(o, "messages");
	if (!arr) arr = json_object_get(o, "conversations");
	*label = ft_json_str(o, "label", ft_json_str(o, "output", NULL));
	if (p || ins) {
		const char *in = ft_json_str(o, "input", "");
		*msgs = ft_xmalloc(sizeof **msgs);
		(*msgs)[0] = (ft_message){FT_ROLE_USER, p ? p : ins};
		if (!p && *in) (*msgs)[0].content = ft_xasprintf("%s\n%s", ins, in);
		*n = 1;
		return 0;
	}
	if (!json_is_array(arr) || json_array_size(arr) == 0)
		return ft_fail("needs a \"prompt\", \"instruction\" or non-empty \"messages\" field");
	*n = json_array_size(arr);
	*msgs = ft_xmalloc(*n * sizeof **msgs);
	for (size_t i = 0; i < *n; i++) {
		json_t *m = json_array_get(arr, i);
		const char *role = ft_json_str(m, "role", ft_json_str(m, "from", NULL));
		const char *content = ft_json_str(m, "content", ft_json_str(m, "value", NULL));
		int r = role ? ft_chat_role(role) : -1;
		if (r < 0 || !content) {
			free(*msgs);
			*msgs = NULL;
			return ft_fail("message %zu needs a known role and string content", i);
		}
		(*msgs)[i] = (ft_message){r, content};
	}
	if ((*msgs)[*n - 1].role == FT_ROLE_ASSISTANT) {
		if (!*label) *label = (*msgs)[*n - 1].content;
		(*n)--;
	}
	if (*n == 0) {
		free(*msgs);
		*msgs = NULL;
		return ft_fail("no prompt before the assistant message");
	}
	return 0;
}

static int encode_line(const gen_cli *o, const gen_env *e, char *line, gen_item *it)
{
	if (o->lines) {
		ft_message m = {FT_ROLE_USER, line};
		return ft_chat_prompt(e->prep, e->tmpl, &m, 1, NULL, NULL, &it->ids);
	}
	json_error_t err;
	json_t *obj = json_loads(line, 0, &err);
	if (!obj) return ft_fail("column %d: %s", err.column, err.text);
	ft_message *msgs = NULL;
	size_t n = 0;
	const char *label = NULL;
	int rc = json_is_object(obj) ? object_messages(obj, &msgs, &n, &label)
				     : ft_fail("expected a JSON object");
	int own_content = rc == 0 && !ft_json_str(obj, "prompt", NULL) && ft_json_str(obj, "instruction", NULL)
			  && *ft_json_str(obj, "input", "");
	if (rc == 0)
		rc = ft_chat_prompt(e->prep, e->tmpl, msgs, n, ft_json_str(obj, "system", NULL),
				    ft_json_str(obj, "tools", NULL), &it->ids);
	if (rc == 0 && label) it->label = ft_xstrdup(label);
	if (own_content) free((char *)msgs[0].content);
	free(msgs);
	json_decref(obj);
	return rc;
}

static int read_text(const gen_cli *o, const gen_env *e, char *buf, gen_items *out)
{
	const char *name = ft_display_name(o->input);
	long lineno = 0;
	for (char *line = buf, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next) *next++ = 0;
		lineno++;
		size_t len = strlen(line);
		if (len && line[len - 1] == '\r') line[--len] = 0;
		if (!len) continue;
		gen_item *it = new_item(out);
		if (encode_line(o, e, line, it) == 0) continue;
		ft_fail_ctx("%s:%ld: ", name, lineno);
		ft_i32vec_free(&it->ids);
		free(it->label);
		out->n--;
		if (o->strict) return -1;
		warn("%s", ft_errmsg());
		out->skipped++;
	}
	return 0;
}

int read_prompts(const gen_cli *o, const gen_env *e, gen_items *out)
{
	size_t len;
	char *buf = slurp(o->input, &len);
	int rc = is_stream((const unsigned char *)buf, len)
		 ? read_records(buf, len, e, out, ft_display_name(o->input))
		 : read_text(o, e, buf, out);
	free(buf);
	return rc;
}

static int dataset_attr(const gen_cli *o, const char *name, ft_dataset_attr *a)
{
	struct stat st;
	if (o->dataset_dir) {
		char *reg = ft_xasprintf("%s/dataset_info.json", o->dataset_dir);
		int has = stat(reg, &st) == 0;
		free(reg);
		if (has && ft_dataset_resolve(o->dataset_dir, name, a) == 0) return 0;
		if (has && stat(name, &st) != 0) return -1;
	}
	if (strcmp(name, "-") && stat(name, &st) != 0)
		return ft_fail("dataset '%s' is neither in --dataset_dir's registry nor a file", name);
	ft_dataset_from_path(name, FT_FMT_AUTO, a);
	return 0;
}

static int add_examples(const gen_cli *o, const gen_env *e, ft_dataset *d, gen_items *out)
{
	for (size_t i = 0; i < d->n; i++) {
		ft_prep_rec rec = {0};
		int rc = ft_prep_example(e->prep, &d->v[i], NULL, &rec);
		if (rc < 0) { ft_prep_rec_free(&rec); return -1; }
		if (rc == 1) {
			ft_fail("%s[%zu]: skipped: %s", d->v[i].source, d->v[i].index,
				d->v[i].why ? d->v[i].why : ft_bad_reason_name(d->v[i].bad));
			ft_prep_rec_free(&rec);
			if (o->strict) return -1;
			warn("%s", ft_errmsg());
			out->skipped++;
			continue;
		}
		gen_item *it = new_item(out);
		ft_i32vec_append(&it->ids, rec.ids.v, rec.ids.n);
		it->label = decode_label(e, rec.labels.v, rec.labels.n);
		ft_prep_rec_free(&rec);
	}
	return 0;
}

int read_dataset_prompts(const gen_cli *o, const gen_env *e, gen_items *out)
{
	char *names = ft_xstrdup(o->dataset), *save = NULL;
	int rc = 0;
	for (char *nm = strtok_r(names, ",", &save); rc == 0 && nm; nm = strtok_r(NULL, ",", &save)) {
		ft_dataset_attr a = {0};
		ft_dataset d = {0};
		rc = dataset_attr(o, nm, &a);
		if (rc == 0) rc = ft_dataset_read(&a, o->max_samples > 0 ? o->max_samples : -1, &d);
		if (rc == 0) rc = add_examples(o, e, &d, out);
		ft_dataset_free(&d);
		ft_dataset_attr_free(&a);
	}
	free(names);
	return rc;
}
