/* grpo_ckpt.c - GRPO checkpoints and resume (grpo_loop.h): what a resumed
 * run needs to go on exactly as an uninterrupted one.
 *
 * grpo_state.json holds the counters a reader wants to see (and checks
 * the settings against); grpo_buffer.safetensors the exact bits: the
 * 64-bit words (seed, generator, dropout position), the pass's prompt
 * order, the logging window's sums and counts, and the generation batch
 * when the checkpoint falls between two of its num_iterations steps (its
 * old and reference log-probabilities came from weights that are gone,
 * so they are saved, not recomputed; the grid is rebuilt from the
 * completions). */
#include "train/grpo_internal.h"
#include "train/trainer_internal.h"   /* ftp_rl_ckpt_save: checkpoints as ft_train's */
#include "format/safetensors.h"
#include "util/error.h"
#include "util/json.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { W_SEED, W_DROPOUT, W_RNG, W_SAMPLER = W_RNG + 4, W_N = W_SAMPLER + 4 };

typedef struct {
	uint64_t words[W_N];
	int32_t *cnt, *clen, *rows, *comp;
	int64_t *pidx;
	size_t total;
} bufs;

static void bufs_free(bufs *b)
{
	free(b->cnt); free(b->clen); free(b->rows); free(b->comp); free(b->pidx);
}

static int write_buffer(ft_model *m, const ftp_grpo_state *s, const ft_grpo_loop_opts *o, const char *path)
{
	const ftp_grpo_gen *g = &s->g;
	bufs b;
	memset(&b, 0, sizeof b);
	b.words[W_SEED] = o->seed;
	b.words[W_DROPOUT] = ft_model_dropout_position(m);
	for (int i = 0; i < 4; i++) {
		b.words[W_RNG + i] = s->rng.s[i];
		b.words[W_SAMPLER + i] = s->sampler.s[i];
	}
	b.cnt = ft_xmalloc((size_t)s->mt.n * sizeof *b.cnt);
	for (int i = 0; i < s->mt.n; i++) b.cnt[i] = s->mt.cnt[i];
	ft_st_writer *w = ft_st_writer_new();
	int64_t sh[2] = { W_N, 0 };
	ft_st_writer_add(w, "state.words", FT_I64, 1, sh, b.words);   /* uint64 bits */
	sh[0] = (int64_t)s->n;
	ft_st_writer_add(w, "sampler.order", FT_I64, 1, sh, s->order);
	sh[0] = s->mt.n;
	ft_st_writer_add(w, "metrics.sum", FT_F64, 1, sh, s->mt.sum);
	ft_st_writer_add(w, "metrics.count", FT_I32, 1, sh, b.cnt);
	if (g->N) {   /* inside the generation batch's num_iterations */
		b.pidx = ft_xmalloc((size_t)g->N * sizeof *b.pidx);
		b.clen = ft_xmalloc((size_t)g->N * sizeof *b.clen);
		for (int i = 0; i < g->N; i++) {
			b.pidx[i] = (int64_t)g->pidx[i];
			b.clen[i] = (int32_t)g->comp[i].n;
			b.total += g->comp[i].n;
		}
		b.comp = ft_xmalloc((b.total + 1) * sizeof *b.comp);
		for (int i = 0, k = 0; i < g->N; k += b.clen[i++])
			memcpy(b.comp + k, g->comp[i].v, g->comp[i].n * sizeof(int32_t));
		sh[0] = g->N;
		ft_st_writer_add(w, "gen.prompt", FT_I64, 1, sh, b.pidx);
		ft_st_writer_add(w, "gen.completion_length", FT_I32, 1, sh, b.clen);
		ft_st_writer_add(w, "gen.advantage", FT_F32, 1, sh, g->adv);
		ft_st_writer_add(w, "gen.rows", FT_I32, 1, sh, g->rows);
		sh[0] = 1;
		ft_st_writer_add(w, "gen.num_items", FT_F64, 1, sh, &g->num_items);
		sh[0] = (int64_t)b.total;
		if (b.total) ft_st_writer_add(w, "gen.completion", FT_I32, 1, sh, b.comp);
		sh[0] = g->N;
		sh[1] = g->T;
		if (g->old) ft_st_writer_add(w, "gen.old_logp", FT_F32, 2, sh, g->old);
		if (g->ref) ft_st_writer_add(w, "gen.ref_logp", FT_F32, 2, sh, g->ref);
	}
	int rc = ft_st_writer_write(w, path);
	ft_st_writer_free(w);
	bufs_free(&b);
	return rc;
}

