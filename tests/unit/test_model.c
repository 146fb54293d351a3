/* test_model.c - whole-model parity with PyTorch/transformers/PEFT.
 *
 * Fixtures from tests/reference/make_model_fixtures.py (see
 * tests/fixtures/parity/README.md).  Tolerances (fp32 throughout):
 *   logits and every gradient: max |ours - torch| / max |torch| <= 1e-4
 *   summed losses: relative error <= 1e-5
 *   gradient checkpointing and save/reload round trips: bit-identical.
 * Set FT_PEFT_CHECK_DIR=dir to also write an adapter plus our logits for
 * `make_model_fixtures.py --check-adapter dir` (PEFT loads it).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "util/json.h"
#include "model/model.h"
#include "format/safetensors.h"

#define LLAMA "tests/fixtures/models/tiny-llama"
#define QWEN2 "tests/fixtures/models/tiny-qwen2"
#define PAR "tests/fixtures/parity/"

static ft_st *fx(const char *name)
{
	ft_st *st = ft_st_open(name);
	if (!st)
		printf("# %s\n", ft_errmsg());
	return st;
}

static double cmp_tensor(const ft_st *st, const char *name, const float *got, size_t n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t || t->numel != n) {
		printf("# fixture tensor %s missing or of another size\n", name);
		return INFINITY;
	}
	float *ref = malloc(n * sizeof(float));
	ft_st_read_f32(t, ref);
	double e = max_rel(got, ref, n);
	free(ref);
	return e;
}

static int32_t *i32(const ft_st *st, const char *name, size_t *n)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t || t->dtype != FT_I32)
		return NULL;
	int32_t *v = malloc(t->nbytes);
	memcpy(v, t->data, t->nbytes);
	if (n)
		*n = t->numel;
	return v;
}

static double scalar(const ft_st *st, const char *name)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	float v = NAN;
	if (t && t->numel == 1)
		ft_st_read_f32(t, &v);
	if (t && t->dtype == FT_F64)
		return *(const double *)t->data;
	return v;
}

static int load_batch(const ft_st *st, const char *prefix, ft_batch *b)
{
	char a[128], c[128];
	snprintf(a, sizeof a, "%sinput_ids", prefix);
	snprintf(c, sizeof c, "%slabels", prefix);
	const ft_st_tensor *t = ft_st_find(st, a);
	memset(b, 0, sizeof *b);
	if (!t)
		return -1;
	b->B = (int)t->shape[0];
	b->T = (int)t->shape[1];
	b->input_ids = i32(st, a, NULL);
	b->labels = i32(st, c, NULL);
	for (int i = 0; i < b->B * b->T; i++)
		b->n_label_tokens += b->labels[i] != -100;
	return 0;
}

static void free_batch(ft_batch *b)
{
	free(b->input_ids); free(b->labels); free(b->position_ids); free(b->segment_ids);
}

static ft_tune_opts opts(ft_finetuning_type t)
{
	ft_tune_opts o = { .type = t, .lora_rank = 4, .lora_alpha = 8,
			   .lora_targets = FT_MOD_ALL_LINEAR, .seed = 42 };
	return o;
}

/* Logits, summed loss and every trainable gradient against a fixture. */
static void check_parity(ft_model *m, const char *fixture, const char *what)
{
	ft_st *st = fx(fixture);
	ft_batch b;
	if (!st || load_batch(st, "batch.", &b) < 0) {
		ok(0, "%s: fixture %s", what, fixture);
		return;
	}
	size_t V = ft_model_config(m)->vocab_size, N = (size_t)b.B * b.T;
	float *logits = malloc(N * V * sizeof(float));
	double loss = 0, loss2 = 0;
	int64_t nt = 0, nt2 = 0;
	ok(ft_model_forward(m, &b, logits, &loss, &nt) == 0, "%s: forward", what);
	double e = cmp_tensor(st, "logits", logits, N * V);
	ok(e <= 1e-4, "%s: logits within 1e-4 (max rel err %.2g)", what, e);
	double want = scalar(st, "loss_sum");
	ok(rel_err(loss, want, 1e-6) <= 1e-5, "%s: loss sum %.6f vs torch %.6f", what, loss, want);
	ok(nt == (int64_t)scalar(st, "n_tokens"), "%s: %lld label tokens", what, (long long)nt);
	/* forward_backward's LM head sees only the rows with a target, as
	 * ft_model_forward does when asked for no logits: the same products
	 * in the same order, so the same loss.  (The all-rows product above
	 * is blocked differently by OpenBLAS and can differ in the last bits
	 * on some CPUs; it is held to torch's value instead.) */
	double loss_rows = 0;
	ok(ft_model_forward(m, &b, NULL, &loss_rows, NULL) == 0, "%s: forward without logits", what);
	ft_model_zero_grad(m);
	ok(ft_model_forward_backward(m, &b, 1.0f, &loss2, &nt2) == 0 &&
	   rel_err(loss2, loss_rows, 1e-6) <= 1e-9 && nt2 == nt,
	   "%s: forward_backward gives the same loss", what);
	double worst = 0;
	const char *wname = "";
	int ngrad = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (!p->trainable)
			continue;
		char name[200];
		snprintf(name, sizeof name, "grad.%s", p->name);
		double ge = cmp_tensor(st, name, p->g, p->n);
		ngrad++;
		if (!(ge <= worst)) {
			worst = ge;
			wname = p->name;
		}
	}
	ok(ngrad > 0 && worst <= 1e-4, "%s: %d gradients within 1e-4 (worst %.2g: %s)", what,
	   ngrad, worst, wname);
	free(logits);
	free_batch(&b);
	ft_st_close(st);
}

