/* merge_lora.c - PEFT LoRA adapters: read, check, apply (see merge.h).
 *
 * Tensor names as PEFT saves them (adapter name stripped), or with
 * ".default" as older PEFT wrote them:
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_A[.default].weight  [r, in]
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_B[.default].weight  [out, r]
 *   base_model.model.<name>.lora_B[.default].bias   (lora_bias=True)
 *   base_model.model.<name>.lora_magnitude_vector[.default.weight]  [out]  (DoRA)
 *   base_model.model.<name>                          (modules_to_save: replaces <name>)
 * and PEFT OFT adapters (peft_type OFT, format/adapter_oft.h):
 *   base_model.model.<name>.oft_R[.default].weight   [r, b(b-1)/2]
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/error.h"
#include "export/merge.h"
#include "format/adapter_config.h"
#include "format/adapter_oft.h"
#include "format/safetensors.h"
#include "model/layers.h"

#define PREFIX "base_model.model."

/* The linear layers of the decoder layers ft loads (lib/model/arch.c). */
static const char *const known_modules[] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
	"qkv_proj", "gate_up_proj",   /* Phi-3's fused modules */
};

typedef struct {
	char *module;                 /* "model.layers.0.self_attn.q_proj" */
	const ft_st_tensor *A, *B, *Bbias;
	const ft_st_tensor *mag;      /* DoRA's lora_magnitude_vector [out] */
	const ft_st_tensor *oft;      /* OFT's oft_R.weight [r, b(b-1)/2] */
	int oft_b;
	int r;
	int layer, lin;               /* PiSSA: decoder layer, ft's linear index (ft_pissa_seed) */
	double alpha, scale;
} lora_mod;

typedef struct {
	char *name;                   /* base tensor replaced (modules_to_save) */
	const ft_st_tensor *t;
} lora_full;

struct ft_lora {
	char *dir;
	ft_adapter_config cfg;        /* r and alpha per module, rslora */
	ft_st *st;
	lora_mod *m;
	size_t nm;
	lora_full *full;
	size_t nfull;
	int pissa, pissa_iter;        /* PiSSA: merged onto the residual its init leaves */
};

static int known_module(const char *module)
{
	const char *dot = strrchr(module, '.');
	const char *last = dot ? dot + 1 : module;
	for (size_t i = 0; i < sizeof known_modules / sizeof *known_modules; i++)
		if (!strcmp(last, known_modules[i])) return 1;
	return 0;
}

static int check_config(const ft_adapter_config *c)
{
	const char *cfg = c->path;
	if (!c->peft_type) return ft_fail("%s: no peft_type (not a PEFT adapter)", cfg);
	int oft = !strcmp(c->peft_type, "OFT");
	if (strcmp(c->peft_type, "LORA") != 0 && !oft)
		return ft_fail("%s: peft_type is %s; only LoRA and OFT adapters can be merged", cfg, c->peft_type);
	const char *no = !oft ? NULL : c->coft ? "coft (constrained OFT)" : c->block_share ? "block_share"
		       : !c->use_cayley_neumann ? "use_cayley_neumann false (the exact Cayley transform)"
		       : strcmp(c->bias, "none") ? "an OFT bias" : NULL;
	if (no)
		return ft_fail("%s: %s is not implemented in ft yet", cfg, no);
	int niter;
	if (c->init_lora_weights && !ft_adapter_config_pissa(c, &niter))   /* olora, corda, loftq, ... */
		return ft_fail("%s: init_lora_weights \"%s\": the adapter was trained on a base its init "
			       "changed, which ft-merge recomputes only for PiSSA (pissa, pissa_niter_K)", cfg,
			       c->init_lora_weights);
	if (c->fan_in_fan_out)
		return ft_fail("%s: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported", cfg);
	static const char *const unsupported[] = {
		"target_parameters", "trainable_token_indices", "layer_replication", "alora_invocation_tokens",
	};
	for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
		if (ft_adapter_config_sets(c, unsupported[i]))
			return ft_fail("%s: %s is not supported", cfg, unsupported[i]);
	/* a string target_modules is a regular expression; the tensor names
	 * are checked one by one below instead */
	for (size_t i = 0; i < c->n_target_modules; i++)
		if (!known_module(c->target_modules[i]))
			return ft_fail("%s: unknown target module '%s' (ft-merge knows q_proj k_proj v_proj "
				       "o_proj gate_proj up_proj down_proj, Phi-3's qkv_proj gate_up_proj)", cfg,
				       c->target_modules[i]);
	return 0;
}

