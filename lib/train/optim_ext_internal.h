/* optim_ext_internal.h - what the optimizer extensions (optim_*.c behind
 * optim_ext.h) share for their checkpoint files; defined in optim_ext.c. */
#ifndef FT_OPTIM_EXT_INTERNAL_H
#define FT_OPTIM_EXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "format/safetensors.h"
#include "train/optim.h"

/* Reads "<pname>.<what>" of n floats from st (opened from file f) into
 * dst; a missing tensor or one of another size fails naming both. */
int ftp_ext_read_vec(ft_st *st, const char *f, const char *pname, const char *what, size_t n,
		     float *dst);
/* Adds p's Adam moments "<name>.exp_avg" / ".exp_avg_sq" to w, in the
 * projected shape ([r, n] or, right, [m, r]) when lowrank, else in p's,
 * and then the projection "<name>.ortho" ([m, r] or, right, [r, n]):
 * GaLore's and APOLLO's layout.  w keeps pointers, so names (3 slots from
 * names[*nn]) and shape (2 rows) must live until it is written. */
void ftp_ext_add_lowrank(ft_st_writer *w, const ft_param *p, int lowrank, int right, int r,
			 const float *m, const float *v, const float *P, char **names, size_t *nn,
			 int64_t shape[2][2]);
/* The "step" of st's metadata (written by ft_st_writer_meta). */
int ftp_ext_read_step(ft_st *st, const char *f, int64_t *step);

#endif
