/* test_pack.c - rows, knapsacks, split, shuffle and batches (lib/data/pack.h).
 *
 * Token ids in the synthetic data encode where they come from:
 *   id = ex * 4096 + pos * 2 + which      (which: 0 chosen/plain, 1 rejected)
 * so every cell of every batch can be checked from the batch alone: the
 * multiset of (example, position, token) survives, labels sit beside their
 * ids, segment and position ids change exactly at example boundaries.
 */
#include "tap.h"
#include "data/pack.h"
#include "data/stage.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define PAD 7777777
#define ENC(ex, pos, w) ((int32_t)((ex) * 4096 + (pos) * 2 + (w)))
#define DEC_EX(id) ((id) / 4096)
#define DEC_POS(id) (((id) % 4096) / 2)
#define DEC_W(id) ((id) % 2)

/* Label rule: every third position is masked; others copy the id. */
static int32_t label_of(int32_t id) { return DEC_POS(id) % 3 == 0 ? FT_IGNORE_INDEX : id; }

static void make_examples(ft_examples *e, int nseq, int n, int maxlen, unsigned seed)
{
	ft_examples_init(e, nseq);
	srand(seed);
	int32_t ids[2048], lab[2048];
	for (int i = 0; i < n; i++)
		for (int w = 0; w < nseq; w++) {
			int len = 1 + rand() % maxlen;
			for (int p = 0; p < len; p++) {
				ids[p] = ENC(i, p, w);
				lab[p] = label_of(ids[p]);
			}
			ft_examples_add_seq(e, ids, lab, (size_t)len);
		}
}

/* Run the whole pipeline and check every cell.  Returns the number of
 * problems found; fills seen[ex*2048*2 + pos*2 + w] counts. */
typedef struct {
	int layout, stage, nseq, bs, cutoff, window;
	double val_size;
	uint64_t seed;
} cfg;

static int check_batches(const ft_examples *e, const ft_rows *r, const int64_t *units, size_t n,
			 const ft_batch_opts *o, int *seen, int *bad_labels, int *bad_seg, int *bad_pair)
{
	ft_batch b = { 0 };
	int64_t nb = ft_pack_n_batches(n, o);
	int problems = 0;
	for (int64_t bi = 0; bi < nb; bi++) {
		size_t j0 = (size_t)bi * (size_t)o->batch_size;
		size_t m = n - j0 < (size_t)o->batch_size ? n - j0 : (size_t)o->batch_size;
		ft_batch_fill(e, r, units + j0, m, o, &b);
		if (o->layout == FT_LAYOUT_PADDED && b.T % o->pad_to_multiple_of) problems++;
		for (int row = 0; row < b.B; row++) {
			const int32_t *ids = b.input_ids + (size_t)row * b.T, *lab = b.labels + (size_t)row * b.T;
			int prev_ex = -1, prev_pos = -1, prev_seg = 0;
			for (int t = 0; t < b.T; t++) {
				if (ids[t] == PAD) {
					if (lab[t] != FT_IGNORE_INDEX) (*bad_labels)++;
					if (b.segment_ids && b.segment_ids[(size_t)row * b.T + t] != 0) (*bad_seg)++;
					continue;
				}
				int ex = DEC_EX(ids[t]), pos = DEC_POS(ids[t]), w = DEC_W(ids[t]);
				seen[(ex * 2048 + pos) * 2 + w]++;
				int32_t want = o->stage == FT_STAGE_PT ? ids[t] : label_of(ids[t]);
				if (lab[t] != want) (*bad_labels)++;
				if (b.pairwise && w != row % 2) (*bad_pair)++;
				int new_seg = ex != prev_ex;
				if (!new_seg && pos != prev_pos + 1) (*bad_seg)++;   /* order inside an example */
				if (b.position_ids && b.position_ids[(size_t)row * b.T + t] != pos) (*bad_seg)++;
				if (b.segment_ids) {
					int32_t s = b.segment_ids[(size_t)row * b.T + t];
					if (s != (new_seg ? prev_seg + 1 : prev_seg)) (*bad_seg)++;
					prev_seg = s;
				}
				prev_ex = ex; prev_pos = pos;
			}
			/* rejected row has the same examples in the same order */
			if (b.pairwise && row % 2 == 1) {
				const int32_t *c = b.input_ids + (size_t)(row - 1) * b.T;
				int ce[64], re[64], nc = 0, nr = 0;
				for (int t = 0; t < b.T; t++) {
					if (c[t] != PAD && (t == 0 || c[t - 1] == PAD || DEC_EX(c[t - 1]) != DEC_EX(c[t])) && nc < 64) ce[nc++] = DEC_EX(c[t]);
					if (ids[t] != PAD && (t == 0 || ids[t - 1] == PAD || DEC_EX(ids[t - 1]) != DEC_EX(ids[t])) && nr < 64) re[nr++] = DEC_EX(ids[t]);
				}
				if (nc != nr || memcmp(ce, re, (size_t)nc * sizeof *ce)) (*bad_pair)++;
			}
		}
	}
	ft_batch_free(&b);
	return problems;
}

