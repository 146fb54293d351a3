/* template_tools.c - llamafactory's tool formatting (tool_utils.py):
 * the system text describing tools and the assistant text of function
 * calls, for the default, qwen, mistral, glm4 and llama3 formats.  Python's
 * json.dumps and str() are reproduced because the renderings embed them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "text/template.h"
#include "util/sbuf.h"

/* ---- Python float repr, json.dumps, str() -------------------------- */

static void py_float(ft_sbuf *b, double x)
{
	char tmp[40];
	if (isnan(x)) { ft_sbuf_add(b, "NaN"); return; }
	if (isinf(x)) { ft_sbuf_add(b, x > 0 ? "Infinity" : "-Infinity"); return; }
	int p;
	for (p = 1; p <= 17; p++) {   /* shortest digits that read back */
		snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
		if (strtod(tmp, NULL) == x) break;
	}
	/* tmp = [-]d[.ddd]e[+-]XX */
	char digits[24];
	size_t nd = 0;
	const char *q = tmp;
	int neg = *q == '-';
	if (neg) q++;
	for (; *q && *q != 'e'; q++)
		if (*q != '.') digits[nd++] = *q;
	int e = atoi(q + 1);
	while (nd > 1 && digits[nd - 1] == '0') nd--;
	digits[nd] = 0;
	if (neg) ft_sbuf_addc(b, '-');
	if (e >= -4 && e < 16) {   /* fixed notation, always with a fraction */
		if (e < 0) {
			ft_sbuf_add(b, "0.");
			for (int i = -1; i > e; i--) ft_sbuf_addc(b, '0');
			ft_sbuf_add(b, digits);
		} else {
			for (int i = 0; i <= e; i++) ft_sbuf_addc(b, (size_t)i < nd ? digits[i] : '0');
			ft_sbuf_addc(b, '.');
			if ((size_t)e + 1 < nd) ft_sbuf_add(b, digits + e + 1);
			else ft_sbuf_addc(b, '0');
		}
	} else {
		ft_sbuf_addc(b, digits[0]);
		if (nd > 1) { ft_sbuf_addc(b, '.'); ft_sbuf_add(b, digits + 1); }
		ft_sbuf_printf(b, "e%c%02d", e < 0 ? '-' : '+', abs(e));
	}
}

static void py_json_str(ft_sbuf *b, const char *s, size_t n)
{
	ft_sbuf_addc(b, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '"': ft_sbuf_add(b, "\\\""); break;
		case '\\': ft_sbuf_add(b, "\\\\"); break;
		case '\n': ft_sbuf_add(b, "\\n"); break;
		case '\r': ft_sbuf_add(b, "\\r"); break;
		case '\t': ft_sbuf_add(b, "\\t"); break;
		case '\b': ft_sbuf_add(b, "\\b"); break;
		case '\f': ft_sbuf_add(b, "\\f"); break;
		default:
			if (c < 0x20) ft_sbuf_printf(b, "\\u%04x", c);
			else ft_sbuf_addc(b, (char)c);
		}
	}
	ft_sbuf_addc(b, '"');
}

static void newline_indent(ft_sbuf *b, int indent, int level)
{
	ft_sbuf_addc(b, '\n');
	for (int i = 0; i < indent * level; i++) ft_sbuf_addc(b, ' ');
}

static void py_dumps(ft_sbuf *b, const json_t *v, int indent, int level)
{
	const char *isep = indent >= 0 ? "," : ", ";
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		if (json_object_size(v) == 0) { ft_sbuf_add(b, "{}"); return; }
		ft_sbuf_addc(b, '{');
		const char *k;
		json_t *x;
		int first = 1;
		json_object_foreach((json_t *)v, k, x) {
			if (!first) ft_sbuf_add(b, isep);
			first = 0;
			if (indent >= 0) newline_indent(b, indent, level + 1);
			py_json_str(b, k, strlen(k));
			ft_sbuf_add(b, ": ");
			py_dumps(b, x, indent, level + 1);
		}
		if (indent >= 0) newline_indent(b, indent, level);
		ft_sbuf_addc(b, '}');
		return;
	}
	case JSON_ARRAY: {
		if (json_array_size(v) == 0) { ft_sbuf_add(b, "[]"); return; }
		ft_sbuf_addc(b, '[');
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i) ft_sbuf_add(b, isep);
			if (indent >= 0) newline_indent(b, indent, level + 1);
			py_dumps(b, json_array_get(v, i), indent, level + 1);
		}
		if (indent >= 0) newline_indent(b, indent, level);
		ft_sbuf_addc(b, ']');
		return;
	}
	case JSON_STRING: py_json_str(b, json_string_value(v), json_string_length(v)); return;
	case JSON_INTEGER: ft_sbuf_printf(b, "%lld", (long long)json_integer_value(v)); return;
	case JSON_REAL: py_float(b, json_real_value(v)); return;
	case JSON_TRUE: ft_sbuf_add(b, "true"); return;
	case JSON_FALSE: ft_sbuf_add(b, "false"); return;
	case JSON_NULL: ft_sbuf_add(b, "null"); return;
	}
}

