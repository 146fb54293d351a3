/* test_merge.c - LoRA merge against PEFT's merge_and_unload() (fixtures
 * from tests/reference/make_merge_fixtures.py), dtypes, shards and index,
 * refusals, and logits of the merged model through our forward. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tap.h"
#include "util/dtype.h"
#include "util/error.h"
#include "export/merge.h"
#include "model/model.h"
#include "format/safetensors.h"

#define MODELS "tests/fixtures/models"
#define MERGE "tests/fixtures/merge"

static char tmp[64];

static char *tmpdir(const char *name) { return ft_xasprintf("%s/%s", tmp, name); }

static int run_merge(const char *base, const char *const *ad, size_t n, const char *out, int dtype,
		     uint64_t shard)
{
	ft_merge_opts o = { .model_dir = base, .adapters = ad, .nadapters = n, .export_dir = out,
			    .export_dtype = dtype, .shard_size = shard, .threads = 2 };
	return ft_merge(&o);
}

/* Every tensor of `expected` against `got` (a model dir): bit-identical
 * when the CPU has FMA (PEFT's kernels use it), else within 2 ulp. */
static void compare(const char *expected, const char *got_dir, ft_dtype as, const char *what)
{
	ft_st *e = ft_st_open(expected), *g = ft_st_open(got_dir);
	ok(e && g, "%s: open expected and merged", what);
	if (!e || !g) goto out;
	/* without FMA the product is rounded differently from PEFT's kernels:
	 * allow a few units in the last place of the export dtype */
	int exact = __builtin_cpu_supports("fma");
	float rel = as == FT_BF16 ? 1.0f / 128 : as == FT_F16 ? 1.0f / 1024 : 1e-6f;
	float abs_ = as == FT_F32 ? 5e-8f : 1e-7f;
	size_t bad = 0, total = 0, missing = 0;
	for (size_t i = 0; i < ft_st_count(e); i++) {
		const ft_st_tensor *te = ft_st_at(e, i), *tg = ft_st_find(g, te->name);
		if (!tg || tg->numel != te->numel || tg->dtype != as) {
			missing++;
			continue;
		}
		float *a = malloc(te->numel * 4), *b = malloc(te->numel * 4);
		ft_st_read_f32(te, a);
		ft_st_read_f32(tg, b);
		for (size_t k = 0; k < te->numel; k++) {
			float want = a[k];
			if (as == FT_BF16) want = ft_bf16_to_f32(ft_f32_to_bf16(a[k]));
			if (as == FT_F16) want = ft_f16_to_f32(ft_f32_to_f16(a[k]));
			if (exact ? b[k] != want : fabsf(b[k] - want) > rel * fabsf(want) + abs_)
				bad++;
		}
		total += te->numel;
		free(a);
		free(b);
	}
	ok(missing == 0 && bad == 0 && total > 0, "%s: %zu values of %zu tensors %s PEFT's merge_and_unload (%zu differ)",
	   what, total, ft_st_count(e), exact ? "bit-identical to" : "within a few ulp of", bad);
out:
	if (e) ft_st_close(e);
	if (g) ft_st_close(g);
}

static json_t *load(const char *dir, const char *file)
{
	char *p = ft_xasprintf("%s/%s", dir, file);
	json_t *j = json_load_file(p, 0, NULL);
	free(p);
	return j;
}

static void test_scales(void)
{
	ft_st *base = ft_st_open(MODELS "/tiny-qwen2");
	ft_lora *l = ft_lora_open(MERGE "/qwen2-rslora/adapter", base);
	ok(l != NULL, "open the rsLoRA adapter: %s", l ? "" : ft_errmsg());
	if (l) {
		ok(ft_lora_count(l) == 10, "10 LoRA modules (q k v o down x 2 layers): %zu", ft_lora_count(l));
		ok(fabs(ft_lora_scale(l, "model.layers.0.self_attn.q_proj") - 16 / sqrt(8)) < 1e-12, "rsLoRA scale alpha/sqrt(r)");
		ok(fabs(ft_lora_scale(l, "model.layers.1.self_attn.v_proj") - 16 / sqrt(4)) < 1e-12, "rank_pattern v_proj: r=4");
		ok(fabs(ft_lora_scale(l, "model.layers.0.mlp.down_proj") - 32 / sqrt(8)) < 1e-12, "alpha_pattern down_proj: 32");
		ok(isnan(ft_lora_scale(l, "model.layers.0.mlp.up_proj")), "no up_proj module");
	}
	ft_lora_close(l);
	ft_st_close(base);
	base = ft_st_open(MODELS "/tiny-llama");
	l = ft_lora_open(MERGE "/llama-r4/adapter", base);
	ok(l && ft_lora_count(l) == 14 && ft_lora_scale(l, "model.layers.1.mlp.up_proj") == 2.0,
	   "llama adapter: 14 modules, scale alpha/r = 2");
	ft_lora_close(l);
	ft_st_close(base);
}

