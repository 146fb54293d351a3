/* vocab.c - ft-train's vocabulary extension, as LLaMA-Factory: the
 * tokens of add_tokens / add_special_tokens / new_special_tokens_config
 * added to the model's tokenizer (patch_tokenizer), the embeddings
 * resized and initialized (patch_model: resize_embedding_layer), the
 * embeddings trained beside a new LoRA adapter (init_adapter: the
 * resized vocabulary's modules_to_save), and the extended tokenizer.json
 * saved beside the outputs. */
#include "ft-train.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const keys[] = {
	"add_tokens", "add_special_tokens", "new_special_tokens_config", "init_special_tokens",
	"resize_vocab", "additional_target", NULL,
};

/* LLaMA-Factory's additional_target (PEFT's modules_to_save): ft trains
 * embed_tokens and lm_head together beside the adapter (the copies
 * ft_model_train_embeddings makes, as for a resized vocabulary); 1 when the
 * list names exactly those two. */
static int emb_target_of(const char *list)
{
	int emb = 0, head = 0, other = 0;
	char *s = ft_xstrdup(list), *save = NULL;
	for (char *n = strtok_r(s, ", ", &save); n; n = strtok_r(NULL, ", ", &save)) {
		if (!strcmp(n, "embed_tokens")) emb = 1;
		else if (!strcmp(n, "lm_head")) head = 1;
		else other = 1;
	}
	free(s);
	if (other || emb != head)
		die_usage("--additional_target %s: ft trains embed_tokens and lm_head together (PEFT's "
			  "modules_to_save of both); other module sets are not implemented in ft yet", list);
	return emb;
}

int vocab_known_key(const char *k)
{
	for (const char *const *p = keys; *p; p++)
		if (!strcmp(*p, k)) return 1;
	return 0;
}

void vocab_args_parse(ft_lfargs *a, ft_cli_args *c)
{
	ft_vocab_args *v = &c->v;
	const char *cfg = ft_lfargs_get(a, "new_special_tokens_config", NULL);
	if (ft_new_tokens_parse(&v->nt, ft_lfargs_get(a, "add_tokens", NULL),
				ft_lfargs_get(a, "add_special_tokens", NULL), cfg) < 0)
		die("%s", ft_errmsg());
	if (v->nt.both)
		warn("Both 'new_special_tokens_config' and 'add_special_tokens' are set: using the tokens "
		     "from %s", cfg);
	int r = ft_lfargs_bool(a, "resize_vocab", 0);
	if (r < 0) die_usage("--resize_vocab: expected true or false");
	v->resize = r;
	const char *at = ft_lfargs_get(a, "additional_target", NULL);
	v->emb_target = at ? emb_target_of(at) : 0;
	const char *init = ft_lfargs_get(a, "init_special_tokens", "noise_init");
	if (!strcmp(init, "noise_init")) v->init = FT_INIT_NOISE;
	else if (!strcmp(init, "desc_init")) v->init = FT_INIT_DESC;
	else if (!strcmp(init, "desc_init_w_noise")) v->init = FT_INIT_DESC_NOISE;
	else die_usage("--init_special_tokens: '%s' is not noise_init, desc_init or desc_init_w_noise", init);
	if (v->init != FT_INIT_NOISE && !v->nt.desc) {
		warn("init_special_tokens='%s' requires new_special_tokens_config. Falling back to 'noise_init'",
		     init);
		v->init = FT_INIT_NOISE;
	}
}

/* additional_target's checks: where LLaMA-Factory passes it (a new LoRA
 * or OFT adapter) and where ft has it. */
static void check_emb_target(const ft_cli_args *c)
{
	if (c->tune.type != FT_FT_LORA && c->tune.type != FT_FT_OFT) {
		if (ft_verbose >= 0)
			warn("note: --additional_target has no effect with --finetuning_type %s "
			     "(LLaMA-Factory passes it to PEFT's LoRA and OFT configs only)",
			     c->tune.type == FT_FT_FULL ? "full" : "freeze");
		return;
	}
	if (adapters_resumed(c)) {
		if (ft_verbose >= 0)
			warn("note: --additional_target has no effect with --adapter_name_or_path: the "
			     "adapter brings its own modules_to_save, as LLaMA-Factory resumes it");
		return;
	}
	if (c->tune.type == FT_FT_OFT)
		die_usage("--additional_target with --finetuning_type oft (modules_to_save) is not implemented in ft yet");
	if (strcmp(c->stage, "pt") && strcmp(c->stage, "sft"))
		die_usage("--additional_target with --stage %s is not implemented in ft yet (pt and sft)",
			  c->stage);
}

/* The tokenizer with the new tokens, before the batches' tokenizer is
 * checked against it. */
