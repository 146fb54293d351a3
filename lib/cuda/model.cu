/* model.cu - the device model's setup: its tensors, the memory plan (one
 * arena whose sizes follow ftp_model_prepare in lib/model/model_fwd.c),
 * upload, and creation and release.  The passes are in layer.cu and
 * model_fwd.cu.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"

extern "C" {
#include "model/layers.h"
}

#define HEAD_BUDGET ((size_t)1 << 26)   /* fp32 logits at once (256 MiB) */
#define BLAS_WS ((size_t)32 << 20)      /* cuBLAS workspace */
#define CTX_MARGIN ((size_t)768 << 20)  /* CUDA context + cuBLAS handles */

void *ft_arena_take(ft_arena *a, size_t bytes, int cat)
{
	size_t b = (bytes + 255) & ~(size_t)255;
	void *p = (void *)(a->base ? a->base + a->off : 0);
	a->off += b;
	a->cat[cat] += b;
	return p;
}

#define TAKE(a, n, T, cat) ((T *)ft_arena_take(a, (size_t)(n) * sizeof(T), cat))

/* ---- tensors ---- */

static ft_dt *tensor(ft_cuda_model *dm, float *w, float *g, size_t n, int matrix)
{
	if (!w)
		return NULL;
	for (int i = 0; i < dm->ntens; i++)
		if (dm->tens[i].hw == w)
			return &dm->tens[i];
	ft_dt *t = &dm->tens[dm->ntens++];
	memset(t, 0, sizeof *t);
	t->hw = w;
	t->hg = g;
	t->n = n;
	t->matrix = matrix;
	t->pidx = -1;
	for (size_t i = 0; i < dm->v.nparams; i++)
		if (dm->v.params[i].w == w)
			t->pidx = (int)i;
	return t;
}

/* The tensors of the view, shared ones (tied lm_head) once. */
static void build_tensors(ft_cuda_model *dm)
{
	ft_cuda_view *v = &dm->v;
	int cap = 3 + v->L * (2 + FT_CV_NLIN * 3 + 3 + 2);
	dm->tens = (ft_dt *)ft_xcalloc(cap, sizeof *dm->tens);
	dm->layers = (ft_dlayer *)ft_xcalloc(v->L ? v->L : 1, sizeof *dm->layers);
	size_t VD = (size_t)v->V * v->D;
	dm->wte = tensor(dm, v->wte.w, v->wte.g, VD, 1);
	dm->lm_head = tensor(dm, v->lm_head.w, v->lm_head.g, VD, 1);
	dm->norm = tensor(dm, v->norm.w, v->norm.g, v->D, 0);
	for (int l = 0; l < v->L; l++) {
		ft_cv_layer *y = &v->layers[l];
		ft_dlayer *d = &dm->layers[l];
		d->ln1 = tensor(dm, y->ln1.w, y->ln1.g, v->D, 0);
		d->ln2 = tensor(dm, y->ln2.w, y->ln2.g, v->D, 0);
		d->qn = tensor(dm, y->qn.w, y->qn.g, v->hd, 0);
		d->kn = tensor(dm, y->kn.w, y->kn.g, v->hd, 0);
		for (int j = 0; j < FT_CV_NLIN; j++) {
			size_t in = v->lin_in[j], out = v->lin_out[j];
			d->lin[j] = tensor(dm, y->lin[j].w, y->lin[j].g, in * out, 1);
			if (j < 3)
				d->bias[j] = tensor(dm, y->bias[j].w, y->bias[j].g, out, 0);
			ft_cv_lora *lo = &y->lora[j];
			d->lora[j].on = lo->on;
			if (!lo->on)
				continue;
			d->lora[j].r = lo->r;
			d->lora[j].scale = lo->scale;
			d->lora[j].A = tensor(dm, lo->A.w, lo->A.g, (size_t)lo->r * in, 0);
			d->lora[j].B = tensor(dm, lo->B.w, lo->B.g, out * lo->r, 0);
		}
	}
}

static int max_in(const ft_cuda_view *v)
{
	int mx = v->D, a = v->Hq * v->hd;
	if (a > mx) mx = a;
	if (v->F > mx) mx = v->F;
	return mx;
}

