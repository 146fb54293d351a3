/* spawn.h - a shell command as a filter process: its stdin and stdout
 * are pipes to the caller (the reward commands of ppo and grpo). */
#ifndef FT_SPAWN_H
#define FT_SPAWN_H

#include <sys/types.h>

/* Start `sh -c cmd` with *to writing its stdin (non-blocking, so the
 * caller can interleave writing and reading) and *from reading its
 * stdout; stderr is shared.  The pid, or -1 with "what: pipe|fork: ..."
 * (what names the command in messages). */
pid_t ft_spawn_sh(const char *what, const char *cmd, int *to, int *from);

#endif
