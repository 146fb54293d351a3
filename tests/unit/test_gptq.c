/* test_gptq.c - the GPTQ export (lib/export/gptq*.c) against gptqmodel 7.7
 * through optimum 2.3 and transformers 5.25 (tests/reference/
 * make_gptq_fixtures.py writes tests/fixtures/gptq/).
 *
 * What is exact and what is bounded, and why:
 * - CPython's random (seed, randint) and LLaMA-Factory's window sampling
 *   with the tokenizer: integers, equal.
 * - one linear from gptqmodel's own Hessian: the column order, groups,
 *   zeros and g_idx are integers, equal; the codes and scales come out of
 *   float32 arithmetic that differs from torch's only in LAPACK's Cholesky
 *   and the between-block matrix product (summation order), a few ulps.  A
 *   weight whose w / scale lies within those ulps of a rounding boundary
 *   would flip by one (none does on these fixtures: the codes are equal and
 *   the scales within 5e-7), and GPTQ feeds a flip's error into the row's
 *   later columns, so the bound allows a few: codes differing by at most 1
 *   in <= 0.1% of weights, scales within 1e-4 relative, the dequantized
 *   weights' distance to the float ones within 0.1% of gptqmodel's.
 * - the whole model: the inputs of later linears go through the earlier
 *   quantized ones, so flips multiply; what stays is the quality: the
 *   logits of our export (dequantized through our forward) are as far from
 *   the float model's as gptqmodel's export is (within 20%), and closer to
 *   gptqmodel's than either is to the float model.  The packing, zeros,
 *   g_idx and every unquantized tensor are checked exactly.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "st_test.h"
#include "export/gptq.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "text/tokenizer.h"
#include "util/atomicfile.h"
#include "util/dtype.h"
#include "util/error.h"
#include "util/json.h"

#define FX "tests/fixtures/gptq"

static void test_pyrandom(const json_t *w)
{
	ft_pyrandom g;
	ft_pyrandom_seed(&g, (uint64_t)json_integer_value(json_object_get(w, "seed")));
	const json_t *draws = json_object_get(w, "randint");
	int good = 1;
	for (size_t i = 0; i < json_array_size(draws); i++) {
		const json_t *d = json_array_get(draws, i);
		int64_t n = json_integer_value(json_array_get(d, 0)), want = json_integer_value(json_array_get(d, 1));
		int64_t got = ft_pyrandom_randint(&g, 0, n);
		if (got != want) {
			good = 0;
			printf("# randint(0, %lld): %lld, Python %lld\n", (long long)n, (long long)got, (long long)want);
		}
	}
	ok(good && json_array_size(draws) == 12, "random.seed(42); randint(0, n) as CPython, n from 0 to 2^32-1");
}

static int encode(void *ctx, const char *text, size_t len, ft_i32vec *ids)
{
	return ft_tokenizer_encode(ctx, text, len, 1, ids);
}

static int32_t *test_windows(const json_t *w, int *ns, int *ml)
{
	*ns = (int)json_integer_value(json_object_get(w, "nsamples"));
	*ml = (int)json_integer_value(json_object_get(w, "maxlen"));
	ft_tokenizer *tok = ft_tokenizer_load("tests/fixtures/tokenizer/synth-llama3/tokenizer.json");
	int32_t *win = calloc((size_t)*ns * *ml, sizeof *win);
	int rc = ft_gptq_calibration(FX "/calib.jsonl", *ns, *ml, 42, encode, tok, win);
	const json_t *want = json_object_get(w, "windows");
	int same = rc == 0 && (int)json_array_size(want) == *ns;
	for (int s = 0; same && s < *ns; s++)
		for (int t = 0; t < *ml; t++)
			same &= json_integer_value(json_array_get(json_array_get(want, s), t)) == win[(size_t)s * *ml + t];
	ok(same, "calibration windows = LLaMA-Factory's _get_quantization_dataset under random.seed(42)");
	/* its refusal: no text longer than maxlen */
	int32_t *big = calloc(4096, sizeof *big);
	rc = ft_gptq_calibration(FX "/calib.jsonl", 1, 4000, 42, encode, tok, big);
	ok(rc < 0 && strstr(ft_errmsg(), "Cannot find satisfying example"), "no text long enough: %s", ft_errmsg());
	rc = ft_gptq_calibration(FX "/missing.jsonl", 1, 8, 42, encode, tok, big);
	ok(rc < 0 && strstr(ft_errmsg(), "missing.jsonl"), "missing file: %s", ft_errmsg());
	free(big);
	ft_tokenizer_free(tok);
	return win;
}

