/* input.c - read token streams (docs/FORMAT.md §2/§3) into ft_examples */
#include "ft-pack.h"
#include "cli/cli.h"
#include "util/json.h"
#include "data/preprocess.h"
#include "format/batch_io.h"
#include "format/stream.h"

#include <stdlib.h>
#include <string.h>

static const char *in_name;       /* current input, for messages */
static uint64_t in_rec;

_Noreturn static void die_rec(const char *fmt, const char *key)
{
	die("%s: record %llu: %s%s", ft_display_name(in_name), (unsigned long long)in_rec, fmt, key);
}

static void check_ids(const ft_i32vec *v, const char *key, int64_t vocab)
{
	for (size_t i = 0; i < v->n; i++)
		if (v->v[i] < 0 || (vocab > 0 && v->v[i] >= vocab))
			die("%s: record %llu: '%s'[%zu] = %d is not a token id%s",
			    ft_display_name(in_name), (unsigned long long)in_rec, key, i, (int)v->v[i],
			    vocab > 0 ? " of this vocabulary" : "");
}

static void check_labels(const ft_i32vec *lab, const ft_i32vec *ids, const char *key)
{
	if (lab->n != ids->n)
		die("%s: record %llu: '%s' has %zu values but the ids have %zu",
		    ft_display_name(in_name), (unsigned long long)in_rec, key, lab->n, ids->n);
	for (size_t i = 0; i < lab->n; i++)
		if (lab->v[i] < 0 && lab->v[i] != FT_IGNORE_INDEX)
			die("%s: record %llu: '%s'[%zu] = %d (labels are token ids or -100)",
			    ft_display_name(in_name), (unsigned long long)in_rec, key, i, (int)lab->v[i]);
}

static void get_ids(const ft_rec *rec, const char *key, ft_i32vec *v, int64_t vocab)
{
	if (!ft_rec_has(rec, key)) die_rec("missing field ", key);
	if (ft_rec_i32s(rec, key, v) < 0)
		die("%s: record %llu: %s", ft_display_name(in_name), (unsigned long long)in_rec, ft_errmsg());
	check_ids(v, key, vocab);
}

static void get_labels(const ft_rec *rec, const char *key, ft_i32vec *lab, const ft_i32vec *ids)
{
	if (!ft_rec_has(rec, key)) die_rec("missing field ", key);
	if (ft_rec_i32s(rec, key, lab) < 0)
		die("%s: record %llu: %s", ft_display_name(in_name), (unsigned long long)in_rec, ft_errmsg());
	check_labels(lab, ids, key);
}

static int get_tag(const ft_rec *rec)
{
	int b;
	int64_t v;
	if (!ft_rec_has(rec, "kto_tag")) die_rec("missing field ", "kto_tag");
	if (ft_rec_bool(rec, "kto_tag", &b) == 0) return b;
	if (ft_rec_int(rec, "kto_tag", &v) == 0) return v != 0;
	die_rec("field is not a boolean: ", "kto_tag");
}

/* ppo: the row's extra dataset columns (token records version 2), kept
 * when there are any. */
static void get_extra(const ft_rec *rec, ft_examples *e)
{
	if (!ft_rec_has(rec, "extra_columns")) return;
	json_t *x = ft_rec_get_json(rec, "extra_columns");
	if (!x || ft_extra_columns_check(x) < 0)
		die("%s: record %llu: 'extra_columns': %s", ft_display_name(in_name), (unsigned long long)in_rec,
		    ft_errmsg());
	if (json_object_size(x) == 0) { json_decref(x); return; }
	ft_examples_set_extra(e, ft_examples_count(e) - 1, x);
}

/* The header must be a token stream agreeing with the first input. */
static void check_header(ft_reader *r, const pack_opts *o, input_info *info, int first)
{
	const char *kind = ft_reader_kind(r);
	const char *name = ft_display_name(in_name);
	if (!kind || strcmp(kind, "tokens") != 0)
		die("%s: not a token stream (kind '%s'); ft-pack reads ft-tokenize's output",
		    name, kind ? kind : "?");
	const json_t *meta = json_object_get(ft_reader_header(r), "meta");
	const char *stage_s = ft_json_str(meta, "stage", NULL);
	if (!stage_s) die("%s: header has no meta.stage", name);
	long long rv = ft_json_int(meta, "record_version", 1);
	if (rv > FT_TOKENS_RECORD_VERSION)
		die("%s: token record version %lld is newer than this program reads (%d)", name, rv,
		    FT_TOKENS_RECORD_VERSION);
	int stage = ft_stage_parse(stage_s);
	if (stage < 0) die("%s: header: %s", name, ft_errmsg());
	const char *tok = ft_json_str(meta, "tokenizer", "");
	if (first) {
		if (o->stage >= 0 && o->stage != stage)
			die("%s: records are for stage '%s' but --stage is '%s'", name, stage_s,
			    ft_stage_name(o->stage));
		if (ft_json_bool(meta, "predict", 0))
			die("%s: these are prediction records (ft-tokenize --predict_with_generate): they go "
			    "to generation, not to ft-pack", name);
		info->stage = stage;
		info->cutoff_len = (int)ft_json_int(meta, "cutoff_len", 0);
		info->tokenizer = ft_xstrdup(tok);
		info->meta = json_deep_copy(meta);
		long long pad = ft_json_int(meta, "pad_id", -1), eos = ft_json_int(meta, "eos_id", -1);
		if (pad < 0) pad = eos;   /* LLaMA-Factory sets pad = eos when missing */
		if (pad < 0) die("%s: header has neither meta.pad_id nor meta.eos_id", name);
		info->pad_id = (int32_t)pad;
		info->eos_id = (int32_t)eos;
		info->bos_id = (int32_t)ft_json_int(meta, "bos_id", -1);
		info->add_bos = ft_json_bool(meta, "add_bos_token", 0) && info->bos_id >= 0;
		return;
	}
	if (ft_json_bool(meta, "predict", 0))
		die("%s: these are prediction records (ft-tokenize --predict_with_generate): they go to "
		    "generation, not to ft-pack", name);
	if (stage != info->stage)
		die("%s: stage '%s' differs from %s's '%s': streams of different stages cannot be mixed",
		    name, stage_s, ft_display_name(o->inputs[0]), ft_stage_name(info->stage));
	if (strcmp(tok, info->tokenizer) != 0)
		die("%s: tokenizer '%s' differs from %s's '%s': streams from different tokenizers cannot be mixed",
		    name, tok, ft_display_name(o->inputs[0]), info->tokenizer);
	long long pad = ft_json_int(meta, "pad_id", -1);
	if (pad < 0) pad = ft_json_int(meta, "eos_id", -1);
	if (pad != info->pad_id)
		die("%s: pad id %lld differs from %s's %d", name, pad, ft_display_name(o->inputs[0]),
		    (int)info->pad_id);
}

