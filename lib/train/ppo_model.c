/* ppo_model.c - PPO's forward and backward passes (ppo_model.h) over
 * ft_pref_model's log-probabilities and value head (train/pref.h: the
 * CPU model's model_pref.h calls, or a device binding's). */
#include "train/ppo_model.h"
#include "util/error.h"

#include <stdlib.h>

void ft_ppo_mask(const ft_batch *b, float *mask)
{
	for (int r = 0; r < b->B; r++)
		for (int t = 0; t < b->T; t++) {
			size_t i = (size_t)r * b->T + t;
			mask[i] = t + 1 < b->T && b->labels[i + 1] != FT_IGNORE_INDEX ? 1.0f : 0.0f;
		}
}

static int32_t *all_positions(int n)
{
	int32_t *pos = ft_xmalloc((size_t)n * sizeof *pos);
	for (int i = 0; i < n; i++) pos[i] = i;
	return pos;
}

int ft_ppo_forward_on(const ft_pref_model *pm, const ft_batch *b, int train, const float *vw, float vb,
		      float p_drop, uint64_t seed, float *logp, float *values)
{
	int n = b->B * b->T;
	void *m = pm->base.self;
	if (pm->logps_forward(m, b, train, logp, NULL) < 0) return -1;
	if (!values) return 0;
	int32_t *pos = all_positions(n);
	float *hd = ft_xmalloc((size_t)n * pm->hidden_size * sizeof *hd);
	int rc = pm->value_forward(m, b, train, pos, n, vw, vb, p_drop, seed, hd, values);
	free(hd);
	free(pos);
	return rc;
}

int ft_ppo_backward_on(const ft_pref_model *pm, const ft_batch *b, const float *vw, float vb, float p_drop,
		       uint64_t seed, const float *dlogp, const float *dvalues, float *dvw, double *dvb)
{
	int n = b->B * b->T;
	void *m = pm->base.self;
	float *scratch = ft_xmalloc((size_t)n * sizeof *scratch);
	int rc = pm->logps_forward(m, b, 1, scratch, NULL);
	if (rc == 0) rc = pm->logps_backward(m, b, dlogp);
	int32_t *pos = all_positions(n);
	float *hd = ft_xmalloc((size_t)n * pm->hidden_size * sizeof *hd);
	if (rc == 0) rc = pm->value_forward(m, b, 1, pos, n, vw, vb, p_drop, seed, hd, scratch);
	if (rc == 0) rc = pm->value_backward(m, b, pos, n, vw, p_drop, seed, hd, dvalues, dvw, dvb);
	free(hd);
	free(pos);
	free(scratch);
	return rc;
}

int ft_ppo_forward(ft_model *m, const ft_batch *b, int train, const float *vw, float vb,
		   float p_drop, uint64_t seed, float *logp, float *values)
{
	ft_pref_model pm = ft_pref_model_of(m);
	return ft_ppo_forward_on(&pm, b, train, vw, vb, p_drop, seed, logp, values);
}

int ft_ppo_backward(ft_model *m, const ft_batch *b, const float *vw, float vb, float p_drop,
		    uint64_t seed, const float *dlogp, const float *dvalues, float *dvw, double *dvb)
{
	ft_pref_model pm = ft_pref_model_of(m);
	return ft_ppo_backward_on(&pm, b, vw, vb, p_drop, seed, dlogp, dvalues, dvw, dvb);
}
