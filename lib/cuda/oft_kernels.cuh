/* oft_kernels.cuh - the kernels of OFT's Cayley-Neumann series on the
 * device (lib/cuda/oft.cu), in a header of their own so that tests/emu
 * compiles them for the host (test_oft_emu.cc checks them bit for bit
 * against lib/format/adapter_oft.c).  One OFT block per thread block;
 * scr holds (K + 3) b^2 doubles per block.  Needs only the CUDA
 * built-ins. */
#ifndef FT_CUDA_OFT_KERNELS_CUH
#define FT_CUDA_OFT_KERNELS_CUH

typedef struct { double c[65]; } oft_coefs;

/* The powers P[k] = Q^k, k = 0..K, of the block whose upper triangle is
 * w (adapter_oft.c's powers), by the whole thread block. */
static __device__ void oft_powers(double *P, const float *w, int b, int K)
{
	int bb = b * b;
	for (int e = threadIdx.x; e < bb; e += blockDim.x) {
		int x = e / b, y = e % b;
		P[e] = x == y;
		if (K < 1)
			continue;
		/* triu_indices(b, b, 1), row-major: row x starts at x*b - x(x+1)/2 */
		double q = 0;
		if (y > x)
			q = w[x * b - x * (x + 1) / 2 + (y - x - 1)];
		else if (x > y)
			q = -(double)w[y * b - y * (y + 1) / 2 + (x - y - 1)];
		P[bb + e] = q;
	}
	__syncthreads();
	for (int k = 2; k <= K; k++) {
		const double *A = P + (size_t)(k - 1) * bb, *B = P + bb;
		for (int e = threadIdx.x; e < bb; e += blockDim.x) {
			int x = e / b, y = e % b;
			double s = 0;
			for (int t = 0; t < b; t++)
				s += A[x * b + t] * B[t * b + y];
			P[(size_t)k * bb + e] = s;
		}
		__syncthreads();
	}
}

/* ft_oft_rotation: R [r, b, b] from w [r, b(b-1)/2]; block i of the grid
 * is OFT block i, scr its (K + 1) b^2 doubles. */
static __global__ void oft_rotation_k(float *R, const float *w, int b, int K, oft_coefs c,
				      double *scr)
{
	int i = blockIdx.x;
	size_t bb = (size_t)b * b, ne = (size_t)b * (b - 1) / 2;
	double *P = scr + (size_t)i * (K + 3) * bb;
	oft_powers(P, w + i * ne, b, K);
	for (size_t e = threadIdx.x; e < bb; e += blockDim.x) {
		double s = 0;
		for (int k = 0; k <= K; k++)
			s += c.c[k] * P[k * bb + e];
		R[i * bb + e] = (float)s;
	}
}

/* ft_oft_rotation_backward: dw += dL/dw from dR = dL/dR.
 * d tr(G^T Q^k) / dQ = sum_j (Q^j)^T G (Q^(k-1-j))^T. */
static __global__ void oft_rotation_backward_k(float *dw, const float *w, const float *dR, int b,
					       int K, oft_coefs c, double *scr)
{
	int i = blockIdx.x;
	size_t bb = (size_t)b * b, ne = (size_t)b * (b - 1) / 2;
	double *P = scr + (size_t)i * (K + 3) * bb, *tmp = P + (K + 1) * bb, *dQ = tmp + bb;
	const float *G = dR + i * bb;
	oft_powers(P, w + i * ne, b, K);
	for (size_t e = threadIdx.x; e < bb; e += blockDim.x)
		dQ[e] = 0;
	__syncthreads();
	for (int k = 1; k <= K; k++)
		for (int j = 0; j < k; j++) {
			const double *Pj = P + j * bb, *Pk = P + (k - 1 - j) * bb;
			for (size_t e = threadIdx.x; e < bb; e += blockDim.x) {
				int x = (int)(e / b), y = (int)(e % b);
				double s = 0;   /* (P_j^T G)[x][y] */
				for (int t = 0; t < b; t++)
					s += Pj[t * b + x] * (double)G[t * b + y];
				tmp[e] = s;
			}
			__syncthreads();
			for (size_t e = threadIdx.x; e < bb; e += blockDim.x) {
				int x = (int)(e / b), y = (int)(e % b);
				double s = 0;   /* (tmp P_(k-1-j)^T)[x][y] */
				for (int t = 0; t < b; t++)
					s += tmp[x * b + t] * Pk[y * b + t];
				dQ[e] += c.c[k] * s;
			}
			__syncthreads();
		}
	for (size_t e = threadIdx.x; e < bb; e += blockDim.x) {
		int x = (int)(e / b), y = (int)(e % b);
		if (y > x)
			dw[i * ne + x * b - x * (x + 1) / 2 + (y - x - 1)] +=
				(float)(dQ[x * b + y] - dQ[y * b + x]);
	}
}

#endif