static int lora_rank(const ft_cuda_model *dm)
{
	int r = 0;
	for (int l = 0; l < dm->v.L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++)
			if (dm->layers[l].lora[j].on && dm->layers[l].lora[j].r > r)
				r = dm->layers[l].lora[j].r;
	return r;
}

static void layout_acts(ft_cuda_model *dm, ft_arena *a, ft_dacts *x, size_t N, size_t r)
{
	const ft_cuda_view *v = &dm->v;
	size_t D = v->D, qd = (size_t)v->Hq * v->hd, kd = (size_t)v->Hk * v->hd, F = v->F;
	x->ln1 = TAKE(a, N * D, float, A_ACTS);
	x->rstd1 = TAKE(a, N, float, A_ACTS);
	x->q = TAKE(a, N * qd, float, A_ACTS);
	x->k = TAKE(a, N * kd, float, A_ACTS);
	x->v = TAKE(a, N * kd, float, A_ACTS);
	x->lse = TAKE(a, N * v->Hq, float, A_ACTS);
	x->att = TAKE(a, N * qd, float, A_ACTS);
	x->xmid = TAKE(a, N * D, float, A_ACTS);
	x->ln2 = TAKE(a, N * D, float, A_ACTS);
	x->rstd2 = TAKE(a, N, float, A_ACTS);
	x->gate = TAKE(a, N * F, float, A_ACTS);
	x->up = TAKE(a, N * F, float, A_ACTS);
	for (int j = 0; j < FT_CV_NLIN; j++)
		x->lh[j] = r ? TAKE(a, N * r, float, A_ACTS) : NULL;
	if (v->qk_norm) {
		x->qr = TAKE(a, N * qd, float, A_ACTS);
		x->kr = TAKE(a, N * kd, float, A_ACTS);
		x->rstdq = TAKE(a, N * v->Hq, float, A_ACTS);
		x->rstdk = TAKE(a, N * v->Hk, float, A_ACTS);
	}
}

/* Every device buffer, in one pass that either counts (base 0) or
 * assigns.  The sizes follow ftp_model_prepare (lib/model/model_fwd.c). */
