/* test_infer_batch.c - the host-side bookkeeping of the decoders, which
 * the GPU path shares with the CPU and which runs here without a GPU:
 *  - ft_infer_batch_plan: positions, the prefill test and its right-padded
 *    [B, T] layout, the logits rows asked for, the refusals (with the CPU
 *    decoder's messages);
 *  - ft_generate_on over a recording decoder: one prefill call with every
 *    prompt token and logits only for each prompt's last one, then one
 *    token per unfinished row per step (finished rows are not fed), each
 *    group on a freshly opened cache sized longest prompt + max_new_tokens,
 *    and the outputs independent of the batch size.
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gen/generate.h"
#include "model/infer_batch.h"
#include "util/error.h"

static void test_plan(void)
{
	int len[3] = { 0, 0, 0 };
	/* rows 2 and 0 interleaved: 2 tokens of row 2, 3 of row 0 */
	int32_t tok[5] = { 7, 8, 9, 10, 11 };
	int rows[5] = { 2, 0, 2, 0, 0 }, want[5] = { 0, 0, 1, 0, 1 };
	ft_infer_batch p;
	int rc = ft_infer_batch_plan(&p, len, 3, 16, 100, tok, rows, 5, want);
	ok(rc == 0 && p.N == 5, "a call plans");
	int pos_ok = p.pos[0] == 0 && p.pos[1] == 0 && p.pos[2] == 1 && p.pos[3] == 1 && p.pos[4] == 2;
	ok(pos_ok && p.maxpos == 2, "positions follow each row's order; maxpos 2");
	ok(p.prefill && p.B == 2 && p.T == 3 && p.brow[0] == 2 && p.brow[1] == 0,
	   "rows that start empty: a prefill, padded rows in order of first appearance, T = longest");
	int slot_ok = p.slot[0] == 0 && p.slot[2] == 1 && p.slot[1] == 3 && p.slot[3] == 4 &&
		      p.slot[4] == 5;
	ok(slot_ok, "slots are b * T + position (right padding)");
	ok(p.nwant == 2 && p.want_idx[0] == 2 && p.want_idx[1] == 4, "logits rows: the wanted tokens in order");
	int32_t ids[6], rp[6], cr[6], cp[6];
	ft_infer_batch_prefill_maps(&p, tok, rows, ids, rp, cr, cp);
	/* padded row 0 = cache row 2 (tokens 7, 9, pad), row 1 = cache row 0 (8, 10, 11) */
	int32_t wids[6] = { 7, 9, 0, 8, 10, 11 }, wrp[6] = { 0, 1, 2, 0, 1, 2 };
	int32_t wcr[6] = { 2, 2, 0, 0, 0, 0 }, wcp[6] = { 0, 1, -1, 0, 1, 2 };
	ok(!memcmp(ids, wids, sizeof ids) && !memcmp(rp, wrp, sizeof rp) && !memcmp(cr, wcr, sizeof cr) &&
	   !memcmp(cp, wcp, sizeof cp), "prefill maps: ids, RoPE positions, cache slots; pads -1");
	ft_infer_batch_commit(&p, rows, len);
	ok(len[0] == 3 && len[1] == 0 && len[2] == 2, "commit: the rows' lengths");
	ft_infer_batch_free(&p);

	/* a decode step: one token per row on top of the cache */
	int32_t t2[2] = { 1, 2 };
	int r2[2] = { 0, 2 };
	rc = ft_infer_batch_plan(&p, len, 3, 16, 100, t2, r2, 2, NULL);
	ok(rc == 0 && !p.prefill && p.pos[0] == 3 && p.pos[1] == 2 && p.nwant == 2,
	   "a step on non-empty rows is not a prefill; want NULL: every token");
	ft_infer_batch_free(&p);
	/* a fresh row next to a non-empty one is not a prefill either */
	int r3[2] = { 1, 0 };
	rc = ft_infer_batch_plan(&p, len, 3, 16, 100, t2, r3, 2, NULL);
	ok(rc == 0 && !p.prefill && p.pos[0] == 0 && p.pos[1] == 3, "mixed fresh and cached rows: cache path");
	ft_infer_batch_free(&p);

	int32_t bad = 100;
	int r0 = 0, r9 = 9;
	rc = ft_infer_batch_plan(&p, len, 3, 16, 100, &bad, &r0, 1, NULL);
	ok(rc == -1 && strstr(ft_errmsg(), "outside the vocabulary (100)") && p.pos == NULL,
	   "a token id out of range is refused: %s", ft_errmsg());
	rc = ft_infer_batch_plan(&p, len, 3, 16, 100, t2, &r9, 1, NULL);
	ok(rc == -1 && strstr(ft_errmsg(), "row 9 is not in the cache (3 rows)"), "a bad row is refused");
	int full[3] = { 16, 0, 0 };
	rc = ft_infer_batch_plan(&p, full, 3, 16, 100, t2, &r0, 1, NULL);
	ok(rc == -1 && strstr(ft_errmsg(), "longer than the cache (16 tokens)"), "a full row is refused");
	ok(ft_infer_batch_plan(&p, len, 3, 16, 100, NULL, NULL, 0, NULL) == 0 && p.N == 0, "N = 0 is a no-op");
}

