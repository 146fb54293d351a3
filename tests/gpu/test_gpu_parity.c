/* test_gpu_parity.c - the CUDA backend against the CPU path and the
 * PyTorch fixtures of tests/fixtures/parity (see its README.md).
 * Built by `make gpu-tests`, run by tests/gpu/run.sh from the repository
 * root; without a CUDA device it prints a TAP skip and exits 0.
 *
 * Tolerances (max |ours - ref| / max |ref| per tensor unless noted):
 *   fp32:  logits and every gradient 1e-4; summed loss relative 1e-5;
 *          10 AdamW steps: losses relative 1e-4, grad norms 1e-4, final
 *          weights 1e-4 (k_proj.bias 1e-3, as the CPU test explains).
 *   bf16:  logits 3e-2, summed loss relative 1e-2, gradients 1e-1,
 *          10-step losses relative 2e-2 (bf16 keeps 8 significant bits:
 *          one rounding is 4e-3 relative; two layers compound it).
 *   fp16:  as bf16 (loss scale 1024 on the gradients, divided out when
 *          they are copied to the host; dynamic scaling in the loop).
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "st_test.h"
#include "gpu_test.h"
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "util/error.h"
#include "model/model.h"
#include "model/layers.h"
#include "format/safetensors.h"
#include "format/batch.h"
#include "train/cuda_train.h"
#include <unistd.h>

#define LLAMA "tests/fixtures/models/tiny-llama"
#define QWEN2 "tests/fixtures/models/tiny-qwen2"
#define PAR "tests/fixtures/parity/"

static double scalar(const ft_st *st, const char *name)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (t && t->dtype == FT_F64)
		return *(const double *)t->data;
	float v = NAN;
	if (t && t->numel == 1)
		ft_st_read_f32(t, &v);
	return v;
}

/* batch.input_ids / batch.labels (or "batch.K." prefixes) */
static int batch_of(const ft_st *st, const char *prefix, ft_cuda_batch *b)
{
	char a[96], c[96];
	snprintf(a, sizeof a, "%sinput_ids", prefix);
	snprintf(c, sizeof c, "%slabels", prefix);
	const ft_st_tensor *ti = ft_st_find(st, a), *tl = ft_st_find(st, c);
	memset(b, 0, sizeof *b);
	if (!ti || !tl || ti->dtype != FT_I32)
		return -1;
	b->B = (int)ti->shape[0];
	b->T = (int)ti->shape[1];
	b->input_ids = ti->data;
	b->labels = tl->data;
	return 0;
}

static ft_cuda_model *dev(ft_model *m, ft_cuda_precision p, int N, int T)
{
	/* fp16: a modest first loss scale, so the 10 fixture steps are not
	 * spent finding one (an overflow skips a step and the curves part) */
	ft_cuda_opts o = { .precision = p, .max_tokens = N, .max_seq = T,
			   .loss_scale = p == FT_CUDA_F16 ? 1024 : 0 };
	ft_cuda_model *dm = ft_cuda_model_new(m, &o);
	if (!dm)
		printf("# ft_cuda_model_new: %s\n", ft_errmsg());
	return dm;
}

