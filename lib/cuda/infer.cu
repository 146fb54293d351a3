/* infer.cu - KV-cache decoding on the device, mirroring lib/model/infer.c
 * function by function (layer_step, cached_attention, head_logits, ...).
 *
 * The weights and the per-token buffers are a forward-only ft_cuda_model
 * (ft_cuda_opts.inference: no gradients, AdamW state or masters, one
 * activation set) planned for the prefill batch [rows, max_prompt]; the
 * K/V cache, the decode scores and the token maps are one more device
 * allocation, planned together with it before either is made.
 *
 * Two paths, one contract (ft_infer_forward's):
 *  - prefill, when every row a call names starts empty: the prompts are
 *    right-padded into one [B, T] batch and run through layer.cu's
 *    layer_forward (the training attention: causal, so no real token sees
 *    a pad), and each layer's rotated keys and values are scattered into
 *    the cache;
 *  - otherwise (decoding): each token attends over its row's cache with
 *    cache_attention_k below (one block per token and query head), at most
 *    `rows` tokens per pass.
 * Positions, validation and the padded layout are the CPU's own
 * (lib/model/infer_batch.c, called back in the executable); only the
 * logits rows asked for are copied to the host, where sampling stays.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"

extern "C" {
#include "model/infer_batch.h"
#include "model/layers.h"
}

#define ATPB 128                        /* threads per decode-attention block */
#define CTX_MARGIN ((size_t)768 << 20)  /* CUDA context + cuBLAS, as model.cu */
#define GIB(x) ((double)(x) / (1 << 30))

struct ft_cuda_infer {
	ft_cuda_infer_opts o;
	ft_cuda_infer_plan plan;
	ft_cuda_model *dm;             /* weights and per-token buffers */
	int L, kd, nmap;
	void *mem;                     /* cache + decode buffers */
	int at;                        /* the cache's element type (ft_cu_proj_type) */
	void *k, *v;                   /* [L][rows][cap][kd], rotated keys and values */
	float *scores;                 /* [rows][Hq][cap] */
	int32_t *mrow, *mpos;          /* [nmap] cache row and position per token */
	int32_t *h_mrow, *h_mpos;      /* host copies */
	int *len;                      /* [rows] tokens held (host) */
	uint64_t forwards;             /* NEFTune's stream while sampling (the CPU cache's) */
};

static size_t round256(size_t b) { return (b + 255) & ~(size_t)255; }

/* The cache's element type: the q|k|v output's (ft_cu_proj_type), so
 * the keys and values are stored as the projection and RoPE wrote them
 * (bf16/fp16: a transformers model in that dtype caches the same). */
static int cache_type(ft_cuda_precision p)
{
	return p == FT_CUDA_BF16 ? FT_ACT_BF16 : p == FT_CUDA_F16 ? FT_ACT_F16 : FT_ACT_F32;
}

static int check_opts(const ft_cuda_infer_opts *o)
{
	if (o->rows < 1 || o->cap < 1 || o->max_prompt < 1 || o->max_prompt > o->cap)
		return ft_fail("CUDA decoder: rows %d, cap %d and max_prompt %d must be positive, "
			       "max_prompt <= cap", o->rows, o->cap, o->max_prompt);
	return 0;
}

static ft_cuda_opts model_opts(const ft_cuda_infer_opts *o)
{
	ft_cuda_opts mo;
	memset(&mo, 0, sizeof mo);
	mo.precision = o->precision;
	mo.device = o->device;
	mo.max_tokens = o->rows * o->max_prompt;
	mo.max_seq = o->max_prompt;
	mo.inference = 1;
	mo.weights_of = o->weights_of;
	return mo;
}

