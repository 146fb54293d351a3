/* ppo_rm.h - a reward model as a reward: the value head of an rm (ft-train
 * --stage rm's value_head.safetensors) at the last token of prompt +
 * response, as LLaMA-Factory's get_rewards scores PPO's responses.  Used
 * by --stage ppo (--reward_model_type lora and full) and by --stage grpo
 * (--reward_model, one reward among its --reward_funcs).
 */
#ifndef FT_PPO_RM_H
#define FT_PPO_RM_H

#include <stddef.h>
#include "model/model.h"
#include "util/vec.h"

typedef struct {
	ft_model *m;    /* the scoring model, owned */
	float *vw, vb;  /* v_head.summary: [D] and its bias */
} ft_ppo_rm;

/* lora: the base at `base` (tuned as t) with the rm adapter of `dir` in
 * place.  With policy (the LoRA policy on the same base) the reward model
 * then shares its base weights (ft_model_share_base), so the base is held
 * once while training, as LLaMA-Factory's adapter swap; *why (when not
 * NULL) is set to NULL when shared, else to the reason it is not (a
 * static string).  Fails with a message naming dir. */
int ft_ppo_rm_open_lora(ft_ppo_rm *r, const char *base, const ft_tune_opts *t, const char *dir,
			const ft_model *policy, char *why, size_t why_n);
/* Takes m (already loaded; freed by ft_ppo_rm_close) and reads the value
 * head of dir/value_head.safetensors into r. */
int ft_ppo_rm_open_model(ft_ppo_rm *r, ft_model *m, const char *dir);
/* scores[i] of prompts[i] + responses[i], i < n (an inference pass,
 * dropout off). */
int ft_ppo_rm_score(ft_ppo_rm *r, const ft_i32vec *prompts, const ft_i32vec *responses, size_t n,
		    float *scores);
void ft_ppo_rm_close(ft_ppo_rm *r);

#endif
