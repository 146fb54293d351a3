/* test_generate.c - greedy generation equals transformers' generate
 * (tests/fixtures/generate/greedy.json, from make_generate_fixtures.py)
 * token for token, batched and unbatched, with and without a PEFT
 * adapter; seeded sampling is reproducible. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gen/generate.h"
#include "model/model.h"
#include "util/error.h"

static json_t *fixture;

static int same_tokens(const ft_i32vec *got, const json_t *want)
{
	if (json_array_size(want) != got->n) return 0;
	for (size_t i = 0; i < got->n; i++)
		if (json_integer_value(json_array_get(want, i)) != got->v[i]) return 0;
	return 1;
}

static void check_case(const char *key, const char *model_dir, const char *adapter, int32_t eos)
{
	ft_tune_opts o = {0};
	o.type = adapter ? FT_FT_LORA : FT_FT_FULL;   /* an adapter needs LoRA slots */
	o.lora_rank = 8, o.lora_alpha = 16, o.lora_targets = FT_MOD_Q | FT_MOD_V;
	ft_model *m = ft_model_load(model_dir, &o);
	if (!ok(m != NULL, "%s loads", key)) return;
	int arc = adapter ? ft_model_load_adapter(m, adapter) : 0;
	if (adapter && !ok(arc == 0, "%s: adapter loads (%s)", key, arc ? ft_errmsg() : "")) {
		ft_model_free(m);
		return;
	}
	json_t *prompts = json_object_get(fixture, "prompts");
	size_t n = json_array_size(prompts);
	ft_i32vec *in = ft_xcalloc(n, sizeof *in), *out = ft_xcalloc(n, sizeof *out);
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < json_array_size(json_array_get(prompts, i)); j++)
			ft_i32vec_push(&in[i], (int32_t)json_integer_value(json_array_get(json_array_get(prompts, i), j)));
	ft_gen_opts g;
	ft_gen_defaults(&g);
	g.sampling.do_sample = 0;
	g.max_new_tokens = (int)json_integer_value(json_object_get(fixture, "max_new_tokens"));
	g.stop_ids = &eos, g.n_stop = 1;
	json_t *want = json_object_get(json_object_get(fixture, "cases"), key);
	const char *modes[2] = {"unbatched", "batched"};
	for (int b = 0; b < 2; b++) {
		g.batch_size = b ? (int)n : 1;
		int rc = ft_generate(m, in, n, &g, out, NULL, NULL), same = rc == 0;
		for (size_t i = 0; same && i < n; i++)
			same = same_tokens(&out[i], json_array_get(json_object_get(want, modes[b]), i));
		ok(same, "%s: greedy %s equals transformers' generate", key, modes[b]);
	}
	/* sampling: same seed, same tokens; batching does not change them */
	g.sampling.do_sample = 1, g.seed = 9, g.batch_size = 1;
	ft_i32vec *again = ft_xcalloc(n, sizeof *again);
	int rc = ft_generate(m, in, n, &g, out, NULL, NULL);
	g.batch_size = (int)n;
	rc |= ft_generate(m, in, n, &g, again, NULL, NULL);
	int same = rc == 0;
	for (size_t i = 0; same && i < n; i++)
		same = out[i].n == again[i].n && !memcmp(out[i].v, again[i].v, out[i].n * sizeof(int32_t));
	ok(same, "%s: seeded sampling is reproducible and independent of batching", key);
	for (size_t i = 0; i < n; i++) { ft_i32vec_free(&in[i]); ft_i32vec_free(&out[i]); ft_i32vec_free(&again[i]); }
	free(in); free(out); free(again);
	ft_model_free(m);
}

int main(void)
{
	json_error_t e;
	fixture = json_load_file("tests/fixtures/generate/greedy.json", 0, &e);
	if (!ok(fixture != NULL, "fixture loads")) return tap_done();
	check_case("tiny-llama", "tests/fixtures/models/tiny-llama", NULL, 2);
	check_case("tiny-qwen2", "tests/fixtures/models/tiny-qwen2", NULL, 2);
	check_case("tiny-llama+llama-r4", "tests/fixtures/models/tiny-llama", "tests/fixtures/merge/llama-r4/adapter", 2);
	ft_gen_opts g;
	ft_gen_defaults(&g);
	g.max_new_tokens = 0;
	ok(ft_generate(NULL, NULL, 0, &g, NULL, NULL, NULL) == -1 && strstr(ft_errmsg(), "max_new_tokens"), "max_new_tokens 0 refused");
	json_decref(fixture);
	return tap_done();
}