/* Copies of every gradient, for bit-equality checks. */
static float **grads(ft_model *m)
{
	float **g = calloc(ft_model_nparams(m), sizeof *g);
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (p->g) {
			g[i] = malloc(p->n * sizeof(float));
			memcpy(g[i], p->g, p->n * sizeof(float));
		}
	}
	return g;
}

static int same_grads(ft_model *a, float **g)
{
	int same = 1;
	for (size_t i = 0; i < ft_model_nparams(a); i++) {
		ft_param *p = ft_model_param(a, i);
		if (p->g && (!g[i] || memcmp(p->g, g[i], p->n * sizeof(float))))
			same = 0;
		free(g[i]);
	}
	free(g);
	return same;
}

static void test_checkpointing(const char *dir, ft_finetuning_type t, double dropout)
{
	ft_st *st = fx(PAR "llama-full-grads.safetensors");
	ft_batch b;
	load_batch(st, "batch.", &b);
	ft_tune_opts o = opts(t);
	o.lora_dropout = dropout;
	ft_model *m = ft_model_load(dir, &o);
	o.gradient_checkpointing = 1;
	ft_model *c = ft_model_load(dir, &o);
	if (!m || !c) {
		ok(0, "load for checkpointing: %s", ft_errmsg());
		return;
	}
	double l1, l2;
	int64_t n1, n2;
	ft_model_zero_grad(m);
	ft_model_zero_grad(c);
	ft_model_forward_backward(m, &b, 0.01f, &l1, &n1);
	ft_model_forward_backward(c, &b, 0.01f, &l2, &n2);
	float **g = grads(m);
	ok(l1 == l2 && same_grads(c, g), "gradient checkpointing (type %d, dropout %.1f): "
	   "identical loss and gradients", t, dropout);
	ft_model_free(m);
	ft_model_free(c);
	free_batch(&b);
	ft_st_close(st);
}

