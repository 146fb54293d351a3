/* chat.c - conversation to prompt ids and stop ids; see chat.h */
#include "gen/chat.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

int ft_chat_prompt(const ft_prep *p, const ft_template *t, const ft_message *messages,
		   size_t n, const char *system, const char *tools, ft_i32vec *out)
{
	/* encode_oneturn: everything but the final (empty) assistant turn is
	 * the prompt. */
	ft_message *all = ft_xmalloc((n + 1) * sizeof *all);
	memcpy(all, messages, n * sizeof *all);
	all[n] = (ft_message){FT_ROLE_ASSISTANT, ""};
	if (ft_template_is_reasoning(t)) {   /* the empty thought, history thoughts */
		ft_i32vec resp = {0};
		int rc = ft_prep_think_oneturn(p, all, n + 1, system, tools, out, &resp);
		ft_i32vec_free(&resp);
		free(all);
		return rc == 1 ? -1 : rc;
	}
	ft_elements *els = ft_xcalloc(n + 1, sizeof *els);
	int rc = ft_template_render(t, all, n + 1, system, tools, els);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = ft_prep_elements(p, &els[i], out);
	for (size_t i = 0; i <= n; i++) ft_elements_free(&els[i]);
	free(els);
	free(all);
	return rc;
}

static void add_unique(int32_t *ids, size_t *n, size_t cap, int32_t id)
{
	if (id < 0) return;
	for (size_t i = 0; i < *n; i++)
		if (ids[i] == id) return;
	if (*n < cap) ids[(*n)++] = id;
}

size_t ft_chat_stop_ids(const ft_prep *p, const ft_tokenizer *tok, const ft_template *t,
			int32_t *ids, size_t cap)
{
	size_t n = 0;
	add_unique(ids, &n, cap, ft_prep_eos_id(p));
	for (size_t i = 0; i < ft_template_n_stop_words(t); i++)
		add_unique(ids, &n, cap, ft_tokenizer_token_to_id(tok, ft_template_stop_word(t, i)));
	return n;
}

int ft_chat_role(const char *name)
{
	static const struct { const char *name; int role; } roles[] = {
		{"user", FT_ROLE_USER}, {"human", FT_ROLE_USER},
		{"assistant", FT_ROLE_ASSISTANT}, {"gpt", FT_ROLE_ASSISTANT},
		{"system", FT_ROLE_SYSTEM},
		{"function", FT_ROLE_FUNCTION}, {"function_call", FT_ROLE_FUNCTION},
		{"observation", FT_ROLE_OBSERVATION}, {"tool", FT_ROLE_OBSERVATION},
	};
	for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
		if (!strcmp(name, roles[i].name)) return roles[i].role;
	return -1;
}
