/* layer.cu - one decoder layer on the device: the linear modules with
 * their LoRA branches, Qwen3's q/k norms, layer_forward and
 * layer_backward, mirroring lib/model/model_fwd.c function by function.
 * The whole-model passes that call them are in model_fwd.cu.
 *
 * q|k|v and gate|up are fused projections (ft_dgroup, see cuda_view.h):
 * one GEMM over the stacked weights (plus the LoRA A rows when the LoRA
 * input is x itself), one output buffer read with strides by RoPE,
 * attention and SwiGLU, and in the backward one GEMM for dx.  The CPU's
 * lin_fwd_many runs the same modules as a group (side by side).
 */
#include "cuda/common.cuh"

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t drop_seed(const ft_cuda_model *dm, int l, int j)
{
	return mix64(dm->v.seed ^ mix64(dm->dropout_calls * 0x9e3779b97f4a7c15ULL +
					(uint64_t)(l * FT_CV_NLIN + j + 1)));
}

/* LoRA dropout is on: each module's LoRA input is its own dropped x. */
static int dropping(const ft_cuda_model *dm)
{
	return dm->training && dm->v.lora_dropout > 0;
}

/* LoRA's input: x itself, or with dropout x's dropped copy in dm->drop,
 * of x's type (a half layer input stays half: A's operand). */
int ft_cu_lora_input(ft_cuda_model *dm, int l, int j, ft_mat x, size_t n, ft_mat *xd)
{
	*xd = x;
	if (!dropping(dm))
		return 0;
	TRY(ft_cu_dropout_act(dm, dm->drop, x, n, (float)dm->v.lora_dropout,
			      drop_seed(dm, l, j)));
	xd->p = dm->drop;
	return 0;
}

/* The dropped input's gradient dm->ddrop through module j's mask, into dx */
int ft_cu_lora_drop_grad(ft_cuda_model *dm, int l, int j, float *dx, size_t n)
{
	TRY(ft_cu_dropout(dm, dm->ddrop, dm->ddrop, n, (float)dm->v.lora_dropout,
			  drop_seed(dm, l, j)));
	return ft_cu_add(dm, dx, dx, dm->ddrop, n);
}

/* m from element off on (a module's columns of a fused buffer) */
static ft_mat mat_at(ft_mat m, size_t off)
{
	m.p = (const char *)m.p + off * (m.half ? 2 : 4);
	return m;
}

static const char *group_name(int g) { return g ? "gate|up_proj" : "q|k|v_proj"; }

/* y = x W^T (+ b) + scale (x A^T) B^T.  x: fp32 (the attention output)
 * or of ft_cu_act_type (the MLP hidden).  A is in the base product's
 * operand type (half with an fp32 master in the half modes), so without
 * dropout its product reads the same operand xo; h and B stay fp32. */
static int lin_fwd(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *y, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	size_t n = (size_t)N * in;
	ft_mat xo;
	TRY(ft_cu_oft_input(dm, l, j, &x, N));
	if (d->quant) {
		TRY(ft_cu_operand_act(dm, &xo, x, n, dm->hx, ft_cu_qscratch_half(dm)));
		TRY(ft_cu_qlin_forward(dm, &d->q[j], y, out, x, xo, N, ft_cuda_view_lin_name(j)));
	} else {
		ft_mat w = ft_cu_weight(dm, d->lin[j]);
		TRY(ft_cu_operand_act(dm, &xo, x, n, dm->hx, w.half));   /* LoRA A's too */
		if (d->fp8[j])
			TRY(ft_cu_fp8_forward(dm, l, j, y, out, x, N));
		else
			TRY(ft_cu_gemm(dm, 0, 1, N, out, in, 1, xo, in, w, in, 0, y, out,
				       ft_cuda_view_lin_name(j)));
	}
	if (j < 3 && d->bias[j])
		TRY(ft_cu_bias_forward(dm, y, out, d->bias[j]->w, N, out));
	ft_dlora *lo = &d->lora[j];
	if (!lo->on)
		return 0;
	ft_mat A = ft_cu_weight(dm, lo->A), xm = xo, B = { lo->B->w, 0 }, h = { a->lh[j], 0 };
	if (dropping(dm)) {
		ft_mat xd;
		TRY(ft_cu_lora_input(dm, l, j, x, n, &xd));
		TRY(ft_cu_operand_act(dm, &xm, xd, n, dm->hx, A.half));
	}
	TRY(ft_cu_gemm(dm, 0, 1, N, lo->r, in, 1, xm, in, A, in, 0, a->lh[j], lo->r, "lora_A"));
	if (lo->mag && dropping(dm))   /* DoRA's base term from xd too (dora.cu) */
		return ft_cu_dora_drop_forward(dm, l, j, y, out, xm, h, lo->r, N);
	TRY(ft_cu_gemm(dm, 0, 1, N, out, lo->r, lo->scale, h, lo->r, B, lo->r, 1, y, out,
		       "lora_B"));
	return ft_cu_dora_forward(dm, l, j, y, out, N);
}

/* As lin_fwd_many (lib/model/model_fwd.c): the modules of group gi on the
 * same input x into Y [N, tot].  One GEMM over the stacked weights, over
 * the LoRA A rows too unless dropout gives each module its own input, so
 * x is read (and in the half modes cast) once; then the biases and each
 * module's LoRA B product.
 *
 * A quantized layer (QLoRA) runs its modules one by one into their
 * columns of Y, each through the tiled dequantize + GEMM of quant.cu,
 * and each LoRA A product on its own: a stacked operand would need the
 * whole group dequantized at once (gate|up of a 7B model: 360 MB of
 * fp32 scratch, twice its largest module's), while the tiles bound the
 * scratch and keep the GEMMs as wide; the fused buffer's layout, which
 * RoPE, attention and SwiGLU read, is the same either way. */