static void layout(ft_cuda_model *dm, ft_arena *a)
{
	const ft_cuda_view *v = &dm->v;
	for (int i = 0; i < dm->ntens; i++) {
		ft_dt *t = &dm->tens[i];
		int half = dm->half && t->matrix, train = t->hg && !dm->o.inference;
		if (half)
			t->h = TAKE(a, t->n, uint16_t, A_WEIGHTS);
		t->w = !half ? TAKE(a, t->n, float, A_WEIGHTS)
			     : train ? TAKE(a, t->n, float, A_MASTER) : NULL;
		if (train) {
			t->g = TAKE(a, t->n, float, A_GRADS);
			t->m = TAKE(a, t->n, float, A_OPTIM);
			t->v = TAKE(a, t->n, float, A_OPTIM);
		}
	}
	size_t N = dm->o.max_tokens, D = v->D, F = v->F, L = v->L;
	size_t qd = (size_t)v->Hq * v->hd, kd = (size_t)v->Hk * v->hd, mi = max_in(v);
	size_t r = lora_rank(dm), V = v->V;
	dm->n_acts = v->gradient_checkpointing || dm->o.inference ? 1 : (int)L;
	for (int i = 0; i < dm->n_acts; i++)
		layout_acts(dm, a, &dm->acts[i], N, r);
	/* inference keeps only a layer's input and output (lib/cuda/infer.cu) */
	dm->xs = TAKE(a, (dm->o.inference ? 2 : L + 1) * N * D, float, A_ACTS);
	dm->lnf = TAKE(a, N * D, float, A_ACTS);
	dm->rstdf = TAKE(a, N, float, A_ACTS);
	dm->cos_t = TAKE(a, N * v->hd / 2, float, A_SCRATCH);
	dm->sin_t = TAKE(a, N * v->hd / 2, float, A_SCRATCH);
	int32_t **ip[] = { &dm->ids, &dm->pos, &dm->targets, &dm->rows, &dm->seg };
	for (size_t i = 0; i < sizeof ip / sizeof *ip; i++)
		*ip[i] = TAKE(a, N, int32_t, A_SCRATCH);
	/* backward and dropout buffers: empty (never used) for inference */
	size_t Nb = dm->o.inference ? 0 : N;
	float **nd[] = { &dm->d_a, &dm->d_b, &dm->d_ln, &dm->head_x, &dm->head_dx };
	for (size_t i = 0; i < sizeof nd / sizeof *nd; i++)
		*nd[i] = TAKE(a, (nd[i] == &dm->head_x ? N : Nb) * D, float, A_SCRATCH);
	dm->d_att = TAKE(a, Nb * qd, float, A_SCRATCH);
	dm->dq = TAKE(a, Nb * qd, float, A_SCRATCH);
	dm->dk = TAKE(a, Nb * kd, float, A_SCRATCH);
	dm->dv = TAKE(a, Nb * kd, float, A_SCRATCH);
	float **nf[] = { &dm->hbuf, &dm->dh, &dm->dgate, &dm->dup };
	for (size_t i = 0; i < sizeof nf / sizeof *nf; i++)
		*nf[i] = TAKE(a, (i ? Nb : N) * F, float, A_SCRATCH);
	dm->tmp = TAKE(a, N * (mi > D ? mi : D), float, A_SCRATCH);
	dm->drop = TAKE(a, Nb * mi, float, A_SCRATCH);
	dm->ddrop = TAKE(a, Nb * mi, float, A_SCRATCH);
	dm->lhs = TAKE(a, Nb * (r ? r : 1), float, A_SCRATCH);
	size_t chunk = HEAD_BUDGET / V;
	if (chunk < 1) chunk = 1;
	if (chunk > N) chunk = N;
	dm->head_chunk = (int)chunk;
	dm->head_scratch = TAKE(a, chunk * V, float, A_SCRATCH);
	dm->row_loss = TAKE(a, N, double, A_SCRATCH);
	if (dm->half) {
		dm->hx = TAKE(a, N * mi, uint16_t, A_SCRATCH);
		dm->hy = TAKE(a, N * mi, uint16_t, A_SCRATCH);
		dm->hhead = TAKE(a, chunk * V, uint16_t, A_SCRATCH);
	}
	/* flash attention (attention.cu) keeps its tiles in shared memory:
	 * only rowsum(O * dO), no [T, T] scratch */
	dm->att_di = TAKE(a, N * v->Hq, float, A_SCRATCH);
	dm->sumsq = TAKE(a, (size_t)dm->ntens * FT_SUMSQ_BLOCKS, double, A_SCRATCH);
	dm->flag = TAKE(a, 1, int, A_SCRATCH);
	dm->colpart = TAKE(a, (size_t)FT_COLSUM_CHUNKS * mi, float, A_SCRATCH);
	dm->blas_ws_size = BLAS_WS;
	dm->blas_ws = ft_arena_take(a, BLAS_WS, A_SCRATCH);
}

static void plan_of(const ft_arena *a, ft_cuda_plan *p)
{
	p->weights = a->cat[A_WEIGHTS];
	p->master = a->cat[A_MASTER];
	p->grads = a->cat[A_GRADS];
	p->optim = a->cat[A_OPTIM];
	p->acts = a->cat[A_ACTS];
	p->scratch = a->cat[A_SCRATCH];
	p->total = a->off;
}

static int check_opts(const ft_cuda_opts *o)
{
	if (o->max_tokens <= 0 || o->max_seq <= 0 || o->max_seq > o->max_tokens)
		return ft_fail("CUDA model: max_tokens %d and max_seq %d must be positive, "
			       "max_seq <= max_tokens", o->max_tokens, o->max_seq);
	if (o->precision < FT_CUDA_F32 || o->precision > FT_CUDA_F16)
		return ft_fail("CUDA model: unknown precision %d", (int)o->precision);
	return 0;
}

/* A device model with its host-side description but no device memory. */
static ft_cuda_model *skeleton(const ft_cuda_view *v, const ft_cuda_opts *o)
{
	if (check_opts(o) < 0)
		return NULL;
	if (v->hd > FT_CU_ATTN_MAX_HD) {
		ft_fail("CUDA model: head_dim %d; the attention kernels take at most %d",
			v->hd, FT_CU_ATTN_MAX_HD);
		return NULL;
	}
	ft_cuda_model *dm = (ft_cuda_model *)ft_xcalloc(1, sizeof *dm);
	dm->v = *v;
	dm->o = *o;
	dm->half = o->precision != FT_CUDA_F32;
	dm->loss_scale = o->precision == FT_CUDA_F16 ? (o->loss_scale > 0 ? o->loss_scale : 65536)
						     : 1;
	build_tensors(dm);
	dm->acts = (ft_dacts *)ft_xcalloc(v->L ? v->L : 1, sizeof *dm->acts);
	ft_arena a = { 0, 0, { 0 } };
	layout(dm, &a);
	plan_of(&a, &dm->plan);
	return dm;
}

