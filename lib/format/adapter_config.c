/* adapter_config.c - PEFT's adapter_config.json; see adapter_config.h */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "format/adapter_config.h"
#include "util/error.h"
#include "util/json.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* Python's bool(value): how PEFT tests an option ("if config.use_dora"). */
static int truthy(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return json_object_size(v) > 0;
	case JSON_ARRAY: return json_array_size(v) > 0;
	case JSON_STRING: return json_string_length(v) > 0;
	case JSON_INTEGER: return json_integer_value(v) != 0;
	case JSON_REAL: return json_real_value(v) != 0;
	case JSON_TRUE: return 1;
	default: return 0;
	}
}

static int get_flag(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return v && truthy(v);
}

/* A string field: *out malloc'd, or NULL (absent or null). */
static int get_str(const ft_adapter_config *c, const json_t *o, const char *key, char **out)
{
	const json_t *v = json_object_get(o, key);
	*out = NULL;
	if (!v || json_is_null(v)) return 0;
	if (!json_is_string(v)) return ft_fail("%s: %s is not a string", c->path, key);
	*out = ft_xstrdup(json_string_value(v));
	return 0;
}

/* A list of strings, or null. */
static int get_names(const ft_adapter_config *c, const json_t *v, const char *key, char ***out,
		     size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!v || json_is_null(v)) return 0;
	if (!json_is_array(v)) return ft_fail("%s: %s is not a list", c->path, key);
	*out = ft_xcalloc(json_array_size(v) + 1, sizeof **out);
	size_t i;
	const json_t *s;
	json_array_foreach(v, i, s) {
		if (!json_is_string(s)) return ft_fail("%s: %s[%zu] is not a string", c->path, key, i);
		(*out)[(*n)++] = ft_xstrdup(json_string_value(s));
	}
	return 0;
}

static int get_targets(ft_adapter_config *c, const json_t *o)
{
	const json_t *v = json_object_get(o, "target_modules");
	if (json_is_string(v)) {
		c->target_regex = ft_xstrdup(json_string_value(v));
		if (!strcmp(c->target_regex, "all-linear")) return 0;
		int err;
		PCRE2_SIZE off;
		/* re.fullmatch: anchored at both ends */
		c->target_re_ = pcre2_compile((PCRE2_SPTR)c->target_regex, PCRE2_ZERO_TERMINATED,
					      PCRE2_ANCHORED | PCRE2_ENDANCHORED, &err, &off, NULL);
		if (!c->target_re_)
			return ft_fail("%s: target_modules \"%s\" is not a regular expression", c->path,
				       c->target_regex);
		return 0;
	}
	if (v && !json_is_null(v) && !json_is_array(v))
		return ft_fail("%s: target_modules is not a list or a string", c->path);
	return get_names(c, v, "target_modules", &c->target_modules, &c->n_target_modules);
}

/* PEFT's get_pattern_key(): re.match(rf"(.*\.)?({key})$", module). */
static pcre2_code *compile_key(const char *key)
{
	char *src = ft_xasprintf("^(?:.*\\.)?(?:%s)$", key);
	int err;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
	free(src);
	return re;
}

static int get_patterns(const ft_adapter_config *c, const json_t *o, const char *field, int ranks,
			ft_adapter_pattern **out, size_t *n)
{
	const json_t *obj = json_object_get(o, field);
	*out = NULL;
	*n = 0;
	if (!obj || json_is_null(obj)) return 0;
	if (!json_is_object(obj)) return ft_fail("%s: %s is not an object", c->path, field);
	*out = ft_xcalloc(json_object_size(obj) + 1, sizeof **out);
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)obj, key, v) {
		if (ranks ? !json_is_integer(v) || json_integer_value(v) <= 0 ||
			    json_integer_value(v) > 0x7fffffff
			  : !json_is_number(v))
			return ft_fail("%s: %s[\"%s\"] is not a %s", c->path, field, key,
				       ranks ? "positive integer" : "number");
		pcre2_code *re = compile_key(key);
		if (!re) return ft_fail("%s: %s key \"%s\" is not a regular expression", c->path, field, key);
		(*out)[*n] = (ft_adapter_pattern){ ft_xstrdup(key), json_number_value(v), re };
		++*n;
	}
	return 0;
}

