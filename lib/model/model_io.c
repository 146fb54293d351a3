/* model_io.c - model weights and PEFT adapters in and out (safetensors
 * through lib/format/safetensors.h, JSON through lib/util/json.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "format/adapter_config.h"
#include "format/safetensors.h"
#include "model/model_internal.h"

static int is_adapter(const ft_param *p)
{
	return !strncmp(p->name, "base_model.", 11);
}

/* The name PEFT saves a trained embedding copy under (modules_to_save),
 * NULL for the other base tensors. */
static const char *module_saved_name(const ft_model *m, const ft_param *p)
{
	if (!m->o.modules_to_save) return NULL;
	if (p->w == m->wte.w) return "base_model.model.model.embed_tokens.weight";
	if (p->w == m->lm_head.w) return "base_model.model.lm_head.weight";
	return NULL;
}

/* PEFT's save_embedding_layers "auto" on a vocabulary resized against
 * the base's config: each wrapped layer whole, its trained copy
 * (".modules_to_save.weight") and the frozen rows (".original_module.weight"),
 * beside the copy under the plain name. */
static void add_resized_layers(ft_model *m, ft_st_writer *w)
{
	static const char *const base[2] = { "base_model.model.model.embed_tokens",
					     "base_model.model.lm_head" };
	if (!m->o.modules_to_save || !m->wte0) return;
	int64_t shape[2] = { m->c.vocab_size, m->c.hidden_size };
	const float *copy[2] = { m->wte.w, m->lm_head.w }, *orig[2] = { m->wte0, m->head0 };
	for (int k = 0; k < 2; k++) {
		char *a = ft_xasprintf("%s.modules_to_save.weight", base[k]);
		char *b = ft_xasprintf("%s.original_module.weight", base[k]);
		ft_st_writer_add(w, a, FT_F32, 2, shape, copy[k]);
		ft_st_writer_add(w, b, FT_F32, 2, shape, orig[k]);
		free(a);
		free(b);
	}
}

static int check_shape(const ft_st_tensor *t, const ft_param *p, const char *where)
{
	int ok = t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
		 (p->ndim == 1 || t->shape[1] == p->shape[1]);
	if (ok)
		return 0;
	char got[64] = "", want[64];
	for (int i = 0; i < t->ndim && i < 4; i++)
		snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
			 i ? ", " : "", (long long)t->shape[i]);
	if (p->ndim == 1)
		snprintf(want, sizeof want, "%lld", (long long)p->shape[0]);
	else
		snprintf(want, sizeof want, "%lld, %lld", (long long)p->shape[0],
			 (long long)p->shape[1]);
	return ft_fail("%s: tensor %s has shape [%s], expected [%s]", where, p->name, got, want);
}

/* Base weights from a HF model directory (after the parameter list is
 * built, which names and shapes every expected tensor). */
int ft_model_read_weights(ft_model *m, const char *dir)
{
	ft_st *st = ft_st_open(dir);
	if (!st)
		return -1;
	int rc = 0;
	for (size_t i = 0; i < m->nparams && !rc; i++) {
		ft_param *p = &m->params[i];
		if (is_adapter(p))
			continue;
		const ft_st_tensor *t = ft_st_find(st, p->name);
		if (!t) {
			rc = ft_fail("%s: tensor %s is missing", dir, p->name);
			break;
		}
		if (check_shape(t, p, t->file ? t->file : dir) < 0)
			rc = -1;
		else if (ft_st_read_f32(t, p->w) < 0)
			rc = ft_fail_ctx("%s: %s: ", t->file ? t->file : dir, p->name);
		else if (m->o.quantization_bit)   /* QLoRA: held quantized from here */
			ftp_model_quantize_param(m, p);
	}
	ft_st_close(st);
	return rc;
}

static const char *arch_name(ft_arch a)
{
	return ftp_arch_name(a);
}