/* Whether group gi of layer l computes only into fp32: QLoRA's, fp8's
 * and OFT's module-by-module paths and DoRA's factors write fp32 columns. */
int ft_cu_group_f32_only(const ft_cuda_model *dm, int l, int gi)
{
	const ft_dlayer *d = &dm->layers[l];
	const ft_cv_group *c = &d->grp[gi].c;
	if (d->quant || ft_cu_oft_group(dm, l, gi) || ft_cu_fp8_group(dm, l, gi))
		return 1;
	for (int i = 0; i < c->n; i++)
		if (d->lora[c->js[i]].on && d->lora[c->js[i]].mag)
			return 1;
	return 0;
}

/* fp8 (fp8.cu): each member into its columns of Y (fp32), the converted
 * ones through fp8 operands, the others (layer 0's q_proj) as they are;
 * as the CPU's lin_fwd_many, module by module. */
static int fp8_fwd_group(ft_cuda_model *dm, int l, const ft_dgroup *g, float *Y, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = g->c.in, tot = g->c.tot;
	ft_mat xo;
	TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, g->wf.half));
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i];
		if (d->fp8[j])
			TRY(ft_cu_fp8_forward(dm, l, j, Y + g->c.off[i], tot, x, N));
		else
			TRY(ft_cu_gemm(dm, 0, 1, N, dm->v.lin_out[j], in, 1, xo, in,
				       ft_cu_weight(dm, d->lin[j]), in, 0, Y + g->c.off[i], tot,
				       ft_cuda_view_lin_name(j)));
	}
	return 0;
}

/* Y: fp32, or of the run's half type (the q|k|v and gate|up outputs when
 * training in bf16/fp16, ft_cu_proj_type).  Half, it is the GEMMs' C: the base
 * product rounded once, the bias added and rounded, the LoRA hidden
 * rounded (lora_A's output under autocast), and B's product (B cast to
 * half, as autocast casts lora_B) added into the rounded base and
 * rounded again: PEFT's result + lora_B(lora_A(x)) * scaling in bf16.
 * A group that computes only into fp32 (ft_cu_group_f32_only) runs into
 * dm->dqkv (free in the forward) and is rounded into Y once. */
static int lin_fwd_group(ft_cuda_model *dm, int l, int gi, ft_mat Y, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	const ft_dgroup *g = &d->grp[gi];
	int f8 = ft_cu_fp8_group(dm, l, gi);
	int in = g->c.in, tot = g->c.tot, drop = dropping(dm) || d->quant || f8;
	ft_mat xo;
	if (Y.half && ft_cu_group_f32_only(dm, l, gi)) {   /* dqkv: wide enough for either */
		TRY(lin_fwd_group(dm, l, gi, ft_cu_f32(dm->dqkv), x, N));
		return ft_cu_cast_cols(dm, Y, tot, ft_cu_f32(dm->dqkv), tot, N, tot);
	}
	if (ft_cu_oft_group(dm, l, gi))   /* each member on its own rotated input */
		return ft_cu_oft_forward_group(dm, l, gi, (float *)Y.p, x, N);
	if (d->quant) {
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, ft_cu_qscratch_half(dm)));
		for (int i = 0; i < g->c.n; i++)
			TRY(ft_cu_qlin_forward(dm, &d->q[g->c.js[i]], (float *)Y.p + g->c.off[i], tot,
					       x, xo, N, ft_cuda_view_lin_name(g->c.js[i])));
	} else if (f8) {
		TRY(fp8_fwd_group(dm, l, g, (float *)Y.p, x, N));
	} else {
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, g->wf.half));
		TRY(ft_cu_gemm_to(dm, 0, 1, N, drop ? g->c.base : tot, in, 1, xo, in, g->wf, in, 0,
				  Y, tot, group_name(gi)));
	}
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i], out = dm->v.lin_out[j];
		ft_mat y = mat_at(Y, g->c.off[i]), h = mat_at(Y, g->c.loff[i]);
		if (j < 3 && d->bias[j])
			TRY(ft_cu_bias_forward_act(dm, y, tot, d->bias[j]->w, N, out));
		ft_dlora *lo = &d->lora[j];
		if (!lo->on)
			continue;
		ft_mat xm = x;
		if (drop && ft_cv_lora_owner(&g->c, i)) {   /* A as stacked (half in the
							       half modes), its own input */
			ft_mat A = ft_cu_weight(dm, lo->A), xd;
			TRY(ft_cu_lora_input(dm, l, j, x, (size_t)N * in, &xd));
			TRY(ft_cu_operand_act(dm, &xm, xd, (size_t)N * in, dm->hx, A.half));
			TRY(ft_cu_gemm_to(dm, 0, 1, N, lo->r, in, 1, xm, in, A, in, 0, h, tot,
					  "lora_A"));
		}
		if (lo->mag && dropping(dm)) {   /* fp32 Y (ft_cu_group_f32_only) */
			TRY(ft_cu_dora_drop_forward(dm, l, j, (float *)y.p, tot, xm, h, tot, N));
			continue;
		}
		ft_mat B;   /* hy is free in the forward */
		TRY(ft_cu_operand(dm, &B, lo->B->w, (size_t)out * lo->r, dm->hy, Y.half));
		TRY(ft_cu_gemm_to(dm, 0, 1, N, out, lo->r, lo->scale, h, tot, B, lo->r, 1, y, tot,
				  "lora_B"));
		TRY(ft_cu_dora_forward(dm, l, j, (float *)y.p, tot, N));
	}
	return 0;
}

