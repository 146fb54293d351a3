/* quant.c - bitsandbytes' 4-bit and 8-bit weight quantization on the CPU
 * (see quant.h), written from bnb 0.50.2's published algorithms:
 *
 *  quantize_4bit (backends/default): per block of 64 of the flattened
 *  tensor, absmax = max|x|; scaled = clamp(x * (1 / max(absmax, 1e-38)),
 *  -1, 1) (the last, partial block divides by its clamped absmax instead);
 *  the code index is torch.bucketize against the midpoints of the sorted
 *  code (the number of midpoints < scaled), mapped back through the
 *  argsort for FP4, whose code is not sorted.
 *
 *  quantize_blockwise (the CPU backend's native kernel): per block,
 *  normed = x / max|x|, then a 65536-point table of nearest codes (see
 *  ft_quant_blockwise8).
 *
 *  int8_vectorwise_quant: row absmax of the float16 weight, CB =
 *  round_half_even(w16 * (127 / absmax)) in float32, where torch computes
 *  the scalar-over-tensor division as reciprocal(absmax) * 127.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/dtype.h"
#include "util/error.h"
#include "model/quant.h"
#include "model/quant_kernels.h"

/* The values of bnb 0.50.2's get_4bit_type("nf4"), get_4bit_type("fp4")
 * and create_dynamic_map(), printed from Python (float32, exact). */
const float ft_nf4_code[16] = {
	-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
	-0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
	0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
	0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};
