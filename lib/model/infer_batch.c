/* infer_batch.c - positions, validation and the prefill layout of one
 * KV-cache call; see infer_batch.h */
#include "model/infer_batch.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

void ft_infer_batch_free(ft_infer_batch *p)
{
	free(p->pos);
	free(p->slot);
	free(p->brow);
	free(p->want_idx);
	memset(p, 0, sizeof *p);
}

/* Positions of the tokens; -1 with the CPU decoder's messages. */
static int place(ft_infer_batch *p, int *next, int rows, int cap, int vocab,
		 const int32_t *tokens, const int *row_of)
{
	for (int i = 0; i < p->N; i++) {
		int r = row_of[i];
		if (r < 0 || r >= rows)
			return ft_fail("token %d: row %d is not in the cache (%d rows)", i, r, rows);
		if (tokens[i] < 0 || tokens[i] >= vocab)
			return ft_fail("token id %d is outside the vocabulary (%d)", tokens[i], vocab);
		if (next[r] >= cap)
			return ft_fail("row %d is longer than the cache (%d tokens)", r, cap);
		p->pos[i] = next[r]++;
		if (p->pos[i] > p->maxpos)
			p->maxpos = p->pos[i];
	}
	return 0;
}

/* The padded [B, T] layout when every row named starts empty. */
static void prefill_layout(ft_infer_batch *p, const int *len, int rows, const int *row_of)
{
	int *bof = ft_xmalloc(rows * sizeof *bof);
	for (int r = 0; r < rows; r++)
		bof[r] = -1;
	p->prefill = 1;
	for (int i = 0; i < p->N; i++)
		if (len[row_of[i]] != 0)
			p->prefill = 0;
	if (p->prefill) {
		p->slot = ft_xmalloc(p->N * sizeof *p->slot);
		p->brow = ft_xmalloc(p->N * sizeof *p->brow);
		for (int i = 0; i < p->N; i++) {
			int r = row_of[i];
			if (bof[r] < 0) {
				bof[r] = p->B;
				p->brow[p->B++] = r;
			}
		}
		p->T = p->maxpos + 1;
		for (int i = 0; i < p->N; i++)
			p->slot[i] = bof[row_of[i]] * p->T + p->pos[i];
	}
	free(bof);
}

int ft_infer_batch_plan(ft_infer_batch *p, const int *len, int rows, int cap, int vocab,
			const int32_t *tokens, const int *row_of, int N, const int *want)
{
	memset(p, 0, sizeof *p);
	if (N <= 0)
		return 0;
	p->N = N;
	p->pos = ft_xmalloc(N * sizeof *p->pos);
	int *next = ft_xmalloc(rows * sizeof *next);
	memcpy(next, len, rows * sizeof *next);
	int rc = place(p, next, rows, cap, vocab, tokens, row_of);
	free(next);
	if (rc < 0) {
		ft_infer_batch_free(p);
		return -1;
	}
	prefill_layout(p, len, rows, row_of);
	p->want_idx = ft_xmalloc(N * sizeof *p->want_idx);
	for (int i = 0; i < N; i++)
		if (!want || want[i])
			p->want_idx[p->nwant++] = i;
	return 0;
}

void ft_infer_batch_commit(const ft_infer_batch *p, const int *row_of, int *len)
{
	for (int i = 0; i < p->N; i++)
		if (p->pos[i] + 1 > len[row_of[i]])
			len[row_of[i]] = p->pos[i] + 1;
}

void ft_infer_batch_prefill_maps(const ft_infer_batch *p, const int32_t *tokens,
				 const int *row_of, int32_t *ids, int32_t *rope_pos,
				 int32_t *cache_row, int32_t *cache_pos)
{
	int n = p->B * p->T;
	for (int s = 0; s < n; s++) {
		ids[s] = 0;
		rope_pos[s] = s % p->T;
		cache_row[s] = 0;
		cache_pos[s] = -1;
	}
	for (int i = 0; i < p->N; i++) {
		int s = p->slot[i];
		ids[s] = tokens[i];
		cache_row[s] = row_of[i];
		cache_pos[s] = p->pos[i];
	}
}