/* Whole pipeline: rows, split, shuffle, batches; checks every token. */
static void run_case(const char *name, const cfg *c)
{
	ft_examples e;
	make_examples(&e, c->nseq, 300, c->layout == FT_LAYOUT_PADDED ? 90 : 60, 42);
	if (c->stage == FT_STAGE_PT) {   /* pt: labels are the ids */
		memcpy(e.labels.v, e.ids.v, e.ids.n * sizeof *e.ids.v);
	}
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { c->stage, c->layout, c->cutoff, c->window };
	ok(ft_rows_build(&e, &ro, &r, &st) == 0, "%s: rows built", name);
	int64_t nu = (int64_t)ft_rows_units(&r), n_val = ft_val_count(c->val_size, nu), n_train;
	int64_t *train, *val;
	ft_split_units(c->seed, nu, n_val, &train, &n_train, &val);
	ft_rng g;
	ft_rng_seed(&g, c->seed);
	ft_shuffle_i64(&g, train, (size_t)n_train);
	ft_batch_opts bo = { c->stage, c->layout, c->bs, 8, c->cutoff, PAD, -1, 0 };

	/* val and train are disjoint and together are every unit */
	int *cnt = calloc((size_t)nu, sizeof *cnt);
	for (int64_t i = 0; i < n_train; i++) cnt[train[i]]++;
	for (int64_t i = 0; i < n_val; i++) cnt[val[i]]++;
	int once = 1;
	for (int64_t i = 0; i < nu; i++) once &= cnt[i] == 1;
	ok(once, "%s: train (%lld) and val (%lld) units are disjoint and complete", name,
	   (long long)n_train, (long long)n_val);
	free(cnt);

	int *seen = calloc(300 * 2048 * 2, sizeof *seen);
	int bad_labels = 0, bad_seg = 0, bad_pair = 0;
	int problems = check_batches(&e, &r, train, (size_t)n_train, &bo, seen, &bad_labels, &bad_seg, &bad_pair);
	problems += check_batches(&e, &r, val, (size_t)n_val, &bo, seen, &bad_labels, &bad_seg, &bad_pair);
	ok(problems == 0, "%s: padded T is a multiple of 8", name);

	/* multiset: each (example, position, which) exactly once, except the
	 * truncated / dropped tokens, which are counted in st. */
	int64_t missing = 0, dup = 0;
	for (int i = 0; i < 300; i++)
		for (int w = 0; w < c->nseq; w++) {
			size_t s = (size_t)i * (size_t)c->nseq + (size_t)w;
			int len = (int)ft_examples_seq_len(&e, s);
			for (int p = 0; p < len; p++) {
				int k = seen[(i * 2048 + p) * 2 + w];
				missing += k == 0;
				dup += k > 1;
			}
		}
	ok(dup == 0, "%s: no token duplicated", name);
	ok(missing == st.truncated_tokens + st.dropped_tokens,
	   "%s: tokens missing (%lld) are exactly those truncated (%lld) or dropped (%lld)", name,
	   (long long)missing, (long long)st.truncated_tokens, (long long)st.dropped_tokens);
	ok(bad_labels == 0, "%s: labels aligned with their ids, -100 on padding (%d bad)", name, bad_labels);
	ok(bad_seg == 0, "%s: segment/position ids right at boundaries (%d bad)", name, bad_seg);
	if (c->nseq == 2) ok(bad_pair == 0, "%s: chosen/rejected rows 2i/2i+1 hold the same examples", name);
	free(seen); free(train); free(val);
	ft_rows_free(&r);
	ft_examples_free(&e);
}

