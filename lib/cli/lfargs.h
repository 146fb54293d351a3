/* lfargs.h - LLaMA-Factory style arguments: a YAML or JSON config file
 * (as `llamafactory-cli train config.yaml`), `key=value` overrides after
 * it (OmegaConf's CLI form), and `--key value` / `--key=value` flags, all
 * folded into one ordered list of string pairs.  Later settings replace
 * earlier ones; dashes in keys become underscores.
 */
#ifndef FT_LFARGS_H
#define FT_LFARGS_H

#include <stddef.h>

typedef struct {
	char *key, *value;     /* value "true" for a bare --flag */
	char *origin;          /* "config.yaml:12" or "command line" */
} ft_lfarg;

typedef struct {
	ft_lfarg *v;
	size_t n, cap;
} ft_lfargs;

/* Load a .yaml/.yml/.json file (a flat mapping; lists become comma-joined
 * strings as LLaMA-Factory accepts for dataset/lora_target; a null value
 * unsets the key, as None leaves a default).  -1 with
 * "file:line:col: message". */
int ft_lfargs_load_file(ft_lfargs *a, const char *path);
/* key=value, --key value, --key=value, --flag; a YAML null value (key=null,
 * key=~, key=) unsets key as OmegaConf.from_cli does.  -1 on a malformed item. */
int ft_lfargs_parse_argv(ft_lfargs *a, int argc, char **argv);
void ft_lfargs_set(ft_lfargs *a, const char *key, const char *value, const char *origin);
/* Forget key (a config's `key: null`: the default applies). */
void ft_lfargs_unset(ft_lfargs *a, const char *key);
const ft_lfarg *ft_lfargs_find(const ft_lfargs *a, const char *key);
const char *ft_lfargs_get(const ft_lfargs *a, const char *key, const char *def);
/* true/false/1/0/yes/no; def when absent; -1 when unparseable. */
int ft_lfargs_bool(const ft_lfargs *a, const char *key, int def);
void ft_lfargs_free(ft_lfargs *a);

#endif
