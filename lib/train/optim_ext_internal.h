/* optim_ext_internal.h - what the optimizer extensions (optim_*.c behind
 * optim_ext.h) share for their checkpoint files; defined in optim_ext.c. */
#ifndef FT_OPTIM_EXT_INTERNAL_H
#define FT_OPTIM_EXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "format/safetensors.h"

/* Reads "<pname>.<what>" of n floats from st (opened from file f) into
 * dst; a missing tensor or one of another size fails naming both. */
int ftp_ext_read_vec(ft_st *st, const char *f, const char *pname, const char *what, size_t n,
		     float *dst);
/* The "step" of st's metadata (written by ft_st_writer_meta). */
int ftp_ext_read_step(ft_st *st, const char *f, int64_t *step);

#endif
