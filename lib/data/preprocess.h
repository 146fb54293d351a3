/* preprocess.h - examples -> token records per training stage, exactly as
 * llamafactory 0.9.5's dataset processors (data/processor/):
 *   pt       text + eos (PretrainDatasetProcessor's text_examples; bos,
 *            truncation and packing are ft-pack's)
 *   sft      input_ids + labels, -100 on prompt tokens, per-turn cutoff
 *            (SupervisedDatasetProcessor: train_on_prompt, mask_history,
 *            efficient_eos)
 *   rm, dpo  chosen/rejected ids and labels (PairwiseDatasetProcessor)
 *   kto      ids, labels, kl ids/labels from the neighbouring example, tag
 *            (FeedbackDatasetProcessor)
 *   ppo and prediction: prompt ids + response ids (UnsupervisedDatasetProcessor)
 * plus the tokenizer fix-ups of Template.fix_special_tokens (replace_eos,
 * pad = eos).
 */
#ifndef FT_PREPROCESS_H
#define FT_PREPROCESS_H

#include <stdint.h>
#include "data/dataset.h"
#include "text/template.h"
#include "text/tokenizer.h"
#include "util/vec.h"

/* The version of ft-tokenize's records (docs/FORMAT.md 2.1, header
 * meta.record_version; absent: 1): 2 added the ppo/prediction records'
 * extra_columns.  Readers take this one or older. */
#define FT_TOKENS_RECORD_VERSION 2

typedef struct {
	int stage;               /* FT_STAGE_* (stage.h) */
	int predict;             /* prompt records (sft prediction) */
	long long cutoff_len;
	int train_on_prompt, mask_history;
} ft_prep_opts;

typedef struct ft_prep ft_prep;

/* Checks the template against the tokenizer (named tokens and stop words
 * must exist: ft adds a template's tokens only as --add_special_tokens)
 * and settles eos/pad as llamafactory. */
ft_prep *ft_prep_new(const ft_tokenizer *tok, const ft_template *t, const ft_prep_opts *o);
void ft_prep_free(ft_prep *p);

int32_t ft_prep_eos_id(const ft_prep *p);
const char *ft_prep_eos_token(const ft_prep *p);
int32_t ft_prep_pad_id(const ft_prep *p);
int32_t ft_prep_bos_id(const ft_prep *p);
/* A warning to show (the template's stop word is not the model's eos, so
 * generation may not stop), or NULL. */
const char *ft_prep_eos_warning(const ft_prep *p);
const ft_template *ft_prep_get_template(const ft_prep *p);
/* A reasoning template's encode_oneturn (messages[n-1] is the response:
 * prompt and response ids appended) and encode_multiturn (ids[0..n) per
 * message, discard_history = mask_history and not preserve_thinking), in
 * preprocess_think.c.  1 when the template cannot render the messages
 * (message in ft_errmsg), -1 on a tokenizer error. */
int ft_prep_think_oneturn(const ft_prep *p, const ft_message *m, size_t n, const char *system,
			  const char *tools, ft_i32vec *prompt, ft_i32vec *response);
int ft_prep_think_multiturn(const ft_prep *p, const ft_message *m, size_t n, const char *system,
			    const char *tools, int discard_history, ft_i32vec *ids);

typedef struct {
	ft_i32vec ids, labels;     /* sft/kto/ppo; rm: chosen */
	ft_i32vec ids2, labels2;   /* rm: rejected; kto: kl */
	int kto_tag;
	int truncated;             /* cutoff_len cut something */
	int label_len;             /* ppo: response ids are in labels */
} ft_prep_rec;

void ft_prep_rec_free(ft_prep_rec *r);

/* Encode one example.  kl: the example whose response kto pairs with this
 * prompt (the previous one in the window), else NULL.  Returns 0 (a
 * record), 1 (skipped: e->bad / e->why say why), -1 (tokenizer error). */
int ft_prep_example(ft_prep *p, ft_example *e, const ft_example *kl, ft_prep_rec *out);

/* Template elements -> ids, as Template._convert_elements_to_ids. */
int ft_prep_elements(const ft_prep *p, const ft_elements *e, ft_i32vec *out);

/* llamafactory's infer_seqlen. */
void ft_infer_seqlen(long long source_len, long long target_len, long long cutoff_len,
		     long long *new_source, long long *new_target);

#endif
