/* test_families.c - the model families of lib/model/arch.c against
 * transformers/PEFT (tests/reference/make_family_fixtures.py, fixtures in
 * tests/fixtures/families/<family>/).  Tolerances, fp32 throughout:
 *   logits and every gradient (full and LoRA): max |ours - torch| /
 *     max |torch| <= 1e-4 (different summation orders, as test_model.c);
 *   summed loss: relative error <= 1e-5;
 *   one AdamW step: every element within lr/100 of torch's (absolute):
 *     the first step moves by about lr * g/(|g| + eps), so gradient
 *     elements near eps turn the gradients' 1e-6 differences into update
 *     differences that a relative bound on the weights would hide;
 *     elements whose gradient is below 1e-6 of their tensor's largest
 *     (summation noise: the step is g/(|g| + eps) of a near-zero g) only
 *     within 2 lr, the most one step can move them apart;
 *   greedy generation of 20 tokens: token-equal (base and with adapter);
 *   merged model's logits vs base+adapter: max rel error <= 1e-5 (the
 *     merge rounds W + s*B*A to float once);
 *   save and reload: bit-identical logits.
 * Also the config refusals (unsupported architecture names the supported
 * ones, Qwen3 attention_bias). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "util/json.h"
#include "model/model.h"
#include "model/infer.h"
#include "model/model_pref.h"
#include "model/layers.h"
#include "train/optim.h"
#include "format/safetensors.h"

#define FAM "tests/fixtures/families/"

static float *tensor_f32(const ft_st *st, const char *name, size_t *n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return NULL;
	float *v = malloc(t->numel * sizeof(float));
	ft_st_read_f32(t, v);
	if (n) *n = t->numel;
	return v;
}

static int32_t *tensor_i32(const ft_st *st, const char *name, size_t *n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t || t->dtype != FT_I32) return NULL;
	int32_t *v = malloc(t->nbytes);
	memcpy(v, t->data, t->nbytes);
	if (n) *n = t->numel;
	return v;
}

static double cmp(const ft_st *st, const char *name, const float *got, size_t n)
{
	size_t m = 0;
	float *ref = tensor_f32(st, name, &m);
	double e = ref && m == n ? max_rel(got, ref, n) : INFINITY;
	if (!ref || m != n) printf("# %s missing or of another size\n", name);
	free(ref);
	return e;
}

static int batch_of(const ft_st *st, ft_batch *b)
{
	const ft_st_tensor *t = ft_st_find(st, "batch.input_ids");
	memset(b, 0, sizeof *b);
	if (!t) return -1;
	b->B = (int)t->shape[0];
	b->T = (int)t->shape[1];
	b->input_ids = tensor_i32(st, "batch.input_ids", NULL);
	b->labels = tensor_i32(st, "batch.labels", NULL);
	for (int i = 0; i < b->B * b->T; i++) b->n_label_tokens += b->labels[i] != -100;
	return 0;
}

static ft_tune_opts opts(ft_finetuning_type t)
{
	ft_tune_opts o = { .type = t, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 42 };
	return o;
}

static float *logits_of(ft_model *m, const ft_batch *b, double *loss)
{
	size_t n = (size_t)b->B * b->T * ft_model_config(m)->vocab_size;
	float *lg = malloc(n * sizeof(float));
	if (ft_model_forward(m, b, lg, loss, NULL) < 0) { free(lg); return NULL; }
	return lg;
}

/* Logits, loss and the gradient of every tensor the fixture names. */
static void check_grads(ft_model *m, const char *fx, const char *what)
{
	ft_st *st = ft_st_open(fx);
	ft_batch b;
	if (!ok(st && batch_of(st, &b) == 0, "%s: fixture %s", what, fx)) { ft_st_close(st); return; }
	double loss = 0, want = 0, l2 = 0;
	size_t N = (size_t)b.B * b.T, V = ft_model_config(m)->vocab_size;
	float *lg = logits_of(m, &b, &loss), *w = tensor_f32(st, "loss_sum", NULL);
	want = w ? w[0] : NAN;
	double e = lg ? cmp(st, "logits", lg, N * V) : INFINITY;
	ok(e <= 1e-4, "%s: logits within 1e-4 (max rel err %.2g)", what, e);
	ok(rel_err(loss, want, 1e-6) <= 1e-5, "%s: loss sum %.6f vs torch %.6f", what, loss, want);
	ft_model_zero_grad(m);
	ok(ft_model_forward_backward(m, &b, 1.0f, &l2, NULL) == 0, "%s: forward_backward", what);
	double worst = 0;
	int n = 0, missing = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->g) continue;
		char nm[256];
		snprintf(nm, sizeof nm, "grad.%s", p->name);
		if (!ft_st_find(st, nm)) { printf("# no fixture gradient %s\n", nm); missing++; continue; }
		double ge = cmp(st, nm, p->g, p->n);
		if (ge > worst) worst = ge;
		if (ge > 1e-4) printf("# %s: %.2g\n", p->name, ge);
		n++;
	}
	ok(n > 0 && !missing && worst <= 1e-4, "%s: %d gradients within 1e-4 (worst %.2g)", what, n, worst);
	free(lg); free(w); free(b.input_ids); free(b.labels);
	ft_st_close(st);
}