/* One linear from gptqmodel's Hessian (h.rows = 2: the 2/N factor is 1). */
static void test_linear(const char *name, const char *wh, int bits)
{
	char path[256];
	snprintf(path, sizeof path, FX "/linear-%s.safetensors", name);
	ft_st *fx = ft_st_open(path);
	snprintf(path, sizeof path, FX "/linear-%s.safetensors", wh);
	ft_st *src = ft_st_open(path);
	if (!fx || !src) {
		ok(0, "%s: fixtures: %s", name, ft_errmsg());
		return;
	}
	const ft_st_tensor *wt = ft_st_find(src, "W");
	int rows = (int)wt->shape[0], cols = (int)wt->shape[1];
	float *W = st_f32(src, "W", NULL), *Q = st_f32(fx, "Q", NULL), *sc = st_f32(fx, "scale", NULL);
	float *W0 = malloc((size_t)rows * cols * sizeof *W0);
	memcpy(W0, W, (size_t)rows * cols * sizeof *W0);
	ft_gptq_hessian h;
	ft_gptq_hessian_init(&h, cols);
	ft_st_read_f32(ft_st_find(src, "H"), h.H);
	h.rows = 2;
	ft_gptq_params p = ft_gptq_defaults(bits);
	ft_gptq_result r;
	int rc = ft_gptq_quantize(&p, W, rows, cols, &h, &r);
	ok(rc == 0, "%s: quantized (%s)", name, rc ? ft_errmsg() : "ok");
	if (rc) return;
	const uint8_t *codes = ft_st_find(fx, "codes")->data;
	const int32_t *gi = ft_st_find(fx, "g_idx")->data;
	size_t n = (size_t)rows * cols, diff = 0, far = 0;
	for (size_t i = 0; i < n; i++) {
		diff += codes[i] != r.codes[i];
		far += abs((int)codes[i] - (int)r.codes[i]) > 1;
	}
	int same_g = 1;
	for (int c = 0; c < cols; c++) same_g &= gi[c] == r.g_idx[c];
	double worst = 0;
	for (int g = 0; g < r.ngroups; g++)
		for (int o = 0; o < rows; o++) {
			double a = sc[(size_t)o * r.ngroups + g], b = r.scale[(size_t)g * rows + o];
			double e = fabs(a - b) / fabs(a);
			if (e > worst) worst = e;
		}
	int zeros_ok = 1;
	for (size_t i = 0; i < (size_t)r.ngroups * rows; i++) zeros_ok &= r.zero[i] == 1 << (bits - 1);
	double eq = 0, er = 0;   /* distance of the dequantized weights to the float ones */
	for (size_t i = 0; i < n; i++) {
		eq += (double)(W[i] - W0[i]) * (W[i] - W0[i]);
		er += (double)(Q[i] - W0[i]) * (Q[i] - W0[i]);
	}
	ok(same_g && zeros_ok, "%s: g_idx and zeros (%d) = gptqmodel's", name, 1 << (bits - 1));
	ok(diff <= n / 1000 && far == 0, "%s: %zu of %zu codes differ (<= 0.1%%), none by more than 1", name, diff, n);
	ok(worst <= 1e-4, "%s: scales within %.3g relative (<= 1e-4)", name, worst);
	ok(fabs(sqrt(eq / er) - 1) <= 1e-3, "%s: |Q - W| = %.6f of gptqmodel's (within 0.1%%)", name, sqrt(eq / er));
	/* packing: our qweight unpacks to our codes */
	int32_t *qw = malloc(ft_gptq_qweight_rows(cols, bits) * rows * sizeof *qw);
	uint8_t *back = malloc(n);
	ft_gptq_pack_qweight(&r, bits, qw);
	ft_gptq_unpack_qweight(qw, rows, cols, bits, back);
	ok(!memcmp(back, r.codes, n), "%s: qweight unpacks to the codes", name);
	free(qw);
	free(back);
	ft_gptq_result_free(&r);
	ft_gptq_hessian_free(&h);
	free(W);
	free(W0);
	free(Q);
	free(sc);
	ft_st_close(fx);
	ft_st_close(src);
}

