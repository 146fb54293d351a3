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
#include "util/dtype.h"

#define FT_ST_MAX_DIMS 8

typedef struct {
	const char *name;
	ft_dtype dtype;
	int ndim;
	int64_t shape[FT_ST_MAX_DIMS];
	size_t numel;
	const void *data;   /* inside the mmap; aligned to the element size in
			     * files we or the Python package write, but not
			     * in general: ft_st_read_f32 copies safely */
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
/* Tensors of all shards, sorted by name (strcmp); NULL past the end. */
const ft_st_tensor *ft_st_at(const ft_st *st, size_t i);
const ft_st_tensor *ft_st_find(const ft_st *st, const char *name);
/* __metadata__ of the (first) file, or NULL. */
const json_t *ft_st_metadata(const ft_st *st);
/* Convert a float tensor to f32 (dst holds numel floats). */
int ft_st_read_f32(const ft_st_tensor *t, float *dst);
/* Give back the memory the mapping of t's bytes holds (its whole pages,
 * madvise MADV_DONTNEED; t stays readable, from the file again): a reader
 * that streams a large file tensor by tensor then holds one at a time. */
void ft_st_release(const ft_st_tensor *t);

/* Writing.  Tensors are added (data borrowed until write) then written in
 * one go, atomically (temp + rename), byte-identical to what the Python
 * package writes for the same tensors: laid out by dtype (I64 F64 F32 I32
 * BF16 F16 I16 I8 U8 BOOL) then name, header padded with spaces so data
 * starts 8-byte aligned, __metadata__ first (its keys sorted) when any
 * ft_st_writer_meta() was given, e.g. ("format", "pt"). */
typedef struct ft_st_writer ft_st_writer;
ft_st_writer *ft_st_writer_new(void);
void ft_st_writer_free(ft_st_writer *w);
int ft_st_writer_add(ft_st_writer *w, const char *name, ft_dtype dtype,
		     int ndim, const int64_t *shape, const void *data);
void ft_st_writer_meta(ft_st_writer *w, const char *key, const char *value);
int ft_st_writer_write(ft_st_writer *w, const char *path);

/* Streaming writer for files larger than memory: declare every tensor
 * first (data NULL), then ft_st_stream_begin() writes the header and each
 * ft_st_stream_put() writes the next declared tensor's bytes, in the order
 * they were declared (the writer seeks to each one's place in the file),
 * nbytes exactly its size.  ft_st_stream_end() fails unless all were put.
 * ft_st_writer_free() on an unfinished stream removes the temporary. */
int ft_st_stream_begin(ft_st_writer *w, const char *path);
int ft_st_stream_put(ft_st_writer *w, const void *data, size_t nbytes);
int ft_st_stream_end(ft_st_writer *w);   /* renames into place */
void ft_st_stream_abort(ft_st_writer *w);

/* Sharded models, as transformers' save_pretrained writes them:
 *   for i in 1..n: a writer with that shard's tensors, written (or
 *     streamed) to dir/ft_st_shard_name(i, n), each tensor recorded in a
 *     weight_map object {"tensor name": "model-0000i-of-0000n.safetensors"};
 *   then ft_st_write_index(dir, weight_map, total_size, total_parameters)
 *     writes dir/model.safetensors.index.json atomically, keys sorted,
 *     indent 2, final newline.  total_size is the sum of the tensors' byte
 *     sizes (not file sizes); total_parameters the sum of their element
 *     counts (transformers 5 writes it; 0 leaves it out).
 * To make the whole directory appear at once, write it inside an
 * ft_atomic_dir_open() temporary directory and commit that. */
char *ft_st_shard_name(int i, int n);   /* "model-00001-of-00003.safetensors"; free() it */
int ft_st_write_index(const char *dir, const json_t *weight_map, uint64_t total_size,
		      uint64_t total_parameters);

#endif
