/* output.c - write a split as a batch stream or shards + manifest.json */
#include "ft-pack.h"
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "util/json.h"
#include "format/batch_io.h"
#include "format/stream.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

json_t *split_meta(const pack_opts *o, const input_info *in, const split_out *s)
{
	const ft_batch_opts *bo = s->bo;
	const ft_pack_totals *t = s->tot;
	json_t *m = json_object();
	/* 2: ppo rows may carry extra_columns (docs/FORMAT.md 3.3) */
	json_object_set_new(m, "record_version", json_integer(FT_BATCH_FORMAT_VERSION));
	json_object_set_new(m, "stage", json_string(ft_stage_name(in->stage)));
	json_object_set_new(m, "layout", json_string(ft_layout_name(bo->layout)));
	json_object_set_new(m, "split", json_string(s->split));
	json_object_set_new(m, "tokenizer", json_string(in->tokenizer));
	const char *carry[] = { "template", "vocab_size" };
	for (size_t i = 0; i < sizeof carry / sizeof *carry; i++) {
		json_t *v = json_object_get(in->meta, carry[i]);
		if (v) json_object_set(m, carry[i], v);
	}
	json_object_set_new(m, "pad_id", json_integer(in->pad_id));
	json_object_set_new(m, "eos_id", in->eos_id >= 0 ? json_integer(in->eos_id) : json_null());
	json_object_set_new(m, "seq_len", json_integer(t->seq_len_max));
	json_object_set_new(m, "batch_size", json_integer(bo->batch_size));
	json_object_set_new(m, "rows_per_batch", json_integer(bo->batch_size * s->rows->nseq));
	json_object_set_new(m, "pairwise", json_boolean(ft_stage_pairwise(in->stage)));
	/* kto: row 2i is the example, row 2i+1 its KL sequence */
	json_object_set_new(m, "kto_kl", json_boolean(in->stage == FT_STAGE_KTO));
	json_object_set_new(m, "cutoff_len", json_integer(o->cutoff_len));
	json_object_set_new(m, "pad_to_multiple_of", json_integer(bo->pad_to_multiple_of));
	json_object_set_new(m, "seed", json_integer((json_int_t)o->seed));
	if (o->data_seed >= 0)
		json_object_set_new(m, "data_seed", json_integer((json_int_t)o->data_seed));
	json_object_set_new(m, "shuffled", json_boolean(o->shuffle && strcmp(s->split, "train") == 0));
	json_object_set_new(m, "group_by_length", json_boolean(o->group_by_length));
	json_object_set_new(m, "drop_last", json_boolean(bo->drop_last));
	/* the records are `epochs` runs of counts.batches batches */
	json_object_set_new(m, "epochs", json_integer(s->epochs));
	json_t *c = json_object();
	json_object_set_new(c, "batches", json_integer(t->batches));
	json_object_set_new(c, "examples", json_integer(t->units));
	json_object_set_new(c, "rows", json_integer(t->rows));
	json_object_set_new(c, "source_examples", json_integer(t->source_examples));
	json_object_set_new(c, "tokens", json_integer(t->tokens));
	json_object_set_new(c, "label_tokens", json_integer(t->label_tokens));
	json_object_set_new(c, "pad_tokens", json_integer(t->pad_tokens));
	json_object_set_new(m, "counts", c);
	return m;
}

static void write_manifest(const char *dir, json_t *meta, const ft_writer *w, const split_out *s,
			   const char *val_rel)
{
	json_t *man = json_object();
	json_object_set_new(man, "format", json_string("ft-pack-manifest"));
	json_object_set_new(man, "version", json_integer(FT_BATCH_FORMAT_VERSION));
	json_object_set_new(man, "producer", json_string("ft-pack"));
	json_object_update(man, meta);
	json_t *shards = json_array();
	uint64_t total = 0;
	for (size_t i = 0; i < ft_writer_nshards(w); i++) {
		const char *path = ft_writer_shard_path(w, i), *slash = strrchr(path, '/');
		struct stat st;
		if (stat(path, &st) < 0) die("%s:", path);
		json_t *e = json_object();
		json_object_set_new(e, "file", json_string(slash ? slash + 1 : path));
		json_object_set_new(e, "sha256", json_string(ft_writer_shard_sha256(w, i)));
		json_object_set_new(e, "records", json_integer((json_int_t)ft_writer_shard_records(w, i)));
		json_object_set_new(e, "bytes", json_integer((json_int_t)st.st_size));
		json_array_append_new(shards, e);
		total += ft_writer_shard_records(w, i);
	}
	if (total != (uint64_t)s->tot->batches * (uint64_t)s->epochs)
		die("%s: the shards hold %llu batches, expected %lld", dir, (unsigned long long)total,
		    (long long)s->tot->batches * s->epochs);
	json_object_set_new(man, "shards", shards);
	if (val_rel) json_object_set_new(man, "validation", json_string(val_rel));
	char *path = ft_xasprintf("%s/manifest.json", dir);
	if (ft_json_save_file(man, path, 2) < 0) die_lib();
	free(path);
	json_decref(man);
}

void write_split(const pack_opts *o, const input_info *in, const split_out *s,
		 const char *path, const char *dir, const char *val_rel)
{
	json_t *meta = split_meta(o, in, s);
	json_t *header = json_object();
	json_object_set_new(header, "kind", json_string("batches"));
	json_object_set_new(header, "producer", json_string("ft-pack"));
	json_object_set(header, "meta", meta);
	ft_writer_opts wo = {
		.path = dir ? NULL : path, .dir = dir, .suffix = "ftb.zst",
		.shard_bytes = dir ? o->shard_bytes : 0, .shard_records = dir ? o->shard_batches : 0,
		.replace = 1,   /* main() refused or cleared a non-empty directory */
	};
	ft_writer *w = ft_writer_open(&wo, header);
	json_decref(header);
	if (!w) die_lib();
	ft_batch b = { 0 };
	size_t bs = (size_t)s->bo->batch_size;
	int64_t nb = s->tot->batches, all = nb * s->epochs;
	int64_t *order = s->epochs > 1 ? ft_xmalloc((s->n_units ? s->n_units : 1) * sizeof *order) : NULL;
	for (int ep = 0; ep < s->epochs; ep++) {
		const int64_t *units = s->units;
		if (ep > 0) {
			ft_epoch_order(order_seed(o), o->shuffle, o->group_by_length, s->bo->batch_size, s->rows,
				       s->base, s->n_units, ep, order);
			units = order;
		}
		for (int64_t i = 0; i < nb; i++) {
			size_t j0 = (size_t)i * bs, m = s->n_units - j0 < bs ? s->n_units - j0 : bs;
			ft_batch_fill(s->e, s->rows, units + j0, m, s->bo, &b);
			b.index = ep * nb + i;
			if (ft_batch_write(w, &b) < 0) {
				ft_writer_abort(w);
				die_lib();
			}
			ft_progress("%s: batch %lld of %lld", s->split, (long long)b.index + 1, (long long)all);
		}
	}
	ft_progress_done();
	free(order);
	ft_batch_free(&b);
	if (ft_writer_finish(w) < 0) {
		ft_writer_close(w);
		die_lib();
	}
	if (dir) write_manifest(dir, meta, w, s, val_rel);
	ft_writer_close(w);
	json_decref(meta);
}