/* Greedy decoding through the KV cache, n tokens after the prompt. */
static int greedy_equal(ft_model *m, const int32_t *prompt, int np, const int32_t *want, int n)
{
	int V = ft_model_config(m)->vocab_size, rows[64] = { 0 }, eq = 1;
	ft_kvcache *c = ft_kvcache_new(m, 1, np + n + 1);
	float *lg = malloc((size_t)np * V * sizeof(float));
	int32_t tok[64];
	memcpy(tok, prompt, np * sizeof *tok);
	int len = np, rc = 0;
	const int32_t *in = tok;
	for (int k = 0; k < n && !rc; k++) {
		int want_last[64] = { 0 };
		want_last[len - 1] = 1;
		rc = ft_infer_forward(m, c, in, rows, len, want_last, lg);
		int best = 0;
		for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
		if (best != want[k]) { printf("# token %d: %d, transformers %d\n", k, best, want[k]); eq = 0; }
		tok[0] = best;
		in = tok;
		len = 1;
	}
	ft_kvcache_free(c);
	free(lg);
	return !rc && eq;
}

static void check_generate(ft_model *m, const char *fx, const char *key, const char *what)
{
	ft_st *st = ft_st_open(fx);
	size_t np = 0, n = 0;
	int32_t *p = st ? tensor_i32(st, "gen.prompt", &np) : NULL, *t = st ? tensor_i32(st, key, &n) : NULL;
	ok(p && t && greedy_equal(m, p, (int)np, t, (int)n), "%s: greedy %zu tokens equal transformers' generate",
	   what, n);
	free(p); free(t);
	ft_st_close(st);
}

/* KV-cache decoding (a prefill of 5, then one token at a time) against
 * the training forward on the whole sequence: max rel error <= 1e-4
 * (attention sums in another order); 12 tokens exceed Gemma's 4-token
 * window, so the cache's sliding layers are checked too. */
static void check_kv(ft_model *m, const char *what)
{
	enum { S = 12 };
	int V = ft_model_config(m)->vocab_size, rows[S] = { 0 };
	int32_t ids[S];
	for (int i = 0; i < S; i++) ids[i] = (i * 37 + 11) % V;
	ft_batch b = { 0 };
	b.B = 1, b.T = S, b.input_ids = ids;
	float *full = logits_of(m, &b, NULL), *got = malloc((size_t)S * V * sizeof(float));
	ft_kvcache *c = ft_kvcache_new(m, 1, S);
	int rc = ft_infer_forward(m, c, ids, rows, 5, NULL, got);
	for (int t = 5; rc == 0 && t < S; t++)
		rc = ft_infer_forward(m, c, ids + t, rows, 1, NULL, got + (size_t)t * V);
	double e = full && rc == 0 ? max_rel(got, full, (size_t)S * V) : INFINITY;
	ok(e <= 1e-4, "%s: KV-cache logits equal the full forward at every position (%.2g)", what, e);
	ft_kvcache_free(c);
	free(full);
	free(got);
}

