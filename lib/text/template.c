/* template.c - llamafactory 0.9.5's chat templates (data/template.py) and
 * their rendering into elements (Template._encode / Llama2Template._encode,
 * StringFormatter / FunctionFormatter / ToolFormatter / EmptyFormatter). */
#include <stdlib.h>
#include <string.h>
#include "util/json.h"
#include "text/template.h"
#include "util/sbuf.h"

/* A slot list: text slots, and markers for special elements. */
#define BOS "\001bos"
#define EOS "\001eos"
#define TOK(x) "\001tok" x

typedef struct {
	ft_element *v;
	size_t n;
} slots;

struct ft_template {
	char *name;
	slots user, assistant, system, function, observation, prefix;
	slots tools;                /* format_tools as a StringFormatter (phi4_mini); empty: ToolFormatter */
	int fn_tools, tools_fmt;    /* tool formats of function and tools */
	char *default_system;
	char **stop_words;
	size_t n_stop;
	char *thought[2], *tool_call[2];
	int efficient_eos, replace_eos, llama2;
	int reasoning, enable_thinking, preserve_thinking;   /* ReasoningTemplate */
	const char **tokens;        /* named tokens used by the slots */
	size_t n_tokens;
};

/* ---- the built-in table ---------------------------------------------- */

typedef struct {
	const char *name;
	const char *user[5], *assistant[4], *system[4], *function[3], *observation[5], *prefix[3];
	const char *tools[2];       /* a StringFormatter format_tools */
	int fn_tools, tools_fmt;
	const char *default_system;
	const char *stop[3];
	int efficient_eos, replace_eos, llama2;
	int reasoning;              /* template_class=ReasoningTemplate */
} builtin;

#define IM_USER "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
#define IM_SYSTEM "<|im_start|>system\n{{content}}<|im_end|>\n"
#define QWEN_OBS "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
#define L3_USER "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"

/* Unset formatters take llamafactory's register_template defaults
 * (filled in by from_builtin). */