/* A hash of the complete batch output, for seed tests. */
static uint64_t output_hash(uint64_t seed)
{
	ft_examples e;
	make_examples(&e, 1, 200, 50, 7);
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { FT_STAGE_SFT, FT_LAYOUT_PADDED, 64, 1000 };
	ft_rows_build(&e, &ro, &r, &st);
	int64_t *train, *val, nt;
	ft_split_units(seed, (int64_t)ft_rows_units(&r), 20, &train, &nt, &val);
	ft_rng g;
	ft_rng_seed(&g, seed);
	ft_shuffle_i64(&g, train, (size_t)nt);
	ft_batch_opts bo = { FT_STAGE_SFT, FT_LAYOUT_PADDED, 4, 8, 64, PAD, -1, 0 };
	uint64_t h = 1469598103934665603ULL;
	ft_batch b = { 0 };
	for (int64_t i = 0; i < ft_pack_n_batches((size_t)nt, &bo); i++) {
		size_t m = (size_t)(nt - i * 4 < 4 ? nt - i * 4 : 4);
		ft_batch_fill(&e, &r, train + i * 4, m, &bo, &b);
		for (size_t k = 0; k < (size_t)b.B * (size_t)b.T; k++) {
			h = (h ^ (uint32_t)b.input_ids[k]) * 1099511628211ULL;
		}
	}
	ft_batch_free(&b);
	free(train); free(val);
	ft_rows_free(&r);
	ft_examples_free(&e);
	return h;
}

static void test_seeds(void)
{
	ok(output_hash(1) == output_hash(1), "same seed: identical batches");
	ok(output_hash(1) != output_hash(2), "different seeds: different batches");
}

static void test_group_by_length(void)
{
	/* padding with grouping is below padding without it */
	ft_examples e;
	make_examples(&e, 1, 400, 120, 3);
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { FT_STAGE_SFT, FT_LAYOUT_PADDED, 128, 1000 };
	ft_rows_build(&e, &ro, &r, &st);
	ft_batch_opts bo = { FT_STAGE_SFT, FT_LAYOUT_PADDED, 4, 8, 128, PAD, -1, 0 };
	int64_t pads[2];
	for (int gr = 0; gr < 2; gr++) {
		int64_t *u = malloc(400 * sizeof *u);
		for (int i = 0; i < 400; i++) u[i] = i;
		ft_rng g;
		ft_rng_seed(&g, 5);
		ft_shuffle_i64(&g, u, 400);
		if (gr) ft_group_by_length(&r, u, 400, 4);
		ft_pack_totals t;
		ft_pack_totals_compute(&e, &r, u, 400, &bo, &t);
		pads[gr] = t.pad_tokens;
		free(u);
	}
	ok(pads[1] * 2 < pads[0], "group_by_length cuts padding (%lld -> %lld)",
	   (long long)pads[0], (long long)pads[1]);
	ft_rows_free(&r);
	ft_examples_free(&e);
}