const float ft_fp4_code[16] = {
	0.0f, 0.0052083334885537624f, 0.6666666865348816f, 1.0f,
	0.3333333432674408f, 0.5f, 0.1666666716337204f, 0.25f,
	0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,
	-0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f,
};
const float ft_dynamic_code[256] = {
	-0.992968738079071f, -0.9789062738418579f, -0.96484375f, -0.9507812261581421f,
	-0.936718761920929f, -0.922656238079071f, -0.9085937738418579f, -0.89453125f,
	-0.8804687261581421f, -0.866406261920929f, -0.852343738079071f, -0.8382812738418579f,
	-0.82421875f, -0.8101562261581421f, -0.796093761920929f, -0.782031238079071f,
	-0.7679687738418579f, -0.75390625f, -0.7398437261581421f, -0.725781261920929f,
	-0.7117187976837158f, -0.6976562738418579f, -0.68359375f, -0.6695312261581421f,
	-0.655468761920929f, -0.6414062976837158f, -0.6273437738418579f, -0.61328125f,
	-0.5992187261581421f, -0.585156261920929f, -0.5710937976837158f, -0.5570312738418579f,
	-0.54296875f, -0.5289062261581421f, -0.5148437023162842f, -0.500781238079071f,
	-0.48671871423721313f, -0.47265625f, -0.4585937261581421f, -0.44453126192092896f,
	-0.43046873807907104f, -0.4164062440395355f, -0.40234375f, -0.3882812261581421f,
	-0.37421876192092896f, -0.36015623807907104f, -0.3460937440395355f, -0.33203125f,
	-0.3179687261581421f, -0.30390626192092896f, -0.28984373807907104f, -0.2757812738418579f,
	-0.26171875f, -0.24765624105930328f, -0.23359374701976776f, -0.21953125298023224f,
	-0.20546874403953552f, -0.19140625f, -0.17734375596046448f, -0.16328124701976776f,
	-0.14921875298023224f, -0.13515624403953552f, -0.12109375f, -0.10703125596046448f,
	-0.09859374910593033f, -0.09578125923871994f, -0.09296875447034836f, -0.09015624970197678f,
	-0.08734375238418579f, -0.08453124761581421f, -0.08171875774860382f, -0.07890625298023224f,
	-0.07609374821186066f, -0.07328125089406967f, -0.07046874612569809f, -0.0676562562584877f,
	-0.06484375149011612f, -0.062031250447034836f, -0.05921875312924385f, -0.05640624836087227f,
	-0.053593751043081284f, -0.05078125f, -0.047968748956918716f, -0.04515625163912773f,
	-0.04234374687075615f, -0.039531249552965164f, -0.03671875223517418f, -0.033906251192092896f,
	-0.031093750149011612f, -0.028281250968575478f, -0.025468749925494194f, -0.02265625074505806f,
	-0.019843751564621925f, -0.017031250521540642f, -0.014218750409781933f, -0.011406250298023224f,
	-0.009718749672174454f, -0.009156249463558197f, -0.008593750186264515f, -0.008031249977648258f,
	-0.0074687497690320015f, -0.006906250026077032f, -0.006343749817460775f, -0.005781250074505806f,
	-0.0052187503315508366f, -0.0046562496572732925f, -0.004093749914318323f, -0.0035312497057020664f,
	-0.002968749962747097f, -0.002406249986961484f, -0.001843750011175871f, -0.001281249918974936f,
	-0.0009437500848434865f, -0.0008312499849125743f, -0.0007187500596046448f, -0.0006062500760890543f,
	-0.000493750034365803f, -0.0003812500217463821f, -0.0002687500382307917f, -0.00015625001105945557f,
	-8.874999912222847e-05f, -6.625000241911039e-05f, -4.374999844003469e-05f, -2.1249998098937795e-05f,
	-7.749999895168003e-06f, -3.250000190746505e-06f, -5.500000384017767e-07f, 0.0f,
	5.500000384017767e-07f, 3.250000190746505e-06f, 7.749999895168003e-06f, 2.1249998098937795e-05f,
	4.374999844003469e-05f, 6.625000241911039e-05f, 8.874999912222847e-05f, 0.00015625001105945557f,
	0.0002687500382307917f, 0.0003812500217463821f, 0.000493750034365803f, 0.0006062500760890543f,
	0.0007187500596046448f, 0.0008312499849125743f, 0.0009437500848434865f, 0.001281249918974936f,
	0.001843750011175871f, 0.002406249986961484f, 0.002968749962747097f, 0.0035312497057020664f,
	0.004093749914318323f, 0.0046562496572732925f, 0.0052187503315508366f, 0.005781250074505806f,
	0.006343749817460775f, 0.006906250026077032f, 0.0074687497690320015f, 0.008031249977648258f,
	0.008593750186264515f, 0.009156249463558197f, 0.009718749672174454f, 0.011406250298023224f,
	0.014218750409781933f, 0.017031250521540642f, 0.019843751564621925f, 0.02265625074505806f,
	0.025468749925494194f, 0.028281250968575478f, 0.031093750149011612f, 0.033906251192092896f,
	0.03671875223517418f, 0.039531249552965164f, 0.04234374687075615f, 0.04515625163912773f,
	0.047968748956918716f, 0.05078125f, 0.053593751043081284f, 0.05640624836087227f,
	0.05921875312924385f, 0.062031250447034836f, 0.06484375149011612f, 0.0676562562584877f,
	0.07046874612569809f, 0.07328125089406967f, 0.07609374821186066f, 0.07890625298023224f,
	0.08171875774860382f, 0.08453124761581421f, 0.08734375238418579f, 0.09015624970197678f,
	0.09296875447034836f, 0.09578125923871994f, 0.09859374910593033f, 0.10703125596046448f,
	0.12109375f, 0.13515624403953552f, 0.14921875298023224f, 0.16328124701976776f,
	0.17734375596046448f, 0.19140625f, 0.20546874403953552f, 0.21953125298023224f,
	0.23359374701976776f, 0.24765624105930328f, 0.26171875f, 0.2757812738418579f,
	0.28984373807907104f, 0.30390626192092896f, 0.3179687261581421f, 0.33203125f,
	0.3460937440395355f, 0.36015623807907104f, 0.37421876192092896f, 0.3882812261581421f,
	0.40234375f, 0.4164062440395355f, 0.43046873807907104f, 0.44453126192092896f,
	0.4585937261581421f, 0.47265625f, 0.48671871423721313f, 0.500781238079071f,
	0.5148437023162842f, 0.5289062261581421f, 0.54296875f, 0.5570312738418579f,
	0.5710937976837158f, 0.585156261920929f, 0.5992187261581421f, 0.61328125f,
	0.6273437738418579f, 0.6414062976837158f, 0.655468761920929f, 0.6695312261581421f,
	0.68359375f, 0.6976562738418579f, 0.7117187976837158f, 0.725781261920929f,
	0.7398437261581421f, 0.75390625f, 0.7679687738418579f, 0.782031238079071f,
	0.796093761920929f, 0.8101562261581421f, 0.82421875f, 0.8382812738418579f,
	0.852343738079071f, 0.866406261920929f, 0.8804687261581421f, 0.89453125f,
	0.9085937738418579f, 0.922656238079071f, 0.936718761920929f, 0.9507812261581421f,
	0.96484375f, 0.9789062738418579f, 0.992968738079071f, 1.0f,
};

