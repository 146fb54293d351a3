/* fuzz_stream.c - record streams (zstd + msgpack): open, every record to JSON */
#include "fuzz.h"
#include "format/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	ft_reader *r = ft_reader_open(fuzz_file("in.zst", data, n));
	if (!r) return 0;
	ft_rec *rec;
	while (ft_reader_next(r, &rec) == 1) {
		json_t *j = ft_rec_to_json(rec);
		json_decref(j);
	}
	ft_reader_close(r);
	return 0;
}