static const builtin BUILTINS[] = {
	{ .name = "default",
	  .user = { "Human: {{content}}", EOS, "\nAssistant:" },
	  .assistant = { "{{content}}", EOS, "\n" },
	  .system = { "System: {{content}}", EOS, "\n" } },
	{ .name = "empty", .assistant = { "{{content}}" } },
	{ .name = "alpaca",
	  .user = { "### Instruction:\n{{content}}\n\n### Response:\n" },
	  .assistant = { "{{content}}", EOS, "\n\n" },
	  .default_system = "Below is an instruction that describes a task. Write a response that "
			    "appropriately completes the request.\n\n" },
	{ .name = "vicuna",
	  .user = { "USER: {{content}} ASSISTANT:" },
	  .default_system = "A chat between a curious user and an artificial intelligence assistant. "
			    "The assistant gives helpful, detailed, and polite answers to the user's questions." },
	{ .name = "llama2",
	  .user = { BOS, "[INST] {{content}} [/INST]" },
	  .system = { "<<SYS>>\n{{content}}\n<</SYS>>\n\n" }, .llama2 = 1 },
	{ .name = "llama2_zh",
	  .user = { BOS, "[INST] {{content}} [/INST]" },
	  .system = { "<<SYS>>\n{{content}}\n<</SYS>>\n\n" },
	  .default_system = "You are a helpful assistant. 你是一个乐于助人的助手。", .llama2 = 1 },
	{ .name = "llama3",
	  .user = { L3_USER },
	  .assistant = { "{{content}}<|eot_id|>" },
	  .system = { "<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>" },
	  .function = { "{{content}}<|eot_id|>" }, .fn_tools = FT_TOOLS_LLAMA3,
	  .observation = { "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
			   "<|start_header_id|>assistant<|end_header_id|>\n\n" },
	  .tools_fmt = FT_TOOLS_LLAMA3, .prefix = { BOS },
	  .stop = { "<|eot_id|>", "<|eom_id|>" }, .replace_eos = 1 },
	{ .name = "mistral",
	  .user = { "[INST] {{content}}[/INST]" },
	  .assistant = { " {{content}}", EOS },
	  .system = { "{{content}}\n\n" },
	  .function = { "[TOOL_CALLS] {{content}}", EOS }, .fn_tools = FT_TOOLS_MISTRAL,
	  .observation = { "[TOOL_RESULTS] {\"content\": {{content}}}[/TOOL_RESULTS]" },
	  .tools_fmt = FT_TOOLS_MISTRAL, .prefix = { BOS }, .llama2 = 1 },
	{ .name = "qwen",
	  .user = { IM_USER }, .assistant = { "{{content}}<|im_end|>\n" }, .system = { IM_SYSTEM },
	  .function = { "{{content}}<|im_end|>\n" }, .fn_tools = FT_TOOLS_QWEN,
	  .observation = { QWEN_OBS }, .tools_fmt = FT_TOOLS_QWEN,
	  .default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
	  .stop = { "<|im_end|>" }, .replace_eos = 1 },
	{ .name = "qwen3_nothink",
	  .user = { IM_USER }, .assistant = { "{{content}}<|im_end|>\n" }, .system = { IM_SYSTEM },
	  .function = { "{{content}}<|im_end|>\n" }, .fn_tools = FT_TOOLS_QWEN,
	  .observation = { QWEN_OBS }, .tools_fmt = FT_TOOLS_QWEN,
	  .stop = { "<|im_end|>" }, .replace_eos = 1 },
	{ .name = "qwen3",
	  .user = { IM_USER }, .assistant = { "{{content}}<|im_end|>\n" }, .system = { IM_SYSTEM },
	  .function = { "{{content}}<|im_end|>\n" }, .fn_tools = FT_TOOLS_QWEN,
	  .observation = { QWEN_OBS }, .tools_fmt = FT_TOOLS_QWEN,
	  .stop = { "<|im_end|>" }, .replace_eos = 1, .reasoning = 1 },
	{ .name = "deepseekr1",
	  .user = { "<｜User｜>{{content}}<｜Assistant｜>" },
	  .prefix = { BOS }, .reasoning = 1 },
	{ .name = "chatml",
	  .user = { IM_USER }, .assistant = { "{{content}}<|im_end|>\n" }, .system = { IM_SYSTEM },
	  .observation = { "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n" },
	  .stop = { "<|im_end|>", "<|im_start|>" }, .replace_eos = 1 },
	{ .name = "yi",
	  .user = { IM_USER }, .assistant = { "{{content}}<|im_end|>\n" }, .system = { IM_SYSTEM },
	  .stop = { "<|im_end|>" } },
	{ .name = "gemma",
	  .user = { "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n" },
	  .assistant = { "{{content}}<end_of_turn>\n" },
	  .system = { "{{content}}\n\n" },
	  .observation = { "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n" },
	  .prefix = { BOS }, .stop = { "<end_of_turn>" }, .replace_eos = 1, .llama2 = 1 },
	{ .name = "gemma3",   /* llamafactory's gemma3: gemma's text, an image plugin ft has not */
	  .user = { "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n" },
	  .assistant = { "{{content}}<end_of_turn>\n" },
	  .system = { "{{content}}\n\n" },
	  .observation = { "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n" },
	  .prefix = { BOS }, .stop = { "<end_of_turn>" }, .replace_eos = 1, .llama2 = 1 },
	{ .name = "phi",
	  .user = { "<|user|>\n{{content}}<|end|>\n<|assistant|>\n" },
	  .assistant = { "{{content}}<|end|>\n" },
	  .system = { "<|system|>\n{{content}}<|end|>\n" },
	  .stop = { "<|end|>" }, .replace_eos = 1 },
	{ .name = "phi_small",
	  .user = { "<|user|>\n{{content}}<|end|>\n<|assistant|>\n" },
	  .assistant = { "{{content}}<|end|>\n" },
	  .system = { "<|system|>\n{{content}}<|end|>\n" },
	  .prefix = { TOK("<|endoftext|>") }, .stop = { "<|end|>" }, .replace_eos = 1 },
	{ .name = "phi4",
	  .user = { "<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>" },
	  .assistant = { "{{content}}<|im_end|>" },
	  .system = { "<|im_start|>system<|im_sep|>{{content}}<|im_end|>" },
	  .stop = { "<|im_end|>" }, .replace_eos = 1 },
	{ .name = "phi4_mini",
	  .user = { "<|user|>{{content}}<|end|><|assistant|>" },
	  .assistant = { "{{content}}<|end|>" },
	  .system = { "<|system|>{{content}}<|end|>" },
	  .tools = { "<|tool|>{{content}}<|/tool|>" },
	  .stop = { "<|end|>" }, .replace_eos = 1 },
	{ .name = "deepseek",
	  .user = { "User: {{content}}\n\nAssistant:" },
	  .system = { "{{content}}\n\n" }, .prefix = { BOS } },
	{ .name = "chatglm3",
	  .user = { TOK("<|user|>"), "\n", "{{content}}", TOK("<|assistant|>") },
	  .assistant = { "\n", "{{content}}" },
	  .system = { TOK("<|system|>"), "\n", "{{content}}" },
	  .function = { "{{content}}" }, .fn_tools = FT_TOOLS_GLM4,
	  .observation = { TOK("<|observation|>"), "\n", "{{content}}", TOK("<|assistant|>") },
	  .tools_fmt = FT_TOOLS_GLM4, .prefix = { TOK("[gMASK]"), TOK("sop") },
	  .stop = { "<|user|>", "<|observation|>" }, .efficient_eos = 1 },
};
#define N_BUILTINS (sizeof BUILTINS / sizeof BUILTINS[0])