static lora_mod *module_for(ft_lora *l, const char *module)
{
	for (size_t i = 0; i < l->nm; i++)
		if (!strcmp(l->m[i].module, module)) return &l->m[i];
	l->m = ft_xrealloc(l->m, (l->nm + 1) * sizeof *l->m);
	lora_mod *m = &l->m[l->nm++];
	memset(m, 0, sizeof *m);
	m->module = ft_xstrdup(module);
	return m;
}

/* The module a tensor name names up to `end` (name[0..end)), known and
 * created on first use; NULL after ft_fail naming the tensor. */
static lora_mod *module_at(ft_lora *l, const char *file, const ft_st_tensor *t, const char *name,
			   const char *end)
{
	char *module = ft_xasprintf("%.*s", (int)(end - name), name);
	lora_mod *m = known_module(module) ? module_for(l, module) : NULL;
	if (!m)
		ft_fail("%s: tensor %s: unknown target module '%s' (ft-merge knows q_proj k_proj v_proj o_proj "
			"gate_proj up_proj down_proj, Phi-3's qkv_proj gate_up_proj)", file, t->name, module);
	free(module);
	return m;
}

/* DoRA: "<module>.lora_magnitude_vector" as PEFT saves it (or with
 * ".default.weight" as its state dict names it). */
static int place_magnitude(ft_lora *l, const char *file, const ft_st_tensor *t, const char *name,
			   const char *mg)
{
	const char *rest = mg + strlen(".lora_magnitude_vector");
	if (*rest && strcmp(rest, ".default.weight") && strcmp(rest, ".weight"))
		return ft_fail("%s: tensor %s: unexpected name after lora_magnitude_vector", file, t->name);
	if (!l->cfg.use_dora)
		return ft_fail("%s: tensor %s: a DoRA magnitude, but adapter_config.json has no use_dora", file,
			       t->name);
	lora_mod *m = module_at(l, file, t, name, mg);
	if (!m) return -1;
	if (m->mag) return ft_fail("%s: tensor %s appears twice", file, t->name);
	m->mag = t;
	return 0;
}

static int check_float(const char *file, const ft_st_tensor *t);

/* OFT: "<module>.oft_R.weight" (".oft_R.default.weight" in a state dict). */
static int place_oft(ft_lora *l, const char *file, const ft_st_tensor *t, const char *name, const char *o)
{
	const char *rest = o + strlen(".oft_R.");
	if (strcmp(rest, "weight") && strcmp(rest, "default.weight"))
		return ft_fail("%s: tensor %s: unexpected name after oft_R", file, t->name);
	if (!l->cfg.peft_type || strcmp(l->cfg.peft_type, "OFT"))
		return ft_fail("%s: tensor %s: an OFT weight, but adapter_config.json's peft_type is not OFT", file,
			       t->name);
	lora_mod *m = module_at(l, file, t, name, o);
	if (!m) return -1;
	if (m->oft) return ft_fail("%s: tensor %s appears twice", file, t->name);
	m->oft = t;
	return 0;
}

/* OFT: the block size from the tensor, against PEFT's choice for the
 * base's input width. */
static int check_oft(ft_lora *l, const char *file, lora_mod *m, const ft_st *base)
{
	if (check_float(file, m->oft) < 0) return -1;
	long long r = m->oft->ndim == 2 ? m->oft->shape[0] : 0, ne = m->oft->ndim == 2 ? m->oft->shape[1] : 0;
	int b = 1;
	while ((long long)b * (b - 1) / 2 < ne) b++;
	if (r < 1 || (long long)b * (b - 1) / 2 != ne)
		return ft_fail("%s: module %s: oft_R is not [r, b(b-1)/2]", file, m->module);
	m->oft_b = b;
	if (!base) return 0;
	char *wname = ft_xasprintf("%s.weight", m->module);
	const ft_st_tensor *w = ft_st_find(base, wname);
	free(wname);
	int pr, pb;
	if (!w || w->ndim != 2)
		return ft_fail("%s: module %s: the base model has no 2-D weight for it", file, m->module);
	if (ft_oft_dims((int)w->shape[1], l->cfg.r, l->cfg.oft_block_size, &pr, &pb) < 0 || pr != r || pb != b)
		return ft_fail("%s: module %s: oft_R is [%lld, %lld] but PEFT makes [%d, %d] for %lld inputs", file,
			       m->module, r, ne, pr, pb * (pb - 1) / 2, (long long)w->shape[1]);
	return 0;
}

