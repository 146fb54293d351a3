/* test_device_infer.c - the GPU decoder's entry points through the lazy
 * backend (lib/cuda/backend.c's table), on any machine: with the
 * tree's libft_cuda.so but no GPU, the plan (host only) comes back through
 * the table and ft_cuda_infer_new fails in one line naming the CUDA call;
 * without the .so both fail with the loader's message.  On a GPU machine
 * tests/gpu/test_gpu_generate.c takes over. */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "model/model.h"
#include "util/error.h"

int main(void)
{
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8, .seed = 1 };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &to);
	ft_cuda_view v;
	if (!ok(m && ft_cuda_view_of(m, &v) == 0, "tiny model and its view: %s", m ? "" : ft_errmsg()))
		return tap_done();
	ft_cuda_infer_opts o = { .precision = FT_CUDA_BF16, .rows = 2, .cap = 24, .max_prompt = 8 };
	ft_cuda_infer_plan p;
	int loaded = ft_device_cuda_load() == 1, gpu = loaded && ft_device_cuda_count(NULL, 0) > 0;
	if (gpu) {
		skip("a GPU is present: tests/gpu/test_gpu_generate.c checks the decoder");
	} else if (loaded) {
		int rc = ft_cuda_infer_plan_memory(&v, &o, &p);
		ok(rc == 0 && p.kv > 0 && p.model.grads == 0 && p.total == p.model.total + p.kv + p.decode,
		   "the plan comes through the backend's table without a GPU (%zu bytes)", p.total);
		ft_cuda_infer *c = ft_cuda_infer_new(m, &o);
		ok(!c && !strncmp(ft_errmsg(), "CUDA: cuda", 10) && !strchr(ft_errmsg(), '\n'),
		   "no GPU: the decoder is refused in one line: %s", ft_errmsg());
	} else {
		int rc = ft_cuda_infer_plan_memory(&v, &o, &p);
		ft_cuda_infer *c = ft_cuda_infer_new(m, &o);
		ok(rc < 0 && !c && strstr(ft_errmsg(), "libft_cuda.so"),
		   "no backend: plan and decoder refused: %s", ft_errmsg());
	}
	ft_cuda_view_free(&v);
	ft_model_free(m);
	return tap_done();
}