static json_t *config_json(const ft_model *m, const char *dtype)
{
	if (m->config_json) {
		json_t *j = json_deep_copy(m->config_json);
		json_object_set_new(j, "dtype", json_string(dtype));
		if (json_object_get(j, "torch_dtype"))
			json_object_set_new(j, "torch_dtype", json_string(dtype));
		return j;
	}
	const ft_config *c = &m->c;
	const char *mt = ftp_arch_model_type(c->arch);
	json_t *rp = ftp_rope_json(c);
	return json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:o, "
			 "s:b, s:s, s:s}",
			 "architectures", arch_name(c->arch), "model_type", mt,
			 "vocab_size", c->vocab_size, "hidden_size", c->hidden_size,
			 "intermediate_size", c->intermediate_size,
			 "num_hidden_layers", c->num_hidden_layers,
			 "num_attention_heads", c->num_attention_heads,
			 "num_key_value_heads", c->num_key_value_heads, "head_dim", c->head_dim,
			 "max_position_embeddings", c->max_position_embeddings,
			 "rms_norm_eps", c->rms_norm_eps, "rope_parameters", rp,
			 "tie_word_embeddings", c->tie_word_embeddings, "hidden_act", "silu",
			 "dtype", dtype);
}

int ft_model_save_full(ft_model *m, const char *dir, const char *dtype)
{
	ft_dtype dt;
	if (m->qw)   /* LLaMA-Factory's export refuses the same */
		return ft_fail("%s: cannot save the full weights of a quantized model "
			       "(load the base without --quantization_bit)", dir);
	if (!dtype)
		dtype = m->c.torch_dtype[0] ? m->c.torch_dtype : "float32";
	if (ft_dtype_parse_torch(dtype, &dt) < 0 || (dt != FT_F32 && dt != FT_F16 && dt != FT_BF16))
		return ft_fail("%s: cannot save weights as %s (float32, float16, bfloat16)", dir, dtype);
	if (ft_mkdirs(dir) < 0)
		return -1;
	json_t *cj = config_json(m, ft_dtype_torch_name(dt));
	char *path = ft_xasprintf("%s/config.json", dir);
	int rc = ft_json_save_file(cj, path, 2);
	json_decref(cj);
	free(path);
	if (rc < 0)
		return -1;
	ft_st_writer *w = ft_st_writer_new();
	ft_st_writer_meta(w, "format", "pt");
	size_t maxn = 0;
	for (size_t i = 0; i < m->nparams; i++) {
		ft_param *p = &m->params[i];
		if (is_adapter(p))
			continue;
		ft_st_writer_add(w, p->name, dt, p->ndim, p->shape, NULL);
		if (p->n > maxn)
			maxn = p->n;
	}
	path = ft_xasprintf("%s/model.safetensors", dir);
	void *buf = ft_xmalloc(maxn * ft_dtype_size(dt) + 1);
	rc = ft_st_stream_begin(w, path);
	for (size_t i = 0; i < m->nparams && !rc; i++) {
		ft_param *p = &m->params[i];
		if (is_adapter(p))
			continue;
		ft_convert_from_f32(buf, dt, p->w, p->n);
		rc = ft_st_stream_put(w, buf, p->n * ft_dtype_size(dt));
	}
	if (!rc)
		rc = ft_st_stream_end(w);
	else
		ft_st_stream_abort(w);
	free(buf);
	free(path);
	ft_st_writer_free(w);
	return rc;
}

static json_t *targets_json(const ft_config *c, unsigned t)
{
	json_t *a = json_array();
	for (int j = 0; j < L_NLIN; j++)
		if (t >> j & 1 && ftp_fused_lead(c, j) == j)
			json_array_append_new(a, json_string(ftp_module_name(c, j)));
	return a;
}

/* init_lora_weights as PEFT saves it: true, or a PiSSA adapter's method
 * (its base weights are the residual; loading it redoes the init) */
static json_t *init_json(const ft_model *m, int plain)
{
	char buf[32];
	if (plain || !m->o.pissa_init) return json_true();
	if (m->o.pissa_iter < 0) return json_string("pissa");
	snprintf(buf, sizeof buf, "pissa_niter_%d", m->o.pissa_iter);
	return json_string(buf);
}

