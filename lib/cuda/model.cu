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
#include "model/quant_kernels.h"   /* FT_Q4_BLOCK, FT_Q4_BLOCK2 */

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
	/* a tensor is a parameter or (Phi-3's fused modules) a row block of one */
	for (size_t i = 0; i < dm->v.nparams; i++) {
		const ft_cv_param *p = &dm->v.params[i];
		if (w >= p->w && w + n <= p->w + p->n) {
			t->pidx = (int)i;
			t->poff = (size_t)(w - p->w);
		}
	}
	return t;
}

/* Tensors from `first` on form a unit: layout carves their buffers back
 * to back, category by category. */
static void end_unit(ft_cuda_model *dm, int first)
{
	if (dm->ntens - first > 1)
		dm->tens[first].unit = dm->ntens - first;
}

/* a_matrix: A in half (with an fp32 master when trainable) in the half
 * modes, every module's: its product reads its base product's half
 * operand (a fused group's stacked rows, o_proj's cast input, down_proj's
 * half hidden).  B stays fp32 (its input is the fp32 hidden h). */
static void lora_tensors(ft_cuda_model *dm, int l, int j, int a_matrix, int want_a, int want_b)
{
	const ft_cv_lora *lo = &dm->v.layers[l].lora[j];
	ft_dlora *d = &dm->layers[l].lora[j];
	size_t in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	d->on = lo->on;
	if (!lo->on)
		return;
	d->r = lo->r;
	d->scale = lo->scale;
	if (want_a)
		d->A = tensor(dm, lo->A.w, lo->A.g, (size_t)lo->r * in, a_matrix);
	if (want_b)
		d->B = tensor(dm, lo->B.w, lo->B.g, out * lo->r, 0);
	const ft_cv_wg *mag = dm->v.dora_mag ? &dm->v.dora_mag[l * FT_CV_NLIN + j] : NULL;
	if (want_b && mag)   /* DoRA's magnitude: a vector beside B (dora.cu) */
		d->mag = tensor(dm, mag->w, mag->g, out, 0);
}

static ft_dt *lin_tensor(ft_cuda_model *dm, int l, int j)
{
	const ft_cv_wg *w = &dm->v.layers[l].lin[j];
	return tensor(dm, w->w, w->g, (size_t)dm->v.lin_in[j] * dm->v.lin_out[j], 1);
}

/* A fused group's tensors: one unit of the modules' weights and then
 * their LoRA A matrices (in half with the weights in the half modes:
 * they are rows of the same GEMM operand), one of the biases, then the
 * LoRA B matrices. */
static void group_tensors(ft_cuda_model *dm, int l, int gi)
{
	ft_dlayer *d = &dm->layers[l];
	const ft_cv_layer *y = &dm->v.layers[l];
	ft_cv_group *c = &d->grp[gi].c;
	ft_cuda_view_group(&dm->v, l, gi, c);
	int first = dm->ntens;
	for (int i = 0; i < c->n; i++)
		d->lin[c->js[i]] = lin_tensor(dm, l, c->js[i]);
	for (int i = 0; i < c->n; i++)
		lora_tensors(dm, l, c->js[i], 1, 1, 0);
	end_unit(dm, first);
	first = dm->ntens;
	for (int i = 0; i < c->n; i++) {
		int j = c->js[i];
		if (j < 3)
			d->bias[j] = tensor(dm, y->bias[j].w, y->bias[j].g, dm->v.lin_out[j], 0);
	}
	end_unit(dm, first);
	for (int i = 0; i < c->n; i++)
		lora_tensors(dm, l, c->js[i], 0, 0, 1);
}