static void test_packed(const char *dir, const char *fixture, const char *what)
{
	ft_st *st = fx(fixture);
	ft_model *m = ft_model_load(dir, &(ft_tune_opts){ .type = FT_FT_FULL });
	if (!st || !m) {
		ok(0, "%s packed: %s", what, ft_errmsg());
		return;
	}
	ft_batch b = { 0 };
	b.B = 1;
	b.T = (int)ft_st_find(st, "input_ids")->shape[1];
	b.input_ids = i32(st, "input_ids", NULL);
	b.position_ids = i32(st, "position_ids", NULL);
	b.segment_ids = i32(st, "segment_ids", NULL);
	int32_t *lab = i32(st, "labels", NULL);
	b.labels = malloc(b.T * sizeof(int32_t));
	const ft_st_tensor *pe = ft_st_find(st, "loss_per_example");
	const double *want = pe->data;
	double worst = 0, total = 0, all;
	for (int s = 1; s <= (int)pe->numel; s++) {
		for (int t = 0; t < b.T; t++)
			b.labels[t] = b.segment_ids[t] == s ? lab[t] : -100;
		double loss;
		ft_model_forward(m, &b, NULL, &loss, NULL);
		double e = rel_err(loss, want[s - 1], 1e-6);
		if (e > worst)
			worst = e;
		total += want[s - 1];
	}
	ok(worst <= 1e-5, "%s: packed per-example losses equal separate runs (rel err %.2g)",
	   what, worst);
	memcpy(b.labels, lab, b.T * sizeof(int32_t));
	ft_model_forward(m, &b, NULL, &all, NULL);
	ok(rel_err(all, total, 1e-6) <= 1e-5, "%s: packed total loss %.5f = sum %.5f", what, all, total);
	/* Without segment ids the examples would see each other. */
	int32_t *seg = b.segment_ids;
	b.segment_ids = NULL;
	ft_model_forward(m, &b, NULL, &all, NULL);
	ok(rel_err(all, total, 1e-6) > 1e-6, "%s: segment ids matter (%.5f without)", what, all);
	b.segment_ids = seg;
	free(lab);
	free_batch(&b);
	ft_model_free(m);
	ft_st_close(st);
}

/* Right padding with the batch's lengths (HF's attention_mask): the loss
 * and every gradient are bit-identical to the same batch without lengths
 * (real positions never see a padding key, and the loss has no label on
 * padding), the real positions' logits too; only the padding positions'
 * logits change (they now see the real tokens alone). */
static void test_lengths(const char *dir, ft_finetuning_type t, const char *what)
{
	ft_st *st = fx(PAR "llama-full-grads.safetensors");
	ft_batch b;
	ft_model *m = ft_model_load(dir, &(ft_tune_opts){ .type = t, .lora_rank = 4,
							 .lora_alpha = 8,
							 .lora_targets = FT_MOD_ALL_LINEAR,
							 .seed = 3 });
	if (!st || load_batch(st, "batch.", &b) < 0 || !m || b.B < 2) {
		ok(0, "%s lengths: setup: %s", what, ft_errmsg());
		return;
	}
	int32_t *len = malloc(b.B * sizeof *len);
	for (int r = 0; r < b.B; r++) {
		len[r] = b.T - 3 * r > 1 ? b.T - 3 * r : 1;
		for (int u = len[r]; u < b.T; u++)
			b.labels[r * b.T + u] = -100;
	}
	b.n_label_tokens = 0;
	for (int i = 0; i < b.B * b.T; i++)
		b.n_label_tokens += b.labels[i] != -100;
	size_t V = ft_model_config(m)->vocab_size, nl = (size_t)b.B * b.T * V;
	float *lg[2] = { malloc(nl * 4), malloc(nl * 4) };
	double l[2];
	float **g = NULL;
	for (int k = 0; k < 2; k++) {
		b.lengths = k ? len : NULL;
		ft_model_forward(m, &b, lg[k], NULL, NULL);
		ft_model_zero_grad(m);
		ft_model_forward_backward(m, &b, 0.01f, &l[k], NULL);
		if (!k)
			g = grads(m);
	}
	int real_same = 1, pad_moved = 0;
	for (int r = 0; r < b.B; r++)
		for (int u = 0; u < b.T; u++) {
			int d = memcmp(lg[0] + ((size_t)r * b.T + u) * V, lg[1] + ((size_t)r * b.T + u) * V,
				       V * 4) != 0;
			if (u < len[r]) real_same &= !d;
			else pad_moved |= d;
		}
	ok(l[0] == l[1] && same_grads(m, g) && real_same && pad_moved,
	   "%s: right padding by lengths: loss, gradients and real logits bit-identical, "
	   "padding logits moved", what);
	b.lengths = NULL;
	free(len);
	free(lg[0]);
	free(lg[1]);
	free_batch(&b);
	ft_model_free(m);
	ft_st_close(st);
}

