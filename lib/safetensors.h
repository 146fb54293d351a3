/* safetensors.h - read (mmap) and write safetensors files and sharded
 * model directories.  The only module that touches the format.
 *
 * Every header is validated: bad JSON, unknown dtype, offsets out of range
 * or overlapping, shape/size mismatch and truncated files give a clear
 * error naming the file and tensor, never a crash.
 */
#ifndef FT_SAFETENSORS_H
#define FT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "dtype.h"

#define FT_ST_MAX_DIMS 8

typedef struct {
	const char *name;
	ft_dtype dtype;
	int ndim;
	int64_t shape[FT_ST_MAX_DIMS];
	size_t numel;
	const void *data;   /* inside the mmap */
	size_t nbytes;
	const char *file;   /* which shard */
} ft_st_tensor;

typedef struct ft_st ft_st;

/* A .safetensors file, a model.safetensors.index.json, or a directory
 * holding either (model.safetensors / model.safetensors.index.json /
 * adapter_model.safetensors). */
ft_st *ft_st_open(const char *path);
void ft_st_close(ft_st *st);
size_t ft_st_count(const ft_st *st);
const ft_st_tensor *ft_st_at(const ft_st *st, size_t i);
const ft_st_tensor *ft_st_find(const ft_st *st, const char *name);
/* __metadata__ of the (first) file, or NULL. */
const json_t *ft_st_metadata(const ft_st *st);
/* Convert a float tensor to f32 (dst holds numel floats). */
int ft_st_read_f32(const ft_st_tensor *t, float *dst);

/* Writing.  Tensors are added (data borrowed until write) then written in
 * one go, atomically, 8-byte aligned, with optional __metadata__. */
typedef struct ft_st_writer ft_st_writer;
ft_st_writer *ft_st_writer_new(void);
void ft_st_writer_free(ft_st_writer *w);
int ft_st_writer_add(ft_st_writer *w, const char *name, ft_dtype dtype,
		     int ndim, const int64_t *shape, const void *data);
void ft_st_writer_meta(ft_st_writer *w, const char *key, const char *value);
int ft_st_writer_write(ft_st_writer *w, const char *path);

/* Streaming writer for files larger than memory: declare every tensor
 * first (data NULL), then ft_st_stream_begin() writes the header and each
 * ft_st_stream_put() writes the next declared tensor's bytes, in order. */
int ft_st_stream_begin(ft_st_writer *w, const char *path);
int ft_st_stream_put(ft_st_writer *w, const void *data, size_t nbytes);
int ft_st_stream_end(ft_st_writer *w);   /* renames into place */
void ft_st_stream_abort(ft_st_writer *w);

#endif