/* Place one adapter tensor: a LoRA factor of a module or a full tensor. */
static int place_tensor(ft_lora *l, const char *file, const ft_st_tensor *t)
{
	if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0)
		return ft_fail("%s: tensor %s: expected a name starting with " PREFIX, file, t->name);
	const char *name = t->name + strlen(PREFIX);
	const char *a = strstr(name, ".lora_A."), *b = strstr(name, ".lora_B.");
	const char *p = a ? a : b;
	const char *mg = strstr(name, ".lora_magnitude_vector"), *o = strstr(name, ".oft_R.");
	if (mg && !p) return place_magnitude(l, file, t, name, mg);
	if (o && !p) return place_oft(l, file, t, name, o);
	if (!p) {
		if (strstr(name, "lora_"))
			return ft_fail("%s: tensor %s: unsupported LoRA variant (only lora_A/lora_B of linear layers)",
				       file, t->name);
		/* modules_to_save: the trained copy replaces the base tensor */
		char *n = ft_xstrdup(name), *s;
		if ((s = strstr(n, "modules_to_save.default."))) memmove(s, s + 24, strlen(s + 24) + 1);
		l->full = ft_xrealloc(l->full, (l->nfull + 1) * sizeof *l->full);
		l->full[l->nfull++] = (lora_full){ n, t };
		return 0;
	}
	const char *rest = p + 8;
	if (!strncmp(rest, "default.", 8)) rest += 8;
	int is_bias = !strcmp(rest, "bias");
	if (strcmp(rest, "weight") != 0 && !(b && is_bias))
		return ft_fail("%s: tensor %s: unexpected name after lora_%c", file, t->name, a ? 'A' : 'B');
	lora_mod *m = module_at(l, file, t, name, p);
	if (!m) return -1;
	const ft_st_tensor **slot = a ? &m->A : is_bias ? &m->Bbias : &m->B;
	if (*slot) return ft_fail("%s: tensor %s appears twice (with and without .default?)", file, t->name);
	*slot = t;
	return 0;
}

static int check_float(const char *file, const ft_st_tensor *t)
{
	if (t->dtype == FT_F32 || t->dtype == FT_F16 || t->dtype == FT_BF16 || t->dtype == FT_F64) return 0;
	return ft_fail("%s: tensor %s has dtype %s, not a float type", file, t->name, ft_dtype_name(t->dtype));
}

/* PiSSA: m's decoder layer and linear index as ft's loaders number them
 * ("model.layers.3.mlp.up_proj": 3, 5); -1 for another module (Phi-3's
 * fused ones, which ft-train's PiSSA refuses too). */
static int pissa_module(lora_mod *m)
{
	static const char *const lin[] = { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
					   "down_proj" };
	const char *s = strstr(m->module, "layers."), *dot = strrchr(m->module, '.');
	char *end;
	if (!s || !dot) return -1;
	long l = strtol(s + 7, &end, 10);
	if (end == s + 7 || *end != '.' || l < 0 || l > 1000000) return -1;
	for (int j = 0; j < 7; j++)
		if (!strcmp(dot + 1, lin[j])) {
			m->layer = (int)l;
			m->lin = j;
			return 0;
		}
	return -1;
}

