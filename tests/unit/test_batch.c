/* test_batch.c - batch records and manifests (lib/format/batch_io.c) through the
 * stream module: write, read back, and refuse malformed records. */
#include "tap.h"
#include "format/batch_io.h"
#include "util/error.h"
#include "util/json.h"
#include "util/atomicfile.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/test_batch.XXXXXX";

static json_t *header(const char *kind, int pairwise)
{
	json_t *meta = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:b, s:i, s:{s:i, s:i, s:i, s:i, s:i}}",
				 "stage", "sft", "layout", "neat_packed", "split", "train", "tokenizer", "tok-x",
				 "seq_len", 4, "batch_size", 2, "rows_per_batch", pairwise ? 4 : 2,
				 "pairwise", pairwise, "seed", 7,
				 "counts", "batches", 2, "examples", 3, "tokens", 11, "label_tokens", 5,
				 "pad_tokens", 5);
	return json_pack("{s:s, s:s, s:o}", "kind", kind, "producer", "test_batch", "meta", meta);
}

static ft_writer *open_w(const char *path, const char *kind, int pairwise)
{
	ft_writer_opts o = { .path = path };
	json_t *h = header(kind, pairwise);
	ft_writer *w = ft_writer_open(&o, h);
	json_decref(h);
	return w;
}

static void test_roundtrip(void)
{
	char *path = ft_xasprintf("%s/b.ftb.zst", dir);
	ft_writer *w = open_w(path, "batches", 0);
	ok(w != NULL, "writer opens: %s", w ? "" : ft_errmsg());
	if (!w) return;
	int32_t ids[8] = { 5, 6, 7, 0, 8, 9, 0, 0 }, lab[8] = { -100, 6, 7, -100, 8, 9, -100, -100 };
	int32_t pos[8] = { 0, 1, 0, 0, 0, 1, 0, 0 }, seg[8] = { 1, 1, 2, 0, 1, 1, 0, 0 };
	ft_batch b = { .B = 2, .T = 4, .input_ids = ids, .labels = lab, .position_ids = pos,
		       .segment_ids = seg, .index = 0, .n_tokens = 5, .n_examples = 2 };
	ok(ft_batch_write(w, &b) == 0, "write batch 0");
	int32_t ids1[4] = { 1, 2, 3, 4 }, lab1[4] = { 1, 2, 3, 4 };
	ft_batch c = { .B = 1, .T = 4, .input_ids = ids1, .labels = lab1, .index = 1 };
	ok(ft_batch_write(w, &c) == 0, "write batch 1 (no position/segment ids)");
	ok(ft_writer_close(w) == 0, "close");

	ft_reader *r = ft_reader_open(path);
	ft_batch got = { 0 };
	ok(r && ft_batch_read(r, &got) == 1, "read batch 0");
	ok(got.B == 2 && got.T == 4 && !memcmp(got.input_ids, ids, sizeof ids) &&
	   !memcmp(got.labels, lab, sizeof lab) && got.position_ids && !memcmp(got.position_ids, pos, sizeof pos) &&
	   got.segment_ids && !memcmp(got.segment_ids, seg, sizeof seg), "batch 0 equal");
	ok(got.n_label_tokens == 4 && got.n_tokens == 5 && got.n_examples == 2 && !got.pairwise,
	   "batch 0 counts (label tokens recounted: %lld)", (long long)got.n_label_tokens);
	ok(ft_batch_read(r, &got) == 1 && got.B == 1 && got.index == 1 && !got.position_ids &&
	   !got.segment_ids && !memcmp(got.input_ids, ids1, sizeof ids1), "batch 1 equal, optional arrays gone");
	ok(ft_batch_read(r, &got) == 0, "EOF");
	ft_batch_free(&got);
	ft_reader_close(r);

	ft_manifest m;
	ok(ft_manifest_load(path, &m) == 0, "manifest from the stream header");
	ok(m.n_batches == 2 && m.n_examples == 3 && m.n_tokens == 11 && m.n_label_tokens == 5 &&
	   m.batch_size == 2 && m.seq_len == 4 && !strcmp(m.layout, "neat_packed") && !strcmp(m.stage, "sft") &&
	   m.seed == 7 && !strcmp(m.tokenizer, "tok-x") && !strcmp(m.split, "train"), "manifest fields");
	free(path);
}

