/* optim_badam.c - layer-wise BAdam (Luo et al. 2024) as the badam
 * package's BlockOptimizer (>= 1.2.1) runs under LLaMA-Factory
 * (use_badam, badam_mode layer):
 *
 * - Blocks come from the parameter names (infer_param_groups): one per
 *   distinct ".*layers.[^.]*." prefix, in the order the params list them;
 *   everything else (embeddings, the final norm, lm_head) is in no block
 *   and never updated (include_embedding and include_lm_head are off).
 * - Only the active block's params are trainable: the others' gradients
 *   are None in torch, so they are zeroed here before clipping and count
 *   for nothing in the norm.
 * - The active block gets AdamW with the scheduled lr.  Its weight decay
 *   is torch AdamW's default 0.01 for every param of the block, biases and
 *   norms included, whatever --weight_decay says: BlockOptimizer builds its
 *   groups as {"weight_decay": ..., **base_optimizer.defaults}, and the
 *   defaults of the AdamW LLaMA-Factory creates (no weight_decay kwarg)
 *   hold 0.01, which overrides both groups.
 * - After each step global_step += 1, and when (global_step + 1) %
 *   switch_interval == 0 the next block becomes active (so the first block
 *   gets interval - 1 steps, the others interval) and the optimizer state
 *   is dropped: moments and step count start again, also in "fixed" mode.
 *   The order: ascending from block 0, descending from the last, random
 *   (a fresh permutation each round, popped from its end; ft's generator,
 *   not torch.randperm), fixed; badam_start_block overrides the first.
 *   A negative interval switches as Python's % does (-1: every step).
 */
#include "train/optim_ext.h"
#include "util/atomicfile.h"
#include "util/error.h"
#include "util/json.h"
#include "util/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* torch.optim.AdamW's default weight_decay, see above */
#define BADAM_WEIGHT_DECAY 0.01

typedef struct {
	ft_badam_opts o;
	ft_param *const *p;
	size_t np;
	int *block_of;                /* per param: its block, -1 none */
	char **prefix;                /* per block */
	int nblocks;
	int active, next;             /* the block being trained, the next one */
	int64_t global_step;
	int64_t *order;               /* random mode: blocks left this round */
	size_t norder;
	ft_rng rng;
	ft_param *ap;                 /* copies of the active params, decay on */
	ft_param **app;
	size_t nap;
	ft_adamw *opt;
} badam;

static const char *const mode_names[] = { "ascending", "descending", "random", "fixed" };

/* ".*layers.[^.]*\." as re.findall finds it: the greedy .* puts the match
 * at the last "layers" followed by any character, then up to the next
 * dot.  Returns the prefix length, 0 if none. */
static size_t layer_prefix(const char *name)
{
	size_t best = 0;
	for (const char *s = strstr(name, "layers"); s; s = strstr(s + 1, "layers")) {
		const char *q = s + 6;
		if (!*q) break;
		q++;                                  /* the "." of the pattern: any char */
		const char *dot = strchr(q, '.');
		if (dot) best = (size_t)(dot + 1 - name);
	}
	return best;
}

static void refill_order(badam *b)
{
	b->norder = (size_t)b->nblocks;
	for (int i = 0; i < b->nblocks; i++) b->order[i] = i;
	ft_shuffle_i64(&b->rng, b->order, b->norder);
}

/* _update_active_block_idx */
static void advance(badam *b)
{
	int n = b->nblocks;
	switch (b->o.mode) {
	case FT_BADAM_RANDOM:
		if (!b->norder) refill_order(b);
		b->next = (int)b->order[--b->norder];
		break;
	case FT_BADAM_ASCENDING: b->next = (b->next + 1) % n; break;
	case FT_BADAM_DESCENDING: b->next = ((b->next - 1) % n + n) % n; break;
	case FT_BADAM_FIXED: break;
	}
}

/* The active block's params (decay on for all, see above) and a fresh
 * AdamW over them. */
static void activate(badam *b, int block)
{
	b->active = block;
	ft_adamw_free(b->opt);
	b->nap = 0;
	for (size_t i = 0; i < b->np; i++)
		if (b->block_of[i] == block) {
			b->ap[b->nap] = *b->p[i];
			b->ap[b->nap].decay = 1;
			b->app[b->nap] = &b->ap[b->nap];
			b->nap++;
		}
	ft_adamw_opts ao = { b->o.beta1, b->o.beta2, b->o.eps, BADAM_WEIGHT_DECAY };
	b->opt = ft_adamw_new(b->app, b->nap, &ao);
	if (b->o.on_switch) b->o.on_switch(b->o.ctx, block, b->prefix[block]);
}

/* switch_trainable_params: the pending block becomes active, state reset */
static void switch_block(badam *b)
{
	activate(b, b->next);
	advance(b);
}

static void bd_pre_clip(void *self)
{
	badam *b = self;
	for (size_t i = 0; i < b->np; i++)
		if (b->block_of[i] != b->active && b->p[i]->g)
			memset(b->p[i]->g, 0, b->p[i]->n * sizeof(float));
}

static ft_adamw *bd_block_adamw(void *self, double *weight_decay)
{
	*weight_decay = BADAM_WEIGHT_DECAY;
	return ((badam *)self)->opt;
}

static void bd_after_step(void *self)
{
	badam *b = self;
	b->global_step++;
	if ((b->global_step + 1) % b->o.switch_interval == 0) switch_block(b);
}

static int bd_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	badam *b = self;
	(void)opt; (void)lambda;
	ft_adamw_step(b->opt, lr);
	bd_after_step(b);
	return 0;
}

