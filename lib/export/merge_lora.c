/* merge_lora.c - PEFT LoRA adapters: read, check, apply (see merge.h).
 *
 * Tensor names as PEFT saves them (adapter name stripped), or with
 * ".default" as older PEFT wrote them:
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_A[.default].weight  [r, in]
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_B[.default].weight  [out, r]
 *   base_model.model.<name>.lora_B[.default].bias   (lora_bias=True)
 *   base_model.model.<name>                          (modules_to_save: replaces <name>)
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/error.h"
#include "util/json.h"
#include "export/merge.h"
#include "format/safetensors.h"

#define PREFIX "base_model.model."

/* The linear layers of Llama / Mistral / Qwen2 decoder layers. */
static const char *const known_modules[] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

typedef struct {
	char *module;                 /* "model.layers.0.self_attn.q_proj" */
	const ft_st_tensor *A, *B, *Bbias;
	int r;
	double alpha, scale;
} lora_mod;

typedef struct {
	char *name;                   /* base tensor replaced (modules_to_save) */
	const ft_st_tensor *t;
} lora_full;

typedef struct {
	pcre2_code *re;
	double value;
} pattern;

struct ft_lora {
	char *dir;
	ft_st *st;
	lora_mod *m;
	size_t nm;
	lora_full *full;
	size_t nfull;
	int r, use_rslora;
	double alpha;
	pattern *rank_pat, *alpha_pat;
	size_t nrank_pat, nalpha_pat;
};

static int known_module(const char *module)
{
	const char *dot = strrchr(module, '.');
	const char *last = dot ? dot + 1 : module;
	for (size_t i = 0; i < sizeof known_modules / sizeof *known_modules; i++)
		if (!strcmp(last, known_modules[i])) return 1;
	return 0;
}

/* PEFT's get_pattern_key(): re.match(rf"(.*\.)?({key})$", module). */
static int compile_patterns(const char *cfg, const json_t *obj, const char *field,
			    pattern **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!obj || json_is_null(obj)) return 0;
	if (!json_is_object(obj)) return ft_fail("%s: %s is not an object", cfg, field);
	*out = ft_xcalloc(json_object_size(obj) + 1, sizeof **out);
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)obj, key, v) {
		if (!json_is_number(v)) return ft_fail("%s: %s[\"%s\"] is not a number", cfg, field, key);
		char *src = ft_xasprintf("^(?:.*\\.)?(?:%s)$", key);
		int err;
		PCRE2_SIZE off;
		pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
		free(src);
		if (!re) return ft_fail("%s: %s key \"%s\" is not a regular expression", cfg, field, key);
		(*out)[*n].re = re;
		(*out)[(*n)++].value = json_number_value(v);
	}
	return 0;
}

static int pattern_value(const pattern *p, size_t n, const char *module, double *v)
{
	for (size_t i = 0; i < n; i++) {
		pcre2_match_data *md = pcre2_match_data_create_from_pattern(p[i].re, NULL);
		int rc = pcre2_match(p[i].re, (PCRE2_SPTR)module, strlen(module), 0, 0, md, NULL);
		pcre2_match_data_free(md);
		if (rc >= 0) {
			*v = p[i].value;
			return 1;
		}
	}
	return 0;
}

static int check_config(ft_lora *l, const char *cfg, const json_t *c)
{
	const char *type = json_string_value(json_object_get(c, "peft_type"));
	if (!type) return ft_fail("%s: no peft_type (not a PEFT adapter)", cfg);
	if (strcmp(type, "LORA") != 0)
		return ft_fail("%s: peft_type is %s; only LoRA adapters can be merged", cfg, type);
	if (json_is_true(json_object_get(c, "use_dora")))
		return ft_fail("%s: DoRA adapters (use_dora) are not supported", cfg);
	if (json_is_true(json_object_get(c, "fan_in_fan_out")))
		return ft_fail("%s: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported", cfg);
	static const char *const unsupported[] = {
		"target_parameters", "trainable_token_indices", "layer_replication", "alora_invocation_tokens",
	};
	for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
		const json_t *v = json_object_get(c, unsupported[i]);
		if (v && !json_is_null(v) && !(json_is_array(v) && !json_array_size(v)) &&
		    !(json_is_object(v) && !json_object_size(v)))
			return ft_fail("%s: %s is not supported", cfg, unsupported[i]);
	}
	const json_t *r = json_object_get(c, "r"), *alpha = json_object_get(c, "lora_alpha");
	if (!json_is_integer(r) || json_integer_value(r) <= 0) return ft_fail("%s: r is not a positive integer", cfg);
	if (!json_is_number(alpha)) return ft_fail("%s: lora_alpha is not a number", cfg);
	l->r = (int)json_integer_value(r);
	l->alpha = json_number_value(alpha);
	l->use_rslora = json_is_true(json_object_get(c, "use_rslora"));
	const json_t *t = json_object_get(c, "target_modules");
	if (json_is_array(t)) {
		size_t i;
		json_t *v;
		json_array_foreach(t, i, v) {
			const char *s = json_string_value(v);
			if (!s) return ft_fail("%s: target_modules[%zu] is not a string", cfg, i);
			if (!known_module(s))
				return ft_fail("%s: unknown target module '%s' (ft-merge knows q_proj k_proj v_proj "
					       "o_proj gate_proj up_proj down_proj)", cfg, s);
		}
	}
	/* a string target_modules is a regular expression; the tensor names
	 * are checked one by one below instead */
	if (compile_patterns(cfg, json_object_get(c, "rank_pattern"), "rank_pattern", &l->rank_pat, &l->nrank_pat) < 0 ||
	    compile_patterns(cfg, json_object_get(c, "alpha_pattern"), "alpha_pattern", &l->alpha_pat, &l->nalpha_pat) < 0)
		return -1;
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

