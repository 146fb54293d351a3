/* test_template.c - templates rendered exactly as llamafactory 0.9.5
 * (tests/fixtures/llamafactory/templates.jsonl, made by
 * tests/reference/make_llamafactory_fixtures.py), user templates, errors,
 * Python-compatible JSON. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "text/template.h"

#define FIX "tests/fixtures/llamafactory/"

static int role_of(const char *s)
{
	static const char *const n[] = { "user", "assistant", "system", "function", "observation" };
	for (int i = 0; i < 5; i++)
		if (!strcmp(s, n[i])) return i;
	return -1;
}

/* Render one fixture row; 1 when every message equals the expected text. */
static int check_row(const json_t *row, char *why, size_t whylen)
{
	const char *name = json_string_value(json_object_get(row, "template"));
	ft_template *t = ft_template_get(name);
	if (!t) { snprintf(why, whylen, "%s", ft_errmsg()); return 0; }
	const json_t *msgs = json_object_get(row, "messages");
	size_t n = json_array_size(msgs);
	ft_message *m = calloc(n, sizeof *m);
	for (size_t i = 0; i < n; i++) {
		const json_t *x = json_array_get(msgs, i);
		m[i].role = role_of(json_string_value(json_object_get(x, "role")));
		m[i].content = json_string_value(json_object_get(x, "content"));
	}
	ft_elements *out = calloc(n, sizeof *out);
	int rc = ft_template_render(t, m, n, json_string_value(json_object_get(row, "system")),
				    json_string_value(json_object_get(row, "tools")), out);
	const json_t *want = json_object_get(row, "rendered");
	int good = 1;
	if (json_is_null(want)) {
		good = rc < 0;
		if (!good) snprintf(why, whylen, "rendered but llamafactory failed");
	} else if (rc < 0) {
		good = 0;
		snprintf(why, whylen, "%s", ft_errmsg());
	} else {
		for (size_t i = 0; i < n && good; i++) {
			char *s = ft_elements_to_string(&out[i], json_string_value(json_object_get(row, "bos")),
							json_string_value(json_object_get(row, "eos")));
			const char *w = json_string_value(json_array_get(want, i));
			if (strcmp(s, w)) {
				good = 0;
				snprintf(why, whylen, "message %zu:\n# got  [%s]\n# want [%s]", i, s, w);
			}
			free(s);
		}
	}
	for (size_t i = 0; i < n; i++) ft_elements_free(&out[i]);
	free(out);
	free(m);
	ft_template_free(t);
	return good;
}

static void test_fixtures(void)
{
	FILE *f = fopen(FIX "templates.jsonl", "r");
	if (!ok(f != NULL, "templates.jsonl present")) return;
	char *line = NULL;
	size_t cap = 0;
	int rows = 0;
	while (getline(&line, &cap, f) > 0) {
		json_error_t err;
		json_t *row = json_loads(line, 0, &err);
		if (!row) { ok(0, "fixture line parses: %s", err.text); continue; }
		char why[4096] = "";
		int good = check_row(row, why, sizeof why);
		ok(good, "%s / %s", json_string_value(json_object_get(row, "template")),
		   json_string_value(json_object_get(row, "case")));
		if (!good) printf("# %s\n", why);
		json_decref(row);
		rows++;
	}
	free(line);
	fclose(f);
	ok(rows >= 40, "%d renderings checked", rows);
}

static void test_unknown(void)
{
	ft_template *t = ft_template_get("nosuch");
	ok(t == NULL, "unknown template fails");
	ok(strstr(ft_errmsg(), "unknown template 'nosuch'") && strstr(ft_errmsg(), "qwen") &&
	   strstr(ft_errmsg(), "chatglm3"), "error lists the known templates: %s", ft_errmsg());
}

static void test_properties(void)
{
	ft_template *t = ft_template_get("qwen");
	ok(ft_template_replace_eos(t) && ft_template_n_stop_words(t) == 1 &&
	   !strcmp(ft_template_stop_word(t, 0), "<|im_end|>"), "qwen: replace_eos with <|im_end|>");
	ok(!ft_template_efficient_eos(t), "qwen: no efficient_eos");
	ft_template_set_default_system(t, "Be brief.");
	ok(!strcmp(ft_template_default_system(t), "Be brief."), "default_system can be replaced");
	ft_template_free(t);
	t = ft_template_get("chatglm3");
	const char **toks;
	size_t nt = ft_template_tokens(t, &toks);
	ok(ft_template_efficient_eos(t) && nt == 6, "chatglm3: efficient_eos, 6 named tokens (%zu)", nt);
	ft_template_free(t);
}

static char *write_tmp(const char *text)
{
	char *path = strdup("/tmp/ft-template-XXXXXX.json");
	int fd = mkstemps(path, 5);
	if (write(fd, text, strlen(text)) < 0) path[0] = 0;
	close(fd);
	return path;
}

