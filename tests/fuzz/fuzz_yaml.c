/* fuzz_yaml.c - a LLaMA-Factory YAML config (ft-run, ft-train, ft-merge) */
#include "fuzz.h"
#include "cli/lfargs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	ft_lfargs a = {0};
	ft_lfargs_load_file(&a, fuzz_file("config.yaml", data, n));
	ft_lfargs_free(&a);
	return 0;
}