int ft_cuda_infer_plan_memory(const ft_cuda_view *v, const ft_cuda_infer_opts *o,
			      ft_cuda_infer_plan *p)
{
	memset(p, 0, sizeof *p);
	TRY(check_opts(o));
	ft_cuda_opts mo = model_opts(o);
	TRY(ft_cuda_plan_memory(v, &mo, &p->model));
	size_t kd = (size_t)v->Hk * v->hd, rows = o->rows, cap = o->cap;
	size_t es = ft_cu_act_size(cache_type(o->precision));
	p->kv = 2 * round256((size_t)v->L * rows * cap * kd * es);
	p->decode = round256(rows * v->Hq * cap * sizeof(float)) +
		    2 * round256((size_t)mo.max_tokens * sizeof(int32_t));
	p->total = p->model.total + p->kv + p->decode;
	return 0;
}

void ft_cuda_infer_plan_format(const ft_cuda_infer_plan *p, char *buf, size_t n)
{
	snprintf(buf, n, "%.2f GiB (weights %.2f, KV cache %.2f, prefill buffers %.2f, "
		 "decode %.2f)", GIB(p->total), GIB(p->model.weights), GIB(p->kv),
		 GIB(p->model.acts + p->model.scratch), GIB(p->decode));
}

/* The plan against the device's free memory (or o->mem_limit), before
 * anything is allocated; the message says what to lower. */
static int fits(const ft_cuda_infer *c)
{
	CU(cudaSetDevice(c->o.device), "device %d", c->o.device);
	size_t fr = 0, tot = 0;
	CU(cudaMemGetInfo(&fr, &tot), "device %d", c->o.device);
	size_t avail = c->o.mem_limit ? c->o.mem_limit : fr;
	avail = avail > CTX_MARGIN ? avail - CTX_MARGIN : 0;
	if (c->plan.total <= avail)
		return 0;
	char what[256];
	ft_cuda_infer_plan_format(&c->plan, what, sizeof what);
	int f32 = c->o.precision == FT_CUDA_F32, big_kv = c->plan.kv > c->plan.total / 3;
	const ft_cuda_infer_knobs *k = &c->o.knobs;
	const char *rows = k->rows ? k->rows : "the number of sequences decoded together";
	const char *len = big_kv ? (k->new_tokens ? k->new_tokens : "the new tokens per sequence")
				 : (k->prompt ? k->prompt : "the prompt length");
	char tip[512];
	snprintf(tip, sizeof tip, "%slower %s or %s%s", f32 ? "use --bf16 (half-precision weights and KV "
		 "cache), or " : "", rows, len, f32 || big_kv ? "" : ", or use a GPU with more memory");
	return ft_fail("the GPU has %.2f GiB available but generation needs %s for %d "
		       "sequences of up to %d tokens: %s", GIB(avail), what, c->o.rows, c->o.cap,
		       tip);
}

static int alloc_cache(ft_cuda_infer *c, const ft_cuda_view *v)
{
	size_t bytes = c->plan.kv + c->plan.decode;
	CU(cudaMalloc(&c->mem, bytes), "%zu bytes (KV cache and decode buffers)", bytes);
	char *p = (char *)c->mem;
	size_t half_kv = c->plan.kv / 2;
	c->k = p; p += half_kv;
	c->v = p; p += half_kv;
	c->scores = (float *)p;
	p += round256((size_t)c->o.rows * v->Hq * c->o.cap * sizeof(float));
	c->mrow = (int32_t *)p; p += round256((size_t)c->nmap * sizeof(int32_t));
	c->mpos = (int32_t *)p;
	return 0;
}

