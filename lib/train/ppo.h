/* ppo.h - the arithmetic of PPO as TRL's classic PPOTrainer (trl 0.9.x,
 * the version LLaMA-Factory's CustomPPOTrainer pins; TRL 1.x dropped the
 * class, so this is a transcription of 0.9.6's trl/trainer/ppo_trainer.py
 * and trl/core.py, not of anything installed here).
 *
 * Responses are rows of a [B, T] grid; mask[b*T + t] is 1 on the row's
 * response tokens (logprobs of the token at t given the tokens before it)
 * and 0 on padding.  Everything is float (the model's dtype), with sums in
 * double so the result does not depend on the order of rows.
 *
 * These are the pieces a stage driver calls around the model: the
 * KL-penalised per-token rewards, GAE, the whitening, the clipped losses
 * with their gradients with respect to the new logprobs and value
 * predictions, the adaptive KL controller and the running score moments
 * (--ppo_score_norm).
 */
#ifndef FT_PPO_H
#define FT_PPO_H

#include <stddef.h>

typedef struct {
	double gamma;            /* 1.0 */
	double lam;              /* 0.95 */
	double cliprange;        /* 0.2 */
	double cliprange_value;  /* 0.2 */
	double vf_coef;          /* 0.1 */
	double ratio_threshold;  /* 10.0: a mini-batch whose mean ratio exceeds it is skipped */
	double init_kl_coef;     /* 0.2 */
	double target;           /* --ppo_target, 6.0 */
	double horizon;          /* 10000 */
	int adap_kl_ctrl;        /* 1 */
	int whiten_rewards;      /* --ppo_whiten_rewards, 0 */
	int score_norm;          /* --ppo_score_norm: use_score_scaling and use_score_norm */
} ft_ppo_opts;

void ft_ppo_opts_default(ft_ppo_opts *o);

/* core.py's masked_mean, masked_var (unbiased: Bessel's correction over
 * the mask's count) and masked_whiten ((x - mean) / sqrt(var + 1e-8), the
 * mean added back when !shift_mean).  masked_var and masked_whiten fail
 * (-1) when the mask holds fewer than two tokens, as TRL raises. */
double ft_ppo_masked_mean(const float *x, const float *mask, size_t n);
int ft_ppo_masked_var(const float *x, const float *mask, size_t n, double *var);
int ft_ppo_masked_whiten(float *x, const float *mask, size_t n, int shift_mean);

/* compute_rewards with kl_penalty "kl": rewards = -kl_coef (logp - ref)
 * on every position, the score added at each row's last masked position.
 * kl_out (NULL or [B*T]) receives logp - ref.  Fails on a row with no
 * response token. */
int ft_ppo_rewards(const float *score, const float *logp, const float *ref_logp,
		   const float *mask, int B, int T, double kl_coef, float *rewards, float *kl_out);

/* compute_advantages: values and rewards masked, rewards whitened without
 * the mean shift when whiten_rewards, GAE backwards over T (the next value
 * 0 past the end), returns = advantages + values, advantages whitened. */
int ft_ppo_advantages(const ft_ppo_opts *o, const float *values, const float *rewards,
		      const float *mask, int B, int T, float *adv, float *returns);

/* The statistics of one mini-batch's loss (TRL's stats names). */
typedef struct {
	double loss_policy, loss_value, loss_total;
	double policy_approxkl, policy_policykl, policy_clipfrac, policy_advantages_mean;
	double returns_mean, returns_var, val_vpred, val_error, val_clipfrac, val_mean, val_var;
	double ratio_mean;
	int skipped;             /* mean ratio > ratio_threshold: loss and gradients zeroed */
} ft_ppo_loss_stats;

/* PPOTrainer.loss on n = B*T positions: the clipped policy loss on the
 * ratio exp(logp - old_logp), the clipped value loss (0.5 mean of the
 * larger squared error), loss = pg + vf_coef vf.  dlogp and dvpred (NULL
 * or [n]) receive d loss / d logp and d loss / d vpred as torch's autograd
 * gives them (torch.maximum/minimum split a tie's gradient in half; clamp
 * passes it on the closed range).  returns/mean and /var and val/mean and
 * /var are masked (TRL 0.9.6); the variances are NaN with one token (TRL's
 * 0 * 1/0).  Fails when the mask is empty. */
int ft_ppo_loss(const ft_ppo_opts *o, const float *old_logp, const float *values,
		const float *logp, const float *vpred, const float *mask, const float *adv,
		const float *returns, size_t n, ft_ppo_loss_stats *st, float *dlogp,
		float *dvpred);

/* AdaptiveKLController (or the fixed one when !adap_kl_ctrl). */
typedef struct {
	double value;
	double target, horizon;
	int adaptive;
} ft_ppo_klctl;

void ft_ppo_klctl_init(ft_ppo_klctl *k, const ft_ppo_opts *o);
/* value *= 1 + clip(current / target - 1, -0.2, 0.2) * n_steps / horizon */
void ft_ppo_klctl_update(ft_ppo_klctl *k, double current, double n_steps);

/* core.py's RunningMoments (mean 0, std 1, var 1, count 1e-24 at the
 * start), for --ppo_score_norm. */
typedef struct {
	double mean, std, var, count;
} ft_ppo_moments;

void ft_ppo_moments_init(ft_ppo_moments *m);
/* Fold n scores in; returns -1 for n < 2 (the unbiased std of the batch
 * divides by n - 1). */
int ft_ppo_moments_update(ft_ppo_moments *m, const float *x, size_t n);
/* step()'s use_score_scaling with use_score_norm:
 * score = (score - mean) / (std + FLT_EPSILON), after the update. */
int ft_ppo_normalize_scores(ft_ppo_moments *m, float *score, size_t n);
/* The two halves, for several processes (TRL's get_global_statistics
 * gives the update every process's scores): fold in cnt scores of mean
 * and biased variance var; then normalise this process's n scores. */
void ft_ppo_moments_fold(ft_ppo_moments *m, double mean, double var, double cnt);
void ft_ppo_scale_scores(const ft_ppo_moments *m, float *score, size_t n);

#endif