static void free_host(ft_cuda_model *dm)
{
	free(dm->tens); free(dm->layers); free(dm->acts);
	if (dm->staging)
		cudaFreeHost(dm->staging);
}

int ft_cuda_plan_memory(const ft_cuda_view *v, const ft_cuda_opts *o, ft_cuda_plan *p)
{
	ft_cuda_view copy = *v;
	ft_cuda_model *dm = skeleton(&copy, o);
	if (!dm)
		return -1;
	*p = dm->plan;
	free_host(dm);
	free(dm);
	return 0;
}

#define GIB(x) ((double)(x) / (1 << 30))

void ft_cuda_plan_format(const ft_cuda_plan *p, char *buf, size_t n)
{
	snprintf(buf, n, "%.2f GiB (weights %.2f, fp32 masters %.2f, grads %.2f, "
		 "AdamW %.2f, activations %.2f, scratch %.2f)", GIB(p->total),
		 GIB(p->weights), GIB(p->master), GIB(p->grads), GIB(p->optim),
		 GIB(p->acts), GIB(p->scratch));
}

/* The message when the plan does not fit, with the most useful advice. */
static int too_big(ft_cuda_model *dm, size_t avail)
{
	char what[256];
	ft_cuda_plan_format(&dm->plan, what, sizeof what);
	const ft_cuda_plan *p = &dm->plan;
	const char *tip;
	if (p->acts > p->total / 3 && !dm->v.gradient_checkpointing)
		tip = "turn on --gradient_checkpointing, or lower "
		      "--per_device_train_batch_size / --cutoff_len";
	else if (p->acts > p->total / 3)
		tip = "lower --per_device_train_batch_size or --cutoff_len (raise "
		      "--gradient_accumulation_steps to keep the effective batch)";
	else if (p->optim + p->grads + p->master > p->total / 2)
		tip = "use --finetuning_type lora (fp32 gradients and AdamW state for "
		      "every weight do not fit)";
	else if (!dm->half)
		tip = "use --bf16 (half-precision frozen weights)";
	else
		tip = "use a GPU with more memory or a smaller model";
	return ft_fail("the GPU has %.2f GiB available but training needs %s for %d "
		       "tokens per micro-batch: %s", GIB(avail), what, dm->o.max_tokens, tip);
}

/* Host weights of t -> device: the fp32 copy as is, the half copy cast
 * on the host with the same rounding as lib/util/dtype.c. */
int ft_cu_upload(ft_cuda_model *dm, ft_dt *t)
{
	if (t->w)
		TRY(ft_cu_copy(dm, t->w, t->hw, t->n * sizeof(float), cudaMemcpyHostToDevice,
			       "fp32 weights"));
	if (!t->h)
		return 0;
	size_t chunk = (size_t)1 << 24;
	uint16_t *buf = (uint16_t *)ft_xmalloc((t->n < chunk ? t->n : chunk) * 2);
	int bf = dm->o.precision == FT_CUDA_BF16;
	for (size_t i0 = 0; i0 < t->n; i0 += chunk) {
		size_t nn = t->n - i0 < chunk ? t->n - i0 : chunk;
		for (size_t i = 0; i < nn; i++)
			buf[i] = bf ? ft_k_f32_to_bf16(t->hw[i0 + i]) : ft_k_f32_to_f16(t->hw[i0 + i]);
		if (ft_cu_copy(dm, t->h + i0, buf, nn * 2, cudaMemcpyHostToDevice,
			       "half weights") < 0) {
			free(buf);
			return -1;
		}
	}
	free(buf);
	return 0;
}

/* The allocator's high-water mark: the plan is the one device allocation
 * ft makes (cuBLAS's workspace is inside it), so the peak is its size
 * once made; the CUDA context and other processes are not counted. */
void ft_cu_sample_peak(ft_cuda_model *dm)
{
	size_t used = dm->mem ? dm->plan.total : 0;
	if (used > dm->peak)
		dm->peak = used;
}