/* One AdamW step (lr 1e-3, weight decay 0.1 on decay params, grad_scale
 * 1/n_tokens) against torch.optim.AdamW. */
static void check_adamw(const char *dir, const char *fam)
{
	char fx[256], gfx[256];
	snprintf(fx, sizeof fx, FAM "%s/step.safetensors", fam);
	snprintf(gfx, sizeof gfx, FAM "%s/full-grads.safetensors", fam);
	ft_tune_opts o = opts(FT_FT_FULL);
	ft_model *m = ft_model_load(dir, &o);
	ft_st *st = ft_st_open(fx), *gs = ft_st_open(gfx);
	ft_batch b;
	if (!ok(m && st && gs && batch_of(gs, &b) == 0, "%s: AdamW fixtures", fam)) return;
	ft_param **ps = malloc(ft_model_nparams(m) * sizeof *ps);
	size_t np = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++)
		if (ft_model_param(m, i)->g) ps[np++] = ft_model_param(m, i);
	ft_adamw_opts ao;
	ft_adamw_opts_default(&ao);
	ao.weight_decay = 0.1;
	ft_adamw *a = ft_adamw_new(ps, np, &ao);
	ft_model_zero_grad(m);
	ft_model_forward_backward(m, &b, 1.0f / (float)b.n_label_tokens, NULL, NULL);
	ft_adamw_step(a, 1e-3);
	double worst = 0;
	size_t tiny = 0;
	for (size_t i = 0; i < np; i++) {
		char nm[256];
		size_t n = 0;
		snprintf(nm, sizeof nm, "after.%s", ps[i]->name);
		float *ref = tensor_f32(st, nm, &n);
		if (!ref || n != ps[i]->n) { worst = INFINITY; free(ref); continue; }
		double gmax = 0;
		for (size_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(ps[i]->g[k]));
		for (size_t k = 0; k < n; k++) {
			double d = fabs(ps[i]->w[k] - ref[k]);
			if (fabs(ps[i]->g[k]) < 1e-6 * gmax) {   /* noise-level gradient */
				tiny++;
				if (d > 2 * 1e-3) worst = INFINITY;
				continue;
			}
			worst = fmax(worst, d);
		}
		free(ref);
	}
	ok(worst <= 1e-2 * 1e-3, "%s: one AdamW step matches torch on %zu tensors within lr/100 "
	   "(worst %.2g; %zu noise-level gradients within 2 lr)", fam, np, worst, tiny);
	ft_adamw_free(a);
	free(ps); free(b.input_ids); free(b.labels);
	ft_st_close(st); ft_st_close(gs);
	ft_model_free(m);
}

/* LoRA: gradients, generation, merge equals base+adapter, reload. */
static void check_lora(const char *dir, const char *fam)
{
	char fx[256], ad[256];
	snprintf(fx, sizeof fx, FAM "%s/lora-grads.safetensors", fam);
	snprintf(ad, sizeof ad, FAM "%s/lora", fam);
	ft_tune_opts o = opts(FT_FT_LORA);
	ft_model *m = ft_model_load(dir, &o);
	int rc = m ? ft_model_load_adapter(m, ad) : -1;
	if (!ok(rc == 0, "%s: PEFT adapter loads%s%s", fam, rc ? ": " : "", rc ? ft_errmsg() : "")) {
		ft_model_free(m);
		return;
	}
	char what[64];
	snprintf(what, sizeof what, "%s lora", fam);
	check_grads(m, fx, what);
	check_generate(m, fx, "gen.lora_tokens", what);
	ft_st *st = ft_st_open(fx);
	ft_batch b;
	batch_of(st, &b);
	double l0, l1;
	float *before = logits_of(m, &b, &l0);
	ok(ft_model_merge_lora(m) == 0, "%s: merge", what);
	float *after = logits_of(m, &b, &l1);
	size_t n = (size_t)b.B * b.T * ft_model_config(m)->vocab_size;
	double e = before && after ? max_rel(after, before, n) : INFINITY;
	double ep = after ? cmp(st, "logits", after, n) : INFINITY;
	ok(e <= 1e-5, "%s: merged logits equal base+adapter within 1e-5 (%.2g; vs PEFT %.2g)", what, e, ep);
	char tmp[] = "/tmp/ft-test-families-XXXXXX";
	int saved = mkdtemp(tmp) && ft_model_save_full(m, tmp, "float32") == 0;
	ft_tune_opts fo = opts(FT_FT_FULL);
	ft_model *r = saved ? ft_model_load(tmp, &fo) : NULL;
	float *again = r ? logits_of(r, &b, NULL) : NULL;
	ok(again && !memcmp(again, after, n * sizeof(float)),
	   "%s: merged model saved and reloaded gives identical logits", what);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
	if (system(cmd) != 0) printf("# cleanup of %s failed\n", tmp);
	free(before); free(after); free(again); free(b.input_ids); free(b.labels);
	ft_st_close(st);
	ft_model_free(r);
	ft_model_free(m);
}