/* Shapes against each other, the configured rank, and the base. */
static int check_module(ft_lora *l, const char *file, lora_mod *m, const ft_st *base)
{
	if (m->oft && !m->A && !m->B && !m->mag) return check_oft(l, file, m, base);
	if (!m->A || !m->B) return ft_fail("%s: module %s has lora_%c but no lora_%c", file, m->module,
					   m->A ? 'A' : 'B', m->A ? 'B' : 'A');
	if (check_float(file, m->A) < 0 || check_float(file, m->B) < 0) return -1;
	if (m->A->ndim != 2 || m->B->ndim != 2 || m->A->shape[0] != m->B->shape[1])
		return ft_fail("%s: module %s: lora_A %s and lora_B %s do not multiply (need [r, in] and [out, r])",
			       file, m->module, m->A->ndim == 2 ? "2-D" : "not 2-D", m->B->ndim == 2 ? "2-D" : "not 2-D");
	m->r = (int)m->A->shape[0];
	int r = ft_adapter_config_rank(&l->cfg, m->module);
	double alpha = ft_adapter_config_alpha(&l->cfg, m->module);
	if (r != m->r)
		return ft_fail("%s: module %s has rank %d but adapter_config.json says %d", file, m->module, m->r, r);
	m->alpha = alpha;
	m->scale = l->cfg.use_rslora ? alpha / sqrt(r) : alpha / r;
	if (m->Bbias && (m->Bbias->ndim != 1 || m->Bbias->shape[0] != m->B->shape[0]))
		return ft_fail("%s: module %s: lora_B bias does not match lora_B", file, m->module);
	if (l->cfg.use_dora && !m->mag)
		return ft_fail("%s: module %s: a DoRA adapter (use_dora) without its lora_magnitude_vector", file,
			       m->module);
	if (m->mag && (check_float(file, m->mag) < 0 || m->mag->ndim != 1 || m->mag->shape[0] != m->B->shape[0]))
		return ft_fail("%s: module %s: lora_magnitude_vector is not [%lld]", file, m->module,
			       (long long)m->B->shape[0]);
	if (l->pissa && pissa_module(m) < 0)
		return ft_fail("%s: module %s: a PiSSA adapter on a module other than a decoder layer's q_proj "
			       "k_proj v_proj o_proj gate_proj up_proj down_proj is not implemented in ft yet",
			       file, m->module);
	if (l->pissa && m->r > (m->A->shape[1] < m->B->shape[0] ? m->A->shape[1] : m->B->shape[0]))
		return ft_fail("%s: module %s: PiSSA rank %d exceeds the module's smaller side", file, m->module,
			       m->r);
	if (!base) return 0;
	char *wname = ft_xasprintf("%s.weight", m->module);
	const ft_st_tensor *w = ft_st_find(base, wname);
	if (!w) {
		ft_fail("%s: module %s: the base model has no tensor %s", file, m->module, wname);
		free(wname);
		return -1;
	}
	free(wname);
	if (w->ndim != 2 || w->shape[0] != m->B->shape[0] || w->shape[1] != m->A->shape[1])
		return ft_fail("%s: module %s: adapter is for a [%lld, %lld] weight but the base model's is %s[%lld, %lld]",
			       file, m->module, (long long)m->B->shape[0], (long long)m->A->shape[1],
			       w->ndim == 2 ? "" : "not 2-D: ", (long long)w->shape[0],
			       (long long)(w->ndim > 1 ? w->shape[1] : 0));
	if (m->Bbias) {
		char *bname = ft_xasprintf("%s.bias", m->module);
		int has = ft_st_find(base, bname) != NULL;
		free(bname);
		if (!has) return ft_fail("%s: module %s: lora_B has a bias but the base layer has none", file, m->module);
	}
	return 0;
}

static int check_full(const char *file, const lora_full *f, const ft_st *base)
{
	if (check_float(file, f->t) < 0) return -1;
	if (!base) return 0;
	const ft_st_tensor *w = ft_st_find(base, f->name);
	if (!w) return ft_fail("%s: tensor %s: the base model has no tensor %s", file, f->t->name, f->name);
	if (w->numel != f->t->numel || w->ndim != f->t->ndim)
		return ft_fail("%s: tensor %s: shape does not match the base model's %s", file, f->t->name, f->name);
	return 0;
}

static int open_tensors(ft_lora *l, const ft_st *base)
{
	char *file = ft_xasprintf("%s/adapter_model.safetensors", l->dir);
	if (access(file, F_OK) != 0) {
		char *bin = ft_xasprintf("%s/adapter_model.bin", l->dir);
		int has_bin = access(bin, F_OK) == 0;
		free(bin);
		if (has_bin)
			ft_fail("%s: only adapter_model.bin here; ft-merge reads safetensors only (re-save the "
				"adapter with safe_serialization=True)", l->dir);
		else
			ft_fail("%s: no adapter_model.safetensors", l->dir);
		free(file);
		return -1;
	}
	int rc = -1;
	if (!(l->st = ft_st_open(file))) goto out;
	for (size_t i = 0; i < ft_st_count(l->st); i++)
		if (place_tensor(l, file, ft_st_at(l->st, i)) < 0) goto out;
	if (l->nm == 0 && l->nfull == 0) {
		ft_fail("%s: no LoRA tensors", file);
		goto out;
	}
	for (size_t i = 0; i < l->nm; i++)
		if (check_module(l, file, &l->m[i], base) < 0) goto out;
	for (size_t i = 0; i < l->nfull; i++)
		if (check_full(file, &l->full[i], base) < 0) goto out;
	rc = 0;
out:
	free(file);
	return rc;
}