/* Midpoints of the sorted code and the sorted order (stable, as
 * torch.argsort on the CPU; FP4's 0 and -0 tie and keep their order). */
static void code_bounds(const float *code, float *bounds, int *order)
{
	for (int i = 0; i < 16; i++)
		order[i] = i;
	for (int i = 1; i < 16; i++)   /* insertion sort: stable */
		for (int j = i; j > 0 && code[order[j - 1]] > code[order[j]]; j--) {
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	for (int i = 0; i < 15; i++)
		bounds[i] = (code[order[i]] + code[order[i + 1]]) / 2;
}

static int bucket4(const float *bounds, const int *order, float v)
{
	int k = 0;   /* torch.bucketize(right=False): midpoints strictly below v */
	while (k < 15 && bounds[k] < v)
		k++;
	return order[k];
}

static float clamp1(float v) { return v < -1 ? -1 : v > 1 ? 1 : v; }

void ft_quant4(const float *w, size_t n, int fp4, uint8_t *packed, float *absmax)
{
	float bounds[15];
	int order[16];
	code_bounds(fp4 ? ft_fp4_code : ft_nf4_code, bounds, order);
	size_t nb = (n + FT_Q4_BLOCK - 1) / FT_Q4_BLOCK;
	memset(packed, 0, (n + 1) / 2);
	for (size_t b = 0; b < nb; b++) {
		size_t i0 = b * FT_Q4_BLOCK, i1 = i0 + FT_Q4_BLOCK < n ? i0 + FT_Q4_BLOCK : n;
		float am = 0;
		for (size_t i = i0; i < i1; i++)
			am = fmaxf(am, fabsf(w[i]));
		float c = fmaxf(am, 1e-38f), r = 1.0f / c;
		int partial = i1 - i0 < FT_Q4_BLOCK;
		absmax[b] = partial ? c : am;
		for (size_t i = i0; i < i1; i++) {
			float s = clamp1(partial ? w[i] / c : w[i] * r);
			int q = bucket4(bounds, order, s);
			packed[i >> 1] |= (uint8_t)(i & 1 ? q : q << 4);
		}
	}
	if (n & 1)   /* the pad element is 0, coded as the bucket of 0 */
		packed[n >> 1] |= (uint8_t)bucket4(bounds, order, 0.0f);
}

/* The code index nearest to v (ties to the lower index). */
static int nearest_code(const float *code, float v)
{
	int lo = 0, hi = 255;   /* last entry <= v (entry 0 when none) */
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (code[mid] <= v) lo = mid;
		else hi = mid - 1;
	}
	if (lo < 255 && fabsf(v - code[lo + 1]) < fabsf(v - code[lo]))
		lo++;
	return lo;
}

/* bnb 0.50.2's CPU kernel (cquantize_blockwise_cpu_fp32) does not search
 * the code for each value: measured against it, it rounds v to one of
 * 65536 grid points i / 32767.5 - 1 (i = (int)((v + 1) * 32767.5 + 0.5)
 * in float32) and takes the code entry nearest to that point, so values
 * within ~1.5e-5 of a midpoint between two codes may go to the farther
 * one.  The same table here gives its bytes (tests/unit/test_quant.c,
 * 10240 probe values and every nested absmax of the fixture models). */
