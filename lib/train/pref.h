/* pref.h - LLaMA-Factory's preference stages over TRL: rm (a value head,
 * pairwise loss), dpo (sigmoid, hinge, ipo, orpo, simpo) and kto, as
 * ft_train_model bindings for the training loop (lib/train/trainer.h).
 *
 *   lib/train/pref_loss.c   the losses, their gradients and the metrics, on
 *                           per-sequence numbers only (unit-tested alone)
 *   lib/train/pref.c        batches -> sequences, the reference model, the
 *                           value head, the binding, rm predictions
 *
 * The model is reached through model/model_pref.h (per-position label
 * log-probabilities with their backward pass, value-head scores), the
 * operations a device binding would supply.
 *
 * Batches are ft-pack's (docs/FORMAT.md 3.2): pairwise rows 2i (chosen) and
 * 2i+1 (rejected), or with neat packing segment k of both rows as pair k;
 * kto rows 2i (example) and 2i+1 (its KL sequence) with kto_tags.
 */
#ifndef FT_PREF_H
#define FT_PREF_H

#include <stdio.h>
#include "model/model.h"
#include "train/trainer.h"

enum { FT_PREF_RM, FT_PREF_DPO, FT_PREF_KTO };
enum { FT_PREF_SIGMOID, FT_PREF_HINGE, FT_PREF_IPO, FT_PREF_ORPO, FT_PREF_SIMPO };

typedef struct {
	int stage;                     /* FT_PREF_* */
	int loss;                      /* dpo: --pref_loss (sigmoid) */
	double beta;                   /* --pref_beta 0.1 */
	double ftx;                    /* --pref_ftx 0 */
	double label_smoothing;        /* --dpo_label_smoothing 0 (sigmoid) */
	double simpo_gamma;            /* --simpo_gamma 0.5 */
	double bco_weight;             /* --pref_bco_weight 0: BCO mixed in when > 1e-6
					* (dpo with a reference: sigmoid, hinge, ipo) */
	int ld;                        /* --ld_alpha given (LLaMA-Factory's None: off) */
	double ld_alpha;               /* LD-DPO: the policy's weight of the tokens past
					* the shorter response of the pair */
	double kto_chosen_weight, kto_rejected_weight;   /* 1.0 each */
	double value_dropout;          /* rm: TRL ValueHead summary_dropout_prob 0.1 */
	uint64_t seed;                 /* value-head init and dropout */
	/* data parallel (train/dist.h): the metrics' sums and counts are
	 * summed over the ranks when drained, so every rank must drain them
	 * together (the trainer's logs and evaluations do); NULL: one process */
	struct ft_dist *dist;
} ft_pref_opts;

void ft_pref_opts_default(ft_pref_opts *o, int stage);
/* "sigmoid" ... "simpo" -> FT_PREF_*; -1 with a message otherwise. */
int ft_pref_loss_parse(const char *name);
const char *ft_pref_loss_name(int loss);
/* Whether a loss needs a reference model (orpo and simpo do not). */
int ft_pref_uses_ref(const ft_pref_opts *o);
/* Whether the sequence log-probability is the per-token mean (ipo, orpo,
 * simpo) rather than the sum. */
int ft_pref_avg_logps(const ft_pref_opts *o);

/* ---- losses on per-sequence numbers (pref_loss.c) ---------------------- */

/* TRL's RunningMoments (trainer/utils.py), BCO's reward baseline: the
 * state a checkpoint keeps.  init: mean 0, var 1, count 1e-24, TRL's
 * dataclass defaults. */
typedef struct {
	double mean, var, count;
} ft_pref_moments;
void ft_pref_moments_init(ft_pref_moments *m);
/* RunningMoments.update from a batch of xs_count values with mean xs_mean
 * and (population) variance xs_var; LLaMA-Factory's bco_loss passes one
 * value, the micro-batch's mean reward (xs_var 0). */
void ft_pref_moments_update(ft_pref_moments *m, double xs_mean, double xs_var, double xs_count);

/* dpo over n pairs: pc, pr the policy's chosen/rejected log-probs (summed
 * or averaged as ft_pref_avg_logps says), rc, rr the reference's (ignored
 * by orpo/simpo), len_c the chosen label counts (for --pref_ftx).  Writes
 * each pair's loss, dL/dpc and dL/dpr of the batch loss (the mean over
 * pairs), and the rewards; returns the batch loss.  bco: the running
 * baseline when o->bco_weight > 1e-6 (a loss with a reference), updated
 * with this batch's mean reward first (LLaMA-Factory's bco_loss; the
 * baseline carries no gradient); NULL otherwise. */
double ft_pref_dpo_loss(const ft_pref_opts *o, int n, const double *pc, const double *pr,
			const double *rc, const double *rr, const double *len_c, ft_pref_moments *bco,
			double *loss, double *dpc, double *dpr, double *rew_c, double *rew_r);