static void test_llamafactory_fixture(void)
{
	const char *path = "tests/fixtures/pack/llamafactory_pack.json";
	json_error_t err;
	json_t *root = json_load_file(path, 0, &err);
	if (!root) { ok(0, "load %s: %s", path, err.text); return; }
	size_t ci;
	json_t *c, *knapsack = json_object_get(root, "knapsack"), *pt_blocks = json_object_get(root, "pt_blocks");
	/* a renamed or emptied key must fail, not leave the loops below with
	 * nothing to check */
	ok(json_array_size(knapsack) > 0 && json_array_size(pt_blocks) > 0,
	   "%s: %zu knapsack and %zu pt_blocks cases", path, json_array_size(knapsack),
	   json_array_size(pt_blocks));
	json_array_foreach(knapsack, ci, c) {
		json_t *jl = json_object_get(c, "lengths"), *jb = json_object_get(c, "bins");
		size_t n = json_array_size(jl);
		int32_t cap = (int32_t)json_integer_value(json_object_get(c, "capacity"));
		int32_t *len = malloc(n * sizeof *len);
		size_t *items = malloc(n * sizeof *items), *off = malloc((n + 1) * sizeof *off);
		for (size_t i = 0; i < n; i++) len[i] = (int32_t)json_integer_value(json_array_get(jl, i));
		size_t nb = ft_greedy_knapsack(len, n, cap, items, off);
		int same = nb == json_array_size(jb);
		for (size_t b = 0; same && b < nb; b++) {
			json_t *bin = json_array_get(jb, b);
			same = off[b + 1] - off[b] == json_array_size(bin);
			for (size_t j = 0; same && j < json_array_size(bin); j++)
				same = (json_int_t)items[off[b] + j] == json_integer_value(json_array_get(bin, j));
		}
		ok(same, "greedy_knapsack = LLaMA-Factory's (capacity %d, %zu items, %zu bins)", cap, n, nb);
		free(len); free(items); free(off);
	}
	json_array_foreach(pt_blocks, ci, c) {
		int block = (int)json_integer_value(json_object_get(c, "block"));
		json_t *texts = json_object_get(c, "texts"), *want = json_object_get(c, "blocks");
		ft_examples e;
		ft_examples_init(&e, 1);
		size_t ti;
		json_t *t;
		json_array_foreach(texts, ti, t) {
			size_t nt = json_array_size(t);
			int32_t *ids = malloc((nt ? nt : 1) * sizeof *ids);
			for (size_t j = 0; j < nt; j++) ids[j] = (int32_t)json_integer_value(json_array_get(t, j));
			ft_examples_add_seq(&e, ids, NULL, nt);
			free(ids);
		}
		ft_rows r;
		ft_rows_stats st;
		ft_rows_opts ro = { FT_STAGE_PT, FT_LAYOUT_PACKED, block, 1000 };
		ft_rows_build(&e, &ro, &r, &st);
		int64_t *u = malloc((r.n_rows + 1) * sizeof *u);
		for (size_t i = 0; i < r.n_rows; i++) u[i] = (int64_t)i;
		ft_batch_opts bo = { FT_STAGE_PT, FT_LAYOUT_PACKED, 1, 8, block, -5, -1, 0 };
		ft_batch b = { 0 };
		int same = r.n_rows == json_array_size(want);
		for (size_t i = 0; same && i < r.n_rows; i++) {
			ft_batch_fill(&e, &r, u + i, 1, &bo, &b);
			json_t *w = json_array_get(want, i);
			same = b.T == block && b.position_ids == NULL && b.segment_ids == NULL;
			for (int j = 0; same && j < block; j++)
				same = b.input_ids[j] == json_integer_value(json_array_get(w, (size_t)j)) &&
				       b.labels[j] == b.input_ids[j];
		}
		ok(same, "pt blocks of %d = LLaMA-Factory's (%zu blocks, %lld tokens dropped)", block,
		   r.n_rows, (long long)st.dropped_tokens);
		ft_batch_free(&b);
		free(u);
		ft_rows_free(&r);
		ft_examples_free(&e);
	}
	json_decref(root);
}

