/* batch_io.c - batch records and manifests; see batch_io.h and docs/FORMAT.md §3 */
#include "format/batch_io.h"
#include "util/error.h"
#include "util/json.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_ROWS   (1 << 20)
#define MAX_CELLS  ((int64_t)1 << 31)

int ft_batch_write(ft_writer *w, const ft_batch *b)
{
	size_t n = (size_t)b->B * (size_t)b->T;
	uint32_t nf = 8 + (b->position_ids != NULL) + (b->segment_ids != NULL) + (b->kto_tags != NULL) +
		      (b->lengths != NULL);
	ft_w_begin(w, nf);
	ft_w_int(w, "index", b->index);
	ft_w_int(w, "B", b->B);
	ft_w_int(w, "T", b->T);
	ft_w_i32s(w, "input_ids", b->input_ids, n);
	ft_w_i32s(w, "labels", b->labels, n);
	if (b->position_ids) ft_w_i32s(w, "position_ids", b->position_ids, n);
	if (b->segment_ids) ft_w_i32s(w, "segment_ids", b->segment_ids, n);
	if (b->kto_tags) ft_w_i32s(w, "kto_tags", b->kto_tags, (size_t)b->B);
	if (b->lengths) ft_w_i32s(w, "lengths", b->lengths, (size_t)b->B);
	ft_w_int(w, "n_label_tokens", b->n_label_tokens);
	ft_w_int(w, "n_tokens", b->n_tokens);
	ft_w_int(w, "n_examples", b->n_examples);
	return ft_w_end(w);
}

static int fail_rec(ft_reader *r, const char *what)
{
	return ft_fail("%s: batch record %llu: %s", ft_reader_path(r),
		       (unsigned long long)ft_reader_index(r), what);
}

static int64_t opt_int(const ft_rec *rec, const char *key, int64_t def)
{
	int64_t v;
	if (!ft_rec_has(rec, key) || ft_rec_int(rec, key, &v) < 0) return def;
	return v;
}

/* Read an int32 array field of exactly n elements into *dst (grown to cap
 * elements).  Absent and optional: *dst is freed and set to NULL. */
static int read_array(ft_reader *r, const ft_rec *rec, const char *key, size_t n, size_t cap,
		      int32_t **dst, int required, ft_i32vec *tmp)
{
	if (!ft_rec_has(rec, key)) {
		if (required)
			return ft_fail("%s: batch record %llu: missing field '%s'", ft_reader_path(r),
				       (unsigned long long)ft_reader_index(r), key);
		free(*dst);
		*dst = NULL;
		return 0;
	}
	if (ft_rec_i32s(rec, key, tmp) < 0) return ft_fail_ctx("%s: batch record %llu: ", ft_reader_path(r),
							      (unsigned long long)ft_reader_index(r));
	if (tmp->n != n)
		return ft_fail("%s: batch record %llu: '%s' has %zu values, expected %zu",
			       ft_reader_path(r), (unsigned long long)ft_reader_index(r), key, tmp->n, n);
	*dst = ft_xrealloc(*dst, (cap ? cap : 1) * sizeof **dst);
	memcpy(*dst, tmp->v, n * sizeof **dst);
	return 0;
}

/* lengths[r] in [0, T], and no label on a position past it (padding is
 * never trained on; a label there means the lengths are wrong). */
static int check_lengths(ft_reader *r, const ft_batch *b)
{
	for (int i = 0; i < b->B; i++) {
		int32_t len = b->lengths[i];
		if (len < 0 || len > b->T)
			return ft_fail("%s: batch record %llu: row %d: length %d outside [0, %d]",
				       ft_reader_path(r), (unsigned long long)ft_reader_index(r), i,
				       (int)len, b->T);
		for (int t = len; t < b->T; t++)
			if (b->labels[(size_t)i * b->T + t] != FT_IGNORE_INDEX)
				return ft_fail("%s: batch record %llu: row %d: a label at position %d, "
					       "past its length %d", ft_reader_path(r),
					       (unsigned long long)ft_reader_index(r), i, t, (int)len);
	}
	return 0;
}

int ft_batch_read(ft_reader *r, ft_batch *b)
{
	const char *kind = ft_reader_kind(r);
	if (!kind || strcmp(kind, "batches") != 0)
		return ft_fail("%s: not a batch stream (kind '%s'; make one with ft-pack)",
			       ft_reader_path(r), kind ? kind : "?");
	ft_rec *rec;
	int rc = ft_reader_next(r, &rec);
	if (rc <= 0) return rc;
	int64_t B, T;
	if (ft_rec_int(rec, "B", &B) < 0 || ft_rec_int(rec, "T", &T) < 0)
		return ft_fail_ctx("%s: batch record %llu: ", ft_reader_path(r), (unsigned long long)ft_reader_index(r));
	if (B < 1 || B > MAX_ROWS || T < 1 || B * T > MAX_CELLS)
		return ft_fail("%s: batch record %llu: bad shape B=%lld T=%lld", ft_reader_path(r),
			       (unsigned long long)ft_reader_index(r), (long long)B, (long long)T);
	size_t n = (size_t)(B * T);
	size_t cap = n > b->cap_ ? n : b->cap_;
	ft_i32vec tmp = { 0 };
	rc = read_array(r, rec, "input_ids", n, cap, &b->input_ids, 1, &tmp);
	if (!rc) rc = read_array(r, rec, "labels", n, cap, &b->labels, 1, &tmp);
	if (!rc) rc = read_array(r, rec, "position_ids", n, cap, &b->position_ids, 0, &tmp);
	if (!rc) rc = read_array(r, rec, "segment_ids", n, cap, &b->segment_ids, 0, &tmp);
	if (!rc) rc = read_array(r, rec, "kto_tags", (size_t)B, (size_t)B, &b->kto_tags, 0, &tmp);
	if (!rc) rc = read_array(r, rec, "lengths", (size_t)B, (size_t)B, &b->lengths, 0, &tmp);
	ft_i32vec_free(&tmp);
	if (rc) return -1;
	b->cap_ = cap;
	b->B = (int)B;
	b->T = (int)T;
	b->index = opt_int(rec, "index", (int64_t)ft_reader_index(r));
	b->n_tokens = opt_int(rec, "n_tokens", 0);
	b->n_examples = opt_int(rec, "n_examples", 0);
	int64_t nl = 0;
	for (size_t i = 0; i < n; i++) nl += b->labels[i] != FT_IGNORE_INDEX;
	b->n_label_tokens = nl;   /* recounted: the loss normaliser must be right */
	if (b->lengths && check_lengths(r, b) < 0)
		return -1;
	const json_t *meta = json_object_get(ft_reader_header(r), "meta");
	b->pairwise = ft_json_bool(meta, "pairwise", 0);
	if (b->pairwise && B % 2)
		return fail_rec(r, "pairwise batch with an odd number of rows");
	return 1;
}

