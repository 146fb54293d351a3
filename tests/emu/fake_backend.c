/* fake_backend.c - a stand-in for libft_cuda.so that implements the
 * backend table (lib/cuda/backend_internal.h) over the CPU model, for the
 * entries the preference stages use.  Loaded with FT_CUDA_LIB by
 * tests/bats/ft-train-pref-device.bats, it runs everything ft-train does
 * for `--stage rm|dpo|kto --device cuda` on the host side without a GPU:
 * the tool's device binding, lib/train/cuda_pref.c (lazy zeroing, the
 * optimizer stepping itself, checkpoints through state_out/state_in,
 * rm's value head owned by the "device" and stepped with the model),
 * lib/cuda/backend.c's forwarding and the ABI check.  The arithmetic is
 * the CPU's (model_pref.c, ft_clip_grad_norm, ft_adamw), so a run must
 * give the CPU path's numbers: what differs is only the wiring under
 * test.  The kernels themselves are checked by tests/emu/test_pref_emu.cc
 * and, on a GPU, bench/train-gpu/pref_check.sh.
 *
 * The plain training entries (forward_backward, forward, step) are there
 * too, for tests/bats/qlora.bats's `--device cuda` run of a quantized
 * model.  Entries not listed (decoding, attention, NCCL) are NULL: those
 * runs never call them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/backend_internal.h"
#include "model/model_pref.h"
#include "train/optim.h"
#include "train/trainer.h"
#include "util/error.h"

#define EXPORT __attribute__((visibility("default")))

struct ft_cuda_model {
	ft_model *m;
	ft_train_model t;        /* the CPU binding: zero_grad, set_position */
	ft_cuda_plan plan;
	ft_adamw *opt;           /* made at the first step or checkpoint load */
	ft_cuda_adamw_opts ao;
	ft_param *head;          /* the pref binding's value head, when it has one */
};

struct ft_cuda_pref {
	ft_cuda_model *dm;
	int value_head;
	ft_param head[2];
	float *hd;
};

static ft_batch fb(const ft_cuda_batch *c)
{
	ft_batch b;
	memset(&b, 0, sizeof b);
	b.B = c->B;
	b.T = c->T;
	b.input_ids = (int32_t *)c->input_ids;
	b.labels = (int32_t *)c->labels;
	b.position_ids = (int32_t *)c->position_ids;
	b.segment_ids = (int32_t *)c->segment_ids;
	b.lengths = (int32_t *)c->lengths;
	return b;
}

static void plan_format(const ft_cuda_plan *p, char *buf, size_t n)
{
	snprintf(buf, n, "%zu bytes (the fake backend: the CPU model)", p->total);
}

static ft_cuda_model *model_new(struct ft_model *m, const ft_cuda_opts *o)
{
	(void)o;
	ft_cuda_model *dm = ft_xcalloc(1, sizeof *dm);
	dm->m = m;
	dm->t = ft_train_model_of(m);
	return dm;
}

static void model_free(ft_cuda_model *dm)
{
	if (!dm) return;
	ft_adamw_free(dm->opt);
	free(dm);
}

static const ft_cuda_plan *model_plan(const ft_cuda_model *dm) { return &dm->plan; }

static int zero_grad(ft_cuda_model *dm)
{
	dm->t.zero_grad(dm->t.self);
	return 0;
}

/* The trainable params in the CPU trainer's order, then the head. */
static ft_adamw *optimizer(ft_cuda_model *dm)
{
	if (dm->opt) return dm->opt;
	size_t n = ft_model_nparams(dm->m), k = 0;
	ft_param **ps = ft_xcalloc(n + 2, sizeof *ps);
	for (size_t i = 0; i < n; i++)
		if (ft_model_param(dm->m, i)->trainable) ps[k++] = ft_model_param(dm->m, i);
	for (int j = 0; dm->head && j < 2; j++) ps[k++] = &dm->head[j];
	ft_adamw_opts o = { dm->ao.beta1, dm->ao.beta2, dm->ao.eps, dm->ao.weight_decay };
	if (o.beta1 == 0 && o.beta2 == 0) ft_adamw_opts_default(&o);
	dm->opt = ft_adamw_new(ps, k, &o);
	free(ps);
	return dm->opt;
}