static void test_against_peft(void)
{
	const char *a1[] = { MERGE "/llama-r4/adapter" };
	char *out = tmpdir("llama");
	ok(run_merge(MODELS "/tiny-llama", a1, 1, out, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge llama-r4");
	compare(MERGE "/llama-r4/expected.safetensors", out, FT_F32, "llama r=4 fp32");
	/* untouched tensors are copied byte for byte */
	ft_st *b = ft_st_open(MODELS "/tiny-llama"), *g = ft_st_open(out);
	const ft_st_tensor *tb = ft_st_find(b, "model.embed_tokens.weight"), *tg = g ? ft_st_find(g, "model.embed_tokens.weight") : NULL;
	ok(tb && tg && tb->nbytes == tg->nbytes && !memcmp(tb->data, tg->data, tb->nbytes), "embeddings unchanged");
	ok(g && ft_st_count(g) == ft_st_count(b), "every base tensor exported");
	if (g) ft_st_close(g);
	ft_st_close(b);
	json_t *c = load(out, "config.json");
	ok(c && !strcmp(json_string_value(json_object_get(c, "dtype")), "float32") &&
	   json_integer_value(json_object_get(c, "hidden_size")) == 64, "config.json copied, dtype float32 (auto)");
	json_decref(c);
	char *gc = ft_xasprintf("%s/generation_config.json", out);
	ok(access(gc, F_OK) == 0, "generation_config.json copied");
	free(gc);

	char *out16 = tmpdir("llama-bf16");
	ok(run_merge(MODELS "/tiny-llama", a1, 1, out16, FT_BF16, 0) == 0, "merge to bf16");
	compare(MERGE "/llama-r4/expected.safetensors", out16, FT_BF16, "llama r=4 bf16 (PEFT's fp32 merge rounded)");
	c = load(out16, "config.json");
	ok(c && !strcmp(json_string_value(json_object_get(c, "dtype")), "bfloat16"), "config dtype bfloat16");
	json_decref(c);
	char *outf16 = tmpdir("llama-fp16");
	ok(run_merge(MODELS "/tiny-llama", a1, 1, outf16, FT_F16, 0) == 0, "merge to fp16");
	compare(MERGE "/llama-r4/expected.safetensors", outf16, FT_F16, "llama r=4 fp16");

	const char *a2[] = { MERGE "/qwen2-rslora/adapter" }, *a3[] = { MERGE "/qwen2-rslora/adapter-default" };
	char *q = tmpdir("qwen2"), *qd = tmpdir("qwen2-default");
	ok(run_merge(MODELS "/tiny-qwen2", a2, 1, q, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge qwen2 rsLoRA");
	compare(MERGE "/qwen2-rslora/expected.safetensors", q, FT_F32, "qwen2 rsLoRA + rank/alpha patterns");
	ok(run_merge(MODELS "/tiny-qwen2", a3, 1, qd, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge adapter with .default names");
	compare(MERGE "/qwen2-rslora/expected.safetensors", qd, FT_F32, "qwen2 .default names");

	const char *ab[] = { MERGE "/qwen2-bias/adapter" }, *am[] = { MERGE "/llama-mts/adapter" };
	char *qb = tmpdir("qwen2-bias"), *lm = tmpdir("llama-mts");
	ok(run_merge(MODELS "/tiny-qwen2", ab, 1, qb, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge lora_bias adapter");
	compare(MERGE "/qwen2-bias/expected.safetensors", qb, FT_F32, "qwen2 lora_bias (q/v biases)");
	ok(run_merge(MODELS "/tiny-llama", am, 1, lm, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge modules_to_save adapter");
	compare(MERGE "/llama-mts/expected.safetensors", lm, FT_F32, "llama modules_to_save lm_head");
	free(qb);
	free(lm);

	const char *two[] = { MERGE "/llama-r4/adapter", MERGE "/llama-r4-then-r2/adapter" };
	char *t = tmpdir("two");
	ok(run_merge(MODELS "/tiny-llama", two, 2, t, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge two adapters in order");
	compare(MERGE "/llama-r4-then-r2/expected.safetensors", t, FT_F32, "two adapters in order");
	free(out);
	free(out16);
	free(outf16);
	free(q);
	free(qd);
	free(t);
}

static void test_shards(void)
{
	const char *a1[] = { MERGE "/llama-r4/adapter" };
	char *out = tmpdir("sharded");
	uint64_t limit = 100000;
	ok(run_merge(MODELS "/tiny-llama", a1, 1, out, FT_MERGE_DTYPE_AUTO, limit) == 0, "merge with 100 kB shards");
	json_t *idx = load(out, "model.safetensors.index.json");
	ok(idx != NULL, "model.safetensors.index.json written");
	if (!idx) return;
	json_t *map = json_object_get(idx, "weight_map");
	long long total = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
	long long params = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_parameters"));
	ft_st *b = ft_st_open(MODELS "/tiny-llama");
	ok(json_object_size(map) == ft_st_count(b), "weight_map names all %zu tensors", ft_st_count(b));
	size_t nparams = 0;
	for (size_t i = 0; i < ft_st_count(b); i++) nparams += ft_st_at(b, i)->numel;
	ok(total == (long long)nparams * 4 && params == (long long)nparams,
	   "metadata: total_size %lld = 4 x %zu parameters", total, nparams);
	/* each shard holds what the map says and stays under the limit
	 * unless a single tensor is bigger */
	int nshards = 0, fine = 1;
	const char *key;
	json_t *v;
	json_t *seen = json_object();
	json_object_foreach(map, key, v) json_object_set_new(seen, json_string_value(v), json_true());
	nshards = (int)json_object_size(seen);
	json_object_foreach(seen, key, v) {
		char *p = ft_xasprintf("%s/%s", out, key);
		ft_st *s = ft_st_open(p);
		uint64_t bytes = 0;
		if (!s) fine = 0;
		for (size_t i = 0; s && i < ft_st_count(s); i++) {
			const ft_st_tensor *t = ft_st_at(s, i);
			const char *want = json_string_value(json_object_get(map, t->name));
			if (!want || strcmp(want, key) != 0) fine = 0;
			bytes += t->nbytes;
		}
		if (s && bytes > limit && ft_st_count(s) > 1) fine = 0;
		if (s) ft_st_close(s);
		free(p);
	}
	char *expect = ft_xasprintf("model-00001-of-%05d.safetensors", nshards);
	ok(nshards > 1 && json_object_get(seen, expect) && fine,
	   "%d shards named model-0000N-of-%05d, each as the map says, under the limit", nshards, nshards);
	free(expect);
	json_decref(seen);
	json_decref(idx);
	ft_st_close(b);
	compare(MERGE "/llama-r4/expected.safetensors", out, FT_F32, "sharded export read through the index");
	char *single = ft_xasprintf("%s/model.safetensors", out);
	ok(access(single, F_OK) != 0, "no model.safetensors beside the shards");
	free(single);
	char *n1 = ft_merge_shard_name(0, 1), *n2 = ft_merge_shard_name(2, 12);
	ok(!strcmp(n1, "model.safetensors") && !strcmp(n2, "model-00003-of-00012.safetensors"), "shard names: %s %s", n1, n2);
	free(n1);
	free(n2);
	free(out);
}

/* An adapter directory with one tensor changed, for the refusals. */
static char *bad_adapter(const char *name, const char *rename_from, const char *rename_to, int64_t bad_cols)
{
	char *dir = tmpdir(name);
	mkdir(dir, 0777);
	char *cmd = ft_xasprintf("cp %s/adapter_config.json %s/", MERGE "/llama-r4/adapter", dir);
	if (system(cmd) != 0) ok(0, "cp");
	free(cmd);
	ft_st *src = ft_st_open(MERGE "/llama-r4/adapter");
	ft_st_writer *w = ft_st_writer_new();
	float *zeros = ft_xcalloc(4096, sizeof *zeros);
	char **names = ft_xcalloc(ft_st_count(src), sizeof *names);
	for (size_t i = 0; i < ft_st_count(src); i++) {
		const ft_st_tensor *t = ft_st_at(src, i);
		names[i] = ft_xstrdup(t->name);
		const char *s;
		if (rename_from && (s = strstr(t->name, rename_from))) {
			free(names[i]);
			names[i] = ft_xasprintf("%.*s%s%s", (int)(s - t->name), t->name, rename_to, s + strlen(rename_from));
		}
		if (bad_cols && i == 0 && t->ndim == 2) {
			int64_t shape[2] = { t->shape[0], bad_cols };
			ft_st_writer_add(w, names[i], FT_F32, 2, shape, zeros);
		} else {
			ft_st_writer_add(w, names[i], t->dtype, t->ndim, t->shape, t->data);
		}
	}
	char *path = ft_xasprintf("%s/adapter_model.safetensors", dir);
	if (ft_st_writer_write(w, path) < 0) ok(0, "write %s: %s", path, ft_errmsg());
	free(path);
	ft_st_writer_free(w);
	for (size_t i = 0; i < ft_st_count(src); i++) free(names[i]);
	free(names);
	free(zeros);
	ft_st_close(src);
	return dir;
}

static void refuse(const char *adapter, const char *want, const char *what)
{
	const char *a[] = { adapter };
	char *out = tmpdir("refused");
	int rc = run_merge(MODELS "/tiny-llama", a, 1, out, FT_MERGE_DTYPE_AUTO, 0);
	ok(rc < 0 && strstr(ft_errmsg(), want) && access(out, F_OK) != 0, "refused: %s: %s", what, ft_errmsg());
	free(out);
}

static void test_refusals(void)
{
	char *d = bad_adapter("bad-shape", NULL, NULL, 32);
	refuse(d, "adapter is for a [64, 32] weight but the base model's is [64, 96]", "lora_A with the wrong width");
	free(d);
	d = bad_adapter("bad-module", "self_attn.q_proj.", "self_attn.wqkv.", 0);
	refuse(d, "unknown target module", "unknown module name in the tensors");
	free(d);
	/* an adapter for a deeper model than the base */
	d = bad_adapter("bad-layer", "layers.1.", "layers.7.", 0);
	refuse(d, "base model has no tensor model.layers.7", "a layer the base does not have");
	free(d);
	char *cfgdir = tmpdir("ia3");
	mkdir(cfgdir, 0777);
	char *cmd = ft_xasprintf("sed 's/\"LORA\"/\"IA3\"/' %s/adapter_config.json > %s/adapter_config.json && "
				 "cp %s/adapter_model.safetensors %s/", MERGE "/llama-r4/adapter", cfgdir,
				 MERGE "/llama-r4/adapter", cfgdir);
	ok(system(cmd) == 0, "IA3 config made");
	free(cmd);
	refuse(cfgdir, "only LoRA", "peft_type IA3");
	free(cfgdir);
}

/* Logits of the merged model through our forward pass against PEFT's
 * (unmerged adapter) logits, and against our own base + adapter. */
static void test_logits(void)
{
	char *out = tmpdir("llama");
	ft_tune_opts full = { .type = FT_FT_FULL };
	ft_model *m = ft_model_load(out, &full);
	if (!m) {
		skip("forward pass not available: %s", ft_errmsg());
		free(out);
		return;
	}
	ft_st *fx = ft_st_open(MERGE "/llama-r4/logits.safetensors");
	const ft_st_tensor *ids = ft_st_find(fx, "input_ids"), *want = ft_st_find(fx, "logits");
	int B = (int)ids->shape[0], T = (int)ids->shape[1], V = (int)want->shape[2];
	int32_t *in = malloc(B * T * sizeof *in), *lab = malloc(B * T * sizeof *lab);
	for (int i = 0; i < B * T; i++) in[i] = (int32_t)((const int64_t *)ids->data)[i], lab[i] = in[i];
	ft_batch b = { .B = B, .T = T, .input_ids = in, .labels = lab, .n_label_tokens = B * (T - 1) };
	float *got = malloc((size_t)B * T * V * sizeof *got), *ref = malloc(want->numel * sizeof *ref);
	ft_st_read_f32(want, ref);
	double loss;
	int64_t nt;
	int rc = ft_model_forward(m, &b, got, &loss, &nt);
	double worst = 0;
	for (size_t i = 0; i < want->numel; i++) worst = fmax(worst, fabs(got[i] - ref[i]));
	ok(rc == 0 && worst < 1e-4, "merged model's logits (our forward) = PEFT base+adapter logits: max diff %.3g", worst);
	ft_model_free(m);

	ft_tune_opts lora = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = FT_MOD_ALL_LINEAR };
	ft_model *ml = ft_model_load(MODELS "/tiny-llama", &lora);
	if (ml && ft_model_load_adapter(ml, MERGE "/llama-r4/adapter") == 0) {
		float *got2 = malloc((size_t)B * T * V * sizeof *got2);
		rc = ft_model_forward(ml, &b, got2, &loss, &nt);
		double w2 = 0;
		for (size_t i = 0; i < want->numel; i++) w2 = fmax(w2, fabs(got2[i] - got[i]));
		ok(rc == 0 && w2 < 1e-4, "merged logits = our base+adapter logits: max diff %.3g", w2);
		free(got2);
	} else {
		skip("our adapter loading failed: %s", ft_errmsg());
	}
	ft_model_free(ml);
	ft_st_close(fx);
	free(in);
	free(lab);
	free(got);
	free(ref);
	free(out);
}

/* An adapter in ft-train's own format (ft_model_save on a LoRA model):
 * merged logits equal the logits with the adapter live. */
static void test_ours(void)
{
	ft_tune_opts lora = { .type = FT_FT_LORA, .lora_rank = 8, .lora_alpha = 16, .use_rslora = 1,
			      .lora_targets = FT_MOD_ALL_LINEAR };
	ft_model *m = ft_model_load(MODELS "/tiny-qwen2", &lora);
	if (!m) {
		skip("LoRA model not available: %s", ft_errmsg());
		return;
	}
	int nb = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!strstr(p->name, "lora_")) continue;
		for (size_t k = 0; k < p->n; k++) p->w[k] = 0.03f * sinf((float)(k * 7 + i * 13));
		nb += strstr(p->name, "lora_B") != NULL;
	}
	char *ad = tmpdir("ours-adapter"), *out = tmpdir("ours-merged");
	ok(nb == 14 && ft_model_save(m, ad) == 0, "ft-train style adapter saved (%d lora_B)", nb);
	int B = 2, T = 10, V = 256;
	int32_t in[20], lab[20];
	for (int i = 0; i < B * T; i++) in[i] = lab[i] = (i * 37 + 11) % V;
	ft_batch b = { .B = B, .T = T, .input_ids = in, .labels = lab, .n_label_tokens = B * (T - 1) };
	float *l1 = malloc((size_t)B * T * V * sizeof *l1), *l2 = malloc((size_t)B * T * V * sizeof *l2);
	double loss;
	int64_t nt;
	int rc = ft_model_forward(m, &b, l1, &loss, &nt);
	ft_model_free(m);
	const char *a[] = { ad };
	int mrc = rc == 0 ? run_merge(MODELS "/tiny-qwen2", a, 1, out, FT_MERGE_DTYPE_AUTO, 0) : -1;
	ok(mrc == 0, "our adapter merges%s%s", mrc ? ": " : "", mrc ? ft_errmsg() : "");
	ft_tune_opts full = { .type = FT_FT_FULL };
	ft_model *mm = ft_model_load(out, &full);
	rc = mm ? ft_model_forward(mm, &b, l2, &loss, &nt) : -1;
	double worst = 0;
	for (int i = 0; i < B * T * V; i++) worst = fmax(worst, fabs(l1[i] - l2[i]));
	ok(rc == 0 && worst < 1e-4, "merged logits = base+our adapter logits (rsLoRA, Qwen2 biases): max diff %.3g", worst);
	ft_model_free(mm);
	free(l1);
	free(l2);
	free(ad);
	free(out);
}

/* OFT (tests/reference/make_oft_fixtures.py): W . blockdiag(R)^T with R
 * from the Cayley-Neumann series; ft sums the b-term products in double,
 * torch in float32 (errors ~b * 2^-24 relative of the row's magnitude), so
 * 1e-5 relative plus 1e-7 absolute; the same through ft_model's merge on
 * load (what ft-generate does with an OFT adapter). */
static void compare_close(const char *expected, const char *got_dir, const char *what)
{
	ft_st *e = ft_st_open(expected), *g = ft_st_open(got_dir);
	size_t bad = 0, total = 0, missing = 0, changed = 0;
	ok(e && g, "%s: open expected and merged", what);
	for (size_t i = 0; e && g && i < ft_st_count(e); i++) {
		const ft_st_tensor *te = ft_st_at(e, i), *tg = ft_st_find(g, te->name);
		if (!tg || tg->numel != te->numel) {
			missing++;
			continue;
		}
		float *a = malloc(te->numel * 4), *b = malloc(te->numel * 4);
		ft_st_read_f32(te, a);
		ft_st_read_f32(tg, b);
		for (size_t k = 0; k < te->numel; k++)
			bad += fabsf(a[k] - b[k]) > 1e-5f * fabsf(a[k]) + 1e-7f;
		total += te->numel;
		free(a);
		free(b);
	}
	ft_st *base = ft_st_open(MODELS "/tiny-llama");
	for (size_t i = 0; e && base && i < ft_st_count(e); i++) {   /* the rotations are not the identity */
		const ft_st_tensor *te = ft_st_at(e, i), *tb = ft_st_find(base, te->name);
		float *a = malloc(te->numel * 4), *b = malloc(te->numel * 4);
		ft_st_read_f32(te, a);
		ft_st_read_f32(tb, b);
		for (size_t k = 0; k < te->numel; k++) changed += a[k] != b[k];
		free(a);
		free(b);
	}
	ok(total > 0 && !missing && !bad && changed > total / 2,
	   "%s: %zu values within 1e-5 of PEFT's merge_and_unload (%zu differ, %zu missing, %zu changed)", what,
	   total, bad, missing, changed);
	if (base) ft_st_close(base);
	if (e) ft_st_close(e);
	if (g) ft_st_close(g);
}

static void test_oft(void)
{
	const char *a1[] = { "tests/fixtures/extras/oft-init" };
	char *out = tmpdir("oft");
	ok(run_merge(MODELS "/tiny-llama", a1, 1, out, FT_MERGE_DTYPE_AUTO, 0) == 0, "merge an OFT adapter: %s",
	   ft_errmsg());
	compare_close("tests/fixtures/extras/oft-merged.safetensors", out, "OFT via ft-merge");
	free(out);
	/* ft_model: a LoRA-type model folds the OFT adapter in on load */
	ft_tune_opts t = { .type = FT_FT_LORA, .lora_targets = FT_MOD_ALL_LINEAR };
	ft_model *m = ft_model_load(MODELS "/tiny-llama", &t);
	ok(m && ft_model_load_adapter(m, a1[0]) == 0, "load the OFT adapter into a model: %s", ft_errmsg());
	char *o2 = tmpdir("oft-model");
	ok(m && ft_model_save_full(m, o2, NULL) == 0, "save the model with the adapter folded in");
	compare_close("tests/fixtures/extras/oft-merged.safetensors", o2, "OFT folded by ft_model");
	ft_model_free(m);
	free(o2);
}

int main(void)
{
	snprintf(tmp, sizeof tmp, "/tmp/ft-merge-test-XXXXXX");
	if (!mkdtemp(tmp)) return 1;
	test_scales();
	test_against_peft();
	test_shards();
	test_refusals();
	test_logits();
	test_ours();
	test_oft();
	char *cmd = ft_xasprintf("rm -rf %s", tmp);
	ok(system(cmd) == 0, "temp cleaned");
	free(cmd);
	return tap_done();
}