/* The base weight's part of lin_bwd: dx += dy W, dW += dy^T x. */
static int base_bwd(ft_cuda_model *dm, ft_dt *W, float *dx, const float *dy, ft_mat x,
		    int N, int in, int out, const char *nm)
{
	ft_mat w = ft_cu_weight(dm, W), dyo, xo;
	if (dx || W->g)
		TRY(ft_cu_operand(dm, &dyo, dy, (size_t)N * out, dm->hy, w.half));
	if (dx)
		TRY(ft_cu_gemm(dm, 0, 0, N, in, out, 1, dyo, out, w, in, 1, dx, in, nm));
	if (W->g) {
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 1, 0, out, in, N, 1, dyo, out, xo, in, 1, W->g, in, nm));
	}
	return 0;
}

static int base_bwd_quant(ft_cuda_model *dm, const ft_cu_qweight *q, float *dx, const float *dy,
			  int N, const char *nm)
{
	ft_mat dyo;
	if (!dx)
		return 0;
	TRY(ft_cu_operand(dm, &dyo, dy, (size_t)N * q->out, dm->hy, ft_cu_qscratch_half(dm)));
	return ft_cu_qlin_backward(dm, q, dx, dyo, q->out, N, nm);
}

/* dx += dy W (dx may be NULL); dW += dy^T x; db += sum dy; LoRA grads.
 * dL/dh is cast to A's operand type (into hy: dy's cast there is
 * consumed by then) for A's gradient and dx, as the fused groups do. */
static int lin_bwd(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *dx,
		   const float *dy, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = dm->v.lin_in[j], out = dm->v.lin_out[j];
	const char *nm = ft_cuda_view_lin_name(j);
	ft_dt *W = d->lin[j];
	ft_dlora *lo = &d->lora[j];
	int dd = lo->on && lo->mag && dropping(dm);   /* DoRA with dropout: dy unscaled here */
	if (ft_cu_oft_of(dm, l, j))
		return ft_cu_oft_backward(dm, l, j, dx, dy, x, N);
	if (!dd)
		TRY(ft_cu_dora_lin_backward(dm, l, j, &dy, N));
	if (d->quant)   /* frozen: the input gradient alone */
		TRY(base_bwd_quant(dm, &d->q[j], dx, dy, N, nm));
	else if (d->fp8[j])
		TRY(ft_cu_fp8_backward(dm, l, j, dx, dy, out, x, N));
	else
		TRY(base_bwd(dm, W, dx, dy, x, N, in, out, nm));
	if (j < 3 && d->bias[j] && d->bias[j]->g)
		TRY(ft_cu_bias_backward(dm, d->bias[j]->g, dy, out, N, out));
	if (!lo->on)
		return 0;
	size_t n = (size_t)N * in;
	if (dd) {
		ft_mat xd, xm, h = { a->lh[j], 0 };
		TRY(ft_cu_lora_input(dm, l, j, x, n, &xd));
		TRY(ft_cu_operand_act(dm, &xm, xd, n, dm->hx, ft_cu_weight(dm, lo->A).half));
		return ft_cu_dora_drop_backward(dm, l, j, dx, dy, out, h, lo->r, xm, N);
	}
	int r = lo->r, drop = dropping(dm);
	float *dxd = drop && dx ? dm->ddrop : dx;
	if (dxd && drop)
		TRY(ft_cu_zero(dm, dm->ddrop, n * sizeof(float)));
	ft_mat dyf = { dy, 0 }, h = { a->lh[j], 0 }, B = { lo->B->w, 0 };
	ft_mat A = ft_cu_weight(dm, lo->A), hs;
	if (lo->B->g)
		TRY(ft_cu_gemm(dm, 1, 0, out, r, N, lo->scale, dyf, out, h, r, 1, lo->B->g, r,
			       "lora_B grad"));
	TRY(ft_cu_gemm(dm, 0, 0, N, r, out, lo->scale, dyf, out, B, r, 0, dm->lhs, r,
		       "lora dh"));
	TRY(ft_cu_operand(dm, &hs, dm->lhs, (size_t)N * r, dm->hy, A.half));
	if (lo->A->g) {
		ft_mat xd, xm;
		TRY(ft_cu_lora_input(dm, l, j, x, n, &xd));
		TRY(ft_cu_operand_act(dm, &xm, xd, n, dm->hx, A.half));
		TRY(ft_cu_gemm(dm, 1, 0, r, in, N, 1, hs, r, xm, in, 1, lo->A->g, in,
			       "lora_A grad"));
	}
	if (dxd)
		TRY(ft_cu_gemm(dm, 0, 0, N, in, r, 1, hs, r, A, in, 1, dxd, in, "lora dx"));
	if (dxd && drop)
		TRY(ft_cu_lora_drop_grad(dm, l, j, dx, n));
	return 0;
}