ft_cuda_infer *ft_cuda_infer_new(struct ft_model *m, const ft_cuda_infer_opts *o)
{
	ft_cuda_view v;
	if (ft_cuda_view_of(m, &v) < 0)
		return NULL;
	ft_cuda_infer *c = (ft_cuda_infer *)ft_xcalloc(1, sizeof *c);
	c->o = *o;
	c->L = v.L;
	c->kd = v.Hk * v.hd;
	c->nmap = o->rows * o->max_prompt;
	c->at = cache_type(o->precision);
	int rc = ft_cuda_infer_plan_memory(&v, o, &c->plan);
	if (rc == 0)
		rc = fits(c);
	if (rc == 0) {
		ft_cuda_opts mo = model_opts(o);
		mo.mem_limit = o->mem_limit;
		c->dm = ft_cuda_model_new(m, &mo);
		rc = c->dm ? alloc_cache(c, &v) : -1;
		if (rc == 0 && ft_cu_proj_type(c->dm) != c->at)   /* the planned cache = q|k|v's type */
			rc = ft_fail("internal: CUDA decoder: cache type %d, q|k|v type %d", c->at,
				     ft_cu_proj_type(c->dm));
	}
	ft_cuda_view_free(&v);
	if (rc < 0) {
		ft_cuda_infer_free(c);
		return NULL;
	}
	c->dm->training = 0;
	c->h_mrow = (int32_t *)ft_xmalloc((size_t)c->nmap * sizeof(int32_t));
	c->h_mpos = (int32_t *)ft_xmalloc((size_t)c->nmap * sizeof(int32_t));
	c->len = (int *)ft_xcalloc(o->rows, sizeof(int));
	return c;
}

void ft_cuda_infer_free(ft_cuda_infer *c)
{
	if (!c)
		return;
	ft_cuda_model_free(c->dm);
	if (c->mem)
		cudaFree(c->mem);
	free(c->h_mrow);
	free(c->h_mpos);
	free(c->len);
	free(c);
}

/* The host model's generation settings read again (GRPO's NEFTune
 * stream), the tensors the host model trains (those with a host
 * gradient: its adapters, or every weight of a full fine-tuning) uploaded
 * again (none over another model's weights: they are the trained ones), and
 * what decoding computes from them once (DoRA's factors, OFT's
 * rotations) marked stale; the frozen base stays as uploaded. */
int ft_cuda_infer_refresh(ft_cuda_infer *c)
{
	ft_cuda_model *dm = c->dm;
	TRY(ft_cuda_sync(dm));
	/* the host model's per-generation settings: GRPO's sampling noise
	 * (on, and this generation's stream) */
	ft_cuda_view hv;
	TRY(ft_cuda_view_of(dm->host, &hv));
	dm->v.neftune_alpha = hv.neftune_alpha;
	dm->v.gen_neftune = hv.gen_neftune;
	dm->v.gen_neftune_stream = hv.gen_neftune_stream;
	ft_cuda_view_free(&hv);
	if (dm->o.weights_of)   /* its optimizer steps are on its own stream */
		TRY(ft_cuda_sync(dm->o.weights_of));
	for (int i = 0; !dm->o.weights_of && i < dm->ntens; i++)
		if (dm->tens[i].hg)
			TRY(ft_cu_upload(dm, &dm->tens[i]));
	for (int l = 0; l < dm->v.L; l++)
		for (int j = 0; j < FT_CV_NLIN; j++) {
			dm->layers[l].lora[j].dora_ready = 0;
			dm->layers[l].oft[j].rot_ready = 0;
		}
	return 0;
}

const ft_cuda_infer_opts *ft_cuda_infer_options(const ft_cuda_infer *c) { return &c->o; }
const ft_cuda_infer_plan *ft_cuda_infer_get_plan(const ft_cuda_infer *c) { return &c->plan; }
void ft_cuda_infer_reset(ft_cuda_infer *c)
{
	memset(c->len, 0, c->o.rows * sizeof(int));
	c->forwards = 0;   /* a fresh cache, as the CPU's ft_kvcache_new */
}
int ft_cuda_infer_len(const ft_cuda_infer *c, int row) { return c->len[row]; }

/* ---- kernels ---- */

/* Token i's rotated key and value (token strides ldk, ldv: columns of
 * the fused q|k|v buffer) into its row's slot, copied as they are (E:
 * float, or uint16_t for bf16/fp16); mpos < 0: a pad. */
