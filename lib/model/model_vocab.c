/* model_vocab.c - LLaMA-Factory's resize_embedding_layer
 * (model/model_utils/embedding.py) and PEFT's modules_to_save for the
 * embeddings; see model.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/model_internal.h"
#include "util/error.h"

/* Row r of a [V, D] matrix is one of the sorted ids. */
static int is_new(const int32_t *ids, size_t n, int64_t r)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (ids[mid] == r) return 1;
		if (ids[mid] < r) lo = mid + 1;
		else hi = mid;
	}
	return 0;
}

/* _existing_embeddings(...).mean(dim=0): the rows that are not new ids
 * (with ids), else all but the last n_tail; summed in double. */
static void mean_existing(const float *w, int64_t V, int D, const int32_t *ids, size_t n_ids,
			  int64_t n_tail, float *out)
{
	double *acc = ft_xcalloc((size_t)D, sizeof *acc);
	int64_t rows = 0, end = n_ids ? V : V - (n_tail > 0 ? n_tail : 0);
	for (int64_t r = 0; r < end; r++) {
		if (n_ids && is_new(ids, n_ids, r)) continue;
		for (int d = 0; d < D; d++) acc[d] += w[(size_t)r * D + d];
		rows++;
	}
	for (int d = 0; d < D; d++) out[d] = rows ? (float)(acc[d] / (double)rows) : NAN;
	free(acc);
}

/* noise: normal(0, 1/sqrt(D)), ft's stream for (seed, what, row) */
static void add_noise(float *row, int D, uint64_t seed, const char *what, int64_t r)
{
	char nm[96];
	float *z = ft_xmalloc((size_t)D * sizeof *z);
	snprintf(nm, sizeof nm, "new_token_noise.%s.%lld", what, (long long)r);
	ftp_fill_normal(z, (size_t)D, (float)(1.0 / sqrt((double)D)), seed, nm);
	for (int d = 0; d < D; d++) row[d] += z[d];
	free(z);
}

/* _noisy_mean_initialization */
static void noise_init(float *w, int64_t V, int D, const int32_t *ids, size_t n_ids, int64_t n_new,
		       uint64_t seed, const char *what, int noise)
{
	float *avg = ft_xmalloc((size_t)D * sizeof *avg);
	mean_existing(w, V, D, ids, n_ids, n_new, avg);
	int64_t n = n_ids ? (int64_t)n_ids : n_new;
	for (int64_t k = 0; k < n; k++) {
		int64_t r = n_ids ? ids[k] : V - n_new + k;
		memcpy(w + (size_t)r * D, avg, (size_t)D * sizeof *avg);
		if (noise) add_noise(w + (size_t)r * D, D, seed, what, r);
	}
	free(avg);
}

/* _description_based_initialization: each described token's row is the
 * mean of the *input* embeddings of its description's tokens that are
 * not new (or the mean of the existing rows of w when none is left) */
static void desc_init(float *w, const float *wte, int64_t V, int D, const ft_vocab_resize *r,
		      int64_t n_new, uint64_t seed, const char *what)
{
	float *fallback = ft_xmalloc((size_t)D * sizeof *fallback);
	double *acc = ft_xmalloc((size_t)D * sizeof *acc);
	mean_existing(w, V, D, r->new_ids, r->n_new, n_new, fallback);
	for (size_t i = 0; i < r->n_desc; i++) {
		int64_t t = r->desc_target[i];
		if (t < 0 || t >= V) continue;   /* "not found or out of range, skipping" */
		const ft_i32vec *ids = &r->desc_ids[i];
		size_t n = 0;
		memset(acc, 0, (size_t)D * sizeof *acc);
		for (size_t k = 0; k < ids->n; k++) {
			int32_t id = ids->v[k];
			if (id < 0 || id >= V || is_new(r->new_ids, r->n_new, id)) continue;
			for (int d = 0; d < D; d++) acc[d] += wte[(size_t)id * D + d];
			n++;
		}
		float *row = w + (size_t)t * D;
		for (int d = 0; d < D; d++) row[d] = n ? (float)(acc[d] / (double)n) : fallback[d];
		if (r->method == FT_INIT_DESC_NOISE) add_noise(row, D, seed, what, t);
	}
	free(acc);
	free(fallback);
}

void ft_vocab_init(float *w, const float *wte, int64_t V, int D, const ft_vocab_resize *r,
		   int64_t n_new, uint64_t seed, const char *what, int noise)
{
	if (r->method != FT_INIT_NOISE && r->n_desc) {
		ft_vocab_resize q = *r;
		if (!noise) q.method = FT_INIT_DESC;
		desc_init(w, wte, V, D, &q, n_new, seed, what);
	} else {
		noise_init(w, V, D, r->new_ids, r->n_new, n_new, seed, what, noise);
	}
}

/* w [V, D] grown to [nv, D]: the old rows kept, the new ones normal(0,
 * initializer_range) as transformers' _init_weights on the new
 * nn.Embedding / nn.Linear (mean_resizing=False) */
static float *grow(float *w, int64_t V, int64_t nv, int D, float std, uint64_t seed, const char *what)
{
	float *g = ft_xmalloc((size_t)nv * D * sizeof *g);
	char nm[64];
	snprintf(nm, sizeof nm, "resize.%s", what);
	ftp_fill_normal(g, (size_t)nv * D, std, seed, nm);
	memcpy(g, w, (size_t)V * D * sizeof *g);
	return g;
}

