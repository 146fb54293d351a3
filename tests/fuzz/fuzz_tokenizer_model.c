/* fuzz_tokenizer_model.c - sentencepiece tokenizer.model (protobuf) */
#include "fuzz_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	return fuzz_tokenizer("tokenizer.model", data, n);
}
