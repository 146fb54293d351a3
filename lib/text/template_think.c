/* template_think.c - the string side of llamafactory's ReasoningTemplate
 * (data/template.py: remove_thought, add_thought, the thought-word test of
 * encode_oneturn / encode_multiturn). */
#include <stdlib.h>
#include <string.h>
#include "text/template.h"
#include "util/sbuf.h"

/* re.sub(escape(open) + "(.*?)" + escape(close), "", content, DOTALL)
 * then lstrip("\n"): each match is the leftmost open with the nearest
 * close after it; an open with no close after it ends the search. */
char *ft_template_remove_thought(const ft_template *t, const char *content)
{
	const char *o = ft_template_thought_word(t, 0), *c = ft_template_thought_word(t, 1);
	size_t lo = strlen(o), lc = strlen(c);
	ft_sbuf b = { 0 };
	const char *s = content;
	for (;;) {
		const char *p = lo ? strstr(s, o) : NULL;
		const char *q = p ? strstr(p + lo, c) : NULL;
		if (!q) break;
		ft_sbuf_addn(&b, s, (size_t)(p - s));
		s = q + lc;
	}
	ft_sbuf_add(&b, s);
	char *r = ft_sbuf_take(&b);
	size_t k = strspn(r, "\n");
	if (k) memmove(r, r + k, strlen(r + k) + 1);
	return r;
}

static int is_pyspace(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* `word.strip() in content` (an empty stripped word is in any content) */
static int holds_stripped(const char *content, const char *w)
{
	size_t n = strlen(w);
	while (n && is_pyspace(*w)) w++, n--;
	while (n && is_pyspace(w[n - 1])) n--;
	if (!n) return 1;
	for (const char *p = content; (p = strchr(p, *w)); p++)
		if (!strncmp(p, w, n)) return 1;
	return 0;
}

int ft_template_has_thought(const ft_template *t, const char *content)
{
	return holds_stripped(content, ft_template_thought_word(t, 0)) ||
	       holds_stripped(content, ft_template_thought_word(t, 1));
}

char *ft_template_empty_thought(const ft_template *t)
{
	return ft_xasprintf("%s%s", ft_template_thought_word(t, 0), ft_template_thought_word(t, 1));
}
