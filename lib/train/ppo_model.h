/* ppo_model.h - PPO's passes over the model (TRL 0.9's
 * batched_forward_pass and the backward of PPOTrainer.loss), through the
 * operations of model/model_pref.h.
 *
 * A PPO batch is rows of prompt + response, right-padded; labels carry
 * the response tokens (-100 on the prompt and the padding), so position t
 * is a response position when labels[t+1] != -100: logp[t] is the
 * log-probability of token t+1 and values[t] the value head at t, as TRL's
 * logprobs_from_logits(logits[:, :-1], input_ids[:, 1:]) and
 * values[:, :-1] with the mask from len(query) - 1 to the response's end.
 */
#ifndef FT_PPO_MODEL_H
#define FT_PPO_MODEL_H

#include "model/model.h"
#include "train/pref.h"

/* The response mask [B*T] of a batch (1 where labels[t+1] != -100). */
void ft_ppo_mask(const ft_batch *b, float *mask);

/* logp and values [B*T] (0 off the mask for logp; values NULL: no value
 * pass, as for the reference).  train: dropout on; the value head's
 * dropout p_drop with mask seed (TRL's ValueHead). */
int ft_ppo_forward(ft_model *m, const ft_batch *b, int train, const float *vw, float vb,
		   float p_drop, uint64_t seed, float *logp, float *values);

/* Accumulate the model's gradients of a loss whose derivatives with
 * respect to logp and values are dlogp and dvalues (ft_ppo_loss's), and
 * the value head's into dvw [D] and *dvb.  Two training passes (the
 * log-probabilities', then the values'), so LoRA dropout draws differ
 * between them where TRL has one pass; equal when dropout is 0. */
int ft_ppo_backward(ft_model *m, const ft_batch *b, const float *vw, float vb, float p_drop,
		    uint64_t seed, const float *dlogp, const float *dvalues, float *dvw, double *dvb);

/* The same over any model's operations (train/pref.h): a binding that
 * keeps the value head (own_value_head, a device's) ignores vw, vb, dvw
 * and dvb and accumulates the head's gradient itself. */
int ft_ppo_forward_on(const ft_pref_model *pm, const ft_batch *b, int train, const float *vw, float vb,
		      float p_drop, uint64_t seed, float *logp, float *values);
int ft_ppo_backward_on(const ft_pref_model *pm, const ft_batch *b, const float *vw, float vb, float p_drop,
		       uint64_t seed, const float *dlogp, const float *dvalues, float *dvw, double *dvb);

#endif