static void check_family(const char *fam, ft_arch arch)
{
	char dir[256], fx[256], cfg[300];
	snprintf(dir, sizeof dir, FAM "%s/model", fam);
	snprintf(fx, sizeof fx, FAM "%s/full-grads.safetensors", fam);
	snprintf(cfg, sizeof cfg, "%s/config.json", dir);
	ft_config c;
	ok(ft_config_load(cfg, &c) == 0 && c.arch == arch, "%s: config parses", fam);
	ft_tune_opts o = opts(FT_FT_FULL);
	ft_model *m = ft_model_load(dir, &o);
	if (!ok(m != NULL, "%s: sharded model loads%s%s", fam, m ? "" : ": ", m ? "" : ft_errmsg()))
		return;
	check_grads(m, fx, fam);
	check_kv(m, fam);
	ft_model_free(m);
	o = opts(FT_FT_LORA);
	m = ft_model_load(dir, &o);   /* base generation: LoRA B is zero */
	snprintf(fx, sizeof fx, FAM "%s/step.safetensors", fam);
	check_generate(m, fx, "gen.tokens", fam);
	ft_model_free(m);
	check_adamw(dir, fam);
	check_lora(dir, fam);
}

/* A config.json written from a JSON text; the loader's error. */
static const char *refusal(const char *json)
{
	static char msg[512];
	char p[] = "/tmp/ft-test-cfg-XXXXXX";
	int fd = mkstemp(p);
	if (fd < 0 || write(fd, json, strlen(json)) != (ssize_t)strlen(json)) return "(write failed)";
	close(fd);
	ft_config c;
	int rc = ft_config_load(p, &c);
	unlink(p);
	snprintf(msg, sizeof msg, "%s", rc < 0 ? ft_errmsg() : "(accepted)");
	return msg;
}

#define SIZES "\"vocab_size\": 32, \"hidden_size\": 16, \"intermediate_size\": 32, " \
	      "\"num_hidden_layers\": 1, \"num_attention_heads\": 2"

static void check_refusals(void)
{
	const char *e = refusal("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " SIZES "}");
	ok(strstr(e, "Qwen3MoeForCausalLM is not supported") && strstr(e, "Qwen3ForCausalLM") &&
	   strstr(e, "LlamaForCausalLM"), "an unsupported architecture is refused naming the supported ones: %s", e);
	e = refusal("{\"model_type\": \"qwen3_moe\", " SIZES "}");
	ok(strstr(e, "qwen3_moe is not supported") != NULL, "model_type alone: %s", e);
	e = refusal("{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": true, " SIZES "}");
	ok(strstr(e, "attention_bias true is not supported") != NULL, "Qwen3 attention_bias refused: %s", e);
	e = refusal("{\"model_type\": \"qwen3\", " SIZES "}");
	ok(!strcmp(e, "(accepted)"), "model_type qwen3 without architectures loads: %s", e);
}

/* yarn against transformers' ROPE_INIT_FUNCTIONS: the config parsed as
 * ft_config_load does, inv_freq within 1e-6 (float32 powf against torch's
 * pow: an ulp apart at most), the attention factor to 1e-12. */
