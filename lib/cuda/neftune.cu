/* neftune.cu - NEFTune on the device (lib/model/extras.c is the
 * reference): while training, the embeddings' output gets U(-mag, mag)
 * noise.  The draws are ft's host generator (xoshiro, one stream per
 * forward_backward call), so they are made on the host by the CPU's own
 * function (ft_cuda_view_neftune) and uploaded per micro-batch: device and
 * CPU add the same floats, and a resumed run continues the same stream.
 * The noise buffers ([max_tokens, D] on the host and the device) are
 * allocated at the first noisy batch, beside the plan, and counted in the
 * peak. */
#include <stdlib.h>
#include "cuda/common.cuh"

int ft_cu_neftune(ft_cuda_model *dm, float *x, int B, int T)
{
	size_t n = (size_t)B * T * dm->v.D;
	if (!dm->neft) {
		size_t bytes = (size_t)dm->o.max_tokens * dm->v.D * sizeof(float);
		CU(cudaMalloc(&dm->neft, bytes), "%zu bytes (NEFTune's noise)", bytes);
		dm->h_neft = (float *)ft_xmalloc(bytes);
		dm->peak += bytes;
	}
	ft_cuda_view_neftune(&dm->v, dm->h_neft, B, T, dm->dropout_calls);
	TRY(ft_cu_copy(dm, dm->neft, dm->h_neft, n * sizeof(float), cudaMemcpyHostToDevice,
		       "NEFTune's noise"));
	return ft_cu_add(dm, x, x, dm->neft, n);
}

void ft_cu_neftune_free(ft_cuda_model *dm)
{
	if (dm->neft)
		cudaFree(dm->neft);
	free(dm->h_neft);
	dm->neft = NULL;
	dm->h_neft = NULL;
}
