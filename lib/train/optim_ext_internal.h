/* optim_ext_internal.h - what the optimizer extensions (optim_*.c behind
 * optim_ext.h) share for their checkpoint files; defined in optim_ext.c. */
#ifndef FT_OPTIM_EXT_INTERNAL_H
#define FT_OPTIM_EXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "format/safetensors.h"
#include "train/optim.h"
#include "train/optim_ext.h"

/* Reads "<pname>.<what>" of n floats from st (opened from file f) into
 * dst; a missing tensor or one of another size fails naming both. */
int ftp_ext_read_vec(ft_st *st, const char *f, const char *pname, const char *what, size_t n,
		     float *dst);
/* One parameter's state under GaLore or APOLLO: Adam's moments in the
 * projected space R = G P^T or P^T G (nlow elements; p's own size when
 * not projected) and the projection P (np elements). */
typedef struct {
	int on;                       /* projected */
	int right;                    /* R = G P^T (P [r, in]); else R = P^T G (P [out, r]) */
	int r;                        /* the projection's rank */
	size_t nlow, np;              /* elements of R and of P */
	float *P, *m, *v;
} ftp_lowrank;

/* s for p [out, in] projected at rank r on the side `right` (on), or
 * plain AdamW moments of p's size; the arrays zeroed. */
void ftp_lowrank_init(ftp_lowrank *s, const ft_param *p, int on, int right, int r);
/* Frees the arrays of s[0..n) and s itself. */
void ftp_lowrank_free(ftp_lowrank *s, size_t n);
/* GaLore's get_orthogonal_matrix: P = the top r right (Vh[:r]) or left
 * (U[:, :r]) singular vectors of G [out, in] (LAPACK's sgesdd). */
int ftp_lowrank_svd(ftp_lowrank *s, const float *G, int out, int in);

/* transformers' old AdamW as galore_torch and apollo-torch step it:
 * m = b1 m + (1-b1) g, v = b2 v + (1-b2) g g, p += alpha m / (sqrt v +
 * eps) with alpha = -lr sqrt(bc2)/bc1 at the (1-based) step. */
typedef struct {
	float alpha, a1, a2, b1, b2, eps;
} ftp_old_adamw;
ftp_old_adamw ftp_old_adamw_at(double beta1, double beta2, double eps, double lr, int64_t step);
/* One step of s's moments from p's gradient.  Projected: returns the
 * normalized update N [nlow] and the projected gradient *R (both the
 * caller's to free; the update goes back to p->w by the caller);
 * otherwise applies the update to p->w and returns NULL. */
float *ftp_lowrank_adam(ftp_lowrank *s, ft_param *p, const ftp_old_adamw *a, float **R);
/* p.add_(p, alpha=-lr * wd), after the update (transformers' old AdamW) */
void ftp_ext_decay(ft_param *p, double lr, double wd);

/* Adds p's Adam moments "<name>.exp_avg" / ".exp_avg_sq" to w, in the
 * projected shape ([r, n] or, right, [m, r]) when s->on, else in p's,
 * and then the projection "<name>.ortho" ([m, r] or, right, [r, n]):
 * GaLore's and APOLLO's layout.  w keeps pointers, so names (3 slots from
 * names[*nn]) and shape (2 rows) must live until it is written. */
void ftp_ext_add_lowrank(ft_st_writer *w, const ft_param *p, const ftp_lowrank *s, char **names,
			 size_t *nn, int64_t shape[2][2]);
/* Writes dir/file: the states s[0..n) of params p, metadata "format" and
 * "step", and what meta (may be NULL) adds for param k (names from
 * names[*nn], at most 3 per param, kept until written). */
int ftp_lowrank_save(const char *dir, const char *file, const char *format, int64_t step,
		     ft_param *const *p, const ftp_lowrank *s, size_t n,
		     void (*meta)(void *ctx, ft_st_writer *w, size_t k, char **names, size_t *nn),
		     void *ctx);
/* Reads p's moments (and projection when s->on) from st (opened from f). */
int ftp_lowrank_read(ft_st *st, const char *f, const ft_param *p, ftp_lowrank *s);
/* a (allocated here) over the states s[0..n): kind = on, the sizes and
 * the arrays, as ft_ext_dev wants them. */
void ftp_lowrank_arrays(ft_ext_proj *a, ft_param *const *p, const ftp_lowrank *s, size_t n);

/* The "step" of st's metadata (written by ft_st_writer_meta). */
int ftp_ext_read_step(ft_st *st, const char *f, int64_t *step);

#endif