void vocab_tokenizer(ft_cli_args *c)
{
	ft_vocab_args *v = &c->v;
	if (v->emb_target)
		check_emb_target(c);
	if (!ft_new_tokens_any(&v->nt) && !v->resize) return;
	if (strcmp(c->stage, "pt") && strcmp(c->stage, "sft"))
		die_usage("--stage %s with new tokens or resize_vocab is not implemented in ft yet (pt and sft)",
			  c->stage);
	if (!c->model)
		die_usage("new tokens and resize_vocab need --model_name_or_path (its tokenizer)");
	if (!(v->tok = ft_tokenizer_load(c->model))) die("%s", ft_errmsg());
	int added;
	if (ft_new_tokens_apply(&v->nt, v->tok, &added) < 0) die("%s", ft_errmsg());
	if (added > 0 && !v->resize) {
		v->resize = 1;
		note("New tokens have been added, changed `resize_vocab` to True.");
	}
}

/* ":<sha256>" of the extended tokenizer's identity, NULL without one. */
const char *vocab_identity_sha(const ft_cli_args *c)
{
	if (!c->v.tok || !ft_tokenizer_n_added_later(c->v.tok)) return NULL;
	return strrchr(ft_tokenizer_identity(c->v.tok), ':');
}

static void resize(ft_cli_args *c, ft_model *m)
{
	ft_vocab_args *v = &c->v;
	const ft_tokenizer *t = v->tok;
	int64_t V = ft_model_config(m)->vocab_size, len = (int64_t)ft_tokenizer_vocab_size(t);
	int64_t nv = len > V ? (len + 63) / 64 * 64 : V;
	ft_i32vec ids = {0};
	ft_new_tokens_ids(&v->nt, t, nv, &ids);
	size_t nd = v->init != FT_INIT_NOISE ? v->nt.n_special : 0;
	int32_t *targets = ft_xcalloc(nd + 1, sizeof *targets);
	ft_i32vec *descs = ft_xcalloc(nd + 1, sizeof *descs);
	if (nd && ft_new_tokens_descs(&v->nt, t, targets, descs) < 0) die("%s", ft_errmsg());
	ft_vocab_resize r = { .tokenizer_len = len, .new_ids = ids.v, .n_new = ids.n, .method = v->init,
			      .n_desc = nd, .desc_target = targets, .desc_ids = descs };
	if (ft_model_resize_vocab(m, &r) < 0) die("%s", ft_errmsg());
	if (nv > V) note("Resized token embeddings from %lld to %lld.", (long long)V, (long long)nv);
	for (size_t i = 0; i < nd; i++) ft_i32vec_free(&descs[i]);
	free(descs);
	free(targets);
	ft_i32vec_free(&ids);
}

static void cleanup(void);
static char *tmp_dir, *tmp_json;

static void cleanup(void)
{
	if (tmp_json) unlink(tmp_json);
	if (tmp_dir) rmdir(tmp_dir);
}

/* The extended tokenizer.json replaces the model's in the files copied
 * beside the outputs (the Trainer saves the patched tokenizer). */
static void save_tokenizer(ft_cli_args *c, char **extra)
{
	const char *base = getenv("TMPDIR");
	tmp_dir = ft_xasprintf("%s/ft-train-tokenizer-XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmp_dir)) die("%s:", tmp_dir);
	tmp_json = ft_xasprintf("%s/tokenizer.json", tmp_dir);
	atexit(cleanup);
	if (ft_tokenizer_save_json(c->v.tok, tmp_json) < 0) die("%s", ft_errmsg());
	for (char **x = extra; *x; x++) {
		const char *slash = strrchr(*x, '/');
		if (!strcmp(slash ? slash + 1 : *x, "tokenizer.json")) {
			free(*x);
			*x = ft_xstrdup(tmp_json);
		}
	}
}

void vocab_model(ft_cli_args *c, ft_model *m)
{
	ft_vocab_args *v = &c->v;
	if (v->resize)
		resize(c, m);
	/* init_adapter: additional_target, or a resized vocabulary, trains
	 * embed_tokens and lm_head beside a new adapter (a resumed adapter
	 * brings its own) */
	if (v->resize && !v->emb_target && c->tune.type == FT_FT_OFT && !c->adapter)
		die_usage("resize_vocab with --finetuning_type oft (modules_to_save) is not implemented in ft yet");
	if ((v->resize || v->emb_target) && c->tune.type == FT_FT_LORA && !c->adapter) {
		if (ft_model_train_embeddings(m) < 0) die("%s", ft_errmsg());
		c->tune.modules_to_save = 1;
		if (!v->emb_target)
			note("Vocab has been resized, add embed_tokens,lm_head to trainable params.");
	}
}

void vocab_extra_files(ft_cli_args *c, char **extra)
{
	if (c->v.tok && ft_tokenizer_n_added_later(c->v.tok)) save_tokenizer(c, extra);
}

void vocab_free(ft_cli_args *c)
{
	ft_new_tokens_free(&c->v.nt);
	ft_tokenizer_free(c->v.tok);
	c->v.tok = NULL;
}
