/* preprocess_think.c - llamafactory's ReasoningTemplate.encode_oneturn and
 * encode_multiturn (data/template.py): thoughts removed from the turns
 * --enable_thinking / --preserve_thinking / mask_history say, and an
 * empty thought added where a response has none: to the prompt (no loss)
 * when thinking is off, to the response (with loss) when it is on. */
#include <stdlib.h>
#include <string.h>
#include "data/preprocess.h"

/* Copies of the messages, content replaced by remove_thought where
 * strip[i]; owned[i] holds the new strings. */
static ft_message *stripped(const ft_template *t, const ft_message *m, size_t n,
			    const int *strip, char **owned)
{
	ft_message *c = ft_xmalloc((n ? n : 1) * sizeof *c);
	for (size_t i = 0; i < n; i++) {
		c[i] = m[i];
		owned[i] = strip[i] ? ft_template_remove_thought(t, m[i].content) : NULL;
		if (owned[i]) c[i].content = owned[i];
	}
	return c;
}

/* Template._encode then tokens: ids per message. */
static int encode(const ft_prep *p, const ft_message *m, size_t n, const char *system,
		  const char *tools, ft_i32vec *ids)
{
	ft_elements *els = ft_xcalloc(n ? n : 1, sizeof *els);
	int rc = ft_template_render(ft_prep_get_template(p), m, n, system, tools, els) < 0 ? 1 : 0;
	for (size_t i = 0; i < n && rc == 0; i++)
		if (ft_prep_elements(p, &els[i], &ids[i]) < 0) rc = -1;
	for (size_t i = 0; i < n; i++) ft_elements_free(&els[i]);
	free(els);
	return rc;
}

/* get_thought_word_ids: the empty thought, tokenized on its own. */
static int thought_ids(const ft_prep *p, ft_i32vec *out)
{
	char *s = ft_template_empty_thought(ft_prep_get_template(p));
	ft_element el = { FT_EL_TEXT, s };
	ft_elements e = { &el, 1, 1 };
	int rc = ft_prep_elements(p, &e, out);
	free(s);
	return rc;
}

/* The empty thought at turn i (prompt ids[i], response ids[i+1]). */
static int add_empty(const ft_prep *p, ft_i32vec *prompt, ft_i32vec *response)
{
	ft_i32vec th = { 0 };
	if (thought_ids(p, &th) < 0) return -1;
	if (!ft_template_enable_thinking(ft_prep_get_template(p))) {
		ft_i32vec_append(prompt, th.v, th.n);
	} else {
		ft_i32vec_append(&th, response->v, response->n);
		ft_i32vec_free(response);
		*response = th;
		return 0;
	}
	ft_i32vec_free(&th);
	return 0;
}

static void free_owned(char **owned, size_t n)
{
	for (size_t i = 0; i < n; i++) free(owned[i]);
	free(owned);
}

int ft_prep_think_oneturn(const ft_prep *p, const ft_message *m, size_t n, const char *system,
			  const char *tools, ft_i32vec *prompt, ft_i32vec *response)
{
	const ft_template *t = ft_prep_get_template(p);
	int *strip = ft_xcalloc(n + 1, sizeof *strip);
	for (size_t i = 1; i + 2 < n; i += 2)   /* range(1, len - 2, 2) */
		strip[i] = !ft_template_preserve_thinking(t);
	if (n && !ft_template_enable_thinking(t)) strip[n - 1] = 1;
	char **owned = ft_xcalloc(n + 1, sizeof *owned);
	ft_message *c = stripped(t, m, n, strip, owned);
	ft_i32vec *ids = ft_xcalloc(n + 1, sizeof *ids);
	int rc = encode(p, c, n, system, tools, ids);
	if (rc == 0) {
		for (size_t i = 0; i + 1 < n; i++) ft_i32vec_append(prompt, ids[i].v, ids[i].n);
		ft_i32vec_append(response, ids[n - 1].v, ids[n - 1].n);
		if (!ft_template_has_thought(t, c[n - 1].content)) rc = add_empty(p, prompt, response);
	}
	for (size_t i = 0; i < n; i++) ft_i32vec_free(&ids[i]);
	free(ids);
	free(c);
	free_owned(owned, n);
	free(strip);
	return rc;
}

int ft_prep_think_multiturn(const ft_prep *p, const ft_message *m, size_t n, const char *system,
			    const char *tools, int discard_history, ft_i32vec *ids)
{
	const ft_template *t = ft_prep_get_template(p);
	int *strip = ft_xcalloc(n + 1, sizeof *strip);
	for (size_t i = 1; i < n; i += 2)
		strip[i] = !ft_template_enable_thinking(t) || (discard_history && i + 2 < n);
	char **owned = ft_xcalloc(n + 1, sizeof *owned);
	ft_message *c = stripped(t, m, n, strip, owned);
	int rc = encode(p, c, n, system, tools, ids);
	/* discarding_history_cot: only the last turn gets an empty thought */
	for (size_t i = discard_history && n >= 2 ? n - 2 : 0; rc == 0 && i + 1 < n; i += 2)
		if (!ft_template_has_thought(t, c[i + 1].content)) rc = add_empty(p, &ids[i], &ids[i + 1]);
	free(c);
	free_owned(owned, n);
	free(strip);
	return rc;
}
