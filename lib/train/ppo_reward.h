/* ppo_reward.h - a PPO reward that is a Unix filter
 * (--reward_model_type api --reward_model 'CMD').
 *
 * For one batch of responses CMD runs once under sh -c; it reads one JSON
 * object per line, {"prompt": ..., "response": ..., and the row's extra
 * dataset columns}, on its stdin (closed
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
#include <jansson.h>

/* scores[i] for prompts[i] / responses[i], i < n (UTF-8 text).  extra
 * (NULL, or n objects or NULLs): each line also carries its row's extra
 * dataset columns, as ft_reward_request_line puts them. */
int ft_ppo_reward_cmd(const char *cmd, const char *const *prompts, const char *const *responses,
		      const json_t *const *extra, size_t n, float *scores);

/* One request line of a reward command, compact JSON without the newline:
 * {"prompt": prompt, key: text} followed by extra's members in their order
 * (a dataset row's columns the mapping did not use, TRL's reward kwargs),
 * except members named "prompt" or key: the request's own fields win.
 * extra may be NULL.  NULL with a message naming the field when a text is
 * not valid UTF-8.  Shared by ppo's filter and grpo's commands. */
char *ft_reward_request_line(const char *prompt, const char *key, const char *text, const json_t *extra);

#endif