/* The LoRA branches of a group: dB += scale dy^T h for every module,
 * then dL/dh = scale dy B into the LoRA columns of dY (after every h was
 * read: dY may be Y); Phi-3's members add theirs to the lead's hidden.
 * Y fp32 or half (lin_fwd_group); with a half Y, dB's product reads dY
 * as cast in dyo (B's gradient from half dy and h, as autocast's), and
 * the new LoRA columns of dY are then cast into dyo too. */
static int lora_bwd_group(ft_cuda_model *dm, int l, const ft_dgroup *g, ft_mat Y, float *dY,
			  ft_mat dyo, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int tot = g->c.tot, any = 0;
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < g->c.n; i++) {
			int j = g->c.js[i], out = dm->v.lin_out[j];
			ft_dlora *lo = &d->lora[j];
			if (!lo->on)
				continue;
			any = 1;
			ft_mat dy = { dY + g->c.off[i], 0 }, h = mat_at(Y, g->c.loff[i]);
			ft_mat B = { lo->B->w, 0 };
			if (pass == 0 && Y.half)
				dy = mat_at(dyo, g->c.off[i]);
			if (pass == 0 && lo->B->g)
				TRY(ft_cu_gemm(dm, 1, 0, out, lo->r, N, lo->scale, dy, tot, h, tot, 1,
					       lo->B->g, lo->r, "lora_B grad"));
			if (pass == 1)
				TRY(ft_cu_gemm(dm, 0, 0, N, lo->r, out, lo->scale, dy, tot, B, lo->r,
					       ft_cv_lora_owner(&g->c, i) ? 0.0f : 1.0f,
					       dY + g->c.loff[i], tot, "lora dh"));
		}
	if (any && dyo.p != dY)
		TRY(ft_cu_cast_cols(dm, mat_at(dyo, g->c.base), tot, ft_cu_f32(dY + g->c.base), tot,
				    N, tot - g->c.base));
	return 0;
}

/* Module by module (with dropout, or a quantized layer): each module's A
 * gradient from its own (dropped) input, and its dx, through the dropout
 * mask when there is one; dyo is the group's (cast) dY. */
static int lora_drop_bwd(ft_cuda_model *dm, int l, const ft_dgroup *g, ft_mat dyo,
			 float *dx, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = g->c.in, tot = g->c.tot;
	size_t n = (size_t)N * in;
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i];
		ft_dlora *lo = &d->lora[j];
		if (!lo->on || !ft_cv_lora_owner(&g->c, i))
			continue;
		ft_mat hs = mat_at(dyo, g->c.loff[i]), A = ft_cu_weight(dm, lo->A), xm, xd;
		TRY(ft_cu_lora_input(dm, l, j, x, n, &xd));
		TRY(ft_cu_operand_act(dm, &xm, xd, n, dm->hx, dyo.half));
		if (lo->A->g)
			TRY(ft_cu_gemm(dm, 1, 0, lo->r, in, N, 1, hs, tot, xm, in, 1, lo->A->g, in,
				       "lora_A grad"));
		if (!dx)
			continue;
		if (!dropping(dm)) {
			TRY(ft_cu_gemm(dm, 0, 0, N, in, lo->r, 1, hs, tot, A, in, 1, dx, in, "lora dx"));
			continue;
		}
		TRY(ft_cu_gemm(dm, 0, 0, N, in, lo->r, 1, hs, tot, A, in, 0, dm->ddrop, in,
			       "lora dx"));
		TRY(ft_cu_lora_drop_grad(dm, l, j, dx, n));
	}
	return 0;
}

/* Weight gradients of a group from the cast dY (dyo) and x (xo): one
 * GEMM for the stacked weights (and A rows) when their gradients are
 * stacked too, else one per module. */
static int grads_group(ft_cuda_model *dm, int l, const ft_dgroup *g, ft_mat dyo, ft_mat xo,
		       int N, int with_a)
{
	ft_dlayer *d = &dm->layers[l];
	int in = g->c.in, tot = g->c.tot;
	if (g->gw)
		TRY(ft_cu_gemm(dm, 1, 0, g->c.base, in, N, 1, dyo, tot, xo, in, 1, g->gw, in,
			       "stacked weight grad"));
	if (with_a && g->ga)
		TRY(ft_cu_gemm(dm, 1, 0, tot - g->c.base, in, N, 1, mat_at(dyo, g->c.base), tot, xo,
			       in, 1, g->ga, in, "stacked lora_A grad"));
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i], out = dm->v.lin_out[j];
		ft_dt *W = d->lin[j];
		ft_dt *A = d->lora[j].on && ft_cv_lora_owner(&g->c, i) ? d->lora[j].A : NULL;
		if (W->g && !g->gw)
			TRY(ft_cu_gemm(dm, 1, 0, out, in, N, 1, mat_at(dyo, g->c.off[i]), tot, xo,
				       in, 1, W->g, in, ft_cuda_view_lin_name(j)));
		if (with_a && A && A->g && !g->ga)
			TRY(ft_cu_gemm(dm, 1, 0, d->lora[j].r, in, N, 1, mat_at(dyo, g->c.loff[i]),
				       tot, xo, in, 1, A->g, in, "lora_A grad"));
	}
	return 0;
}

static int group_has_grad(const ft_cuda_model *dm, int l, const ft_dgroup *g)
{
	const ft_dlayer *d = &dm->layers[l];
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i];
		if ((d->lin[j] && d->lin[j]->g) || (d->lora[j].on && d->lora[j].A->g))
			return 1;
	}
	return 0;
}

/* fp8_fwd_group's base products backward: each member's dx and weight
 * gradient, the converted ones from dY's fp32 columns through fp8, the
 * others from the cast dyo as base_bwd. */
