/* resized.h - ft-merge's vocabulary extension (resized.c) */
#ifndef FT_MERGE_RESIZED_H
#define FT_MERGE_RESIZED_H

#include <stddef.h>
#include "export/merge.h"
#include "text/tokenizer.h"

ft_tokenizer *merge_tokenizer(const char *model_dir, const char *add, const char *special, const char *cfg);
int merge_has_modules_to_save(const char *const *adapters, size_t n);
/* the merge through the model, into o->export_dir; dies on error */
void merge_resized(const ft_merge_opts *o, const ft_tokenizer *tok);

#endif