static int64_t steps(const ft_cuda_model *dm) { return dm->opt ? ft_adamw_steps(dm->opt) : 0; }
static double loss_scale(const ft_cuda_model *dm) { (void)dm; return 1; }
static int nothing(ft_cuda_model *dm) { (void)dm; return 0; }
/* it computes in fp32 only: no loss scaler to checkpoint */
static int scaler_get(const ft_cuda_model *dm, double *s, int64_t *t)
{
	(void)dm, (void)s, (void)t;
	return ft_fail("%s", "fake backend: no fp16 loss scaling");
}
static int scaler_set(ft_cuda_model *dm, double s, int64_t t)
{
	(void)dm, (void)s, (void)t;
	return ft_fail("%s", "fake backend: no fp16 loss scaling");
}

static long opt_index(ft_cuda_model *dm, const ft_param *p)
{
	ft_adamw *a = optimizer(dm);
	for (size_t k = 0; k < ft_adamw_count(a); k++)
		if (ft_adamw_param(a, k) == p) return (long)k;
	return ft_fail("fake backend: %s has no optimizer state", p->name);
}

static int moments(ft_cuda_model *dm, const ft_param *p, float *m, float *v, int out)
{
	long k = opt_index(dm, p);
	if (k < 0) return -1;
	float *am = ft_adamw_exp_avg(dm->opt, k), *av = ft_adamw_exp_avg_sq(dm->opt, k);
	if (m) memcpy(out ? m : am, out ? am : m, p->n * sizeof(float));
	if (v) memcpy(out ? v : av, out ? av : v, p->n * sizeof(float));
	return 0;
}

static int adamw_get(ft_cuda_model *dm, size_t i, float *m, float *v)
{
	return moments(dm, ft_model_param(dm->m, i), m, v, 1);
}

static int adamw_set(ft_cuda_model *dm, size_t i, const float *m, const float *v, int64_t step)
{
	if (moments(dm, ft_model_param(dm->m, i), (float *)m, (float *)v, 0) < 0) return -1;
	ft_adamw_set_steps(dm->opt, step);
	return 0;
}

static void set_position(ft_cuda_model *dm, int64_t n) { dm->t.set_position(dm->t.self, n); }
static size_t peak_bytes(const ft_cuda_model *dm) { (void)dm; return 0; }

/* ---- the preference stages ---- */

static ft_cuda_pref *pref_new(ft_cuda_model *dm, int value_head)
{
	ft_cuda_pref *p = ft_xcalloc(1, sizeof *p);
	p->dm = dm;
	p->value_head = value_head;
	if (value_head) {
		int D = ft_model_config(dm->m)->hidden_size;
		const char *names[2] = { "v_head.summary.weight (device)", "v_head.summary.bias (device)" };
		for (int k = 0; k < 2; k++) {
			ft_param *q = &p->head[k];
			q->name = (char *)names[k];
			q->n = k ? 1 : (size_t)D;
			q->w = ft_xcalloc(q->n, sizeof(float));
			q->g = ft_xcalloc(q->n, sizeof(float));
			q->trainable = 1;
			q->decay = k == 0;
		}
		p->hd = ft_xmalloc((size_t)ft_model_config(dm->m)->hidden_size * 4096 * sizeof(float));
		dm->head = p->head;
	}
	return p;
}

static void pref_free(ft_cuda_pref *p)
{
	if (!p) return;
	for (int k = 0; p->value_head && k < 2; k++) {
		free(p->head[k].w);
		free(p->head[k].g);
	}
	free(p->hd);
	free(p);
}

static int logps_forward(ft_cuda_pref *p, const ft_cuda_batch *c, int train, float *lp, float *lm)
{
	ft_batch b = fb(c);
	return ft_model_logps_forward(p->dm->m, &b, train, lp, lm);
}

static int logps_backward(ft_cuda_pref *p, const ft_cuda_batch *c, const float *d)
{
	ft_batch b = fb(c);
	return ft_model_logps_backward(p->dm->m, &b, d);
}

static void set_adapters(ft_cuda_model *dm, int on) { ft_model_set_adapters(dm->m, on); }

static int logps_options(ft_cuda_pref *p, float t, float *ent)
{
	if (ft_model_set_logp_temperature(p->dm->m, t) < 0)
		return -1;
	ft_model_set_logp_entropy(p->dm->m, ent);
	return 0;
}

static int value_forward(ft_cuda_pref *p, const ft_cuda_batch *c, int train, const int32_t *pos,
			 int n, float p_drop, uint64_t seed, float *score)
{
	ft_batch b = fb(c);
	if (n > 4096) return ft_fail("fake backend: %d scores (at most 4096)", n);
	return ft_model_value_forward(p->dm->m, &b, train, pos, n, p->head[0].w, p->head[1].w[0],
				      p_drop, seed, p->hd, score);
}

