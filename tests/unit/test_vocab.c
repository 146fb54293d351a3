/* test_vocab.c - LLaMA-Factory's vocabulary extension, the model side,
 * against tests/fixtures/vocab (tests/reference/make_vocab_fixtures.py:
 * transformers + PEFT + LLaMA-Factory's embedding.py on a tiny Llama):
 * the new ids and description ids, the init rows (the deterministic part
 * within 1e-6, ft's noise by its statistics), the resize itself, one
 * LoRA + modules_to_save backward, and PEFT's adapter with the resized
 * embeddings (logits; ft's saved adapter has PEFT's tensor names). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "tap.h"
#include "st_test.h"
#include "cli/newtokens.h"
#include "format/batch.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "text/tokenizer.h"
#include "util/error.h"

#define FIX "tests/fixtures/vocab"
#define CFG "tests/fixtures/lf-examples/extras/multi_tokens/tokens_cfg.yaml"
enum { V0 = 802, LEN = 819, V = 832, D = 16 };

static int ids_eq(const ft_i32vec *a, const json_t *b)
{
	if (json_array_size(b) != a->n) return 0;
	for (size_t i = 0; i < a->n; i++)
		if (json_integer_value(json_array_get(b, i)) != a->v[i]) return 0;
	return 1;
}

/* the fixture's tokens and ft's: new ids, targets, description ids */
typedef struct {
	ft_new_tokens nt;
	ft_tokenizer *tok;
	ft_i32vec ids;
	int32_t targets[16];
	ft_i32vec descs[16];
} toks;

static void tokens(toks *k)
{
	memset(k, 0, sizeof *k);
	json_error_t e;
	json_t *j = json_load_file(FIX "/tokens.json", 0, &e);
	int added = 0;
	ok(j && ft_new_tokens_parse(&k->nt, "<tool_x>", NULL, CFG) == 0 &&
	   (k->tok = ft_tokenizer_load(FIX "/base")) && ft_new_tokens_apply(&k->nt, k->tok, &added) == 0 &&
	   added == 17 && ft_tokenizer_vocab_size(k->tok) == (size_t)json_integer_value(json_object_get(j, "len")),
	   "17 tokens added, len(tokenizer) %d", LEN);
	ft_new_tokens_ids(&k->nt, k->tok, V, &k->ids);
	ok(ids_eq(&k->ids, json_object_get(j, "new_ids")), "_resolve_new_token_ids: %zu ids", k->ids.n);
	ok(k->nt.n_special == 16 && ft_new_tokens_descs(&k->nt, k->tok, k->targets, k->descs) == 0,
	   "descriptions encoded");
	int bad = 0;
	for (size_t i = 0; i < 16; i++) {
		bad += k->targets[i] != json_integer_value(json_array_get(json_object_get(j, "targets"), i));
		bad += !ids_eq(&k->descs[i], json_array_get(json_object_get(j, "descs"), i));
	}
	ok(!bad, "each description's ids and token id as transformers'");
	json_decref(j);
}

static ft_vocab_resize resize_of(const toks *k, int method)
{
	ft_vocab_resize r = { .tokenizer_len = LEN, .new_ids = k->ids.v, .n_new = k->ids.n, .method = method,
			      .n_desc = method == FT_INIT_NOISE ? 0 : 16, .desc_target = k->targets,
			      .desc_ids = k->descs };
	return r;
}

/* the rows of ids in w minus base (a row or a matrix): mean and std */
static void residual(const float *w, const float *base, int per_row, const ft_i32vec *ids, double *mean,
		     double *sd)
{
	double s = 0, q = 0;
	size_t n = 0;
	for (size_t i = 0; i < ids->n; i++)
		for (int d = 0; d < D; d++) {
			double x = w[(size_t)ids->v[i] * D + d] - base[per_row ? (size_t)ids->v[i] * D + d : (size_t)d];
			s += x;
			q += x * x;
			n++;
		}
	*mean = s / n;
	*sd = sqrt(q / n - *mean * *mean);
}

/* max |a - b| over the rows of ids (b one row when per_row is 0), and
 * whether every other row is unchanged from pre */