/* The tensors of the view, shared ones (tied lm_head) once. */
static void build_tensors(ft_cuda_model *dm)
{
	ft_cuda_view *v = &dm->v;
	int cap = 3 + v->L * (4 + FT_CV_NLIN * 5 + 3 + 2);
	dm->tens = (ft_dt *)ft_xcalloc(cap, sizeof *dm->tens);
	dm->layers = (ft_dlayer *)ft_xcalloc(v->L ? v->L : 1, sizeof *dm->layers);
	size_t VD = (size_t)v->V * v->D;
	dm->wte = tensor(dm, v->wte.w, v->wte.g, VD, 1);
	dm->lm_head = tensor(dm, v->lm_head.w, v->lm_head.g, VD, 1);
	dm->norm = tensor(dm, v->norm.w, v->norm.g, v->D, 0);
	/* gradient groups (ft_cuda_set_grads_ready): a tied lm_head is wte */
	dm->wte->group = -1;
	if (dm->lm_head && dm->lm_head != dm->wte)
		dm->lm_head->group = v->L;
	if (dm->norm)
		dm->norm->group = v->L;
	for (int l = 0; l < v->L; l++) {
		ft_cv_layer *y = &v->layers[l];
		ft_dlayer *d = &dm->layers[l];
		int first = dm->ntens;
		d->ln1 = tensor(dm, y->ln1.w, y->ln1.g, v->D, 0);
		d->ln2 = tensor(dm, y->ln2.w, y->ln2.g, v->D, 0);
		d->qn = tensor(dm, y->qn.w, y->qn.g, v->hd, 0);
		d->kn = tensor(dm, y->kn.w, y->kn.g, v->hd, 0);
		d->ln3 = tensor(dm, y->ln3.w, y->ln3.g, v->D, 0);
		d->ln4 = tensor(dm, y->ln4.w, y->ln4.g, v->D, 0);
		group_tensors(dm, l, 0);
		d->lin[3] = lin_tensor(dm, l, 3);
		lora_tensors(dm, l, 3, 1, 1, 1);
		group_tensors(dm, l, 1);
		d->lin[6] = lin_tensor(dm, l, 6);
		lora_tensors(dm, l, 6, 1, 1, 1);
		for (int j = 0; v->oft && j < FT_CV_NLIN; j++) {   /* oft.cu */
			const ft_cv_oft *o = &v->oft[l * FT_CV_NLIN + j];
			ft_doft *x = &d->oft[j];
			if (!o->on)
				continue;
			x->on = 1, x->r = o->r, x->b = o->b;
			x->R = tensor(dm, o->R.w, o->R.g, (size_t)o->r * o->b * (o->b - 1) / 2, 0);
		}
		d->quant = v->qw != NULL;
		for (int j = 0; d->quant && j < FT_CV_NLIN; j++) {
			const ft_cv_qweight *h = &v->qw[(size_t)l * FT_CV_NLIN + j];
			ft_cu_qweight *q = &d->q[j];
			q->bits = h->bits, q->fp4 = h->fp4, q->in = h->in, q->out = h->out;
			q->offset = h->offset;
		}
		for (int j = 0; v->fp8 && j < FT_CV_NLIN; j++)   /* fp8.cu */
			d->fp8[j] = v->fp8[(size_t)l * FT_CV_NLIN + j];
		for (int i = first; i < dm->ntens; i++)
			dm->tens[i].group = l;
	}
}

/* Each layer's fused weight operands and stacked gradients, from the
 * buffers layout_unit carved back to back. */
static int bind_groups(ft_cuda_model *dm)
{
	for (int l = 0; l < dm->v.L; l++)
		for (int gi = 0; gi < FT_CV_NGROUP; gi++) {
			ft_dlayer *d = &dm->layers[l];
			ft_dgroup *g = &d->grp[gi];
			if (d->quant)   /* no stacked operand: module by module (layer.cu) */
				continue;
			ft_dt *t[6] = { 0 };
			int n = 0, nb;
			for (int i = 0; i < g->c.n; i++)
				t[n++] = d->lin[g->c.js[i]];
			nb = n;
			for (int i = 0; i < g->c.n; i++)   /* Phi-3: the lead's A once */
				if (ft_cv_lora_owner(&g->c, i))
					t[n++] = d->lora[g->c.js[i]].A;
			if (!n || !t[0])
				return ft_fail("internal: layer %d: a fused module has no weight", l);
			g->wf = ft_cu_weight(dm, t[0]);
			size_t el = g->wf.half ? 2 : 4;
			int gw = t[0]->g != NULL, ga = n > nb && t[nb]->g;
			for (int k = 1; k < n; k++) {
				ft_mat a = ft_cu_weight(dm, t[k - 1]), b = ft_cu_weight(dm, t[k]);
				if (b.half != a.half || (const char *)b.p != (const char *)a.p + t[k - 1]->n * el)
					return ft_fail("internal: layer %d %s: stacked weights are not "
						       "contiguous", l, gi ? "gate|up" : "q|k|v");
				int cont = t[k]->g && t[k]->g == t[k - 1]->g + t[k - 1]->n;
				if (k < nb)
					gw = gw && cont;
				else if (k > nb)
					ga = ga && cont;
			}
			g->gw = gw ? t[0]->g : NULL;
			g->ga = ga ? t[nb]->g : NULL;
		}
	return 0;
}