static void test_pt_details(void)
{
	/* pad-id tokens get label -100 (DataCollatorForLanguageModeling) and
	 * add_bos_token replaces each block's first token */
	ft_examples e;
	ft_examples_init(&e, 1);
	int32_t a[] = { 10, 11, 3, 12, 13, 3 };   /* 3 = pad = eos, as Qwen */
	ft_examples_add_seq(&e, a, NULL, 6);
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { FT_STAGE_PT, FT_LAYOUT_PACKED, 3, 1000 };
	ft_rows_build(&e, &ro, &r, &st);
	int64_t u[] = { 0, 1 };
	ft_batch_opts bo = { FT_STAGE_PT, FT_LAYOUT_PACKED, 2, 8, 3, 3, 1, 0 };
	ft_batch b = { 0 };
	ft_batch_fill(&e, &r, u, 2, &bo, &b);
	int32_t want_ids[] = { 1, 11, 3, 1, 13, 3 };
	int32_t want_lab[] = { 1, 11, -100, 1, 13, -100 };
	ok(b.B == 2 && b.T == 3 && !memcmp(b.input_ids, want_ids, sizeof want_ids) &&
	   !memcmp(b.labels, want_lab, sizeof want_lab), "pt: bos replaces block starts, pad ids masked");
	ok(b.n_label_tokens == 4 && b.n_tokens == 6, "pt: label and token counts");
	ft_batch_free(&b);
	ft_rows_free(&r);
	ft_examples_free(&e);

	/* ids_only (pt keeps no labels) gives the same batch */
	ft_examples_init(&e, 1);
	e.ids_only = 1;
	ft_examples_add_seq(&e, a, NULL, 6);
	ft_rows_build(&e, &ro, &r, &st);
	ft_batch_fill(&e, &r, u, 2, &bo, &b);
	ok(e.labels.n == 0 && !memcmp(b.input_ids, want_ids, sizeof want_ids) &&
	   !memcmp(b.labels, want_lab, sizeof want_lab), "pt ids_only: no labels stored, same batch");
	ft_batch_free(&b);
	ft_rows_free(&r);
	ft_examples_free(&e);
}

static void test_truncation_and_capacity(void)
{
	ft_examples e;
	ft_examples_init(&e, 1);
	int32_t ids[40];
	for (int i = 0; i < 40; i++) ids[i] = i;
	ft_examples_add_seq(&e, ids, NULL, 40);
	ft_examples_add_seq(&e, ids, NULL, 15);
	ft_examples_add_seq(&e, ids, NULL, 16);
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { FT_STAGE_SFT, FT_LAYOUT_PADDED, 16, 1000 };
	ft_rows_build(&e, &ro, &r, &st);
	ok(st.truncated == 1 && st.truncated_tokens == 24, "padded: a row over cutoff_len is truncated and counted");
	ft_rows_free(&r);
	ro.layout = FT_LAYOUT_NEAT;
	ft_rows_build(&e, &ro, &r, &st);
	ok(st.capacity == 15 && st.truncated == 2 && st.truncated_tokens == 25 + 1,
	   "packed: capacity is cutoff_len - 1 as LLaMA-Factory (%lld truncated)", (long long)st.truncated);
	ok(r.n_rows == 3, "packed: three full rows");
	ft_rows_free(&r);
	ft_examples_free(&e);
	ok(ft_rows_build(&e, &(ft_rows_opts){ FT_STAGE_SFT, FT_LAYOUT_PADDED, 1, 1000 }, &r, &st) == -1,
	   "cutoff_len 1 is refused");
}

static void test_val_count(void)
{
	ok(ft_val_count(0.1, 95) == 10, "val_size 0.1 of 95 -> 10 (ceil, as train_test_split)");
	ok(ft_val_count(7, 95) == 7, "val_size 7 -> 7");
	ok(ft_val_count(0, 95) == 0, "val_size 0 -> none");
}

/* ppo rows carry their example's extra columns in the units' order ({}
 * for an example without), the same object (shared, not copied); packed
 * rows, which mix examples, carry none. */