static int fp8_bwd_group(ft_cuda_model *dm, int l, const ft_dgroup *g, const float *dY,
			 ft_mat dyo, float *dx, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	int in = g->c.in, tot = g->c.tot;
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i], out = dm->v.lin_out[j];
		const char *nm = ft_cuda_view_lin_name(j);
		ft_dt *W = d->lin[j];
		ft_mat w = ft_cu_weight(dm, W), dy = mat_at(dyo, g->c.off[i]), xo;
		if (d->fp8[j]) {
			TRY(ft_cu_fp8_backward(dm, l, j, dx, dY + g->c.off[i], tot, x, N));
			continue;
		}
		if (dx)
			TRY(ft_cu_gemm(dm, 0, 0, N, in, out, 1, dy, tot, w, in, 1, dx, in, nm));
		if (W->g) {
			TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, dyo.half));
			TRY(ft_cu_gemm(dm, 1, 0, out, in, N, 1, dy, tot, xo, in, 1, W->g, in, nm));
		}
	}
	return 0;
}

/* The backward of lin_fwd_group: dY [N, tot] holds dL/dy in each
 * module's columns (dY may be Y: in place); its LoRA columns receive
 * dL/dh; every parameter gradient accumulates; dx += dL/dx (dx may be
 * NULL) in one GEMM over the stacked weights, A rows included unless
 * dropout made the LoRA inputs differ. */
static int lin_bwd_group(ft_cuda_model *dm, int l, int gi, ft_mat Y, float *dY,
			 float *dx, ft_mat x, int N)
{
	ft_dlayer *d = &dm->layers[l];
	const ft_dgroup *g = &d->grp[gi];
	int in = g->c.in, tot = g->c.tot, drop = dropping(dm);
	/* DoRA with dropout: dY stays unscaled for the base GEMMs, the LoRA
	 * branches after them (dora.cu) */
	int dd = drop && ft_cu_dora_group(dm, l, &g->c);
	if (ft_cu_oft_group(dm, l, gi))
		return ft_cu_oft_backward_group(dm, l, gi, dY, dx, x, N);
	if (!dd)
		TRY(ft_cu_dora_group_backward(dm, l, &g->c, dY, N));
	for (int i = 0; i < g->c.n; i++) {
		int j = g->c.js[i];
		if (j < 3 && d->bias[j] && d->bias[j]->g)
			TRY(ft_cu_bias_backward(dm, d->bias[j]->g, dY + g->c.off[i], tot, N,
						dm->v.lin_out[j]));
	}
	/* dY as the operand (cast once into hy in the half modes) */
	int half = d->quant ? ft_cu_qscratch_half(dm) : g->wf.half;
	ft_mat dyo, xo;
	TRY(ft_cu_operand(dm, &dyo, dY, (size_t)N * tot, dm->hy, half));
	if (!dd)
		TRY(lora_bwd_group(dm, l, g, Y, dY, dyo, N));
	if (d->quant) {   /* module by module, as lin_fwd_group; no weight gradients */
		for (int i = 0; dx && i < g->c.n; i++)
			TRY(ft_cu_qlin_backward(dm, &d->q[g->c.js[i]], dx, mat_at(dyo, g->c.off[i]), tot,
						N, ft_cuda_view_lin_name(g->c.js[i])));
		if (dd)   /* QDoRA with dropout: the branches after the unscaled base */
			return ft_cu_dora_drop_group_backward(dm, l, &g->c, Y, dY, dx, x, N);
		return lora_drop_bwd(dm, l, g, dyo, dx, x, N);
	}
	if (ft_cu_fp8_group(dm, l, gi)) {   /* module by module, as lin_fwd_group */
		TRY(fp8_bwd_group(dm, l, g, dY, dyo, dx, x, N));
		return lora_drop_bwd(dm, l, g, dyo, dx, x, N);
	}
	if (dx)
		TRY(ft_cu_gemm(dm, 0, 0, N, in, drop ? g->c.base : tot, 1, dyo, tot, g->wf, in, 1,
			       dx, in, group_name(gi)));
	if (group_has_grad(dm, l, g)) {
		TRY(ft_cu_operand_act(dm, &xo, x, (size_t)N * in, dm->hx, half));
		TRY(grads_group(dm, l, g, dyo, xo, N, !drop));
	}
	if (dd)
		return ft_cu_dora_drop_group_backward(dm, l, &g->c, Y, dY, dx, x, N);
	if (drop)
		TRY(lora_drop_bwd(dm, l, g, dyo, dx, x, N));
	return 0;
}

/* Gemma: only its sliding layers are windowed, scores scaled by
 * query_pre_attn_scalar^-0.5 and (Gemma 2) soft-capped; else every layer
 * as the config (scale 0: 1/sqrt(hd)). */
ft_cu_attn ft_cu_attn_shape_of(const ft_cuda_model *dm, int l, const ft_cuda_batch *b)
{
	const ft_cuda_view *v = &dm->v;
	int win = !v->gemma || ft_cuda_view_sliding(v, l) ? v->window : 0;
	ft_cu_attn s = { b->B, b->T, v->Hq, v->Hk, v->hd, win, b->segment_ids ? dm->seg : NULL,
			 b->lengths ? dm->lens : NULL, v->gemma ? v->attn_scale : 0.0f,
			 v->gemma ? v->attn_softcap : 0.0f };
	return s;
}