void read_inputs(const pack_opts *o, ft_examples *e, input_info *info)
{
	ft_i32vec ids = { 0 }, lab = { 0 }, ids2 = { 0 }, lab2 = { 0 };
	memset(info, 0, sizeof *info);
	for (size_t f = 0; f < o->n_inputs; f++) {
		in_name = o->inputs[f];
		in_rec = 0;
		ft_reader *r = ft_reader_open(in_name);
		if (!r) die_lib();
		check_header(r, o, info, f == 0);
		if (f == 0)   /* rm/dpo: chosen + rejected; kto: example + KL sequence */
			ft_examples_init(e, ft_stage_pairwise(info->stage) || info->stage == FT_STAGE_KTO ? 2 : 1);
		if (f == 0) e->ids_only = info->stage == FT_STAGE_PT;   /* labels come from the ids */
		const json_t *meta = json_object_get(ft_reader_header(r), "meta");
		int64_t vocab = ft_json_int(meta, "vocab_size", 0), n = 0;
		int pt_bos = info->stage == FT_STAGE_PT && info->add_bos && o->packing == 0;
		ft_rec *rec;
		int rc = 0;
		while ((o->max_samples < 0 || n < o->max_samples) && (rc = ft_reader_next(r, &rec)) > 0) {
			in_rec = ft_reader_index(r);
			switch (info->stage) {
			case FT_STAGE_PT:
				get_ids(rec, "input_ids", &ids, vocab);
				if (pt_bos) {   /* LLaMA-Factory prepends bos without packing */
					ft_i32vec_reserve(&ids, ids.n + 1);
					memmove(ids.v + 1, ids.v, ids.n * sizeof *ids.v);
					ids.v[0] = info->bos_id;
					ids.n++;
				}
				ft_examples_add_seq(e, ids.v, NULL, ids.n);
				break;
			case FT_STAGE_RM: case FT_STAGE_DPO:
				get_ids(rec, "chosen_input_ids", &ids, vocab);
				get_labels(rec, "chosen_labels", &lab, &ids);
				get_ids(rec, "rejected_input_ids", &ids2, vocab);
				get_labels(rec, "rejected_labels", &lab2, &ids2);
				ft_examples_add_seq(e, ids.v, lab.v, ids.n);
				ft_examples_add_seq(e, ids2.v, lab2.v, ids2.n);
				break;
			default:   /* sft, kto, ppo */
				get_ids(rec, "input_ids", &ids, vocab);
				if (info->stage == FT_STAGE_PPO && !ft_rec_has(rec, "labels")) {
					lab.n = 0;
					for (size_t i = 0; i < ids.n; i++) ft_i32vec_push(&lab, FT_IGNORE_INDEX);
				} else {
					get_labels(rec, "labels", &lab, &ids);
				}
				if (info->stage == FT_STAGE_KTO) {   /* LLaMA-Factory's kl_ fields */
					get_ids(rec, "kl_input_ids", &ids2, vocab);
					get_labels(rec, "kl_labels", &lab2, &ids2);
					ft_examples_add_seq(e, ids.v, lab.v, ids.n);
					ft_examples_add_seq(e, ids2.v, lab2.v, ids2.n);
					ft_examples_set_tag(e, ft_examples_count(e) - 1, get_tag(rec));
				} else {
					ft_examples_add_seq(e, ids.v, lab.v, ids.n);
					if (info->stage == FT_STAGE_PPO) get_extra(rec, e);
				}
			}
			n++;
			if ((n & 1023) == 0) ft_progress("read %zu examples", ft_examples_count(e));
		}
		if (o->max_samples < 0 || n < o->max_samples)
			if (rc < 0) die_lib();
		ft_reader_close(r);
		info->records += n;
	}
	ft_progress_done();
	ft_i32vec_free(&ids); ft_i32vec_free(&lab); ft_i32vec_free(&ids2); ft_i32vec_free(&lab2);
}
