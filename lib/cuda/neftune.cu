/* neftune.cu - NEFTune on the device (lib/model/extras.c is the
 * reference): while training, the embeddings' output gets U(-mag, mag)
 * noise.  The draws are ft's host generator (xoshiro, one stream per
 * forward_backward call), so they are made on the host by the CPU's own
 * function (ft_cuda_view_neftune) and uploaded per micro-batch: device and
 * CPU add the same floats, and a resumed run continues the same stream.
 * The noise buffers ([max_tokens, D] on the host and the device) are
 * allocated at the first noisy batch, beside the plan, and counted in the
 * peak.  GRPO's decoder (infer.cu) adds the CPU decoder's draws the
 * same way, through ft_cu_neftune_tokens. */
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"

/* The noise buffers, [max_tokens, D] on the host and the device */
static int buffers(ft_cuda_model *dm)
{
	if (dm->neft)
		return 0;
	size_t bytes = (size_t)dm->o.max_tokens * dm->v.D * sizeof(float);
	CU(cudaMalloc(&dm->neft, bytes), "%zu bytes (NEFTune's noise)", bytes);
	dm->h_neft = (float *)ft_xmalloc(bytes);
	dm->peak += bytes;
	return 0;
}

/* x [n] += the host buffer's first n floats */
static int add_host(ft_cuda_model *dm, float *x, size_t n)
{
	TRY(ft_cu_copy(dm, dm->neft, dm->h_neft, n * sizeof(float), cudaMemcpyHostToDevice,
		       "NEFTune's noise"));
	return ft_cu_add(dm, x, x, dm->neft, n);
}

int ft_cu_neftune(ft_cuda_model *dm, float *x, int B, int T)
{
	TRY(buffers(dm));
	ft_cuda_view_neftune(&dm->v, dm->h_neft, B, T, dm->dropout_calls);
	return add_host(dm, x, (size_t)B * T * dm->v.D);
}

int ft_cu_neftune_tokens(ft_cuda_model *dm, float *x, const float *h, const int *slot, int n, int rows)
{
	size_t D = dm->v.D;
	TRY(buffers(dm));
	memset(dm->h_neft, 0, (size_t)rows * D * sizeof(float));   /* the prefill's padding: none */
	for (int i = 0; i < n; i++)
		memcpy(dm->h_neft + (size_t)(slot ? slot[i] : i) * D, h + (size_t)i * D, D * sizeof(float));
	return add_host(dm, x, (size_t)rows * D);
}

void ft_cu_neftune_free(ft_cuda_model *dm)
{
	if (dm->neft)
		cudaFree(dm->neft);
	free(dm->h_neft);
	dm->neft = NULL;
	dm->h_neft = NULL;
}