/* Host staging of the per-batch arrays in pinned memory, so the uploads
 * are true DMA (pageable copies go through a driver bounce buffer).  One
 * block, carved in order. */
static int alloc_staging(ft_cuda_model *dm)
{
	size_t N = dm->o.max_tokens, half = dm->v.hd / 2;
	size_t nsum = (size_t)dm->ntens * FT_SUMSQ_BLOCKS + 1;
	size_t bytes = 6 * N * sizeof(int32_t) + 2 * N * half * sizeof(float) +
		       (half + 1) * sizeof(float) + (N + nsum) * sizeof(double) + 64;
	CU(cudaMallocHost(&dm->staging, bytes), "%zu bytes of pinned host staging", bytes);
	char *p = (char *)dm->staging;
	/* doubles first: every later piece stays 4-byte aligned */
	dm->h_row_loss = (double *)p; p += N * sizeof(double);
	dm->h_sumsq = (double *)p; p += nsum * sizeof(double);
	int32_t **ints[] = { &dm->h_pos, &dm->h_targets, &dm->h_rows, &dm->h_tg2, &dm->h_ids,
			     &dm->h_seg };
	for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
		*ints[k] = (int32_t *)p;
		p += N * sizeof(int32_t);
	}
	dm->h_cos = (float *)p; p += N * half * sizeof(float);
	dm->h_sin = (float *)p; p += N * half * sizeof(float);
	dm->h_inv = (float *)p;
	return 0;
}

static int device_init(ft_cuda_model *dm)
{
	CU(cudaSetDevice(dm->o.device), "device %d", dm->o.device);
	size_t fr = 0, tot = 0;
	CU(cudaMemGetInfo(&fr, &tot), "device %d", dm->o.device);
	dm->dev_total = tot;
	size_t avail = dm->o.mem_limit ? dm->o.mem_limit : fr;
	if (avail < CTX_MARGIN || dm->plan.total > avail - CTX_MARGIN)
		return too_big(dm, avail > CTX_MARGIN ? avail - CTX_MARGIN : 0);
	CU(cudaMalloc(&dm->mem, dm->plan.total), "%zu bytes (the planned total)", dm->plan.total);
	ft_arena a = { (uintptr_t)dm->mem, 0, { 0 } };
	layout(dm, &a);
	CU(cudaStreamCreateWithFlags(&dm->stream, cudaStreamNonBlocking), "%s", "");
	CB(cublasCreate(&dm->blas), "%s", "");
	CB(cublasSetStream(dm->blas, dm->stream), "%s", "");
	CB(cublasSetWorkspace(dm->blas, dm->blas_ws, dm->blas_ws_size), "%zu bytes",
	   dm->blas_ws_size);
	/* fp32 mode: no TF32 (parity); the half modes choose per call */
	CB(cublasSetMathMode(dm->blas, CUBLAS_DEFAULT_MATH), "%s", "");
	/* zero everything: gradients and AdamW moments start at 0 */
	TRY(ft_cu_zero(dm, dm->mem, dm->plan.total));
	for (int i = 0; i < dm->ntens; i++)
		TRY(ft_cu_upload(dm, &dm->tens[i]));
	ft_cu_sample_peak(dm);
	return 0;
}

ft_cuda_model *ft_cuda_model_new(struct ft_model *m, const ft_cuda_opts *o)
{
	ft_cuda_view v;
	if (ft_cuda_view_of(m, &v) < 0)
		return NULL;
	ft_cuda_model *dm = skeleton(&v, o);
	if (!dm) {
		ft_cuda_view_free(&v);
		return NULL;
	}
	dm->host = m;
	if (device_init(dm) < 0 || alloc_staging(dm) < 0) {
		ft_cuda_model_free(dm);
		return NULL;
	}
	return dm;
}

void ft_cuda_model_free(ft_cuda_model *dm)
{
	if (!dm)
		return;
	if (dm->blas)
		cublasDestroy(dm->blas);
	if (dm->stream)
		cudaStreamDestroy(dm->stream);
	if (dm->mem)
		cudaFree(dm->mem);
	ft_cuda_view_free(&dm->v);
	free_host(dm);
	free(dm);
}

const ft_cuda_plan *ft_cuda_model_plan(const ft_cuda_model *dm) { return &dm->plan; }