/* Logits, loss and every gradient on the device against the fixture. */
static void grads_case(const char *dir, const char *adapter, ft_finetuning_type type,
		       const char *fixture, const char *what, ft_cuda_precision prec)
{
	double tl = prec == FT_CUDA_F32 ? 1e-4 : 3e-2, tloss = prec == FT_CUDA_F32 ? 1e-5 : 1e-2;
	double tg = prec == FT_CUDA_F32 ? 1e-4 : 1e-1;
	ft_tune_opts o = { .type = type, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 42 };
	ft_model *m = ft_model_load(dir, &o);
	ft_st *st = ft_st_open(fixture);
	ft_cuda_batch b;
	if (!m || !st || (adapter && ft_model_load_adapter(m, adapter) < 0) ||
	    batch_of(st, "batch.", &b) < 0) {
		ok(0, "%s %s: setup: %s", what, pname(prec), ft_errmsg());
		goto out;
	}
	size_t N = (size_t)b.B * b.T, V = ft_model_config(m)->vocab_size;
	ft_cuda_model *dm = dev(m, prec, (int)N, b.T);
	if (!ok(dm != NULL, "%s %s: device model", what, pname(prec)))
		goto out;
	float *lg = malloc(N * V * sizeof(float)), *ref = tensor_f32(st, "logits", N * V);
	double loss = 0, loss2 = 0;
	int64_t nt = 0, nt2 = 0;
	int rc = ft_cuda_forward(dm, &b, lg, &loss, &nt);
	double e = rc == 0 && ref ? max_rel(lg, ref, N * V) : INFINITY;
	ok(e <= tl, "%s %s: logits within %g (max rel %.3g)%s%s", what, pname(prec), tl, e,
	   rc ? ": " : "", rc ? ft_errmsg() : "");
	double want = scalar(st, "loss_sum");
	ok(rel_err(loss, want, 1e-6) <= tloss && nt == (int64_t)scalar(st, "n_tokens"),
	   "%s %s: loss sum %.6f vs torch %.6f, %lld tokens", what, pname(prec), loss, want,
	   (long long)nt);
	rc = ft_cuda_zero_grad(dm) || ft_cuda_forward_backward(dm, &b, 1.0f, &loss2, &nt2) ||
	     ft_cuda_copy_grads_to_host(dm);
	ok(rc == 0 && rel_err(loss2, loss, 1e-6) <= 1e-6 && nt2 == nt,
	   "%s %s: forward_backward gives the same loss%s%s", what, pname(prec),
	   rc ? ": " : "", rc ? ft_errmsg() : "");
	double worst = 0;
	const char *wn = "";
	int ng = 0;
	for (size_t i = 0; rc == 0 && i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->trainable)
			continue;
		char name[256];
		snprintf(name, sizeof name, "grad.%s", p->name);
		float *r = tensor_f32(st, name, p->n);
		double ge = r ? max_rel(p->g, r, p->n) : INFINITY;
		free(r);
		ng++;
		if (!(ge <= worst)) {
			worst = ge;
			wn = p->name;
		}
	}
	ok(ng > 0 && worst <= tg, "%s %s: %d gradients within %g (worst %.3g: %s)", what,
	   pname(prec), ng, tg, worst, wn);
	free(lg);
	free(ref);
	ft_cuda_model_free(dm);
out:
	ft_model_free(m);
	if (st)
		ft_st_close(st);
}

/* label tokens after the shift */
static int64_t n_labels(const ft_cuda_batch *b)
{
	int64_t n = 0;
	for (int r = 0; r < b->B; r++)
		for (int t = 1; t < b->T; t++)
			n += b->labels[r * b->T + t] != -100;
	return n;
}

/* The 10-step run of the fixture README on the device. */
static void train_case(const char *kind, const char *mode, ft_cuda_precision prec, int ckpt)
{
	char bp[128], rp[128], md[128], ad[128];
	snprintf(bp, sizeof bp, PAR "%s-train-batches.safetensors", kind);
	snprintf(rp, sizeof rp, PAR "%s-train-%s.safetensors", kind, mode);
	snprintf(md, sizeof md, "tests/fixtures/models/tiny-%s", kind);
	snprintf(ad, sizeof ad, PAR "%s-lora-init", kind);
	int lora = !strcmp(mode, "lora");
	ft_tune_opts to = { .type = lora ? FT_FT_LORA : FT_FT_FULL, .lora_rank = 4,
			    .lora_alpha = 8, .lora_targets = FT_MOD_Q | FT_MOD_V, .seed = 7,
			    .gradient_checkpointing = ckpt };
	ft_st *bs = ft_st_open(bp), *rs = ft_st_open(rp);
	ft_model *m = ft_model_load(md, &to);
	const ft_st_tensor *tls = rs ? ft_st_find(rs, "losses") : NULL;
	const ft_st_tensor *tlr = rs ? ft_st_find(rs, "lrs") : NULL;
	const ft_st_tensor *tgn = rs ? ft_st_find(rs, "grad_norms") : NULL;
	ft_cuda_model *dm = NULL;
	char what[96];
	snprintf(what, sizeof what, "%s %s %s%s 10 steps", kind, mode, pname(prec),
		 ckpt ? " checkpointing" : "");
	if (!bs || !m || !tls || !tlr || !tgn || (lora && ft_model_load_adapter(m, ad) < 0) ||
	    !(dm = dev(m, prec, 32, 16))) {
		ok(0, "%s: setup: %s", what, ft_errmsg());
		goto out;
	}
	const double *L = tls->data, *LR = tlr->data, *G = tgn->data;
	ft_cuda_adamw_opts ao = { 0.9, 0.999, 1e-8, 0.1 };
	double wl = 0, wg = 0;
	int rc = 0, skipped_total = 0;
	for (int s = 0; s < 10 && rc == 0; s++) {
		ft_cuda_batch mb[2];
		char pre[32];
		for (int k = 0; k < 2; k++) {
			snprintf(pre, sizeof pre, "batch.%d.", 2 * s + k);
			rc |= batch_of(bs, pre, &mb[k]);
		}
		if (rc)
			break;
		float gs = 1.0f / (float)(n_labels(&mb[0]) + n_labels(&mb[1]));
		double step_loss = 0, gn = 0;
		int skipped = 0;
		rc = ft_cuda_zero_grad(dm);
		for (int k = 0; k < 2 && rc == 0; k++) {
			double ls = 0;
			rc = ft_cuda_forward_backward(dm, &mb[k], gs, &ls, NULL);
			step_loss += ls * gs;
		}
		if (rc == 0)
			rc = ft_cuda_step(dm, &ao, LR[s], 1.0, &gn, &skipped);
		skipped_total += skipped;
		wl = fmax(wl, fabs(step_loss - L[s]) / fabs(L[s]));
		if (!skipped)
			wg = fmax(wg, fabs(gn - G[s]) / fabs(G[s]));
	}
	double tol = prec == FT_CUDA_F32 ? 1e-4 : 2e-2;
	ok(rc == 0 && wl <= tol && (prec != FT_CUDA_F32 || wg <= 1e-4),
	   "%s: losses within %g of PyTorch (max rel %.3g), grad norms %.3g, %d skipped%s%s",
	   what, tol, wl, wg, skipped_total, rc ? ": " : "", rc ? ft_errmsg() : "");
	if (prec != FT_CUDA_F32 || rc)
		goto out;
	rc = ft_cuda_copy_weights_to_host(dm);
	double ww = 0, wkb = 0;
	int missing = 0, n = 0;
	for (size_t i = 0; rc == 0 && i < ft_st_count(rs); i++) {
		const ft_st_tensor *t = ft_st_at(rs, i);
		if (strncmp(t->name, "final.", 6))
			continue;
		n++;
		ft_param *p = ft_model_find_param(m, t->name + 6);
		float *ref = p ? tensor_f32(rs, t->name, p->n) : NULL;
		if (!ref) {
			missing++;
			continue;
		}
		double e = max_rel(p->w, ref, p->n);
		free(ref);
		if (strstr(t->name, "k_proj.bias"))
			wkb = fmax(wkb, e);
		else
			ww = fmax(ww, e);
	}
	ok(rc == 0 && n > 0 && !missing && ww <= 1e-4 && wkb <= 1e-3,
	   "%s: %d final weights within 1e-4 (worst %.3g, k_proj.bias %.3g, %d missing)", what,
	   n, ww, wkb, missing);
out:
	ft_cuda_model_free(dm);
	ft_model_free(m);
	if (bs) ft_st_close(bs);
	if (rs) ft_st_close(rs);
}