static void test_params(void)
{
	ft_tune_opts o = opts(FT_FT_FREEZE);
	o.freeze_trainable_layers = 1;
	ft_model *m = ft_model_load(QWEN2, &o);
	if (!m) {
		ok(0, "load qwen2: %s", ft_errmsg());
		return;
	}
	int bad = 0, ntr = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		int want = strstr(p->name, "layers.1.") != NULL;
		bad += p->trainable != want || (p->g != NULL) != want;
		ntr += p->trainable;
		int nodecay = strstr(p->name, "bias") || strstr(p->name, "norm");
		bad += p->decay == nodecay;
	}
	ok(!bad && ntr == 12, "freeze last 1 layer: %d trainable, decay excludes biases and norms", ntr);
	ok(ft_model_find_param(m, "lm_head.weight") == NULL &&
	   ft_model_find_param(m, "model.embed_tokens.weight") != NULL,
	   "tied lm_head is listed once as the embedding");
	ft_model_free(m);
	o.freeze_trainable_layers = -1;
	o.freeze_trainable_modules = FT_MOD_MLP;
	m = ft_model_load(QWEN2, &o);
	bad = ntr = 0;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		int want = strstr(p->name, "layers.0.mlp.") != NULL;
		bad += p->trainable != want;
		ntr += p->trainable;
	}
	ok(!bad && ntr == 3, "freeze first layer, mlp only: %d trainable", ntr);
	ft_model_free(m);
	o = opts(FT_FT_LORA);
	o.lora_targets = 0;   /* default q_proj,v_proj */
	o.lora_rank = 0;
	o.lora_alpha = 0;
	m = ft_model_load(LLAMA, &o);
	ntr = 0;
	int shapes = 1;
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		ntr += p->trainable;
		if (p->trainable && strstr(p->name, "lora_B"))
			for (size_t k = 0; k < p->n; k++)
				shapes &= p->g != NULL && p->w[k] == 0;
		if (p->trainable && strstr(p->name, "q_proj.lora_A"))
			shapes &= p->shape[0] == 8 && p->shape[1] == 64;
	}
	ok(ntr == 8 && shapes, "lora defaults: q_proj,v_proj, r=8, B zero (%d adapters)", ntr);
	ft_param *a = ft_model_find_param(m, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
	double lo = 0, hi = 0, bound = 1 / sqrt(64.0);
	for (size_t k = 0; a && k < a->n; k++) {
		lo = fmin(lo, a->w[k]);
		hi = fmax(hi, a->w[k]);
	}
	ok(a && lo >= -bound && hi <= bound && hi - lo > bound,
	   "lora_A kaiming-uniform in [-1/sqrt(in), 1/sqrt(in)]");
	ft_model_free(m);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

static void test_errors(void)
{
	char dir[] = "/tmp/ft-test-model-XXXXXX";
	if (!mkdtemp(dir)) {
		ok(0, "mkdtemp");
		return;
	}
	char cfg[300], st[300];
	snprintf(cfg, sizeof cfg, "%s/config.json", dir);
	snprintf(st, sizeof st, "%s/model.safetensors", dir);
	write_file(cfg, "{\"architectures\": [\"GPT2LMHeadModel\"], \"vocab_size\": 10}");
	ft_tune_opts o = opts(FT_FT_FULL);
	int failed = !ft_model_load(dir, &o);
	ok(failed && strstr(ft_errmsg(), "GPT2LMHeadModel"),
	   "unsupported architecture named: %s", ft_errmsg());
	/* the tiny llama's config with a weights file lacking lm_head */
	json_t *j = ft_json_load_file(LLAMA "/config.json");
	ft_json_save_file(j, cfg, 2);
	json_decref(j);
	ft_model *m = ft_model_load(LLAMA, &o);
	ft_st_writer *w = ft_st_writer_new();
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		if (strcmp(p->name, "lm_head.weight"))
			ft_st_writer_add(w, p->name, FT_F32, p->ndim, p->shape, p->w);
	}
	ft_st_writer_write(w, st);
	ft_st_writer_free(w);
	failed = !ft_model_load(dir, &o);
	ok(failed && strstr(ft_errmsg(), "lm_head.weight") &&
	   strstr(ft_errmsg(), "missing"), "missing tensor named: %s", ft_errmsg());
	w = ft_st_writer_new();
	for (size_t i = 0; i < ft_model_nparams(m); i++) {
		ft_param *p = ft_model_param(m, i);
		int64_t sh[2] = { p->shape[0], p->shape[1] };
		if (!strcmp(p->name, "model.layers.1.mlp.up_proj.weight"))
			sh[0] = 32;
		ft_st_writer_add(w, p->name, FT_F32, p->ndim, sh, p->w);
	}
	ft_st_writer_write(w, st);
	ft_st_writer_free(w);
	failed = !ft_model_load(dir, &o);
	ok(failed && strstr(ft_errmsg(), "up_proj") &&
	   strstr(ft_errmsg(), "[32, 64]"), "mis-shaped tensor named: %s", ft_errmsg());
	ft_model_free(m);
	unlink(cfg);
	unlink(st);
	rmdir(dir);
}

