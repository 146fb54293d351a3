/* beam.c - beam search over an ft_decoder; see beam.h.  The names
 * follow transformers' _beam_search: running beams (run_*), finished
 * hypotheses (fin_*, its sequences / beam_scores / is_sent_finished) and
 * is_early_stop_heuristic_unsatisfied (heur). */
#include "gen/beam.h"
#include "model/infer.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NEG 1.0e9f   /* transformers' -1.0e9 masks, exact in float32 */

int ft_early_stopping_parse(const char *s, int *out)
{
	if (!strcasecmp(s, "false")) *out = FT_EARLY_HEURISTIC;
	else if (!strcasecmp(s, "true")) *out = FT_EARLY_TRUE;
	else if (!strcmp(s, "never")) *out = FT_EARLY_NEVER;
	else return ft_fail("early_stopping must be true, false or never (got '%s')", s);
	return 0;
}

const char *ft_early_stopping_name(int e)
{
	return e == FT_EARLY_TRUE ? "true" : e == FT_EARLY_NEVER ? "never" : "false";
}

int ft_beam_check(const ft_gen_opts *o)
{
	if (o->num_beams < 1) return ft_fail("num_beams must be at least 1 (got %d)", o->num_beams);
	if (!isfinite(o->length_penalty))
		return ft_fail("length_penalty must be a finite number (got %g)", o->length_penalty);
	if (o->early_stopping < FT_EARLY_HEURISTIC || o->early_stopping > FT_EARLY_NEVER)
		return ft_fail("early_stopping must be true, false or never");
	if (o->num_beams > 1 && o->sampling.do_sample)
		return ft_fail("num_beams %d with do_sample is transformers' beam sampling, whose "
			       "torch.multinomial draws ft cannot reproduce: use do_sample false for beam search",
			       o->num_beams);
	return 0;
}

typedef struct { float score; int idx; } cand;   /* idx: beam * vocab + token */

/* Scratch shared by the prompts of a group. */
typedef struct {
	const ft_gen_opts *o;
	int nb, K, V;
	float *logp;         /* [V] */
	cand *top;           /* [K] */
	int *hits;           /* [K]: the continuation ends (stop id or max_new_tokens) */
	ft_i32vec context;   /* prompt + a beam's tokens, for the repetition penalty */
	ft_i32vec *tmp;      /* [nb] the next running or finished sequences */
} beam_cfg;

/* One prompt's beams. */
typedef struct {
	int done, heur;
	float *run_score, *fin_score;   /* [nb] */
	int *fin_done, *parent;         /* [nb]; parent: the running beam each came from */
	int32_t *token;                 /* [nb] the running beams' last tokens */
	ft_i32vec *run, *fin;           /* [nb] generated tokens */
} prompt_beams;

static int is_stop(const ft_gen_opts *o, int32_t t)
{
	for (size_t i = 0; i < o->n_stop; i++)
		if (o->stop_ids[i] == t) return 1;
	return 0;
}

static float pow_len(int len, double lp)
{
	return (float)pow((double)len, lp);   /* python's int ** float, then a float32 scalar */
}

/* torch.nn.functional.log_softmax over one row, float32 out. */
static void log_softmax(const float *x, int V, float *out)
{
	float mx = x[0];
	for (int i = 1; i < V; i++)
		if (x[i] > mx) mx = x[i];
	double z = 0;
	for (int i = 0; i < V; i++) z += exp((double)x[i] - mx);
	float lz = (float)log(z);
	for (int i = 0; i < V; i++) out[i] = (x[i] - mx) - lz;
}

/* Insert (s, idx) into the descending top list of at most K; an equal
 * score goes after those already there (the lower index first). */
static void keep_top(cand *top, int *n, int K, float s, int idx)
{
	if (*n == K && !(s > top[K - 1].score)) return;
	int i = *n < K ? (*n)++ : K - 1;
	while (i > 0 && s > top[i - 1].score) { top[i] = top[i - 1]; i--; }
	top[i] = (cand){ s, idx };
}

/* The best K continuations of all beams; row(b) = logits + b*stride*V
 * (stride 0 on the first step, when every beam is the prompt). */
static void gather(beam_cfg *c, prompt_beams *pb, const float *logits, int stride, const ft_i32vec *prompt)
{
	int n = 0, V = c->V;
	for (int b = 0; b < c->nb; b++) {
		log_softmax(logits + (size_t)b * stride * V, V, c->logp);
		c->context.n = 0;
		ft_i32vec_append(&c->context, prompt->v, prompt->n);
		ft_i32vec_append(&c->context, pb->run[b].v, pb->run[b].n);
		ft_apply_repetition_penalty(c->logp, c->context.v, c->context.n, c->o->sampling.repetition_penalty);
		for (int v = 0; v < V; v++) keep_top(c->top, &n, c->K, c->logp[v] + pb->run_score[b], b * V + v);
	}
}