template <class E>
static __global__ void kv_store_k(E *kc, E *vc, const E *k, int ldk, const E *v, int ldv,
				  const int32_t *mrow, const int32_t *mpos, int n, int kd, int cap)
{
	size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (idx >= (size_t)n * kd)
		return;
	int i = (int)(idx / kd), e = (int)(idx % kd);
	if (mpos[i] < 0)
		return;
	size_t dst = ((size_t)mrow[i] * cap + mpos[i]) * kd + e;
	kc[dst] = k[(size_t)i * ldk + e];
	vc[dst] = v[(size_t)i * ldv + e];
}

/* As cached_attention in lib/model/infer.c: query head h of token i over
 * positions [first, pos] of its row (GQA: kv head h / group; sliding
 * window), scores in global scratch (Gemma 2: soft-capped), softmax,
 * then each output element summed over the positions in order.  One
 * block per (i, h).  q, the cache and out are of type AT (fp32, or the
 * run's half type; a template argument, so the loads compile to one
 * kind): each element is widened where it is read, the dot products,
 * the softmax and the weighted sums are fp32, and out is rounded once,
 * as SDPA on bf16 tensors accumulates in fp32. */
template <int AT>
static __global__ void cache_attention_k(void *out, const void *q, int ldq, const void *kc,
					 const void *vc, const int32_t *mrow,
					 const int32_t *mpos, float *scores, int Hq, int Hk,
					 int hd, int window, int cap, float scale, float softcap)
{
	__shared__ float sh[ATPB];
	int i = blockIdx.x, h = blockIdx.y, kd = Hk * hd, kvh = h / (Hq / Hk);
	int p = mpos[i], first = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
	size_t qi = (size_t)i * ldq + (size_t)h * hd;
	size_t K = (size_t)mrow[i] * cap * kd + (size_t)kvh * hd;   /* = V's */
	float *s = scores + ((size_t)i * Hq + h) * cap;
	float mx = -INFINITY;
	for (int t = first + threadIdx.x; t <= p; t += blockDim.x) {
		size_t kt = K + (size_t)t * kd;
		float d = 0;
		for (int e = 0; e < hd; e++)
			d += ft_k_act_get(q, qi + e, AT) * ft_k_act_get(kc, kt + e, AT);
		s[t] = softcap > 0 ? ft_k_softcap(d * scale, softcap) : d * scale;
		mx = fmaxf(mx, s[t]);
	}
	mx = ft_cu_block_max(mx, sh);
	float z = 0;
	for (int t = first + threadIdx.x; t <= p; t += blockDim.x)
		z += s[t] = expf(s[t] - mx);
	z = ft_cu_block_sum(z, sh);   /* its barriers also publish s[] to the block */
	size_t o = ((size_t)i * Hq + h) * hd;
	for (int e = threadIdx.x; e < hd; e += blockDim.x) {
		float acc = 0;
		for (int t = first; t <= p; t++)
			acc += s[t] / z * ft_k_act_get(vc, K + (size_t)t * kd + e, AT);
		ft_k_act_put(out, o + e, acc, AT);
	}
}

/* ---- the decoder (mirrors lib/model/infer.c) ---- */

static int upload(ft_cuda_model *dm, void *dst, const void *src, size_t bytes, const char *what)
{
	CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, dm->stream),
	   "%s, %zu bytes", what, bytes);
	return 0;
}

/* The layer's bound keys and values (a->k, a->v) into the cache. */
static int kv_store(ft_cuda_infer *c, int l, const ft_dacts *a, int n)
{
	size_t off = (size_t)l * c->o.rows * c->o.cap * c->kd, tot = (size_t)n * c->kd;
	unsigned blocks = (unsigned)((tot + 255) / 256);
	if (c->at == FT_ACT_F32)
		FT_LAUNCH(kv_store_k<float>, blocks, 256, 0, c->dm->stream)(
			(float *)c->k + off, (float *)c->v + off, (const float *)a->k, a->ldk,
			(const float *)a->v, a->ldv, c->mrow, c->mpos, n, c->kd, c->o.cap);
	else
		FT_LAUNCH(kv_store_k<uint16_t>, blocks, 256, 0, c->dm->stream)(
			(uint16_t *)c->k + off, (uint16_t *)c->v + off, (const uint16_t *)a->k, a->ldk,
			(const uint16_t *)a->v, a->ldv, c->mrow, c->mpos, n, c->kd, c->o.cap);
	LAUNCHED("kv_store", "layer %d, %d tokens, kv dim %d", l, n, c->kd);
	return 0;
}