/* Steps s0..s1-1 of the fixture schedule; losses[s] filled. */
static int run_steps(ft_cuda_model *dm, const ft_st *bs, const double *LR, int s0, int s1,
		     double *losses)
{
	ft_cuda_adamw_opts ao = { 0.9, 0.999, 1e-8, 0.1 };
	for (int s = s0; s < s1; s++) {
		ft_cuda_batch mb[2];
		char pre[32];
		for (int k = 0; k < 2; k++) {
			snprintf(pre, sizeof pre, "batch.%d.", 2 * s + k);
			if (batch_of(bs, pre, &mb[k]) < 0)
				return ft_fail("fixture batch %d missing", 2 * s + k);
		}
		float gs = 1.0f / (float)(n_labels(&mb[0]) + n_labels(&mb[1]));
		double gn;
		int skipped;
		losses[s] = 0;
		if (ft_cuda_zero_grad(dm) < 0)
			return -1;
		for (int k = 0; k < 2; k++) {
			double ls = 0;
			if (ft_cuda_forward_backward(dm, &mb[k], gs, &ls, NULL) < 0)
				return -1;
			losses[s] += ls * gs;
		}
		if (ft_cuda_step(dm, &ao, LR[s], 1.0, &gn, &skipped) < 0)
			return -1;
	}
	return 0;
}

/* Resume on the GPU: 3 steps, weights and AdamW state out to the host
 * (what a checkpoint holds), a new device model from them, 3 more steps:
 * the losses must equal those of 6 uninterrupted steps, bit for bit (the
 * backend has no atomics; cuBLAS is reproducible on one GPU). */
