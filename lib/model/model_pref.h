/* model_pref.h - the model-level operations of the preference stages
 * (rm, dpo, kto; lib/train/pref*.c): per-position log-probabilities of the
 * labels with their backward pass, the value head's scores, and PEFT's
 * disable_adapter.  The stage code reaches the model only through these,
 * so a device binding can supply the same operations.
 *
 * Positions follow the causal-LM shift: position i of a row predicts the
 * label at i+1 (labels[i+1] != -100 gives position i a target), as
 * LLaMA-Factory's get_batch_logps does.
 */
#ifndef FT_MODEL_PREF_H
#define FT_MODEL_PREF_H

#include "model/model.h"

/* logp[i] = log softmax(logits_i)[target_i] for every position with a
 * target, 0 elsewhere ([B*T]); the logits soft-capped where the model
 * caps them (Gemma 2), as its forward returns them.  lmean (NULL or [B*T]): the mean over the
 * vocabulary of each position's logits, every position (the logits/...
 * metrics), computed as h_i . mean(W) without the [N, V] logits.
 * train: dropout on and the activations kept for ft_model_logps_backward;
 * otherwise a plain inference pass (no backward buffers touched beyond the
 * forward's own). */
int ft_model_logps_forward(ft_model *m, const ft_batch *b, int train, float *logp, float *lmean);
/* After a train forward of the same batch: accumulate the gradients of
 * L = sum_i dlogp[i] * logp[i] (dlogp 0 where there is no target). */
int ft_model_logps_backward(ft_model *m, const ft_batch *b, const float *dlogp);

/* TRL's GRPO scores completions as log softmax(logits / temperature)
 * (_get_per_token_logps_and_entropies): from now on the two functions
 * above divide the (capped) logits by t before the log-softmax, and the
 * backward pass goes through the division; t = 1 (the default) leaves
 * the logits untouched, bit for bit.  The logit means are not divided.
 * Fails for t <= 0 or not finite. */
int ft_model_set_logp_temperature(ft_model *m, float t);

/* TRL's entropy_from_logits: while ent is set, ft_model_logps_forward
 * also writes ent[i] = logsumexp(z) - sum softmax(z) z of the (capped,
 * tempered) logits z at every position i that has a target (0
 * elsewhere); NULL stops it.  ent must hold B*T floats of the batches. */
void ft_model_set_logp_entropy(ft_model *m, float *ent);

/* PEFT's disable_adapter(): on = 0 runs the base model (LoRA branches
 * skipped), on = 1 restores them.  No-op without adapters. */
void ft_model_set_adapters(ft_model *m, int on);
int ft_model_has_adapters(const ft_model *m);

/* Value head (TRL's ValueHead: dropout, then Linear(hidden, 1)) at
 * positions pos[0..n) of the batch (row-major index r*T + t): score[k] =
 * vw . drop(h) + vb where h is the final norm's output (hidden_states[-1]).
 * train: dropout with probability p_drop, mask from seed; hd [n*D]
 * receives the dropped hidden rows for the backward pass (may be NULL when
 * not training). */
int ft_model_value_forward(ft_model *m, const ft_batch *b, int train, const int32_t *pos, int n,
			   const float *vw, float vb, float p_drop, uint64_t seed, float *hd,
			   float *score);
/* dvw += sum_k dscore[k] hd[k]; *dvb += sum dscore; and the model's
 * gradients through h (the same dropout mask). */
int ft_model_value_backward(ft_model *m, const ft_batch *b, const int32_t *pos, int n,
			    const float *vw, float p_drop, uint64_t seed, const float *hd,
			    const float *dscore, float *dvw, double *dvb);

#endif