/* A model split in two shards with model.safetensors.index.json. */
static void test_sharded(void)
{
	char dir[] = "/tmp/ft-test-shards-XXXXXX", p[300];
	if (!mkdtemp(dir)) {
		ok(0, "mkdtemp");
		return;
	}
	ft_model *m = ft_model_load(LLAMA, &(ft_tune_opts){ .type = FT_FT_FULL });
	json_t *j = ft_json_load_file(LLAMA "/config.json"), *wm = json_object();
	snprintf(p, sizeof p, "%s/config.json", dir);
	ft_json_save_file(j, p, 2);
	json_decref(j);
	size_t n = ft_model_nparams(m), total = 0;
	for (int s = 0; s < 2; s++) {
		ft_st_writer *w = ft_st_writer_new();
		char *name = ft_st_shard_name(s + 1, 2);
		for (size_t i = s ? n / 2 : 0; i < (s ? n : n / 2); i++) {
			ft_param *q = ft_model_param(m, i);
			ft_st_writer_add(w, q->name, FT_F32, q->ndim, q->shape, q->w);
			json_object_set_new(wm, q->name, json_string(name));
			total += q->n * 4;
		}
		snprintf(p, sizeof p, "%s/%s", dir, name);
		ft_st_writer_write(w, p);
		ft_st_writer_free(w);
		free(name);
	}
	ft_st_write_index(dir, wm, total, 0);
	json_decref(wm);
	ft_model *s = ft_model_load(dir, &(ft_tune_opts){ .type = FT_FT_FULL });
	int same = s && ft_model_nparams(s) == n;
	for (size_t i = 0; same && i < n; i++)
		same = !memcmp(ft_model_param(s, i)->w, ft_model_param(m, i)->w,
			       ft_model_param(m, i)->n * sizeof(float));
	ok(same, "sharded model (index + 2 shards) loads the same weights%s%s",
	   s ? "" : ": ", s ? "" : ft_errmsg());
	ft_model_free(s);
	ft_model_free(m);
	snprintf(p, sizeof p, "rm -rf '%s'", dir);
	if (system(p)) {}
}

/* Config spellings: transformers 4.x rope_scaling/rope_theta, Mistral's
 * sliding window, head_dim absent. */
static void test_configs(void)
{
	char path[] = "/tmp/ft-test-config-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0) {
		ok(0, "mkstemp");
		return;
	}
	close(fd);
	ft_config c;
	write_file(path, "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 100, "
		   "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
		   "\"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"sliding_window\": 4096, "
		   "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}, "
		   "\"torch_dtype\": \"bfloat16\"}");
	int rc = ft_config_load(path, &c);
	ok(rc == 0 && c.arch == FT_ARCH_MISTRAL && c.sliding_window == 4096 && c.head_dim == 8 &&
	   c.rope_theta == 500000.0 && !strcmp(c.rope_type, "linear") && c.rope_factor == 2.0 &&
	   !strcmp(c.torch_dtype, "bfloat16") && !c.attention_bias,
	   "mistral config, 4.x rope_scaling spelling, head_dim derived");
	write_file(path, "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 100, "
		   "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
		   "\"num_attention_heads\": 8, \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 4.0}}");
	rc = ft_config_load(path, &c);
	ok(rc < 0 && strstr(ft_errmsg(), "longrope"), "rope type longrope refused: %s", ft_errmsg());
	write_file(path, "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 100, "
		   "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
		   "\"num_attention_heads\": 8, \"num_key_value_heads\": 3}");
	rc = ft_config_load(path, &c);
	ok(rc < 0 && strstr(ft_errmsg(), "num_key_value_heads"), "heads not a multiple of kv "
	   "heads refused: %s", ft_errmsg());
	write_file(path, "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 100, "
		   "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 8}");
	rc = ft_config_load(path, &c);
	ok(rc < 0 && strstr(ft_errmsg(), "hidden_size"), "missing hidden_size named: %s", ft_errmsg());
	unlink(path);
}

