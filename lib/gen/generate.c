/* generate.c - batched decoding loop; see generate.h */
#include "gen/generate.h"
#include "gen/beam.h"
#include "model/infer.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

void ft_gen_defaults(ft_gen_opts *o)
{
	memset(o, 0, sizeof *o);
	ft_sampling_defaults(&o->sampling);
	o->max_new_tokens = 1024;
	o->batch_size = 8;
	o->num_beams = 1;
	o->length_penalty = 1.0;
	o->early_stopping = FT_EARLY_HEURISTIC;
}

static int is_stop(const ft_gen_opts *o, int32_t t)
{
	for (size_t i = 0; i < o->n_stop; i++)
		if (o->stop_ids[i] == t) return 1;
	return 0;
}

/* State of the rows decoded together. */
typedef struct {
	int n;                 /* rows in this group */
	size_t first;          /* index of the group's first prompt */
	ft_rng *rng;
	int *done;
	ft_i32vec *ctx;        /* prompt + generated, for the repetition penalty */
	float *logits;
	void *scratch;
} group;

/* Choose each row's next token from its logits row; returns the number
 * of rows still running. */
static int choose(int V, const ft_gen_opts *o, group *g, const int *active,
		  int n_active, ft_i32vec *outs, int32_t *next, ft_gen_token_fn fn, void *ctx)
{
	int running = 0;
	for (int k = 0; k < n_active; k++) {
		int r = active[k];
		float *lg = g->logits + (size_t)k * V;
		int32_t t = ft_sample_next(&o->sampling, lg, V, g->ctx[r].v, g->ctx[r].n, &g->rng[r], g->scratch);
		if (is_stop(o, t)) { g->done[r] = 1; continue; }
		ft_i32vec_push(&outs[g->first + r], t);
		ft_i32vec_push(&g->ctx[r], t);
		if (fn) fn(ctx, g->first + r, t);
		if ((int)outs[g->first + r].n >= o->max_new_tokens) { g->done[r] = 1; continue; }
		next[r] = t;
		running++;
	}
	return running;
}

static int run_group(const ft_decoder *d, const ft_i32vec *prompts, group *g,
		     const ft_gen_opts *o, ft_i32vec *outs, ft_gen_token_fn fn, void *ctx)
{
	size_t longest = 0, total = 0;
	for (int r = 0; r < g->n; r++) {
		const ft_i32vec *p = &prompts[g->first + r];
		if (p->n == 0) return ft_fail("prompt %zu is empty", g->first + r);
		total += p->n;
		if (p->n > longest) longest = p->n;
	}
	int cap = (int)(longest + o->max_new_tokens);
	void *kv = d->open(d->ctx, g->n, cap);
	if (!kv) return -1;
	int32_t *toks = ft_xmalloc(total * sizeof *toks), *next = ft_xcalloc(g->n, sizeof *next);
	int *rows = ft_xmalloc(total * sizeof *rows), *want = ft_xcalloc(total, sizeof *want);
	int *active = ft_xmalloc(g->n * sizeof *active);
	size_t k = 0;
	for (int r = 0; r < g->n; r++) {         /* prefill: all prompts at once */
		const ft_i32vec *p = &prompts[g->first + r];
		for (size_t i = 0; i < p->n; i++, k++) toks[k] = p->v[i], rows[k] = r, want[k] = i + 1 == p->n;
		active[r] = r;
	}
	int rc = d->forward(d->ctx, kv, toks, rows, (int)total, want, g->logits);
	int running = rc == 0 ? choose(d->vocab, o, g, active, g->n, outs, next, fn, ctx) : 0;
	while (rc == 0 && running > 0) {          /* one token per unfinished row */
		int n = 0;
		for (int r = 0; r < g->n; r++)
			if (!g->done[r]) toks[n] = next[r], rows[n] = r, active[n++] = r;
		rc = d->forward(d->ctx, kv, toks, rows, n, NULL, g->logits);
		if (rc == 0) running = choose(d->vocab, o, g, active, n, outs, next, fn, ctx);
	}
	d->close(d->ctx, kv);
	free(toks); free(next); free(rows); free(want); free(active);
	return rc;
}

/* The CPU decoder: ft_kvcache and ft_infer_forward. */
static void *cpu_open(void *m, int rows, int cap) { return ft_kvcache_new(m, rows, cap); }
static void cpu_close(void *m, void *kv) { (void)m; ft_kvcache_free(kv); }

static int cpu_forward(void *m, void *kv, const int32_t *tokens, const int *rows, int N,
		       const int *want, float *logits)
{
	return ft_infer_forward(m, kv, tokens, rows, N, want, logits);
}

ft_decoder ft_cpu_decoder(ft_model *m)
{
	/* m NULL: only the option checks of ft_generate_on run */
	return (ft_decoder){ m, m ? ft_model_config(m)->vocab_size : 0, cpu_open, cpu_forward, cpu_close };
}

int ft_generate(ft_model *m, const ft_i32vec *prompts, size_t n, const ft_gen_opts *o,
		ft_i32vec *outs, ft_gen_token_fn on_token, void *ctx)
{
	if (o->num_beams > 1) return ft_beam_search(m, prompts, n, o, outs, NULL, on_token, ctx);
	ft_decoder d = ft_cpu_decoder(m);
	return ft_generate_on(&d, prompts, n, o, outs, on_token, ctx);
}

int ft_generate_on(const ft_decoder *d, const ft_i32vec *prompts, size_t n,
		   const ft_gen_opts *o, ft_i32vec *outs, ft_gen_token_fn on_token, void *ctx)
{
	if (ft_sampling_check(&o->sampling) < 0) return -1;
	if (o->max_new_tokens < 1) return ft_fail("max_new_tokens must be at least 1");
	if (o->num_beams > 1) return ft_beam_search_on(d, NULL, prompts, n, o, outs, NULL, on_token, ctx);
	if (o->num_beams < 1) return ft_fail("num_beams must be at least 1 (got %d)", o->num_beams);
	int V = d->vocab, bs = o->batch_size > 0 ? o->batch_size : 1;
	group g = {0};
	g.rng = ft_xmalloc(bs * sizeof *g.rng);
	g.done = ft_xmalloc(bs * sizeof *g.done);
	g.ctx = ft_xcalloc(bs, sizeof *g.ctx);
	g.logits = ft_xmalloc((size_t)bs * V * sizeof(float));
	g.scratch = ft_xmalloc(ft_sample_scratch_size(V));
	int rc = 0;
	for (size_t first = 0; rc == 0 && first < n; first += bs) {
		g.first = first;
		g.n = n - first < (size_t)bs ? (int)(n - first) : bs;
		for (int r = 0; r < g.n; r++) {
			ft_rng_seed(&g.rng[r], o->seed * 0x9E3779B97F4A7C15ULL + o->first_index + first + r);
			g.done[r] = 0;
			g.ctx[r].n = 0;
			ft_i32vec_append(&g.ctx[r], prompts[first + r].v, prompts[first + r].n);
			outs[first + r].n = 0;
		}
		rc = run_group(d, prompts, &g, o, outs, on_token, ctx);
	}
	for (int r = 0; r < bs; r++) ft_i32vec_free(&g.ctx[r]);
	free(g.rng); free(g.done); free(g.ctx); free(g.logits); free(g.scratch);
	return rc;
}