char *ft_pyjson_dumps(const json_t *v, int indent)
{
	ft_sbuf b = { 0 };
	py_dumps(&b, v, indent, 0);
	return ft_sbuf_take(&b);
}

/* Python repr() of a str: single quotes unless the text has ' and no ". */
static void py_repr_str(ft_sbuf *b, const char *s)
{
	char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
	ft_sbuf_addc(b, q);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '\\' || c == (unsigned char)q) { ft_sbuf_addc(b, '\\'); ft_sbuf_addc(b, (char)c); }
		else if (c == '\n') ft_sbuf_add(b, "\\n");
		else if (c == '\r') ft_sbuf_add(b, "\\r");
		else if (c == '\t') ft_sbuf_add(b, "\\t");
		else if (c < 0x20 || c == 0x7f) ft_sbuf_printf(b, "\\x%02x", c);
		else ft_sbuf_addc(b, (char)c);
	}
	ft_sbuf_addc(b, q);
}

/* Python str() of a value loaded by json.loads (repr for containers). */
static void py_str(ft_sbuf *b, const json_t *v, int top)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		if (top) ft_sbuf_add(b, json_string_value(v));
		else py_repr_str(b, json_string_value(v));
		return;
	case JSON_INTEGER: ft_sbuf_printf(b, "%lld", (long long)json_integer_value(v)); return;
	case JSON_REAL: {
		double x = json_real_value(v);
		if (isinf(x)) ft_sbuf_add(b, x > 0 ? "inf" : "-inf");
		else if (isnan(x)) ft_sbuf_add(b, "nan");
		else py_float(b, x);
		return;
	}
	case JSON_TRUE: ft_sbuf_add(b, "True"); return;
	case JSON_FALSE: ft_sbuf_add(b, "False"); return;
	case JSON_NULL: ft_sbuf_add(b, "None"); return;
	case JSON_ARRAY:
		ft_sbuf_addc(b, '[');
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i) ft_sbuf_add(b, ", ");
			py_str(b, json_array_get(v, i), 0);
		}
		ft_sbuf_addc(b, ']');
		return;
	case JSON_OBJECT: {
		ft_sbuf_addc(b, '{');
		const char *k;
		json_t *x;
		int first = 1;
		json_object_foreach((json_t *)v, k, x) {
			if (!first) ft_sbuf_add(b, ", ");
			first = 0;
			py_repr_str(b, k);
			ft_sbuf_add(b, ": ");
			py_str(b, x, 0);
		}
		ft_sbuf_addc(b, '}');
		return;
	}
	}
}

/* Python truthiness of a JSON value. */
static int py_truthy(const json_t *v)
{
	if (!v) return 0;
	switch (json_typeof(v)) {
	case JSON_OBJECT: return json_object_size(v) != 0;
	case JSON_ARRAY: return json_array_size(v) != 0;
	case JSON_STRING: return json_string_length(v) != 0;
	case JSON_INTEGER: return json_integer_value(v) != 0;
	case JSON_REAL: return json_real_value(v) != 0;
	case JSON_TRUE: return 1;
	default: return 0;
	}
}

/* ---- tool descriptions --------------------------------------------- */

int ft_tool_format_parse(const char *name)
{
	static const char *const names[FT_TOOLS_COUNT] = { "default", "qwen", "mistral", "glm4", "llama3" };
	for (int i = 0; i < FT_TOOLS_COUNT; i++)
		if (!strcmp(name, names[i])) return i;
	return ft_fail("unknown tool format '%s' (known: default, qwen, mistral, glm4, llama3)", name);
}

/* tool.get("function") when tool["type"] == "function", else tool. */
static const json_t *unwrap_tool(const json_t *tool)
{
	const json_t *type = json_object_get(tool, "type");
	if (json_is_string(type) && !strcmp(json_string_value(type), "function"))
		return json_object_get(tool, "function");
	return tool;
}

