/* fuzz_tokenizer_json.c - tokenizer.json (BPE and its pipeline) */
#include "fuzz_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	return fuzz_tokenizer("tokenizer.json", data, n);
}
