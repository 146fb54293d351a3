/* test_family_templates.c - the family templates (qwen3 with its thinking
 * handling, qwen3_nothink, deepseekr1) token-equal to llamafactory's own
 * Template.encode_oneturn / encode_multiturn
 * (tests/fixtures/families/templates.json, made by
 * tests/reference/make_family_fixtures.py templates) with the Qwen3
 * tokenizer of $FT_SHARED/tokenizers/qwen3 (skipped when absent). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "util/json.h"
#include "data/preprocess.h"
#include "data/stage.h"
#include "text/template.h"
#include "text/tokenizer.h"

static int role_of(const char *r)
{
	static const char *const n[] = { "user", "assistant", "system", "function", "observation" };
	for (int i = 0; i < 5; i++)
		if (!strcmp(r, n[i])) return i;
	return -1;
}

static int same(const ft_i32vec *v, const json_t *want)
{
	if (v->n != json_array_size(want)) return 0;
	for (size_t i = 0; i < v->n; i++)
		if (v->v[i] != json_integer_value(json_array_get(want, i))) return 0;
	return 1;
}

/* A plain template's encode: ids per message. */
static int plain_encode(const ft_prep *p, const ft_message *m, size_t n, const char *sys,
			const char *tools, ft_i32vec *ids)
{
	ft_elements *els = ft_xcalloc(n, sizeof *els);
	int rc = ft_template_render(ft_prep_get_template(p), m, n, sys, tools, els);
	for (size_t i = 0; i < n && rc == 0; i++) rc = ft_prep_elements(p, &els[i], &ids[i]);
	for (size_t i = 0; i < n; i++) ft_elements_free(&els[i]);
	free(els);
	return rc;
}

/* A text rendering (no tokenizer): elements joined, bos "<s>", a named
 * token as its text. */
static void run_rendering(const json_t *c)
{
	const char *name = ft_json_str(c, "template", ""), *cs = ft_json_str(c, "case", "");
	const json_t *msgs = json_object_get(c, "messages"), *want = json_object_get(c, "rendered");
	size_t n = json_array_size(msgs);
	ft_message *m = ft_xcalloc(n, sizeof *m);
	for (size_t i = 0; i < n; i++) {
		m[i].role = role_of(ft_json_str(json_array_get(msgs, i), "role", ""));
		m[i].content = ft_json_str(json_array_get(msgs, i), "content", "");
	}
	ft_template *t = ft_template_get(name);
	ft_elements *e = ft_xcalloc(n, sizeof *e);
	int eq = t && ft_template_render(t, m, n, ft_json_str(c, "system", ""), ft_json_str(c, "tools", ""),
					 e) == 0;
	for (size_t i = 0; i < n; i++) {
		char *x = ft_elements_to_string(&e[i], "<s>", ft_json_str(c, "eos", ""));
		eq = eq && !strcmp(x, json_string_value(json_array_get(want, i)));
		free(x);
		ft_elements_free(&e[i]);
	}
	ok(eq, "%s %s: rendered as llamafactory's Template._encode", name, cs);
	free(e);
	free(m);
	ft_template_free(t);
}

static void run_case(const ft_tokenizer *tok, const json_t *c)
{
	if (json_object_get(c, "rendered")) {
		run_rendering(c);
		return;
	}
	const char *name = ft_json_str(c, "template", ""), *cs = ft_json_str(c, "case", "");
	const char *sys = ft_json_str(c, "system", ""), *tools = ft_json_str(c, "tools", "");
	int think = ft_json_bool(c, "enable_thinking", 1), keep = ft_json_bool(c, "preserve_thinking", 0);
	int mask = ft_json_bool(c, "mask_history", 0);
	const json_t *msgs = json_object_get(c, "messages");
	size_t n = json_array_size(msgs);
	ft_message *m = ft_xcalloc(n, sizeof *m);
	for (size_t i = 0; i < n; i++) {
		const json_t *x = json_array_get(msgs, i);
		m[i].role = role_of(ft_json_str(x, "role", ""));
		m[i].content = ft_json_str(x, "content", "");
	}
	ft_template *t = ft_template_get(name);
	ft_template_set_thinking(t, think, keep);
	ft_prep_opts po = { .stage = FT_STAGE_SFT, .cutoff_len = 1 << 20, .mask_history = mask };
	ft_prep *p = ft_prep_new(tok, t, &po);
	ft_i32vec *ids = ft_xcalloc(n, sizeof *ids), prompt = { 0 }, resp = { 0 };
	int reasoning = ft_template_is_reasoning(t), rc;
	rc = reasoning ? ft_prep_think_multiturn(p, m, n, sys, tools, mask && !keep, ids)
		       : plain_encode(p, m, n, sys, tools, ids);
	const json_t *mt = json_object_get(c, "multiturn");
	int eq = rc == 0 && json_array_size(mt) * 2 == n;
	for (size_t i = 0; eq && i < n; i++)
		eq = same(&ids[i], json_array_get(json_array_get(mt, i / 2), i % 2));
	ok(eq, "%s (thinking %d, preserve %d, mask_history %d) %s: encode_multiturn token-equal",
	   name, think, keep, mask, cs);
	if (!mask) {   /* encode_oneturn does not depend on mask_history */
		if (reasoning) {
			rc = ft_prep_think_oneturn(p, m, n, sys, tools, &prompt, &resp);
		} else {
			for (size_t i = 0; i < n; i++) ft_i32vec_free(&ids[i]);
			memset(ids, 0, n * sizeof *ids);
			rc = plain_encode(p, m, n, sys, tools, ids);
			for (size_t i = 0; rc == 0 && i + 1 < n; i++) ft_i32vec_append(&prompt, ids[i].v, ids[i].n);
			if (rc == 0) ft_i32vec_append(&resp, ids[n - 1].v, ids[n - 1].n);
		}
		const json_t *o = json_object_get(c, "oneturn");
		ok(rc == 0 && same(&prompt, json_array_get(o, 0)) && same(&resp, json_array_get(o, 1)),
		   "%s (thinking %d, preserve %d) %s: encode_oneturn token-equal", name, think, keep, cs);
	}
	for (size_t i = 0; i < n; i++) ft_i32vec_free(&ids[i]);
	free(ids);
	ft_i32vec_free(&prompt);
	ft_i32vec_free(&resp);
	ft_prep_free(p);
	ft_template_free(t);
	free(m);
}