/* The dequantized weights of an export into a model loaded from base. */
static int dequantize_into(ft_model *m, const ft_st *q, int bits)
{
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		size_t l = strlen(p->name);
		if (l < 8 || strcmp(p->name + l - 7, ".weight") || !strstr(p->name, "_proj")) continue;
		char nm[200];
		snprintf(nm, sizeof nm, "%.*sqweight", (int)(l - 6), p->name);
		const ft_st_tensor *qw = ft_st_find(q, nm);
		snprintf(nm, sizeof nm, "%.*sscales", (int)(l - 6), p->name);
		float *s = st_f32(q, nm, NULL);
		snprintf(nm, sizeof nm, "%.*sg_idx", (int)(l - 6), p->name);
		const ft_st_tensor *gi = ft_st_find(q, nm);
		if (!qw || !s || !gi) return -1;
		int rows = (int)p->shape[0], cols = (int)p->shape[1];
		uint8_t *codes = malloc((size_t)rows * cols);
		ft_gptq_unpack_qweight(qw->data, rows, cols, bits, codes);
		const int32_t *g = gi->data;
		for (int o = 0; o < rows; o++)
			for (int c = 0; c < cols; c++)
				p->w[(size_t)o * cols + c] = s[(size_t)g[c] * rows + o] * ((float)codes[(size_t)o * cols + c] - (1 << (bits - 1)));
		free(codes);
		free(s);
	}
	return 0;
}

static float *logits_of(ft_model *m, const ft_st_tensor *ids, size_t V)
{
	int B = (int)ids->shape[0], T = (int)ids->shape[1];
	int32_t *lab = malloc((size_t)B * T * sizeof *lab);
	for (int i = 0; i < B * T; i++) lab[i] = 0;
	ft_batch b = { .B = B, .T = T, .input_ids = (int32_t *)ids->data, .labels = lab, .n_label_tokens = B * (T - 1) };
	float *lg = malloc((size_t)B * T * V * sizeof *lg);
	double loss;
	int64_t nt;
	int rc = ft_model_forward(m, &b, lg, &loss, &nt);
	free(lab);
	if (rc < 0) {
		free(lg);
		return NULL;
	}
	return lg;
}

static double dist(const float *a, const float *b, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++) s += (double)(a[i] - b[i]) * (a[i] - b[i]);
	return sqrt(s / n);
}

