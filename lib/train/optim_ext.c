/* optim_ext.c - what the optimizer extensions share; see optim_ext.h */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "util/error.h"

#include <jansson.h>

#include <stdlib.h>

void ft_optim_ext_free(ft_optim_ext *e)
{
	if (!e) return;
	if (e->free) e->free(e->self);
	free(e);
}

void ft_ext_proj_alloc(ft_ext_proj *a, size_t n)
{
	size_t nn = n ? n : 1;
	a->kind = ft_xcalloc(nn, sizeof *a->kind);
	a->decay = ft_xcalloc(nn, sizeof *a->decay);
	a->right = ft_xcalloc(nn, sizeof *a->right);
	a->rank = ft_xcalloc(nn, sizeof *a->rank);
	a->n1 = ft_xcalloc(nn, sizeof *a->n1);
	a->n3 = ft_xcalloc(nn, sizeof *a->n3);
	a->s1 = ft_xcalloc(nn, sizeof *a->s1);
	a->s2 = ft_xcalloc(nn, sizeof *a->s2);
	a->s3 = ft_xcalloc(nn, sizeof *a->s3);
}

void ft_ext_proj_free(ft_ext_proj *a)
{
	free(a->kind); free(a->decay); free(a->right); free(a->rank);
	free(a->n1); free(a->n3); free(a->s1); free(a->s2); free(a->s3);
}

void ft_ext_proj_view(const ft_ext_proj *a, ft_ext_dev *d)
{
	d->kind = a->kind;
	d->decay = a->decay;
	d->right = a->right;
	d->rank = a->rank;
	d->n1 = d->n2 = a->n1;
	d->n3 = a->n3;
	d->s1 = a->s1;
	d->s2 = a->s2;
	d->s3 = a->s3;
}

int ftp_ext_read_vec(ft_st *st, const char *f, const char *pname, const char *what, size_t n,
		     float *dst)
{
	char *nm = ft_xasprintf("%s.%s", pname, what);
	const ft_st_tensor *t = ft_st_find(st, nm);
	int rc = !t || t->numel != n ? ft_fail("%s: %s is missing or has another size", f, nm)
				     : ft_st_read_f32(t, dst);
	free(nm);
	return rc;
}

int ftp_ext_read_step(ft_st *st, const char *f, int64_t *step)
{
	const json_t *meta = ft_st_metadata(st);
	const char *s = meta ? json_string_value(json_object_get(meta, "step")) : NULL;
	if (!s) return ft_fail("%s: no step in the metadata", f);
	*step = strtoll(s, NULL, 10);
	return 0;
}

void ftp_ext_add_lowrank(ft_st_writer *w, const ft_param *p, int lowrank, int right, int r,
			 const float *m, const float *v, const float *P, char **names, size_t *nn,
			 int64_t shape[2][2])
{
	int64_t *ls = shape[0], *ps = shape[1];
	ls[0] = right ? p->shape[0] : r;
	ls[1] = right ? r : p->shape[1];
	ps[0] = right ? r : p->shape[0];
	ps[1] = right ? p->shape[1] : r;
	const int64_t *ms = lowrank ? ls : p->shape;
	int nd = lowrank ? 2 : p->ndim;
	names[*nn] = ft_xasprintf("%s.exp_avg", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, nd, ms, m);
	names[*nn] = ft_xasprintf("%s.exp_avg_sq", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, nd, ms, v);
	if (!lowrank) return;
	names[*nn] = ft_xasprintf("%s.ortho", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, 2, ps, P);
}