/* Whether o mixes in the BCO loss (LLaMA-Factory: pref_bco_weight > 1e-6,
 * in compute_preference_loss's branch with a reference model). */
int ft_pref_uses_bco(const ft_pref_opts *o);
/* kto over n examples (desirable[i]): pol, ref their summed log-probs,
 * len their label counts; kl the batch's KL estimate (already clamped at
 * 0).  Returns the batch loss (mean over examples) and dL/dpol. */
double ft_pref_kto_loss(const ft_pref_opts *o, int n, const int *desirable, const double *pol,
			const double *ref, const double *len, double kl, double *dpol,
			double *rewards);
/* rm: -logsigmoid(c - r) averaged over n pairs; dL/dc, dL/dr. */
double ft_pref_rm_loss(int n, const double *c, const double *r, double *dc, double *dr);

/* ---- the model the stages drive (pref.c) -------------------------------- */

/* What the stages need from a model, so that a device binding can supply
 * it: the trainer's interface (parameters, zero_grad, save, dropout
 * position; step/state_in/state_out/peak_bytes when the optimizer lives on
 * a device) plus the model_pref.h operations.  ft_pref_model_of() is the
 * CPU model's. */
typedef struct {
	ft_train_model base;
	int hidden_size, vocab_size, has_adapters;
	int (*logps_forward)(void *self, const ft_batch *b, int train, float *logp, float *lmean);
	int (*logps_backward)(void *self, const ft_batch *b, const float *dlogp);
	void (*set_adapters)(void *self, int on);
	int (*value_forward)(void *self, const ft_batch *b, int train, const int32_t *pos, int n,
			     const float *vw, float vb, float p_drop, uint64_t seed, float *hd, float *score);
	int (*value_backward)(void *self, const ft_batch *b, const int32_t *pos, int n, const float *vw,
			      float p_drop, uint64_t seed, const float *hd, const float *dscore, float *dvw,
			      double *dvb);
	/* NULL for a model the trainer steps.  A model that steps itself
	 * (base.step) keeps rm's value head with its own parameters: this
	 * hands it the head's host tensors (vh[0] weight [D], vh[1] bias [1]),
	 * again whenever their weights change on the host (a loaded head);
	 * it steps the head with its parameters, copies it into vh before a
	 * save and with state_out, and its value operations then ignore vw,
	 * vb, hd, dvw and dvb. */
	void (*own_value_head)(void *self, ft_param *vh);
	/* GRPO (train/grpo_loop.h): model_pref.h's ft_model_set_logp_temperature
	 * and ft_model_set_logp_entropy on this model (ent: B*T floats of the
	 * largest batch). */
	int (*set_logp_temperature)(void *self, float t);
	void (*set_logp_entropy)(void *self, float *ent);
} ft_pref_model;
ft_pref_model ft_pref_model_of(ft_model *m);

/* ---- the binding (pref.c) --------------------------------------------- */

typedef struct ft_pref ft_pref;

/* policy is trained; ref is the reference model (a frozen model), or NULL:
 * then a LoRA policy with its adapters disabled serves as the reference
 * (PEFT's disable_adapter), as LLaMA-Factory does; NULL with a model
 * without adapters is refused for losses that need one.  rm adds the value
 * head (v_head.summary) to the trainable parameters, initialised as
 * nn.Linear(hidden, 1) is (uniform in +-1/sqrt(hidden), seeded). */
ft_pref *ft_pref_new(ft_model *policy, ft_model *ref, const ft_pref_opts *o);
/* The same over any model (ref NULL as above).  The binding passes a
 * device optimizer (base.step ...) through; for rm such a model must
 * keep the value head (own_value_head). */
ft_pref *ft_pref_new_with(const ft_pref_model *policy, const ft_pref_model *ref,
			  const ft_pref_opts *o);
void ft_pref_free(ft_pref *p);
/* Replace opts.dist (NULL: this process's metrics alone, e.g. when only
 * rank 0 evaluates). */
void ft_pref_set_dist(ft_pref *p, struct ft_dist *d);
ft_train_model ft_pref_train_model(ft_pref *p);
/* rm: value_head.safetensors (v_head.summary.weight [1, hidden], .bias
 * [1]) from dir, replacing the initial head. */
int ft_pref_load_value_head(ft_pref *p, const char *dir);
/* rm --do_predict: each pair's scores, LLaMA-Factory's
 * generated_predictions.jsonl ({"chosen": s, "rejected": s} per line,
 * rounded to 2 decimals, no final newline), written atomically. */
int ft_pref_predict(ft_pref *p, ft_batch_source *src, const char *path, int64_t *n_pairs);

#endif