static int get_lora(ft_adapter_config *c, const json_t *o)
{
	const json_t *r = json_object_get(o, "r"), *alpha = json_object_get(o, "lora_alpha");
	if (!json_is_integer(r) || json_integer_value(r) <= 0 || json_integer_value(r) > 0x7fffffff)
		return ft_fail("%s: r is not a positive integer", c->path);
	if (!json_is_number(alpha)) return ft_fail("%s: lora_alpha is not a number", c->path);
	c->r = (int)json_integer_value(r);
	c->lora_alpha = json_number_value(alpha);
	c->use_rslora = get_flag(o, "use_rslora");
	c->use_dora = get_flag(o, "use_dora");
	c->fan_in_fan_out = get_flag(o, "fan_in_fan_out");
	const json_t *drop = json_object_get(o, "lora_dropout");   /* LoraConfig's default: 0.0 */
	if (drop && !json_is_null(drop) &&
	    (!json_is_number(drop) || json_number_value(drop) < 0 || json_number_value(drop) >= 1))
		return ft_fail("%s: lora_dropout is not a number in [0, 1)", c->path);
	c->lora_dropout = json_is_number(drop) ? json_number_value(drop) : 0;
	const json_t *init = json_object_get(o, "init_lora_weights");
	if (json_is_string(init)) c->init_lora_weights = ft_xstrdup(json_string_value(init));
	if (get_targets(c, o) < 0 ||
	    get_patterns(c, o, "rank_pattern", 1, &c->rank_pattern, &c->n_rank_pattern) < 0 ||
	    get_patterns(c, o, "alpha_pattern", 0, &c->alpha_pattern, &c->n_alpha_pattern) < 0)
		return -1;
	return 0;
}

/* OFTConfig: r or oft_block_size (one of them non-zero), the variant
 * flags with PEFT's defaults when absent (an adapter from before 0.18 has
 * no use_cayley_neumann: PEFT's default True then). */
static int get_oft(ft_adapter_config *c, const json_t *o)
{
	const json_t *r = json_object_get(o, "r"), *b = json_object_get(o, "oft_block_size");
	const json_t *t = json_object_get(o, "num_cayley_neumann_terms"), *md = json_object_get(o, "module_dropout");
	if ((r && !json_is_integer(r)) || (r && (json_integer_value(r) < 0 || json_integer_value(r) > 1 << 20)))
		return ft_fail("%s: r is not an integer >= 0", c->path);
	if (!json_is_integer(b) || json_integer_value(b) < 0 || json_integer_value(b) > 1 << 20)
		return ft_fail("%s: oft_block_size is not an integer >= 0 (an OFT adapter from before PEFT "
			       "0.14, which PEFT no longer loads)", c->path);
	c->r = r ? (int)json_integer_value(r) : 0;
	c->oft_block_size = (int)json_integer_value(b);
	if ((c->r != 0) == (c->oft_block_size != 0))
		return ft_fail("%s: give either r (%d) or oft_block_size (%d), as PEFT's OFTConfig", c->path,
			       c->r, c->oft_block_size);
	c->coft = get_flag(o, "coft");
	c->block_share = get_flag(o, "block_share");
	c->use_cayley_neumann = json_object_get(o, "use_cayley_neumann") ? get_flag(o, "use_cayley_neumann") : 1;
	c->num_cayley_neumann_terms = json_is_integer(t) ? (int)json_integer_value(t) : 5;
	if (c->num_cayley_neumann_terms < 1 || c->num_cayley_neumann_terms > 64)
		return ft_fail("%s: num_cayley_neumann_terms is not in 1..64", c->path);
	c->module_dropout = json_is_number(md) ? json_number_value(md) : 0;
	c->fan_in_fan_out = get_flag(o, "fan_in_fan_out");
	return get_targets(c, o);
}