template <int AT>
static void cache_attention_as(const ft_cuda_infer *c, int l, void *out, const void *q, int ldq,
			       int n, size_t off)
{
	const ft_cuda_view *v = &c->dm->v;
	dim3 grid((unsigned)n, (unsigned)v->Hq);
	/* Gemma: the window of its sliding layers only, query_pre_attn_scalar */
	int window = !v->gemma || ft_cuda_view_sliding(v, l) ? v->window : 0;
	float scale = v->gemma ? v->attn_scale : 1.0f / sqrtf((float)v->hd);
	FT_LAUNCH(cache_attention_k<AT>, grid, ATPB, 0, c->dm->stream)(
		out, q, ldq, (const char *)c->k + off, (const char *)c->v + off, c->mrow, c->mpos,
		c->scores, v->Hq, v->Hk, v->hd, window, c->o.cap, scale, v->attn_softcap);
}

static int cached_attention(ft_cuda_infer *c, int l, void *out, const void *q, int ldq, int n)
{
	const ft_cuda_view *v = &c->dm->v;
	size_t off = (size_t)l * c->o.rows * c->o.cap * c->kd * ft_cu_act_size(c->at);
	if (c->at == FT_ACT_BF16)
		cache_attention_as<FT_ACT_BF16>(c, l, out, q, ldq, n, off);
	else if (c->at == FT_ACT_F16)
		cache_attention_as<FT_ACT_F16>(c, l, out, q, ldq, n, off);
	else
		cache_attention_as<FT_ACT_F32>(c, l, out, q, ldq, n, off);
	LAUNCHED("cache_attention", "layer %d, %d tokens, %d heads, cap %d", l, n, v->Hq,
		 c->o.cap);
	return 0;
}

/* x += dm->tmp, through Gemma's post norm (weight t; rstd2 free at both
 * points) first, as post_norm in infer.c.  The norm runs in place on
 * dm->tmp (each element is read and then written by the same thread,
 * after the row's sum): a->ln2 may be half, and this sum is the fp32
 * residual stream. */
static int residual(ft_cuda_model *dm, float *x, const ft_dt *t, ft_dacts *a, int n)
{
	const ft_cuda_view *v = &dm->v;
	const float *w;
	if (v->gemma) {
		TRY(ft_cu_norm_w(dm, t, v->D, &w));
		TRY(ft_cu_rmsnorm_forward(dm, dm->tmp, a->rstd2, dm->tmp, w, n, v->D, v->eps));
	}
	return ft_cu_add(dm, x, x, dm->tmp, (size_t)n * v->D);
}

/* One layer for n tokens whose positions and maps are uploaded, as
 * layer_step in lib/model/infer.c. */
