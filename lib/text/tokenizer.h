/* tokenizer.h - Hugging Face tokenizers in C: tokenizer.json (BPE,
 * byte-level or SentencePiece-style) and tokenizer.model (SentencePiece
 * protobuf, BPE with byte fallback), with the special-token settings of
 * tokenizer_config.json / special_tokens_map.json / generation_config.json.
 * Ids equal the `tokenizers` package's for the same input.
 */
#ifndef FT_TOKENIZER_H
#define FT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "util/vec.h"

typedef struct ft_tokenizer ft_tokenizer;

/* A model directory, a tokenizer.json, or a tokenizer.model. */
ft_tokenizer *ft_tokenizer_load(const char *path);
void ft_tokenizer_free(ft_tokenizer *t);

/* Append the ids of text[0..len) to out.  add_special: the post-processor's
 * bos/eos as HF's add_special_tokens=True.  Thread-safe for one tokenizer
 * used by several threads. */
int ft_tokenizer_encode(const ft_tokenizer *t, const char *text, size_t len,
			int add_special, ft_i32vec *out);
/* New string; skip_special drops special tokens.  NULL on a bad id. */
char *ft_tokenizer_decode(const ft_tokenizer *t, const int32_t *ids, size_t n,
			  int skip_special);
/* As transformers' tokenizer.decode of sampled ids: ids the tokenizer has
 * no token for (a model's padded vocabulary) are dropped, as HF's
 * tokenizers drop them, and bytes that are not UTF-8 (a byte-level token
 * ending mid-character) become U+FFFD, as its lossy conversion does.
 * Never NULL. */
char *ft_tokenizer_decode_lossy(const ft_tokenizer *t, const int32_t *ids, size_t n,
				int skip_special);

size_t ft_tokenizer_vocab_size(const ft_tokenizer *t);   /* incl. added tokens */
int32_t ft_tokenizer_token_to_id(const ft_tokenizer *t, const char *piece); /* -1 */
const char *ft_tokenizer_id_to_token(const ft_tokenizer *t, int32_t id);    /* NULL */
int ft_tokenizer_is_special(const ft_tokenizer *t, int32_t id);

/* transformers' tokenizer.add_tokens(tokens, special_tokens=special)
 * (LLaMA-Factory's add_tokens / add_special_tokens), as the `tokenizers`
 * AddedVocabulary does it: each token becomes an added token matched
 * whole (AddedToken defaults: normalized unless special, no strips,
 * not single_word); its id is its id in the vocabulary or among the added
 * tokens when it has one, else the next after the vocabulary and every
 * added id.  An empty token, or one already added with the same settings,
 * is ignored.  Returns how many were added (transformers' return value),
 * -1 for a tokenizer.model (no tokenizer.json to extend).  The identity
 * becomes that of the extended tokenizer.json. */
int ft_tokenizer_add_tokens(ft_tokenizer *t, const char *const *tokens, size_t n, int special);
/* How many ft_tokenizer_add_tokens entries the tokenizer holds. */
size_t ft_tokenizer_n_added_later(const ft_tokenizer *t);
/* The tokenizer.json with those tokens (as tokenizer.save_pretrained
 * writes it: added_tokens sorted by id), written atomically; its sha256
 * is the identity's. */
int ft_tokenizer_save_json(const ft_tokenizer *t, const char *path);

/* Special-token settings.  add_bos/add_eos say what encode(add_special)
 * adds: for tokenizer.json what its post-processor adds (transformers 5
 * follows the post-processor, not tokenizer_config.json's add_bos_token);
 * for tokenizer.model, LlamaTokenizer's rule: add_bos_token (default true)
 * and add_eos_token (default false) from tokenizer_config.json. */
typedef struct {
	int32_t bos_id, eos_id, pad_id, unk_id;   /* -1 when absent */
	int add_bos, add_eos;
	long long model_max_length;               /* 0 when unset */
	const char *bos_token, *eos_token, *pad_token; /* NULL when absent */
	int32_t extra_eos_ids[8];                 /* generation_config eos list */
	int n_extra_eos;
} ft_tokenizer_info;
const ft_tokenizer_info *ft_tokenizer_info_get(const ft_tokenizer *t);
/* Stable identity for stream headers: "<name>:<sha256 of tokenizer file>". */
const char *ft_tokenizer_identity(const ft_tokenizer *t);
/* The sha256 part of that identity for a model directory, without loading
 * the tokenizer: 1 with hex filled, 0 when the directory holds no
 * tokenizer.json or tokenizer.model, -1 on a read error. */
int ft_tokenizer_dir_sha256(const char *dir, char hex[65]);

#endif
