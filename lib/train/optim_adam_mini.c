/* optim_adam_mini.c - Adam-mini (Zhang et al. 2024) as the adam_mini
 * package (1.1.1) runs under LLaMA-Factory (use_adam_mini: Adam_mini with
 * the model's hidden_size, num_attention_heads, num_key_value_heads).
 *
 * Each param (its name lower-cased) gets one second moment per block:
 *   "bias" in the name        per element (plain Adam)
 *   q_proj / k_proj           per head: the tensor viewed as rows of
 *                             dim*dim/n_heads elements
 *   embed, lm_head, v_proj,   per output row (shape[0] rows)
 *   o_proj, mlp
 *   anything else (norms)     one for the whole tensor
 * v_block = b2 v_block + (1 - b2) mean(g^2 over the block); the first
 * moment is per element (lerp); the step is
 *   p -= lr * m * (1/h) / bc1,  h = sqrt(v_block) / sqrt(bc2) + eps
 * (per element for "bias": p += -(lr/bc1) m / h).  Weight decay
 * p *= 1 - lr wd, except names holding "norm", "ln" or "bias".
 * State (checkpoint-N/adam_mini_optimizer.safetensors): "<param>.m",
 * "<param>.v" (one value per block) and the step in the metadata.
 */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "format/safetensors.h"
#include "util/error.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { AM_ELEM, AM_HEAD, AM_ROW, AM_WHOLE };

typedef struct {
	ft_param *const *p;
	size_t n;
	int *kind;
	size_t *nblocks, *block;       /* per param: blocks and elements per block */
	size_t *nel;                   /* per param: elements (the device's view, dev) */
	float **m, **v;
	double wd, beta1, beta2, eps;
	int *decay;
	int64_t step;
	ft_ext_dev dev;
} adam_mini;

static int has_any(const char *s, const char *const *names)
{
	for (; *names; names++)
		if (strstr(s, *names)) return 1;
	return 0;
}

/* the package's name sets, tested in its order */
static int block_kind(const char *lname)
{
	static const char *const bias[] = { "bias", NULL };
	static const char *const wqk[] = { "k_proj", "q_proj", "wq", "wk", "query", "key", NULL };
	static const char *const rows[] = { "embed", "embd", "wte", "lm_head", "output", "final_layer",
					    "v_proj", "wv", "value", "feed_forward", "linear", "mlp",
					    "o_proj", "wo", "attn.proj", NULL };
	if (has_any(lname, bias)) return AM_ELEM;
	if (has_any(lname, wqk)) return AM_HEAD;
	if (has_any(lname, rows)) return AM_ROW;
	return AM_WHOLE;
}

static int am_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	adam_mini *x = self;
	(void)opt; (void)lambda;
	x->step++;
	double bc1 = 1 - pow(x->beta1, (double)x->step), bc2 = 1 - pow(x->beta2, (double)x->step);
	float bc2s = (float)sqrt(bc2), eps = (float)x->eps, w1 = (float)(1 - x->beta1);
	float b2 = (float)x->beta2, a2 = (float)(1 - x->beta2), flr = (float)lr;
	float inv_bc1 = (float)(1 / bc1), elem_step = (float)-(lr / bc1);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		float *m = x->m[k], *v = x->v[k], *g = p->g, *w = p->w;
		if (x->decay[k] && x->wd > 0) {
			float keep = (float)(1 - lr * x->wd);
			for (size_t i = 0; i < p->n; i++) w[i] *= keep;
		}
		if (x->kind[k] == AM_ELEM) {   /* torch.optim.Adam's arithmetic */
			for (size_t i = 0; i < p->n; i++) {
				v[i] = v[i] * b2 + (a2 * g[i]) * g[i];
				m[i] = fmaf(w1, g[i] - m[i], m[i]);
				float h = sqrtf(v[i]) / bc2s + eps;
				w[i] += elem_step * (m[i] / h);
			}
			continue;
		}
		size_t nb = x->nblocks[k], bl = x->block[k];
		for (size_t b = 0; b < nb; b++) {
			const float *gb = g + b * bl;
			double s = 0;
			for (size_t i = 0; i < bl; i++) s += (double)gb[i] * gb[i];
			float mean = (float)(s / (double)bl);
			v[b] = fmaf(a2, mean, v[b] * b2);   /* mul_(b2).add_(tmp, alpha=1-b2) */
			float h = sqrtf(v[b]) / bc2s + eps;
			float stepsize = (1.0f / h) * inv_bc1;   /* (1/bc1) / h: reciprocal() * scalar */
			float *mb = m + b * bl, *wb = w + b * bl;
			for (size_t i = 0; i < bl; i++) {
				mb[i] = fmaf(w1, gb[i] - mb[i], mb[i]);
				float upd = (mb[i] * stepsize) * flr;
				wb[i] = wb[i] - upd;
			}
		}
	}
	return 0;
}

