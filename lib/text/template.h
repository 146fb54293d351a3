/* template.h - LLaMA-Factory chat templates (llamafactory 0.9.5).
 *
 * A template turns a conversation (system, tools, user/assistant/function/
 * observation messages) into one list of *elements* per message, exactly
 * as llamafactory's Template._encode builds them before tokenizing: text
 * pieces (each tokenized on its own, without special tokens), named tokens
 * ({"token": "<|user|>"}) and the tokenizer's bos/eos.  Turning elements
 * into ids needs a tokenizer and lives in preprocess.h; everything here is
 * plain strings, so renderings can be checked without a tokenizer.
 *
 * Built-in templates: see ft_template_names().  A template can also be read
 * from a JSON file (docs/FORMAT.md §2.5).
 */
#ifndef FT_TEMPLATE_H
#define FT_TEMPLATE_H

#include <stddef.h>
#include <jansson.h>

enum { FT_ROLE_USER, FT_ROLE_ASSISTANT, FT_ROLE_SYSTEM, FT_ROLE_FUNCTION,
       FT_ROLE_OBSERVATION };
const char *ft_role_name(int role);

typedef struct {
	int role;
	const char *content;
} ft_message;

enum { FT_EL_TEXT, FT_EL_TOKEN, FT_EL_BOS, FT_EL_EOS };
typedef struct {
	int kind;
	char *text;     /* FT_EL_TEXT: the text; FT_EL_TOKEN: the token */
} ft_element;
typedef struct {
	ft_element *v;
	size_t n, cap;
} ft_elements;
void ft_elements_free(ft_elements *e);

/* Tool formats (llamafactory's tool_utils) available to templates. */
enum { FT_TOOLS_DEFAULT, FT_TOOLS_QWEN, FT_TOOLS_MISTRAL, FT_TOOLS_GLM4,
       FT_TOOLS_LLAMA3, FT_TOOLS_COUNT };
int ft_tool_format_parse(const char *name);   /* -1 with a message */

typedef struct ft_template ft_template;

/* A built-in template (new copy; free it), or NULL with an error that
 * lists the known names. */
ft_template *ft_template_get(const char *name);
/* A user-defined template from a JSON file (format in docs/FORMAT.md). */
ft_template *ft_template_load(const char *path);
/* ft_template_get for a known name, ft_template_load for a path (a name
 * containing '/' or ending in ".json"). */
ft_template *ft_template_open(const char *name_or_path);
void ft_template_free(ft_template *t);
/* Comma-separated names of the built-in templates. */
const char *ft_template_names(void);

const char *ft_template_name(const ft_template *t);
const char *ft_template_default_system(const ft_template *t);
/* --default_system replaces the template's (as llamafactory's). */
void ft_template_set_default_system(ft_template *t, const char *s);
/* --tool_format: function and tool formatters of that format. */
void ft_template_set_tool_format(ft_template *t, int fmt);
size_t ft_template_n_stop_words(const ft_template *t);
const char *ft_template_stop_word(const ft_template *t, size_t i);
int ft_template_efficient_eos(const ft_template *t);
int ft_template_replace_eos(const ft_template *t);
/* Reasoning templates (llamafactory's ReasoningTemplate: qwen3,
 * deepseekr1): --enable_thinking (default on) and --preserve_thinking
 * (default off) decide which thoughts are removed and where an empty
 * thought goes; the encoders in lib/data/preprocess_think.c apply them.
 * thought word 0 opens a thought, 1 closes it. */
int ft_template_is_reasoning(const ft_template *t);
int ft_template_enable_thinking(const ft_template *t);
int ft_template_preserve_thinking(const ft_template *t);
void ft_template_set_thinking(ft_template *t, int enable_thinking, int preserve_thinking);
const char *ft_template_thought_word(const ft_template *t, int i);
/* template_think.c: remove_thought (every "<open>...<close>" span, then
 * leading newlines), whether content holds either thought word (without
 * surrounding whitespace), and add_thought("") (the two words). */
char *ft_template_remove_thought(const ft_template *t, const char *content);
int ft_template_has_thought(const ft_template *t, const char *content);
char *ft_template_empty_thought(const ft_template *t);

/* Every named token ({"token": ...}) used by the template's slots. */
size_t ft_template_tokens(const ft_template *t, const char ***out);

/* Render messages[0..n) into out[0..n) (caller zeroes them, frees them
 * with ft_elements_free).  system NULL or "" takes the default system;
 * tools is the JSON text of the tool list (NULL/"" for none).  -1 with a
 * message for content the template cannot render (invalid tool or
 * function-call JSON), as llamafactory raises. */
int ft_template_render(const ft_template *t, const ft_message *messages, size_t n,
		       const char *system, const char *tools, ft_elements *out);

/* Elements as one string, bos/eos shown as the given strings ("" when
 * NULL).  For fixtures and --show. */
char *ft_elements_to_string(const ft_elements *e, const char *bos, const char *eos);

/* ---- tool formatting (template_tools.c) ---------------------------- */

/* The system-prompt text describing the tools (a JSON array text). */
char *ft_tools_format(int fmt, const char *tools_json);
/* Assistant text for a function-call message (JSON of one call or a list
 * of calls with name/arguments), as llamafactory's FunctionFormatter. */
char *ft_function_format(int fmt, const char *content, const char *const thought[2],
			 const char *const tool_call[2]);
/* Python's json.dumps(v, ensure_ascii=False) (indent < 0: one line with
 * ", " and ": "), for renderings identical to llamafactory's. */
char *ft_pyjson_dumps(const json_t *v, int indent);

#endif