void ft_quant_blockwise8(const float *a, size_t n, int blocksize, uint8_t *q, float *absmax)
{
	uint8_t *lut = ft_xmalloc(65536);
	for (int i = 0; i < 65536; i++)
		lut[i] = (uint8_t)nearest_code(ft_dynamic_code, (float)i / 32767.5f - 1.0f);
	for (size_t i0 = 0, b = 0; i0 < n; i0 += blocksize, b++) {
		size_t i1 = i0 + blocksize < n ? i0 + blocksize : n;
		float am = 0;
		for (size_t i = i0; i < i1; i++)
			am = fmaxf(am, fabsf(a[i]));
		absmax[b] = am;
		for (size_t i = i0; i < i1; i++) {
			float v = a[i] / am;
			long k = (long)((v + 1.0f) * 32767.5f + 0.5f);
			q[i] = lut[k < 0 ? 0 : k > 65535 ? 65535 : k];
		}
	}
	free(lut);
}

void ft_quant_int8_rows(const float *w, int rows, int cols, int8_t *cb, float *scb)
{
	for (int r = 0; r < rows; r++) {
		const float *x = w + (size_t)r * cols;
		float am = 0;
		for (int c = 0; c < cols; c++)
			am = fmaxf(am, fabsf(ft_f16_to_f32(ft_f32_to_f16(x[c]))));
		scb[r] = am;
		float s = (1.0f / am) * 127.0f;   /* torch's 127 / t is t.reciprocal() * 127 */
		for (int c = 0; c < cols; c++) {
			float v = am > 0 ? nearbyintf(ft_f16_to_f32(ft_f32_to_f16(x[c])) * s) : 0;
			cb[(size_t)r * cols + c] = (int8_t)v;
		}
	}
}

/* torch.sum of a contiguous float32 vector on the CPU, in torch's order
 * (aten/src/ATen/native/cpu/SumKernel.cpp, one thread): 8-float vectors
 * summed as 4 interleaved rows through a 4-level cascade, the rows added,
 * the scalar tail summed, then the lanes (checked bit-equal against
 * torch 2.15 for sizes 5 to 100003 on an AVX-512 machine).  The nested
 * absmax's offset is the mean of the absmaxes, and a last-bit difference
 * there moves absmax codes, so bnb's bytes depend on this order (and on
 * torch's thread count: several threads sum chunks separately). */
static float torch_sum_f32(const float *x, size_t n)
{
	enum { ILP = 4, LV = 4, WMAX = 8 };
	size_t W = n >= WMAX ? WMAX : 1, nvec = n / W, rows = nvec / ILP;
	float acc[LV][ILP][WMAX] = { { { 0 } } };
	int cl = 0;
	while (rows > 1 && ((size_t)1 << cl) < rows)
		cl++;
	int lp = cl / LV > 4 ? cl / LV : 4;
	size_t step = (size_t)1 << lp, mask = step - 1, i = 0;
	while (i + step <= rows) {
		for (size_t j = 0; j < step; j++, i++)
			for (int k = 0; k < ILP; k++)
				for (size_t w = 0; w < W; w++)
					acc[0][k][w] += x[(i * ILP + k) * W + w];
		for (int j = 1; j < LV; j++) {
			for (int k = 0; k < ILP; k++)
				for (size_t w = 0; w < W; w++) {
					acc[j][k][w] += acc[j - 1][k][w];
					acc[j - 1][k][w] = 0;
				}
			if (i & (mask << (j * lp)))
				break;
		}
	}
	for (; i < rows; i++)
		for (int k = 0; k < ILP; k++)
			for (size_t w = 0; w < W; w++)
				acc[0][k][w] += x[(i * ILP + k) * W + w];
	for (int j = 1; j < LV; j++)
		for (int k = 0; k < ILP; k++)
			for (size_t w = 0; w < W; w++)
				acc[0][k][w] += acc[j][k][w];
	for (size_t v = rows * ILP; v < nvec; v++)
		for (size_t w = 0; w < W; w++)
			acc[0][0][w] += x[v * W + w];
	for (int k = 1; k < ILP; k++)
		for (size_t w = 0; w < W; w++)
			acc[0][0][w] += acc[0][k][w];
	float s = 0;
	for (size_t k = nvec * W; k < n; k++)
		s += x[k];
	for (size_t w = 0; w < W; w++)
		s += acc[0][0][w];
	return s;
}