ft_lora *ft_lora_open(const char *dir, const struct ft_st *base)
{
	ft_lora *l = ft_xcalloc(1, sizeof *l);
	l->dir = ft_xstrdup(dir);
	char *cfg = ft_xasprintf("%s/" FT_ADAPTER_CONFIG_NAME, dir);
	int ok = ft_adapter_config_load(cfg, &l->cfg) == 0 && check_config(&l->cfg) == 0;
	if (ok) l->pissa = ft_adapter_config_pissa(&l->cfg, &l->pissa_iter);
	ok = ok && open_tensors(l, base) == 0;
	free(cfg);
	if (!ok) {
		ft_lora_close(l);
		return NULL;
	}
	return l;
}

void ft_lora_close(ft_lora *l)
{
	if (!l) return;
	for (size_t i = 0; i < l->nm; i++) free(l->m[i].module);
	for (size_t i = 0; i < l->nfull; i++) free(l->full[i].name);
	free(l->m);
	free(l->full);
	ft_adapter_config_free(&l->cfg);
	if (l->st) ft_st_close(l->st);
	free(l->dir);
	free(l);
}

size_t ft_lora_count(const ft_lora *l) { return l->nm; }

double ft_lora_scale(const ft_lora *l, const char *module)
{
	for (size_t i = 0; i < l->nm; i++)
		if (!strcmp(l->m[i].module, module)) return l->m[i].scale;
	return NAN;
}

static float *read_f32(const ft_st_tensor *t)
{
	float *v = ft_xmalloc(t->numel * sizeof *v);
	if (ft_st_read_f32(t, v) < 0) {
		free(v);
		return NULL;
	}
	return v;
}

/* W [out, in] += (B [out, r] . A [r, in]) * scale, rows split across
 * OpenMP threads.  Operations in PEFT's order and rounding: the product
 * accumulated over k with fused multiply-adds from zero, as sgemm kernels
 * do, then rounded, scaled, rounded, added (no contraction of the last
 * two).  On the fixture models this matches merge_and_unload() to the
 * bit.  r is small, so this is memory bound anyway. */
#define DELTA_BODY(FMA)                                                         \
	_Pragma("omp parallel")                                                 \
	{                                                                       \
		float *row = ft_xmalloc((size_t)in * sizeof *row);              \
		_Pragma("omp for schedule(static)")                             \
		for (int i = 0; i < out; i++) {                                 \
			const float *b = B + (size_t)i * r;                     \
			for (int j = 0; j < in; j++) row[j] = b[0] * A[j];      \
			for (int k = 1; k < r; k++) {                           \
				const float *a = A + (size_t)k * in;            \
				float bk = b[k];                                \
				for (int j = 0; j < in; j++) row[j] = FMA(bk, a[j], row[j]); \
			}                                                       \
			float *wi = w + (size_t)i * in;                         \
			for (int j = 0; j < in; j++) wi[j] += row[j] * scale;   \
		}                                                               \
		free(row);                                                      \
	}

__attribute__((target("fma"), optimize("fp-contract=off")))
static void add_delta_fma(float *w, const float *B, const float *A, int out, int in, int r, float scale)
{
	DELTA_BODY(fmaf)
}

/* Without the instruction fmaf() is a slow library call: same order of
 * operations, separately rounded (may differ from PEFT in the last bit). */
#define MULADD(a, b, c) ((a) * (b) + (c))
__attribute__((optimize("fp-contract=off")))
static void add_delta_plain(float *w, const float *B, const float *A, int out, int in, int r, float scale)
{
	DELTA_BODY(MULADD)
}

static void add_delta(float *w, const float *B, const float *A, int out, int in, int r, float scale)
{
	if (__builtin_cpu_supports("fma")) add_delta_fma(w, B, A, out, in, r, scale);
	else add_delta_plain(w, B, A, out, in, r, scale);
}

/* DoRA, as PEFT's merge: w = W + delta, then each row times
 * magnitude / ||row|| (the norm of W + delta, float32 as torch's). */