const char *ft_template_names(void)
{
	static char names[512];
	if (!names[0])
		for (size_t i = 0; i < N_BUILTINS; i++) {
			if (i) strcat(names, ", ");
			strcat(names, BUILTINS[i].name);
		}
	return names;
}

const char *ft_role_name(int role)
{
	static const char *const n[] = { "user", "assistant", "system", "function", "observation" };
	return role >= 0 && role <= FT_ROLE_OBSERVATION ? n[role] : "?";
}

/* ---- construction ----------------------------------------------------- */

static void add_token_name(ft_template *t, const char *tok)
{
	for (size_t i = 0; i < t->n_tokens; i++)
		if (!strcmp(t->tokens[i], tok)) return;
	t->tokens = ft_xrealloc(t->tokens, (t->n_tokens + 1) * sizeof *t->tokens);
	t->tokens[t->n_tokens++] = tok;
}

static void slots_from_strs(ft_template *t, slots *s, const char *const *strs, size_t max)
{
	size_t n = 0;
	while (n < max && strs[n]) n++;
	s->v = ft_xcalloc(n ? n : 1, sizeof *s->v);
	s->n = n;
	for (size_t i = 0; i < n; i++) {
		const char *x = strs[i];
		if (!strcmp(x, BOS)) s->v[i].kind = FT_EL_BOS;
		else if (!strcmp(x, EOS)) s->v[i].kind = FT_EL_EOS;
		else if (!strncmp(x, "\001tok", 4)) {
			s->v[i].kind = FT_EL_TOKEN;
			s->v[i].text = ft_xstrdup(x + 4);
			add_token_name(t, s->v[i].text);
		} else {
			s->v[i].kind = FT_EL_TEXT;
			s->v[i].text = ft_xstrdup(x);
		}
	}
}

static void slots_copy(slots *d, const slots *s)
{
	d->n = s->n;
	d->v = ft_xcalloc(s->n ? s->n : 1, sizeof *d->v);
	for (size_t i = 0; i < s->n; i++) {
		d->v[i].kind = s->v[i].kind;
		d->v[i].text = s->v[i].text ? ft_xstrdup(s->v[i].text) : NULL;
	}
}