/* Place one adapter tensor: a LoRA factor of a module or a full tensor. */
static int place_tensor(ft_lora *l, const char *file, const ft_st_tensor *t)
{
	if (strncmp(t->name, PREFIX, strlen(PREFIX)) != 0)
		return ft_fail("%s: tensor %s: expected a name starting with " PREFIX, file, t->name);
	const char *name = t->name + strlen(PREFIX);
	const char *a = strstr(name, ".lora_A."), *b = strstr(name, ".lora_B.");
	const char *p = a ? a : b;
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
	char *module = ft_xmalloc((size_t)(p - name) + 1);
	memcpy(module, name, (size_t)(p - name));
	module[p - name] = 0;
	const char *rest = p + 8;
	if (!strncmp(rest, "default.", 8)) rest += 8;
	int is_bias = !strcmp(rest, "bias");
	if (strcmp(rest, "weight") != 0 && !(b && is_bias)) {
		free(module);
		return ft_fail("%s: tensor %s: unexpected name after lora_%c", file, t->name, a ? 'A' : 'B');
	}
	if (!known_module(module)) {
		ft_fail("%s: tensor %s: unknown target module '%s' (ft-merge knows q_proj k_proj v_proj o_proj "
			"gate_proj up_proj down_proj)", file, t->name, module);
		free(module);
		return -1;
	}
	lora_mod *m = module_for(l, module);
	free(module);
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

/* Shapes against each other, the configured rank, and the base. */
static int check_module(ft_lora *l, const char *file, lora_mod *m, const ft_st *base)
{
	if (!m->A || !m->B) return ft_fail("%s: module %s has lora_%c but no lora_%c", file, m->module,
					   m->A ? 'A' : 'B', m->A ? 'B' : 'A');
	if (check_float(file, m->A) < 0 || check_float(file, m->B) < 0) return -1;
	if (m->A->ndim != 2 || m->B->ndim != 2 || m->A->shape[0] != m->B->shape[1])
		return ft_fail("%s: module %s: lora_A %s and lora_B %s do not multiply (need [r, in] and [out, r])",
			       file, m->module, m->A->ndim == 2 ? "2-D" : "not 2-D", m->B->ndim == 2 ? "2-D" : "not 2-D");
	m->r = (int)m->A->shape[0];
	double r = l->r, alpha = l->alpha;
	pattern_value(l->rank_pat, l->nrank_pat, m->module, &r);
	pattern_value(l->alpha_pat, l->nalpha_pat, m->module, &alpha);
	if ((int)r != m->r)
		return ft_fail("%s: module %s has rank %d but adapter_config.json says %d", file, m->module, m->r, (int)r);
	m->alpha = alpha;
	m->scale = l->use_rslora ? alpha / sqrt(r) : alpha / r;
	if (m->Bbias && (m->Bbias->ndim != 1 || m->Bbias->shape[0] != m->B->shape[0]))
		return ft_fail("%s: module %s: lora_B bias does not match lora_B", file, m->module);
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
	char *cfg = ft_xasprintf("%s/adapter_config.json", dir);
	json_t *c = ft_json_load_file(cfg);
	int ok = c && check_config(l, cfg, c) == 0 && open_tensors(l, base) == 0;
	json_decref(c);
	free(cfg);
	if (!ok) {
		ft_lora_close(l);
		return NULL;
	}
	return l;
}

static void free_patterns(pattern *p, size_t n)
{
	for (size_t i = 0; i < n; i++) pcre2_code_free(p[i].re);
	free(p);
}

void ft_lora_close(ft_lora *l)
{
	if (!l) return;
	for (size_t i = 0; i < l->nm; i++) free(l->m[i].module);
	for (size_t i = 0; i < l->nfull; i++) free(l->full[i].name);
	free(l->m);
	free(l->full);
	free_patterns(l->rank_pat, l->nrank_pat);
	free_patterns(l->alpha_pat, l->nalpha_pat);
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
	int out = (int)m->B->shape[0], in = (int)m->A->shape[1], r = m->r;
	if ((size_t)out * in != numel) return ft_fail("%s: %s: size mismatch", l->dir, name);
	float *A = read_f32(m->A), *B = read_f32(m->B);
	if (!A || !B) {
		free(A);
		free(B);
		return -1;
	}
	add_delta(w, B, A, out, in, r, (float)m->scale);
	free(A);
	free(B);
	return 1;
}
