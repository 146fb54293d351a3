/* ppo_reward.h - a PPO reward that is a Unix filter
 * (--reward_model_type api --reward_model 'CMD').
 *
 * For one batch of responses CMD runs once under sh -c; it reads one JSON
 * object per line, {"prompt": ..., "response": ...}, on its stdin (closed
 * after the last) and writes one number per line on its stdout, the i-th
 * number the reward of the i-th response.  It may answer as it reads or
 * only at EOF (an awk or jq filter, a Python judge): stdin and stdout are
 * multiplexed with poll, so neither side blocks the other.
 *
 * A command that cannot start, exits non-zero or by a signal, prints a
 * line that is not a number, prints fewer or more lines than responses,
 * fails and names the line; the caller then applies nothing of the step.
 */
#ifndef FT_PPO_REWARD_H
#define FT_PPO_REWARD_H

#include <stddef.h>

/* scores[i] for prompts[i] / responses[i], i < n (UTF-8 text). */
int ft_ppo_reward_cmd(const char *cmd, const char *const *prompts, const char *const *responses,
		      size_t n, float *scores);

#endif