static int get_all(ft_adapter_config *c, const json_t *o)
{
	if (!json_is_object(o)) return ft_fail("%s: not a JSON object", c->path);
	const char *key;
	json_t *v;
	c->set_ = ft_xcalloc(json_object_size(o) + 1, sizeof *c->set_);
	json_object_foreach((json_t *)o, key, v)
		if (truthy(v)) c->set_[c->nset_++] = ft_xstrdup(key);
	if (get_str(c, o, "peft_type", &c->peft_type) < 0 || get_str(c, o, "bias", &c->bias) < 0 ||
	    get_str(c, o, "base_model_name_or_path", &c->base_model_name_or_path) < 0 ||
	    get_names(c, json_object_get(o, "modules_to_save"), "modules_to_save",
		      &c->modules_to_save, &c->n_modules_to_save) < 0)
		return -1;
	if (!c->bias) c->bias = ft_xstrdup("none");
	if (c->peft_type && !strcmp(c->peft_type, "OFT")) return get_oft(c, o);
	if (c->peft_type && strcmp(c->peft_type, "LORA") != 0) return 0;
	/* Without peft_type a LoRA config is still recognised by its r (ft's
	 * loader accepts one); without either the file is something else. */
	if (!c->peft_type && !json_object_get(o, "r"))
		return ft_fail("%s: no peft_type (not a PEFT adapter)", c->path);
	return get_lora(c, o);
}

int ft_adapter_config_load(const char *path, ft_adapter_config *c)
{
	memset(c, 0, sizeof *c);
	c->path = ft_xstrdup(path);
	json_t *o = ft_json_load_file(path);
	if (!o) return -1;
	int rc = get_all(c, o);
	json_decref(o);
	return rc;
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++) free(v[i]);
	free(v);
}

static void free_patterns(ft_adapter_pattern *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(p[i].key);
		pcre2_code_free(p[i].re_);
	}
	free(p);
}

void ft_adapter_config_free(ft_adapter_config *c)
{
	free(c->path);
	free(c->peft_type);
	free_names(c->target_modules, c->n_target_modules);
	free(c->init_lora_weights);
	free(c->target_regex);
	pcre2_code_free(c->target_re_);
	free_patterns(c->rank_pattern, c->n_rank_pattern);
	free_patterns(c->alpha_pattern, c->n_alpha_pattern);
	free_names(c->modules_to_save, c->n_modules_to_save);
	free(c->bias);
	free(c->base_model_name_or_path);
	free_names(c->set_, c->nset_);
	memset(c, 0, sizeof *c);
}

int ft_adapter_config_sets(const ft_adapter_config *c, const char *key)
{
	for (size_t i = 0; i < c->nset_; i++)
		if (!strcmp(c->set_[i], key)) return 1;
	return 0;
}

static int matches(void *re, const char *s)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	int rc = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL);
	pcre2_match_data_free(md);
	return rc >= 0;
}

/* The first pattern matching `module`, or NULL. */
static const ft_adapter_pattern *match(const ft_adapter_pattern *p, size_t n, const char *module)
{
	for (size_t i = 0; i < n; i++)
		if (matches(p[i].re_, module)) return &p[i];
	return NULL;
}

int ft_adapter_config_targets(const ft_adapter_config *c, const char *module)
{
	if (c->target_regex) return c->target_re_ && matches(c->target_re_, module);
	size_t n = strlen(module);
	for (size_t i = 0; i < c->n_target_modules; i++) {
		const char *t = c->target_modules[i];
		size_t k = strlen(t);
		if (!strcmp(module, t) || (n > k && module[n - k - 1] == '.' && !strcmp(module + n - k, t)))
			return 1;
	}
	return 0;
}

int ft_adapter_config_rank(const ft_adapter_config *c, const char *module)
{
	const ft_adapter_pattern *p = match(c->rank_pattern, c->n_rank_pattern, module);
	return p ? (int)p->value : c->r;
}

double ft_adapter_config_alpha(const ft_adapter_config *c, const char *module)
{
	const ft_adapter_pattern *p = match(c->alpha_pattern, c->n_alpha_pattern, module);
	return p ? p->value : c->lora_alpha;
}

int ft_adapter_config_pissa(const ft_adapter_config *c, int *niter)
{
	const char *s = c->init_lora_weights;
	char *end;
	if (!s) return 0;
	if (!strcmp(s, "pissa")) {
		*niter = -1;
		return 1;
	}
	if (strncmp(s, "pissa_niter_", 12)) return 0;
	long v = strtol(s + 12, &end, 10);
	if (*end || end == s + 12 || v < 0 || v >= 1000000) return 0;
	*niter = (int)v;
	return 1;
}