/* The same tool wrapped as {"type": "function", "function": tool}. */
static json_t *wrap_tool(const json_t *tool)
{
	const json_t *type = json_object_get(tool, "type");
	if (json_is_string(type) && !strcmp(json_string_value(type), "function"))
		return json_incref((json_t *)tool);
	json_t *w = json_object();
	json_object_set_new(w, "type", json_string("function"));
	json_object_set(w, "function", (json_t *)tool);
	return w;
}

static int default_tool(ft_sbuf *b, ft_sbuf *names, const json_t *tool0)
{
	const json_t *tool = unwrap_tool(tool0);
	const json_t *name = json_object_get(tool, "name");
	const json_t *params = json_object_get(tool, "parameters");
	const json_t *props = json_object_get(params, "properties");
	if (!json_is_object(tool) || !name || !json_is_object(props))
		return ft_fail("tool needs a name and parameters.properties");
	ft_sbuf args = { 0 };
	const json_t *req = json_object_get(params, "required");
	const char *pname;
	json_t *p;
	json_object_foreach((json_t *)props, pname, p) {
		int required = 0;
		for (size_t i = 0; json_is_array(req) && i < json_array_size(req); i++) {
			const json_t *r = json_array_get(req, i);
			if (json_is_string(r) && !strcmp(json_string_value(r), pname)) required = 1;
		}
		ft_sbuf_printf(&args, "  - %s (", pname);
		if (json_object_get(p, "type")) py_str(&args, json_object_get(p, "type"), 1);
		ft_sbuf_printf(&args, "%s): ", required ? ", required" : "");
		if (json_object_get(p, "description")) py_str(&args, json_object_get(p, "description"), 1);
		const json_t *en = json_object_get(p, "enum"), *items = json_object_get(p, "items");
		if (py_truthy(en) && json_is_array(en)) {
			ft_sbuf_add(&args, ", should be one of [");
			for (size_t i = 0; i < json_array_size(en); i++) {
				if (i) ft_sbuf_add(&args, ", ");
				py_str(&args, json_array_get(en, i), 1);
			}
			ft_sbuf_addc(&args, ']');
		}
		if (py_truthy(items)) {
			ft_sbuf_add(&args, ", where each item should be ");
			if (json_object_get(items, "type")) py_str(&args, json_object_get(items, "type"), 1);
		}
		ft_sbuf_addc(&args, '\n');
	}
	ft_sbuf_add(b, "> Tool Name: ");
	py_str(b, name, 1);
	ft_sbuf_add(b, "\nTool Description: ");
	if (json_object_get(tool, "description")) py_str(b, json_object_get(tool, "description"), 1);
	ft_sbuf_add(b, "\nTool Args:\n");
	if (args.s) ft_sbuf_add(b, args.s);
	ft_sbuf_addc(b, '\n');
	free(args.s);
	if (names->n) ft_sbuf_add(names, ", ");
	py_str(names, name, 1);
	return 0;
}

static const char QWEN_TOOL_PROMPT_A[] =
	"\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
	"You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char QWEN_TOOL_PROMPT_B[] =
	"\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
	"<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
	"\"arguments\": <args-json-object>}\n</tool_call>";
static const char GLM4_TOOL_PROMPT[] =
	"你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
	"你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具";

