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