static double fwd_loss(ft_model *m, const ft_batch *b)
{
	double l = NAN;
	ft_model_forward(m, b, NULL, &l, NULL);
	return l;
}

static void test_save(void)
{
	ft_st *st = fx(PAR "llama-full-grads.safetensors");
	ft_batch b;
	load_batch(st, "batch.", &b);
	ft_tune_opts o = opts(FT_FT_LORA);
	o.lora_targets = FT_MOD_Q | FT_MOD_V | FT_MOD_DOWN;
	o.lora_alpha = 16;
	o.use_rslora = 1;
	ft_model *m = ft_model_load(LLAMA, &o);
	ft_model_zero_grad(m);
	ft_model_forward_backward(m, &b, 1.0f / b.n_label_tokens, NULL, NULL);
	for (size_t i = 0; i < ft_model_nparams(m); i++) {   /* one SGD step */
		ft_param *p = ft_model_param(m, i);
		for (size_t k = 0; p->trainable && k < p->n; k++)
			p->w[k] -= 0.5f * p->g[k];
	}
	double want = fwd_loss(m, &b);
	char dir[] = "/tmp/ft-test-adapter-XXXXXX";
	mkdtemp(dir);
	const char *peft = getenv("FT_PEFT_CHECK_DIR");
	const char *out = peft && *peft ? peft : dir;
	int rc = ft_model_save(m, out);
	ok(rc == 0, "save adapter%s%s", rc ? ": " : "", rc ? ft_errmsg() : "");
	char p[300];
	snprintf(p, sizeof p, "%s/adapter_config.json", out);
	json_t *j = ft_json_load_file(p);
	ok(j && !strcmp(ft_json_str(j, "peft_type", ""), "LORA") && ft_json_int(j, "r", 0) == 4 &&
	   ft_json_int(j, "lora_alpha", 0) == 16 && ft_json_bool(j, "use_rslora", 0) == 1 &&
	   !strcmp(ft_json_str(j, "task_type", ""), "CAUSAL_LM") &&
	   json_array_size(json_object_get(j, "target_modules")) == 3,
	   "adapter_config.json has PEFT's fields");
	json_decref(j);
	ft_tune_opts o2 = opts(FT_FT_LORA);   /* other rank/targets: replaced */
	ft_model *r = ft_model_load(LLAMA, &o2);
	rc = ft_model_load_adapter(r, out);
	ok(rc == 0, "load adapter%s%s", rc ? ": " : "", rc ? ft_errmsg() : "");
	double got = fwd_loss(r, &b);
	ok(got == want && ft_model_nparams(r) == ft_model_nparams(m),
	   "reloaded adapter reproduces the loss (%.6f)", got);
	if (peft && *peft) {
		size_t N = (size_t)b.B * b.T, V = ft_model_config(m)->vocab_size;
		float *lg = malloc(N * V * sizeof(float));
		ft_model_forward(m, &b, lg, NULL, NULL);
		ft_st_writer *w = ft_st_writer_new();
		int64_t sh[2] = { (int64_t)N, (int64_t)V };
		ft_st_writer_add(w, "logits", FT_F32, 2, sh, lg);
		snprintf(p, sizeof p, "%s/ft_logits.safetensors", out);
		ok(ft_st_writer_write(w, p) == 0, "wrote %s for the PEFT check", p);
		ft_st_writer_free(w);
		free(lg);
	}
	/* merged full weights, saved as f32 and bf16 */
	ok(ft_model_merge_lora(m) == 0 && rel_err(fwd_loss(m, &b), want, 1e-6) < 1e-5,
	   "merged adapter keeps the loss");
	char full[320];
	snprintf(full, sizeof full, "%s/%s", peft && *peft ? peft : dir,
		 peft && *peft ? "merged" : "full");
	rc = ft_model_save_full(m, full, "float32");
	ok(rc == 0, "save full f32%s%s", rc ? ": " : "", rc ? ft_errmsg() : "");
	ft_model *f = ft_model_load(full, &(ft_tune_opts){ .type = FT_FT_FULL });
	ok(f && fwd_loss(f, &b) == fwd_loss(m, &b), "reloaded f32 model: same loss");
	ft_model_free(f);
	snprintf(full, sizeof full, "%s/bf16", dir);
	ok(ft_model_save_full(m, full, "bfloat16") == 0, "save full bf16");
	f = ft_model_load(full, &(ft_tune_opts){ .type = FT_FT_FULL });
	ok(f && rel_err(fwd_loss(f, &b), want, 1e-6) < 1e-2 &&
	   !strcmp(ft_model_config(f)->torch_dtype, "bfloat16"),
	   "reloaded bf16 model: loss within bf16 rounding, dtype in config");
	ft_model_free(f);
	snprintf(p, sizeof p, "rm -rf '%s'", dir);
	if (system(p)) {}
	ft_model_free(m);
	ft_model_free(r);
	free_batch(&b);
	ft_st_close(st);
}