char *ft_tools_format(int fmt, const char *tools_json)
{
	json_error_t err;
	json_t *tools = json_loads(tools_json, JSON_DECODE_ANY, &err);
	if (!tools) {
		ft_fail("invalid JSON in the tool description: %s", err.text);
		return NULL;
	}
	/* llamafactory renders "" for an empty list. */
	if ((json_is_array(tools) && json_array_size(tools) == 0) ||
	    (json_is_object(tools) && json_object_size(tools) == 0)) {
		json_decref(tools);
		return ft_xstrdup("");
	}
	if (!json_is_array(tools)) {
		json_decref(tools);
		ft_fail("the tool description is not a JSON list");
		return NULL;
	}
	ft_sbuf b = { 0 }, names = { 0 };
	size_t i;
	json_t *tool;
	int rc = 0;
	switch (fmt) {
	case FT_TOOLS_DEFAULT: {
		ft_sbuf text = { 0 };
		json_array_foreach(tools, i, tool) if (rc == 0) rc = default_tool(&text, &names, tool);
		ft_sbuf_add(&b, "You have access to the following tools:\n");
		if (text.s) ft_sbuf_add(&b, text.s);
		ft_sbuf_add(&b, "Use the following format if using a tool:\n```\nAction: tool name (one of [");
		if (names.s) ft_sbuf_add(&b, names.s);
		ft_sbuf_add(&b, "])\nAction Input: the input to the tool, in a JSON format representing the kwargs "
			    "(e.g. ```{\"input\": \"hello world\", \"num_beams\": 5}```)\n```\n");
		free(text.s);
		break;
	}
	case FT_TOOLS_QWEN:
		ft_sbuf_add(&b, QWEN_TOOL_PROMPT_A);
		json_array_foreach(tools, i, tool) {
			if (!json_is_object(tool)) { rc = ft_fail("a tool is not a JSON object"); break; }
			json_t *w = wrap_tool(tool);
			char *s = ft_pyjson_dumps(w, -1);
			ft_sbuf_addc(&b, '\n');
			ft_sbuf_add(&b, s);
			free(s);
			json_decref(w);
		}
		ft_sbuf_add(&b, QWEN_TOOL_PROMPT_B);
		break;
	case FT_TOOLS_MISTRAL: {
		json_t *all = json_array();
		json_array_foreach(tools, i, tool) {
			if (!json_is_object(tool)) { rc = ft_fail("a tool is not a JSON object"); break; }
			json_array_append_new(all, wrap_tool(tool));
		}
		char *s = ft_pyjson_dumps(all, -1);
		ft_sbuf_add(&b, "[AVAILABLE_TOOLS] ");
		ft_sbuf_add(&b, s);
		ft_sbuf_add(&b, "[/AVAILABLE_TOOLS]");
		free(s);
		json_decref(all);
		break;
	}
	case FT_TOOLS_GLM4:
		ft_sbuf_add(&b, GLM4_TOOL_PROMPT);
		json_array_foreach(tools, i, tool) {
			const json_t *t = unwrap_tool(tool);
			if (!json_is_object(t) || !json_object_get(t, "name")) {
				rc = ft_fail("tool needs a name");
				break;
			}
			char *s = ft_pyjson_dumps(t, 4);
			ft_sbuf_add(&b, "\n\n## ");
			py_str(&b, json_object_get(t, "name"), 1);
			ft_sbuf_add(&b, "\n\n");
			ft_sbuf_add(&b, s);
			ft_sbuf_add(&b, "\n在调用上述函数时，请使用 Json 格式表示调用的参数。");
			free(s);
		}
		break;
	case FT_TOOLS_LLAMA3: {
		/* llamafactory puts today's date in the prompt. */
		char date[32];
		time_t now = time(NULL);
		struct tm tm;
		localtime_r(&now, &tm);
		strftime(date, sizeof date, "%d %b %Y", &tm);
		ft_sbuf_printf(&b, "Cutting Knowledge Date: December 2023\nToday Date: %s\n\n"
			       "You have access to the following functions. To call a function, please respond "
			       "with JSON for a function call. Respond in the format {\"name\": function name, "
			       "\"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n",
			       date);
		json_array_foreach(tools, i, tool) {
			if (!json_is_object(tool)) { rc = ft_fail("a tool is not a JSON object"); break; }
			json_t *w = wrap_tool(tool);
			char *s = ft_pyjson_dumps(w, 4);
			ft_sbuf_add(&b, s);
			ft_sbuf_add(&b, "\n\n");
			free(s);
			json_decref(w);
		}
		break;
	}
	default:
		rc = ft_fail("unknown tool format %d", fmt);
	}
	json_decref(tools);
	free(names.s);
	if (rc < 0) { free(b.s); return NULL; }
	return ft_sbuf_take(&b);
}

/* ---- function calls -------------------------------------------------- */

typedef struct { char *name; json_t *args; } call;

/* json.loads(text) as a list of {"name", "arguments"}; arguments are
 * kept as values (llamafactory round-trips them through json.dumps). */
static int parse_calls(const char *text, size_t len, call **out, size_t *n)
{
	json_error_t err;
	json_t *v = json_loadb(text, len, JSON_DECODE_ANY, &err);
	if (!v) return ft_fail("invalid JSON in a function call: %s", err.text);
	if (!json_is_array(v)) {
		json_t *a = json_array();
		json_array_append_new(a, v);
		v = a;
	}
	*n = json_array_size(v);
	*out = ft_xcalloc(*n ? *n : 1, sizeof **out);
	for (size_t i = 0; i < *n; i++) {
		json_t *c = json_array_get(v, i);
		json_t *name = json_object_get(c, "name"), *args = json_object_get(c, "arguments");
		if (!json_is_string(name) || !args) {
			for (size_t j = 0; j < i; j++) { free((*out)[j].name); json_decref((*out)[j].args); }
			free(*out);
			json_decref(v);
			return ft_fail("a function call needs \"name\" and \"arguments\"");
		}
		(*out)[i].name = ft_xstrdup(json_string_value(name));
		(*out)[i].args = json_incref(args);
	}
	json_decref(v);
	return 0;
}