static float *rows_of(float *w, int64_t V, int64_t nv, int D)
{
	float *g = ft_xcalloc((size_t)nv * D, sizeof *g);
	memcpy(g, w, (size_t)(V < nv ? V : nv) * D * sizeof *g);
	free(w);
	return g;
}

int ftp_vocab_rows(ft_model *m, int64_t V)
{
	ft_config *c = &m->c;
	if (V == c->vocab_size) return 0;
	if (m->base_borrowed || m->qw)
		return ft_fail("cannot resize the embeddings of a %s model", m->qw ? "quantized" : "shared-base");
	m->wte.w = rows_of(m->wte.w, c->vocab_size, V, c->hidden_size);
	free(m->wte.g);
	m->wte.g = NULL;
	if (!c->tie_word_embeddings) {
		m->lm_head.w = rows_of(m->lm_head.w, c->vocab_size, V, c->hidden_size);
		free(m->lm_head.g);
		m->lm_head.g = NULL;
	} else {
		m->lm_head = m->wte;
	}
	if (!m->resized_from) m->resized_from = c->vocab_size;
	c->vocab_size = (int)V;
	if (m->config_json) json_object_set_new(m->config_json, "vocab_size", json_integer(V));
	ftp_model_free_buffers(m);
	return ftp_model_build_params(m);
}

int ft_model_resize_vocab(ft_model *m, const ft_vocab_resize *r)
{
	ft_config *c = &m->c;
	int64_t cur = c->vocab_size, nv = cur;
	int D = c->hidden_size;
	if (r->tokenizer_len > cur) {
		if (m->o.quantization_bit)
			return ft_fail("Cannot resize embedding layers of a quantized model.");
		if (m->base_borrowed)
			return ft_fail("cannot resize the embeddings of a model sharing another's base");
		nv = (r->tokenizer_len + 63) / 64 * 64;   /* pad_to_multiple_of=64 */
		float std = c->initializer_range > 0 ? (float)c->initializer_range : 0.02f;
		float *wte = grow(m->wte.w, cur, nv, D, std, m->o.seed, "embed_tokens");
		free(m->wte.w);
		m->wte.w = wte;
		free(m->wte.g);
		m->wte.g = NULL;
		if (!c->tie_word_embeddings) {
			float *head = grow(m->lm_head.w, cur, nv, D, std, m->o.seed, "lm_head");
			free(m->lm_head.w);
			m->lm_head.w = head;
			free(m->lm_head.g);
			m->lm_head.g = NULL;
		}
		c->vocab_size = (int)nv;
		if (!m->resized_from) m->resized_from = cur;
		if (m->config_json)
			json_object_set_new(m->config_json, "vocab_size", json_integer(nv));
		ftp_model_free_buffers(m);   /* the head's scratch is sized by the vocabulary */
	}
	for (size_t i = 0; i < r->n_new; i++)
		if (r->new_ids[i] < 0 || r->new_ids[i] >= nv || (i && r->new_ids[i] <= r->new_ids[i - 1]))
			return ft_fail("new token ids must be sorted, unique and below %lld", (long long)nv);
	int64_t n_new = nv - cur;
	if (n_new > 0 || r->n_new) {
		ft_vocab_init(m->wte.w, m->wte.w, nv, D, r, n_new, m->o.seed, "embed_tokens", 1);
		if (!c->tie_word_embeddings)
			ft_vocab_init(m->lm_head.w, m->wte.w, nv, D, r, n_new, m->o.seed, "lm_head", 1);
	}
	if (c->tie_word_embeddings) m->lm_head = m->wte;
	return ftp_model_build_params(m);
}

int ft_model_train_embeddings(ft_model *m)
{
	if (m->o.type != FT_FT_LORA && m->o.type != FT_FT_OFT)
		return ft_fail("modules_to_save: the model has no adapter");
	if (m->qw && m->c.tie_word_embeddings)
		return ft_fail("modules_to_save on a quantized model with tied embeddings is not implemented in ft yet");
	if (m->c.tie_word_embeddings) {
		/* PEFT wraps embed_tokens and lm_head in their own trained copies,
		 * which unties them */
		size_t n = (size_t)m->c.vocab_size * m->c.hidden_size;
		float *head = ft_xmalloc(n * sizeof *head);
		memcpy(head, m->wte.w, n * sizeof *head);
		m->lm_head.w = head;
		m->lm_head.g = NULL;
		m->c.tie_word_embeddings = 0;
		m->untied = 1;
		/* a merged model keeps the trained lm_head (a tied config would
		 * drop it on load) */
		if (m->config_json) json_object_set_new(m->config_json, "tie_word_embeddings", json_false());
	}
	if (m->resized_from) {
		/* PEFT saves a resized layer whole: original_module beside the copy */
		size_t n = (size_t)m->c.vocab_size * m->c.hidden_size;
		free(m->wte0);
		free(m->head0);
		m->wte0 = ft_xmalloc(n * sizeof *m->wte0);
		m->head0 = ft_xmalloc(n * sizeof *m->head0);
		memcpy(m->wte0, m->wte.w, n * sizeof *m->wte0);
		memcpy(m->head0, m->lm_head.w, n * sizeof *m->head0);
	}
	m->o.modules_to_save = 1;
	return ftp_model_build_params(m);
}
