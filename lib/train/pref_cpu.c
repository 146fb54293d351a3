/* pref_cpu.c - the preference stages' model interface (train/pref.h's
 * ft_pref_model) over ft's CPU model: each hook is the model's own
 * function (model/model_pref.h).  The device's is lib/train/cuda_pref.c. */
#include "model/model_pref.h"
#include "train/pref.h"

static int cpu_logps_fwd(void *m, const ft_batch *b, int train, float *lp, float *lmean)
{
	return ft_model_logps_forward(m, b, train, lp, lmean);
}
static int cpu_logps_bwd(void *m, const ft_batch *b, const float *d)
{
	return ft_model_logps_backward(m, b, d);
}
static void cpu_adapters(void *m, int on) { ft_model_set_adapters(m, on); }
static int cpu_temp(void *m, float t) { return ft_model_set_logp_temperature(m, t); }
static void cpu_entropy(void *m, float *ent) { ft_model_set_logp_entropy(m, ent); }
static int cpu_value_fwd(void *m, const ft_batch *b, int train, const int32_t *pos, int n,
			 const float *vw, float vb, float p_drop, uint64_t seed, float *hd, float *score)
{
	return ft_model_value_forward(m, b, train, pos, n, vw, vb, p_drop, seed, hd, score);
}
static int cpu_value_bwd(void *m, const ft_batch *b, const int32_t *pos, int n, const float *vw,
			 float p_drop, uint64_t seed, const float *hd, const float *ds, float *dvw,
			 double *dvb)
{
	return ft_model_value_backward(m, b, pos, n, vw, p_drop, seed, hd, ds, dvw, dvb);
}

ft_pref_model ft_pref_model_of(ft_model *m)
{
	const ft_config *c = ft_model_config(m);
	ft_pref_model pm = { .base = ft_train_model_of(m), .hidden_size = c->hidden_size,
			     .vocab_size = c->vocab_size, .has_adapters = ft_model_has_adapters(m),
			     .logps_forward = cpu_logps_fwd, .logps_backward = cpu_logps_bwd,
			     .set_adapters = cpu_adapters, .value_forward = cpu_value_fwd,
			     .value_backward = cpu_value_bwd, .set_logp_temperature = cpu_temp,
			     .set_logp_entropy = cpu_entropy };
	return pm;
}