/* Row lengths of the fused buffers: the largest over the layers. */
static int group_width(const ft_cuda_model *dm, int gi)
{
	int w = 0;
	for (int l = 0; l < dm->v.L; l++)
		if (dm->layers[l].grp[gi].c.tot > w)
			w = dm->layers[l].grp[gi].c.tot;
	return w;
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
	size_t D = v->D, qd = (size_t)v->Hq * v->hd, kd = (size_t)v->Hk * v->hd;
	/* the normed layer inputs in the activation type (ft_cu_act_type):
	 * 2 bytes in the half modes */
	size_t es = dm->half ? 2 : 4;
	/* attention's inputs and output in ft_cu_proj_type (half when training
	 * in the half modes) */
	size_t eq = ft_cu_act_size(ft_cu_proj_type(dm));
	x->ln1 = ft_arena_take(a, N * D * es, A_ACTS);
	x->rstd1 = TAKE(a, N, float, A_ACTS);
	x->qkv = ft_arena_take(a, N * group_width(dm, 0) * eq, A_ACTS);
	x->lse = TAKE(a, N * v->Hq, float, A_ACTS);
	x->att = ft_arena_take(a, N * qd * eq, A_ACTS);
	x->xmid = TAKE(a, N * D, float, A_ACTS);
	x->ln2 = ft_arena_take(a, N * D * es, A_ACTS);
	x->rstd2 = TAKE(a, N, float, A_ACTS);
	x->gu = ft_arena_take(a, N * group_width(dm, 1) * eq, A_ACTS);
	/* the other modules' LoRA hiddens are columns of qkv and gu */
	x->lh[3] = r ? TAKE(a, N * r, float, A_ACTS) : NULL;
	x->lh[6] = r ? TAKE(a, N * r, float, A_ACTS) : NULL;
	if (v->qk_norm) {
		x->qn = ft_arena_take(a, N * qd * eq, A_ACTS);
		x->kn = ft_arena_take(a, N * kd * eq, A_ACTS);
		x->rstdq = TAKE(a, N * v->Hq, float, A_ACTS);
		x->rstdk = TAKE(a, N * v->Hk, float, A_ACTS);
	}
	if (v->gemma) {   /* the outputs before the post norms */
		x->ao = TAKE(a, N * D, float, A_ACTS);
		x->mo = TAKE(a, N * D, float, A_ACTS);
		x->rstd_ao = TAKE(a, N, float, A_ACTS);
		x->rstd_mo = TAKE(a, N, float, A_ACTS);
	}
}

/* The buffers of the unit t[0..n), category by category, back to back
 * (no rounding between them): a fused group's weights and gradients are
 * then single stacked matrices.  A unit is all matrices or all vectors. */
static void layout_unit(ft_cuda_model *dm, ft_arena *a, ft_arena *wa, ft_dt *t, int n)
{
	int half = dm->half && t[0].matrix;
	size_t nh = 0, nw = 0, ng = 0;
	for (int i = 0; i < n; i++) {
		int train = t[i].hg && !dm->o.inference;
		nh += half ? t[i].n : 0;
		nw += !half || train ? t[i].n : 0;
		ng += train ? t[i].n : 0;
	}
	uint16_t *h = nh ? TAKE(wa, nh, uint16_t, A_WEIGHTS) : NULL;
	float *w = nw ? TAKE(wa, nw, float, half ? A_MASTER : A_WEIGHTS) : NULL;
	float *g = ng ? TAKE(a, ng, float, A_GRADS) : NULL;
	/* ZeRO-1: the slice's moments instead (ft_cu_zero_layout) */
	float *m = ng && !dm->zero ? TAKE(a, ng, float, A_OPTIM) : NULL;
	float *v = ng && !dm->zero ? TAKE(a, ng, float, A_OPTIM) : NULL;
	for (int i = 0; i < n; i++) {
		ft_dt *x = &t[i];
		int train = x->hg && !dm->o.inference;
		x->h = half ? h : NULL;
		x->w = !half || train ? w : NULL;
		x->g = x->m = x->v = NULL;
		h += half ? x->n : 0;
		w += !half || train ? x->n : 0;
		if (train) {
			x->g = g, x->m = m, x->v = v;
			g += x->n;
			if (m)
				m += x->n, v += x->n;
		}
	}
}

