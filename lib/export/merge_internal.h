/* merge_internal.h - what the two exports (merge.c's merged model,
 * gptq_model.c's quantized one) share: the export directory's checks and
 * the files copied beside the weights. */
#ifndef FT_MERGE_INTERNAL_H
#define FT_MERGE_INTERNAL_H

#include <stdint.h>
#include "export/merge.h"
#include "util/dtype.h"

/* export_dir absent, empty, or replaced with o->overwrite; never the base
 * or an adapter directory.  Creates its parent, returned in *parent
 * (malloc'd); *exists says whether export_dir was there. */
int ftp_export_dir_prepare(const ft_merge_opts *o, int *exists, char **parent);
/* Refuses when the file system of parent has less than need bytes free
 * (FT_MERGE_DISK_FREE stands in for the free space in tests). */
int ftp_export_disk_check(const char *parent, uint64_t need);
/* base_dir/config.json into dir with its dtype fields set to dtype. */
int ftp_export_write_config(const char *base_dir, const char *dir, ft_dtype dtype);
/* Tokenizer and generation files (from the base, else the last adapter). */
uint64_t ftp_export_copied_size(const ft_merge_opts *o);
int ftp_export_copy_files(const ft_merge_opts *o, const char *dir);

#endif