static char *render1(ft_template *t, const char *sys, const char *user, const char *asst)
{
	ft_message m[2] = { { FT_ROLE_USER, user }, { FT_ROLE_ASSISTANT, asst } };
	ft_elements e[2] = { { 0 } };
	if (ft_template_render(t, m, 2, sys, NULL, e) < 0) return NULL;
	char *a = ft_elements_to_string(&e[0], "<s>", "</s>");
	char *b = ft_elements_to_string(&e[1], "<s>", "</s>");
	char *r = ft_xasprintf("%s|%s", a, b);
	free(a); free(b);
	ft_elements_free(&e[0]); ft_elements_free(&e[1]);
	return r;
}

static void test_user_template(void)
{
	char *p = write_tmp("{\"name\": \"mine\", \"format_user\": [\"<user>{{content}}\\n<model>\"],"
			    " \"format_assistant\": [\"{{content}}\", {\"eos_token\": true}, \"\\n\"],"
			    " \"format_prefix\": [{\"bos_token\": true}], \"default_system\": \"S\","
			    " \"format_system\": \"[{{content}}]\", \"stop_words\": [\"</s>\"]}");
	ft_template *t = ft_template_open(p);
	ok(t != NULL, "user template loads %s", t ? "" : ft_errmsg());
	if (t) {
		char *r = render1(t, NULL, "hi", "yo");
		ok(r && !strcmp(r, "<s>[S]<user>hi\n<model>|yo</s>\n"), "user template renders: %s", r);
		ok(!strcmp(ft_template_name(t), "mine"), "user template name");
		free(r);
		ft_template_free(t);
	}
	unlink(p); free(p);

	p = write_tmp("{\"base\": \"qwen\", \"name\": \"q2\", \"default_system\": \"\"}");
	t = ft_template_open(p);
	ok(t != NULL, "template with a base loads");
	if (t) {
		char *r = render1(t, NULL, "a", "b");
		ok(r && !strcmp(r, "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n|b<|im_end|>\n"),
		   "base qwen without system: %s", r);
		free(r);
		ft_template_free(t);
	}
	unlink(p); free(p);

	p = write_tmp("{\"format_user\": [\"no placeholder\"]}");
	t = ft_template_open(p);
	ok(!t && strstr(ft_errmsg(), "placeholder"), "slot without {{content}} refused: %s", ft_errmsg());
	unlink(p); free(p);
	p = write_tmp("{\"format_usr\": [\"{{content}}\"]}");
	t = ft_template_open(p);
	ok(!t && strstr(ft_errmsg(), "unknown key \"format_usr\""), "unknown key refused: %s", ft_errmsg());
	unlink(p); free(p);
	p = write_tmp("{\"format_user\": [\"{{content}}\"");
	t = ft_template_open(p);
	ok(!t, "bad JSON refused: %s", ft_errmsg());
	unlink(p); free(p);
}

static void test_pyjson(void)
{
	json_error_t err;
	json_t *v = json_loads("{\"a\": [1, 2.5, 1e-05, 1e16, 100000.0, 0.1, true, null],"
			       " \"b\": \"x\\\"\\n\\u0001é\", \"c\": {}}", 0, &err);
	char *s = ft_pyjson_dumps(v, -1);
	ok(!strcmp(s, "{\"a\": [1, 2.5, 1e-05, 1e+16, 100000.0, 0.1, true, null], \"b\": \"x\\\"\\n\\u0001é\", \"c\": {}}"),
	   "json.dumps one line: %s", s);
	free(s);
	s = ft_pyjson_dumps(json_object_get(v, "a"), 4);
	ok(!strcmp(s, "[\n    1,\n    2.5,\n    1e-05,\n    1e+16,\n    100000.0,\n    0.1,\n    true,\n    null\n]"),
	   "json.dumps indent=4");
	free(s);
	json_decref(v);
	char *f = ft_function_format(FT_TOOLS_QWEN, "not json", NULL, NULL);
	ok(f == NULL && strstr(ft_errmsg(), "invalid JSON"), "bad function-call JSON fails: %s", ft_errmsg());
	f = ft_function_format(FT_TOOLS_DEFAULT, "[{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]", NULL, NULL);
	ok(f && !strcmp(f, "Action: a\nAction Input: {}\nAction: b\nAction Input: {\"x\": 1}"), "parallel calls: %s", f);
	free(f);
	f = ft_tools_format(FT_TOOLS_QWEN, "[]");
	ok(f && !*f, "empty tool list renders nothing");
	free(f);
}

int main(void)
{
	test_fixtures();
	test_unknown();
	test_properties();
	test_user_template();
	test_pyjson();
	return tap_done();
}