/* j (NULL: json_pack failed) as dir/adapter_config.json; j is consumed. */
static int write_adapter_config(const ft_model *m, json_t *j, const char *dir)
{
	if (!j)
		return ft_fail("%s: cannot build adapter_config.json", dir);
	if (m->o.modules_to_save)   /* LLaMA-Factory's additional_target, a set in PEFT */
		json_object_set_new(j, "modules_to_save", json_pack("[s,s]", "lm_head", "embed_tokens"));
	char *path = ft_xasprintf("%s/adapter_config.json", dir);
	int rc = ft_json_save_file(j, path, 2);
	json_decref(j);
	free(path);
	return rc;
}

/* PEFT 0.21's OFTConfig as it saves one (LLaMA-Factory's kwargs, the rest
 * at their defaults). */
static int oft_config_save(ft_model *m, const char *dir)
{
	const ft_tune_opts *o = &m->o;
	json_t *j = json_pack(
		"{s:n, s:s, s:s, s:b, s:b, s:f, s:n, s:b, s:b, s:b, s:n, s:n, s:f, s:n, s:i, s:i, "
		"s:s, s:i, s:n, s:o, s:s, s:b}",
		"auto_mapping", "base_model_name_or_path", m->model_dir ? m->model_dir : "",
		"bias", "none", "block_share", 0, "coft", 0, "eps", 6e-5, "exclude_modules",
		"fan_in_fan_out", 0, "inference_mode", 1, "init_weights", 1, "layers_pattern",
		"layers_to_transform", "module_dropout", 0.0, "modules_to_save",
		"num_cayley_neumann_terms", m->oft_terms, "oft_block_size", o->oft_block_size,
		"peft_type", "OFT", "r", o->oft_rank, "revision",
		"target_modules", targets_json(&m->c, o->lora_targets), "task_type", "CAUSAL_LM",
		"use_cayley_neumann", 1);
	return write_adapter_config(m, j, dir);
}

int ft_model_save_adapter(ft_model *m, const char *dir)
{
	if (m->o.type != FT_FT_LORA && m->o.type != FT_FT_OFT)
		return ft_fail("%s: the model has no LoRA or OFT adapter to save", dir);
	if (ft_mkdirs(dir) < 0)
		return -1;
	if (m->o.type == FT_FT_OFT ? oft_config_save(m, dir) < 0
	    : ftp_adapter_config_save(m, dir, m->o.lora_rank, m->o.lora_alpha, 0) < 0)
		return -1;
	ft_st_writer *w = ft_st_writer_new();
	ft_st_writer_meta(w, "format", "pt");
	for (size_t i = 0; i < m->nparams; i++) {
		const ft_param *p = &m->params[i];
		const char *nm = is_adapter(p) ? p->name : module_saved_name(m, p);
		if (nm) ft_st_writer_add(w, nm, FT_F32, p->ndim, p->shape, p->w);
	}
	add_resized_layers(m, w);
	char *path = ft_xasprintf("%s/adapter_model.safetensors", dir);
	int rc = ft_st_writer_write(w, path);
	free(path);
	ft_st_writer_free(w);
	return rc;
}

int ftp_adapter_config_save(ft_model *m, const char *dir, int r, double a, int plain)
{
	const ft_tune_opts *o = &m->o;
	json_t *alpha = a == floor(a) && fabs(a) < 1e15 ? json_integer((json_int_t)a) : json_real(a);
	json_t *j = json_pack(
		"{s:{}, s:n, s:s, s:s, s:b, s:b, s:o, s:n, s:n, s:n, s:{}, s:o, s:b, s:f, "
		"s:n, s:s, s:n, s:s, s:i, s:{}, s:n, s:o, s:s, s:b, s:b}",
		"alpha_pattern", "auto_mapping", "base_model_name_or_path",
		m->model_dir ? m->model_dir : "", "bias", "none", "fan_in_fan_out", 0,
		"inference_mode", 1, "init_lora_weights", init_json(m, plain), "layer_replication",
		"layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", alpha,
		"lora_bias", 0, "lora_dropout", o->lora_dropout, "megatron_config",
		"megatron_core", "megatron.core", "modules_to_save", "peft_type", "LORA",
		"r", r, "rank_pattern", "revision", "target_modules",
		targets_json(&m->c, o->lora_targets), "task_type", "CAUSAL_LM", "use_dora", o->use_dora,
		"use_rslora", o->use_rslora);
	return write_adapter_config(m, j, dir);
}