static void resume_case(void)
{
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			    .lora_targets = FT_MOD_Q | FT_MOD_V, .seed = 7 };
	ft_st *bs = ft_st_open(PAR "llama-train-batches.safetensors");
	ft_st *rs = ft_st_open(PAR "llama-train-lora.safetensors");
	const ft_st_tensor *tlr = rs ? ft_st_find(rs, "lrs") : NULL;
	ft_model *a = ft_model_load(LLAMA, &to), *b = ft_model_load(LLAMA, &to);
	ft_cuda_model *da = NULL, *db = NULL;
	double la[6], lb[6];
	float **mo = NULL, **ve = NULL;
	size_t np = b ? ft_model_nparams(b) : 0;
	int rc = !bs || !tlr || !a || !b || ft_model_load_adapter(a, PAR "llama-lora-init") < 0 ||
		 ft_model_load_adapter(b, PAR "llama-lora-init") < 0 ? -1 : 0;
	if (rc == 0) {
		np = ft_model_nparams(b);
		da = dev(a, FT_CUDA_F32, 32, 16);
		db = dev(b, FT_CUDA_F32, 32, 16);
		rc = da && db ? 0 : -1;
	}
	if (rc == 0)
		rc = run_steps(da, bs, tlr->data, 0, 6, la);
	if (rc == 0)
		rc = run_steps(db, bs, tlr->data, 0, 3, lb);
	if (rc == 0) {   /* the checkpoint */
		rc = ft_cuda_copy_weights_to_host(db);
		mo = calloc(np, sizeof *mo);
		ve = calloc(np, sizeof *ve);
		for (size_t i = 0; rc == 0 && i < np; i++) {
			ft_param *p = ft_model_param(b, i);
			if (!p->trainable)
				continue;
			mo[i] = malloc(p->n * 4);
			ve[i] = malloc(p->n * 4);
			rc = ft_cuda_adamw_get(db, i, mo[i], ve[i]);
		}
		ft_cuda_model_free(db);
		db = rc == 0 ? dev(b, FT_CUDA_F32, 32, 16) : NULL;
		rc = db ? rc : -1;
		for (size_t i = 0; rc == 0 && i < np; i++)
			if (mo[i])
				rc = ft_cuda_adamw_set(db, i, mo[i], ve[i], 3);
	}
	if (rc == 0)
		rc = run_steps(db, bs, tlr->data, 3, 6, lb);
	double worst = 0;
	for (int s = 0; rc == 0 && s < 6; s++)
		worst = fmax(worst, fabs(lb[s] - la[s]) / fabs(la[s]));
	ok(rc == 0 && worst == 0 && ft_cuda_steps(db) == 6,
	   "resume on the GPU after 3 of 6 steps: bit-identical losses (max rel %.3g)%s%s",
	   worst, rc ? ": " : "", rc ? ft_errmsg() : "");
	for (size_t i = 0; mo && i < np; i++) {
		free(mo[i]);
		free(ve[i]);
	}
	free(mo);
	free(ve);
	ft_cuda_model_free(da);
	ft_cuda_model_free(db);
	ft_model_free(a);
	ft_model_free(b);
	if (bs) ft_st_close(bs);
	if (rs) ft_st_close(rs);
}

/* Gradient checkpointing on the GPU: the same gradients, bit for bit. */
static void ckpt_case(const char *dir, ft_finetuning_type type, const char *what)
{
	ft_st *st = ft_st_open(PAR "llama-full-grads.safetensors");
	ft_cuda_batch b;
	ft_tune_opts o = { .type = type, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 42 };
	ft_model *m0 = ft_model_load(dir, &o);
	o.gradient_checkpointing = 1;
	ft_model *m1 = ft_model_load(dir, &o);
	ft_cuda_model *d0 = NULL, *d1 = NULL;
	int rc = !st || !m0 || !m1 || batch_of(st, "batch.", &b) < 0 ? -1 : 0;
	if (rc == 0) {
		d0 = dev(m0, FT_CUDA_F32, 32, 16);
		d1 = dev(m1, FT_CUDA_F32, 32, 16);
		rc = d0 && d1 ? 0 : -1;
	}
	double l0 = 0, l1 = 1;
	if (rc == 0)
		rc = ft_cuda_forward_backward(d0, &b, 0.01f, &l0, NULL) ||
		     ft_cuda_forward_backward(d1, &b, 0.01f, &l1, NULL) ||
		     ft_cuda_copy_grads_to_host(d0) || ft_cuda_copy_grads_to_host(d1) ? -1 : 0;
	int same = rc == 0 && l0 == l1, n = 0;
	for (size_t i = 0; same && i < ft_model_nparams(m0); i++) {
		ft_param *p = ft_model_param(m0, i), *q = ft_model_param(m1, i);
		if (!p->trainable)
			continue;
		n++;
		same = !memcmp(p->g, q->g, p->n * sizeof(float));
	}
	ok(same && n > 0, "%s: gradient checkpointing gives bit-identical loss and %d gradients%s%s",
	   what, n, rc ? ": " : "", rc ? ft_errmsg() : "");
	ft_cuda_model_free(d0);
	ft_cuda_model_free(d1);
	ft_model_free(m0);
	ft_model_free(m1);
	if (st) ft_st_close(st);
}