static void check_yarn(void)
{
	static const struct { const char *name, *rp; int max_pos; } cases[] = {
		{ "yarn", "\"factor\": 4.0, \"original_max_position_embeddings\": 16", 64 },
		{ "yarn_mscale", "\"factor\": 8.0, \"original_max_position_embeddings\": 16, \"mscale\": 0.707, "
		  "\"mscale_all_dim\": 1.0, \"beta_fast\": 16, \"beta_slow\": 2", 128 },
		{ "yarn_notrunc", "\"factor\": 2.0, \"original_max_position_embeddings\": 32, \"truncate\": false, "
		  "\"attention_factor\": 1.25", 64 },
		{ "yarn_nofactor", "\"factor\": null, \"original_max_position_embeddings\": 16", 64 },
	};
	ft_st *st = ft_st_open(FAM "rope.safetensors");
	if (!ok(st != NULL, "rope fixture")) return;
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char js[768], p[] = "/tmp/ft-test-rope-XXXXXX", nm[64];
		snprintf(js, sizeof js, "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": 256, "
			 "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
			 "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 24, "
			 "\"max_position_embeddings\": %d, \"rope_parameters\": {\"rope_type\": \"yarn\", "
			 "\"rope_theta\": 1000000.0, %s}}", cases[i].max_pos, cases[i].rp);
		int fd = mkstemp(p);
		ft_config c;
		int rc = fd >= 0 && write(fd, js, strlen(js)) == (ssize_t)strlen(js) ? 0 : -1;
		if (fd >= 0) close(fd);
		rc = rc ? rc : ft_config_load(p, &c);
		unlink(p);
		if (!ok(rc == 0, "%s: config parses%s%s", cases[i].name, rc ? ": " : "", rc ? ft_errmsg() : ""))
			continue;
		ft_rope_params rp = { "", c.rope_theta, c.rope_factor, c.rope_low_freq_factor,
				      c.rope_high_freq_factor, c.rope_original_max_pos,
				      c.max_position_embeddings, c.rope_beta_fast, c.rope_beta_slow,
				      c.rope_attention_factor, c.rope_truncate, c.rope_short, c.rope_long };
		snprintf(rp.type, sizeof rp.type, "%s", c.rope_type);
		float inv[12];
		ft_rope_inv_freq(inv, c.head_dim, &rp, 1);
		snprintf(nm, sizeof nm, "inv_freq.%s", cases[i].name);
		double e = cmp(st, nm, inv, 12);
		snprintf(nm, sizeof nm, "attention_factor.%s", cases[i].name);
		const ft_st_tensor *t = ft_st_find(st, nm);
		double want = t ? *(const double *)t->data : NAN;
		ok(e <= 1e-6 && fabs(c.rope_attention_factor - want) <= 1e-12,
		   "%s: inv_freq within 1e-6 (%.2g), attention factor %.6f vs %.6f", cases[i].name, e,
		   c.rope_attention_factor, want);
	}
	ft_st_close(st);
}

/* --rope_scaling on the qwen3 fixture (model_max_length 200 over 64
 * positions: factor 4) against transformers under llamafactory's
 * configure_rope: logits within 1e-4, greedy generation token-equal. */
