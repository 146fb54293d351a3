/* fuzz_tokenizer_model.c - tokenizer.model (sentencepiece): load, encode and decode a text */
#include "fuzz.h"
#include "text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	ft_tokenizer *t = ft_tokenizer_load(fuzz_file("tokenizer.model", data, n));
	if (!t) return 0;
	static const char text[] = "Hello, world! 你好 <s> 123\n\tend";
	ft_i32vec ids = {0};
	if (ft_tokenizer_encode(t, text, sizeof text - 1, 1, &ids) == 0)
		free(ft_tokenizer_decode(t, ids.v, ids.n, 0));
	ft_i32vec_free(&ids);
	ft_tokenizer_free(t);
	return 0;
}
