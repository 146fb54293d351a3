/* optim_state.c - AdamW state file (save/load); see optim.h.  Kept apart
 * from optim.c so the update itself links without the safetensors module. */
#include "train/optim_internal.h"
#include "util/error.h"
#include "format/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- state file ------------------------------------------------------- */

static char *fmt_g(double x)
{
	return ft_xasprintf("%.17g", x);
}

/* Whether every moment is on the host (a CPU run's always are). */
static int all_held(const ft_adamw *a)
{
	for (size_t i = 0; i < a->n; i++)
		if (!a->m[i] || !a->v[i]) return 0;
	return 1;
}

/* Each param's weights and moments in declared order, the moments not
 * on the host fetched (or zeros) one param at a time into one scratch
 * pair: the bytes are those ft_st_writer_write gives for the same tensors. */
static int stream_state(const ft_adamw *a, ft_st_writer *w, const char *path)
{
	size_t most = 1;
	for (size_t i = 0; i < a->n; i++)
		if (a->p[i]->n > most) most = a->p[i]->n;
	float *sm = ft_xmalloc(most * sizeof *sm), *sv = ft_xmalloc(most * sizeof *sv);
	int rc = ft_st_stream_begin(w, path);
	for (size_t i = 0; i < a->n && rc == 0; i++) {
		const ft_param *p = a->p[i];
		size_t bytes = p->n * sizeof(float);
		const float *m = a->m[i], *v = a->v[i];
		if (!m || !v) {
			if (a->get) {
				rc = a->get(a->get_ctx, i, sm, sv);
			} else {
				memset(sm, 0, bytes);
				memset(sv, 0, bytes);
			}
			if (m) memcpy(sm, m, bytes);   /* a host moment wins */
			if (v) memcpy(sv, v, bytes);
			m = sm;
			v = sv;
		}
		if (rc == 0) rc = ft_st_stream_put(w, p->w, bytes);
		if (rc == 0) rc = ft_st_stream_put(w, m, bytes);
		if (rc == 0) rc = ft_st_stream_put(w, v, bytes);
	}
	if (rc == 0) rc = ft_st_stream_end(w);
	else ft_st_stream_abort(w);
	free(sm);
	free(sv);
	return rc;
}

int ft_adamw_save(const ft_adamw *a, const char *path)
{
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(2 * a->n + 1, sizeof *names);
	const int held = all_held(a);
	/* The fp32 weights themselves go in too: the model saved beside this
	 * file may be bf16/f16, and resuming must continue from the exact
	 * values. */
	for (size_t i = 0; i < a->n; i++) {
		const ft_param *p = a->p[i];
		int64_t shape[2] = { p->shape[0], p->shape[1] };
		int ndim = p->ndim > 0 ? p->ndim : 1;
		if (p->ndim <= 0) shape[0] = (int64_t)p->n;
		names[2 * i] = ft_xasprintf("%s.exp_avg", p->name);
		names[2 * i + 1] = ft_xasprintf("%s.exp_avg_sq", p->name);
		ft_st_writer_add(w, p->name, FT_F32, ndim, shape, held ? p->w : NULL);
		ft_st_writer_add(w, names[2 * i], FT_F32, ndim, shape, held ? a->m[i] : NULL);
		ft_st_writer_add(w, names[2 * i + 1], FT_F32, ndim, shape, held ? a->v[i] : NULL);
	}
	char *step = ft_xasprintf("%lld", (long long)a->step);
	char *b1 = fmt_g(a->o.beta1), *b2 = fmt_g(a->o.beta2), *eps = fmt_g(a->o.eps),
	     *wd = fmt_g(a->o.weight_decay);
	ft_st_writer_meta(w, "format", "ft-adamw");
	ft_st_writer_meta(w, "version", "1");
	ft_st_writer_meta(w, "step", step);
	ft_st_writer_meta(w, "beta1", b1);
	ft_st_writer_meta(w, "beta2", b2);
	ft_st_writer_meta(w, "eps", eps);
	ft_st_writer_meta(w, "weight_decay", wd);
	int rc = held ? ft_st_writer_write(w, path) : stream_state(a, w, path);
	ft_st_writer_free(w);
	for (size_t i = 0; i < 2 * a->n; i++) free(names[i]);
	free(names);
	free(step); free(b1); free(b2); free(eps); free(wd);
	return rc;
}

/* release: give the tensor's mapped pages back once read (a streamed load) */
static int load_moment(ft_st *st, const char *path, const ft_param *p, const char *what, float *dst,
		       int release)
{
	char *name = *what ? ft_xasprintf("%s.%s", p->name, what) : ft_xstrdup(p->name);
	const ft_st_tensor *t = ft_st_find(st, name);
	int rc = 0;
	if (!t)
		rc = ft_fail("%s: no tensor '%s' (the checkpoint was made for other parameters)", path, name);
	else if (t->dtype != FT_F32 || t->numel != p->n)
		rc = ft_fail("%s: tensor '%s' has %zu elements, expected %zu F32", path, name, t->numel, p->n);
	else
		rc = ft_st_read_f32(t, dst);
	if (t && release) ft_st_release(t);
	free(name);
	return rc;
}

/* The metadata's format and step, and one weight and two moments per param. */
static int check_state(ft_st *st, const char *path, size_t n, int64_t *step)
{
	const json_t *meta = ft_st_metadata(st);
	const json_t *fmt = meta ? json_object_get(meta, "format") : NULL;
	const json_t *s = meta ? json_object_get(meta, "step") : NULL;
	if (!fmt || !json_is_string(fmt) || strcmp(json_string_value(fmt), "ft-adamw") != 0)
		return ft_fail("%s: not an ft optimizer state (metadata format != ft-adamw)", path);
	if (!s || !json_is_string(s))
		return ft_fail("%s: metadata has no step", path);
	if (ft_st_count(st) != 3 * n)
		return ft_fail("%s: %zu tensors, expected %zu for %zu trainable parameters", path,
			       ft_st_count(st), 3 * n, n);
	*step = strtoll(json_string_value(s), NULL, 10);
	return 0;
}

int ft_adamw_load_each(ft_adamw *a, const char *path, ft_adamw_put put, void *ctx)
{
	ft_st *st = ft_st_open(path);
	if (!st) return -1;
	int64_t step = 0;
	float *sm = NULL, *sv = NULL;
	int rc = check_state(st, path, a->n, &step);
	if (rc == 0 && put) {
		size_t most = 1;
		for (size_t i = 0; i < a->n; i++)
			if (a->p[i]->n > most) most = a->p[i]->n;
		sm = ft_xmalloc(most * sizeof *sm);
		sv = ft_xmalloc(most * sizeof *sv);
		a->step = step;
	}
	for (size_t i = 0; i < a->n && rc == 0; i++) {
		float *m = put ? sm : ft_adamw_exp_avg(a, i), *v = put ? sv : ft_adamw_exp_avg_sq(a, i);
		rc = load_moment(st, path, a->p[i], "", a->p[i]->w, put != NULL) ||
		     load_moment(st, path, a->p[i], "exp_avg", m, put != NULL) ||
		     load_moment(st, path, a->p[i], "exp_avg_sq", v, put != NULL) ? -1 : 0;
		if (rc == 0 && put) rc = put(ctx, i, m, v);
	}
	if (rc == 0) a->step = step;
	free(sm);
	free(sv);
	ft_st_close(st);
	return rc;
}

int ft_adamw_load(ft_adamw *a, const char *path)
{
	return ft_adamw_load_each(a, path, NULL, NULL);
}
