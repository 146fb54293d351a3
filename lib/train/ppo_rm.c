/* ppo_rm.c - a reward model's value head as a reward (see ppo_rm.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format/safetensors.h"
#include "model/model_pref.h"
#include "train/ppo_rm.h"
#include "util/error.h"

/* A value head [D] + bias from dir/value_head.safetensors (rm's). */
static int read_value_head(const char *dir, int D, float *w, float *b)
{
	char *path = ft_xasprintf("%s/value_head.safetensors", dir);
	ft_st *st = ft_st_open(path);
	int rc = -1;
	if (!st) goto out;
	const char *names[2] = { "v_head.summary.weight", "v_head.summary.bias" };
	float *dst[2] = { w, b };
	size_t want[2] = { (size_t)D, 1 };
	for (int k = 0; k < 2; k++) {
		const ft_st_tensor *t = ft_st_find(st, names[k]);
		if (!t) { ft_fail("%s: no tensor %s", path, names[k]); goto out; }
		size_t numel = 1;
		for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
		if (numel != want[k]) {
			ft_fail("%s: %s has %zu elements, the policy's hidden size needs %zu", path, names[k],
				numel, want[k]);
			goto out;
		}
		if (ft_st_read_f32(t, dst[k]) < 0) goto out;
	}
	rc = 0;
out:
	if (st) ft_st_close(st);
	free(path);
	return rc;
}

int ft_ppo_rm_open_model(ft_ppo_rm *r, ft_model *m, const char *dir)
{
	memset(r, 0, sizeof *r);
	r->m = m;
	int D = ft_model_config(m)->hidden_size;
	r->vw = ft_xmalloc((size_t)D * sizeof(float));
	if (read_value_head(dir, D, r->vw, &r->vb) < 0) {
		ft_ppo_rm_close(r);
		return -1;
	}
	return 0;
}

int ft_ppo_rm_open_lora(ft_ppo_rm *r, const char *base, const ft_tune_opts *t, const char *dir,
			const ft_model *policy, char *why, size_t why_n)
{
	memset(r, 0, sizeof *r);
	ft_model *m = ft_model_load(base, t);
	if (!m) return -1;
	if (ft_model_load_adapter(m, dir) < 0) {
		char *why = ft_xstrdup(ft_errmsg());   /* ft_fail formats into the same buffer */
		ft_model_free(m);
		ft_fail("%s: %s", dir, why);
		free(why);
		return -1;
	}
	if (why_n) why[0] = 0;
	if (policy && ft_model_share_base(m, policy) < 0 && why_n)
		snprintf(why, why_n, "%s", ft_errmsg());
	return ft_ppo_rm_open_model(r, m, dir);   /* its messages name dir/value_head.safetensors */
}

int ft_ppo_rm_score(ft_ppo_rm *r, const ft_i32vec *q, const ft_i32vec *a, size_t n, float *scores)
{
	int T = 0;
	for (size_t i = 0; i < n; i++)
		if ((int)(q[i].n + a[i].n) > T) T = (int)(q[i].n + a[i].n);
	if (n == 0 || T == 0) return ft_fail("nothing to score");
	ft_batch b = { .B = (int)n, .T = T };
	b.input_ids = ft_xcalloc(n * T, sizeof(int32_t));
	b.labels = ft_xmalloc(n * T * sizeof(int32_t));
	int32_t *pos = ft_xmalloc(n * sizeof *pos);
	b.lengths = ft_xmalloc(n * sizeof *b.lengths);   /* HF's attention_mask */
	for (size_t i = 0; i < n; i++) {
		b.lengths[i] = (int32_t)(q[i].n + a[i].n);
		memcpy(b.input_ids + i * T, q[i].v, q[i].n * sizeof(int32_t));
		memcpy(b.input_ids + i * T + q[i].n, a[i].v, a[i].n * sizeof(int32_t));
		for (int t = 0; t < T; t++) b.labels[i * T + t] = -100;
		pos[i] = (int32_t)(i * T + q[i].n + a[i].n - 1);
	}
	int rc = ft_model_value_forward(r->m, &b, 0, pos, (int)n, r->vw, r->vb, 0, 0, NULL, scores);
	free(b.input_ids);
	free(b.labels);
	free(b.lengths);
	free(pos);
	return rc;
}

void ft_ppo_rm_close(ft_ppo_rm *r)
{
	if (r->m) ft_model_free(r->m);
	free(r->vw);
	memset(r, 0, sizeof *r);
}