/* ft_train (the real trainer loop: accumulation, clipping, AdamW, cosine
 * schedule, on the CPU) driving the GPU model through cuda_train.h, on
 * the fixture's 10 steps: losses within 1e-4 of PyTorch, final weights
 * within 1e-4 (k_proj.bias 1e-3). */
static void on_step(void *ctx, ft_train_event ev, const ft_trainlog_entry *e, const char *d)
{
	double *l = ctx;
	if (ev == FT_EV_STEP && e->current_steps >= 1 && e->current_steps <= 10)
		l[e->current_steps - 1] = e->loss;
	(void)d;
}

static void trainer_case(const char *kind, const char *mode)
{
	char bp[128], rp[128], md[128], ad[128];
	snprintf(bp, sizeof bp, PAR "%s-train-batches.safetensors", kind);
	snprintf(rp, sizeof rp, PAR "%s-train-%s.safetensors", kind, mode);
	snprintf(md, sizeof md, "tests/fixtures/models/tiny-%s", kind);
	snprintf(ad, sizeof ad, PAR "%s-lora-init", kind);
	int lora = !strcmp(mode, "lora");
	ft_tune_opts to = { .type = lora ? FT_FT_LORA : FT_FT_FULL, .lora_rank = 4,
			    .lora_alpha = 8, .lora_targets = FT_MOD_Q | FT_MOD_V, .seed = 7 };
	ft_st *bs = ft_st_open(bp), *rs = ft_st_open(rp);
	ft_model *m = ft_model_load(md, &to);
	const ft_st_tensor *tls = rs ? ft_st_find(rs, "losses") : NULL;
	ft_train_model tm = { 0 };
	ft_cuda_opts co = { .precision = FT_CUDA_F32, .max_tokens = 32, .max_seq = 16 };
	char out[] = "/tmp/ft-gpu-trainer-XXXXXX";
	int rc = !bs || !m || !tls || (lora && ft_model_load_adapter(m, ad) < 0) || !mkdtemp(out) ||
		 ft_train_model_of_cuda(m, &co, &tm) < 0 ? -1 : 0;
	ft_batch bt[20];
	memset(bt, 0, sizeof bt);
	for (int k = 0; rc == 0 && k < 20; k++) {
		ft_cuda_batch c;
		char pre[32];
		snprintf(pre, sizeof pre, "batch.%d.", k);
		if (batch_of(bs, pre, &c) < 0) {
			rc = -1;
			break;
		}
		bt[k].B = c.B;
		bt[k].T = c.T;
		bt[k].input_ids = (int32_t *)c.input_ids;
		bt[k].labels = (int32_t *)c.labels;
		bt[k].index = k;
	}
	double losses[10] = { 0 };
	ft_train_result r;
	if (rc == 0) {
		ft_train_opts o;
		ft_train_opts_default(&o);
		o.output_dir = out;
		o.n_batches = 20;
		o.gradient_accumulation_steps = 2;
		o.num_train_epochs = 1;
		o.learning_rate = lora ? 2e-3 : 1e-3;
		o.weight_decay = 0.1;
		o.lr_scheduler_type = FT_SCHED_COSINE;
		o.warmup = 2;
		o.logging_steps = 1;
		o.save_steps = 0;
		o.train_batch_size = 2;
		o.on_event = on_step;
		o.ctx = losses;
		ft_batch_source src = ft_batch_source_array(bt, 20);
		rc = ft_train(&o, &tm, &src, NULL, &r);
		src.close(src.self);
	}
	double wl = 0;
	for (int i = 0; rc == 0 && i < 10; i++)
		wl = fmax(wl, fabs(losses[i] - ((const double *)tls->data)[i]) /
			      fabs(((const double *)tls->data)[i]));
	ok(rc == 0 && wl <= 1e-4, "ft_train on the GPU, %s %s: 10 step losses within 1e-4 of "
	   "PyTorch (max rel %.3g)%s%s", kind, mode, wl, rc ? ": " : "", rc ? ft_errmsg() : "");
	double ww = 0;
	int n = 0, missing = 0;
	for (size_t i = 0; rc == 0 && i < ft_st_count(rs); i++) {
		const ft_st_tensor *t = ft_st_at(rs, i);
		if (strncmp(t->name, "final.", 6) || strstr(t->name, "k_proj.bias"))
			continue;
		n++;
		ft_param *p = ft_model_find_param(m, t->name + 6);
		float *ref = p ? tensor_f32(rs, t->name, p->n) : NULL;
		if (!ref) {
			missing++;
			continue;
		}
		ww = fmax(ww, max_rel(p->w, ref, p->n));
		free(ref);
	}
	ok(rc == 0 && n > 0 && !missing && ww <= 1e-4, "ft_train on the GPU, %s %s: %d final "
	   "weights within 1e-4 (worst %.3g)", kind, mode, n, ww);
	ft_cuda_train_free(&tm);
	ft_model_free(m);
	if (bs) ft_st_close(bs);
	if (rs) ft_st_close(rs);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", out);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", out);
}

