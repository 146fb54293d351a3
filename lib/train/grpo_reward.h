/* grpo_reward.h - a GRPO reward function that is a Unix filter
 * (--reward_funcs CMD): started once per training run under sh -c, as
 * TRL calls the same reward function every step.  For each generation
 * batch it is sent one JSON object per completion, one per line, and must
 * answer one number per line, the i-th answer the reward of the i-th
 * line, flushing as it goes (awk, jq --unbuffered, python -u, sed -u):
 * stdin stays open between batches, so it cannot wait for EOF.
 *
 * A command that exits or dies before answering, prints a line that is
 * not a number, or more lines than it was sent, fails with the line
 * named; the caller then applies nothing of the step.  Extra lines are
 * noticed when they have arrived by the time the batch's last answer is
 * read (or, at the latest, with the next batch).
 */
#ifndef FT_GRPO_REWARD_H
#define FT_GRPO_REWARD_H

#include <stddef.h>

typedef struct ft_grpo_reward ft_grpo_reward;

/* name: what the messages call it.  NULL with a message when it cannot
 * be started. */
ft_grpo_reward *ft_grpo_reward_start(const char *name, const char *cmd);
/* lines[i] (no newline) to the command, scores[i] from its answers. */
int ft_grpo_reward_score(ft_grpo_reward *r, const char *const *lines, size_t n, float *scores);
/* Close its stdin and wait: -1 with a message when it then exits non-zero
 * or by a signal (SIGPIPE after a failed batch is not reported). */
int ft_grpo_reward_close(ft_grpo_reward *r);

#endif
