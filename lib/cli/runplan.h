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
	char **problems;   /* after a failed build: every setting ft cannot
			      run, one line each ("file:line: why") */
	size_t n_problems;
} ft_runplan;

/* command: "train", "export" or "chat".  -1 when the settings cannot be
 * run: then p->problems lists every reason at once (unknown or refused
 * settings, unknown template, stage, finetuning type or dataset name, a
 * pre-quantized model) and the message counts them; or -1 with a message
 * and no problems for a plan that cannot be made (output_dir missing).
 * The caller frees p with ft_runplan_free either way. */
int ft_runplan_build(const ft_lfargs *a, const char *command, ft_runplan *p);
/* Does a run accept setting `key`?  1: yes (routed to a tool, or with no
 * effect: *why then says why, or NULL); 0: refused, *why says why; -1:
 * not a LLaMA-Factory setting ft knows.  For tools that read the same
 * configs (ft-merge). */
int ft_runplan_accepts(const char *key, const char **why);
/* The plan as one bash script (set -euo pipefail first). */
char *ft_runplan_script(const ft_runplan *p);
void ft_runplan_free(ft_runplan *p);

/* Quote a word for the shell (new string). */
char *ft_shell_quote(const char *s);

#endif