static void slots_free(slots *s)
{
	for (size_t i = 0; i < s->n; i++) free(s->v[i].text);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

static ft_template *new_template(const char *name)
{
	ft_template *t = ft_xcalloc(1, sizeof *t);
	t->name = ft_xstrdup(name);
	t->default_system = ft_xstrdup("");
	t->thought[0] = ft_xstrdup("<think>\n");
	t->thought[1] = ft_xstrdup("\n</think>\n\n");
	t->tool_call[0] = ft_xstrdup("<tool_call>");
	t->tool_call[1] = ft_xstrdup("</tool_call>");
	t->enable_thinking = 1;   /* llamafactory's data_args default */
	return t;
}

static void add_stop_word(ft_template *t, const char *w)
{
	t->stop_words = ft_xrealloc(t->stop_words, (t->n_stop + 1) * sizeof *t->stop_words);
	t->stop_words[t->n_stop++] = ft_xstrdup(w);
}

/* Fill the formatters a definition left unset, as register_template. */
static void fill_defaults(ft_template *t, int has_assistant, int has_function,
			  int has_observation, int has_user)
{
	static const char *const content[] = { "{{content}}", NULL };
	static const char *const content_eos[] = { "{{content}}", EOS, NULL };
	const char *const *def = t->efficient_eos ? content : content_eos;
	if (!has_user) slots_from_strs(t, &t->user, content, 1);
	if (!t->system.n) slots_from_strs(t, &t->system, content, 1);
	if (!has_assistant) slots_from_strs(t, &t->assistant, def, 2);
	if (!has_function) {
		/* FunctionFormatter(slots=format_assistant.slots or default) */
		if (has_assistant) slots_copy(&t->function, &t->assistant);
		else slots_from_strs(t, &t->function, def, 2);
		t->fn_tools = FT_TOOLS_DEFAULT;
	}
	if (!has_observation) slots_copy(&t->observation, &t->user);
}

static ft_template *from_builtin(const builtin *b)
{
	ft_template *t = new_template(b->name);
	free(t->default_system);
	t->default_system = ft_xstrdup(b->default_system ? b->default_system : "");
	t->efficient_eos = b->efficient_eos;
	t->replace_eos = b->replace_eos;
	t->llama2 = b->llama2;
	t->reasoning = b->reasoning;
	t->fn_tools = b->fn_tools;
	t->tools_fmt = b->tools_fmt;
	if (b->user[0]) slots_from_strs(t, &t->user, b->user, 5);
	if (b->assistant[0]) slots_from_strs(t, &t->assistant, b->assistant, 4);
	if (b->system[0]) slots_from_strs(t, &t->system, b->system, 4);
	if (b->function[0]) slots_from_strs(t, &t->function, b->function, 3);
	if (b->observation[0]) slots_from_strs(t, &t->observation, b->observation, 5);
	if (b->prefix[0]) slots_from_strs(t, &t->prefix, b->prefix, 3);
	if (b->tools[0]) slots_from_strs(t, &t->tools, b->tools, 2);
	for (int i = 0; i < 3 && b->stop[i]; i++) add_stop_word(t, b->stop[i]);
	fill_defaults(t, b->assistant[0] != NULL, b->function[0] != NULL, b->observation[0] != NULL,
		      b->user[0] != NULL);
	return t;
}

ft_template *ft_template_get(const char *name)
{
	for (size_t i = 0; i < N_BUILTINS; i++)
		if (!strcmp(BUILTINS[i].name, name)) return from_builtin(&BUILTINS[i]);
	ft_fail("unknown template '%s' (known: %s; or a template JSON file)", name, ft_template_names());
	return NULL;
}

void ft_template_free(ft_template *t)
{
	if (!t) return;
	slots_free(&t->user); slots_free(&t->assistant); slots_free(&t->system);
	slots_free(&t->function); slots_free(&t->observation); slots_free(&t->prefix);
	slots_free(&t->tools);
	for (size_t i = 0; i < t->n_stop; i++) free(t->stop_words[i]);
	free(t->stop_words);
	free(t->tokens);
	free(t->name); free(t->default_system);
	free(t->thought[0]); free(t->thought[1]); free(t->tool_call[0]); free(t->tool_call[1]);
	free(t);
}

/* ---- user-defined templates ----------------------------------------- */

static int json_slots(ft_template *t, const json_t *o, const char *key, slots *s, int *has)
{
	const json_t *a = json_object_get(o, key);
	*has = 0;
	if (!a) return 0;
	if (json_is_string(a)) {   /* a single text slot */
		const char *x[1] = { json_string_value(a) };
		slots_free(s);
		slots_from_strs(t, s, x, 1);
		*has = 1;
		return 0;
	}
	if (!json_is_array(a)) return ft_fail("\"%s\" must be a list of slots", key);
	slots_free(s);
	s->n = json_array_size(a);
	s->v = ft_xcalloc(s->n ? s->n : 1, sizeof *s->v);
	for (size_t i = 0; i < s->n; i++) {
		const json_t *x = json_array_get(a, i);
		if (json_is_string(x)) {
			s->v[i].kind = FT_EL_TEXT;
			s->v[i].text = ft_xstrdup(json_string_value(x));
		} else if (json_is_object(x) && json_is_string(json_object_get(x, "token"))) {
			s->v[i].kind = FT_EL_TOKEN;
			s->v[i].text = ft_xstrdup(json_string_value(json_object_get(x, "token")));
			add_token_name(t, s->v[i].text);
		} else if (json_is_object(x) && json_object_get(x, "bos_token")) {
			s->v[i].kind = FT_EL_BOS;
		} else if (json_is_object(x) && json_object_get(x, "eos_token")) {
			s->v[i].kind = FT_EL_EOS;
		} else {
			return ft_fail("\"%s\"[%zu]: a slot is a string, {\"token\": \"...\"}, "
				       "{\"bos_token\": true} or {\"eos_token\": true}", key, i);
		}
	}
	*has = 1;
	return 0;
}

static int has_placeholder(const slots *s)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i].kind == FT_EL_TEXT && strstr(s->v[i].text, "{{content}}")) return 1;
	return 0;
}