/* A decoder that records its calls and whose logits make row r (by its
 * first prompt token) choose tokens 10 + r*step, stopping (id 1) after
 * r + 2 tokens: rows finish at different steps. */
#define V 64
typedef struct {
	int opens, calls, rows, cap, bad;
	int len[16];
	int first[16];           /* first prompt token per row */
	int fed[64];             /* tokens fed per call */
	int wanted[64];          /* logits rows per call */
} rec;

static void *rec_open(void *ctx, int rows, int cap)
{
	rec *r = ctx;
	r->opens++, r->rows = rows, r->cap = cap;
	memset(r->len, 0, sizeof r->len);
	return r;
}

static int rec_forward(void *ctx, void *cache, const int32_t *tokens, const int *rows, int N,
		       const int *want, float *logits)
{
	rec *r = cache;
	(void)ctx;
	ft_infer_batch p;
	if (ft_infer_batch_plan(&p, r->len, r->rows, r->cap, V, tokens, rows, N, want) < 0)
		return -1;
	if (r->calls < 64) r->fed[r->calls] = N, r->wanted[r->calls] = p.nwant;
	r->calls++;
	for (int i = 0; i < N; i++)
		if (p.pos[i] == 0) r->first[rows[i]] = tokens[i];
	for (int j = 0; j < p.nwant; j++) {
		int i = p.want_idx[j], row = rows[i];
		int id = r->first[row] % 8;          /* which prompt this row holds */
		int made = p.pos[i] + 1 - (id + 1);  /* prompts of id + 1 tokens */
		float *lg = logits + (size_t)j * V;
		for (int k = 0; k < V; k++) lg[k] = 0;
		lg[made >= id + 2 ? 1 : 10 + id * 3 + made] = 5;
	}
	ft_infer_batch_commit(&p, rows, r->len);
	ft_infer_batch_free(&p);
	return 0;
}

static void rec_close(void *ctx, void *cache) { (void)ctx, (void)cache; }

static void test_generate_on(void)
{
	/* prompt k: k + 1 tokens, the first = k (so the decoder knows it) */
	ft_i32vec pr[4] = { { 0 } }, out[4] = { { 0 } }, one[4] = { { 0 } };
	for (int k = 0; k < 4; k++)
		for (int i = 0; i <= k; i++) ft_i32vec_push(&pr[k], i ? 40 + i : k);
	int32_t stop = 1;
	ft_gen_opts g;
	ft_gen_defaults(&g);
	g.sampling.do_sample = 0, g.max_new_tokens = 20, g.stop_ids = &stop, g.n_stop = 1;
	g.batch_size = 4;
	rec r = { 0 };
	ft_decoder d = { &r, V, rec_open, rec_forward, rec_close };
	int rc = ft_generate_on(&d, pr, 4, &g, out, NULL, NULL);
	ok(rc == 0 && r.opens == 1 && r.rows == 4 && r.cap == 4 + 20, "one group: one cache, rows 4, cap longest + max_new");
	ok(r.fed[0] == 1 + 2 + 3 + 4 && r.wanted[0] == 4, "prefill: every prompt token, logits of each last one");
	/* row k makes k + 2 tokens then draws the stop id: steps feed 4, 4, 3, 2, 1 rows */
	int want_fed[] = { 4, 4, 3, 2, 1 };
	int steps_ok = r.calls == 6;
	for (int s = 0; steps_ok && s < 5; s++)
		steps_ok = r.fed[s + 1] == want_fed[s] && r.wanted[s + 1] == want_fed[s];
	ok(steps_ok, "decoding: one token per unfinished row per step; finished rows are not fed (%d calls)", r.calls);
	int tok_ok = 1;
	for (int k = 0; k < 4; k++) {
		tok_ok &= out[k].n == (size_t)k + 2;
		for (size_t t = 0; tok_ok && t < out[k].n; t++) tok_ok = out[k].v[t] == 10 + 3 * k + (int)t;
	}
	ok(tok_ok, "each row got its own tokens, without the stop id");
	rec r1 = { 0 };
	ft_decoder d1 = { &r1, V, rec_open, rec_forward, rec_close };
	g.batch_size = 1;
	rc = ft_generate_on(&d1, pr, 4, &g, one, NULL, NULL);
	int same = rc == 0 && r1.opens == 4;
	for (int k = 0; same && k < 4; k++)
		same = one[k].n == out[k].n && !memcmp(one[k].v, out[k].v, out[k].n * sizeof(int32_t));
	ok(same, "batch size 1: a cache per prompt, the same tokens");
	for (int k = 0; k < 4; k++) ft_i32vec_free(&pr[k]), ft_i32vec_free(&out[k]), ft_i32vec_free(&one[k]);
}

int main(void)
{
	test_plan();
	test_generate_on();
	return tap_done();
}