/* QLoRA: each quantized linear's bytes (the weights' category: what
 * stays resident), the code tables, the dequantized tile and LLM.int8()'s
 * buffers (scratch).  The tile is QTILE elements, at least one row, at
 * most the largest module: a 7B model's 4096-row tiles keep the GEMMs
 * wide for 32 MiB of bf16 (64 MiB fp32). */
#define QTILE ((size_t)1 << 24)
static void layout_quant(ft_cuda_model *dm, ft_arena *a, ft_arena *wa, size_t N, size_t mi)
{
	const ft_cuda_view *v = &dm->v;
	size_t big = 0, rows = 0;
	int int8 = 0;
	dm->qcode = TAKE(wa, 16 + 16 + 256, float, A_WEIGHTS);
	for (int l = 0; l < v->L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++) {
			const ft_cv_qweight *h = &v->qw[(size_t)l * FT_CV_NLIN + j];
			ft_cu_qweight *q = &dm->layers[l].q[j];
			size_t n = (size_t)h->in * h->out, nb = (n + FT_Q4_BLOCK - 1) / FT_Q4_BLOCK;
			if (n > big) big = n;
			if ((size_t)h->out > rows) rows = h->out;
			int8 |= h->bits == 8;
			q->code4 = dm->qcode + (h->fp4 ? 16 : 0);
			q->code8 = dm->qcode + 32;
			if (h->bits == 8) {
				q->cb = TAKE(wa, n, int8_t, A_WEIGHTS);
				q->scb = TAKE(wa, h->out, float, A_WEIGHTS);
				continue;
			}
			q->packed = TAKE(wa, (n + 1) / 2, uint8_t, A_WEIGHTS);
			if (h->qabsmax) {
				q->qabsmax = TAKE(wa, nb, uint8_t, A_WEIGHTS);
				q->absmax2 = TAKE(wa, (nb + FT_Q4_BLOCK2 - 1) / FT_Q4_BLOCK2, float, A_WEIGHTS);
			} else {
				q->absmax = TAKE(wa, nb, float, A_WEIGHTS);
			}
		}
	size_t el = ft_cu_qscratch_elem(dm), tile = QTILE > mi ? QTILE : mi;
	if (tile > big) tile = big;
	dm->qscratch_bytes = tile * el > 4 * mi ? tile * el : 4 * mi;   /* int8: CB rows as fp32 */
	dm->qscratch = ft_arena_take(a, dm->qscratch_bytes, A_SCRATCH);
	if (!int8)
		return;
	dm->q8_rows = (int)(rows < 4096 ? rows : 4096);
	dm->q8_outl = TAKE(a, mi, int, A_SCRATCH);
	dm->q8_cols = TAKE(a, mi, int, A_SCRATCH);
	dm->q8_nc = TAKE(a, 1, int, A_SCRATCH);
	dm->q8_sca = TAKE(a, N, float, A_SCRATCH);
	dm->q8_caf = TAKE(a, N * mi, float, A_SCRATCH);
	dm->q8_tmp = TAKE(a, N * dm->q8_rows, float, A_SCRATCH);
	dm->q8_acc = TAKE(a, N * dm->q8_rows, int32_t, A_SCRATCH);
}

/* Whether a half q|k|v or gate|up output has a group computed in fp32
 * first (into dm->dqkv). */
static int f32_groups(const ft_cuda_model *dm)
{
	if (ft_cu_proj_type(dm) == FT_ACT_F32)
		return 0;
	for (int l = 0; l < dm->v.L; l++)
		for (int gi = 0; gi < FT_CV_NGROUP; gi++)
			if (ft_cu_group_f32_only(dm, l, gi))
				return 1;
	return 0;
}

