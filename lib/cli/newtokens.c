/* newtokens.c - LLaMA-Factory's add_tokens, add_special_tokens and
 * new_special_tokens_config; see newtokens.h */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include "cli/lfargs.h"
#include "cli/newtokens.h"
#include "util/error.h"

/* Python's [t.strip() for t in s.split(",")]: empty items stay (the
 * tokenizer ignores them). */
static size_t split_strip(const char *s, char ***out)
{
	size_t n = 0;
	*out = NULL;
	for (const char *p = s;; p++) {
		const char *e = strchr(p, ',');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		while (l && isspace((unsigned char)*p)) p++, l--;
		while (l && isspace((unsigned char)p[l - 1])) l--;
		*out = ft_xrealloc(*out, (n + 1) * sizeof **out);
		char *t = ft_xmalloc(l + 1);
		memcpy(t, p, l);
		t[l] = 0;
		(*out)[n++] = t;
		if (!e) break;
		p = e;
	}
	return n;
}

int ft_new_tokens_parse(ft_new_tokens *nt, const char *add_tokens, const char *add_special_tokens,
			const char *config)
{
	memset(nt, 0, sizeof *nt);
	if (add_tokens) nt->n_add = split_strip(add_tokens, &nt->add);
	if (!config) {
		if (add_special_tokens) nt->n_special = split_strip(add_special_tokens, &nt->special);
		return 0;
	}
	ft_lfargs a = {0};
	if (ft_lfargs_load_pairs(&a, config) < 0) {
		ft_lfargs_free(&a);
		return ft_fail_ctx("new_special_tokens_config: ");
	}
	if (a.n == 0) {
		ft_lfargs_free(&a);
		return ft_fail("new_special_tokens_config: %s: expected a mapping of tokens to their "
			       "descriptions", config);
	}
	nt->both = add_special_tokens != NULL;
	nt->n_special = a.n;
	nt->special = ft_xcalloc(a.n, sizeof *nt->special);
	nt->desc = ft_xcalloc(a.n, sizeof *nt->desc);
	for (size_t i = 0; i < a.n; i++) {
		nt->special[i] = ft_xstrdup(a.v[i].key);
		nt->desc[i] = ft_xstrdup(a.v[i].value);
	}
	ft_lfargs_free(&a);
	return 0;
}

int ft_new_tokens_any(const ft_new_tokens *nt)
{
	return nt->n_add || nt->n_special;
}

int ft_new_tokens_apply(const ft_new_tokens *nt, ft_tokenizer *t, int *n_added)
{
	int a = 0, b = 0;
	*n_added = 0;
	if (nt->n_add && (a = ft_tokenizer_add_tokens(t, (const char *const *)nt->add, nt->n_add, 0)) < 0)
		return -1;
	if (nt->n_special &&
	    (b = ft_tokenizer_add_tokens(t, (const char *const *)nt->special, nt->n_special, 1)) < 0)
		return -1;
	*n_added = a + b;
	return 0;
}

/* convert_tokens_to_ids, minus unk (HF gives unk for a token it lacks) */
static int32_t known_id(const ft_tokenizer *t, const char *s)
{
	int32_t id = ft_tokenizer_token_to_id(t, s);
	return id == ft_tokenizer_info_get(t)->unk_id ? -1 : id;
}

static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

void ft_new_tokens_ids(const ft_new_tokens *nt, const ft_tokenizer *t, int64_t vocab, ft_i32vec *out)
{
	out->n = 0;
	for (size_t k = 0; k < nt->n_add + nt->n_special; k++) {
		const char *s = k < nt->n_add ? nt->add[k] : nt->special[k - nt->n_add];
		int32_t id = known_id(t, s);
		if (id >= 0 && id < vocab) ft_i32vec_push(out, id);
	}
	if (out->n) qsort(out->v, out->n, sizeof *out->v, cmp_i32);
	size_t w = 0;
	for (size_t i = 0; i < out->n; i++)
		if (!w || out->v[w - 1] != out->v[i]) out->v[w++] = out->v[i];
	out->n = w;
}

int ft_new_tokens_descs(const ft_new_tokens *nt, const ft_tokenizer *t, int32_t *targets,
			ft_i32vec *descs)
{
	for (size_t i = 0; i < nt->n_special; i++) {
		targets[i] = known_id(t, nt->special[i]);
		descs[i].n = 0;
		const char *d = nt->desc ? nt->desc[i] : "";
		if (ft_tokenizer_encode(t, d, strlen(d), 0, &descs[i]) < 0)
			return ft_fail_ctx("the description of '%s': ", nt->special[i]);
	}
	return 0;
}

static void free_list(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) free(v[i]);
	free(v);
}

void ft_new_tokens_free(ft_new_tokens *nt)
{
	free_list(nt->add, nt->n_add);
	free_list(nt->desc, nt->desc ? nt->n_special : 0);
	free_list(nt->special, nt->n_special);
	memset(nt, 0, sizeof *nt);
}