/* Packed row with segment ids: same total as the examples run alone. */
static void packed_case(const char *dir, const char *fixture, const char *what)
{
	ft_tune_opts o = { .type = FT_FT_FULL };
	ft_model *m = ft_model_load(dir, &o);
	ft_st *st = ft_st_open(fixture);
	ft_cuda_model *dm = NULL;
	const ft_st_tensor *ti = st ? ft_st_find(st, "input_ids") : NULL;
	const ft_st_tensor *tl = st ? ft_st_find(st, "labels") : NULL;
	const ft_st_tensor *ts = st ? ft_st_find(st, "segment_ids") : NULL;
	const ft_st_tensor *tp = st ? ft_st_find(st, "position_ids") : NULL;
	const ft_st_tensor *te = st ? ft_st_find(st, "loss_per_example") : NULL;
	if (!m || !ti || !tl || !ts || !tp || !te) {
		ok(0, "%s packed: setup: %s", what, ft_errmsg());
		goto out;
	}
	int T = (int)ti->numel;
	ft_cuda_batch b = { 1, T, ti->data, tl->data, tp->data, ts->data, NULL };
	double want = 0, got = 0;
	for (size_t i = 0; i < te->numel; i++)
		want += ((const double *)te->data)[i];
	dm = dev(m, FT_CUDA_F32, T, T);
	int rc = dm ? ft_cuda_forward(dm, &b, NULL, &got, NULL) : -1;
	ok(rc == 0 && rel_err(got, want, 1e-6) <= 1e-5,
	   "%s packed (segment ids, GQA): loss %.6f = examples alone %.6f", what, got, want);
out:
	ft_cuda_model_free(dm);
	ft_model_free(m);
	if (st) ft_st_close(st);
}

static void error_cases(void)
{
	ft_tune_opts o = { .type = FT_FT_FULL };
	ft_model *m = ft_model_load(LLAMA, &o);
	ft_cuda_opts co = { .precision = FT_CUDA_F32, .max_tokens = 32, .max_seq = 16,
			    .mem_limit = 1 << 20 };
	ft_cuda_model *dm = m ? ft_cuda_model_new(m, &co) : NULL;
	ok(!dm && strstr(ft_errmsg(), "GiB available") && strstr(ft_errmsg(), "needs"),
	   "memory plan refuses before allocating: %s", ft_errmsg());
	ft_cuda_model_free(dm);
	co.mem_limit = 0;
	dm = m ? ft_cuda_model_new(m, &co) : NULL;
	int32_t ids[64] = { 0 }, lab[64];
	for (int i = 0; i < 64; i++)
		lab[i] = 1;
	ft_cuda_batch big = { 4, 16, ids, lab, NULL, NULL, NULL };
	ok(dm && ft_cuda_forward(dm, &big, NULL, NULL, NULL) < 0 &&
	   strstr(ft_errmsg(), "larger than"), "batch over the plan refused: %s", ft_errmsg());
	ids[3] = 1 << 20;
	ft_cuda_batch bad = { 2, 16, ids, lab, NULL, NULL, NULL };
	ok(dm && ft_cuda_forward(dm, &bad, NULL, NULL, NULL) < 0 &&
	   strstr(ft_errmsg(), "outside the vocabulary"), "bad token id refused: %s",
	   ft_errmsg());
	ok(dm && ft_cuda_peak_bytes(dm) >= ft_cuda_model_plan(dm)->total,
	   "peak memory reported (%zu bytes)", dm ? ft_cuda_peak_bytes(dm) : 0);
	ft_cuda_model_free(dm);
	ft_model_free(m);
}

/* A mid-size random model against the CPU model, so every kernel's loops
 * run many iterations: D 512, T 520 (no multiple of a 64 or 128 tile),
 * V 8192, 8 query heads over 2 kv heads (4 per group), a sliding window
 * shorter than T on the Mistral variant, some unlabelled positions;
 * packed: segment ids (runs of 97 tokens, 13 padding at the end) with
 * positions restarting per segment, as ft-pack's neat packing.
 * Gradients of every parameter (full fine-tuning) per tensor: fp32 1e-4,
 * bf16/fp16 1e-1, as the fixture cases. */