void ft_cu_layer_tables(const ft_cuda_model *dm, int l, const float **cs, const float **sn)
{
	int local = ft_cuda_view_sliding(&dm->v, l);
	*cs = local ? dm->cos_l : dm->cos_t;
	*sn = local ? dm->sin_l : dm->sin_t;
}

/* Element off of p, an activation of type t */
static void *elem(const void *p, size_t off, int t)
{
	return (char *)p + off * ft_cu_act_size(t);
}

/* Attention's q, k, v: columns of the fused buffer, or (Qwen3) q and k
 * after their norms; of ft_cu_proj_type. */
static void bind_qkv(const ft_cuda_model *dm, int l, ft_dacts *a)
{
	const ft_cv_group *c = &dm->layers[l].grp[0].c;
	const ft_cuda_view *v = &dm->v;
	int t = ft_cu_proj_type(dm);
	a->v = elem(a->qkv, c->off[2], t);
	a->ldv = c->tot;
	if (v->qk_norm) {
		a->q = a->qn, a->ldq = v->Hq * v->hd;
		a->k = a->kn, a->ldk = v->Hk * v->hd;
	} else {
		a->q = elem(a->qkv, c->off[0], t), a->ldq = c->tot;
		a->k = elem(a->qkv, c->off[1], t), a->ldk = c->tot;
	}
}

/* As ftp_qk_norm_forward/backward (lib/model/arch.c): Qwen3's per-head
 * RMSNorm of the q and k columns of the fused buffer (half in, half out
 * when the buffer is: Qwen3RMSNorm's fp32 statistics and .to(bf16)). */
static int qk_norm_forward(ft_cuda_model *dm, const ft_dlayer *y, ft_dacts *a, int N)
{
	const ft_cuda_view *c = &dm->v;
	const ft_cv_group *g = &y->grp[0].c;
	int t = ft_cu_proj_type(dm);
	const float *w;
	TRY(ft_cu_norm_w(dm, y->qn, c->hd, &w));
	TRY(ft_cu_head_rmsnorm_forward(dm, a->qn, a->rstdq, elem(a->qkv, g->off[0], t), t, g->tot,
				       w, N, c->Hq, c->hd, c->eps));
	TRY(ft_cu_norm_w(dm, y->kn, c->hd, &w));
	TRY(ft_cu_head_rmsnorm_forward(dm, a->kn, a->rstdk, elem(a->qkv, g->off[1], t), t, g->tot,
				       w, N, c->Hk, c->hd, c->eps));
	return 0;
}

/* dm->dq, dm->dk (after the norms) -> added into dY's q and k columns. */
static int qk_norm_backward(ft_cuda_model *dm, ft_dlayer *y, float *dY, const ft_dacts *a,
			    int N)
{
	const ft_cuda_view *c = &dm->v;
	const ft_cv_group *g = &y->grp[0].c;
	int t = ft_cu_proj_type(dm);
	const float *w;
	TRY(ft_cu_norm_w(dm, y->qn, c->hd, &w));
	TRY(ft_cu_head_rmsnorm_backward(dm, dY + g->off[0], y->qn->g, dm->dq,
					elem(a->qkv, g->off[0], t), t, g->tot, w, a->rstdq, N, c->Hq,
					c->hd));
	TRY(ft_cu_norm_w(dm, y->kn, c->hd, &w));
	TRY(ft_cu_head_rmsnorm_backward(dm, dY + g->off[1], y->kn->g, dm->dk,
					elem(a->qkv, g->off[1], t), t, g->tot, w, a->rstdk, N, c->Hk,
					c->hd));
	return 0;
}

int ft_cu_attn_inputs(ft_cuda_model *dm, int l, ft_dacts *a, int N)
{
	const ft_cuda_view *c = &dm->v;
	ft_dlayer *y = &dm->layers[l];
	int t = ft_cu_proj_type(dm);
	TRY(lin_fwd_group(dm, l, 0, ft_cu_proj_mat(dm, a->qkv), ft_cu_act(dm, a->ln1), N));
	bind_qkv(dm, l, a);
	if (c->qk_norm)
		TRY(qk_norm_forward(dm, y, a, N));
	const float *cs, *sn;
	ft_cu_layer_tables(dm, l, &cs, &sn);
	TRY(ft_cu_rope_act(dm, a->q, t, a->ldq, cs, sn, N, c->Hq, c->hd, 1));
	TRY(ft_cu_rope_act(dm, a->k, t, a->ldk, cs, sn, N, c->Hk, c->hd, 1));
	return 0;
}

/* Attention of layer l on the bound q, k, v into a->att, a->lse: the
 * tensor-core kernels when they are half (ft_cu_proj_type). */
int ft_cu_attn_forward(ft_cuda_model *dm, int l, ft_dacts *a, const ft_cuda_batch *b)
{
	ft_cu_attn s = ft_cu_attn_shape_of(dm, l, b);
	ft_cu_attn_ld ld = { a->ldq, a->ldk, a->ldv, 0, 0, 0 };
	return ft_cu_attention_forward_as(dm, ft_cu_proj_type(dm), a->att, a->lse, a->q, a->k, a->v,
					  &s, &ld);
}