void ft_qweight_make(ft_qweight *q, const float *w, int out, int in, int bits, int fp4,
		     int double_quant)
{
	memset(q, 0, sizeof *q);
	q->bits = bits;
	q->fp4 = fp4;
	q->in = in;
	q->out = out;
	size_t n = (size_t)out * in;
	if (bits == 8) {
		q->cb = ft_xmalloc(n);
		q->scb = ft_xmalloc((size_t)out * sizeof(float));
		ft_quant_int8_rows(w, out, in, q->cb, q->scb);
		return;
	}
	size_t nb = (n + FT_Q4_BLOCK - 1) / FT_Q4_BLOCK;
	q->packed = ft_xmalloc((n + 1) / 2);
	float *am = ft_xmalloc(nb * sizeof(float));
	ft_quant4(w, n, fp4, q->packed, am);
	if (!double_quant) {
		q->absmax = am;
		return;
	}
	q->offset = torch_sum_f32(am, nb) / (float)nb;   /* absmax.mean() */
	for (size_t b = 0; b < nb; b++)
		am[b] -= q->offset;
	q->qabsmax = ft_xmalloc(nb);
	q->absmax2 = ft_xmalloc((nb + FT_Q4_BLOCK2 - 1) / FT_Q4_BLOCK2 * sizeof(float));
	ft_quant_blockwise8(am, nb, FT_Q4_BLOCK2, q->qabsmax, q->absmax2);
	free(am);
}

void ft_qweight_free(ft_qweight *q)
{
	free(q->packed); free(q->absmax); free(q->qabsmax); free(q->absmax2);
	free(q->cb); free(q->scb);
	memset(q, 0, sizeof *q);
}

size_t ft_qweight_bytes(const ft_qweight *q)
{
	size_t n = (size_t)q->out * q->in, nb = (n + FT_Q4_BLOCK - 1) / FT_Q4_BLOCK;
	if (q->bits == 8)
		return n + (size_t)q->out * sizeof(float);
	if (!q->qabsmax)
		return (n + 1) / 2 + nb * sizeof(float);
	return (n + 1) / 2 + nb + (nb + FT_Q4_BLOCK2 - 1) / FT_Q4_BLOCK2 * sizeof(float) + sizeof(float);
}

/* Rows [r0, r1): elements in order, the block's absmax recomputed only
 * when the block changes (a block of 64 may straddle two rows). */
void ft_qweight_rows(const ft_qweight *q, int r0, int r1, float *dst)
{
	size_t i0 = (size_t)r0 * q->in, i1 = (size_t)r1 * q->in;
	if (q->bits == 8) {
		for (int r = r0; r < r1; r++) {
			float s = ft_k_int8_scale(q->scb[r]);
			const int8_t *c = q->cb + (size_t)r * q->in;
			float *d = dst + (size_t)(r - r0) * q->in;
			for (int k = 0; k < q->in; k++)
				d[k] = (float)c[k] * s;
		}
		return;
	}
	const float *code = q->fp4 ? ft_fp4_code : ft_nf4_code;
	/* both codes of each byte value: one load per two weights */
	float pair[256][2];
	for (int v = 0; v < 256; v++) {
		pair[v][0] = code[v >> 4];
		pair[v][1] = code[v & 15];
	}
	size_t i = i0;
	while (i < i1) {
		size_t b = i / FT_Q4_BLOCK, e = (b + 1) * FT_Q4_BLOCK;
		if (e > i1) e = i1;
		float a = ft_k_q4_absmax(q->absmax, q->qabsmax, q->absmax2, ft_dynamic_code,
					 q->offset, b);
		float *d = dst - i0;
		if (i < e && (i & 1))   /* a segment starting on a low nibble */
			d[i] = code[ft_k_nibble(q->packed, i)] * a, i++;
		for (; i + 1 < e; i += 2) {
			const float *p = pair[q->packed[i >> 1]];
			d[i] = p[0] * a;
			d[i + 1] = p[1] * a;
		}
		if (i < e)
			d[i] = code[ft_k_nibble(q->packed, i)] * a, i++;
	}
}
