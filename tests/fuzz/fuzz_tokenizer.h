/* fuzz_tokenizer.h - the body of both tokenizer targets: load the input
 * as the file `name` (its suffix picks the parser), encode and decode. */
#ifndef FT_FUZZ_TOKENIZER_H
#define FT_FUZZ_TOKENIZER_H

#include "fuzz.h"
#include "text/tokenizer.h"

static int fuzz_tokenizer(const char *name, const uint8_t *data, size_t n)
{
	ft_tokenizer *t = ft_tokenizer_load(fuzz_file(name, data, n));
	if (!t) return 0;
	static const char text[] = "Hello, world! 你好 <s> 123\n\tend";
	ft_i32vec ids = {0};
	if (ft_tokenizer_encode(t, text, sizeof text - 1, 1, &ids) == 0)
		free(ft_tokenizer_decode(t, ids.v, ids.n, 0));
	ft_i32vec_free(&ids);
	ft_tokenizer_free(t);
	return 0;
}

#endif