static void format_calls(ft_sbuf *b, int fmt, const call *c, size_t n)
{
	json_t *objs = json_array();
	for (size_t i = 0; i < n; i++) {
		switch (fmt) {
		case FT_TOOLS_QWEN: {
			json_t *o = json_object();
			json_object_set_new(o, "name", json_string(c[i].name));
			json_object_set(o, "arguments", c[i].args);
			char *s = ft_pyjson_dumps(o, -1);
			ft_sbuf_printf(b, "%s<tool_call>\n%s\n</tool_call>", i ? "\n" : "", s);
			free(s);
			json_decref(o);
			break;
		}
		case FT_TOOLS_GLM4: {   /* llamafactory refuses parallel calls here */
			char *s = ft_pyjson_dumps(c[i].args, -1);
			ft_sbuf_printf(b, "%s%s\n%s", i ? "\n" : "", c[i].name, s);
			free(s);
			break;
		}
		case FT_TOOLS_MISTRAL: case FT_TOOLS_LLAMA3: {
			json_t *o = json_object();
			json_object_set_new(o, "name", json_string(c[i].name));
			json_object_set(o, fmt == FT_TOOLS_LLAMA3 ? "parameters" : "arguments", c[i].args);
			json_array_append_new(objs, o);
			break;
		}
		default: {
			char *s = ft_pyjson_dumps(c[i].args, -1);
			ft_sbuf_printf(b, "%sAction: %s\nAction Input: %s", i ? "\n" : "", c[i].name, s);
			free(s);
		}
		}
	}
	if (fmt == FT_TOOLS_MISTRAL || fmt == FT_TOOLS_LLAMA3) {
		const json_t *v = fmt == FT_TOOLS_LLAMA3 && n == 1 ? json_array_get(objs, 0) : objs;
		char *s = ft_pyjson_dumps(v, -1);
		ft_sbuf_add(b, s);
		free(s);
	}
	json_decref(objs);
}

/* First match of open(.*?)close in s (DOTALL): [*start, *end) spans the
 * whole match. */
static int find_between(const char *s, const char *open, const char *close,
			const char **start, const char **end)
{
	if (!open || !close || !*open) return 0;
	const char *a = strstr(s, open);
	if (!a) return 0;
	const char *c = strstr(a + strlen(open), close);
	if (!c) return 0;
	*start = a;
	*end = c + strlen(close);
	return 1;
}

char *ft_function_format(int fmt, const char *content, const char *const thought[2],
			 const char *const tool_call[2])
{
	const char *a, *e;
	call *calls = NULL;
	size_t n = 0;
	ft_sbuf b = { 0 };
	if (tool_call && find_between(content, tool_call[0], tool_call[1], &a, &e)) {
		const char *inner = a + strlen(tool_call[0]);
		size_t inner_len = (size_t)(e - strlen(tool_call[1]) - inner);
		if (parse_calls(inner, inner_len, &calls, &n) < 0) return NULL;
		char *match = ft_xasprintf("%.*s", (int)(e - a), a);
		char *rest = ft_str_replace(content, match, "", 1);
		ft_sbuf_add(&b, rest);
		free(rest);
		free(match);
	} else if (thought && find_between(content, thought[0], thought[1], &a, &e)) {
		char *match = ft_xasprintf("%.*s", (int)(e - a), a);
		char *json_part = ft_str_replace(content, match, "", 1);
		int rc = parse_calls(json_part, strlen(json_part), &calls, &n);
		free(json_part);
		if (rc < 0) { free(match); return NULL; }
		ft_sbuf_add(&b, match);
		free(match);
	} else if (parse_calls(content, strlen(content), &calls, &n) < 0) {
		return NULL;
	}
	format_calls(&b, fmt, calls, n);
	for (size_t i = 0; i < n; i++) { free(calls[i].name); json_decref(calls[i].args); }
	free(calls);
	return ft_sbuf_take(&b);
}
