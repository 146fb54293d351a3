/* ppo_model.c - PPO's forward and backward passes (ppo_model.h) over
 * model_pref.h's log-probabilities and value head. */
#include "train/ppo_model.h"
#include "model/model_pref.h"
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

int ft_ppo_forward(ft_model *m, const ft_batch *b, int train, const float *vw, float vb,
		   float p_drop, uint64_t seed, float *logp, float *values)
{
	int n = b->B * b->T;
	if (ft_model_logps_forward(m, b, train, logp, NULL) < 0) return -1;
	int32_t *pos = all_positions(n);
	float *hd = ft_xmalloc((size_t)n * ft_model_config(m)->hidden_size * sizeof *hd);
	int rc = ft_model_value_forward(m, b, train, pos, n, vw, vb, p_drop, seed, hd, values);
	free(hd);
	free(pos);
	return rc;
}

int ft_ppo_backward(ft_model *m, const ft_batch *b, const float *vw, float vb, float p_drop,
		    uint64_t seed, const float *dlogp, const float *dvalues, float *dvw, double *dvb)
{
	int n = b->B * b->T;
	float *scratch = ft_xmalloc((size_t)n * sizeof *scratch);
	int rc = ft_model_logps_forward(m, b, 1, scratch, NULL);
	if (rc == 0) rc = ft_model_logps_backward(m, b, dlogp);
	int32_t *pos = all_positions(n);
	float *hd = ft_xmalloc((size_t)n * ft_model_config(m)->hidden_size * sizeof *hd);
	if (rc == 0) rc = ft_model_value_forward(m, b, 1, pos, n, vw, vb, p_drop, seed, hd, scratch);
	if (rc == 0) rc = ft_model_value_backward(m, b, pos, n, vw, p_drop, seed, hd, dvalues, dvw, dvb);
	free(hd);
	free(pos);
	free(scratch);
	return rc;
}