static void set_seq(ft_i32vec *dst, const ft_i32vec *src, int32_t tok, int add)
{
	dst->n = 0;
	ft_i32vec_append(dst, src->v, src->n);
	if (add) ft_i32vec_push(dst, tok);
}

static void swap_seqs(ft_i32vec **a, ft_i32vec **b)
{
	ft_i32vec *t = *a;
	*a = *b, *b = t;
}

/* The index of the best of score[0..n) not yet used (ties: the lower). */
static int best_unused(const float *score, int *used, int n)
{
	int best = -1;
	for (int i = 0; i < n; i++)
		if (!used[i] && (best < 0 || score[i] > score[best])) best = i;
	used[best] = 1;
	return best;
}

/* _update_finished_beams: the best num_beams of the finished ones and of
 * the first num_beams continuations that just ended, length-penalised. */
static void update_finished(beam_cfg *c, prompt_beams *pb, int gen_len)
{
	int nb = c->nb, K = c->K, all = 1, used[nb + K];
	float merged[nb + K], denom = pow_len(gen_len, c->o->length_penalty);
	for (int b = 0; b < nb; b++) all &= pb->fin_done[b], merged[b] = pb->fin_score[b];
	int full = all && c->o->early_stopping == FT_EARLY_TRUE;
	for (int k = 0; k < K; k++) {
		float t = c->top[k].score / denom;
		t += full ? -NEG : 0.0f;
		t += pb->heur ? 0.0f : -NEG;
		t += c->hits[k] && k < nb ? 0.0f : -NEG;
		merged[nb + k] = t;
	}
	memset(used, 0, sizeof used);
	int done[nb];
	float score[nb];
	for (int j = 0; j < nb; j++) {
		int i = best_unused(merged, used, nb + K);
		score[j] = merged[i];
		if (i < nb) {
			set_seq(&c->tmp[j], &pb->fin[i], 0, 0);
			done[j] = pb->fin_done[i];
		} else {
			const cand *t = &c->top[i - nb];
			set_seq(&c->tmp[j], &pb->run[t->idx / c->V], t->idx % c->V, 1);
			done[j] = c->hits[i - nb] && i - nb < nb;
		}
	}
	memcpy(pb->fin_score, score, sizeof score);
	memcpy(pb->fin_done, done, sizeof done);
	swap_seqs(&pb->fin, &c->tmp);
}

/* _get_running_beams_for_next_iteration: the best num_beams of the
 * continuations, the ended ones pushed down by -1e9. */
static void advance_running(beam_cfg *c, prompt_beams *pb)
{
	int K = c->K, used[K];
	float masked[K];
	for (int k = 0; k < K; k++) masked[k] = c->top[k].score + (c->hits[k] ? -NEG : 0.0f);
	memset(used, 0, sizeof used);
	for (int j = 0; j < c->nb; j++) {
		const cand *t = &c->top[best_unused(masked, used, K)];
		pb->run_score[j] = masked[t - c->top];
		pb->parent[j] = t->idx / c->V;
		pb->token[j] = t->idx % c->V;
		set_seq(&c->tmp[j], &pb->run[pb->parent[j]], pb->token[j], 1);
	}
	swap_seqs(&pb->run, &c->tmp);
}

/* _check_early_stop_heuristic, then whether this prompt is over. */
static void update_done(beam_cfg *c, prompt_beams *pb, int gen_len)
{
	const ft_gen_opts *o = c->o;
	int hyp = o->early_stopping == FT_EARLY_NEVER && o->length_penalty > 0 ? o->max_new_tokens : gen_len;
	float best = pb->run_score[0] / pow_len(hyp, o->length_penalty), mn = pb->fin_score[0];
	int all = 1, improvable = 0;
	for (int b = 0; b < c->nb; b++) {
		if (pb->fin_score[b] < mn) mn = pb->fin_score[b];
		all &= pb->fin_done[b];
	}
	for (int b = 0; b < c->nb; b++) improvable |= best > (pb->fin_done[b] ? mn : -NEG);
	pb->heur = pb->heur && improvable;
	pb->done = !pb->heur || gen_len >= o->max_new_tokens || (all && o->early_stopping == FT_EARLY_TRUE);
}

/* One step of one prompt: `gen` tokens generated before it. */
static void beam_step(beam_cfg *c, prompt_beams *pb, const float *logits, int stride,
		      const ft_i32vec *prompt, int gen)
{
	gather(c, pb, logits, stride, prompt);
	for (int k = 0; k < c->K; k++)
		c->hits[k] = is_stop(c->o, c->top[k].idx % c->V) || gen + 1 >= c->o->max_new_tokens;
	update_finished(c, pb, gen + 1);
	advance_running(c, pb);
	update_done(c, pb, gen + 1);
}