static void check_rope_override(void)
{
	ft_st *st = ft_st_open(FAM "rope.safetensors");
	if (!st) return;
	ft_batch b = { 0 };
	const ft_st_tensor *it = ft_st_find(st, "batch.input_ids");
	b.B = (int)it->shape[0], b.T = (int)it->shape[1];
	b.input_ids = tensor_i32(st, "batch.input_ids", NULL);
	size_t np = 0;
	int32_t *prompt = tensor_i32(st, "gen.prompt", &np);
	const char *kinds[] = { "linear", "dynamic", "yarn", "llama3" };
	for (int k = 0; k < 4; k++) {
		ft_tune_opts o = opts(FT_FT_FREEZE);
		o.freeze_trainable_layers = 1;
		o.rope_scaling = kinds[k];
		o.model_max_length = 200;
		ft_model *m = ft_model_load(FAM "qwen3/model", &o);
		char nm[64];
		if (!ok(m != NULL, "--rope_scaling %s: loads", kinds[k])) continue;
		snprintf(nm, sizeof nm, "max_pos.%s", kinds[k]);
		int32_t *mp = tensor_i32(st, nm, NULL);
		size_t n = (size_t)b.B * b.T * ft_model_config(m)->vocab_size, ng = 0;
		float *lg = logits_of(m, &b, NULL);
		snprintf(nm, sizeof nm, "logits.%s", kinds[k]);
		double e = lg ? cmp(st, nm, lg, n) : INFINITY;
		snprintf(nm, sizeof nm, "gen.%s", kinds[k]);
		int32_t *want = tensor_i32(st, nm, &ng);
		ok(e <= 1e-4 && mp && ft_model_config(m)->max_position_embeddings == mp[0],
		   "--rope_scaling %s: logits within 1e-4 (%.2g), max_position_embeddings %d", kinds[k], e,
		   ft_model_config(m)->max_position_embeddings);
		ok(want && greedy_equal(m, prompt, (int)np, want, (int)ng),
		   "--rope_scaling %s: greedy generation equals transformers'", kinds[k]);
		free(lg); free(mp); free(want);
		ft_model_free(m);
	}
	ft_config c;
	const char *why = NULL;
	ft_config_load(FAM "qwen3/model/config.json", &c);
	int rc = ft_config_rope_override(&c, "yarn", 64, &why);
	ok(rc == 1 && why, "--rope_scaling within the original length is not applied (%s)", why ? why : "");
	rc = ft_config_rope_override(&c, "ntk", 0, &why);
	ok(rc < 0, "--rope_scaling ntk is refused: %s", ft_errmsg());
	free(b.input_ids); free(prompt);
	ft_st_close(st);
}

/* Phi-3 longrope: the long factors past the original 16 positions, the
 * short ones within (logits within 1e-4), gradients of the long batch,
 * greedy generation across the switch token-equal. */
static void check_longrope(void)
{
	const char *fx = FAM "phi3-longrope/longrope.safetensors";
	ft_tune_opts o = opts(FT_FT_FULL);
	ft_model *m = ft_model_load(FAM "phi3-longrope/model", &o);
	if (!ok(m != NULL, "longrope: loads%s%s", m ? "" : ": ", m ? "" : ft_errmsg())) return;
	check_grads(m, fx, "phi3 longrope (24 tokens)");
	ft_st *st = ft_st_open(fx);
	ft_batch b = { 0 };
	b.B = 1, b.T = 12;
	b.input_ids = tensor_i32(st, "batch.input_ids", NULL);
	float *lg = logits_of(m, &b, NULL);
	double e = lg ? cmp(st, "logits.short", lg, (size_t)12 * 256) : INFINITY;
	ok(e <= 1e-4, "phi3 longrope: short factors within the original length (%.2g)", e);
	free(lg); free(b.input_ids);
	ft_st_close(st);
	check_generate(m, fx, "gen.tokens", "phi3 longrope (crossing the original length)");
	ft_model_free(m);
}

/* The largest relative error of the model's gradients against the
 * fixture's "<pre>.grad.<name>" tensors; *n: how many were compared. */
static double grads_worst(ft_model *m, const ft_st *st, const char *pre, int *n)
{
	double worst = 0;
	char nm[256];
	*n = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->g) continue;
		snprintf(nm, sizeof nm, "%s.grad.%s", pre, p->name);
		double ge = cmp(st, nm, p->g, p->n);
		if (ge > 1e-4) printf("# %s: %.2g\n", p->name, ge);
		worst = fmax(worst, ge);
		(*n)++;
	}
	return worst;
}

/* The preference stages' log-prob head on Gemma 2 (final soft-cap 3):
 * logp and the logit means within 1e-4 of transformers' (relative to the
 * largest), the gradients of sum(w * logp) within 1e-4 as above; full
 * and with the LoRA adapter (only its tensors train). */