static double rows_diff(const float *a, const float *b, int per_row, const float *pre, const ft_i32vec *ids,
			int *others_same)
{
	double m = 0;
	*others_same = 1;
	for (int r = 0; r < V; r++) {
		int is = 0;
		for (size_t i = 0; i < ids->n; i++) is |= ids->v[i] == r;
		for (int d = 0; d < D; d++) {
			size_t x = (size_t)r * D + d;
			if (!is) { *others_same &= a[x] == pre[x]; continue; }
			double e = fabs(a[x] - b[per_row ? x : (size_t)d]);
			if (e > m) m = e;
		}
	}
	return m;
}

/* 1/sqrt(D) = 0.25 from 17 x 16 = 272 draws: the sample std is within
 * 4.3% (one sigma) of it; 20% is over four sigmas */
static int noise_ok(double mean, double sd)
{
	return fabs(mean) < 0.25 * 4 / sqrt(272.0) && fabs(sd - 0.25) < 0.05;
}

static void rows(const toks *k)
{
	ft_st *st = ft_st_open(FIX "/rows.safetensors");
	size_t n;
	float *pre_e = st_f32(st, "pre_embed", &n), *pre_h = st_f32(st, "pre_head", NULL);
	float *avg_e = st_f32(st, "avg_embed", NULL), *avg_h = st_f32(st, "avg_head", NULL);
	float *lf_noise = st_f32(st, "noise_embed", NULL);
	float *desc_e = st_f32(st, "desc_embed", NULL), *desc_h = st_f32(st, "desc_head", NULL);
	if (!ok(st && pre_e && n == (size_t)V * D && desc_h, "rows fixture")) return;
	float *w = malloc(n * sizeof *w);
	double mean, sd;
	int same;
	/* noise_init: the mean (float32 in torch, double here: ~1e-8 apart) */
	ft_vocab_resize r = resize_of(k, FT_INIT_NOISE);
	memcpy(w, pre_e, n * sizeof *w);
	ft_vocab_init(w, w, V, D, &r, V - V0, 42, "embed_tokens", 0);
	ok(rows_diff(w, avg_e, 0, pre_e, &k->ids, &same) < 1e-6 && same,
	   "noise_init embed_tokens: the new rows are the other rows' mean (padding included), within 1e-6");
	memcpy(w, pre_h, n * sizeof *w);
	ft_vocab_init(w, pre_e, V, D, &r, V - V0, 42, "lm_head", 0);
	ok(rows_diff(w, avg_h, 0, pre_h, &k->ids, &same) < 1e-6 && same, "noise_init lm_head: the mean, within 1e-6");
	ft_vocab_init(w, pre_e, V, D, &r, V - V0, 42, "lm_head", 1);
	residual(w, avg_h, 0, &k->ids, &mean, &sd);
	ok(noise_ok(mean, sd), "noise_init's noise from ft: mean %.4f, std %.4f (1/sqrt(D) = 0.25)", mean, sd);
	residual(lf_noise, avg_e, 0, &k->ids, &mean, &sd);
	ok(noise_ok(mean, sd), "torch's noise in the fixture, the same statistics: mean %.4f, std %.4f", mean, sd);
	/* desc_init: the input pass reads the matrix it writes, the lm_head
	 * pass the initialized input embeddings */
	r = resize_of(k, FT_INIT_DESC);
	memcpy(w, pre_e, n * sizeof *w);
	ft_vocab_init(w, w, V, D, &r, V - V0, 42, "embed_tokens", 1);
	ok(rows_diff(w, desc_e, 1, pre_e, &k->ids, &same) < 1e-6 && same,
	   "desc_init embed_tokens: each row the mean of its description's embeddings, within 1e-6");
	memcpy(w, pre_h, n * sizeof *w);
	ft_vocab_init(w, desc_e, V, D, &r, V - V0, 42, "lm_head", 1);
	ok(rows_diff(w, desc_h, 1, pre_h, &k->ids, &same) < 1e-6 && same, "desc_init lm_head, within 1e-6");
	r = resize_of(k, FT_INIT_DESC_NOISE);
	memcpy(w, pre_h, n * sizeof *w);
	ft_vocab_init(w, desc_e, V, D, &r, V - V0, 42, "lm_head", 0);
	ok(rows_diff(w, desc_h, 1, pre_h, &k->ids, &same) < 1e-6 && same,
	   "desc_init_w_noise without its noise is desc_init");
	ft_vocab_init(w, desc_e, V, D, &r, V - V0, 42, "lm_head", 1);
	residual(w, desc_h, 1, &k->ids, &mean, &sd);
	ok(noise_ok(mean, sd), "desc_init_w_noise's noise: mean %.4f, std %.4f", mean, sd);
	free(w); free(pre_e); free(pre_h); free(avg_e); free(avg_h); free(lf_noise); free(desc_e); free(desc_h);
	ft_st_close(st);
}