/* ---- manifest ------------------------------------------------------ */

static void copy_str(char *dst, size_t cap, const char *s)
{
	snprintf(dst, cap, "%s", s ? s : "");
}

int ft_manifest_from_json(const json_t *obj, ft_manifest *m)
{
	memset(m, 0, sizeof *m);
	const json_t *c = json_object_get(obj, "counts");
	if (!json_is_object(obj) || !json_is_object(c))
		return ft_fail("no batch counts (not written by ft-pack?)");
	long long v;
	if (ft_json_req_int(c, "batches", &v) < 0) return -1;
	m->n_batches = v;
	if (ft_json_req_int(c, "examples", &v) < 0) return -1;
	m->n_examples = v;
	m->n_tokens = ft_json_int(c, "tokens", 0);
	m->n_label_tokens = ft_json_int(c, "label_tokens", 0);
	m->n_pad_tokens = ft_json_int(c, "pad_tokens", 0);
	if (ft_json_req_int(obj, "batch_size", &v) < 0) return -1;
	m->batch_size = (int)v;
	if (ft_json_req_int(obj, "seq_len", &v) < 0) return -1;
	m->seq_len = (int)v;
	m->rows_per_batch = (int)ft_json_int(obj, "rows_per_batch", m->batch_size);
	m->pairwise = ft_json_bool(obj, "pairwise", 0);
	m->kto_kl = ft_json_bool(obj, "kto_kl", 0);
	m->cutoff_len = (int)ft_json_int(obj, "cutoff_len", m->seq_len);
	m->pad_id = (int32_t)ft_json_int(obj, "pad_id", 0);
	m->seed = (uint64_t)ft_json_int(obj, "seed", 0);
	long long ep = ft_json_int(obj, "epochs", 1);
	copy_str(m->layout, sizeof m->layout, ft_json_str(obj, "layout", ""));
	copy_str(m->stage, sizeof m->stage, ft_json_str(obj, "stage", ""));
	copy_str(m->split, sizeof m->split, ft_json_str(obj, "split", "train"));
	copy_str(m->tokenizer, sizeof m->tokenizer, ft_json_str(obj, "tokenizer", ""));
	if (m->n_batches < 0 || m->batch_size < 1 || m->seq_len < 0)
		return ft_fail("bad counts (batches %lld, batch_size %d, seq_len %d)",
			       (long long)m->n_batches, m->batch_size, m->seq_len);
	if (ep < 1 || ep > 100000)
		return ft_fail("bad epochs %lld (1 to 100000)", ep);
	m->epochs = (int)ep;
	return 0;
}

static int load_json_manifest(const char *file, ft_manifest *m)
{
	json_t *j = ft_json_load_file(file);
	if (!j) return -1;
	int rc = ft_manifest_from_json(j, m);
	json_decref(j);
	return rc < 0 ? ft_fail_ctx("%s: ", file) : 0;
}

int ft_manifest_load(const char *path, ft_manifest *m)
{
	struct stat st;
	if (path && strcmp(path, "-") != 0) {
		if (stat(path, &st) < 0) return ft_fail("%s:", path);
		if (S_ISDIR(st.st_mode)) {
			char *f = ft_xasprintf("%s/manifest.json", path);
			int rc = stat(f, &st) == 0 ? load_json_manifest(f, m)
				: ft_fail("%s: no manifest.json in this directory (not an ft-pack output?)", path);
			free(f);
			return rc;
		}
		size_t n = strlen(path);
		if (n > 5 && strcmp(path + n - 5, ".json") == 0) return load_json_manifest(path, m);
	}
	ft_reader *r = ft_reader_open(path);
	if (!r) return -1;
	const json_t *h = ft_reader_header(r);
	const char *kind = ft_reader_kind(r);
	int rc;
	if (!kind || strcmp(kind, "batches") != 0)
		rc = ft_fail("%s: not a batch stream (kind '%s')", path, kind ? kind : "?");
	else if ((rc = ft_manifest_from_json(json_object_get(h, "meta"), m)) < 0)
		ft_fail_ctx("%s: header: ", path);
	ft_reader_close(r);
	return rc;
}