static void check_pref_softcap(ft_finetuning_type type, const char *pre)
{
	const char *fx = FAM "gemma2/pref.safetensors";
	ft_st *st = ft_st_open(fx);
	ft_tune_opts o = opts(type);
	ft_model *m = ft_model_load(FAM "gemma2/model", &o);
	int rc = m && type == FT_FT_LORA ? ft_model_load_adapter(m, FAM "gemma2/lora") : 0;
	ft_batch b;
	if (!ok(st && m && rc == 0 && batch_of(st, &b) == 0, "gemma2 pref %s: model and fixture", pre)) {
		ft_model_free(m);
		ft_st_close(st);
		return;
	}
	size_t N = (size_t)b.B * b.T;
	float *logp = malloc(N * sizeof(float)), *lmean = malloc(N * sizeof(float));
	float *w = tensor_f32(st, "w", NULL);
	char nm[256];
	ft_model_zero_grad(m);
	rc = ft_model_logps_forward(m, &b, 1, logp, lmean);
	snprintf(nm, sizeof nm, "%s.logp", pre);
	double el = rc == 0 ? cmp(st, nm, logp, N) : INFINITY;
	snprintf(nm, sizeof nm, "%s.lmean", pre);
	double em = rc == 0 ? cmp(st, nm, lmean, N) : INFINITY;
	ok(el <= 1e-4 && em <= 1e-4, "gemma2 pref %s: soft-capped logp (%.2g) and logit means (%.2g)%s%s", pre,
	   el, em, rc ? ": " : "", rc ? ft_errmsg() : "");
	rc = rc == 0 ? ft_model_logps_backward(m, &b, w) : -1;
	int n = 0;
	double worst = rc == 0 ? grads_worst(m, st, pre, &n) : INFINITY;
	ok(n > 0 && worst <= 1e-4, "gemma2 pref %s: %d gradients of sum(w logp) within 1e-4 (worst %.2g)", pre, n,
	   worst);
	free(logp); free(lmean); free(w); free(b.input_ids); free(b.labels);
	ft_model_free(m);
	ft_st_close(st);
}

/* LLaMA-Factory's DFT, EAFT and ASFT losses on Gemma 2 (final soft-cap
 * 3): the loss (DFT, EAFT: the weighted sum, num_items_in_batch 1; ASFT:
 * its mean, against the model with the LoRA adapter) within 1e-5
 * relative, every gradient of the full model within 1e-4 as above.  The
 * EAFT weights are top-20 entropies of the soft-capped logits; ASFT caps
 * both models' logits. */
static void check_tokloss_softcap(int kind, const char *pre)
{
	const char *fx = FAM "gemma2/tokloss.safetensors";
	ft_st *st = ft_st_open(fx);
	ft_tune_opts o = opts(FT_FT_FULL);
	o.sft_loss = kind == FT_SFT_LOSS_ASFT ? FT_SFT_LOSS_CE : kind;
	o.eaft_alpha = 0.5;
	ft_model *m = ft_model_load(FAM "gemma2/model", &o), *ref = NULL;
	ft_tune_opts ro = opts(FT_FT_LORA);
	int rc = 0;
	if (m && kind == FT_SFT_LOSS_ASFT) {
		ref = ft_model_load(FAM "gemma2/model", &ro);
		rc = ref ? ft_model_load_adapter(ref, FAM "gemma2/lora") : -1;
		rc = rc ? rc : ft_model_set_asft(m, ref, 0.5);
	}
	ft_batch b;
	if (!ok(st && m && rc == 0 && batch_of(st, &b) == 0, "gemma2 %s: model and fixture%s%s", pre,
		rc ? ": " : "", rc ? ft_errmsg() : "")) {
		ft_model_free(ref);
		ft_model_free(m);
		ft_st_close(st);
		return;
	}
	char nm[256];
	snprintf(nm, sizeof nm, "%s.loss_sum", pre);
	float *want = tensor_f32(st, nm, NULL);
	double loss = NAN;
	ft_model_zero_grad(m);
	rc = ft_model_forward_backward(m, &b, 1.0f, &loss, NULL);
	ok(rc == 0 && want && rel_err(loss, want[0], 1e-6) <= 1e-5, "gemma2 %s: loss %.6f vs LLaMA-Factory %.6f%s%s",
	   pre, loss, want ? want[0] : NAN, rc ? ": " : "", rc ? ft_errmsg() : "");
	int n = 0;
	double worst = rc == 0 ? grads_worst(m, st, pre, &n) : INFINITY;
	ok(n > 0 && worst <= 1e-4, "gemma2 %s: %d gradients within 1e-4 (worst %.2g)", pre, n, worst);
	free(want); free(b.input_ids); free(b.labels);
	ft_model_free(m);
	ft_model_free(ref);
	ft_st_close(st);
}