static int value_backward(ft_cuda_pref *p, const ft_cuda_batch *c, const int32_t *pos, int n,
			  float p_drop, uint64_t seed, const float *ds)
{
	ft_batch b = fb(c);
	double db = 0;
	int rc = ft_model_value_backward(p->dm->m, &b, pos, n, p->head[0].w, p_drop, seed, p->hd, ds,
					 p->head[0].g, &db);
	p->head[1].g[0] += (float)db;
	return rc;
}

static int value_head_set(ft_cuda_pref *p, int k, const float *w, const float *m, const float *v)
{
	if (w) memcpy(p->head[k].w, w, p->head[k].n * sizeof(float));
	return m || v ? moments(p->dm, &p->head[k], (float *)m, (float *)v, 0) : 0;
}

static int value_head_get(ft_cuda_pref *p, int k, float *w, float *m, float *v)
{
	if (w) memcpy(w, p->head[k].w, p->head[k].n * sizeof(float));
	return m || v ? moments(p->dm, &p->head[k], m, v, 1) : 0;
}

static int pref_zero_grad(ft_cuda_pref *p)
{
	zero_grad(p->dm);
	for (int k = 0; p->value_head && k < 2; k++) memset(p->head[k].g, 0, p->head[k].n * sizeof(float));
	return 0;
}

/* The CPU trainer's step: clip_grad_norm_ over every trainable
 * tensor (the head last), then AdamW. */
static int model_step(ft_cuda_model *dm, const ft_cuda_adamw_opts *o, double lr, double max_norm,
		      double *gn, int *skipped)
{
	dm->ao = *o;
	ft_adamw *a = optimizer(dm);
	size_t n = ft_adamw_count(a);
	ft_param **ps = ft_xcalloc(n, sizeof *ps);
	for (size_t k = 0; k < n; k++) ps[k] = ft_adamw_param(a, k);
	double norm = ft_clip_grad_norm(ps, n, max_norm);
	free(ps);
	if (gn) *gn = norm;
	if (skipped) *skipped = 0;
	ft_adamw_step(a, lr);
	return 0;
}

static int pref_step(ft_cuda_pref *p, const ft_cuda_adamw_opts *o, double lr, double max_norm,
		     double *gn, int *skipped)
{
	return model_step(p->dm, o, lr, max_norm, gn, skipped);
}

/* ---- plain training (ft-train's sft binding, lib/train/cuda_train.c) ---- */

static int forward_backward(ft_cuda_model *dm, const ft_cuda_batch *c, float gs, double *loss,
			    int64_t *nt)
{
	ft_batch b = fb(c);
	return dm->t.forward_backward(dm->t.self, &b, gs, loss, nt);
}

static int forward(ft_cuda_model *dm, const ft_cuda_batch *c, float *logits, double *loss,
		   int64_t *nt)
{
	ft_batch b = fb(c);
	return ft_model_forward(dm->m, &b, logits, loss, nt);
}

static const ftp_cuda_api api = {
	.abi = FTP_CUDA_ABI,
	.size = sizeof(ftp_cuda_api),
	.plan_format = plan_format,
	.model_new = model_new,
	.model_free = model_free,
	.model_plan = model_plan,
	.zero_grad = zero_grad,
	.forward_backward = forward_backward,
	.forward = forward,
	.step = model_step,
	.steps = steps,
	.loss_scale = loss_scale,
	.scaler_get = scaler_get,
	.scaler_set = scaler_set,
	.copy_grads_to_host = nothing,
	.copy_weights_to_host = nothing,
	.copy_weights_to_device = nothing,
	.adamw_get = adamw_get,
	.adamw_set = adamw_set,
	.set_position = set_position,
	.peak_bytes = peak_bytes,
	.sync = nothing,
	.pref_new = pref_new,
	.pref_free = pref_free,
	.logps_forward = logps_forward,
	.logps_backward = logps_backward,
	.set_adapters = set_adapters,
	.value_forward = value_forward,
	.value_backward = value_backward,
	.value_head_set = value_head_set,
	.value_head_get = value_head_get,
	.pref_zero_grad = pref_zero_grad,
	.pref_step = pref_step,
	.logps_options = logps_options,
};

EXPORT const ftp_cuda_api *ftp_cuda_backend_api(void) { return &api; }

EXPORT int ftp_cuda_backend_probe(char *desc, size_t n)
{
	snprintf(desc, n, "fake (the CPU model behind the backend table)");
	return 1;
}
