/* adapter_config.h - PEFT's adapter_config.json (a saved LoraConfig), read
 * once for every user: loading an adapter to train or generate
 * (model/model_io.c) and merging it (export/merge_lora.c).
 *
 * Only the parsing and PEFT's meaning of the fields live here; which
 * options a caller can apply, and what it refuses, stays with the caller.
 * Values are read as PEFT reads them: an option is "set" when it is
 * truthy in Python's sense, and rank_pattern / alpha_pattern keys are
 * regular expressions matched against module names as PEFT's
 * get_pattern_key() does.
 */
#ifndef FT_ADAPTER_CONFIG_H
#define FT_ADAPTER_CONFIG_H

#include <stddef.h>

#define FT_ADAPTER_CONFIG_NAME "adapter_config.json"

/* One rank_pattern / alpha_pattern entry, in the file's order. */
typedef struct {
	char *key;             /* a regular expression over module names */
	double value;          /* rank_pattern: a positive integer */
	void *re_;             /* the compiled key (pcre2_code) */
} ft_adapter_pattern;

typedef struct {
	char *path;                   /* the file, named in messages */
	char *peft_type;              /* "LORA", ...; NULL when absent */
	/* The LoRA fields below are read when peft_type is LORA or absent;
	 * for another method they are left zero. */
	int r;                        /* required, > 0 */
	double lora_alpha;            /* required */
	int use_rslora, use_dora, fan_in_fan_out;
	double lora_dropout;          /* 0 when absent (LoraConfig's default) */
	/* target_modules: either a list of module names (a module matches a
	 * name or ends in "." + name), or one string: "all-linear" or a
	 * regular expression over whole module names. */
	char **target_modules;
	size_t n_target_modules;
	char *target_regex;           /* the string form; NULL for a list */
	void *target_re_;             /* target_regex compiled (pcre2_code); NULL for all-linear */
	ft_adapter_pattern *rank_pattern, *alpha_pattern;
	size_t n_rank_pattern, n_alpha_pattern;
	char **modules_to_save;       /* trained copies of whole modules */
	size_t n_modules_to_save;
	char *bias;                   /* "none" (also when absent), "all", "lora_only" */
	char *base_model_name_or_path;   /* NULL when absent */
	/* init_lora_weights when a string ("pissa", "pissa_niter_16", "olora",
	 * ...): an init that changed the base weights; NULL for a boolean */
	char *init_lora_weights;
	/* OFT (peft_type "OFT"; r above is its block count, 0 when the block
	 * size is given): PEFT's OFTConfig fields */
	int oft_block_size, coft, block_share, use_cayley_neumann, num_cayley_neumann_terms;
	double module_dropout;
	/* private: the top-level keys that are set (ft_adapter_config_sets) */
	char **set_;
	size_t nset_;
} ft_adapter_config;

/* Read and check the file's types.  0, or -1 with a message naming the
 * file ("DIR/adapter_config.json: r is not a positive integer").  *c is
 * zeroed first; free it with ft_adapter_config_free() either way. */
int ft_adapter_config_load(const char *path, ft_adapter_config *c);
void ft_adapter_config_free(ft_adapter_config *c);

/* Whether the file sets option `key`: present and truthy as Python sees
 * it (not null, false, 0, "", [] or {}), as PEFT tests its options. */
int ft_adapter_config_sets(const ft_adapter_config *c, const char *key);

/* Whether PEFT adapts the module named `module` (a whole dotted name as
 * the base model's named_modules() gives it,
 * "model.layers.0.self_attn.v_proj"), as check_target_module_exists: a
 * string target_modules must match the whole name (re.fullmatch), a list
 * entry must equal the name or its end after a dot.  "all-linear" is left
 * to the caller (0 here): it depends on the architecture. */
int ft_adapter_config_targets(const ft_adapter_config *c, const char *module);

/* The rank and alpha of one module ("model.layers.0.self_attn.v_proj"):
 * the first rank_pattern / alpha_pattern key, in file order, that matches
 * it as re.match(rf"(.*\.)?({key})$", module); else r / lora_alpha. */
int ft_adapter_config_rank(const ft_adapter_config *c, const char *module);
double ft_adapter_config_alpha(const ft_adapter_config *c, const char *module);

/* Whether init_lora_weights is PiSSA's, as PEFT's pissa_init reads it:
 * 1 with *niter -1 for "pissa" (the exact SVD) or K for "pissa_niter_K"
 * (K power iterations, 0 <= K < 1000000); 0 for a boolean or another
 * string (olora, corda, loftq, ...), which the caller refuses or not. */
int ft_adapter_config_pissa(const ft_adapter_config *c, int *niter);

#endif
