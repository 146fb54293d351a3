/* test_device.c - device selection and the lazy CUDA backend
 * (lib/model/device.c, lib/cuda/backend.c).  Runs on any machine: where
 * libft_cuda.so is missing (FT_CUDA_LIB pointing nowhere) or has no GPU
 * to drive, "cuda" must fail with one line saying why, "auto" must fall
 * back to the CPU with the reason, and the trainer binding must refuse;
 * on a GPU machine auto picks the GPU. */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "model/device.h"
#include "util/error.h"
#include "train/cuda_train.h"
#include "model/model.h"

static void no_gpu_cases(const char *what)
{
	int idx = -1;
	char why[5000];
	ok(ft_device_resolve("cuda", &idx, why, sizeof why) < 0 &&
	   !strncmp(ft_errmsg(), "--device cuda: ", 15) && !strchr(ft_errmsg(), '\n'),
	   "%s: cuda refused in one line: %s", what, ft_errmsg());
	ok(ft_device_resolve("auto", &idx, why, sizeof why) == FT_DEV_CPU && why[0] &&
	   ft_device_resolve(NULL, &idx, NULL, 0) == FT_DEV_CPU,
	   "%s: auto falls back to the CPU (%s)", what, why);
	ft_train_model t = { 0 };
	ft_cuda_opts o = { .precision = FT_CUDA_BF16, .max_tokens = 32, .max_seq = 16 };
	ft_tune_opts to = { .type = FT_FT_LORA, .lora_rank = 4, .lora_alpha = 8, .seed = 1 };
	ft_model *m = ft_model_load("tests/fixtures/models/tiny-llama", &to);
	ok(m != NULL, "tiny model loads: %s", m ? "" : ft_errmsg());
	int rc = m ? ft_train_model_of_cuda(m, &o, &t) : 0;
	ok(m && rc < 0 && !t.self, "%s: trainer binding refuses: %s", what, ft_errmsg());
	ft_model_free(m);
}

int main(void)
{
	int idx = -1;
	char why[64];
	ok(ft_device_resolve("cpu", &idx, why, sizeof why) == FT_DEV_CPU && idx == 0 && !why[0],
	   "cpu resolves to the CPU");
	ok(ft_device_resolve("gpu", &idx, NULL, 0) < 0 && strstr(ft_errmsg(), "expected cpu, cuda"),
	   "unknown device name refused: %s", ft_errmsg());
	ok(ft_device_resolve("cuda:x", &idx, NULL, 0) < 0 && strstr(ft_errmsg(), "bad device index"),
	   "bad index refused: %s", ft_errmsg());
	const char *env = getenv("FT_CUDA_LIB");
	if (env && !strcmp(env, "/nonexistent/libft_cuda.so")) {
		/* run by tests/bats/ft-train.bats's device test */
		ok(ft_device_cuda_load() < 0 && strstr(ft_errmsg(), "FT_CUDA_LIB=/nonexistent"),
		   "missing backend named: %s", ft_errmsg());
		no_gpu_cases("no backend");
		return tap_done();
	}
	char desc[128];
	int n = ft_device_cuda_count(desc, sizeof desc);
	if (ft_device_cuda_load() < 0) {
		ok(strstr(ft_errmsg(), "libft_cuda.so") != NULL, "no backend: %s", ft_errmsg());
		no_gpu_cases("no backend");
	} else if (n < 0) {
		ok(ft_device_cuda_path()[0] == '/', "backend loaded from %s", ft_device_cuda_path());
		no_gpu_cases("no GPU");
	} else {
		ok(ft_device_resolve("auto", &idx, why, sizeof why) == FT_DEV_CUDA, "auto picks %s", desc);
		ok(ft_device_resolve("cuda:0", &idx, NULL, 0) == FT_DEV_CUDA && idx == 0, "cuda:0");
	}
	return tap_done();
}
