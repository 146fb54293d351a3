/* attention.cu - fused ("flash") causal softmax attention with segment
 * ids, key padding (each row's real length), sliding window and GQA, as ft_attention_forward/backward
 * (lib/model/layers.c).
 *
 * FlashAttention-2's algorithm; the per-tile arithmetic (online softmax,
 * mask, tile skipping) is lib/model/flash.h's, shared with the host
 * reference lib/model/flash_ref.c that tests/unit/test_flash.c checks
 * against the CPU attention.  Three kernels, no [T, T] buffer anywhere:
 *   forward  one block per (query tile, q head, batch row): Q tile in
 *            shared memory, K/V tiles streamed through it, running max /
 *            sum / output in registers; writes O and the row lse.
 *   dK, dV   one block per (key tile, kv head, batch row): loops over
 *            the group's q heads and the query tiles that can see the
 *            keys, recomputing P = exp(s - lse); GQA groups accumulate in
 *            registers (no K/V copies, no atomics).
 *   dQ       one block per (query tile, q head, batch row): a second
 *            pass over key tiles, so dQ too is written once.
 * Every output element is written by one thread in a fixed order: the
 * results are run-to-run identical.  Tile pairs that the mask leaves
 * empty (above the diagonal, outside the window, other segments, keys
 * past the row's real length) are skipped.
 *
 * Thread mapping: 256 threads = 32 groups of 8 lanes; a group owns one
 * row of the tile (a query; a key in the dK/dV kernel), its 8 lanes take
 * every 8th score of the row and every 8th feature d of the accumulator
 * (hd <= 256: at most 32 registers per accumulator).  Shared rows are
 * padded (fa_hp) so the lanes of a warp hit distinct banks.
 *
 * Element type E of Q, K, V, O, dO and the gradients: float in the fp32
 * mode (these kernels, products on CUDA cores in fp32); bf16 / fp16 when
 * training in the half modes (the q|k|v buffer is half), which run the
 * tensor-core kernels of flash_tc.cuh, each pass falling back to these
 * kernels on half tiles where its tensor-core kernel's shared memory
 * exceeds the device's opt-in bound (run_pass; docs/CUDA-ATTENTION.md).  fp32
 * passes whose 32-row tiles exceed it (hd 256 on sm_86 / sm_89) run
 * these kernels on 16 x 16 tiles, 128 threads (FA_BT_SMALL).
 */
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "cuda/common.cuh"

static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
static __device__ __forceinline__ void put(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }
static __device__ __forceinline__ void put(__half *p, float x) { *p = __float2half_rn(x); }
#include <mma.h>
#include <type_traits>
#include <vector>
#include "cuda/flash_kernels.cuh"
#include "cuda/flash_tc.cuh"
static_assert(FT_CU_ATTN_MAX_HD <= FA_LANES * FA_MAX_NDR, "head_dim bound of run_pass");

/* ---- launchers ---- */

static const char *pass_name[] = { "flash attention forward", "flash attention dK/dV",
				   "flash attention dQ" };

/* The bytes of shared memory kernel f needs per block with `bytes` of
 * dynamic shared memory (the opt-in bounds static + dynamic together),
 * and the device's opt-in bound. */
