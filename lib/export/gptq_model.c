/* gptq_model.c - a GPTQ export of a whole model (gptq.h).
 *
 * As optimum's GPTQQuantizer.quantize_model with true_sequential: the
 * embeddings of the calibration windows are the first layer's inputs; in
 * each layer the linears are quantized one after the other in module order
 * (q, k, v, o, gate, up, down), each on the inputs the layer produces with
 * the linears before it already quantized (the dequantized weights replace
 * the float ones); then the layer's outputs, from its quantized weights,
 * are the next layer's inputs.  q, k and v see the same input (the first
 * norm's), as do gate and up, so one pass gives each pair its Hessian.
 *
 * The layer is computed in float32 by model/layers.h's functions, one
 * window at a time (optimum's batch_size 1); LLaMA-Factory runs it in
 * float16 on the GPU, so inputs differ by float16 rounding (docs/FORMAT.md).
 */
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/atomicfile.h"
#include "util/dtype.h"
#include "util/error.h"
#include "util/json.h"
#include "export/gptq.h"
#include "export/merge_internal.h"
#include "format/safetensors.h"
#include "model/layers.h"
#include "model/model.h"

enum { M_Q, M_K, M_V, M_O, M_GATE, M_UP, M_DOWN, NMOD };
static const char *const mod_name[NMOD] = {
	"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};

/* One quantized linear, packed. */
typedef struct {
	int rows, cols, ngroups;
	int32_t *qweight, *qzeros, *g_idx;
	uint16_t *scales;     /* fp16 [ngroups, rows] */
} qlinear;

typedef struct {
	ft_model *m;
	ft_config c;
	int T, D, qd, kd, F, rd;
	float *cos_t, *sin_t;
	float *ln, *rstd, *q, *k, *v, *att, *lse, *xmid, *ln2, *gate, *up, *h, *tmp;
	/* the current layer's weights */
	float *w[NMOD];
	const float *b[NMOD], *ln1w, *ln2w, *qnw, *knw;
	int in[NMOD], out[NMOD];
} block;

static float *param(ft_model *m, const char *fmt, int l, const char *mod)
{
	char name[160];
	snprintf(name, sizeof name, fmt, l, mod);
	ft_param *p = ft_model_find_param(m, name);
	return p ? p->w : NULL;
}

static int block_layer(block *b, int l)
{
	for (int j = 0; j < NMOD; j++) {
		b->w[j] = param(b->m, "model.layers.%d.%s.weight", l, mod_name[j]);
		b->b[j] = param(b->m, "model.layers.%d.%s.bias", l, mod_name[j]);
		if (!b->w[j]) return ft_fail("model.layers.%d.%s.weight: not in the model", l, mod_name[j]);
	}
	b->ln1w = param(b->m, "model.layers.%d.%s.weight", l, "input_layernorm");
	b->ln2w = param(b->m, "model.layers.%d.%s.weight", l, "post_attention_layernorm");
	b->qnw = param(b->m, "model.layers.%d.%s.weight", l, "self_attn.q_norm");
	b->knw = param(b->m, "model.layers.%d.%s.weight", l, "self_attn.k_norm");
	if (!b->ln1w || !b->ln2w || (b->c.qk_norm && (!b->qnw || !b->knw)))
		return ft_fail("model.layers.%d: norm weights missing", l);
	return 0;
}

static float *fa(size_t n) { return ft_xmalloc((n ? n : 1) * sizeof(float)); }

static int block_init(block *b, ft_model *m, int T)
{
	memset(b, 0, sizeof *b);
	b->m = m;
	b->c = *ft_model_config(m);
	const ft_config *c = &b->c;
	b->T = T;
	b->D = c->hidden_size;
	b->qd = c->num_attention_heads * c->head_dim;
	b->kd = c->num_key_value_heads * c->head_dim;
	b->F = c->intermediate_size;
	b->rd = c->rotary_dim > 0 ? c->rotary_dim : c->head_dim;
	int dims[NMOD][2] = { { b->D, b->qd }, { b->D, b->kd }, { b->D, b->kd }, { b->qd, b->D },
			      { b->D, b->F }, { b->D, b->F }, { b->F, b->D } };
	for (int j = 0; j < NMOD; j++) {
		b->in[j] = dims[j][0];
		b->out[j] = dims[j][1];
	}
	size_t n = T;
	b->ln = fa(n * b->D); b->rstd = fa(n * (c->num_attention_heads + 1));
	b->q = fa(n * b->qd); b->k = fa(n * b->kd); b->v = fa(n * b->kd);
	b->att = fa(n * b->qd); b->lse = fa(n * c->num_attention_heads);
	b->xmid = fa(n * b->D); b->ln2 = fa(n * b->D);
	b->gate = fa(n * b->F); b->up = fa(n * b->F); b->h = fa(n * b->F);
	b->tmp = fa(n * (b->D > b->qd ? b->D : b->qd));
	/* RoPE for positions 0..T-1 (each window is its own sequence) */
	ft_rope_params rp;
	ft_rope_params_of(c, &rp);
	float *inv = fa(b->rd / 2);
	int32_t *pos = ft_xmalloc(n * sizeof *pos);
	for (int t = 0; t < T; t++) pos[t] = t;
	b->cos_t = fa(n * (b->rd / 2));
	b->sin_t = fa(n * (b->rd / 2));
	int rc = ft_rope_inv_freq(inv, b->rd, &rp, T);
	if (rc == 0) {
		ft_rope_tables(b->cos_t, b->sin_t, pos, T, inv, b->rd);
		ft_rope_scale_tables(b->cos_t, b->sin_t, n * (b->rd / 2), &rp);
	}
	free(inv);
	free(pos);
	return rc;
}

static void block_free(block *b)
{
	float *f[] = { b->cos_t, b->sin_t, b->ln, b->rstd, b->q, b->k, b->v, b->att, b->lse,
		       b->xmid, b->ln2, b->gate, b->up, b->h, b->tmp };
	for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
}

enum { UPTO_LN1 = 1, UPTO_ATT, UPTO_LN2, UPTO_H, UPTO_OUT };

static void add_into(float *dst, const float *a, const float *b, size_t n)
{
	for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

/* The decoder layer on one window x [T, D] as model_fwd.c computes it, up
 * to the input of the linears being calibrated; returns that input (or,
 * for UPTO_OUT, writes the layer's output to out). */
static const float *block_run(block *b, const float *x, int upto, float *out)
{
	const ft_config *c = &b->c;
	int T = b->T, D = b->D;
	float eps = (float)c->rms_norm_eps;
	ft_rmsnorm_forward(b->ln, b->rstd, x, b->ln1w, T, D, eps);
	if (upto == UPTO_LN1) return b->ln;
	ft_linear_forward(b->q, b->ln, b->w[M_Q], b->b[M_Q], T, D, b->qd);
	ft_linear_forward(b->k, b->ln, b->w[M_K], b->b[M_K], T, D, b->kd);
	ft_linear_forward(b->v, b->ln, b->w[M_V], b->b[M_V], T, D, b->kd);
	if (c->qk_norm) {   /* Qwen3: RMSNorm per head before RoPE */
		ft_rmsnorm_forward(b->q, b->rstd, b->q, b->qnw, T * c->num_attention_heads, c->head_dim, eps);
		ft_rmsnorm_forward(b->k, b->rstd, b->k, b->knw, T * c->num_key_value_heads, c->head_dim, eps);
	}
	ft_rope_forward(b->q, b->cos_t, b->sin_t, T, c->num_attention_heads, c->head_dim, b->rd);
	ft_rope_forward(b->k, b->cos_t, b->sin_t, T, c->num_key_value_heads, c->head_dim, b->rd);
	ft_attn_shape s = { 1, T, c->num_attention_heads, c->num_key_value_heads, c->head_dim,
			    c->sliding_window, NULL, 0, 0, NULL };   /* one calibration window: no padding */
	ft_attention_forward(b->att, b->lse, b->q, b->k, b->v, &s);
	if (upto == UPTO_ATT) return b->att;
	ft_linear_forward(b->tmp, b->att, b->w[M_O], b->b[M_O], T, b->qd, D);
	add_into(b->xmid, x, b->tmp, (size_t)T * D);
	ft_rmsnorm_forward(b->ln2, b->rstd, b->xmid, b->ln2w, T, D, eps);
	if (upto == UPTO_LN2) return b->ln2;
	ft_linear_forward(b->gate, b->ln2, b->w[M_GATE], b->b[M_GATE], T, D, b->F);
	ft_linear_forward(b->up, b->ln2, b->w[M_UP], b->b[M_UP], T, D, b->F);
	ft_swiglu_forward(b->h, b->gate, b->up, (size_t)T * b->F);
	if (upto == UPTO_H) return b->h;
	ft_linear_forward(b->tmp, b->h, b->w[M_DOWN], b->b[M_DOWN], T, b->F, D);
	add_into(out, b->xmid, b->tmp, (size_t)T * D);
	return out;
}

typedef struct {
	const ft_gptq_export_opts *o;
	ft_gptq_params p;
	block b;
	float *x, *xn;           /* layer inputs / outputs [nsamples, T, D] */
	qlinear *ql;             /* [L * NMOD] */
	int L;
} job;

static int quantize_one(job *J, int l, int j, ft_gptq_hessian *h)
{
	block *b = &J->b;
	ft_gptq_result r;
	if (ft_gptq_quantize(&J->p, b->w[j], b->out[j], b->in[j], h, &r) < 0)
		return ft_fail_ctx("model.layers.%d.%s: ", l, mod_name[j]);
	qlinear *q = &J->ql[l * NMOD + j];
	int bits = J->p.bits;
	q->rows = r.rows;
	q->cols = r.cols;
	q->ngroups = r.ngroups;
	q->qweight = ft_xmalloc(ft_gptq_qweight_rows(r.cols, bits) * r.rows * sizeof(int32_t));
	q->qzeros = ft_xmalloc((size_t)r.ngroups * ft_gptq_qzeros_cols(r.rows, bits) * sizeof(int32_t));
	q->scales = ft_xmalloc((size_t)r.ngroups * r.rows * sizeof *q->scales);
	ft_gptq_pack_qweight(&r, bits, q->qweight);
	ft_gptq_pack_qzeros(&r, bits, q->qzeros);
	ft_convert_from_f32(q->scales, FT_F16, r.scale, (size_t)r.ngroups * r.rows);
	q->g_idx = r.g_idx;
	r.g_idx = NULL;
	ft_gptq_result_free(&r);
	const ft_gptq_export_opts *o = J->o;
	if (o->progress && o->progress(o->progress_ctx, l, J->L, mod_name[j])) return ft_fail("interrupted");
	return 0;
}

/* One calibration pass: every window through the layer up to `upto`, the
 * captured inputs into h. */
static void calib_pass(job *J, int upto, ft_gptq_hessian *h, int n)
{
	ft_gptq_hessian_init(h, n);
	size_t TD = (size_t)J->b.T * J->b.D;
	for (int s = 0; s < J->o->nsamples; s++)
		ft_gptq_hessian_add(h, block_run(&J->b, J->x + s * TD, upto, NULL), J->b.T);
}

/* The modules of one pass: those sharing its input get copies of H. */
static int quantize_group(job *J, int l, int upto, const int *mods, int nm)
{
	ft_gptq_hessian h;
	calib_pass(J, upto, &h, J->b.in[mods[0]]);
	int rc = 0;
	for (int i = 0; i < nm && rc == 0; i++) {
		ft_gptq_hessian hc;
		if (i + 1 < nm) ft_gptq_hessian_copy(&hc, &h);
		rc = quantize_one(J, l, mods[i], i + 1 < nm ? &hc : &h);
		if (i + 1 < nm) ft_gptq_hessian_free(&hc);
	}
	ft_gptq_hessian_free(&h);
	return rc;
}

static int quantize_layers(job *J)
{
	size_t TD = (size_t)J->b.T * J->b.D;
	for (int l = 0; l < J->L; l++) {
		if (block_layer(&J->b, l) < 0) return -1;
		if (quantize_group(J, l, UPTO_LN1, (const int[]){ M_Q, M_K, M_V }, 3) < 0 ||
		    quantize_group(J, l, UPTO_ATT, (const int[]){ M_O }, 1) < 0 ||
		    quantize_group(J, l, UPTO_LN2, (const int[]){ M_GATE, M_UP }, 2) < 0 ||
		    quantize_group(J, l, UPTO_H, (const int[]){ M_DOWN }, 1) < 0)
			return -1;
		for (int s = 0; s < J->o->nsamples; s++)
			block_run(&J->b, J->x + s * TD, UPTO_OUT, J->xn + s * TD);
		float *t = J->x;
		J->x = J->xn;
		J->xn = t;
	}
	return 0;
}

/* ---- checks ---- */

static int check_model(const ft_config *c, int bits, const char *dir)
{
	if (c->gemma || c->fused || c->arch == FT_ARCH_GEMMA2 || c->arch == FT_ARCH_GEMMA3 || c->arch == FT_ARCH_PHI3)
		return ft_fail("%s: GPTQ export supports Llama, Mistral, Qwen2 and Qwen3 models", dir);
	if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
		return ft_fail("export_quantization_bit %d: GPTQ takes 2, 3, 4 or 8 bits (LLaMA-Factory: "
			       "\"AutoGPTQ only accepts 2/3/4/8-bit quantization.\")", bits);
	int D = c->hidden_size, qd = c->num_attention_heads * c->head_dim;
	int kd = c->num_key_value_heads * c->head_dim, F = c->intermediate_size;
	int dims[NMOD][2] = { { D, qd }, { D, kd }, { D, kd }, { qd, D }, { D, F }, { D, F }, { F, D } };
	for (int j = 0; j < NMOD; j++)
		if (dims[j][0] % 32 || dims[j][1] % 32)
			return ft_fail("%s: %s is %d x %d: GPTQ packing (gptqmodel's pack_block) needs in and out "
				       "features that are multiples of 32", dir, mod_name[j], dims[j][1], dims[j][0]);
	return 0;
}

/* ---- the directory ---- */

/* A decoder linear's weight name: its module index, layer in *l. */
static int linear_of(const char *name, int *l)
{
	int n = 0;
	if (sscanf(name, "model.layers.%d.%n", l, &n) != 1 || !n) return -1;
	for (int j = 0; j < NMOD; j++) {
		size_t ml = strlen(mod_name[j]);
		if (!strncmp(name + n, mod_name[j], ml) && !strcmp(name + n + ml, ".weight")) return j;
	}
	return -1;
}

typedef struct {
	char *name;
	ft_dtype dtype;
	int ndim;
	int64_t shape[FT_ST_MAX_DIMS];
	size_t nbytes;
	const void *data;         /* packed tensors */
	const ft_st_tensor *src;  /* or a base tensor (float ones converted to fp16) */
} out_tensor;

static void add_out(out_tensor **v, size_t *n, char *name, ft_dtype dt, int ndim, int64_t d0, int64_t d1,
		    const void *data, const ft_st_tensor *src)
{
	*v = ft_xrealloc(*v, (*n + 1) * sizeof **v);
	out_tensor *t = &(*v)[(*n)++];
	*t = (out_tensor){ .name = name, .dtype = dt, .ndim = ndim, .shape = { d0, d1 }, .data = data, .src = src };
	t->nbytes = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1) * ft_dtype_size(dt);
}

static int is_float(ft_dtype t) { return t == FT_F32 || t == FT_F16 || t == FT_BF16 || t == FT_F64; }

static void plan_tensors(job *J, const ft_st *st, out_tensor **v, size_t *n)
{
	int bits = J->p.bits;
	for (size_t i = 0; i < ft_st_count(st); i++) {
		const ft_st_tensor *t = ft_st_at(st, i);
		int l, j = linear_of(t->name, &l);
		if (j < 0 || l >= J->L) {
			ft_dtype dt = is_float(t->dtype) ? FT_F16 : t->dtype;
			add_out(v, n, ft_xstrdup(t->name), dt, 1, 1, 1, NULL, t);
			out_tensor *o = &(*v)[*n - 1];   /* any rank: the base's shape */
			o->ndim = t->ndim;
			memcpy(o->shape, t->shape, sizeof o->shape);
			o->nbytes = t->numel * ft_dtype_size(dt);
			continue;
		}
		const qlinear *q = &J->ql[l * NMOD + j];
		size_t base = strlen(t->name) - strlen("weight");
		char *pre = ft_xasprintf("%.*s", (int)base, t->name);
		add_out(v, n, ft_xasprintf("%sg_idx", pre), FT_I32, 1, q->cols, 1, q->g_idx, NULL);
		add_out(v, n, ft_xasprintf("%sqweight", pre), FT_I32, 2, (int64_t)ft_gptq_qweight_rows(q->cols, bits),
			q->rows, q->qweight, NULL);
		add_out(v, n, ft_xasprintf("%sqzeros", pre), FT_I32, 2, q->ngroups,
			(int64_t)ft_gptq_qzeros_cols(q->rows, bits), q->qzeros, NULL);
		add_out(v, n, ft_xasprintf("%sscales", pre), FT_F16, 2, q->ngroups, q->rows, q->scales, NULL);
		free(pre);
	}
}

static int put_out(ft_st_writer *w, const out_tensor *t)
{
	if (t->data) return ft_st_stream_put(w, t->data, t->nbytes);
	if (!is_float(t->src->dtype) || t->src->dtype == t->dtype) return ft_st_stream_put(w, t->src->data, t->nbytes);
	float *f = ft_xmalloc(t->src->numel * sizeof *f + 1);
	void *h = ft_xmalloc(t->nbytes + 1);
	int rc = ft_st_read_f32(t->src, f);
	if (rc == 0) {
		ft_convert_from_f32(h, t->dtype, f, t->src->numel);
		rc = ft_st_stream_put(w, h, t->nbytes);
	}
	free(f);
	free(h);
	return rc;
}

/* Shards greedy in name order, as merge.c plans them. */
static int write_shards(const out_tensor *v, size_t n, uint64_t max, const char *dir)
{
	size_t *shard = ft_xcalloc(n + 1, sizeof *shard), ns = 0;
	uint64_t cur = 0, total = 0, params = 0;
	for (size_t i = 0; i < n; i++) {
		if (cur > 0 && cur + v[i].nbytes > max) {
			ns++;
			cur = 0;
		}
		shard[i] = ns;
		cur += v[i].nbytes;
		total += v[i].nbytes;
		params += v[i].nbytes / ft_dtype_size(v[i].dtype);
	}
	ns++;
	int rc = 0;
	json_t *map = json_object();
	for (size_t s = 0; s < ns && rc == 0; s++) {
		char *name = ns == 1 ? ft_xstrdup("model.safetensors") : ft_st_shard_name((int)s + 1, (int)ns);
		char *path = ft_xasprintf("%s/%s", dir, name);
		ft_st_writer *w = ft_st_writer_new();
		ft_st_writer_meta(w, "format", "pt");
		for (size_t i = 0; i < n && rc == 0; i++)
			if (shard[i] == s) {
				rc = ft_st_writer_add(w, v[i].name, v[i].dtype, v[i].ndim, v[i].shape, NULL);
				json_object_set_new(map, v[i].name, json_string(name));
			}
		if (rc == 0) rc = ft_st_stream_begin(w, path);
		for (size_t i = 0; i < n && rc == 0; i++)
			if (shard[i] == s) rc = put_out(w, &v[i]);
		if (rc == 0) rc = ft_st_stream_end(w);
		else ft_st_stream_abort(w);
		ft_st_writer_free(w);
		if (rc < 0) ft_fail_ctx("%s: ", path);
		free(path);
		free(name);
	}
	if (rc == 0 && ns > 1) rc = ft_st_write_index(dir, map, total, params);
	json_decref(map);
	free(shard);
	return rc;
}

/* transformers' GPTQConfig after a calibration, as save_pretrained writes
 * it (optimum's to_dict: the keys below, the calibration samples as
 * "dataset", checkpoint_format gptq_v2). */
static json_t *quant_config(const job *J)
{
	const ft_gptq_export_opts *o = J->o;
	json_t *ds = json_array();
	for (int s = 0; s < o->nsamples; s++) {
		json_t *ids = json_array(), *mask = json_array();
		for (int t = 0; t < o->maxlen; t++) {
			json_array_append_new(ids, json_integer(o->windows[(size_t)s * o->maxlen + t]));
			json_array_append_new(mask, json_integer(1));
		}
		json_array_append_new(ds, json_pack("{s:[o],s:[o]}", "attention_mask", mask, "input_ids", ids));
	}
	return json_pack("{s:b,s:s,s:i,s:i,s:n,s:b,s:s,s:f,s:o,s:b,s:s,s:i,s:n,s:{s:[s]},s:n,s:n,s:n,s:n,"
			 "s:s,s:b,s:n,s:b}",
			 "act_group_aware", J->p.act_group_aware, "backend", "auto", "batch_size", 1,
			 "bits", J->p.bits, "block_name_to_quantize", "cache_block_outputs", 1,
			 "checkpoint_format", "gptq_v2", "damp_percent", J->p.damp_percent, "dataset", ds,
			 "desc_act", 0, "format", "gptq_v2", "group_size", J->p.group_size,
			 "max_input_length", "meta", "quantizer", "ft-merge", "model_seqlen",
			 "module_name_preceding_first_block", "modules_in_block_to_quantize", "pad_token_id",
			 "quant_method", "gptq", "sym", 1, "tokenizer", "true_sequential", 1);
}

/* config.json: the base's text with dtype float16 (merge.c's edit), the
 * quantization_config inserted before the closing brace. */
static int write_config(const job *J, const char *dir)
{
	if (ftp_export_write_config(J->o->model_dir, dir, FT_F16) < 0) return -1;
	char *path = ft_xasprintf("%s/config.json", dir), *text = NULL;
	size_t cap = 0;
	FILE *f = fopen(path, "rb");
	ssize_t len = f ? getdelim(&text, &cap, 0, f) : -1;
	if (f) fclose(f);
	json_t *qc = quant_config(J);
	/* 15 digits: 0.1 as Python writes it, not 0.10000000000000001 */
	char *q = json_dumps(qc, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
	json_decref(qc);
	int rc = -1;
	char *end = len > 0 ? strrchr(text, '}') : NULL;
	if (!end || !q) {
		ft_fail("%s: cannot add quantization_config", path);
	} else {
		while (end > text && (end[-1] == '\n' || end[-1] == ' ')) end--;
		FILE *o = fopen(path, "wb");
		int bad = !o || fprintf(o, "%.*s,\n  \"quantization_config\": ", (int)(end - text), text) < 0;
		for (const char *c = q; o && !bad && *c; c++)   /* nested one level deeper */
			bad = fputc(*c, o) < 0 || (*c == '\n' && fputs("  ", o) < 0);
		if (o && !bad) bad = fputs("\n}\n", o) < 0;
		if (o && fclose(o) != 0) bad = 1;
		rc = bad ? ft_fail("%s: write failed:", path) : 0;
	}
	free(q);
	free(text);
	free(path);
	return rc;
}

static uint64_t out_total(const out_tensor *v, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++) s += v[i].nbytes;
	return s;
}

static int write_dir(job *J)
{
	const ft_gptq_export_opts *o = J->o;
	ft_merge_opts mo = { .model_dir = o->model_dir, .export_dir = o->export_dir, .overwrite = o->overwrite };
	ft_st *st = ft_st_open(o->model_dir);
	if (!st) return -1;
	out_tensor *v = NULL;
	size_t n = 0;
	plan_tensors(J, st, &v, &n);
	int exists = 0, rc = -1;
	char *parent = NULL;
	ft_atomic dir = { 0 };
	if (ftp_export_dir_prepare(&mo, &exists, &parent) == 0 &&
	    ftp_export_disk_check(parent, out_total(v, n) + ftp_export_copied_size(&mo) + (uint64_t)n * 256 +
						  (uint64_t)o->nsamples * o->maxlen * 24 + 65536) == 0 &&
	    ft_atomic_dir_open(&dir, o->export_dir) == 0) {
		if (write_shards(v, n, o->shard_size ? o->shard_size : 5000000000ull, dir.tmp) < 0 ||
		    write_config(J, dir.tmp) < 0 || ftp_export_copy_files(&mo, dir.tmp) < 0)
			ft_atomic_dir_abort(&dir);
		else
			rc = ft_atomic_dir_commit(&dir, exists);
	}
	for (size_t i = 0; i < n; i++) free(v[i].name);
	free(v);
	free(parent);
	ft_st_close(st);
	return rc;
}

int ft_gptq_check_model(const char *model_dir, int bits)
{
	char *cfg = ft_xasprintf("%s/config.json", model_dir);
	ft_config c;
	int rc = ft_config_load(cfg, &c);
	free(cfg);
	return rc < 0 ? -1 : check_model(&c, bits, model_dir);
}

static int load(job *J)
{
	const ft_gptq_export_opts *o = J->o;
	if (ft_gptq_check_model(o->model_dir, o->bits) < 0) return -1;
	ft_tune_opts t = { .type = FT_FT_FREEZE };
	if (!(J->b.m = ft_model_load(o->model_dir, &t))) return -1;
	ft_model *m = J->b.m;
	if (block_init(&J->b, m, o->maxlen) < 0) return -1;
	J->L = J->b.c.num_hidden_layers;
	size_t TD = (size_t)o->maxlen * J->b.D, V = (size_t)J->b.c.vocab_size;
	for (size_t i = 0; i < (size_t)o->nsamples * o->maxlen; i++)
		if (o->windows[i] < 0 || (size_t)o->windows[i] >= V)
			return ft_fail("calibration token id %d is outside the model's vocabulary (%zu)", o->windows[i], V);
	const float *wte = ft_model_find_param(m, "model.embed_tokens.weight")->w;
	J->x = fa((size_t)o->nsamples * TD);
	J->xn = fa((size_t)o->nsamples * TD);
	for (int s = 0; s < o->nsamples; s++)
		ft_embedding_forward(J->x + s * TD, o->windows + (size_t)s * o->maxlen, wte, o->maxlen, J->b.D);
	J->ql = ft_xcalloc((size_t)J->L * NMOD, sizeof *J->ql);
	return 0;
}

int ft_gptq_export(const ft_gptq_export_opts *o)
{
	if (!o->model_dir || !o->export_dir || !*o->export_dir || !o->windows || o->nsamples <= 0 || o->maxlen <= 0)
		return ft_fail("GPTQ export: a model, an export directory and calibration windows are needed");
	if (o->threads > 0) omp_set_num_threads(o->threads);
	/* "out/" names the directory "out": the temporary sibling must not land inside it */
	ft_gptq_export_opts oo = *o;
	char *export_dir = ft_xstrdup(o->export_dir);
	for (size_t n = strlen(export_dir); n > 1 && export_dir[n - 1] == '/';) export_dir[--n] = 0;
	oo.export_dir = export_dir;
	o = &oo;
	job J = { .o = o, .p = ft_gptq_defaults(o->bits) };
	int rc = load(&J);
	if (rc == 0) rc = quantize_layers(&J);
	if (rc == 0) rc = write_dir(&J);
	for (int i = 0; J.ql && i < J.L * NMOD; i++) {
		free(J.ql[i].qweight);
		free(J.ql[i].qzeros);
		free(J.ql[i].scales);
		free(J.ql[i].g_idx);
	}
	free(J.ql);
	free(J.x);
	free(J.xn);
	free(export_dir);
	if (J.b.m) {
		block_free(&J.b);
		ft_model_free(J.b.m);
	}
	return rc;
}