static void test_manifest_json(void)
{
	char *sub = ft_xasprintf("%s/out", dir), *file = ft_xasprintf("%s/manifest.json", sub);
	int rc = ft_manifest_load(sub, &(ft_manifest){ 0 });
	ok(rc == -1 && strstr(ft_errmsg(), sub), "missing directory: error names it");
	ft_mkdirs(sub);
	ft_manifest m;
	rc = ft_manifest_load(sub, &m);
	ok(rc == -1 && strstr(ft_errmsg(), "manifest.json"), "directory without manifest.json: %s", ft_errmsg());
	json_t *h = header("batches", 1), *meta = json_object_get(h, "meta");
	ft_json_save_file(meta, file, 2);
	ok(ft_manifest_load(sub, &m) == 0 && m.pairwise && m.rows_per_batch == 4 && m.n_batches == 2,
	   "manifest.json in a directory");
	json_object_del(meta, "counts");
	ft_json_save_file(meta, file, 2);
	rc = ft_manifest_load(file, &m);
	ok(rc == -1 && strstr(ft_errmsg(), "manifest.json: no batch counts"), "no counts: %s", ft_errmsg());
	json_decref(h);
	free(sub); free(file);
}

static void test_bad_records(void)
{
	char *path = ft_xasprintf("%s/bad.ftb.zst", dir);
	ft_writer *w = open_w(path, "batches", 1);
	ft_w_begin(w, 4);
	ft_w_int(w, "B", 2);
	ft_w_int(w, "T", 3);
	int32_t v[5] = { 1, 2, 3, 4, 5 };
	ft_w_i32s(w, "input_ids", v, 5);
	ft_w_i32s(w, "labels", v, 5);
	ft_w_end(w);
	ft_w_begin(w, 3);
	ft_w_int(w, "B", 1);
	ft_w_int(w, "T", 2);
	ft_w_i32s(w, "input_ids", v, 2);
	ft_w_end(w);
	ft_w_begin(w, 2);
	ft_w_int(w, "B", -1);
	ft_w_int(w, "T", 2);
	ft_w_end(w);
	ft_writer_close(w);
	ft_reader *r = ft_reader_open(path);
	ft_batch b = { 0 };
	int rc = ft_batch_read(r, &b);
	ok(rc == -1 && strstr(ft_errmsg(), "batch record 0: 'input_ids' has 5 values, expected 6"),
	   "B*T mismatch: %s", ft_errmsg());
	rc = ft_batch_read(r, &b);
	ok(rc == -1 && strstr(ft_errmsg(), "batch record 1: missing field 'labels'"), "missing labels: %s", ft_errmsg());
	rc = ft_batch_read(r, &b);
	ok(rc == -1 && strstr(ft_errmsg(), "bad shape"), "bad shape: %s", ft_errmsg());
	ft_batch_free(&b);
	ft_reader_close(r);

	ft_writer *t = open_w(path, "tokens", 0);
	ft_writer_close(t);
	r = ft_reader_open(path);
	rc = ft_batch_read(r, &b);
	ok(rc == -1 && strstr(ft_errmsg(), "not a batch stream"), "kind tokens: %s", ft_errmsg());
	ok(ft_manifest_load(path, &(ft_manifest){ 0 }) == -1, "no manifest from a token stream");
	ft_reader_close(r);
	free(path);
}

/* lengths [B] (padded layouts): written, read back, absent again on the
 * next record; out of [0, T], the wrong count, or a label past a row's
 * length refused naming the record and row. */