/* The string helpers against llamafactory's remove_thought. */
static void check_remove_thought(void)
{
	ft_template *t = ft_template_get("qwen3");
	struct { const char *in, *out; } c[] = {
		{ "<think>\na\n</think>\n\nok", "ok" },
		{ "x<think>\na\n</think>\n\ny<think>\nb\n</think>\n\nz", "xyz" },
		{ "\n\n<think>\nopen only", "<think>\nopen only" },
		{ "no thought", "no thought" },
	};
	for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
		char *r = ft_template_remove_thought(t, c[i].in);
		ok(!strcmp(r, c[i].out), "remove_thought case %zu: \"%s\"", i, r);
		free(r);
	}
	ok(ft_template_has_thought(t, "a </think> b") && !ft_template_has_thought(t, "<thin"),
	   "the thought-word test uses the stripped words");
	ft_template_free(t);
}

/* llamafactory's gemma3 renders text as gemma (it adds an image plugin);
 * gemma itself is in tests/fixtures/llamafactory/templates.jsonl. */
static void check_gemma3(void)
{
	ft_message m[4] = { { FT_ROLE_USER, "Hi" }, { FT_ROLE_ASSISTANT, "Hello." },
			    { FT_ROLE_USER, "2+2?" }, { FT_ROLE_ASSISTANT, "4" } };
	ft_template *a = ft_template_get("gemma"), *b = ft_template_get("gemma3");
	ft_elements ea[4] = { { 0 } }, eb[4] = { { 0 } };
	int eq = a && b && ft_template_render(a, m, 4, "Be brief.", NULL, ea) == 0 &&
		 ft_template_render(b, m, 4, "Be brief.", NULL, eb) == 0;
	for (int i = 0; i < 4; i++) {
		char *x = ft_elements_to_string(&ea[i], "<bos>", "<eos>"), *y = ft_elements_to_string(&eb[i], "<bos>", "<eos>");
		eq = eq && !strcmp(x, y);
		free(x); free(y);
		ft_elements_free(&ea[i]); ft_elements_free(&eb[i]);
	}
	ok(eq, "gemma3 renders as gemma (system, multi-turn)");
	ft_template_free(a);
	ft_template_free(b);
}

/* A template file's format_tools is a StringFormatter (as phi4_mini's):
 * the tools' JSON text goes in as it is; --tool_format replaces it with
 * the ToolFormatter, as llamafactory's get_template_and_fix_tokenizer. */
static void check_format_tools(void)
{
	char p[] = "/tmp/ft-test-tpl-XXXXXX";
	const char *js = "{\"name\": \"x\", \"format_user\": \"U:{{content}}\\n\", "
			 "\"format_tools\": \"<tools>{{content}}</tools>\"}";
	int fd = mkstemp(p);
	int w = fd >= 0 && write(fd, js, strlen(js)) == (ssize_t)strlen(js);
	if (fd >= 0) close(fd);
	ft_template *t = w ? ft_template_load(p) : NULL;
	unlink(p);
	ft_message m[1] = { { FT_ROLE_USER, "hi" } };
	ft_elements e = { 0 };
	char *x = t && ft_template_render(t, m, 1, "S", "[1]", &e) == 0 ? ft_elements_to_string(&e, "", "") : NULL;
	ok(x && !strcmp(x, "S<tools>[1]</tools>U:hi\n"), "a template file's format_tools takes the tools' text: %s",
	   x ? x : ft_errmsg());
	free(x);
	ft_elements_free(&e);
	memset(&e, 0, sizeof e);
	if (t) ft_template_set_tool_format(t, FT_TOOLS_DEFAULT);
	x = t && ft_template_render(t, m, 1, "S", "[{\"name\": \"f\", \"parameters\": {\"properties\": {}}}]", &e) == 0 ? ft_elements_to_string(&e, "", "") : NULL;
	ok(x && !strstr(x, "<tools>") && strstr(x, "f"), "--tool_format replaces it with the ToolFormatter: %s",
	   x ? x : ft_errmsg());
	free(x);
	ft_elements_free(&e);
	ft_template_free(t);
}

int main(void)
{
	check_remove_thought();
	check_gemma3();
	check_format_tools();
	const char *shared = getenv("FT_SHARED") ? getenv("FT_SHARED") : "../shared";
	char *td = ft_xasprintf("%s/tokenizers/qwen3", shared);
	json_t *cases = ft_json_load_file("tests/fixtures/families/templates.json");
	ft_tokenizer *tok = access(td, R_OK) == 0 ? ft_tokenizer_load(td) : NULL;
	if (!cases) ok(0, "fixture tests/fixtures/families/templates.json (run from the repository root)");
	if (!tok) skip("no Qwen3 tokenizer under %s: token-level cases skipped", shared);
	for (size_t i = 0; i < json_array_size(cases); i++) {
		const json_t *c = json_array_get(cases, i);
		if (tok || json_object_get(c, "rendered")) run_case(tok, c);
	}
	ft_tokenizer_free(tok);
	json_decref(cases);
	free(td);
	return tap_done();
}
