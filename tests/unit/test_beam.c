/* test_beam.c - beam search equals transformers' generate(num_beams > 1)
 * (tests/fixtures/generate/beam.json, from make_beam_fixtures.py) token
 * for token on tiny-llama and tiny-qwen2, for every case (num_beams 2
 * and 4, length_penalty 0.5/1/2, early_stopping false/true/never, a
 * repetition penalty, two eos ids), one prompt at a time and all five
 * together; the scores within SCORE_TOL; the refusals. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gen/beam.h"
#include "model/model.h"
#include "util/error.h"

/* A score is a sum of up to 10 float32 log-probabilities (each about -5)
 * divided by len^lp.  ft's logits differ from torch's by a few 1e-6
 * relative (other summation orders: test_infer's 1e-4 bound is for the
 * whole forward); 10 terms of |logp| <= 6 with 1e-6 relative error each
 * are 6e-5 at most, so 1e-4 absolute.  Measured: printed below. */
#define SCORE_TOL 1e-4

static json_t *fixture;
static double worst_score_err;

static int same_tokens(const ft_i32vec *got, const json_t *want)
{
	if (json_array_size(want) != got->n) return 0;
	for (size_t i = 0; i < got->n; i++)
		if (json_integer_value(json_array_get(want, i)) != got->v[i]) return 0;
	return 1;
}

static void case_opts(const json_t *c, ft_gen_opts *g, int32_t *eos)
{
	ft_gen_defaults(g);
	g->sampling.do_sample = 0;
	g->max_new_tokens = (int)json_integer_value(json_object_get(fixture, "max_new_tokens"));
	g->num_beams = (int)json_integer_value(json_object_get(c, "num_beams"));
	g->length_penalty = json_real_value(json_object_get(c, "length_penalty"));
	g->sampling.repetition_penalty = json_real_value(json_object_get(c, "repetition_penalty"));
	ft_early_stopping_parse(json_string_value(json_object_get(c, "early_stopping")), &g->early_stopping);
	json_t *e = json_object_get(c, "eos");
	g->n_stop = json_array_size(e);
	for (size_t i = 0; i < g->n_stop; i++) eos[i] = (int32_t)json_integer_value(json_array_get(e, i));
	g->stop_ids = eos;
}

static void check_case(ft_model *m, const char *name, size_t ci, const json_t *c,
		       const ft_i32vec *in, size_t n)
{
	ft_gen_opts g;
	int32_t eos[4];
	case_opts(c, &g, eos);
	ft_i32vec *out = ft_xcalloc(n, sizeof *out);
	float *score = ft_xcalloc(n, sizeof *score);
	for (int b = 0; b < 2; b++) {
		g.batch_size = b ? (int)n : 1;
		int rc = ft_generate(m, in, n, &g, out, NULL, NULL), same = rc == 0;
		rc = rc || ft_beam_search(m, in, n, &g, out, score, NULL, NULL);
		same = same && rc == 0;
		double err = 0;
		for (size_t i = 0; same && i < n; i++) {
			same = same_tokens(&out[i], json_array_get(json_object_get(c, "tokens"), i));
			double d = fabs(score[i] - json_real_value(json_array_get(json_object_get(c, "scores"), i)));
			if (d > err) err = d;
		}
		if (err > worst_score_err) worst_score_err = err;
		ok(same, "%s case %zu (beams %d, lp %g, early_stopping %s, rep %g, %zu eos), batch %d: "
		   "transformers' tokens", name, ci, g.num_beams, g.length_penalty,
		   ft_early_stopping_name(g.early_stopping), g.sampling.repetition_penalty, g.n_stop, g.batch_size);
		ok(same && err <= SCORE_TOL, "%s case %zu, batch %d: scores within %g (%.2g)", name, ci,
		   g.batch_size, SCORE_TOL, err);
	}
	for (size_t i = 0; i < n; i++) ft_i32vec_free(&out[i]);
	free(out);
	free(score);
}

static void check_model(const char *name)
{
	char dir[256];
	snprintf(dir, sizeof dir, "tests/fixtures/models/%s", name);
	ft_tune_opts o = { .type = FT_FT_FULL };
	ft_model *m = ft_model_load(dir, &o);
	if (!ok(m != NULL, "%s loads", name)) return;
	json_t *prompts = json_object_get(fixture, "prompts");
	size_t n = json_array_size(prompts);
	ft_i32vec *in = ft_xcalloc(n, sizeof *in);
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < json_array_size(json_array_get(prompts, i)); j++)
			ft_i32vec_push(&in[i], (int32_t)json_integer_value(json_array_get(json_array_get(prompts, i), j)));
	json_t *cases = json_object_get(json_object_get(json_object_get(fixture, "models"), name), "cases");
	for (size_t ci = 0; ci < json_array_size(cases); ci++)
		check_case(m, name, ci, json_array_get(cases, ci), in, n);
	for (size_t i = 0; i < n; i++) ft_i32vec_free(&in[i]);
	free(in);
	ft_model_free(m);
}

static int refused(ft_gen_opts *g, const char *what)
{
	return ft_generate(NULL, NULL, 0, g, NULL, NULL, NULL) == -1 && strstr(ft_errmsg(), what);
}

static void check_refusals(void)
{
	ft_gen_opts g;
	ft_gen_defaults(&g);
	g.num_beams = 4;   /* do_sample is LLaMA-Factory's default */
	ok(refused(&g, "beam sampling"), "num_beams with do_sample refused: %s", ft_errmsg());
	g.sampling.do_sample = 0, g.num_beams = 0;
	ok(refused(&g, "num_beams must be at least 1"), "num_beams 0 refused");
	g.num_beams = -2;
	ok(refused(&g, "num_beams must be at least 1"), "num_beams -2 refused");
	g.num_beams = 2, g.length_penalty = NAN;
	ok(refused(&g, "length_penalty"), "length_penalty nan refused");
	int e = 0;
	ok(ft_early_stopping_parse("sometimes", &e) == -1 && ft_early_stopping_parse("never", &e) == 0 &&
	   e == FT_EARLY_NEVER, "early_stopping parses true/false/never only");
	g.length_penalty = 1.0;
	ft_decoder d = ft_cpu_decoder(NULL);
	ok(ft_generate_on(&d, NULL, 0, &g, NULL, NULL, NULL) == -1 && strstr(ft_errmsg(), "cannot copy KV-cache rows"),
	   "a decoder without a KV copy refuses num_beams > 1");
}

int main(void)
{
	json_error_t e;
	fixture = json_load_file("tests/fixtures/generate/beam.json", 0, &e);
	if (!ok(fixture != NULL, "fixture loads")) return tap_done();
	check_model("tiny-llama");
	check_model("tiny-qwen2");
	printf("# largest score difference from transformers: %.3g\n", worst_score_err);
	check_refusals();
	json_decref(fixture);
	return tap_done();
}
