/* runplan.h - a LLaMA-Factory run (its flags or YAML config) as an ft
 * pipeline: each setting is routed to the tools it belongs to, and the
 * plan is printed as the shell commands a user could type.
 *
 *   train:   ft-tokenize | ft-pack  ->  ft-train  [-> ft-tokenize | ft-generate --do_predict]
 *   export:  ft-merge
 *   chat:    ft-generate -i
 */
#ifndef FT_RUNPLAN_H
#define FT_RUNPLAN_H

#include "cli/lfargs.h"

typedef struct {
	char **lines;      /* shell command lines, in order */
	size_t n;
	char **notes;      /* settings accepted with no effect here, and why */
	size_t n_notes;
} ft_runplan;

/* command: "train", "export" or "chat".  -1 with a message naming an
 * unknown or unsupported setting. */
int ft_runplan_build(const ft_lfargs *a, const char *command, ft_runplan *p);
/* The plan as one bash script (set -euo pipefail first). */
char *ft_runplan_script(const ft_runplan *p);
void ft_runplan_free(ft_runplan *p);

/* Quote a word for the shell (new string). */
char *ft_shell_quote(const char *s);

#endif
