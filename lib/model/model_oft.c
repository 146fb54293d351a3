/* model_oft.c - PEFT's OFT (peft/tuners/oft/layer.py, Linear) on the
 * decoder's linear modules: the module's input is rotated block by block
 * by orthogonal-ish matrices R_i = CayleyNeumann(Q_i) (format/adapter_oft.h)
 * and the frozen base layer runs on the rotated input,
 *
 *   y = base(x_rot),  x_rot[n, i*b + c] = sum_k x[n, i*b + k] R_i[k][c].
 *
 * Backward: the base layer's input gradient dxr gives
 *   dR_i[k][c] = sum_n x[n, i*b + k] dxr[n, i*b + c]
 *   dx[n, i*b + k] += sum_c dxr[n, i*b + c] R_i[k][c]
 * and dR goes through the series to oft_R.weight.  The base may be a
 * QLoRA-quantized layer: it only ever sees x_rot (PEFT's bnb OFT does
 * the same).  PEFT 0.21's Linear.forward never applies its
 * MultiplicativeDropoutLayer, so module_dropout has no effect there, nor
 * here.
 */
#include <stdlib.h>
#include <string.h>
#include "util/error.h"
#include "format/adapter_oft.h"
#include "model/model_internal.h"

static void oft_release(ftp_oft *o)
{
	free(o->R.w);
	free(o->R.g);
	free(o->rot);
	free(o->drot);
	memset(o, 0, sizeof *o);
}

void ftp_oft_free(ft_model *m)
{
	for (int l = 0; m->oft && l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) oft_release(&m->oft[l * L_NLIN + j]);
	free(m->oft);
	m->oft = NULL;
}

int ftp_oft_setup(ft_model *m, int cfg_r, int cfg_block, unsigned targets, int terms)
{
	const ft_config *c = &m->c;
	if (c->fused)
		return ft_fail("OFT on Phi-3's fused modules (qkv_proj, gate_up_proj) is not implemented in ft yet");
	ftp_oft_free(m);
	m->oft_terms = terms;
	m->oft = ft_xcalloc((size_t)c->num_hidden_layers * L_NLIN, sizeof *m->oft);
	for (int l = 0; l < c->num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			if (!(targets >> j & 1)) continue;
			int in, out, r, b;
			ftp_lin_dims(c, j, &in, &out);
			if (ft_oft_dims(in, cfg_r, cfg_block, &r, &b) < 0)
				return ft_fail("OFT: give either oft_rank (%d) or oft_block_size (%d), as PEFT's "
					       "OFTConfig", cfg_r, cfg_block);
			ftp_oft *o = &m->oft[l * L_NLIN + j];
			size_t ne = (size_t)r * b * (b - 1) / 2, nb = (size_t)r * b * b;
			o->on = 1;
			o->r = r;
			o->b = b;
			o->R.w = ft_xcalloc(ne ? ne : 1, sizeof(float));   /* init_weights: zeros */
			o->rot = ft_xmalloc(nb * sizeof(float));
			o->drot = ft_xmalloc(nb * sizeof(float));
		}
	return 0;
}

const float *ftp_oft_rotate(ft_model *m, int l, int j, const float *x, int N, float *out)
{
	ftp_oft *o = ftp_oft_of(m, l, j);
	if (!o) return x;
	int b = o->b, in = o->r * b;
	size_t bb = (size_t)b * b;
	ft_oft_rotation(o->R.w, o->r, b, m->oft_terms, o->rot);
	for (int i = 0; i < o->r; i++)
		ft_sgemm(0, 0, N, b, b, 1, x + (size_t)i * b, in, o->rot + i * bb, b, 0, out + (size_t)i * b, in);
	return out;
}

const float *ftp_oft_input(ft_model *m, int l, int j, const float *x, int N)
{
	return ftp_oft_rotate(m, l, j, x, N, m->drop);
}

void ftp_oft_backward(ft_model *m, int l, int j, const float *x, const float *dxr, float *dx, int N)
{
	ftp_oft *o = ftp_oft_of(m, l, j);
	int b = o->b, in = o->r * b;
	size_t bb = (size_t)b * b;
	for (int i = 0; i < o->r; i++) {
		size_t off = (size_t)i * b;
		if (o->R.g)
			ft_sgemm(1, 0, b, b, N, 1, x + off, in, dxr + off, in, 0, o->drot + i * bb, b);
		if (dx)
			ft_sgemm(0, 1, N, b, b, 1, dxr + off, in, o->rot + i * bb, b, 1, dx + off, in);
	}
	if (o->R.g)
		ft_oft_rotation_backward(o->R.w, o->r, b, m->oft_terms, o->drot, o->R.g);
}

void ftp_oft_merge(ft_model *m)
{
	for (int l = 0; l < m->c.num_hidden_layers; l++)
		for (int j = 0; j < L_NLIN; j++) {
			ftp_oft *o = ftp_oft_of(m, l, j);
			int in, out;
			if (!o) continue;
			ftp_lin_dims(&m->c, j, &in, &out);
			ft_oft_rotation(o->R.w, o->r, o->b, m->oft_terms, o->rot);
			ft_oft_merge(m->layers[l].lin[j].w, out, in, o->b, o->rot);
		}
	ftp_oft_free(m);
}
