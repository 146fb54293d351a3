/* json.h - JSON over jansson with "file:line:column: message" errors. */
#ifndef FT_JSON_H
#define FT_JSON_H

#include <stdio.h>
#include <jansson.h>

/* Whole file ("-" for stdin): NULL with "path:line:col: message".  Any
 * JSON value is accepted at the top level; a repeated key keeps its last
 * value (as Python's json).  ft_json_load_string's name may be NULL. */
json_t *ft_json_load_file(const char *path);
json_t *ft_json_load_string(const char *text, size_t len, const char *name);

/* JSON lines: one value per line; blank lines are skipped. */
typedef struct ft_jsonl ft_jsonl;
ft_jsonl *ft_jsonl_open(const char *path);        /* "-" is stdin */
ft_jsonl *ft_jsonl_open_fp(FILE *fp, const char *name);
/* 1: *out is a new reference; 0: EOF; -1: error "path:line:col: msg"
 * (the reader can continue with the next line after an error). */
int ft_jsonl_next(ft_jsonl *r, json_t **out);
long ft_jsonl_line(const ft_jsonl *r);            /* line of the last value */
void ft_jsonl_close(ft_jsonl *r);

/* Typed lookups with defaults; *_req versions fail naming the key. */
const char *ft_json_str(const json_t *obj, const char *key, const char *def);
long long ft_json_int(const json_t *obj, const char *key, long long def);
double ft_json_num(const json_t *obj, const char *key, double def);
int ft_json_bool(const json_t *obj, const char *key, int def);
int ft_json_req_str(const json_t *obj, const char *key, const char **out);
int ft_json_req_int(const json_t *obj, const char *key, long long *out);
int ft_json_req_num(const json_t *obj, const char *key, double *out);

/* Write atomically (temp + rename), indented (indent 0: compact), keys in
 * insertion order, doubles with 17 digits, with a final newline. */
int ft_json_save_file(const json_t *v, const char *path, int indent);
/* The same with object keys sorted, as Python's json.dump(sort_keys=True)
 * (transformers' trainer_state.json). */
int ft_json_save_file_sorted(const json_t *v, const char *path, int indent);
/* One compact line to fp (for JSONL logs); -1 on write error. */
int ft_json_write_line(const json_t *v, FILE *fp);

#endif