static void beams_init(prompt_beams *pb, int nb)
{
	pb->done = 0, pb->heur = 1;
	for (int b = 0; b < nb; b++) {
		pb->run_score[b] = b == 0 ? 0.0f : -NEG;   /* only the first beam's tokens at first */
		pb->fin_score[b] = -NEG;
		pb->fin_done[b] = 0;
		pb->run[b].n = 0, pb->fin[b].n = 0;
	}
}

static void beams_alloc(prompt_beams *pb, int nb)
{
	pb->run_score = ft_xmalloc(nb * sizeof(float));
	pb->fin_score = ft_xmalloc(nb * sizeof(float));
	pb->fin_done = ft_xmalloc(nb * sizeof(int));
	pb->parent = ft_xmalloc(nb * sizeof(int));
	pb->token = ft_xmalloc(nb * sizeof(int32_t));
	pb->run = ft_xcalloc(nb, sizeof(ft_i32vec));
	pb->fin = ft_xcalloc(nb, sizeof(ft_i32vec));
}

static void free_seqs(ft_i32vec *v, int n)
{
	for (int i = 0; i < n; i++) ft_i32vec_free(&v[i]);
	free(v);
}

static void beams_free(prompt_beams *pb, int nb)
{
	free(pb->run_score); free(pb->fin_score); free(pb->fin_done); free(pb->parent); free(pb->token);
	free_seqs(pb->run, nb);
	free_seqs(pb->fin, nb);
}

/* A group of up to batch_size prompts, num_beams rows each. */
typedef struct {
	const ft_decoder *d;
	ft_kv_copy_fn copy;
	beam_cfg c;
	prompt_beams *pb;
	int32_t *toks;
	int *rows, *want, *dst, *src, *at;   /* at[p]: prompt p's first logits row */
	float *logits;
} beam_run;

static int prefill(beam_run *r, void *kv, const ft_i32vec *prompts, int np)
{
	int k = 0;
	for (int p = 0; p < np; p++) {
		for (size_t i = 0; i < prompts[p].n; i++, k++)
			r->toks[k] = prompts[p].v[i], r->rows[k] = p * r->c.nb, r->want[k] = i + 1 == prompts[p].n;
		r->at[p] = p;
	}
	return r->d->forward(r->d->ctx, kv, r->toks, r->rows, k, r->want, r->logits);
}

/* Reorder the cache to the new running beams and feed their tokens. */
static int advance(beam_run *r, void *kv, int np, int first_step)
{
	int nb = r->c.nb, n = 0;
	for (int p = 0; p < np; p++) {
		if (r->pb[p].done) continue;
		r->at[p] = n;
		for (int j = 0; j < nb; j++, n++) {
			r->dst[n] = p * nb + j, r->src[n] = p * nb + (first_step ? 0 : r->pb[p].parent[j]);
			r->toks[n] = r->pb[p].token[j], r->rows[n] = p * nb + j;
		}
	}
	if (r->copy(r->d->ctx, kv, r->dst, r->src, n) < 0) return -1;
	return r->d->forward(r->d->ctx, kv, r->toks, r->rows, n, NULL, r->logits);
}

static int steps(beam_run *r, void *kv, const ft_i32vec *prompts, int np)
{
	int rc = prefill(r, kv, prompts, np);
	for (int gen = 0; rc == 0; gen++) {
		int running = 0;
		for (int p = 0; p < np; p++) {
			if (r->pb[p].done) continue;
			beam_step(&r->c, &r->pb[p], r->logits + (size_t)r->at[p] * r->c.V,
				  gen == 0 ? 0 : 1, &prompts[p], gen);
			running += !r->pb[p].done;
		}
		if (!running) break;
		rc = advance(r, kv, np, gen == 0);
	}
	return rc;
}

static void emit(beam_run *r, int np, size_t first, ft_i32vec *outs, float *scores,
		 ft_gen_token_fn fn, void *ctx)
{
	for (int p = 0; p < np; p++) {
		const ft_i32vec *best = &r->pb[p].fin[0];
		size_t len = best->n;
		if (len > 0 && is_stop(r->c.o, best->v[len - 1])) len--;
		outs[first + p].n = 0;
		ft_i32vec_append(&outs[first + p], best->v, len);
		if (scores) scores[first + p] = r->pb[p].fin_score[0];
		for (size_t i = 0; fn && i < len; i++) fn(ctx, first + p, best->v[i]);
	}
}

