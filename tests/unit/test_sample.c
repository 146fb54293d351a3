/* test_sample.c - next-token selection: greedy, repetition penalty,
 * temperature/top-k/top-p as transformers' processors, seeded draws. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gen/sample.h"
#include "util/error.h"

static int32_t pick(const ft_sampling *s, const float *in, size_t v, ft_rng *rng)
{
	float logits[16];
	memcpy(logits, in, v * sizeof *in);
	void *scratch = ft_xmalloc(ft_sample_scratch_size(v));
	int32_t t = ft_sample_next(s, logits, v, NULL, 0, rng, scratch);
	free(scratch);
	return t;
}

int main(void)
{
	ft_sampling s;
	ft_rng rng;
	ft_rng_seed(&rng, 1);
	const float logits[5] = {0.5f, 2.0f, -1.0f, 1.9f, 0.0f};

	ft_sampling_defaults(&s);
	ok(s.do_sample && s.temperature == 0.95 && s.top_p == 0.7 && s.top_k == 50, "LLaMA-Factory defaults");
	s.do_sample = 0;
	ok(pick(&s, logits, 5, &rng) == 1, "greedy takes the argmax");

	float l2[5];
	memcpy(l2, logits, sizeof l2);
	int32_t ctx[3] = {1, 1, 2};
	ft_apply_repetition_penalty(l2, ctx, 3, 2.0);
	ok(l2[1] == 1.0f && l2[2] == -2.0f && l2[0] == 0.5f, "repetition penalty divides positives, multiplies negatives, once per id");

	s.do_sample = 1; s.temperature = 1.0; s.top_p = 1.0; s.top_k = 1;
	int all_top = 1;
	for (int i = 0; i < 50; i++) all_top &= pick(&s, logits, 5, &rng) == 1;
	ok(all_top, "top_k=1 always picks the best");

	s.top_k = 0; s.top_p = 0.3;
	all_top = 1;
	for (int i = 0; i < 50; i++) all_top &= pick(&s, logits, 5, &rng) == 1;
	ok(all_top, "small top_p keeps only the most likely token");

	/* Full distribution: frequencies follow the softmax. */
	s.top_p = 1.0; s.top_k = 0;
	int counts[5] = {0};
	const int draws = 20000;
	for (int i = 0; i < draws; i++) counts[pick(&s, logits, 5, &rng)]++;
	double z = 0, p[5];
	for (int i = 0; i < 5; i++) z += p[i] = exp(logits[i]);
	double worst = 0;
	for (int i = 0; i < 5; i++) worst = fmax(worst, fabs(counts[i] / (double)draws - p[i] / z));
	ok(worst < 0.02, "sample frequencies match the softmax (max deviation %.4f)", worst);

	/* top_k = 2 keeps ids 1 and 3 only. */
	s.top_k = 2;
	int only = 1;
	for (int i = 0; i < 200; i++) { int32_t t = pick(&s, logits, 5, &rng); only &= t == 1 || t == 3; }
	ok(only, "top_k=2 draws only from the two best");

	ft_rng a, b;
	ft_rng_seed(&a, 42); ft_rng_seed(&b, 42);
	int same = 1;
	for (int i = 0; i < 100; i++) same &= pick(&s, logits, 5, &a) == pick(&s, logits, 5, &b);
	ok(same, "same seed, same draws");

	s.temperature = 0;
	ok(ft_sampling_check(&s) == -1 && strstr(ft_errmsg(), "temperature"), "temperature 0 with sampling refused");
	s.temperature = 1; s.top_p = 1.5;
	ok(ft_sampling_check(&s) == -1 && strstr(ft_errmsg(), "top_p"), "top_p > 1 refused");
	return tap_done();
}