/* Phi-4-mini's shape: partial rotary embeddings (12 of 16 values per
 * head) with longrope, tied embeddings; the family checks as above. */
static void check_phi4mini(void)
{
	ft_config c;
	int rc = ft_config_load(FAM "phi4mini/model/config.json", &c);
	ok(rc == 0 && c.rotary_dim == 12 && !strcmp(c.rope_type, "longrope") && c.tie_word_embeddings,
	   "phi4mini: partial_rotary_factor 0.75 of head_dim 16 rotates 12 values, longrope, tied");
	check_family("phi4mini", FT_ARCH_PHI3);
	/* the published config's shape (top-level partial_rotary_factor,
	 * rope_scaling with "type", 48 factors of a 128-wide head) */
	char js[4096], p[] = "/tmp/ft-test-phi4mini-XXXXXX";
	int k = snprintf(js, sizeof js, "{\"architectures\": [\"Phi3ForCausalLM\"], \"model_type\": \"phi3\", "
			 "\"vocab_size\": 200064, \"hidden_size\": 3072, \"intermediate_size\": 8192, "
			 "\"num_hidden_layers\": 32, \"num_attention_heads\": 24, \"num_key_value_heads\": 8, "
			 "\"max_position_embeddings\": 131072, \"original_max_position_embeddings\": 4096, "
			 "\"partial_rotary_factor\": 0.75, \"rope_theta\": 10000.0, \"sliding_window\": 262144, "
			 "\"tie_word_embeddings\": true, \"resid_pdrop\": 0.0, \"embd_pdrop\": 0.0, "
			 "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [");
	for (int i = 0; i < 48; i++) k += snprintf(js + k, sizeof js - k, "%s1.0", i ? ", " : "");
	k += snprintf(js + k, sizeof js - k, "], \"long_factor\": [");
	for (int i = 0; i < 48; i++) k += snprintf(js + k, sizeof js - k, "%s2.5", i ? ", " : "");
	snprintf(js + k, sizeof js - k, "]}}");
	int fd = mkstemp(p);
	rc = fd >= 0 && write(fd, js, strlen(js)) == (ssize_t)strlen(js) ? 0 : -1;
	if (fd >= 0) close(fd);
	rc = rc ? rc : ft_config_load(p, &c);
	unlink(p);
	ok(rc == 0 && c.rotary_dim == 96 && c.rope_original_max_pos == 4096 && c.rope_long[47] == 2.5f,
	   "Phi-4-mini's published config shape parses: 96 of 128 values rotate, 48 longrope factors%s%s",
	   rc ? ": " : "", rc ? ft_errmsg() : "");
}

int main(void)
{
	if (access(FAM "qwen3/model/config.json", R_OK) != 0) {
		skip("no fixtures under " FAM " (run from the repository root)");
		return tap_done();
	}
	check_refusals();
	check_family("qwen3", FT_ARCH_QWEN3);
	check_family("r1distill", FT_ARCH_QWEN2);   /* DeepSeek-R1-Distill-Qwen */
	check_family("gemma2", FT_ARCH_GEMMA2);
	check_family("gemma3", FT_ARCH_GEMMA3);
	check_family("phi3", FT_ARCH_PHI3);
	check_phi4mini();
	check_longrope();
	check_pref_softcap(FT_FT_FULL, "full");
	check_pref_softcap(FT_FT_LORA, "lora");
	check_tokloss_softcap(FT_SFT_LOSS_DFT, "dft");
	check_tokloss_softcap(FT_SFT_LOSS_EAFT, "eaft");
	check_tokloss_softcap(FT_SFT_LOSS_ASFT, "asft");
	check_yarn();
	check_rope_override();
	return tap_done();
}
