/* grpo.h - the arithmetic of GRPO as TRL 1.16's GRPOTrainer
 * (trl/trainer/grpo_trainer.py: _generate_and_score_completions' group
 * advantages, _compute_loss' clipped objective, KL and normalisations).
 *
 * Completions are rows of a [B, T] grid in the PPO layout (ppo_model.h):
 * mask[b*T + t] is 1 where logp[b*T + t] is the log-probability of a
 * completion token (the token at t + 1), 0 elsewhere.  Element-wise
 * operations run in float as torch's float32 tensors, sums in double.
 */
#ifndef FT_GRPO_H
#define FT_GRPO_H

#include <stddef.h>

/* --loss_type: TRL 1.16's default is dapo */
enum { FT_GRPO_LOSS_GRPO, FT_GRPO_LOSS_BNPO, FT_GRPO_LOSS_DR_GRPO, FT_GRPO_LOSS_DAPO };
/* --scale_rewards: group (true, the default), batch, none (false) */
enum { FT_GRPO_SCALE_GROUP, FT_GRPO_SCALE_BATCH, FT_GRPO_SCALE_NONE };

typedef struct {
	int loss_type;              /* FT_GRPO_LOSS_DAPO */
	int scale_rewards;          /* FT_GRPO_SCALE_GROUP */
	double epsilon_low;         /* --epsilon, 0.2 */
	double epsilon_high;        /* --epsilon_high, default --epsilon */
	double beta;                /* 0.0: no KL term, no reference pass */
	int max_completion_length;  /* dr_grpo's constant denominator (512) */
	int bias_correction_kl;     /* use_bias_correction_kl (true): the k3 term times the ratio */
	double top_entropy_quantile;  /* 1.0: every token; < 1: the policy term only on the tokens at or
				       * above the micro-batch's (1 - q) entropy quantile */
} ft_grpo_opts;

void ft_grpo_opts_default(ft_grpo_opts *o);
/* The enum value of a --loss_type / --scale_rewards word; -1 when unknown
 * (TRL's other loss types are not built). */
int ft_grpo_loss_type(const char *s);
int ft_grpo_scale(const char *s);
const char *ft_grpo_loss_name(int loss_type);

/* rewards[i] = sum_k w[k] per_func[i*K + k] (sum_then_normalize) and the
 * advantages of N = groups * G completions, a group being G consecutive
 * rows: (r - group mean) / (std + 1e-4) with the group's (or, batch, the
 * whole batch's) unbiased std; none: r - group mean.  frac_zero_std (NULL
 * or out) is the fraction of rows whose std is 0 (frac_reward_zero_std).
 * Fails for G < 2 or N not a multiple of G. */
int ft_grpo_advantages(const ft_grpo_opts *o, const float *per_func, const float *w, int K, int N,
		       int G, float *rewards, float *adv, double *frac_zero_std);

/* The statistics TRL records per micro-batch. */
typedef struct {
	double loss;                /* the loss as backpropagated (after the accumulation normaliser) */
	double kl;                  /* masked mean of the per-token KL (beta > 0) */
	double low_mean, high_mean, region_mean;  /* clip_ratio/...: masked means */
	double low_min, high_max;   /* over the rows' masked means */
	double entropy;             /* masked mean of the per-token entropy (ent given), else NaN */
	double n_tokens;
	/* the masked sums behind the means (kl, entropy, low, high, region),
	 * for means over several processes' micro-batches */
	double sums[5];
} ft_grpo_loss_stats;

/* get_high_entropy_mask: emask[i] = 1 where mask[i] != 0 and ent[i] >=
 * torch.quantile(the masked entropies, q) (linear interpolation in float,
 * as torch), else 0; all 0 when no position is masked in.  n positions. */
void ft_grpo_entropy_mask(const float *ent, const float *mask, size_t n, double q, float *emask);

/* _compute_loss on B rows of T positions.  old: the old logprobs, NULL
 * when they are the detached current ones (num_iterations 1); ref: the
 * reference's, used when beta != 0; ent: the per-token entropies of the
 * same forward (NULL: no entropy statistic; needed when
 * top_entropy_quantile < 1, whose mask multiplies the clipped term
 * before the KL is added, as TRL's); adv [B].  accum: the gradient
 * accumulation steps (grpo, bnpo, dr_grpo divide by it); num_items: the
 * completion tokens of the whole generation batch (dapo's normaliser).
 * dlogp (NULL or [B*T]) receives d loss / d logp as autograd gives it
 * (torch.min's ties split in half, clamp passing on the closed range).
 * Fails on B < 1, or without ent when the entropy mask needs it. */
int ft_grpo_loss(const ft_grpo_opts *o, const float *logp, const float *old, const float *ref,
		 const float *ent, const float *mask, const float *adv, int B, int T, double accum, double num_items,
		 ft_grpo_loss_stats *st, float *dlogp);

#endif