static int layer_step(ft_cuda_infer *c, int l, float *x, int n)
{
	ft_cuda_model *dm = c->dm;
	const ft_cuda_view *v = &dm->v;
	ft_dacts *a = &dm->acts[0];
	ft_dlayer *y = &dm->layers[l];
	const float *w;
	TRY(ft_cu_norm_w(dm, y->ln1, v->D, &w));
	TRY(ft_cu_rmsnorm_forward_act(dm, a->ln1, a->rstd1, x, w, n, v->D, v->eps));
	TRY(ft_cu_attn_inputs(dm, l, a, n));   /* q|k|v, q/k norms, RoPE */
	TRY(kv_store(c, l, a, n));
	TRY(cached_attention(c, l, a->att, a->q, a->ldq, n));   /* of ft_cu_proj_type */
	TRY(ft_cu_lin_forward(dm, l, 3, a, dm->tmp, ft_cu_proj_mat(dm, a->att), n));
	TRY(residual(dm, x, y->ln2, a, n));
	TRY(ft_cu_norm_w(dm, v->gemma ? y->ln3 : y->ln2, v->D, &w));
	TRY(ft_cu_rmsnorm_forward_act(dm, a->ln2, a->rstd2, x, w, n, v->D, v->eps));
	TRY(ft_cu_mlp_in_forward(dm, l, a, n));   /* gate|up, SwiGLU / GeGLU */
	TRY(ft_cu_lin_forward(dm, l, 6, a, dm->tmp, ft_cu_act(dm, dm->hbuf), n));
	TRY(residual(dm, x, y->ln4, a, n));
	return 0;
}

/* RoPE tables for the n positions in dm->h_pos (inverse frequencies for
 * the call's largest position, as rope_setup in infer.c), the token ids in
 * dm->h_ids and the maps, uploaded. */
static int upload_tokens(ft_cuda_infer *c, int n, int maxpos)
{
	ft_cuda_model *dm = c->dm;
	size_t ni = (size_t)n * sizeof(int32_t);
	TRY(ft_cu_rope_upload(dm, n, maxpos));
	TRY(upload(dm, dm->ids, dm->h_ids, ni, "token ids"));
	TRY(upload(dm, c->mrow, c->h_mrow, ni, "cache rows"));
	TRY(upload(dm, c->mpos, c->h_mpos, ni, "cache positions"));
	return 0;
}

/* As head_logits in infer.c: the rows dm->h_rows[0..n) of x through the
 * final norm and the LM head; their logits (only) to the host. */
static int head_logits(ft_cuda_infer *c, const float *x, int n, float *logits)
{
	if (n == 0)
		return 0;
	ft_cuda_model *dm = c->dm;
	int D = dm->v.D;
	for (int j = 0; j < n; j++)
		dm->h_targets[j] = -100;   /* no loss: the head only */
	TRY(upload(dm, dm->rows, dm->h_rows, (size_t)n * 4, "logits rows"));
	TRY(upload(dm, dm->targets, dm->h_targets, (size_t)n * 4, "targets"));
	TRY(ft_cu_gather_rows(dm, dm->head_x, x, dm->rows, n, D));
	const float *w;
	TRY(ft_cu_norm_w(dm, dm->norm, D, &w));
	TRY(ft_cu_rmsnorm_forward(dm, dm->lnf, dm->rstdf, dm->head_x, w, n, D, dm->v.eps));
	double loss;
	return ft_cu_lm_head_loss(dm, NULL, logits, dm->lnf, dm->targets, n, 1, &loss);
}

/* The n tokens dm->ids' embeddings into x (Gemma: times sqrt(hidden)). */
static int embed(ft_cuda_model *dm, float *x, int n)
{
	int D = dm->v.D;
	TRY(ft_cu_embedding_forward(dm, x, dm->ids, dm->wte, n, D));
	if (dm->v.gemma)
		TRY(ft_cu_scale(dm, x, (float)sqrt((double)D), (size_t)n * D));
	return 0;
}

/* The staging buffers are pinned, so their uploads are truly asynchronous:
 * wait for the previous pass before writing them again. */
static int staging_free(ft_cuda_infer *c)
{
	CU(cudaStreamSynchronize(c->dm->stream), "%s", "before reusing the host staging");
	return 0;
}