static int bd_save(void *self, const char *dir)
{
	badam *b = self;
	char *f = ft_xasprintf("%s/badam_optimizer.safetensors", dir);
	int rc = ft_adamw_save(b->opt, f);
	free(f);
	if (rc < 0) return -1;
	json_t *order = json_array();
	for (size_t i = 0; i < b->norder; i++) json_array_append_new(order, json_integer(b->order[i]));
	json_t *j = json_pack("{s:s, s:i, s:i, s:I, s:o, s:s, s:i}", "switch_mode",
			      mode_names[b->o.mode], "active_block", b->active, "next_block", b->next,
			      "global_step", (json_int_t)b->global_step, "block_order", order,
			      "active_prefix", b->prefix[b->active], "num_blocks", b->nblocks);
	f = ft_xasprintf("%s/badam_state.json", dir);
	rc = ft_json_save_file_sorted(j, f, 2);
	free(f);
	json_decref(j);
	return rc;
}

static int bd_load(void *self, const char *dir)
{
	badam *b = self;
	char *f = ft_xasprintf("%s/badam_state.json", dir);
	json_t *j = ft_json_load_file(f);
	int rc = -1;
	if (!j) goto out;
	const json_t *order = json_object_get(j, "block_order");
	long long act = ft_json_int(j, "active_block", -1), nxt = ft_json_int(j, "next_block", -1);
	if (ft_json_int(j, "num_blocks", -1) != b->nblocks || act < 0 || act >= b->nblocks || nxt < 0 ||
	    nxt >= b->nblocks || !json_is_array(order) || json_array_size(order) > (size_t)b->nblocks ||
	    strcmp(ft_json_str(j, "switch_mode", ""), mode_names[b->o.mode])) {
		ft_fail("%s: not the BAdam state of this model and --badam_switch_mode %s", f,
			mode_names[b->o.mode]);
		goto out;
	}
	b->norder = json_array_size(order);
	for (size_t i = 0; i < b->norder; i++) b->order[i] = json_integer_value(json_array_get(order, i));
	b->global_step = ft_json_int(j, "global_step", 0);
	void (*cb)(void *, int, const char *) = b->o.on_switch;
	b->o.on_switch = NULL;   /* not a switch: the checkpoint's block again */
	activate(b, (int)act);
	b->o.on_switch = cb;
	b->next = (int)nxt;
	free(f);
	f = ft_xasprintf("%s/badam_optimizer.safetensors", dir);
	rc = ft_adamw_load(b->opt, f);
out:
	json_decref(j);
	free(f);
	return rc;
}

static void bd_free(void *self)
{
	badam *b = self;
	for (int i = 0; i < b->nblocks; i++) free(b->prefix[i]);
	free(b->prefix);
	free(b->block_of);
	free(b->order);
	free(b->ap);
	free(b->app);
	ft_adamw_free(b->opt);
	free(b);
}

int ft_badam_mode_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, mode_names[i])) return i;
	return ft_fail("'%s' is not a BAdam switch mode (ascending, descending, random, fixed)", s);
}

/* infer_param_groups: blocks in the order their first param appears. */
static void find_blocks(badam *b)
{
	for (size_t i = 0; i < b->np; i++) {
		const char *name = b->p[i]->name;
		b->block_of[i] = -1;
		for (int k = 0; k < b->nblocks && b->block_of[i] < 0; k++)
			if (strstr(name, b->prefix[k])) b->block_of[i] = k;
		if (b->block_of[i] >= 0) continue;
		size_t len = layer_prefix(name);
		if (!len) continue;
		b->prefix = ft_xrealloc(b->prefix, (size_t)(b->nblocks + 1) * sizeof *b->prefix);
		b->prefix[b->nblocks] = ft_xasprintf("%.*s", (int)len, name);
		b->block_of[i] = b->nblocks++;
	}
}

ft_optim_ext *ft_badam_new(ft_param *const *params, size_t n, const ft_badam_opts *o)
{
	if (o->switch_interval == 0)
		return ft_fail("badam_switch_interval must not be 0"), NULL;
	badam *b = ft_xcalloc(1, sizeof *b);
	b->o = *o;
	b->p = params;
	b->np = n;
	b->block_of = ft_xcalloc(n ? n : 1, sizeof *b->block_of);
	find_blocks(b);
	if (!b->nblocks) {
		bd_free(b);
		return ft_fail("BAdam: no parameter belongs to a layer (model.layers.N.)"), NULL;
	}
	if (o->has_start_block && (o->start_block < -b->nblocks || o->start_block >= b->nblocks)) {
		int nb = b->nblocks;
		bd_free(b);
		return ft_fail("badam_start_block %d: the model has %d blocks (0 to %d)", o->start_block, nb,
			       nb - 1), NULL;
	}
	b->ap = ft_xcalloc(n ? n : 1, sizeof *b->ap);
	b->app = ft_xcalloc(n ? n : 1, sizeof *b->app);
	b->order = ft_xcalloc((size_t)b->nblocks, sizeof *b->order);
	ft_rng_seed(&b->rng, o->seed ^ 0xbada11ULL);
	/* a Python index: negative counts from the end */
	if (o->has_start_block)
		b->next = (o->start_block + b->nblocks) % b->nblocks;
	else if (o->mode == FT_BADAM_DESCENDING)
		b->next = b->nblocks - 1;
	else if (o->mode == FT_BADAM_RANDOM) {
		refill_order(b);
		b->next = (int)b->order[--b->norder];
	}
	switch_block(b);
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = b, .pre_clip = bd_pre_clip, .step = bd_step, .save = bd_save,
			     .load = bd_load, .free = bd_free, .block_adamw = bd_block_adamw,
			     .after_step = bd_after_step };
	return e;
}
