/* chat.h - turning a conversation into generation input the way
 * llamafactory's ChatModel does: the messages plus an empty assistant turn
 * are encoded with the template (Template.encode_oneturn) and the prompt
 * part is kept; generation stops on the tokenizer's eos (after the
 * template's replace_eos) and on the template's stop words
 * (Template.get_stop_token_ids).
 */
#ifndef FT_CHAT_H
#define FT_CHAT_H

#include <stddef.h>
#include "data/preprocess.h"
#include "text/template.h"
#include "text/tokenizer.h"
#include "util/vec.h"

/* Prompt ids for messages[0..n) (the last should be a user or observation
 * turn); system/tools as ft_template_render.  Appends to out. */
int ft_chat_prompt(const ft_prep *p, const ft_template *t, const ft_message *messages,
		   size_t n, const char *system, const char *tools, ft_i32vec *out);

/* Stop ids: eos and every stop word that is a single token, without
 * repeats.  Returns the count written to ids (at most cap). */
size_t ft_chat_stop_ids(const ft_prep *p, const ft_tokenizer *tok, const ft_template *t,
			int32_t *ids, size_t cap);

/* Parse a role name as datasets spell them (user/human, assistant/gpt,
 * system, function/function_call, observation/tool); -1 if unknown. */
int ft_chat_role(const char *name);

#endif