static int run_group(beam_run *r, const ft_i32vec *prompts, size_t first, int np,
		     ft_i32vec *outs, float *scores, ft_gen_token_fn fn, void *ctx)
{
	size_t longest = 0;
	for (int p = 0; p < np; p++) {
		if (prompts[first + p].n == 0) return ft_fail("prompt %zu is empty", first + p);
		if (prompts[first + p].n > longest) longest = prompts[first + p].n;
		beams_init(&r->pb[p], r->c.nb);
	}
	void *kv = r->d->open(r->d->ctx, np * r->c.nb, (int)(longest + r->c.o->max_new_tokens));
	if (!kv) return -1;
	int rc = steps(r, kv, prompts + first, np);
	r->d->close(r->d->ctx, kv);
	if (rc == 0) emit(r, np, first, outs, scores, fn, ctx);
	return rc;
}

static void run_alloc(beam_run *r, const ft_i32vec *prompts, size_t n, int bs)
{
	int nb = r->c.nb, V = r->c.V;
	size_t most = (size_t)bs * nb;
	for (size_t i = 0; i < n; i += bs) {   /* the largest prefill */
		size_t t = 0;
		for (size_t j = i; j < n && j < i + bs; j++) t += prompts[j].n;
		if (t > most) most = t;
	}
	r->c.logp = ft_xmalloc(V * sizeof(float));
	r->c.top = ft_xmalloc(r->c.K * sizeof(cand));
	r->c.hits = ft_xmalloc(r->c.K * sizeof(int));
	r->c.tmp = ft_xcalloc(nb, sizeof(ft_i32vec));
	r->pb = ft_xcalloc(bs, sizeof *r->pb);
	for (int p = 0; p < bs; p++) beams_alloc(&r->pb[p], nb);
	r->toks = ft_xmalloc(most * sizeof(int32_t));
	r->rows = ft_xmalloc(most * sizeof(int));
	r->want = ft_xmalloc(most * sizeof(int));
	r->dst = ft_xmalloc(most * sizeof(int));
	r->src = ft_xmalloc(most * sizeof(int));
	r->at = ft_xmalloc(bs * sizeof(int));
	r->logits = ft_xmalloc((size_t)bs * nb * V * sizeof(float));
}

static void run_free(beam_run *r, int bs)
{
	free(r->c.logp); free(r->c.top); free(r->c.hits);
	free_seqs(r->c.tmp, r->c.nb);
	ft_i32vec_free(&r->c.context);
	for (int p = 0; p < bs; p++) beams_free(&r->pb[p], r->c.nb);
	free(r->pb); free(r->toks); free(r->rows); free(r->want); free(r->dst); free(r->src);
	free(r->at); free(r->logits);
}

int ft_beam_search_on(const ft_decoder *d, ft_kv_copy_fn copy, const ft_i32vec *prompts, size_t n,
		      const ft_gen_opts *o, ft_i32vec *outs, float *scores,
		      ft_gen_token_fn on_token, void *ctx)
{
	if (ft_sampling_check(&o->sampling) < 0 || ft_beam_check(o) < 0) return -1;
	if (o->max_new_tokens < 1) return ft_fail("max_new_tokens must be at least 1");
	if (!copy) return ft_fail("num_beams %d: this decoder cannot copy KV-cache rows between beams", o->num_beams);
	if (n == 0) return 0;
	int nb = o->num_beams, bs = o->batch_size > 0 ? o->batch_size : 1;
	int K = (o->n_stop + 1 > 2 ? (int)o->n_stop + 1 : 2) * nb;
	if ((long long)nb * d->vocab < K)
		return ft_fail("num_beams %d: the vocabulary (%d) is smaller than the %d candidates kept", nb, d->vocab, K);
	beam_run r = { .d = d, .copy = copy, .c = { .o = o, .nb = nb, .K = K, .V = d->vocab } };
	run_alloc(&r, prompts, n, bs);
	int rc = 0;
	for (size_t first = 0; rc == 0 && first < n; first += bs)
		rc = run_group(&r, prompts, first, n - first < (size_t)bs ? (int)(n - first) : bs,
			       outs, scores, on_token, ctx);
	run_free(&r, bs);
	return rc;
}

static int cpu_copy(void *m, void *kv, const int *dst, const int *src, int n)
{
	(void)m;
	ft_kvcache_copy_rows(kv, dst, src, n);
	return 0;
}

int ft_beam_search(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_gen_opts *o,
		   ft_i32vec *outs, float *scores, ft_gen_token_fn on_token, void *ctx)
{
	ft_decoder d = ft_cpu_decoder(m);
	return ft_beam_search_on(&d, cpu_copy, prompts, n, o, outs, scores, on_token, ctx);
}