/* Prefill: the padded [B, T] batch through the training layers. */
static int prefill(ft_cuda_infer *c, const ft_infer_batch *p, const int32_t *tokens,
		   const int *rows, const float *noise, float *logits)
{
	ft_cuda_model *dm = c->dm;
	int B = p->B, T = p->T, N = B * T, D = dm->v.D;
	TRY(staging_free(c));
	ft_infer_batch_prefill_maps(p, tokens, rows, dm->h_ids, dm->h_pos, c->h_mrow, c->h_mpos);
	TRY(upload_tokens(c, N, p->maxpos));
	float *x = dm->xs, *y = dm->xs + (size_t)N * D;
	TRY(embed(dm, x, N));
	if (noise)   /* each token's at its slot of the padded batch */
		TRY(ft_cu_neftune_tokens(dm, x, noise, p->slot, p->N, N));
	ft_cuda_batch b;
	memset(&b, 0, sizeof b);
	b.B = B, b.T = T, b.input_ids = dm->h_ids;
	for (int l = 0; l < c->L; l++) {
		ft_dacts *a = &dm->acts[0];
		TRY(ft_cu_layer_forward(dm, l, a, x, y, &b));
		TRY(kv_store(c, l, a, N));
		float *t = x; x = y; y = t;
	}
	for (int j = 0; j < p->nwant; j++)
		dm->h_rows[j] = p->slot[p->want_idx[j]];
	return head_logits(c, x, p->nwant, logits);
}

/* Tokens [i0, i0 + n) over the cache; the logits of the wanted ones to
 * `logits` (this pass's first row). */
static int cache_pass(ft_cuda_infer *c, const ft_infer_batch *p, const int32_t *tokens,
		      const int *rows, const int *want, const float *noise, int i0, int n, float *logits)
{
	ft_cuda_model *dm = c->dm;
	int nw = 0;
	TRY(staging_free(c));
	for (int k = 0; k < n; k++) {
		dm->h_ids[k] = tokens[i0 + k];
		dm->h_pos[k] = p->pos[i0 + k];
		c->h_mrow[k] = rows[i0 + k];
		c->h_mpos[k] = p->pos[i0 + k];
		if (!want || want[i0 + k])
			dm->h_rows[nw++] = k;
	}
	TRY(upload_tokens(c, n, p->maxpos));
	float *x = dm->xs;
	TRY(embed(dm, x, n));
	if (noise)
		TRY(ft_cu_neftune_tokens(dm, x, noise + (size_t)i0 * dm->v.D, NULL, n, n));
	for (int l = 0; l < c->L; l++)
		TRY(layer_step(c, l, x, n));
	return head_logits(c, x, nw, logits);
}

int ft_cuda_infer_forward(ft_cuda_infer *c, const int32_t *tokens, const int *rows, int N,
			  const int *want, float *logits)
{
	if (N <= 0)
		return 0;
	ft_infer_batch p;
	TRY(ft_infer_batch_plan(&p, c->len, c->o.rows, c->o.cap, c->dm->v.V, tokens, rows, N,
				want));
	c->dm->training = 0;
	int rc = 0;
	/* GRPO's sampling noise: the CPU decoder's floats for the whole
	 * forward, whichever path places them */
	float *noise = NULL;
	if (c->dm->v.gen_neftune && c->dm->v.neftune_alpha > 0) {
		noise = (float *)ft_xmalloc((size_t)N * c->dm->v.D * sizeof(float));
		ft_cuda_view_neftune_tokens(&c->dm->v, noise, rows, N, c->o.rows, c->forwards++);
	}
	if (p.prefill && p.T <= c->o.max_prompt) {
		rc = prefill(c, &p, tokens, rows, noise, logits);
	} else {
		size_t V = c->dm->v.V, done = 0;
		for (int i0 = 0; rc == 0 && i0 < N; i0 += c->o.rows) {
			int n = N - i0 < c->o.rows ? N - i0 : c->o.rows;
			float *lg = logits ? logits + done * V : NULL;
			rc = cache_pass(c, &p, tokens, rows, want, noise, i0, n, lg);
			for (int k = 0; k < n; k++)
				done += !want || want[i0 + k];
		}
	}
	if (rc == 0)
		ft_infer_batch_commit(&p, rows, c->len);
	ft_infer_batch_free(&p);
	free(noise);
	return rc;
}