static int load_fields(ft_template *t, const json_t *o)
{
	static const char *const known[] = {
		"name", "base", "format_user", "format_assistant", "format_system", "format_function",
		"format_observation", "format_prefix", "format_tools", "tool_format", "default_system",
		"stop_words", "efficient_eos", "replace_eos", "template_class", "thought_words",
		"tool_call_words", NULL };
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		int ok = 0;
		for (int i = 0; known[i]; i++) ok |= !strcmp(k, known[i]);
		if (!ok) return ft_fail("unknown key \"%s\"", k);
	}
	int hu, ha, hs, hf, ho, hp, ht;
	if (json_slots(t, o, "format_tools", &t->tools, &ht) < 0 ||
	    json_slots(t, o, "format_user", &t->user, &hu) < 0 ||
	    json_slots(t, o, "format_assistant", &t->assistant, &ha) < 0 ||
	    json_slots(t, o, "format_system", &t->system, &hs) < 0 ||
	    json_slots(t, o, "format_function", &t->function, &hf) < 0 ||
	    json_slots(t, o, "format_observation", &t->observation, &ho) < 0 ||
	    json_slots(t, o, "format_prefix", &t->prefix, &hp) < 0)
		return -1;
	const char *ds = ft_json_str(o, "default_system", NULL);
	if (ds) { free(t->default_system); t->default_system = ft_xstrdup(ds); }
	t->efficient_eos = ft_json_bool(o, "efficient_eos", t->efficient_eos);
	t->replace_eos = ft_json_bool(o, "replace_eos", t->replace_eos);
	const char *cls = ft_json_str(o, "template_class", NULL);
	if (cls) {
		if (!strcmp(cls, "llama2")) t->llama2 = 1;
		else if (!strcmp(cls, "default")) t->llama2 = 0;
		else if (!strcmp(cls, "reasoning")) t->reasoning = 1;
		else return ft_fail("template_class must be \"default\", \"llama2\" or \"reasoning\"");
	}
	const char *tf = ft_json_str(o, "tool_format", NULL);
	if (tf) {
		int f = ft_tool_format_parse(tf);
		if (f < 0) return -1;
		t->fn_tools = t->tools_fmt = f;
		if (!ht) slots_free(&t->tools);   /* a base's StringFormatter gives way */
	}
	const json_t *sw = json_object_get(o, "stop_words");
	if (sw) {
		if (!json_is_array(sw)) return ft_fail("\"stop_words\" must be a list of strings");
		for (size_t i = 0; i < t->n_stop; i++) free(t->stop_words[i]);
		t->n_stop = 0;
		for (size_t i = 0; i < json_array_size(sw); i++) {
			if (!json_is_string(json_array_get(sw, i)))
				return ft_fail("\"stop_words\" must be a list of strings");
			add_stop_word(t, json_string_value(json_array_get(sw, i)));
		}
	}
	if (t->replace_eos && !t->n_stop) return ft_fail("replace_eos needs stop_words");
	const char *pairs[2] = { "thought_words", "tool_call_words" };
	char **dst[2] = { t->thought, t->tool_call };
	for (int p = 0; p < 2; p++) {
		const json_t *w = json_object_get(o, pairs[p]);
		if (!w) continue;
		if (!json_is_array(w) || json_array_size(w) != 2 || !json_is_string(json_array_get(w, 0)) ||
		    !json_is_string(json_array_get(w, 1)))
			return ft_fail("\"%s\" must be a list of two strings", pairs[p]);
		for (int i = 0; i < 2; i++) {
			free(dst[p][i]);
			dst[p][i] = ft_xstrdup(json_string_value(json_array_get(w, i)));
		}
	}
	if (!json_object_get(o, "base")) fill_defaults(t, ha, hf, ho, hu);
	else if (!ho && hu) { slots_free(&t->observation); slots_copy(&t->observation, &t->user); }
	const slots *need[] = { &t->user, &t->assistant, &t->system, &t->function, &t->observation };
	const char *need_n[] = { "format_user", "format_assistant", "format_system", "format_function",
				 "format_observation" };
	for (int i = 0; i < 5; i++)
		if (!has_placeholder(need[i]))
			return ft_fail("\"%s\" needs a {{content}} placeholder", need_n[i]);
	return 0;
}