static int smem_need(const void *f, size_t bytes, size_t *need, int *most, int pass)
{
	int dev = 0;
	cudaFuncAttributes fa;
	CU(cudaGetDevice(&dev), "%s", pass_name[pass]);
	CU(cudaDeviceGetAttribute(most, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "%s",
	   pass_name[pass]);
	CU(cudaFuncGetAttributes(&fa, f), "%s", pass_name[pass]);
	*need = bytes + fa.sharedSizeBytes;
	return 0;
}

/* The kernels of pass 0: forward; 1: dK/dV; 2: dQ, and their dynamic
 * shared bytes.  CUDA cores: the accumulators' register count follows hd
 * (8 lanes share a row: hd/8 per thread) in the fp32 mode on 32-row
 * tiles; the fallbacks (half elements where the tensor-core kernels'
 * shared memory does not fit, 16-row tiles where the 32-row ones do
 * not) are for large heads (hd > 160 at sm_86's 99 KiB), so one
 * instantiation per pass, the largest, serves each (NDR changes
 * registers, not results). */
template <typename E, int NDR, int BT>
static void (*core_ndr(int pass))(fa_args<E>)
{
	return pass == 0 ? fa_fwd_k<E, NDR, BT> : pass == 1 ? fa_dkdv_k<E, NDR, BT>
							    : fa_dq_k<E, NDR, BT>;
}

template <typename E>
static void (*core_kernel(int pass, int hd))(fa_args<E>)
{
	if constexpr (sizeof(E) == 4) {
		if (hd <= 64)
			return core_ndr<E, 8, FT_FA_BR>(pass);
		if (hd <= 128)
			return core_ndr<E, 16, FT_FA_BR>(pass);
	}
	return core_ndr<E, FA_MAX_NDR, FT_FA_BR>(pass);
}

template <typename E, int BT>
static size_t core_smem(int pass, int hd)
{
	return pass == 0 ? fa_smem_fwd<E, BT>(hd) : pass == 1 ? fa_smem_dkdv<E, BT>(hd)
							      : fa_smem_dq<E, BT>(hd);
}

template <typename E>
static size_t tc_smem(int pass, int hd)
{
	size_t es = sizeof(E);
	return pass == 0 ? fa_tc_smem_fwd(hd, es) : pass == 1 ? fa_tc_smem_dkdv(hd, es)
							   : fa_tc_smem_dq(hd, es);
}

/* The kernel families, as FT_CUDA_CHECK_ATTN names them. */
enum { FA_TC, FA_CORE, FA_CORE16, FA_NFAM };
static const char *fam_env[FA_NFAM] = { "tc", "fp32", "fp32-16" };
static const char *fam_name[FA_NFAM] = { "tensor-core (bf16/fp16)", "fp32 (CUDA-core)",
					 "16-row fp32 (CUDA-core)" };

/* A pass's kernel in order of preference: the one run is the first whose
 * shared memory (need: dynamic + static) fits. */
template <typename E> struct fa_cand {
	void (*k)(fa_args<E>);
	size_t sm, need;
	int fam, bt;
	const char *where;     /* for the messages: "on tensor cores", ... */
};

/* Half elements: the tensor-core kernel (flash_tc.cuh), else the
 * CUDA-core one on the same half tiles (fp32 products and accumulators:
 * more exact, slower; every sm_80+ card that runs half fits it up to
 * hd 256).  fp32: the CUDA-core kernels on 32-row tiles, else on 16-row
 * ones (a quarter of the tile bytes; sm_86 / sm_89 at hd 256). */
template <typename E>
static int candidates(fa_cand<E> *c, int pass, int hd)
{
	if constexpr (sizeof(E) == 2) {
		c[0] = { pass == 0 ? fa_fwd_tc<E> : pass == 1 ? fa_dkdv_tc<E> : fa_dq_tc<E>,
			 tc_smem<E>(pass, hd), 0, FA_TC, FT_FA_BR, "on tensor cores" };
		c[1] = { core_kernel<E>(pass, hd), core_smem<E, FT_FA_BR>(pass, hd), 0, FA_CORE,
			 FT_FA_BR, "on CUDA cores" };
	} else {
		c[0] = { core_kernel<E>(pass, hd), core_smem<E, FT_FA_BR>(pass, hd), 0, FA_CORE,
			 FT_FA_BR, "on 32-row tiles" };
		c[1] = { core_ndr<E, FA_MAX_NDR, FA_BT_SMALL>(pass),
			 core_smem<E, FA_BT_SMALL>(pass, hd), 0, FA_CORE16, FA_BT_SMALL,
			 "on 16-row tiles" };
	}
	return 2;
}

/* FT_CUDA_CHECK_ATTN=tc|fp32|fp32-16 (tests: tests/bats/ft-train-cuda-half-emu.bats,
 * ft-train-cuda-emu.bats): an attention pass fails, naming both, unless
 * it runs that kernel family, so a test can tell which one training ran
 * per pass; why is the preferred kernel's shared memory where the wanted
 * family was preferred but did not fit.  Read once. */
static int want_family(void)
{
	static int want = -2;
	if (want == -2) {
		const char *e = getenv("FT_CUDA_CHECK_ATTN");
		want = !e || !*e ? -1 : FA_NFAM;
		for (int f = 0; want == FA_NFAM && f < FA_NFAM; f++)
			if (!strcmp(e, fam_env[f]))
				want = f;
	}
	return want;
}

template <typename E>
static int check_family(const fa_cand<E> *c, int pick, int most, int pass)
{
	int want = want_family();
	if (want < 0 || want == c[pick].fam)
		return 0;
	if (want == FA_NFAM)
		return ft_fail("FT_CUDA_CHECK_ATTN: expected tc, fp32 or fp32-16");
	for (int i = 0; i < pick; i++)
		if (c[i].fam == want)   /* fallen back from the wanted one */
			return ft_fail("attention: FT_CUDA_CHECK_ATTN=%s, but the %s kernels run: "
				       "%s %s needs %zu bytes of shared memory per block, the "
				       "device allows %d", fam_env[want], fam_name[c[pick].fam],
				       pass_name[pass], c[i].where, c[i].need, most);
	return ft_fail("attention: FT_CUDA_CHECK_ATTN=%s, but the %s kernels run", fam_env[want],
		       fam_name[c[pick].fam]);
}

/* One pass: the first candidate that fits the device's opt-in bound;
 * fails naming both sizes where neither does. */
template <typename E>
static int run_pass(const fa_args<E> &p, int B, int pass, cudaStream_t st)
{
	fa_cand<E> c[2];
	int n = candidates(c, pass, p.hd), most = 0, pick = -1;
	for (int i = 0; i < n && pick < 0; i++) {
		TRY(smem_need((const void *)c[i].k, c[i].sm, &c[i].need, &most, pass));
		if (c[i].need <= (size_t)most)
			pick = i;
	}
	if (pick < 0)
		return ft_fail("%s: head_dim %d needs %zu bytes of shared memory per block %s, "
			       "%zu %s, the device allows %d", pass_name[pass], p.hd, c[0].need,
			       c[0].where, c[1].need, c[1].where, most);
	TRY(check_family(c, pick, most, pass));
	void (*k)(fa_args<E>) = c[pick].k;
	size_t sm = c[pick].sm;
	int bt = c[pick].bt;
	/* over the default 48 KiB needs the opt-in */
	CU(cudaFuncSetAttribute((const void *)k, cudaFuncAttributeMaxDynamicSharedMemorySize,
				(int)sm), "%s (%zu bytes of shared memory)", pass_name[pass], sm);
	dim3 grid((p.T + bt - 1) / bt, pass == 1 ? p.Hk : p.Hq, B);
	FT_LAUNCH(k, grid, FA_BT_THREADS(bt), sm, st)(p);
	LAUNCHED(pass_name[pass], "B=%d T=%d Hq=%d Hk=%d hd=%d", B, p.T, p.Hq, p.Hk, p.hd);
	return 0;
}

static int check_shape(const ft_cu_attn *s)
{
	if (s->Hk <= 0 || s->Hq % s->Hk || s->hd <= 0 || s->hd > FT_CU_ATTN_MAX_HD ||
	    s->T <= 0 || s->B <= 0)
		return ft_fail("attention: %d heads over %d kv heads, head_dim %d (at most %d), "
			       "B=%d T=%d: unsupported", s->Hq, s->Hk, s->hd, FT_CU_ATTN_MAX_HD,
			       s->B, s->T);
	return 0;
}

/* ld NULL or 0 fields: contiguous [B*T, H*hd] */
template <typename E>
static fa_args<E> args_of(const ft_cu_attn *s, const ft_cu_attn_ld *ld)
{
	fa_args<E> p;
	memset(&p, 0, sizeof p);
	p.seg = s->seg;
	p.len = s->len;
	p.T = s->T;
	p.Hq = s->Hq;
	p.Hk = s->Hk;
	p.hd = s->hd;
	p.window = s->window;
	p.scale = s->scale > 0 ? s->scale : 1.0f / sqrtf((float)s->hd);
	p.softcap = s->softcap;
	int qd = s->Hq * s->hd, kd = s->Hk * s->hd;
	p.ldq = ld && ld->q ? ld->q : qd;
	p.ldk = ld && ld->k ? ld->k : kd;
	p.ldv = ld && ld->v ? ld->v : kd;
	p.lddq = ld && ld->dq ? ld->dq : qd;
	p.lddk = ld && ld->dk ? ld->dk : kd;
	p.lddv = ld && ld->dv ? ld->dv : kd;
	return p;
}

template <typename E>
static int flash_forward(cudaStream_t st, E *out, float *lse, const E *q, const E *k,
			 const E *v, const ft_cu_attn *s, const ft_cu_attn_ld *ld = NULL)
{
	TRY(check_shape(s));
	fa_args<E> p = args_of<E>(s, ld);
	p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
	return run_pass(p, s->B, 0, st);
}

/* Di: [B*T, Hq] scratch.  Writes (does not add to) dq, dk, dv. */
template <typename E>
static int flash_backward(cudaStream_t st, E *dq, E *dk, E *dv, float *Di, const E *dout,
			  const E *q, const E *k, const E *v, const E *out,
			  const float *lse, const ft_cu_attn *s, const ft_cu_attn_ld *ld = NULL)
{
	TRY(check_shape(s));
	fa_args<E> p = args_of<E>(s, ld);
	p.q = q, p.k = k, p.v = v, p.o = out, p.dout = dout, p.lse = (float *)lse, p.Di = Di;
	p.dq = dq, p.dk = dk, p.dv = dv;
	size_t NH = (size_t)s->B * s->T * s->Hq;
	unsigned blocks = (unsigned)((NH + 255) / 256);
	FT_LAUNCH(rowdot_k<E>, blocks, 256, 0, st)(Di, out, dout, NH, s->hd);
	LAUNCHED("attention rowdot", "N*Hq=%zu hd=%d", NH, s->hd);
	TRY(run_pass(p, s->B, 1, st));
	return run_pass(p, s->B, 2, st);
}

/* The half element types compile with the fp32 one, so half activations
 * are a change of pointer types in layer.cu, not new kernels. */
template int flash_forward<__nv_bfloat16>(cudaStream_t, __nv_bfloat16 *, float *,
					  const __nv_bfloat16 *, const __nv_bfloat16 *,
					  const __nv_bfloat16 *, const ft_cu_attn *,
					  const ft_cu_attn_ld *);
template int flash_forward<__half>(cudaStream_t, __half *, float *, const __half *,
				   const __half *, const __half *, const ft_cu_attn *,
				   const ft_cu_attn_ld *);
template int flash_backward<__nv_bfloat16>(cudaStream_t, __nv_bfloat16 *, __nv_bfloat16 *,
					   __nv_bfloat16 *, float *, const __nv_bfloat16 *,
					   const __nv_bfloat16 *, const __nv_bfloat16 *,
					   const __nv_bfloat16 *, const __nv_bfloat16 *,
					   const float *, const ft_cu_attn *, const ft_cu_attn_ld *);
template int flash_backward<__half>(cudaStream_t, __half *, __half *, __half *, float *,
				    const __half *, const __half *, const __half *,
				    const __half *, const __half *, const float *,
				    const ft_cu_attn *, const ft_cu_attn_ld *);

int ft_cu_attention_forward_as(ft_cuda_model *dm, int t, void *out, float *lse, const void *q,
			       const void *k, const void *v, const ft_cu_attn *s,
			       const ft_cu_attn_ld *ld)
{
	if (t == FT_ACT_BF16)
		return flash_forward<__nv_bfloat16>(dm->stream, (__nv_bfloat16 *)out, lse,
						    (const __nv_bfloat16 *)q,
						    (const __nv_bfloat16 *)k,
						    (const __nv_bfloat16 *)v, s, ld);
	if (t == FT_ACT_F16)
		return flash_forward<__half>(dm->stream, (__half *)out, lse, (const __half *)q,
					     (const __half *)k, (const __half *)v, s, ld);
	return flash_forward<float>(dm->stream, (float *)out, lse, (const float *)q,
				    (const float *)k, (const float *)v, s, ld);
}

int ft_cu_attention_backward_as(ft_cuda_model *dm, int t, void *dq, void *dk, void *dv,
				const void *dout, const void *q, const void *k, const void *v,
				const void *out, const float *lse, const ft_cu_attn *s,
				const ft_cu_attn_ld *ld)
{
	if (t == FT_ACT_BF16) {
		typedef __nv_bfloat16 E;
		return flash_backward<E>(dm->stream, (E *)dq, (E *)dk, (E *)dv, dm->att_di,
					 (const E *)dout, (const E *)q, (const E *)k, (const E *)v,
					 (const E *)out, lse, s, ld);
	}
	if (t == FT_ACT_F16) {
		typedef __half E;
		return flash_backward<E>(dm->stream, (E *)dq, (E *)dk, (E *)dv, dm->att_di,
					 (const E *)dout, (const E *)q, (const E *)k, (const E *)v,
					 (const E *)out, lse, s, ld);
	}
	return flash_backward<float>(dm->stream, (float *)dq, (float *)dk, (float *)dv,
				     dm->att_di, (const float *)dout, (const float *)q,
				     (const float *)k, (const float *)v, (const float *)out, lse,
				     s, ld);
}

/* ---- the attention alone, for tests/gpu ---- */

template <typename E> struct att_bufs {
	E *q, *k, *v, *dout, *out, *dq, *dk, *dv;
	float *lse, *Di;
	int32_t *seg, *len;
};

/* Host fp32 <-> the device element type E (bf16 / fp16: round to nearest
 * even, the CPU path's conversions; the host array is staged in tmp). */
static uint16_t half_bits(float x, int bf) { return bf ? ft_k_f32_to_bf16(x) : ft_k_f32_to_f16(x); }
static float half_value(uint16_t h, int bf) { return bf ? ft_k_bf16_to_f32(h) : ft_k_f16_to_f32(h); }

template <typename E>
static int upload(cudaStream_t st, E *dst, const float *src, size_t n, std::vector<uint16_t> &tmp)
{
	const void *from = src;
	if constexpr (sizeof(E) == 2) {
		tmp.resize(n);
		for (size_t i = 0; i < n; i++)
			tmp[i] = half_bits(src[i], std::is_same<E, __nv_bfloat16>::value);
		from = tmp.data();
	}
	CU(cudaMemcpyAsync(dst, from, n * sizeof(E), cudaMemcpyHostToDevice, st), "attention input");
	return 0;
}

/* after the stream is synchronised */
template <typename E>
static int download(float *dst, const E *src, size_t n)
{
	if constexpr (sizeof(E) == 2) {
		std::vector<uint16_t> tmp(n);
		CU(cudaMemcpy(tmp.data(), src, n * 2, cudaMemcpyDeviceToHost), "attention result");
		for (size_t i = 0; i < n; i++)
			dst[i] = half_value(tmp[i], std::is_same<E, __nv_bfloat16>::value);
	} else {
		CU(cudaMemcpy(dst, src, n * 4, cudaMemcpyDeviceToHost), "attention result");
	}
	return 0;
}

template <typename E>
static int attention_run_on(cudaStream_t st, const att_bufs<E> *d, const ft_cuda_attn_shape *s,
			    const float *const in[4], float *const res[5])
{
	size_t N = (size_t)s->B * s->T, nq = N * s->Hq * s->hd, nk = N * s->Hk * s->hd;
	size_t n_in[4] = { nq, nk, nk, nq }, n_res[5] = { nq, N * s->Hq, nq, nk, nk };
	E *const din[4] = { d->q, d->k, d->v, d->dout };
	E *const dres[4] = { d->out, d->dq, d->dk, d->dv };
	std::vector<uint16_t> tmp[4];
	for (int i = 0; i < 4; i++)
		TRY(upload(st, din[i], in[i], n_in[i], tmp[i]));
	if (s->seg)
		CU(cudaMemcpyAsync(d->seg, s->seg, N * 4, cudaMemcpyHostToDevice, st), "segment ids");
	if (s->len)
		CU(cudaMemcpyAsync(d->len, s->len, (size_t)s->B * 4, cudaMemcpyHostToDevice, st),
		   "row lengths");
	ft_cu_attn ds = *s;
	ds.seg = s->seg ? d->seg : NULL;
	ds.len = s->len ? d->len : NULL;
	TRY(flash_forward<E>(st, d->out, d->lse, d->q, d->k, d->v, &ds));
	TRY(flash_backward<E>(st, d->dq, d->dk, d->dv, d->Di, d->dout, d->q, d->k, d->v,
			      d->out, d->lse, &ds));
	CU(cudaStreamSynchronize(st), "attention B=%d T=%d Hq=%d Hk=%d hd=%d", s->B, s->T,
	   s->Hq, s->Hk, s->hd);
	CU(cudaMemcpy(res[1], d->lse, n_res[1] * 4, cudaMemcpyDeviceToHost), "attention lse");
	for (int i = 0; i < 4; i++)
		TRY(download(res[i ? i + 1 : 0], dres[i], n_res[i ? i + 1 : 0]));
	return 0;
}

/* Buffers carved from one allocation (fp32 first, so every array stays
 * aligned), then the run. */
template <typename E>
static int attention_run_as(cudaStream_t st, const ft_cuda_attn_shape *s, const float *const in[4],
			    float *const res[5])
{
	size_t N = (size_t)s->B * s->T, nq = N * s->Hq * s->hd, nk = N * s->Hk * s->hd;
	size_t nl = N * s->Hq;
	size_t total = 4 * (2 * nl + N + (size_t)s->B) + sizeof(E) * (4 * nq + 4 * nk);
	char *mem = NULL;
	CU(cudaMalloc(&mem, total), "%zu bytes", total);
	att_bufs<E> d;
	d.lse = (float *)mem;
	d.Di = d.lse + nl;
	d.seg = (int32_t *)(d.Di + nl);
	d.len = d.seg + N;
	E *at = (E *)(d.len + s->B);
	E **bufs[] = { &d.q, &d.dout, &d.out, &d.dq, &d.k, &d.v, &d.dk, &d.dv };
	size_t sizes[] = { nq, nq, nq, nq, nk, nk, nk, nk };
	for (int i = 0; i < 8; i++) {
		*bufs[i] = at;
		at += sizes[i];
	}
	int rc = attention_run_on(st, &d, s, in, res);
	cudaFree(mem);
	return rc;
}

int ft_cuda_attention_run_as(int device, ft_cuda_precision p, const ft_cuda_attn_shape *s,
			     const float *q, const float *k, const float *v, const float *dout,
			     float *out, float *lse, float *dq, float *dk, float *dv)
{
	TRY(check_shape(s));
	CU(cudaSetDevice(device), "device %d", device);
	cudaStream_t st = NULL;
	const float *const in[4] = { q, k, v, dout };
	float *const res[5] = { out, lse, dq, dk, dv };
	cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
	int rc = e != cudaSuccess ? ft_cu_fail(e, "cudaStreamCreateWithFlags", "attention")
	       : p == FT_CUDA_BF16 ? attention_run_as<__nv_bfloat16>(st, s, in, res)
	       : p == FT_CUDA_F16 ? attention_run_as<__half>(st, s, in, res)
				: attention_run_as<float>(st, s, in, res);
	if (st)
		cudaStreamDestroy(st);
	return rc;
}

int ft_cuda_attention_run(int device, const ft_cuda_attn_shape *s, const float *q,
			  const float *k, const float *v, const float *dout, float *out,
			  float *lse, float *dq, float *dk, float *dv)
{
	return ft_cuda_attention_run_as(device, FT_CUDA_F32, s, q, k, v, dout, out, lse, dq, dk,
					dv);
}