static int am_save(void *self, const char *dir)
{
	adam_mini *x = self;
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(2 * x->n + 1, sizeof *names), step[32];
	snprintf(step, sizeof step, "%lld", (long long)x->step);
	ft_st_writer_meta(w, "format", "ft-adam-mini");
	ft_st_writer_meta(w, "step", step);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		int64_t vs[1] = { (int64_t)x->nblocks[k] };
		names[2 * k] = ft_xasprintf("%s.m", p->name);
		names[2 * k + 1] = ft_xasprintf("%s.v", p->name);
		ft_st_writer_add(w, names[2 * k], FT_F32, p->ndim, p->shape, x->m[k]);
		ft_st_writer_add(w, names[2 * k + 1], FT_F32, 1, vs, x->v[k]);
	}
	char *f = ft_xasprintf("%s/adam_mini_optimizer.safetensors", dir);
	int rc = ft_st_writer_write(w, f);
	free(f);
	ft_st_writer_free(w);
	for (size_t i = 0; i < 2 * x->n; i++) free(names[i]);
	free(names);
	return rc;
}

static int am_load(void *self, const char *dir)
{
	adam_mini *x = self;
	char *f = ft_xasprintf("%s/adam_mini_optimizer.safetensors", dir);
	ft_st *st = ft_st_open(f);
	int rc = st ? 0 : -1;
	for (size_t k = 0; k < x->n && !rc; k++) {
		rc = ftp_ext_read_vec(st, f, x->p[k]->name, "m", x->p[k]->n, x->m[k]);
		if (!rc) rc = ftp_ext_read_vec(st, f, x->p[k]->name, "v", x->nblocks[k], x->v[k]);
	}
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void am_free(void *self)
{
	adam_mini *x = self;
	for (size_t k = 0; k < x->n; k++) {
		free(x->m[k]);
		free(x->v[k]);
	}
	free(x->m); free(x->v); free(x->kind); free(x->nblocks); free(x->block); free(x->decay);
	free(x->nel);
	free(x);
}

ft_optim_ext *ft_adam_mini_new(ft_param *const *params, size_t n, int dim, int n_heads, double wd,
			       double beta1, double beta2, double eps)
{
	adam_mini *x = ft_xcalloc(1, sizeof *x);
	*x = (adam_mini){ .p = params, .n = n, .wd = wd, .beta1 = beta1, .beta2 = beta2, .eps = eps };
	size_t nn = n ? n : 1, head = (size_t)dim * (size_t)dim / (size_t)n_heads;
	x->kind = ft_xcalloc(nn, sizeof *x->kind);
	x->nblocks = ft_xcalloc(nn, sizeof *x->nblocks);
	x->block = ft_xcalloc(nn, sizeof *x->block);
	x->decay = ft_xcalloc(nn, sizeof *x->decay);
	x->nel = ft_xcalloc(nn, sizeof *x->nel);
	x->m = ft_xcalloc(nn, sizeof *x->m);
	x->v = ft_xcalloc(nn, sizeof *x->v);
	for (size_t k = 0; k < n; k++) {
		const ft_param *p = params[k];
		char *ln = ft_xstrdup(p->name);
		for (char *c = ln; *c; c++) *c = (char)tolower((unsigned char)*c);
		x->kind[k] = block_kind(ln);
		x->decay[k] = !strstr(ln, "norm") && !strstr(ln, "ln") && !strstr(ln, "bias");
		free(ln);
		switch (x->kind[k]) {
		case AM_ELEM: x->nblocks[k] = p->n; x->block[k] = 1; break;
		case AM_HEAD: x->block[k] = head; x->nblocks[k] = head ? p->n / head : 0; break;
		case AM_ROW:
			x->nblocks[k] = (size_t)p->shape[0];
			x->block[k] = p->ndim == 2 ? (size_t)p->shape[1] : 1;
			break;
		default: x->nblocks[k] = 1; x->block[k] = p->n; break;
		}
		if (x->kind[k] == AM_HEAD && (!head || p->n % head)) {
			ft_fail("Adam-mini: %s has %zu elements, not whole heads of hidden_size^2 / "
				"num_attention_heads = %zu (the adam_mini package cannot view it either)",
				p->name, p->n, head);
			am_free(x);
			return NULL;
		}
		x->m[k] = ft_xcalloc(p->n ? p->n : 1, sizeof(float));
		x->v[k] = ft_xcalloc(x->nblocks[k] ? x->nblocks[k] : 1, sizeof(float));
		x->nel[k] = p->n;
	}
	/* AM_ELEM is 0: the device's per-element kind */
	x->dev = (ft_ext_dev){ .algo = FT_EXT_ADAM_MINI, .p = params, .n = n, .kind = x->kind,
			       .decay = x->decay, .block = x->block, .n1 = x->nel, .n2 = x->nblocks,
			       .s1 = x->m, .s2 = x->v, .step = &x->step, .wd = wd, .beta1 = beta1,
			       .beta2 = beta2, .eps = eps };
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = am_step, .save = am_save, .load = am_load, .free = am_free,
			     .dev = &x->dev };
	return e;
}