static json_t *state_json(const ftp_grpo_state *s, const ft_grpo_loop_opts *o)
{
	json_t *j = json_object();
	json_object_set_new(j, "format", json_string("ft-grpo-state"));
	json_object_set_new(j, "version", json_integer(1));
	json_object_set_new(j, "global_step", json_integer(s->step));
	json_object_set_new(j, "max_steps", json_integer(o->max_steps));
	json_object_set_new(j, "completions_per_generation", json_integer((json_int_t)o->batch_size * o->grad_accum * ft_dist_size(o->dist)));
	json_object_set_new(j, "num_generations", json_integer(o->num_generations));
	json_object_set_new(j, "num_iterations", json_integer(o->num_iterations));
	json_object_set_new(j, "prompts", json_integer((json_int_t)s->n));
	json_object_set_new(j, "generation", json_integer(s->gen));
	json_object_set_new(j, "sampler_position", json_integer((json_int_t)s->pos));
	json_object_set_new(j, "iterations_done", json_integer(s->g.N ? s->g.it : 0));
	json_object_set_new(j, "loss_sum", json_real(s->loss_sum));   /* 17 digits: the same double */
	json_object_set_new(j, "n_logged", json_integer(s->n_logged));
	return j;
}

typedef struct {
	ft_model *m;
	const ftp_grpo_state *s;
	const ft_grpo_loop_opts *o;
} buffer_ctx;

/* ftp_rl_ckpt's extra: grpo_buffer.safetensors in the checkpoint's directory */
static int save_buffer(void *ctx, const char *dir)
{
	const buffer_ctx *b = ctx;
	char *h = ft_xasprintf("%s/grpo_buffer.safetensors", dir);
	int rc = write_buffer(b->m, b->s, b->o, h);
	free(h);
	const ft_train_model *t = &b->s->pm.base;   /* a device's fp16 loss scaler (scaler.json) */
	if (rc == 0 && t->ckpt_save) rc = t->ckpt_save(t->self, dir);
	return rc;
}

int ftp_grpo_ckpt_save(ft_model *m, const ftp_grpo_state *s, const ft_grpo_loop_opts *o)
{
	buffer_ctx b = { m, s, o };
	ftp_rl_ckpt c = { .output_dir = o->output_dir, .step = s->step, .save_total_limit = o->save_total_limit,
			  .save_model = o->save_model, .save_ctx = o->save_ctx, .opt = s->opt,
			  .state_name = "grpo_state.json", .extra = save_buffer, .extra_ctx = &b };
	return ftp_rl_ckpt_save(&c, state_json(s, o));
}

static json_t *load_state(const char *dir)
{
	return ftp_rl_ckpt_state(dir, "grpo_state.json", "ft-grpo-state", "GRPO");
}

int64_t ft_grpo_checkpoint_step(const char *dir)
{
	return ftp_rl_ckpt_step(dir, "grpo_state.json", "ft-grpo-state", "GRPO");
}

/* tensor name of st holding exactly n elements of dtype dt into dst */
static int take(const ft_st *st, const char *path, const char *name, ft_dtype dt, size_t n, void *dst)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	size_t es = dt == FT_I64 || dt == FT_F64 ? 8 : 4;
	if (!t || t->dtype != dt || t->numel != n || t->nbytes != n * es)
		return ft_fail("%s: tensor %s is missing or not %zu values of the expected type", path, name, n);
	memcpy(dst, t->data, n * es);
	return 0;
}

static int read_gen(ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_st *st, const char *path,
		    const ft_i32vec *prompts, int it)
{
	ftp_grpo_gen *g = &s->g;
	int N = o->batch_size * o->grad_accum;   /* one process's rows (a buffer is saved only then) */
	g->N = N;
	g->pidx = ft_xcalloc((size_t)N, sizeof *g->pidx);
	g->comp = ft_xcalloc((size_t)N, sizeof *g->comp);
	g->adv = ft_xmalloc((size_t)N * sizeof *g->adv);
	g->rows = ft_xmalloc((size_t)N * sizeof *g->rows);
	int64_t *pidx = ft_xmalloc((size_t)N * sizeof *pidx);
	int32_t *clen = ft_xmalloc((size_t)N * sizeof *clen), *comp = NULL;
	int rc = take(st, path, "gen.prompt", FT_I64, (size_t)N, pidx);
	if (rc == 0) rc = take(st, path, "gen.completion_length", FT_I32, (size_t)N, clen);
	if (rc == 0) rc = take(st, path, "gen.advantage", FT_F32, (size_t)N, g->adv);
	if (rc == 0) rc = take(st, path, "gen.rows", FT_I32, (size_t)N, g->rows);
	size_t total = 0;
	for (int i = 0; rc == 0 && i < N; i++) {
		if (pidx[i] < 0 || (size_t)pidx[i] >= s->n || clen[i] < 0 || g->rows[i] < 0 || g->rows[i] >= N)
			rc = ft_fail("%s: the generation batch does not fit these prompts", path);
		total += rc == 0 ? (size_t)clen[i] : 0;
	}
	comp = ft_xmalloc((total + 1) * sizeof *comp);
	if (rc == 0 && total) rc = take(st, path, "gen.completion", FT_I32, total, comp);
	for (int i = 0, k = 0; rc == 0 && i < N; k += clen[i++]) {
		g->pidx[i] = (size_t)pidx[i];
		ft_i32vec_append(&g->comp[i], comp + k, (size_t)clen[i]);
	}
	if (rc == 0) {
		ftp_grpo_build_grid(g, prompts, o);
		size_t n = (size_t)N * g->T;
		if (o->num_iterations > 1) g->old = ft_xmalloc(n * sizeof(float));
		if (o->grpo.beta != 0) g->ref = ft_xmalloc(n * sizeof(float));
		if (g->old) rc = take(st, path, "gen.old_logp", FT_F32, n, g->old);
		if (rc == 0 && g->ref) rc = take(st, path, "gen.ref_logp", FT_F32, n, g->ref);
		if (rc == 0) rc = take(st, path, "gen.num_items", FT_F64, 1, &g->num_items);   /* all ranks' */
		g->it = it;
	}
	free(pidx);
	free(clen);
	free(comp);
	return rc;
}