static void test_extra_columns(void)
{
	ft_examples e;
	ft_examples_init(&e, 1);
	int32_t a[] = { 10, 11, 12 };
	for (int i = 0; i < 3; i++) ft_examples_add_seq(&e, a, NULL, (size_t)(i + 1));
	json_t *x0 = json_pack("{s:i}", "answer", 0), *x2 = json_pack("{s:[i,n]}", "tags", 2);
	ft_examples_set_extra(&e, 0, json_incref(x0));
	ft_examples_set_extra(&e, 2, json_incref(x2));
	ft_rows r;
	ft_rows_stats st;
	ft_rows_opts ro = { FT_STAGE_PPO, FT_LAYOUT_PADDED, 16, 1000 };
	ft_rows_build(&e, &ro, &r, &st);
	int64_t u[] = { 2, 0, 1 };
	ft_batch_opts bo = { FT_STAGE_PPO, FT_LAYOUT_PADDED, 3, 1, 0, 0, -1, 0 };
	ft_batch b = { 0 };
	ft_batch_fill(&e, &r, u, 3, &bo, &b);
	json_t *c = b.extra_columns;
	ok(json_array_size(c) == 3 && json_array_get(c, 0) == x2 && json_array_get(c, 1) == x0 &&
	   json_is_object(json_array_get(c, 2)) && json_object_size(json_array_get(c, 2)) == 0,
	   "rows in unit order: example 2's, example 0's, {} for example 1");
	ok(b.input_ids[0] == 10 && b.input_ids[2] == 12 && b.input_ids[3] == 10 && b.input_ids[4] == 0,
	   "ids in the same order (the pairing ft-train relies on)");
	int64_t u1[] = { 1 };
	ft_batch_fill(&e, &r, u1, 1, &bo, &b);
	ok(json_array_size(b.extra_columns) == 1 && json_object_size(json_array_get(b.extra_columns, 0)) == 0,
	   "a reused batch gets the new rows' extras");
	ft_rows_free(&r);
	ro.layout = bo.layout = FT_LAYOUT_PACKED;
	bo.seq_len = 16;
	ft_rows_build(&e, &ro, &r, &st);
	int64_t u0[] = { 0 };
	ft_batch_fill(&e, &r, u0, 1, &bo, &b);
	ok(b.extra_columns == NULL, "packed rows: none");
	ft_batch_free(&b);
	ft_rows_free(&r);
	ft_examples_free(&e);
	ok(x0->refcount == 1 && x2->refcount == 1, "references released");
	json_decref(x0);
	json_decref(x2);

	ft_examples_init(&e, 1);
	ft_examples_add_seq(&e, a, NULL, 3);
	ro.layout = bo.layout = FT_LAYOUT_PADDED;
	ft_rows_build(&e, &ro, &r, &st);
	ft_batch_fill(&e, &r, u0, 1, &bo, &b);
	ok(b.extra_columns == NULL, "no example with extras: no extra_columns (the batch format 1 record)");
	ft_batch_free(&b);
	ft_rows_free(&r);
	ft_examples_free(&e);
}

int main(void)
{
	cfg cases[] = {
		{ FT_LAYOUT_PADDED, FT_STAGE_SFT, 1, 4, 64, 1000, 0.1, 1 },
		{ FT_LAYOUT_PACKED, FT_STAGE_SFT, 1, 2, 128, 1000, 0.0, 2 },
		{ FT_LAYOUT_NEAT, FT_STAGE_SFT, 1, 2, 128, 50, 5, 3 },
		{ FT_LAYOUT_PACKED, FT_STAGE_PT, 1, 3, 100, 64, 0.2, 4 },
		{ FT_LAYOUT_NEAT, FT_STAGE_PT, 1, 2, 100, 1000, 0, 4 },
		{ FT_LAYOUT_PADDED, FT_STAGE_DPO, 2, 3, 64, 1000, 0.1, 5 },
		{ FT_LAYOUT_NEAT, FT_STAGE_RM, 2, 2, 128, 1000, 0.1, 6 },
	};
	const char *names[] = { "padded sft", "packed sft", "neat sft", "pt blocks", "neat pt",
				"padded dpo", "neat rm" };
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(names[i], &cases[i]);
	test_seeds();
	test_group_by_length();
	test_llamafactory_fixture();
	test_pt_details();
	test_extra_columns();
	test_truncation_and_capacity();
	test_val_count();
	return tap_done();
}