int ft_cu_layer_forward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			float *x_out, const ft_cuda_batch *b)
{
	if (dm->v.gemma)
		return ft_cu_gemma_layer_forward(dm, l, a, x_in, x_out, b);
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D;
	ft_dlayer *y = &dm->layers[l];
	TRY(ft_cu_rmsnorm_forward_act(dm, a->ln1, a->rstd1, x_in, y->ln1->w, N, D, c->eps));
	TRY(ft_cu_attn_inputs(dm, l, a, N));
	TRY(ft_cu_attn_forward(dm, l, a, b));
	TRY(lin_fwd(dm, l, 3, a, dm->tmp, ft_cu_proj_mat(dm, a->att), N));
	TRY(ft_cu_add_rmsnorm_forward(dm, a->xmid, a->ln2, a->rstd2, x_in, dm->tmp, y->ln2->w,
				      N, D, c->eps));
	TRY(ft_cu_mlp_in_forward(dm, l, a, N));
	TRY(lin_fwd(dm, l, 6, a, dm->tmp, ft_cu_act(dm, dm->hbuf), N));
	TRY(ft_cu_add(dm, x_out, a->xmid, dm->tmp, (size_t)N * D));
	return 0;
}

/* The MLP's hidden dm->hbuf from layer l's gate|up output: SwiGLU, or
 * Gemma's GeGLU; gate and up read in ft_cu_proj_type. */
int ft_cu_glu_forward(ft_cuda_model *dm, int l, const ft_dacts *a, int N)
{
	const ft_cv_group *c = &dm->layers[l].grp[1].c;
	int t = ft_cu_proj_type(dm);
	const void *g = elem(a->gu, c->off[0], t), *u = elem(a->gu, c->off[1], t);
	if (dm->v.gemma)
		return ft_cu_geglu_forward(dm, dm->hbuf, g, u, t, c->tot, N, dm->v.F);
	return ft_cu_swiglu_forward(dm, dm->hbuf, g, u, t, c->tot, N, dm->v.F);
}

int ft_cu_mlp_in_forward(ft_cuda_model *dm, int l, ft_dacts *a, int N)
{
	TRY(lin_fwd_group(dm, l, 1, ft_cu_proj_mat(dm, a->gu), ft_cu_act(dm, a->ln2), N));
	return ft_cu_glu_forward(dm, l, a, N);
}

/* From dm->dh (dL/d hidden) to dm->d_ln = dL/d ln2 through the GLU and
 * the gate|up projection.  fp32 activations: the GLU's backward turns
 * them into their gradients in place; half ones: the fp32 gradients go
 * to dm->dqkv (free here: the attention backward comes after) in the
 * same layout, and the half activations keep the LoRA hiddens. */
int ft_cu_mlp_in_backward(ft_cuda_model *dm, int l, ft_dacts *a, int N)
{
	const ft_cv_group *c = &dm->layers[l].grp[1].c;
	int t = ft_cu_proj_type(dm), F = dm->v.F;
	const void *g = elem(a->gu, c->off[0], t), *u = elem(a->gu, c->off[1], t);
	float *dY = t == FT_ACT_F32 ? (float *)a->gu : dm->dqkv;
	float *dg = dY + c->off[0], *du = dY + c->off[1];
	if (dm->v.gemma)
		TRY(ft_cu_geglu_backward(dm, dg, du, dm->dh, g, u, t, c->tot, N, F));
	else
		TRY(ft_cu_swiglu_backward(dm, dg, du, dm->dh, g, u, t, c->tot, N, F));
	TRY(ft_cu_zero(dm, dm->d_ln, (size_t)N * dm->v.D * sizeof(float)));
	return lin_bwd_group(dm, l, 1, ft_cu_proj_mat(dm, a->gu), dY, dm->d_ln,
			     ft_cu_act(dm, a->ln2), N);
}

/* The MLP half of layer_backward: d_a (dL/dx_out) -> d_a += through the
 * MLP and ln2. */
static int mlp_backward(ft_cuda_model *dm, int l, ft_dacts *a, int N)
{
	const ft_cuda_view *c = &dm->v;
	ft_dlayer *y = &dm->layers[l];
	size_t nF = (size_t)N * c->F;
	TRY(ft_cu_glu_forward(dm, l, a, N));
	TRY(ft_cu_zero(dm, dm->dh, nF * sizeof(float)));
	TRY(lin_bwd(dm, l, 6, a, dm->dh, dm->d_a, ft_cu_act(dm, dm->hbuf), N));
	TRY(ft_cu_mlp_in_backward(dm, l, a, N));
	return ft_cu_rmsnorm_backward(dm, dm->d_a, y->ln2->g, dm->d_ln, a->xmid, y->ln2->w,
				      a->rstd2, N, c->D);
}

/* Attention's dq (row stride lq), dk (lk) and dv (dm->dqkv's columns)
 * from dm->d_att, written (not added), fp32.  Half activations: the
 * tensor-core kernels read dO cast to the half type (into hx) and write
 * dq|dk|dv in it, laid out as dqkv, into hy; widened there into the fp32
 * gradients RoPE's backward and the GEMMs read (FlashAttention-2 in bf16
 * returns bf16 gradients too). */
