/* fuzz_dataset.c - dataset JSON / JSON lines, read as alpaca and sharegpt */
#include "fuzz.h"
#include "data/dataset.h"

static void read_as(const char *path, int formatting)
{
	ft_dataset_attr a;
	ft_dataset_from_path(path, formatting, &a);
	ft_dataset d = {0};
	ft_dataset_read(&a, -1, &d);
	ft_dataset_free(&d);   /* also after an error: d keeps what was read */
	ft_dataset_attr_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	const char *path = fuzz_file("data.json", data, n);
	read_as(path, FT_FMT_AUTO);
	read_as(path, FT_FMT_SHAREGPT);
	return 0;
}