/* Every device buffer, in one pass that either counts (base 0) or
 * assigns.  The sizes follow ftp_model_prepare (lib/model/model_fwd.c). */
static void layout(ft_cuda_model *dm, ft_arena *a)
{
	const ft_cuda_view *v = &dm->v;
	/* the weights' own arena: a, or none over another model's weights
	 * (share_weights sets the pointers after) */
	ft_arena none = { 0, 0, { 0 } }, *wa = dm->o.weights_of ? &none : a;
	for (int i = 0, n; i < dm->ntens; i += n) {
		n = dm->tens[i].unit > 1 ? dm->tens[i].unit : 1;
		layout_unit(dm, a, wa, &dm->tens[i], n);
	}
	if (dm->zero)
		ft_cu_zero_layout(dm, a);
	size_t N = dm->o.max_tokens, D = v->D, F = v->F, L = v->L;
	size_t qd = (size_t)v->Hq * v->hd, kd = (size_t)v->Hk * v->hd, mi = max_in(v);
	size_t r = lora_rank(dm), V = v->V;
	if (v->qw)
		layout_quant(dm, a, wa, N, mi);
	if (v->fp8)
		ft_cu_fp8_layout(dm, a, N);
	dm->n_acts = v->gradient_checkpointing || dm->o.inference ? 1 : (int)L;
	for (int i = 0; i < dm->n_acts; i++)
		layout_acts(dm, a, &dm->acts[i], N, r);
	ft_cu_dora_layout(dm, a, N);
	ft_cu_oft_layout(dm, a);
	/* inference keeps only a layer's input and output (lib/cuda/infer.cu) */
	dm->xs = TAKE(a, (dm->o.inference ? 2 : L + 1) * N * D, float, A_ACTS);
	dm->lnf = TAKE(a, N * D, float, A_ACTS);
	dm->rstdf = TAKE(a, N, float, A_ACTS);
	dm->cos_t = TAKE(a, N * v->hd / 2, float, A_SCRATCH);
	dm->sin_t = TAKE(a, N * v->hd / 2, float, A_SCRATCH);
	size_t nl = v->gemma ? N * v->hd / 2 : 0;   /* Gemma's sliding layers */
	dm->cos_l = TAKE(a, nl, float, A_SCRATCH);
	dm->sin_l = TAKE(a, nl, float, A_SCRATCH);
	dm->norm_eff = TAKE(a, v->gemma ? (D > (size_t)v->hd ? D : (size_t)v->hd) : 0, float, A_SCRATCH);
	int32_t **ip[] = { &dm->ids, &dm->pos, &dm->targets, &dm->rows, &dm->seg, &dm->lens };
	for (size_t i = 0; i < sizeof ip / sizeof *ip; i++)
		*ip[i] = TAKE(a, N, int32_t, A_SCRATCH);
	/* backward and dropout buffers: empty (never used) for inference */
	size_t Nb = dm->o.inference ? 0 : N;
	float **nd[] = { &dm->d_a, &dm->d_b, &dm->d_ln, &dm->head_x, &dm->head_dx };
	for (size_t i = 0; i < sizeof nd / sizeof *nd; i++)
		*nd[i] = TAKE(a, (nd[i] == &dm->head_x ? N : Nb) * D, float, A_SCRATCH);
	dm->d_att = TAKE(a, Nb * qd, float, A_SCRATCH);
	/* dq, dk, dv go straight into dqkv; Qwen3's dq, dk come out of
	 * attention before their norms; gate|up's gradients overwrite their
	 * activations (in place) */
	size_t wq = group_width(dm, 0), wg = group_width(dm, 1), wy = mi;
	if (wq > wy) wy = wq;
	if (wg > wy) wy = wg;
	/* with half projection outputs also gate|up's fp32 gradients (the
	 * SwiGLU backward cannot write them over the half activations), and
	 * either group's fp32 forward (layer.cu's ft_cu_group_f32_only),
	 * which a decoding model needs too */
	size_t wd = ft_cu_proj_type(dm) != FT_ACT_F32 && wg > wq ? wg : wq;
	dm->dqkv = TAKE(a, (f32_groups(dm) ? N : Nb) * wd, float, A_SCRATCH);
	dm->dq = TAKE(a, v->qk_norm ? Nb * qd : 0, float, A_SCRATCH);
	dm->dk = TAKE(a, v->qk_norm ? Nb * kd : 0, float, A_SCRATCH);
	dm->hbuf = ft_arena_take(a, N * F * (dm->half ? 2 : 4), A_SCRATCH);   /* ft_cu_act_type */
	dm->dh = TAKE(a, Nb * F, float, A_SCRATCH);
	dm->tmp = TAKE(a, N * (mi > D ? mi : D), float, A_SCRATCH);
	/* a decoding model with OFT rotates its inputs into drop too (oft.cu) */
	size_t No = v->oft ? N : Nb;
	dm->drop = TAKE(a, No * mi, float, A_SCRATCH);
	dm->ddrop = TAKE(a, Nb * mi, float, A_SCRATCH);
	dm->oft_xf = TAKE(a, dm->half && v->oft ? No * mi : 0, float, A_SCRATCH);
	dm->lhs = TAKE(a, Nb * (r ? r : 1), float, A_SCRATCH);
	size_t chunk = HEAD_BUDGET / V;
	if (chunk < 1) chunk = 1;
	if (chunk > N) chunk = N;
	dm->head_chunk = (int)chunk;
	dm->head_scratch = TAKE(a, chunk * V, float, A_SCRATCH);
	dm->row_loss = TAKE(a, N, double, A_SCRATCH);
	if (dm->half) {
		dm->hx = TAKE(a, N * mi, uint16_t, A_SCRATCH);
		/* a fused dY; attention's dq|dk|dv; LoRA B cast for a half
		 * q|k|v output (layer.cu), r * mi at most */
		size_t ny = N * wy > r * mi ? N * wy : r * mi;
		dm->hy = TAKE(a, ny, uint16_t, A_SCRATCH);
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
	if (o->zero_ranks > 1 && !o->inference && ft_cu_zero_init(dm) < 0) {
		ft_cu_zero_free(dm);
		free(dm->tens); free(dm->layers); free(dm->acts);
		free(dm);
		return NULL;
	}
	ft_arena a = { 0, 0, { 0 } };
	layout(dm, &a);
	plan_of(&a, &dm->plan);
	return dm;
}

static void free_host(ft_cuda_model *dm)
{
	ft_cu_zero_free(dm);
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

/* QLoRA: the quantized bytes as they are (never float32) and the maps. */
static int upload_quant(ft_cuda_model *dm)
{
	const ft_cuda_view *v = &dm->v;
	if (!v->qw)
		return 0;
	for (int k = 0; k < 3; k++)
		TRY(ft_cu_copy(dm, dm->qcode + 16 * k, v->qcode[k], (k < 2 ? 16 : 256) * sizeof(float),
			       cudaMemcpyHostToDevice, "quantization maps"));
	for (int l = 0; l < v->L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++) {
			const ft_cv_qweight *h = &v->qw[(size_t)l * FT_CV_NLIN + j];
			const ft_cu_qweight *q = &dm->layers[l].q[j];
			size_t n = (size_t)h->in * h->out, nb = (n + FT_Q4_BLOCK - 1) / FT_Q4_BLOCK;
			struct { void *d; const void *h; size_t bytes; } c[] = {
				{ (void *)q->cb, h->cb, h->bits == 8 ? n : 0 },
				{ (void *)q->scb, h->scb, h->bits == 8 ? h->out * sizeof(float) : 0 },
				{ (void *)q->packed, h->packed, h->bits == 4 ? (n + 1) / 2 : 0 },
				{ (void *)q->qabsmax, h->qabsmax, q->qabsmax ? nb : 0 },
				{ (void *)q->absmax2, h->absmax2,
				  q->qabsmax ? (nb + FT_Q4_BLOCK2 - 1) / FT_Q4_BLOCK2 * sizeof(float) : 0 },
				{ (void *)q->absmax, h->absmax, q->absmax ? nb * sizeof(float) : 0 },
			};
			for (size_t k = 0; k < sizeof c / sizeof *c; k++)
				if (c[k].bytes)
					TRY(ft_cu_copy(dm, c[k].d, c[k].h, c[k].bytes, cudaMemcpyHostToDevice,
						       "quantized weights"));
		}
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
	size_t tabs = dm->v.gemma ? 4 : 2;   /* Gemma: the sliding layers' tables too */
	size_t bytes = 7 * N * sizeof(int32_t) + tabs * N * half * sizeof(float) +
		       (half + 1) * sizeof(float) + (N + nsum) * sizeof(double) + 64;
	CU(cudaMallocHost(&dm->staging, bytes), "%zu bytes of pinned host staging", bytes);
	char *p = (char *)dm->staging;
	/* doubles first: every later piece stays 4-byte aligned */
	dm->h_row_loss = (double *)p; p += N * sizeof(double);
	dm->h_sumsq = (double *)p; p += nsum * sizeof(double);
	int32_t **ints[] = { &dm->h_pos, &dm->h_targets, &dm->h_rows, &dm->h_tg2, &dm->h_ids,
			     &dm->h_seg, &dm->h_lens };
	for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
		*ints[k] = (int32_t *)p;
		p += N * sizeof(int32_t);
	}
	dm->h_cos = (float *)p; p += N * half * sizeof(float);
	dm->h_sin = (float *)p; p += N * half * sizeof(float);
	if (dm->v.gemma) {
		dm->h_cosl = (float *)p; p += N * half * sizeof(float);
		dm->h_sinl = (float *)p; p += N * half * sizeof(float);
	}
	dm->h_inv = (float *)p;
	return 0;
}

/* A decoding model over another device model's weights (o.weights_of):
 * built from the same host model in the same precision, so the same
 * tensors in the same order and units; it takes their device pointers
 * (a unit's stacked operands stay contiguous) and the quantized linears',
 * and uploads nothing. */
static int share_weights(ft_cuda_model *dm)
{
	const ft_cuda_model *s = dm->o.weights_of;
	if (!dm->o.inference || s->host != dm->host || s->o.precision != dm->o.precision ||
	    s->o.device != dm->o.device || s->ntens != dm->ntens || s->v.L != dm->v.L)
		return ft_fail("internal: a decoding model over the weights of another model, precision "
			       "or device");
	for (int i = 0; i < dm->ntens; i++) {
		ft_dt *t = &dm->tens[i];
		const ft_dt *u = &s->tens[i];
		int half = dm->half && t->matrix;
		if (u->n != t->n || u->hw != t->hw || (half ? !u->h : !u->w))
			return ft_fail("internal: shared weights: tensor %d differs from its source", i);
		t->h = half ? u->h : NULL;
		t->w = half ? NULL : u->w;
	}
	dm->qcode = s->qcode;
	for (int l = 0; l < dm->v.L; l++)
		memcpy(dm->layers[l].q, s->layers[l].q, sizeof dm->layers[l].q);
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
	if (dm->o.weights_of)
		TRY(share_weights(dm));
	TRY(bind_groups(dm));
	CU(cudaStreamCreateWithFlags(&dm->stream, cudaStreamNonBlocking), "%s", "");
	CB(cublasCreate(&dm->blas), "%s", "");
	CB(cublasSetStream(dm->blas, dm->stream), "%s", "");
	CB(cublasSetWorkspace(dm->blas, dm->blas_ws, dm->blas_ws_size), "%zu bytes",
	   dm->blas_ws_size);
	/* fp32 mode: no TF32 (parity); the half modes choose per call */
	CB(cublasSetMathMode(dm->blas, CUBLAS_DEFAULT_MATH), "%s", "");
	/* zero everything: gradients and AdamW moments start at 0 */
	TRY(ft_cu_zero(dm, dm->mem, dm->plan.total));
	for (int i = 0; !dm->o.weights_of && i < dm->ntens; i++)
		TRY(ft_cu_upload(dm, &dm->tens[i]));
	if (!dm->o.weights_of)
		TRY(upload_quant(dm));
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
	ft_cu_comm_free(dm);
	ft_cu_xbuf_free(dm);
	if (dm->stream)
		cudaStreamDestroy(dm->stream);
	if (dm->mem)
		cudaFree(dm->mem);
	ft_cu_neftune_free(dm);
	ft_cuda_view_free(&dm->v);
	free_host(dm);
	free(dm);
}

const ft_cuda_plan *ft_cuda_model_plan(const ft_cuda_model *dm) { return &dm->plan; }
