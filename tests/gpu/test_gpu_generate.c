/* test_gpu_generate.c - the GPU decoder (ft_cuda_infer_*, lib/cuda/infer.cu)
 * against the CPU's (lib/model/infer.c).  Built by `make gpu-tests`, run by
 * tests/gpu/run.sh from the repository root; without a CUDA device it
 * prints a TAP skip and exits 0.
 *
 * Models: the tiny fixtures (tiny-llama, tiny-qwen2 with q/k/v biases,
 * tiny-llama with the llama-r4 LoRA adapter applied on the fly), and
 * random mid-size Llama and Mistral (sliding window 200) models with
 * prompts of up to 300 tokens, so the decode kernel's key loop runs over
 * more positions than a block has threads and the window cuts in.
 *
 * Checks, each against the CPU path on the same ft_model:
 *  - last-position logits of the batched prefill (3 prompts of different
 *    lengths, right-padded through the training attention);
 *  - the same logits when the prompts are fed one token per call (the
 *    decode kernel over the cache, rows interleaved);
 *  - 24 greedy decoding steps fed the CPU's tokens: every step's logits;
 *  - fp32 only: greedy ft_generate of 24 new tokens (no stop id) token-equal
 *    to the CPU's, batched (3 rows) and one prompt at a time.  (The CPU's
 *    greedy output equals transformers' on these fixtures: test_generate.)
 *  - refusals: a plan over the memory limit names the needed and available
 *    bytes; an out-of-vocabulary token is refused before any work.
 *
 * Tolerances, max |gpu - cpu| / max |cpu| over each logits block:
 *   fp32 1e-4: the same operations in another summation order (cuBLAS
 *        without TF32 vs the CPU's sgemm, tree reductions in the norms and
 *        softmax): fp32 rounding, ~1e-6 here, with margin; the training
 *        parity tests use the same bound.
 *   bf16 / fp16 3e-2 (tiny), 5e-2 (mid-size): weights, matmul inputs and
 *        the q|k|v outputs (so the KV cache) are rounded to 8 (bf16) or 11
 *        (fp16) significant bits, 4e-3 relative
 *        per rounding, compounding over the layers; the training parity
 *        tests bound the tiny logits by 3e-2 for the same reason.  Greedy
 *        tokens are not compared in half precision (near-ties may flip).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gpu_test.h"
#include "cuda/ft_cuda.h"
#include "gen/generate.h"
#include "model/device.h"
#include "model/infer.h"
#include "model/model.h"
#include "util/error.h"

#define NEW 24
#define NP 3

typedef struct {
	ft_i32vec p[NP];
	int longest;
} prompts_t;

static void prompts_fixed(prompts_t *pr)
{
	/* tests/fixtures/generate/greedy.json's prompts */
	static const int32_t a[] = { 5, 17, 99, 3, 42, 8, 120 }, b[] = { 200, 7 },
			     c[] = { 33, 33, 14, 250, 61 };
	memset(pr, 0, sizeof *pr);
	ft_i32vec_append(&pr->p[0], a, 7);
	ft_i32vec_append(&pr->p[1], b, 2);
	ft_i32vec_append(&pr->p[2], c, 5);
	pr->longest = 7;
}

static void prompts_long(prompts_t *pr, int V)
{
	static const int len[NP] = { 300, 150, 7 };
	unsigned x = 7;
	memset(pr, 0, sizeof *pr);
	for (int k = 0; k < NP; k++)
		for (int i = 0; i < len[k]; i++) {
			x = x * 1103515245u + 12345u;
			ft_i32vec_push(&pr->p[k], (int32_t)((x >> 8) % (unsigned)V));
		}
	pr->longest = 300;
}

static void prompts_free(prompts_t *pr)
{
	for (int k = 0; k < NP; k++)
		ft_i32vec_free(&pr->p[k]);
}

static ft_cuda_infer *device(ft_model *m, ft_cuda_precision prec, int rows, int cap, int mp)
{
	ft_cuda_infer_opts o = { .precision = prec, .rows = rows, .cap = cap, .max_prompt = mp };
	ft_cuda_infer *c = ft_cuda_infer_new(m, &o);
	if (!c)
		printf("# ft_cuda_infer_new: %s\n", ft_errmsg());
	return c;
}