static void test_lengths(void)
{
	char *path = ft_xasprintf("%s/len.ftb.zst", dir);
	ft_writer *w = open_w(path, "batches", 0);
	int32_t ids[8] = { 5, 6, 7, 0, 8, 0, 0, 0 }, lab[8] = { -100, 6, 7, -100, 8, -100, -100, -100 };
	int32_t len[2] = { 3, 1 }, bad_hi[2] = { 3, 5 }, bad_lab[2] = { 2, 1 }, neg[2] = { -1, 1 };
	ft_batch b = { .B = 2, .T = 4, .input_ids = ids, .labels = lab, .lengths = len };
	ok(w && ft_batch_write(w, &b) == 0, "write a batch with lengths");
	b.lengths = NULL;
	ft_batch_write(w, &b);
	int32_t *bads[3] = { bad_hi, bad_lab, neg };
	for (int i = 0; i < 3; i++) {
		b.lengths = bads[i];
		ft_batch_write(w, &b);
	}
	ft_w_begin(w, 5);
	ft_w_int(w, "B", 2);
	ft_w_int(w, "T", 4);
	ft_w_i32s(w, "input_ids", ids, 8);
	ft_w_i32s(w, "labels", lab, 8);
	ft_w_i32s(w, "lengths", len, 1);
	ft_w_end(w);
	ft_writer_close(w);
	ft_reader *r = ft_reader_open(path);
	ft_batch got = { 0 };
	ok(r && ft_batch_read(r, &got) == 1 && got.lengths && got.lengths[0] == 3 &&
	   got.lengths[1] == 1, "lengths read back");
	ok(ft_batch_read(r, &got) == 1 && !got.lengths, "a record without lengths: none");
	static const char *want[4] = { "record 2: row 1: length 5 outside [0, 4]",
				       "record 3: row 0: a label at position 2, past its length 2",
				       "record 4: row 0: length -1 outside [0, 4]",
				       "record 5: 'lengths' has 1 values, expected 2" };
	for (int i = 0; i < 4; i++) {
		int rc = ft_batch_read(r, &got);
		ok(rc == -1 && strstr(ft_errmsg(), want[i]), "refused: %s", ft_errmsg());
	}
	ft_batch_free(&got);
	ft_reader_close(r);
	free(path);
}

/* ft_batch_copy: every array copied into memory of its own. */
static void test_copy(void)
{
	int32_t ids[6] = { 1, 2, 3, 4, 5, 6 }, lab[6] = { -100, 2, 3, -100, 5, 6 };
	int32_t pos[6] = { 0, 1, 2, 0, 1, 2 }, len[2] = { 3, 2 }, tags[2] = { 1, 0 };
	ft_batch src = { .B = 2, .T = 3, .input_ids = ids, .labels = lab, .position_ids = pos,
			 .lengths = len, .kto_tags = tags, .n_label_tokens = 4, .index = 7 };
	ft_batch dst = { 0 };
	ft_batch_copy(&dst, &src);
	ok(dst.input_ids != ids && !memcmp(dst.input_ids, ids, sizeof ids) && !memcmp(dst.labels, lab, sizeof lab)
	   && !memcmp(dst.position_ids, pos, sizeof pos) && !dst.segment_ids,
	   "copy: ids, labels, positions in memory of their own; absent arrays stay NULL");
	ok(dst.lengths != len && !memcmp(dst.lengths, len, sizeof len) && dst.kto_tags != tags &&
	   !memcmp(dst.kto_tags, tags, sizeof tags) && dst.index == 7 && dst.n_label_tokens == 4,
	   "copy: lengths, kto tags and the counts");
	ft_batch_free(&dst);
}

int main(void)
{
	if (!mkdtemp(dir)) { ok(0, "mkdtemp"); return tap_done(); }
	test_roundtrip();
	test_lengths();
	test_copy();
	test_manifest_json();
	test_bad_records();
	ft_remove_tree(dir);
	return tap_done();
}