static int read_buffer(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts,
		       int it)
{
	char *path = ft_xasprintf("%s/grpo_buffer.safetensors", o->resume_dir);
	ft_st *st = ft_st_open(path);
	bufs b;
	memset(&b, 0, sizeof b);
	int rc = st ? 0 : -1;
	if (rc == 0) rc = take(st, path, "state.words", FT_I64, W_N, b.words);
	if (rc == 0 && b.words[W_SEED] != o->seed)
		rc = ft_fail("%s: the checkpoint was made with seed %" PRIu64 ", this run has %" PRIu64
			     ": resume with the same settings", o->resume_dir, b.words[W_SEED], o->seed);
	if (rc == 0) rc = take(st, path, "sampler.order", FT_I64, s->n, s->order);
	b.cnt = ft_xmalloc((size_t)s->mt.n * sizeof *b.cnt);
	if (rc == 0) rc = take(st, path, "metrics.sum", FT_F64, (size_t)s->mt.n, s->mt.sum);
	if (rc == 0) rc = take(st, path, "metrics.count", FT_I32, (size_t)s->mt.n, b.cnt);
	for (int i = 0; rc == 0 && i < s->mt.n; i++) s->mt.cnt[i] = b.cnt[i];
	if (rc == 0 && it > 0) rc = read_gen(s, o, st, path, prompts, it);
	if (rc == 0) {
		for (int i = 0; i < 4; i++) {
			s->rng.s[i] = b.words[W_RNG + i];
			s->sampler.s[i] = b.words[W_SAMPLER + i];
		}
		ft_model_set_dropout_position(m, b.words[W_DROPOUT]);
	}
	bufs_free(&b);
	if (st) ft_st_close(st);
	free(path);
	return rc;
}

/* grpo_state.json and grpo_buffer.safetensors, checked against this run */
static int read_state(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts)
{
	json_t *j = load_state(o->resume_dir);
	if (!j) return -1;
	int rc = -1;
	long long N = json_integer_value(json_object_get(j, "completions_per_generation"));
	long long G = json_integer_value(json_object_get(j, "num_generations"));
	long long mu = json_integer_value(json_object_get(j, "num_iterations"));
	long long ms = json_integer_value(json_object_get(j, "max_steps"));
	long long np = json_integer_value(json_object_get(j, "prompts"));
	long long Nw = (long long)o->batch_size * o->grad_accum * ft_dist_size(o->dist);
	if (N != Nw || G != o->num_generations || mu != o->num_iterations ||
	    ms != o->max_steps || np != (long long)s->n) {
		ft_fail("%s: the checkpoint was made with %lld completions per generation batch, %lld generations, "
			"%lld iterations, %lld steps and %lld prompts; this run has %d, %d, %d, %lld and %zu: "
			"resume with the same settings", o->resume_dir, N, G, mu, ms, np,
			(int)Nw, o->num_generations, o->num_iterations,
			(long long)o->max_steps, s->n);
		goto out;
	}
	const json_t *ls = json_object_get(j, "loss_sum");
	long long pos = json_integer_value(json_object_get(j, "sampler_position"));
	long long it = json_integer_value(json_object_get(j, "iterations_done"));
	if (!json_is_number(ls) || pos < 0 || pos > np || it < 0 || it >= mu) {
		ft_fail("%s/grpo_state.json: a field is missing or malformed", o->resume_dir);
		goto out;
	}
	s->step = json_integer_value(json_object_get(j, "global_step"));
	s->gen = json_integer_value(json_object_get(j, "generation"));
	s->pos = (size_t)pos;
	s->loss_sum = json_number_value(ls);
	s->n_logged = (int)json_integer_value(json_object_get(j, "n_logged"));
	rc = read_buffer(m, s, o, prompts, (int)it);
out:
	json_decref(j);
	return rc;
}

int ftp_grpo_ckpt_load(ft_model *m, ftp_grpo_state *s, const ft_grpo_loop_opts *o, const ft_i32vec *prompts)
{
	/* under mpirun every rank checks the same bytes; rank 0 reports */
	if (ft_dist_rank0_verdict(o->dist, read_state(m, s, o, prompts)) < 0) return -1;
	char *f = ft_xasprintf("%s/optimizer.safetensors", o->resume_dir);
	int rc = ft_dist_adamw_load(o->dist, s->opt, f);   /* the trainable weights and the moments */
	free(f);
	return rc;
}