static int argmax(const float *x, int V)
{
	int b = 0;
	for (int i = 1; i < V; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* All prompts in one call, logits of each last token. */
static void prefill_call(const prompts_t *pr, int32_t *tok, int *rows, int *want, int *n)
{
	*n = 0;
	for (int k = 0; k < NP; k++)
		for (size_t i = 0; i < pr->p[k].n; i++, (*n)++) {
			tok[*n] = pr->p[k].v[i];
			rows[*n] = k;
			want[*n] = i + 1 == pr->p[k].n;
		}
}

/* The prompts one token per call, rows interleaved; the logits of each
 * prompt's last token into lg[k]. */
static int fed_one_by_one(ft_cuda_infer *c, const prompts_t *pr, int V, float *lg)
{
	for (int i = 0; i < pr->longest; i++)
		for (int k = 0; k < NP; k++) {
			if ((size_t)i >= pr->p[k].n)
				continue;
			int want = (size_t)i + 1 == pr->p[k].n;
			if (ft_cuda_infer_forward(c, &pr->p[k].v[i], &k, 1, &want,
						  lg + (size_t)k * V) < 0)
				return -1;
		}
	return 0;
}

static void logits_case(ft_model *m, const char *what, const prompts_t *pr,
			ft_cuda_precision prec, double tol)
{
	int V = ft_model_config(m)->vocab_size, cap = pr->longest + NEW, total = 0;
	for (int k = 0; k < NP; k++)
		total += (int)pr->p[k].n;
	int32_t *tok = malloc(total * sizeof *tok);
	int *rows = malloc(total * sizeof *rows), *want = malloc(total * sizeof *want), n;
	size_t nl = (size_t)NP * V;
	float *cpu = malloc(nl * sizeof(float)), *gpu = malloc(nl * sizeof(float));
	float *one = malloc(nl * sizeof(float));
	ft_kvcache *kv = ft_kvcache_new(m, NP, cap);
	ft_cuda_infer *c = device(m, prec, NP, cap, pr->longest);
	prefill_call(pr, tok, rows, want, &n);
	int rc = !c || ft_infer_forward(m, kv, tok, rows, n, want, cpu) < 0 ||
		 ft_cuda_infer_forward(c, tok, rows, n, want, gpu) < 0;
	double e = rc ? INFINITY : max_rel(gpu, cpu, nl);
	ok(e <= tol, "%s %s: prefill last-position logits within %g of the CPU (max rel %.3g)%s%s",
	   what, pname(prec), tol, e, rc ? ": " : "", rc ? ft_errmsg() : "");
	/* decoding: both fed the CPU's greedy tokens */
	double worst = 0;
	for (int s = 0; rc == 0 && s < NEW; s++) {
		int32_t nt[NP];
		int nr[NP];
		for (int k = 0; k < NP; k++)
			nt[k] = argmax(cpu + (size_t)k * V, V), nr[k] = k;
		rc = ft_infer_forward(m, kv, nt, nr, NP, NULL, cpu) < 0 ||
		     ft_cuda_infer_forward(c, nt, nr, NP, NULL, gpu) < 0;
		if (rc == 0)
			worst = fmax(worst, max_rel(gpu, cpu, nl));
	}
	ok(rc == 0 && worst <= tol, "%s %s: %d batched decoding steps' logits within %g (max rel %.3g)%s%s",
	   what, pname(prec), NEW, tol, worst, rc ? ": " : "", rc ? ft_errmsg() : "");
	/* the cache path from the start: prompts one token per call */
	if (c) {
		ft_kvcache_free(kv);
		kv = ft_kvcache_new(m, NP, cap);
		ft_cuda_infer_reset(c);
		rc = ft_infer_forward(m, kv, tok, rows, n, want, cpu) < 0 || fed_one_by_one(c, pr, V, one) < 0;
		e = rc ? INFINITY : max_rel(one, cpu, nl);
		ok(e <= tol, "%s %s: prompts fed token by token over the cache: logits within %g (max rel %.3g)%s%s",
		   what, pname(prec), tol, e, rc ? ": " : "", rc ? ft_errmsg() : "");
	}
	ft_cuda_infer_free(c);
	ft_kvcache_free(kv);
	free(tok); free(rows); free(want); free(cpu); free(gpu); free(one);
}

static int same(const ft_i32vec *a, const ft_i32vec *b)
{
	for (int k = 0; k < NP; k++)
		if (a[k].n != b[k].n || memcmp(a[k].v, b[k].v, a[k].n * sizeof(int32_t)))
			return 0;
	return 1;
}

static void greedy_case(ft_model *m, const char *what, const prompts_t *pr)
{
	ft_gen_opts g;
	ft_gen_defaults(&g);
	g.sampling.do_sample = 0;
	g.max_new_tokens = NEW;      /* no stop ids: every row makes NEW tokens */
	ft_i32vec cpu[NP] = { { 0 } }, gb[NP] = { { 0 } }, g1[NP] = { { 0 } };
	g.batch_size = NP;
	int rc = ft_generate(m, pr->p, NP, &g, cpu, NULL, NULL);
	ft_cuda_infer *c = device(m, FT_CUDA_F32, NP, pr->longest + NEW, pr->longest);
	ft_decoder d = { c, ft_model_config(m)->vocab_size, gpu_dec_open, gpu_dec_forward, gpu_dec_close };
	rc = rc < 0 || !c || ft_generate_on(&d, pr->p, NP, &g, gb, NULL, NULL) < 0;
	g.batch_size = 1;
	rc = rc || ft_generate_on(&d, pr->p, NP, &g, g1, NULL, NULL) < 0;
	ok(rc == 0 && same(gb, cpu) && cpu[0].n == NEW,
	   "%s fp32: greedy %d tokens, batched, token-equal to the CPU%s%s", what, NEW,
	   rc ? ": " : "", rc ? ft_errmsg() : "");
	ok(rc == 0 && same(g1, gb), "%s fp32: one prompt at a time equals batched", what);
	ft_cuda_infer_free(c);
	for (int k = 0; k < NP; k++)
		ft_i32vec_free(&cpu[k]), ft_i32vec_free(&gb[k]), ft_i32vec_free(&g1[k]);
}

static void fixture_case(const char *dir, const char *adapter, const char *what)
{
	ft_tune_opts o = { .type = adapter ? FT_FT_LORA : FT_FT_FULL, .lora_rank = 8,
			   .lora_alpha = 16, .lora_targets = FT_MOD_Q | FT_MOD_V };
	ft_model *m = ft_model_load(dir, &o);
	if (!ok(m && (!adapter || ft_model_load_adapter(m, adapter) == 0), "%s loads%s%s", what,
		m ? "" : ": ", m ? "" : ft_errmsg())) {
		ft_model_free(m);
		return;
	}
	prompts_t pr;
	prompts_fixed(&pr);
	logits_case(m, what, &pr, FT_CUDA_F32, 1e-4);
	logits_case(m, what, &pr, FT_CUDA_BF16, 3e-2);
	logits_case(m, what, &pr, FT_CUDA_F16, 3e-2);
	greedy_case(m, what, &pr);
	prompts_free(&pr);
	ft_model_free(m);
}

static void midsize_case(ft_arch arch)
{
	ft_config c = gpu_midsize_config(arch);
	ft_tune_opts to = { .type = FT_FT_FREEZE, .seed = 3 };
	const char *what = arch == FT_ARCH_MISTRAL ? "mid-size mistral (window 200)" : "mid-size llama";
	ft_model *m = ft_model_from_config(&c, &to);
	if (!ok(m != NULL, "%s: model%s", what, m ? "" : ft_errmsg()))
		return;
	prompts_t pr;
	prompts_long(&pr, c.vocab_size);
	logits_case(m, what, &pr, FT_CUDA_F32, 1e-4);
	logits_case(m, what, &pr, FT_CUDA_BF16, 5e-2);
	greedy_case(m, what, &pr);
	prompts_free(&pr);
	ft_model_free(m);
}

static void error_cases(void)
{
	ft_tune_opts o = { .type = FT_FT_FREEZE };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &o);
	ft_cuda_infer_opts io = { .precision = FT_CUDA_F32, .rows = 2, .cap = 16, .max_prompt = 8,
				  .mem_limit = (size_t)800 << 20 };
	ft_cuda_infer *c = m ? ft_cuda_infer_new(m, &io) : NULL;
	ok(!c && strstr(ft_errmsg(), "available but generation needs") &&
	   strstr(ft_errmsg(), "lower the number of sequences decoded together or the prompt length"),
	   "a plan over the memory limit is refused before allocating, the settings said in words: %s",
	   ft_errmsg());
	io.knobs = (ft_cuda_infer_knobs){ "--rows_knob", "--new_knob", "--prompt_knob" };
	c = m ? ft_cuda_infer_new(m, &io) : NULL;
	ok(!c && strstr(ft_errmsg(), "use --bf16 (half-precision weights and KV cache), or lower --rows_knob or "
			"--prompt_knob"), "the caller's knobs are the ones named: %s", ft_errmsg());
	ft_cuda_infer_free(c);
	io.mem_limit = 0;
	c = m ? ft_cuda_infer_new(m, &io) : NULL;
	int32_t bad = ft_model_config(m)->vocab_size;
	int row = 0, rc = c ? ft_cuda_infer_forward(c, &bad, &row, 1, NULL, NULL) : 0;
	ok(c && rc < 0 && strstr(ft_errmsg(), "outside the vocabulary"),
	   "an out-of-vocabulary token is refused: %s", ft_errmsg());
	ft_cuda_infer_free(c);
	ft_model_free(m);
}

int main(void)
{
	if (!gpu_test_start())
		return 0;
	fixture_case("tests/fixtures/models/tiny-llama", NULL, "tiny-llama");
	fixture_case("tests/fixtures/models/tiny-qwen2", NULL, "tiny-qwen2");
	fixture_case("tests/fixtures/models/tiny-llama", "tests/fixtures/merge/llama-r4/adapter",
		     "tiny-llama + llama-r4 LoRA");
	midsize_case(FT_ARCH_LLAMA);
	midsize_case(FT_ARCH_MISTRAL);
	error_cases();
	return tap_done();
}