static void test_model(const char *name, const char *base, int bits, const int32_t *win, int ns, int ml)
{
	char out[256], ref[256];
	snprintf(out, sizeof out, "%s/gptq-%s-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", name, (int)getpid());
	ft_gptq_export_opts o = { .model_dir = base, .export_dir = out, .bits = bits, .windows = win,
				  .nsamples = ns, .maxlen = ml, .threads = 2 };
	int rc = ft_gptq_export(&o);
	ok(rc == 0, "%s: exported (%s)", name, rc ? ft_errmsg() : out);
	if (rc) return;
	snprintf(ref, sizeof ref, FX "/%s/expected.safetensors", name);
	ft_st *got = ft_st_open(out), *want = ft_st_open(ref), *b = ft_st_open(base);
	/* integers exact: qzeros, g_idx; unquantized tensors: fp16 of the base's */
	int exact = 1, names = 1;
	size_t codes = 0, cdiff = 0;
	for (size_t i = 0; i < ft_st_count(want); i++) {
		const ft_st_tensor *w = ft_st_at(want, i), *g = ft_st_find(got, w->name);
		if (!g || g->dtype != w->dtype || g->numel != w->numel) {
			names = 0;
			printf("# %s: missing or other shape\n", w->name);
			continue;
		}
		if (strstr(w->name, "qzeros") || strstr(w->name, "g_idx")) exact &= !memcmp(g->data, w->data, w->nbytes);
		if (strstr(w->name, "qweight")) {
			codes += w->numel * 32 / bits;
			const uint32_t *a = w->data, *c = g->data;
			for (size_t k = 0; k < w->numel; k++) cdiff += a[k] != c[k];
		}
	}
	size_t plain = 0;
	for (size_t i = 0; i < ft_st_count(b); i++) {
		const ft_st_tensor *t = ft_st_at(b, i), *g = ft_st_find(got, t->name);
		if (strstr(t->name, "_proj.weight")) {
			names &= g == NULL;
			continue;
		}
		plain++;
		exact &= g && g->dtype == FT_F16 && g->nbytes == t->nbytes && !memcmp(g->data, t->data, t->nbytes);
	}
	ok(names && ft_st_count(got) == ft_st_count(want) + plain,
	   "%s: the checkpoint's tensors, names, dtypes and shapes = transformers' save_pretrained", name);
	ok(exact, "%s: qzeros, g_idx and the %zu float16 tensors exact", name, plain);
	printf("# %s: %zu of %zu packed words differ (flips spread through later layers)\n", name, cdiff,
	       codes * bits / 32);
	/* config.json: quantization_config as transformers writes it */
	char cfg[300];
	snprintf(cfg, sizeof cfg, "%s/config.json", out);
	json_t *gc = ft_json_load_file(cfg);
	snprintf(cfg, sizeof cfg, FX "/%s/config.json", name);
	json_t *wc = ft_json_load_file(cfg);
	json_t *gq = json_object_get(gc, "quantization_config"), *wq = json_object_get(wc, "quantization_config");
	int same = gq && wq && json_object_size(gq) == json_object_size(wq);
	const char *k;
	json_t *v;
	json_object_foreach(wq, k, v) {
		if (!strcmp(k, "meta")) continue;   /* the quantizer's name and version */
		if (!json_equal(v, json_object_get(gq, k))) {
			same = 0;
			printf("# quantization_config.%s differs\n", k);
		}
	}
	ok(same, "%s: quantization_config = transformers' (every key but meta.quantizer), dataset included", name);
	ok(!strcmp(ft_json_str(gc, "dtype", ""), "float16"), "%s: config dtype float16", name);
	json_decref(gc);
	json_decref(wc);
	/* logits: ours and gptqmodel's quantized models against the float one */
	snprintf(ref, sizeof ref, FX "/%s/logits.safetensors", name);
	ft_st *lx = ft_st_open(ref);
	const ft_st_tensor *ids = ft_st_find(lx, "input_ids");
	size_t nl;
	float *lref = st_f32(lx, "logits", &nl);
	ft_tune_opts t = { .type = FT_FT_FREEZE };
	ft_model *m = ft_model_load(base, &t);
	size_t V = (size_t)ft_model_config(m)->vocab_size;
	float *lf = logits_of(m, ids, V);
	float *lq = dequantize_into(m, got, bits) == 0 ? logits_of(m, ids, V) : NULL;
	if (lf && lq && nl == (size_t)ids->shape[0] * ids->shape[1] * V) {
		double ours = dist(lq, lf, nl), theirs = dist(lref, lf, nl), between = dist(lq, lref, nl);
		ok(fabs(ours / theirs - 1) <= 0.2, "%s: logits' distance to the float model: ours %.4g, gptqmodel's %.4g "
		   "(within 20%%)", name, ours, theirs);
		ok(between < ours && between < theirs, "%s: ours to gptqmodel's %.4g, closer than either to float", name,
		   between);
	} else {
		ok(0, "%s: logits", name);
	}
	free(lf);
	free(lq);
	free(lref);
	ft_model_free(m);
	ft_st_close(lx);
	ft_st_close(got);
	ft_st_close(want);
	ft_st_close(b);
	ft_remove_tree(out);
}

int main(void)
{
	json_t *w = ft_json_load_file(FX "/windows.json");
	if (!w) {
		ok(0, "windows.json: %s", ft_errmsg());
		return tap_done();
	}
	test_pyrandom(w);
	int ns, ml;
	int32_t *win = test_windows(w, &ns, &ml);
	test_linear("b4", "b4", 4);
	test_linear("b3", "b4", 3);
	test_linear("b8", "b8", 8);
	test_model("llama", FX "/llama/base", 4, win, ns, ml);
	test_model("llama3b", FX "/llama/base", 3, win, ns, ml);
	test_model("qwen3", FX "/qwen3/base", 4, win, ns, ml);
	test_model("qwen2", FX "/qwen2/base", 4, win, ns, ml);
	free(win);
	json_decref(w);
	return tap_done();
}