ft_template *ft_template_load(const char *path)
{
	json_t *o = ft_json_load_file(path);
	if (!o) return NULL;
	if (!json_is_object(o)) {
		json_decref(o);
		ft_fail("%s: a template file holds one JSON object", path);
		return NULL;
	}
	const char *base = ft_json_str(o, "base", NULL);
	const char *name = ft_json_str(o, "name", path);
	ft_template *t;
	if (base) {
		t = ft_template_get(base);
		if (!t) { ft_fail_ctx("%s: base: ", path); json_decref(o); return NULL; }
		free(t->name);
		t->name = ft_xstrdup(name);
	} else {
		t = new_template(name);
	}
	if (load_fields(t, o) < 0) {
		ft_fail_ctx("%s: ", path);
		ft_template_free(t);
		t = NULL;
	}
	json_decref(o);
	return t;
}

ft_template *ft_template_open(const char *s)
{
	size_t n = strlen(s);
	if (strchr(s, '/') || (n > 5 && !strcmp(s + n - 5, ".json"))) return ft_template_load(s);
	return ft_template_get(s);
}

/* ---- accessors ------------------------------------------------------- */

const char *ft_template_name(const ft_template *t) { return t->name; }
const char *ft_template_default_system(const ft_template *t) { return t->default_system; }
void ft_template_set_default_system(ft_template *t, const char *s)
{
	free(t->default_system);
	t->default_system = ft_xstrdup(s);
}
void ft_template_set_tool_format(ft_template *t, int fmt)
{
	/* llamafactory: format_function = FunctionFormatter(default_slots, fmt) */
	static const char *const content[] = { "{{content}}", NULL };
	static const char *const content_eos[] = { "{{content}}", EOS, NULL };
	slots_free(&t->function);
	slots_from_strs(t, &t->function, t->efficient_eos ? content : content_eos, 2);
	slots_free(&t->tools);   /* format_tools = ToolFormatter(tool_format) */
	t->fn_tools = t->tools_fmt = fmt;
}
size_t ft_template_n_stop_words(const ft_template *t) { return t->n_stop; }
const char *ft_template_stop_word(const ft_template *t, size_t i) { return t->stop_words[i]; }
int ft_template_efficient_eos(const ft_template *t) { return t->efficient_eos; }
int ft_template_replace_eos(const ft_template *t) { return t->replace_eos; }
int ft_template_is_reasoning(const ft_template *t) { return t->reasoning; }
int ft_template_enable_thinking(const ft_template *t) { return t->enable_thinking; }
int ft_template_preserve_thinking(const ft_template *t) { return t->preserve_thinking; }
void ft_template_set_thinking(ft_template *t, int enable_thinking, int preserve_thinking)
{
	t->enable_thinking = enable_thinking;
	t->preserve_thinking = preserve_thinking;
}
const char *ft_template_thought_word(const ft_template *t, int i) { return t->thought[i != 0]; }
size_t ft_template_tokens(const ft_template *t, const char ***out)
{
	*out = t->tokens;
	return t->n_tokens;
}

/* ---- rendering -------------------------------------------------------- */

void ft_elements_free(ft_elements *e)
{
	for (size_t i = 0; i < e->n; i++) free(e->v[i].text);
	free(e->v);
	e->v = NULL;
	e->n = e->cap = 0;
}

static void el_push(ft_elements *e, int kind, char *text)
{
	if (e->n == e->cap) {
		e->cap = e->cap ? e->cap * 2 : 8;
		e->v = ft_xrealloc(e->v, e->cap * sizeof *e->v);
	}
	e->v[e->n].kind = kind;
	e->v[e->n].text = text;
	e->n++;
}