static ft_tune_opts lora(void)
{
	ft_tune_opts o = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_Q | FT_MOD_V, .seed = 42 };
	return o;
}

static void resize(const toks *k)
{
	ft_tune_opts o = lora();
	ft_model *m = ft_model_load(FIX "/base", &o);
	ft_st *st = ft_st_open(FIX "/base/model.safetensors");
	float *e0 = st_f32(st, "model.embed_tokens.weight", NULL);
	ft_vocab_resize r = resize_of(k, FT_INIT_NOISE);
	if (!ok(m && e0 && ft_model_resize_vocab(m, &r) == 0, "resize: %s", m ? "ok" : ft_errmsg())) return;
	ft_param *e = ft_model_find_param(m, "model.embed_tokens.weight"), *h = ft_model_find_param(m, "lm_head.weight");
	ok(ft_model_config(m)->vocab_size == V && e->shape[0] == V && h->shape[0] == V,
	   "819 tokens: embed_tokens and lm_head padded to a multiple of 64 (%d)", V);
	ok(!memcmp(e->w, e0, (size_t)V0 * D * sizeof *e0), "the old rows are kept");
	double s = 0, q = 0;
	for (size_t i = (size_t)LEN * D; i < (size_t)V * D; i++) { s += h->w[i]; q += (double)h->w[i] * h->w[i]; }
	double nn = (double)(V - LEN) * D, sd = sqrt(q / nn - (s / nn) * (s / nn));
	/* 208 draws of normal(0, 0.02): the sample std within 5% (one sigma) */
	ok(fabs(sd - 0.02) < 0.005, "the padding rows: normal(0, initializer_range), std %.4f", sd);
	ok(!e->trainable && ft_model_train_embeddings(m) == 0 &&
	   ft_model_find_param(m, "model.embed_tokens.weight")->trainable &&
	   ft_model_find_param(m, "lm_head.weight")->trainable, "modules_to_save: both train beside LoRA");
	ft_model_free(m);
	free(e0);
	ft_st_close(st);
}

/* an I32 tensor (ft_st_read_f32 converts floats only) */
static int32_t *ints(const ft_st *st, const char *name, size_t *n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t || t->dtype != FT_I32) return NULL;
	int32_t *v = malloc(t->nbytes);
	memcpy(v, t->data, t->nbytes);
	*n = t->numel;
	return v;
}

static void batch_of(const ft_st *st, ft_batch *b)
{
	size_t n = 0;
	memset(b, 0, sizeof *b);
	b->input_ids = ints(st, "input_ids", &n);
	b->labels = ints(st, "labels", &n);
	b->B = 2;
	b->T = (int)(n / 2);
	for (size_t i = 0; b->labels && i < n; i++) b->n_label_tokens += b->labels[i] != FT_IGNORE_INDEX;
}

