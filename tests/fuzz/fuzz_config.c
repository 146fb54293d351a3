/* fuzz_config.c - a model's config.json through the loaders' check */
#include "fuzz.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	ft_config c;
	if (ft_config_load(fuzz_file("config.json", data, n), &c) == 0)
		(void)ft_config_weight_bytes(&c);
	return 0;
}
