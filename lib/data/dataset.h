/* dataset.h - LLaMA-Factory datasets, read from local files.
 *
 * The registry (dataset_info.json: file_name, formatting, ranking, columns,
 * tags, num_samples), the file formats (JSON array, JSON lines, plain
 * text), and llamafactory 0.9.5's converters (converter.py: alpaca and
 * sharegpt) that turn each row into prompt / response messages, system
 * and tools.  Rows the converters cannot use are kept, marked with the
 * reason, so the caller can count them and name file and index.
 * Mixing (concat, interleave_under/over with probabilities, seeded as
 * datasets.interleave_datasets with numpy's default_rng) is here too.
 */
#ifndef FT_DATASET_H
#define FT_DATASET_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "text/template.h"

enum { FT_FMT_AUTO, FT_FMT_ALPACA, FT_FMT_SHAREGPT, FT_FMT_TEXT };

/* Why a row is unusable (0: it is fine). */
enum { FT_BAD_NONE, FT_BAD_MISSING, FT_BAD_TYPE, FT_BAD_ROLE, FT_BAD_COUNT,
       FT_BAD_RESPONSE, FT_BAD_RENDER, FT_BAD_NEIGHBOUR, FT_BAD_COUNT_ };
const char *ft_bad_reason_name(int reason);

typedef struct {
	char *name;              /* registry name, or the path */
	char *path;              /* the file (or directory) to read; "-" stdin */
	int formatting;          /* FT_FMT_* */
	int ranking;
	long long num_samples;   /* -1: unset */
	int detected;            /* columns settled (registry, or first row seen) */
	int keep_extra;          /* set by the caller: keep each row's unused columns (ft_example.extra) */
	/* columns (NULL: not used) */
	char *prompt, *query, *response, *history, *messages, *system, *tools;
	char *chosen, *rejected, *kto_tag;
	/* sharegpt tags (NULL: none) */
	char *role_tag, *content_tag, *user_tag, *assistant_tag, *observation_tag,
	     *function_tag, *system_tag;
} ft_dataset_attr;

void ft_dataset_attr_free(ft_dataset_attr *a);

/* Look `name` up in dir/dataset_info.json.  Entries that live on a hub
 * (hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name) and
 * files that are missing fail with a message naming the entry. */
int ft_dataset_resolve(const char *dir, const char *name, ft_dataset_attr *out);
/* A dataset given as a path (or "-"): formatting FT_FMT_AUTO detects it
 * from the first row's fields when the rows are read. */
void ft_dataset_from_path(const char *path, int formatting, ft_dataset_attr *out);

typedef struct {
	ft_message *prompt;      /* user/assistant/... turns before the response */
	size_t n_prompt;
	ft_message *response;    /* 1; 2 for ranking (chosen, rejected) and kto */
	size_t n_response;
	char *system;            /* NULL: the template's default */
	char *tools;             /* NULL or "": none */
	const char *source;      /* file name for messages */
	size_t index;            /* row index in that file, from 0 */
	int bad;                 /* FT_BAD_* */
	char *why;               /* details for the warning */
	int kto;                 /* -1: no kto tag, else the tag */
	/* With keep_extra: the row's columns the converter did not read (not
	 * named by the mapping for its formatting: alpaca's prompt, query,
	 * response, history, system, tools, kto_tag, and chosen/rejected when
	 * ranking; sharegpt's messages, system, tools, kto_tag, chosen/rejected),
	 * in the row's order, as TRL passes a dataset's other columns to reward
	 * functions.  An object (maybe empty), or NULL without keep_extra. */
	json_t *extra;
} ft_example;

typedef struct {
	ft_example *v;
	size_t n, cap;
	char **sources;          /* owned file names */
	size_t n_sources;
} ft_dataset;

void ft_dataset_free(ft_dataset *d);
void ft_example_free(ft_example *e);

/* Read a dataset's file(s) and convert each row (max_samples < 0: all).
 * The stage decides how text rows are read (pt: the whole text is the
 * prompt).  -1 on I/O or syntax errors (file:line:col); `out` then keeps
 * what was read before the error, so free it either way. */
int ft_dataset_read(ft_dataset_attr *a, long long max_samples, ft_dataset *out);

/* Keep the first n examples, or cycle through them up to n. */
void ft_dataset_take(ft_dataset *d, size_t n);

/* Append src's examples to dst (moving them). */
void ft_dataset_concat(ft_dataset *dst, ft_dataset *src);

enum { FT_MIX_CONCAT, FT_MIX_UNDER, FT_MIX_OVER };
int ft_mix_parse(const char *s);   /* -1 with a message */
/* Mix n datasets into out (examples are copied as needed: the same row
 * may appear twice when oversampling).  probs NULL: round robin. */
int ft_dataset_mix(ft_dataset *ds, size_t n, int strategy, const double *probs,
		   uint64_t seed, ft_dataset *out);

/* numpy.random.default_rng(seed).choice(n, size=count, p=probs) */
void ft_numpy_choice(uint64_t seed, const double *probs, size_t n, size_t count, int *out);

#endif
