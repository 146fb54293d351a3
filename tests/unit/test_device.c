/* test_device.c - device selection (lib/model/device.c).  In the default build
 * (no CUDA_LINK) "cuda" must fail with a message naming the fix and
 * "auto" must fall back to the CPU; in a CUDA-linked build on a machine
 * without a GPU the message must say so instead. */
#include <string.h>
#include "tap.h"
#include "model/device.h"
#include "util/error.h"
#include "train/cuda_train.h"

int main(void)
{
	int idx = -1;
	ok(ft_device_resolve("cpu", &idx) == FT_DEV_CPU && idx == 0, "cpu resolves to the CPU");
	ok(ft_device_resolve("gpu", &idx) < 0 && strstr(ft_errmsg(), "expected cpu, cuda"),
	   "unknown device name refused: %s", ft_errmsg());
	ok(ft_device_resolve("cuda:x", &idx) < 0 && strstr(ft_errmsg(), "bad device index"),
	   "bad index refused: %s", ft_errmsg());
	char desc[128];
	int n = ft_device_cuda_count(desc, sizeof desc);
	if (!ft_device_cuda_built()) {
		ok(n < 0 && strstr(ft_errmsg(), "CUDA_LINK=1"), "no backend: %s", ft_errmsg());
		ok(ft_device_resolve("cuda", &idx) < 0 &&
		   !strncmp(ft_errmsg(), "--device cuda: ", 15), "cuda refused: %s", ft_errmsg());
		ok(ft_device_resolve(NULL, &idx) == FT_DEV_CPU &&
		   ft_device_resolve("auto", &idx) == FT_DEV_CPU, "auto falls back to the CPU");
		ft_train_model t = { 0 };
		ft_cuda_opts o = { .precision = FT_CUDA_BF16, .max_tokens = 32, .max_seq = 16 };
		ok(ft_train_model_of_cuda(NULL, &o, &t) < 0 && strstr(ft_errmsg(), "CUDA_LINK=1") &&
		   !t.self, "trainer binding refuses without the backend: %s", ft_errmsg());
	} else if (n < 0) {
		ok(ft_device_resolve("cuda", &idx) < 0, "no GPU: cuda refused: %s", ft_errmsg());
		ok(ft_device_resolve("auto", &idx) == FT_DEV_CPU, "no GPU: auto is the CPU");
	} else {
		ok(ft_device_resolve("auto", &idx) == FT_DEV_CUDA, "auto picks %s", desc);
		ok(ft_device_resolve("cuda:0", &idx) == FT_DEV_CUDA && idx == 0, "cuda:0");
	}
	return tap_done();
}