/* StringFormatter.apply: in each text slot, the first {{content}} and
 * then the first {{idx}} are replaced, in that order. */
static void apply(const slots *s, const char *content, const char *idx, ft_elements *out)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->v[i].kind != FT_EL_TEXT) {
			el_push(out, s->v[i].kind, s->v[i].text ? ft_xstrdup(s->v[i].text) : NULL);
			continue;
		}
		char *x = ft_str_replace(s->v[i].text, "{{content}}", content ? content : "", 0);
		if (idx) {
			char *y = ft_str_replace(x, "{{idx}}", idx, 0);
			free(x);
			x = y;
		}
		el_push(out, FT_EL_TEXT, x);
	}
}

/* The first text element of formatting `content` with `s` (llama2's
 * format_system.apply(...)[0]). */
static char *apply_first(const slots *s, const char *content)
{
	ft_elements e = { 0 };
	apply(s, content, NULL, &e);
	char *r = e.n && e.v[0].kind == FT_EL_TEXT ? ft_xstrdup(e.v[0].text) : ft_xstrdup("");
	ft_elements_free(&e);
	return r;
}

int ft_template_render(const ft_template *t, const ft_message *m, size_t n,
		       const char *system, const char *tools, ft_elements *out)
{
	if (!system || !*system) system = t->default_system;
	int has_tools = tools && *tools;
	for (size_t i = 0; i < n; i++) {
		ft_elements *e = &out[i];
		char *sys_text = NULL;   /* llama2: the system text fused into the query */
		if (i == 0) {
			apply(&t->prefix, NULL, NULL, e);
			if (*system || has_tools) {
				/* format_tools.apply(content=tools)[0]: a StringFormatter
				 * takes the tools' JSON text as it is */
				char *tool_text = !has_tools ? ft_xstrdup("")
						  : t->tools.n ? apply_first(&t->tools, tools)
						  : ft_tools_format(t->tools_fmt, tools);
				if (!tool_text) return ft_fail_ctx("tools: ");
				char *s = ft_xasprintf("%s%s", system, tool_text);
				free(tool_text);
				if (t->llama2) sys_text = apply_first(&t->system, s);
				else apply(&t->system, s, NULL, e);
				free(s);
			}
		}
		char idx[24];
		snprintf(idx, sizeof idx, "%zu", i / 2);
		switch (m[i].role) {
		case FT_ROLE_USER:
			if (sys_text) {
				char *s = ft_xasprintf("%s%s", sys_text, m[i].content);
				apply(&t->user, s, t->llama2 ? NULL : idx, e);
				free(s);
			} else {
				apply(&t->user, m[i].content, t->llama2 ? NULL : idx, e);
			}
			break;
		case FT_ROLE_ASSISTANT: apply(&t->assistant, m[i].content, NULL, e); break;
		case FT_ROLE_OBSERVATION: apply(&t->observation, m[i].content, NULL, e); break;
		case FT_ROLE_FUNCTION: {
			/* llama2-class templates pass no thought/tool-call words */
			const char *const th[2] = { t->thought[0], t->thought[1] };
			const char *const tc[2] = { t->tool_call[0], t->tool_call[1] };
			char *f = ft_function_format(t->fn_tools, m[i].content, t->llama2 ? NULL : th,
						     t->llama2 ? NULL : tc);
			if (!f) { free(sys_text); return ft_fail_ctx("message %zu: ", i); }
			apply(&t->function, f, NULL, e);
			free(f);
			break;
		}
		default:
			free(sys_text);
			return ft_fail("message %zu: unexpected role %s", i, ft_role_name(m[i].role));
		}
		free(sys_text);
	}
	return 0;
}

char *ft_elements_to_string(const ft_elements *e, const char *bos, const char *eos)
{
	ft_sbuf b = { 0 };
	for (size_t i = 0; i < e->n; i++) {
		switch (e->v[i].kind) {
		case FT_EL_TEXT: case FT_EL_TOKEN: ft_sbuf_add(&b, e->v[i].text); break;
		case FT_EL_BOS: ft_sbuf_add(&b, bos ? bos : ""); break;
		case FT_EL_EOS: ft_sbuf_add(&b, eos ? eos : ""); break;
		}
	}
	return ft_sbuf_take(&b);
}