static int attn_grads(ft_cuda_model *dm, int l, const ft_dacts *a, const ft_cu_attn *s,
		      float *dq, int lq, float *dk, int lk, int N)
{
	const ft_cv_group *g = &dm->layers[l].grp[0].c;
	int t = ft_cu_proj_type(dm), tot = g->tot;
	float *dv = dm->dqkv + g->off[2];
	if (t == FT_ACT_F32) {
		ft_cu_attn_ld ld = { a->ldq, a->ldk, a->ldv, lq, lk, tot };
		return ft_cu_attention_backward_as(dm, t, dq, dk, dv, dm->d_att, a->q, a->k, a->v,
						   a->att, a->lse, s, &ld);
	}
	int qd = s->Hq * s->hd, kd = s->Hk * s->hd;
	ft_mat dO, H = { dm->hy, 1 };
	TRY(ft_cu_operand(dm, &dO, dm->d_att, (size_t)N * qd, dm->hx, 1));
	ft_cu_attn_ld ld = { a->ldq, a->ldk, a->ldv, tot, tot, tot };
	TRY(ft_cu_attention_backward_as(dm, t, dm->hy + g->off[0], dm->hy + g->off[1],
					dm->hy + g->off[2], dO.p, a->q, a->k, a->v, a->att, a->lse,
					s, &ld));
	TRY(ft_cu_cast_cols(dm, ft_cu_f32(dq), lq, mat_at(H, g->off[0]), tot, N, qd));
	TRY(ft_cu_cast_cols(dm, ft_cu_f32(dk), lk, mat_at(H, g->off[1]), tot, N, kd));
	return ft_cu_cast_cols(dm, ft_cu_f32(dv), tot, mat_at(H, g->off[2]), tot, N, kd);
}

/* The attention half of layer_backward, from dm->d_att (dL/d att, the
 * attention output before o_proj's input) to dm->d_a += dL/dx_in
 * through ln1. */
int ft_cu_attn_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			const ft_cuda_batch *b, int need_dx)
{
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T, D = c->D, hd = c->hd;
	ft_dlayer *y = &dm->layers[l];
	const ft_cv_group *g = &y->grp[0].c;
	ft_cu_attn s = ft_cu_attn_shape_of(dm, l, b);
	/* dq, dk, dv straight into the fused gradient buffer; Qwen3's go
	 * through q_norm/k_norm first, from dm->dq, dm->dk */
	float *dY = dm->dqkv, *dq = dY + g->off[0], *dk = dY + g->off[1];
	int lq = g->tot, lk = g->tot;
	if (c->qk_norm) {
		TRY(ft_cu_zero(dm, dY, (size_t)N * g->tot * sizeof(float)));
		dq = dm->dq, lq = c->Hq * hd;
		dk = dm->dk, lk = c->Hk * hd;
	}
	TRY(attn_grads(dm, l, a, &s, dq, lq, dk, lk, N));
	const float *cs, *sn;
	ft_cu_layer_tables(dm, l, &cs, &sn);
	TRY(ft_cu_rope(dm, dq, lq, cs, sn, N, c->Hq, hd, -1));
	TRY(ft_cu_rope(dm, dk, lk, cs, sn, N, c->Hk, hd, -1));
	if (c->qk_norm)
		TRY(qk_norm_backward(dm, y, dY, a, N));
	float *dln = need_dx || y->ln1->g ? dm->d_ln : NULL;
	if (dln)
		TRY(ft_cu_zero(dm, dln, (size_t)N * D * sizeof(float)));
	TRY(lin_bwd_group(dm, l, 0, ft_cu_proj_mat(dm, a->qkv), dY, dln, ft_cu_act(dm, a->ln1), N));
	const float *w1;
	TRY(ft_cu_norm_w(dm, y->ln1, D, &w1));
	if (dln)
		TRY(ft_cu_rmsnorm_backward(dm, dm->d_a, y->ln1->g, dln, x_in, w1, a->rstd1, N, D));
	return 0;
}

/* dm->d_a holds dL/dx_out on entry and dL/dx_in on return (unless
 * need_dx is 0). */
int ft_cu_layer_backward(ft_cuda_model *dm, int l, ft_dacts *a, const float *x_in,
			 const ft_cuda_batch *b, int need_dx)
{
	if (dm->v.gemma)
		return ft_cu_gemma_layer_backward(dm, l, a, x_in, b, need_dx);
	const ft_cuda_view *c = &dm->v;
	int N = b->B * b->T;
	size_t nq = (size_t)N * c->Hq * c->hd;
	TRY(mlp_backward(dm, l, a, N));
	TRY(ft_cu_zero(dm, dm->d_att, nq * sizeof(float)));
	TRY(lin_bwd(dm, l, 3, a, dm->d_att, dm->d_a, ft_cu_proj_mat(dm, a->att), N));
	return ft_cu_attn_backward(dm, l, a, x_in, b, need_dx);
}

int ft_cu_layer_has_grad(const ft_cuda_model *dm, int l)
{
	const ft_dlayer *y = &dm->layers[l];
	if (y->ln1->g || y->ln2->g || (y->qn && y->qn->g) || (y->kn && y->kn->g) ||
	    (y->ln3 && y->ln3->g) || (y->ln4 && y->ln4->g))
		return 1;
	for (int j = 0; j < FT_CV_NLIN; j++)
		if ((y->lin[j] && y->lin[j]->g) || y->lora[j].on || y->oft[j].on ||
		    (j < 3 && y->bias[j] && y->bias[j]->g))
			return 1;
	return 0;
}

/* For lib/cuda/infer.cu (KV-cache decoding): one linear module with its
 * LoRA branch (a->lh[j] its hidden). */
int ft_cu_lin_forward(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *y, ft_mat x, int N)
{
	return lin_fwd(dm, l, j, a, y, x, N);
}

int ft_cu_lin_backward(ft_cuda_model *dm, int l, int j, ft_dacts *a, float *dx,
		       const float *dy, ft_mat x, int N)
{
	return lin_bwd(dm, l, j, a, dx, dy, x, N);
}
