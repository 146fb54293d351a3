/* lfargs.c - LLaMA-Factory config files and overrides; see lfargs.h */
#include "cli/lfargs.h"
#include "util/sbuf.h"
#include "util/error.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

static char *normalise_key(const char *k)
{
	while (*k == '-') k++;
	char *s = ft_xstrdup(k);
	for (char *p = s; *p; p++)
		if (*p == '-') *p = '_';
	return s;
}

void ft_lfargs_set(ft_lfargs *a, const char *key, const char *value, const char *origin)
{
	char *k = normalise_key(key);
	for (size_t i = 0; i < a->n; i++)
		if (!strcmp(a->v[i].key, k)) {
			free(a->v[i].value);
			free(a->v[i].origin);
			a->v[i].value = ft_xstrdup(value);
			a->v[i].origin = ft_xstrdup(origin);
			free(k);
			return;
		}
	if (a->n == a->cap) {
		a->cap = a->cap ? 2 * a->cap : 32;
		a->v = ft_xrealloc(a->v, a->cap * sizeof *a->v);
	}
	a->v[a->n++] = (ft_lfarg){k, ft_xstrdup(value), ft_xstrdup(origin)};
}

const ft_lfarg *ft_lfargs_find(const ft_lfargs *a, const char *key)
{
	for (size_t i = 0; i < a->n; i++)
		if (!strcmp(a->v[i].key, key)) return &a->v[i];
	return NULL;
}

const char *ft_lfargs_get(const ft_lfargs *a, const char *key, const char *def)
{
	const ft_lfarg *x = ft_lfargs_find(a, key);
	return x ? x->value : def;
}

int ft_lfargs_bool(const ft_lfargs *a, const char *key, int def)
{
	const char *v = ft_lfargs_get(a, key, NULL);
	if (!v) return def;
	if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes")) return 1;
	if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
	    !strcasecmp(v, "null") || !*v) return 0;
	return -1;
}

void ft_lfargs_unset(ft_lfargs *a, const char *key)
{
	char *k = ft_xstrdup(key);
	for (char *c = k; *c; c++) if (*c == '-') *c = '_';
	for (size_t i = 0; i < a->n; i++)
		if (!strcmp(a->v[i].key, k)) {
			free(a->v[i].key); free(a->v[i].value); free(a->v[i].origin);
			memmove(&a->v[i], &a->v[i + 1], (a->n - i - 1) * sizeof *a->v);
			a->n--;
			break;
		}
	free(k);
}

void ft_lfargs_free(ft_lfargs *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->v[i].key);
		free(a->v[i].value);
		free(a->v[i].origin);
	}
	free(a->v);
	a->v = NULL;
	a->n = a->cap = 0;
}

/* ---- JSON configs ---------------------------------------------------- */

static char *json_scalar_text(const json_t *v)
{
	if (json_is_string(v)) return ft_xstrdup(json_string_value(v));
	if (json_is_true(v)) return ft_xstrdup("true");
	if (json_is_false(v)) return ft_xstrdup("false");
	if (json_is_null(v)) return ft_xstrdup("null");
	if (json_is_integer(v)) return ft_xasprintf("%lld", (long long)json_integer_value(v));
	if (json_is_real(v)) return ft_xasprintf("%.17g", json_real_value(v));
	return NULL;
}

static int load_json(ft_lfargs *a, const char *path)
{
	json_error_t e;
	json_t *root = json_load_file(path, 0, &e);
	if (!root) return ft_fail("%s:%d:%d: %s", path, e.line, e.column, e.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return ft_fail("%s: the config must be an object of settings", path);
	}
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v) {
		char *text = NULL;
		if (json_is_array(v)) {
			size_t i;
			json_t *x;
			text = ft_xstrdup("");
			json_array_foreach(v, i, x) {
				char *s = json_scalar_text(x), *t;
				if (!s) { free(text); text = NULL; break; }
				t = ft_xasprintf("%s%s%s", text, i ? "," : "", s);
				free(text); free(s);
				text = t;
			}
		} else if (json_is_null(v)) {   /* None: the default applies */
			ft_lfargs_unset(a, key);
			continue;
		} else {
			text = json_scalar_text(v);
		}
		if (!text) {
			json_decref(root);
			return ft_fail("%s: setting '%s' is not a scalar or a list of scalars", path, key);
		}
		char *origin = ft_xasprintf("%s", path);
		ft_lfargs_set(a, key, text, origin);
		free(origin);
		free(text);
	}
	json_decref(root);
	return 0;
}

/* ---- YAML configs (flat mappings, as LLaMA-Factory's examples) -------- */

typedef struct {
	yaml_parser_t p;
	yaml_event_t ev;
	const char *path;
} yaml_reader;

static int yaml_next(yaml_reader *y)
{
	if (!yaml_parser_parse(&y->p, &y->ev))
		return ft_fail("%s:%zu:%zu: %s", y->path, y->p.problem_mark.line + 1,
			       y->p.problem_mark.column + 1, y->p.problem ? y->p.problem : "YAML error");
	return 0;
}

static int yaml_fail_here(yaml_reader *y, const char *what)
{
	int rc = ft_fail("%s:%zu:%zu: %s", y->path, y->ev.start_mark.line + 1,
			 y->ev.start_mark.column + 1, what);
	yaml_event_delete(&y->ev);
	return rc;
}

/* YAML's core-schema null (None in Python): nothing, ~, null, Null, NULL. */
static int yaml_null(const char *v)
{
	return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
	       !strcmp(v, "NULL");
}