static int dora_rescale(const lora_mod *m, float *w, int out, int in)
{
	float *mag = read_f32(m->mag);
	if (!mag) return -1;
	for (int o = 0; o < out; o++) {
		float *row = w + (size_t)o * in;
		double s = 0;
		for (int i = 0; i < in; i++) s += (double)row[i] * row[i];
		float f = mag[o] / (float)sqrt(s);
		for (int i = 0; i < in; i++) row[i] *= f;
	}
	free(mag);
	return 0;
}

/* PiSSA: the base its init leaves, as PEFT's from_pretrained redoes it
 * (and ft's loaders): W - (s B0) A0 from W's top r singular triplets; the
 * exact SVD is PEFT's up to rounding, pissa_niter_K's start is ft's fixed
 * one (the residual ft trained on; PEFT draws a new one at each load). */
static int pissa_residual(const ft_lora *l, const lora_mod *m, float *w, int out, int in)
{
	float *A0 = ft_xmalloc((size_t)m->r * in * sizeof *A0), *B0 = ft_xmalloc((size_t)out * m->r * sizeof *B0);
	int rc = ft_pissa_decompose(w, out, in, m->r, (float)m->scale, l->pissa_iter,
				    ft_pissa_seed(m->layer, m->lin), A0, B0);
	free(A0);
	free(B0);
	return rc < 0 ? ft_fail_ctx("%s: %s: ", l->dir, m->module) : 0;
}

/* "X.weight" / "X.bias" -> the module X and which part. */
static const lora_mod *find_module(const ft_lora *l, const char *name, int *is_bias)
{
	const char *dot = strrchr(name, '.');
	if (!dot) return NULL;
	*is_bias = !strcmp(dot, ".bias");
	if (!*is_bias && strcmp(dot, ".weight") != 0) return NULL;
	size_t n = (size_t)(dot - name);
	for (size_t i = 0; i < l->nm; i++)
		if (strlen(l->m[i].module) == n && !strncmp(l->m[i].module, name, n)) return &l->m[i];
	return NULL;
}

int ft_lora_touches(const ft_lora *l, const char *name)
{
	for (size_t i = 0; i < l->nfull; i++)
		if (!strcmp(l->full[i].name, name)) return 1;
	int is_bias;
	const lora_mod *m = find_module(l, name, &is_bias);
	return m && (!is_bias || m->Bbias);
}

int ft_lora_apply(const ft_lora *l, const char *name, float *w, size_t numel)
{
	for (size_t i = 0; i < l->nfull; i++) {
		if (strcmp(l->full[i].name, name) != 0) continue;
		if (l->full[i].t->numel != numel) return ft_fail("%s: %s: size mismatch", l->dir, name);
		return ft_st_read_f32(l->full[i].t, w) < 0 ? -1 : 1;
	}
	int is_bias;
	const lora_mod *m = find_module(l, name, &is_bias);
	if (!m || (is_bias && !m->Bbias)) return 0;
	if (is_bias) {
		float *bb = read_f32(m->Bbias);
		if (!bb) return -1;
		float s = (float)m->scale;   /* PEFT: bias + lora_B.bias * scaling, in float32 */
		for (size_t i = 0; i < numel; i++) w[i] += bb[i] * s;
		free(bb);
		return 1;
	}
	if (m->oft) {   /* W <- W . blockdiag(R)^T, as PEFT's OFT merge */
		int b = m->oft_b, r = (int)m->oft->shape[0], in = r * b;
		if (numel % in) return ft_fail("%s: %s: size mismatch", l->dir, name);
		float *v = read_f32(m->oft), *R = v ? ft_xmalloc((size_t)r * b * b * sizeof *R) : NULL;
		if (!v) return -1;
		ft_oft_rotation(v, r, b, l->cfg.num_cayley_neumann_terms, R);
		ft_oft_merge(w, (int)(numel / in), in, b, R);
		free(v);
		free(R);
		return 1;
	}
	int out = (int)m->B->shape[0], in = (int)m->A->shape[1], r = m->r;
	if ((size_t)out * in != numel) return ft_fail("%s: %s: size mismatch", l->dir, name);
	float *A = read_f32(m->A), *B = read_f32(m->B);
	if (!A || !B) {
		free(A);
		free(B);
		return -1;
	}
	int rc = l->pissa ? pissa_residual(l, m, w, out, in) : 0;
	if (!rc) add_delta(w, B, A, out, in, r, (float)m->scale);
	free(A);
	free(B);
	if (rc < 0) return -1;
	if (m->mag && dora_rescale(m, w, out, in) < 0) return -1;
	return 1;
}