int ft_model_save(ft_model *m, const char *dir)
{
	return m->o.type == FT_FT_LORA || m->o.type == FT_FT_OFT ? ft_model_save_adapter(m, dir)
				       : ft_model_save_full(m, dir, NULL);
}

/* How many decoder layers PEFT would adapt module j in, by its whole
 * name ("model.layers.3.self_attn.q_proj"). */
static int layers_targeted(const ft_config *mc, const ft_adapter_config *c, int j)
{
	char nm[160];
	int n = 0;
	for (int l = 0; l < mc->num_hidden_layers; l++) {
		snprintf(nm, sizeof nm, "model.layers.%d.%s.%s", l, j < L_GATE ? "self_attn" : "mlp",
			 ftp_module_name(mc, j));
		n += ft_adapter_config_targets(c, nm);
	}
	return n;
}

/* The LoRA targets as module bits: ft applies one set of linear layers to
 * every decoder layer, so a target must select a module in all layers or
 * none, and nothing outside the decoder's linears. */
static int parse_targets(const ft_config *mc, const ft_adapter_config *c, unsigned *out)
{
	*out = 0;
	if (c->target_regex && !strcmp(c->target_regex, "all-linear")) {
		*out = FT_MOD_ALL_LINEAR;
		return 0;
	}
	if (!c->target_regex && !c->n_target_modules)
		return ft_fail("%s: target_modules must be a non-empty list", c->path);
	for (int j = 0; j < L_NLIN; j++) {
		int n = layers_targeted(mc, c, j);
		if (n && n != mc->num_hidden_layers)
			return ft_fail("%s: target_modules selects %s in %d of the %d layers: ft adapts the "
				       "same modules in every layer", c->path, ftp_module_name(mc, j), n,
				       mc->num_hidden_layers);
		if (n) *out |= 1u << j;
	}
	static const char *const outside[] = {"lm_head", "model.embed_tokens"};
	for (size_t i = 0; i < 2; i++)
		if (ft_adapter_config_targets(c, outside[i]))
			return ft_fail("%s: target_modules selects %s: ft adapts only the decoder layers' "
				       "linear modules", c->path, outside[i]);
	if (c->target_regex)
		return *out ? 0 : ft_fail("%s: target_modules '%s' selects none of the decoder layers' "
					  "linear modules", c->path, c->target_regex);
	/* a list name that is none of the linears is refused, not ignored */
	for (size_t i = 0; i < c->n_target_modules; i++) {
		ft_adapter_config one = *c;
		one.target_modules = &c->target_modules[i];
		one.n_target_modules = 1;
		int found = 0;
		for (int j = 0; j < L_NLIN && !found; j++) found = layers_targeted(mc, &one, j) > 0;
		if (!found)
			return ft_fail(mc->fused ? "%s: target module %s is not supported (qkv_proj "
				       "o_proj gate_up_proj down_proj)" : "%s: target module %s is not "
				       "supported (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)",
				       c->path, c->target_modules[i]);
	}
	return 0;
}

/* modules_to_save is LLaMA-Factory's resized vocabulary: embed_tokens
 * and lm_head, both. */
