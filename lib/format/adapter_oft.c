/* adapter_oft.c - PEFT's OFT parametrization (see adapter_oft.h).  The
 * b x b products are done in double and rounded once: torch does them in
 * float32, ~1e-7 relative apart. */
#include <stdlib.h>
#include <string.h>
#include "format/adapter_oft.h"
#include "util/error.h"

int ft_oft_dims(int in, int cfg_r, int cfg_block, int *r, int *b)
{
	if ((cfg_r != 0) == (cfg_block != 0) || cfg_r < 0 || cfg_block < 0 || in <= 0)
		return -1;
	int p = cfg_r ? cfg_r : cfg_block, q = p;
	if (in % p != 0 || p > in) {   /* adjust_oft_parameters */
		if (p >= in) {
			q = in;
		} else {
			int hi = p, lo = p;
			while (hi <= in && in % hi != 0) hi++;
			while (lo > 1 && in % lo != 0) lo--;
			q = p - lo <= hi - p ? lo : hi;
		}
	}
	*b = cfg_r ? in / q : q;
	*r = cfg_r ? q : in / q;
	return 0;
}

int ft_oft_coefs(int terms, double c[65])
{
	int K = terms > 2 ? (terms - 1 > 3 ? terms - 1 : 3) : terms > 1 ? 1 : 0;
	for (int k = 0; k <= K; k++) c[k] = k == 0 ? 1 : 2;
	if (terms > 2) c[K] = 1;   /* the last power is added once */
	return K;
}

/* C = A B, b x b */
static void mm(double *C, const double *A, const double *B, int b)
{
	for (int i = 0; i < b; i++)
		for (int j = 0; j < b; j++) {
			double s = 0;
			for (int k = 0; k < b; k++) s += A[i * b + k] * B[k * b + j];
			C[i * b + j] = s;
		}
}

static void skew(double *Q, const float *w, int b)
{
	memset(Q, 0, (size_t)b * b * sizeof *Q);
	int e = 0;
	for (int i = 0; i < b; i++)
		for (int j = i + 1; j < b; j++, e++) {
			Q[i * b + j] = w[e];
			Q[j * b + i] = -(double)w[e];
		}
}

/* P[k] = Q^k, k = 0..K, each b x b. */
static double *powers(const float *w, int b, int K)
{
	size_t bb = (size_t)b * b;
	double *P = ft_xmalloc((K + 1) * bb * sizeof *P);
	memset(P, 0, bb * sizeof *P);
	for (int i = 0; i < b; i++) P[i * b + i] = 1;
	if (K >= 1) skew(P + bb, w, b);
	for (int k = 2; k <= K; k++) mm(P + k * bb, P + (k - 1) * bb, P + bb, b);
	return P;
}

void ft_oft_rotation(const float *w, int r, int b, int terms, float *R)
{
	double c[65];
	int K = ft_oft_coefs(terms, c);
	size_t bb = (size_t)b * b, ne = (size_t)b * (b - 1) / 2;
#pragma omp parallel for schedule(static) if (r > 1 && b >= 16)
	for (int i = 0; i < r; i++) {
		double *P = powers(w + i * ne, b, K);
		for (size_t e = 0; e < bb; e++) {
			double s = 0;
			for (int k = 0; k <= K; k++) s += c[k] * P[k * bb + e];
			R[i * bb + e] = (float)s;
		}
		free(P);
	}
}

void ft_oft_rotation_backward(const float *w, int r, int b, int terms, const float *dR, float *dw)
{
	double c[65];
	int K = ft_oft_coefs(terms, c);
	size_t bb = (size_t)b * b, ne = (size_t)b * (b - 1) / 2;
#pragma omp parallel for schedule(static) if (r > 1 && b >= 16)
	for (int i = 0; i < r; i++) {
		/* d tr(G^T Q^k) / dQ = sum_j (Q^j)^T G (Q^(k-1-j))^T, and
		 * (Q^j)^T = (-Q)^j: the powers transposed */
		double *P = powers(w + i * ne, b, K), *T = ft_xmalloc(3 * bb * sizeof *T);
		double *G = T, *tmp = T + bb, *dQ = T + 2 * bb;
		for (size_t e = 0; e < bb; e++) G[e] = dR[i * bb + e];
		memset(dQ, 0, bb * sizeof *dQ);
		double *Pt = ft_xmalloc((K + 1) * bb * sizeof *Pt);
		for (int k = 0; k <= K; k++)
			for (int x = 0; x < b; x++)
				for (int y = 0; y < b; y++) Pt[k * bb + x * b + y] = P[k * bb + y * b + x];
		for (int k = 1; k <= K; k++)
			for (int j = 0; j < k; j++) {
				double *o = ft_xmalloc(bb * sizeof *o);
				mm(tmp, Pt + j * bb, G, b);
				mm(o, tmp, Pt + (k - 1 - j) * bb, b);
				for (size_t e = 0; e < bb; e++) dQ[e] += c[k] * o[e];
				free(o);
			}
		int e = 0;
		for (int x = 0; x < b; x++)
			for (int y = x + 1; y < b; y++, e++)
				dw[i * ne + e] += (float)(dQ[x * b + y] - dQ[y * b + x]);
		free(Pt);
		free(T);
		free(P);
	}
}

void ft_oft_merge(float *W, int out, int in, int b, const float *R)
{
	size_t bb = (size_t)b * b;
#pragma omp parallel
	{
		double *row = ft_xmalloc((size_t)in * sizeof *row);
#pragma omp for schedule(static)
		for (int o = 0; o < out; o++) {
			float *wo = W + (size_t)o * in;
			/* W'[o][i*b + k] = sum_c R_i[k][c] W[o][i*b + c] */
			for (int i = 0; i < in / b; i++)
				for (int k = 0; k < b; k++) {
					double s = 0;
					const float *Rk = R + i * bb + (size_t)k * b;
					for (int cc = 0; cc < b; cc++) s += (double)Rk[cc] * wo[i * b + cc];
					row[i * b + k] = s;
				}
			for (int i = 0; i < in; i++) wo[i] = (float)row[i];
		}
		free(row);
	}
}