static void step(void)
{
	ft_tune_opts o = lora();
	ft_model *m = ft_model_load(FIX "/resized", &o);
	ft_st *st = ft_st_open(FIX "/step.safetensors");
	if (!ok(m && st && ft_model_load_adapter(m, FIX "/init") == 0, "resized base + PEFT's init adapter: %s",
		m ? ft_errmsg() : "no model"))
		return;
	ft_batch b;
	batch_of(st, &b);
	int64_t nt = 0;
	for (int r = 0; r < b.B; r++)   /* labels shifted: position t predicts t+1 */
		for (int t = 1; t < b.T; t++) nt += b.labels[r * b.T + t] != FT_IGNORE_INDEX;
	double ls;
	int64_t n;
	ft_model_zero_grad(m);
	int rc = ft_model_forward_backward(m, &b, 1.0f / (float)nt, &ls, &n);
	float *want = st_f32(st, "loss", NULL);
	/* float32 over 2 x 14 tokens: the losses agree to ~1e-6 */
	ok(rc == 0 && n == nt && rel_err(ls / n, want[0], 1e-6) < 1e-5, "loss %.6f vs PEFT's %.6f", ls / n, want[0]);
	static const char *const names[][2] = {
		{ "model.embed_tokens.weight", "grad.base_model.model.model.embed_tokens.weight" },
		{ "lm_head.weight", "grad.base_model.model.lm_head.weight" },
		{ "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
		  "grad.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" },
		{ "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
		  "grad.base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight" },
		{ "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
		  "grad.base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight" },
		{ "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
		  "grad.base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight" },
	};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		ft_param *p = ft_model_find_param(m, names[i][0]);
		size_t k;
		float *g = st_f32(st, names[i][1], &k);
		/* relative to the largest gradient: float32 sums of at most 832
		 * terms differ by ~1e-6; 1e-4 as the brief sets it */
		double e = p && p->g && g && k == p->n ? max_rel(p->g, g, k) : INFINITY;
		ok(e < 1e-4, "gradient of %s (%s), max rel %.2g", names[i][0], i < 2 ? "modules_to_save" : "LoRA", e);
		free(g);
	}
	free(want);
	free(b.input_ids);
	free(b.labels);
	ft_model_free(m);
	ft_st_close(st);
}

/* the trained adapter: PEFT's file on the 802-token base */
static void adapter(void)
{
	ft_tune_opts o = lora();
	ft_model *m = ft_model_load(FIX "/base", &o);
	ft_st *st = ft_st_open(FIX "/step.safetensors"), *lg = ft_st_open(FIX "/logits.safetensors");
	if (!ok(m && ft_model_load_adapter(m, FIX "/adapter") == 0 && ft_model_config(m)->vocab_size == V,
		"the 802-token base + PEFT's adapter: vocabulary %d from the adapter", V))
		return;
	ft_batch b;
	batch_of(st, &b);
	size_t n;
	float *want = st_f32(lg, "logits", &n), *got = malloc(n * sizeof *got);
	double ls;
	int64_t nt;
	int rc = ft_model_forward(m, &b, got, &ls, &nt);
	ok(rc == 0 && n == (size_t)b.B * b.T * V && max_rel(got, want, n) < 1e-4,
	   "logits as PEFT's (max rel %.2g)", max_rel(got, want, n));
	/* saved again: PEFT's tensor names and shapes */
	char dir[] = "/tmp/ft-vocab-XXXXXX";
	ok(mkdtemp(dir) && ft_model_save_adapter(m, dir) == 0, "save the adapter");
	ft_st *a = ft_st_open(FIX "/adapter/adapter_model.safetensors"), *s = ft_st_open(dir);
	int same = a && s && ft_st_count(a) == ft_st_count(s);
	for (size_t i = 0; same && i < ft_st_count(a); i++) {
		const ft_st_tensor *x = ft_st_at(a, i), *y = ft_st_find(s, x->name);
		same = y && y->numel == x->numel && y->shape[0] == x->shape[0];
		if (!same) printf("# %s\n", x->name);
	}
	ok(same, "ft's adapter holds PEFT's tensors (embed_tokens / lm_head copies, modules_to_save, "
	   "original_module), same names and shapes");
	char p[64];
	snprintf(p, sizeof p, "%s/adapter_config.json", dir);
	json_error_t e;
	json_t *c = json_load_file(p, 0, &e);
	ok(c && json_array_size(json_object_get(c, "modules_to_save")) == 2, "adapter_config.json: modules_to_save");
	json_decref(c);
	ft_st_close(a);
	ft_st_close(s);
	snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
	unlink(p);
	snprintf(p, sizeof p, "%s/adapter_config.json", dir);
	unlink(p);
	rmdir(dir);
	free(want);
	free(got);
	free(b.input_ids);
	free(b.labels);
	ft_model_free(m);
	ft_st_close(st);
	ft_st_close(lg);
}

int main(void)
{
	toks k;
	tokens(&k);
	rows(&k);
	resize(&k);
	step();
	adapter();
	for (int i = 0; i < 16; i++) ft_i32vec_free(&k.descs[i]);
	ft_i32vec_free(&k.ids);
	ft_new_tokens_free(&k.nt);
	ft_tokenizer_free(k.tok);
	return tap_done();
}