static int embeddings_to_save(const ft_adapter_config *c)
{
	int e = 0, h = 0;
	for (size_t i = 0; i < c->n_modules_to_save; i++) {
		const char *s = c->modules_to_save[i];
		if (!strcmp(s, "embed_tokens")) e = 1;
		else if (!strcmp(s, "lm_head")) h = 1;
		else return 0;
	}
	return e && h;
}

/* The adapter's trained embeddings: the model takes their vocabulary
 * size (a resized one), then trains or holds them as PEFT's copies. */
static int setup_embeddings(ft_model *m, const char *dir)
{
	char *path = ft_xasprintf("%s/adapter_model.safetensors", dir);
	ft_st *st = ft_st_open(path);
	int rc = -1;
	const ft_st_tensor *t = st ? ft_st_find(st, "base_model.model.model.embed_tokens.weight") : NULL;
	if (st && (!t || t->ndim != 2 || t->shape[1] != m->c.hidden_size || t->shape[0] < 1 ||
		   t->shape[0] > 16777216))
		ft_fail("%s: modules_to_save names embed_tokens but base_model.model.model.embed_tokens.weight "
			"is %s", path, t ? "not [vocab, hidden_size]" : "missing");
	else if (st)
		rc = ftp_vocab_rows(m, t->shape[0]) < 0 || ft_model_train_embeddings(m) < 0 ? -1 : 0;
	ft_st_close(st);
	free(path);
	return rc;
}

/* What the model's LoRA cannot represent: one rank, alpha and set of
 * modules for every layer, plain LoRA. */
static const char *unsupported(const ft_adapter_config *c)
{
	if (c->n_rank_pattern) return "rank_pattern";
	if (c->n_alpha_pattern) return "alpha_pattern";
	if (ft_adapter_config_sets(c, "layers_to_transform")) return "layers_to_transform";
	if (c->n_modules_to_save && !embeddings_to_save(c)) return "modules_to_save (other than embed_tokens and lm_head together)";
	if (ft_adapter_config_sets(c, "exclude_modules")) return "exclude_modules";
	if (ft_adapter_config_sets(c, "layer_replication")) return "layer_replication";
	return NULL;
}

static int check_config(const ft_adapter_config *c)
{
	if (c->peft_type && strcmp(c->peft_type, "LORA"))
		return ft_fail("%s: peft_type %s is not supported (LORA)", c->path, c->peft_type);
	const char *what = unsupported(c);
	if (what)
		return ft_fail("%s: %s is not supported", c->path, what);
	/* fan_in_fan_out is not read: PEFT resets it to False, with a warning,
	 * for nn.Linear targets, and every module ft adapts is one */
	if (c->r > 65536)
		return ft_fail("%s: r = %d is out of range", c->path, c->r);
	return 0;
}

static int read_tensors(ft_model *m, const char *dir);
static int load_oft(ft_model *m, const char *dir, const ft_adapter_config *c);