static void midsize_case(ft_arch arch, ft_cuda_precision prec, int packed)
{
	ft_config c = gpu_midsize_config(arch);
	ft_tune_opts to = { .type = FT_FT_FULL, .seed = 3 };
	const char *what = arch == FT_ARCH_MISTRAL ? "mid-size mistral (window 200)"
			   : packed ? "mid-size llama packed" : "mid-size llama";
	enum { B = 1, T = 520 };
	static int32_t ids[B * T], lab[B * T], pos[B * T], seg[B * T];
	unsigned x = 99;
	for (int i = 0; i < B * T; i++) {
		x = x * 1103515245u + 12345u;
		ids[i] = (int32_t)((x >> 8) % 8192);
		lab[i] = i % 7 == 3 ? -100 : ids[i];
		seg[i] = i % T >= T - 13 ? 0 : 1 + i % T / 97;
		pos[i] = seg[i] ? i % T % 97 : 0;
		if (packed && !seg[i])
			lab[i] = -100;
	}
	ft_model *m = ft_model_from_config(&c, &to);
	if (!ok(m != NULL, "%s %s: model: %s", what, pname(prec), m ? "" : ft_errmsg()))
		return;
	ft_batch bt = { .B = B, .T = T, .input_ids = ids, .labels = lab,
			.position_ids = packed ? pos : NULL, .segment_ids = packed ? seg : NULL };
	double lc = 0, lg = 0;
	int64_t nc = 0, ng = 0;
	ft_model_zero_grad(m);
	int rc = ft_model_forward_backward(m, &bt, 1.0f, &lc, &nc);
	size_t np = ft_model_nparams(m);
	float **ref = calloc(np, sizeof *ref);
	for (size_t i = 0; rc == 0 && i < np; i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->g) continue;
		ref[i] = malloc(p->n * sizeof(float));
		memcpy(ref[i], p->g, p->n * sizeof(float));
	}
	ft_cuda_model *dm = rc == 0 ? dev(m, prec, B * T, T) : NULL;
	ft_cuda_batch cbt = { B, T, ids, lab, bt.position_ids, bt.segment_ids, bt.lengths };
	rc = !dm || ft_cuda_zero_grad(dm) || ft_cuda_forward_backward(dm, &cbt, 1.0f, &lg, &ng) ||
	     ft_cuda_copy_grads_to_host(dm);
	double tg = prec == FT_CUDA_F32 ? 1e-4 : 1e-1, tl = prec == FT_CUDA_F32 ? 1e-5 : 1e-2;
	ok(rc == 0 && ng == nc && rel_err(lg, lc, 1e-6) <= tl, "%s %s: loss %.6f vs CPU %.6f (%lld tokens)%s%s",
	   what, pname(prec), lg, lc, (long long)ng, rc ? ": " : "", rc ? ft_errmsg() : "");
	double worst = 0;
	const char *wn = "";
	for (size_t i = 0; rc == 0 && i < np; i++) {
		ft_param *p = ft_model_param(m, i);
		if (!ref[i]) continue;
		double e = max_rel(p->g, ref[i], p->n);
		if (e > worst || e != e) { worst = e != e ? INFINITY : e; wn = p->name; }
	}
	ok(rc == 0 && worst <= tg, "%s %s: every gradient within %g of the CPU's (worst %.3g, %s)",
	   what, pname(prec), tg, worst, wn);
	for (size_t i = 0; i < np; i++) free(ref[i]);
	free(ref);
	ft_cuda_model_free(dm);
	ft_model_free(m);
}

/* The device attention alone against the CPU's ft_attention_* on
 * mid-size shapes: rows of up to 1100 keys, T off the 32-row tile,
 * several q heads per kv head, head sizes 64..256 (80: not a multiple of
 * 8 lanes x 16), sliding windows, packed segment ids with padding
 * (packed 1), right padding by row lengths (packed 2).
 * Tolerance: 2e-5 of each tensor's largest element.  Both are fp32 with
 * the same exp; they differ in summation order only (online softmax over
 * 32-key tiles, fmaf and 8-lane butterfly sums against BLAS sums), a few
 * ulps per term: tests/unit/test_flash.c and tests/emu measure ~1e-6 on
 * rows of up to 200 keys; 2e-5 leaves room for 1100-key rows while a
 * mask or indexing error is O(1).  A second run must be bit-identical
 * (no atomics anywhere in the kernels). */