/* --train_from_scratch draws weights with the config's initializer_range. */
static void test_init_range(void)
{
	ft_config c;
	if (!ok(ft_config_load(LLAMA "/config.json", &c) == 0, "config loads for init test")) return;
	ok(c.initializer_range == 0.02, "initializer_range read from config.json (%g)", c.initializer_range);
	double want[2] = {0.02, 0.1};
	for (int k = 0; k < 2; k++) {
		c.initializer_range = want[k];
		ft_model *m = ft_model_from_config(&c, &(ft_tune_opts){ .type = FT_FT_FULL, .seed = 1 });
		ft_param *p = m ? ft_model_find_param(m, "model.embed_tokens.weight") : NULL;
		double ss = 0;
		for (size_t i = 0; p && i < p->n; i++) ss += (double)p->w[i] * p->w[i];
		double sd = p ? sqrt(ss / p->n) : 0;
		ok(p && fabs(sd - want[k]) < 0.1 * want[k], "random init std %.4f for initializer_range %g", sd, want[k]);
		ft_model_free(m);
	}
}

int main(void)
{
	if (access(LLAMA "/model.safetensors", R_OK)) {
		skip("run from the repository root (fixtures not found)");
		return tap_done();
	}
	ft_model *m = ft_model_load(LLAMA, &(ft_tune_opts){ .type = FT_FT_FULL });
	ok(m != NULL, "load tiny-llama%s%s", m ? "" : ": ", m ? "" : ft_errmsg());
	if (m) {
		const ft_config *c = ft_model_config(m);
		ok(c->num_key_value_heads == 2 && !strcmp(c->rope_type, "llama3") &&
		   c->rope_original_max_pos == 16, "llama config: GQA, llama3 rope");
		check_parity(m, PAR "llama-full-grads.safetensors", "llama full");
		ft_model_free(m);
	}
	m = ft_model_load(QWEN2, &(ft_tune_opts){ .type = FT_FT_FULL });
	ok(m && ft_model_config(m)->attention_bias && ft_model_config(m)->tie_word_embeddings,
	   "load tiny-qwen2: biases, tied embeddings");
	if (m) {
		check_parity(m, PAR "qwen2-full-grads.safetensors", "qwen2 full");
		ft_model_free(m);
	}
	ft_tune_opts o = opts(FT_FT_LORA);
	const char *kinds[2][3] = { { LLAMA, PAR "llama-lora-grad", PAR "llama-lora-grads.safetensors" },
				    { QWEN2, PAR "qwen2-lora-grad", PAR "qwen2-lora-grads.safetensors" } };
	for (int k = 0; k < 2; k++) {
		m = ft_model_load(kinds[k][0], &o);
		int rc = m ? ft_model_load_adapter(m, kinds[k][1]) : -1;
		ok(rc == 0, "load PEFT adapter %s%s%s", kinds[k][1], rc ? ": " : "",
		   rc ? ft_errmsg() : "");
		if (m)
			check_parity(m, kinds[k][2], k ? "qwen2 lora" : "llama lora");
		ft_model_free(m);
	}
	test_checkpointing(LLAMA, FT_FT_FULL, 0);
	test_checkpointing(QWEN2, FT_FT_LORA, 0.1);
	test_packed(LLAMA, PAR "llama-packed.safetensors", "llama");
	test_packed(QWEN2, PAR "qwen2-packed.safetensors", "qwen2");
	test_lengths(LLAMA, FT_FT_FULL, "llama full");
	test_lengths(QWEN2, FT_FT_LORA, "qwen2 lora");
	test_params();
	test_errors();
	test_configs();
	test_sharded();
	test_save();
	test_init_range();
	return tap_done();
}