int ft_model_load_adapter(ft_model *m, const char *dir)
{
	int niter = 0;
	if (m->o.type != FT_FT_LORA && m->o.type != FT_FT_OFT)
		return ft_fail("%s: loading an adapter needs finetuning type lora or oft", dir);
	char *path = ft_xasprintf("%s/" FT_ADAPTER_CONFIG_NAME, dir);
	ft_adapter_config c;
	int rc = -1;
	unsigned targets;
	if (ft_adapter_config_load(path, &c) < 0)
		goto out;
	if (c.peft_type && !strcmp(c.peft_type, "OFT")) {
		rc = load_oft(m, dir, &c);
		goto out;
	}
	if (m->o.type == FT_FT_OFT) {
		ft_fail("%s: a LoRA adapter cannot be trained further with finetuning type oft", c.path);
		goto out;
	}
	if (check_config(&c) < 0 ||
	    parse_targets(&m->c, &c, &targets) < 0)
		goto out;
	ftp_lora_setup(m, c.r, c.lora_alpha, c.use_rslora, targets);
	m->o.use_dora = 0;
	int pissa = c.init_lora_weights && !strncmp(c.init_lora_weights, "pissa", 5);
	if ((c.use_dora || pissa) && m->c.fused) {
		ft_fail("%s: a %s adapter on Phi-3's fused modules is not implemented in ft yet", c.path,
			c.use_dora ? "DoRA" : "PiSSA");
		goto out;
	}
	if (pissa && m->qw) {   /* the init rewrites the fp32 base */
		ft_fail("%s: a PiSSA adapter on a quantized base (--quantization_bit) is not implemented in ft yet",
			c.path);
		goto out;
	}
	if (c.use_dora)   /* the magnitudes are read below */
		ftp_dora_enable(m);
	if (c.n_modules_to_save && setup_embeddings(m, dir) < 0)
		goto out;
	ftp_model_build_params(m);
	/* a PiSSA adapter was trained on the residual base: PEFT redoes the
	 * init on the base when it loads one, and so does ft */
	if (c.init_lora_weights && !ft_adapter_config_pissa(&c, &niter)) {
		ft_fail("%s: init_lora_weights \"%s\" is not supported (true, pissa, pissa_niter_K)",
			c.path, c.init_lora_weights);
		goto out;
	}
	if (c.init_lora_weights && ft_model_pissa_init(m, niter) < 0) {
		ft_fail_ctx("%s: ", dir);
		goto out;
	}
	if (read_tensors(m, dir) < 0)
		goto out;
	for (int l = 0; c.use_dora && l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++)
			if (ftp_dora_of(m, l, j)) ftp_dora_scale(m, l, j);
	rc = 0;
out:
	free(path);
	ft_adapter_config_free(&c);
	return rc;
}

/* Every adapter parameter from DIR/adapter_model.safetensors, which holds
 * nothing else. */
/* add_resized_layers' tensors, when the file has them: the frozen rows
 * kept for the next save, the copy's duplicate checked for its shape. */
static int read_resized_layers(ft_model *m, ft_st *st, const char *path, size_t *found)
{
	static const char *const base[2] = { "base_model.model.model.embed_tokens",
					     "base_model.model.lm_head" };
	if (!m->o.modules_to_save) return 0;
	size_t n = (size_t)m->c.vocab_size * m->c.hidden_size;
	float **orig[2] = { &m->wte0, &m->head0 };
	for (int k = 0; k < 2; k++)
		for (int j = 0; j < 2; j++) {
			char *nm = ft_xasprintf("%s.%s.weight", base[k], j ? "original_module" : "modules_to_save");
			const ft_st_tensor *t = ft_st_find(st, nm);
			int bad = t && (t->ndim != 2 || t->shape[0] != m->c.vocab_size || t->shape[1] != m->c.hidden_size);
			if (bad) ft_fail("%s: tensor %s is not [%d, %d]", path, nm, m->c.vocab_size, m->c.hidden_size);
			free(nm);
			if (bad) return -1;
			if (!t) continue;
			(*found)++;
			if (!j) continue;
			if (!*orig[k]) *orig[k] = ft_xmalloc(n * sizeof **orig[k]);
			if (ft_st_read_f32(t, *orig[k]) < 0) return -1;
		}
	return 0;
}

static int read_tensors(ft_model *m, const char *dir)
{
	int rc = -1;
	char *path = ft_xasprintf("%s/adapter_model.safetensors", dir);
	ft_st *st = ft_st_open(path);
	if (!st)
		goto out;
	size_t found = 0;
	for (size_t i = 0; i < m->nparams; i++) {
		ft_param *p = &m->params[i];
		const char *nm = is_adapter(p) ? p->name : module_saved_name(m, p);
		if (!nm)
			continue;
		const ft_st_tensor *t = ft_st_find(st, nm);
		if (!t) {
			ft_fail("%s: tensor %s is missing", path, nm);
			ft_st_close(st);
			goto out;
		}
		if (check_shape(t, p, path) < 0 || ft_st_read_f32(t, p->w) < 0) {
			ft_st_close(st);
			goto out;
		}
		found++;
	}
	if (read_resized_layers(m, st, path, &found) < 0) {
		ft_st_close(st);
		goto out;
	}
	if (ft_st_count(st) != found) {
		for (size_t i = 0; i < ft_st_count(st); i++)
			if (!ft_model_find_param(m, ft_st_at(st, i)->name)) {
				ft_fail("%s: tensor %s is not a%s weight of the target "
					"modules", path, ft_st_at(st, i)->name, m->o.type == FT_FT_OFT ? "n OFT" : " LoRA");
				break;
			}
		ft_st_close(st);
		goto out;
	}
	ft_st_close(st);
	rc = 0;
out:
	free(path);
	return rc;
}