static void attention_case(int B, int T, int Hq, int Hk, int hd, int window, int packed)
{
	gpu_attn a;
	gpu_attn_new(&a, B, T, Hq, Hk, hd, packed, (unsigned)(T * 31 + hd), NULL, FT_CUDA_F32);
	ft_attn_shape cs = { B, T, Hq, Hk, hd, window, a.seg, 0, 0, a.len };
	ft_cuda_attn_shape gs = { B, T, Hq, Hk, hd, window, a.seg, a.len, 0, 0 };
	ft_attention_forward(a.cpu[0], a.cpu[1], a.in[0], a.in[1], a.in[2], &cs);
	ft_attention_backward(a.cpu[2], a.cpu[3], a.cpu[4], a.in[3], a.in[0], a.in[1], a.in[2],
			      a.cpu[0], a.cpu[1], &cs);
	int rc = ft_cuda_attention_run(0, &gs, a.in[0], a.in[1], a.in[2], a.in[3], a.gpu[0],
				       a.gpu[1], a.gpu[2], a.gpu[3], a.gpu[4]);
	int rc2 = rc ? rc : ft_cuda_attention_run(0, &gs, a.in[0], a.in[1], a.in[2], a.in[3],
						  a.again[0], a.again[1], a.again[2], a.again[3],
						  a.again[4]);
	double e[5] = { 0 }, worst = 0;
	for (int i = 0; i < 5; i++) {
		e[i] = rc ? INFINITY : max_rel(a.gpu[i], a.cpu[i], a.nres[i]);
		worst = e[i] > worst || e[i] != e[i] ? (e[i] != e[i] ? INFINITY : e[i]) : worst;
	}
	ok(rc == 0 && worst <= 2e-5, "device attention B=%d T=%d Hq=%d Hk=%d hd=%d window=%d "
	   "packed=%d: out %.2g lse %.2g dq %.2g dk %.2g dv %.2g%s%s", B, T, Hq, Hk, hd, window,
	   packed, e[0], e[1], e[2], e[3], e[4], rc ? ": " : "", rc ? ft_errmsg() : "");
	ok(rc2 == 0 && gpu_attn_same(&a), "device attention T=%d hd=%d: a second run is bit-identical", T, hd);
	gpu_attn_free(&a);
}

int main(void)
{
	if (!gpu_test_start())
		return 0;
	ft_cuda_precision ps[] = { FT_CUDA_F32, FT_CUDA_BF16, FT_CUDA_F16 };
	for (int i = 0; i < 3; i++) {
		grads_case(LLAMA, NULL, FT_FT_FULL, PAR "llama-full-grads.safetensors",
			   "llama full", ps[i]);
		grads_case(QWEN2, NULL, FT_FT_FULL, PAR "qwen2-full-grads.safetensors",
			   "qwen2 full", ps[i]);
		grads_case(LLAMA, PAR "llama-lora-grad", FT_FT_LORA,
			   PAR "llama-lora-grads.safetensors", "llama lora", ps[i]);
		grads_case(QWEN2, PAR "qwen2-lora-grad", FT_FT_LORA,
			   PAR "qwen2-lora-grads.safetensors", "qwen2 lora", ps[i]);
	}
	packed_case(LLAMA, PAR "llama-packed.safetensors", "llama");
	packed_case(QWEN2, PAR "qwen2-packed.safetensors", "qwen2");
	train_case("llama", "lora", FT_CUDA_F32, 0);
	train_case("llama", "full", FT_CUDA_F32, 0);
	train_case("qwen2", "full", FT_CUDA_F32, 1);
	train_case("qwen2", "lora", FT_CUDA_F32, 0);
	train_case("llama", "lora", FT_CUDA_BF16, 0);
	train_case("llama", "full", FT_CUDA_BF16, 0);
	train_case("llama", "full", FT_CUDA_F16, 0);
	resume_case();
	trainer_case("llama", "lora");
	trainer_case("qwen2", "full");
	ckpt_case(LLAMA, FT_FT_FULL, "llama full");
	ckpt_case(QWEN2, FT_FT_LORA, "qwen2 lora");
	error_cases();
	for (int i = 0; i < 3; i++)
		midsize_case(FT_ARCH_LLAMA, ps[i], 0);
	midsize_case(FT_ARCH_MISTRAL, FT_CUDA_F32, 0);
	midsize_case(FT_ARCH_LLAMA, FT_CUDA_F32, 1);
	attention_case(2, 520, 8, 2, 64, 0, 0);
	attention_case(1, 1100, 16, 4, 128, 0, 1);
	attention_case(1, 777, 8, 8, 128, 256, 0);
	attention_case(1, 600, 12, 4, 80, 100, 1);
	attention_case(1, 300, 4, 1, 256, 0, 0);
	attention_case(3, 520, 8, 2, 64, 0, 2);      /* right padding: 520, 309, 98 tokens */
	attention_case(2, 600, 4, 2, 64, 100, 2);    /* blind queries past the window */
	return tap_done();
}