/* A value (NULL for YAML's null): a scalar, a sequence of scalars joined with commas, or a
 * mapping of scalars (e.g. gradient_checkpointing_kwargs) kept as the
 * text "{k: v, ...}" for the setting's owner to judge.  Errors name the
 * setting. */
static int yaml_value(yaml_reader *y, const char *key, char **out)
{
	if (yaml_next(y)) return -1;
	if (y->ev.type == YAML_SCALAR_EVENT) {
		const char *v = (const char *)y->ev.data.scalar.value;
		int null = y->ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && yaml_null(v);
		*out = null ? NULL : ft_xstrdup(v);
		yaml_event_delete(&y->ev);
		return 0;
	}
	int map = y->ev.type == YAML_MAPPING_START_EVENT;
	if (!map && y->ev.type != YAML_SEQUENCE_START_EVENT) {
		char *what = ft_xasprintf("%s: expected a value, a list or a mapping of values", key);
		int rc = yaml_fail_here(y, what);
		free(what);
		return rc;
	}
	yaml_event_type_t end = map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT;
	yaml_event_delete(&y->ev);
	ft_sbuf text = {0};
	if (map) ft_sbuf_addc(&text, '{');
	for (int i = 0;; i++) {
		if (yaml_next(y)) { free(ft_sbuf_take(&text)); return -1; }
		if (y->ev.type == end) break;
		if (y->ev.type != YAML_SCALAR_EVENT) {
			free(ft_sbuf_take(&text));
			char *what = ft_xasprintf("%s: a %s inside a %s is not a setting ft can read", key,
						  y->ev.type == YAML_MAPPING_START_EVENT ? "mapping" : "list",
						  map ? "mapping" : "list");
			int rc = yaml_fail_here(y, what);
			free(what);
			return rc;
		}
		if (i) ft_sbuf_add(&text, !map ? "," : i % 2 ? ": " : ", ");
		ft_sbuf_add(&text, (const char *)y->ev.data.scalar.value);
		yaml_event_delete(&y->ev);
	}
	yaml_event_delete(&y->ev);
	if (map) ft_sbuf_addc(&text, '}');
	*out = ft_sbuf_take(&text);
	return 0;
}

static int yaml_mapping(yaml_reader *y, ft_lfargs *a)
{
	for (;;) {
		if (yaml_next(y)) return -1;
		if (y->ev.type == YAML_MAPPING_END_EVENT) { yaml_event_delete(&y->ev); return 0; }
		if (y->ev.type != YAML_SCALAR_EVENT) return yaml_fail_here(y, "expected a setting name");
		char *key = ft_xstrdup((const char *)y->ev.data.scalar.value);
		char *origin = ft_xasprintf("%s:%zu", y->path, y->ev.start_mark.line + 1);
		yaml_event_delete(&y->ev);
		char *value = NULL;
		int rc = yaml_value(y, key, &value);
		if (rc == 0 && value) {
			ft_lfargs_set(a, key, value, origin);
			free(value);
		} else if (rc == 0) {
			ft_lfargs_unset(a, key);   /* null: the default applies */
		}
		free(key);
		free(origin);
		if (rc) return -1;
	}
}

static int load_yaml(ft_lfargs *a, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) return ft_fail("%s:", path);
	yaml_reader y = {.path = path};
	yaml_parser_initialize(&y.p);
	yaml_parser_set_input_file(&y.p, f);
	int rc = 0;
	for (;;) {
		if ((rc = yaml_next(&y))) break;
		yaml_event_type_t t = y.ev.type;
		if (t == YAML_STREAM_END_EVENT) { yaml_event_delete(&y.ev); break; }
		if (t == YAML_MAPPING_START_EVENT) {
			yaml_event_delete(&y.ev);
			if ((rc = yaml_mapping(&y, a))) break;
			continue;
		}
		if (t == YAML_SCALAR_EVENT || t == YAML_SEQUENCE_START_EVENT) {
			rc = yaml_fail_here(&y, "the config must be a mapping of settings");
			break;
		}
		yaml_event_delete(&y.ev);
	}
	yaml_parser_delete(&y.p);
	fclose(f);
	return rc;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcasecmp(s + n - m, suffix);
}

int ft_lfargs_load_file(ft_lfargs *a, const char *path)
{
	if (ends_with(path, ".json")) return load_json(a, path);
	if (ends_with(path, ".yaml") || ends_with(path, ".yml")) return load_yaml(a, path);
	return ft_fail("%s: a config file must end in .yaml, .yml or .json", path);
}

/* OmegaConf.from_cli reads each value as YAML, so key=null (or key=)
 * is None there: the default applies, as a null in the config file. */
static void set_from_cli(ft_lfargs *a, const char *key, const char *value)
{
	if (yaml_null(value))
		ft_lfargs_unset(a, key);
	else
		ft_lfargs_set(a, key, value, "command line");
}

int ft_lfargs_parse_argv(ft_lfargs *a, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i];
		const char *eq = strchr(arg, '=');
		if (strncmp(arg, "--", 2) == 0) {
			char *key = eq ? ft_xasprintf("%.*s", (int)(eq - arg - 2), arg + 2) : ft_xstrdup(arg + 2);
			const char *value = eq ? eq + 1 : "true";
			if (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
				value = argv[++i];
			if (!*key) { free(key); return ft_fail("'%s': empty flag name", arg); }
			set_from_cli(a, key, value);
			free(key);
		} else if (eq && eq != arg) {
			char *key = ft_xasprintf("%.*s", (int)(eq - arg), arg);
			set_from_cli(a, key, eq + 1);
			free(key);
		} else {
			return ft_fail("'%s': expected --key value or key=value", arg);
		}
	}
	return 0;
}