/* A PEFT OFT adapter: trained on (finetuning type oft), or folded into
 * the base weights (a LoRA-type model: generation, references). */
static int load_oft(ft_model *m, const char *dir, const ft_adapter_config *c)
{
	unsigned targets;
	const char *no = c->coft ? "coft (constrained OFT)" : c->block_share ? "block_share"
		       : !c->use_cayley_neumann ? "use_cayley_neumann false (the exact Cayley transform)"
		       : c->fan_in_fan_out ? "fan_in_fan_out" : strcmp(c->bias, "none") ? "an OFT bias"
		       : c->n_modules_to_save ? "modules_to_save" : NULL;
	if (no)
		return ft_fail("%s: %s is not implemented in ft yet", c->path, no);
	if (parse_targets(&m->c, c, &targets) < 0)
		return -1;
	int train = m->o.type == FT_FT_OFT;
	if (!train && m->qw)
		return ft_fail("%s: an OFT adapter on a quantized base (--quantization_bit) for inference is "
			       "not implemented in ft yet", c->path);
	if (!train)   /* no LoRA modules: the OFT ones are read, then merged */
		ftp_lora_setup(m, m->o.lora_rank, m->o.lora_alpha, m->o.use_rslora, 0);
	if (ftp_oft_setup(m, c->r, c->oft_block_size, targets, c->num_cayley_neumann_terms) < 0)
		return ft_fail_ctx("%s: ", c->path);
	if (train) {
		m->o.oft_rank = c->r;
		m->o.oft_block_size = c->oft_block_size;
		m->o.lora_targets = targets;
	}
	ftp_model_build_params(m);
	if (read_tensors(m, dir) < 0)
		return -1;
	if (!train) {
		ftp_oft_merge(m);
		ftp_model_build_params(m);
	}
	return 0;
}

int ft_model_new_lora(ft_model *m)
{
	if (m->o.type != FT_FT_LORA)
		return ft_fail("a new LoRA adapter needs finetuning type lora");
	if (m->qw)   /* LLaMA-Factory's parser words it so */
		return ft_fail("Cannot create new adapter upon a quantized model.");
	ftp_lora_setup(m, m->lora0_rank, m->lora0_alpha, m->lora0_rslora, m->lora0_targets);
	m->lora_dropout_on = m->o.lora_dropout > 0;
	return ftp_model_build_params(m);
}

int ft_model_merge_lora(ft_model *m)
{
	if (m->qw)   /* LLaMA-Factory's export_model words it so */
		return ft_fail("Cannot merge adapters to a quantized model.");
	ftp_oft_merge(m);   /* OFT modules, if any */
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_lora *a = &m->layers[l].lora[j];
			int in, out;
			if (!a->on)
				continue;
			ftp_lin_dims(&m->c, j, &in, &out);
			if (ftp_dora_of(m, l, j)) {
				ftp_dora_merge(m, l, j);
				continue;
			}
			ft_sgemm(0, 0, out, in, a->r, a->scale, a->B.w, a->r, a->A.w, in, 1.0f,
				 m->layers[l].lin[j].w, in);
		}
	if (m->o.type == FT_FT_LORA)
		ftp_lora_setup(m, m->o.lora_rank, m->o.lora_alpha, m->o.use_rslora, 0);
	m->o.use_dora = 0;
	return ftp_model_build_params(m);
}
