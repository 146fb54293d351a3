/* newtokens.h - LLaMA-Factory's vocabulary extension arguments
 * (ModelArguments add_tokens, add_special_tokens,
 * new_special_tokens_config, init_special_tokens, resize_vocab) read as
 * its __post_init__ reads them, and applied to a tokenizer as its
 * patch_tokenizer does.  What the embedding init needs from the
 * tokenizer comes out as ids (lib/model does not read text). */
#ifndef FT_NEWTOKENS_H
#define FT_NEWTOKENS_H

#include <stddef.h>
#include <stdint.h>
#include "text/tokenizer.h"
#include "util/vec.h"

typedef struct {
	char **add; size_t n_add;            /* add_tokens, split on commas, stripped */
	char **special; size_t n_special;    /* add_special_tokens, or the config's names */
	char **desc;                         /* the config's descriptions, NULL without one */
	int both;                            /* the config replaced add_special_tokens (warn) */
} ft_new_tokens;

/* Any argument may be NULL.  The config (a YAML mapping token:
 * description) takes precedence over add_special_tokens, as in
 * LLaMA-Factory.  -1 with a message naming the file and line. */
int ft_new_tokens_parse(ft_new_tokens *nt, const char *add_tokens, const char *add_special_tokens,
			const char *config);
int ft_new_tokens_any(const ft_new_tokens *nt);
/* tokenizer.add_tokens(add, special_tokens=False), then (special,
 * special_tokens=True); *n_added: the tokens HF reports as added (any
 * makes LLaMA-Factory set resize_vocab). */
int ft_new_tokens_apply(const ft_new_tokens *nt, ft_tokenizer *t, int *n_added);
/* _resolve_new_token_ids: the ids of add + special that the tokenizer
 * has (not unk) and that are below vocab, sorted and unique. */
void ft_new_tokens_ids(const ft_new_tokens *nt, const ft_tokenizer *t, int64_t vocab, ft_i32vec *out);
/* The descriptions' ids (tokenizer(desc, add_special_tokens=False)) and
 * their tokens' ids, in config order; targets[i] -1 when the tokenizer
 * lacks token i.  0, or -1 on an encoding error. */
int ft_new_tokens_descs(const ft_new_tokens *nt, const ft_tokenizer *t, int32_t *targets,
			ft_i32vec *descs);
void ft_new_tokens_free(ft_new_tokens *nt);

#endif
