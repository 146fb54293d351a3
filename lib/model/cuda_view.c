/* cuda_view.c - copy an ft_model's shapes and pointers into the plain-C
 * view the CUDA backend reads (see cuda_view.h). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "model/cuda_view.h"
#include "util/error.h"
#include "model/model_internal.h"
#include "model/quant.h"
#include "format/adapter_oft.h"

/* cuda_view.h mirrors model_internal.h's structures for the C++ side,
 * which cannot include it; this file is the one that sees both, so the
 * mirror is checked here and a field added on one side fails the build
 * until the other side (and the copy below) follows. */
#define SAME_FIELD(a, b, f) \
	_Static_assert(offsetof(a, f) == offsetof(b, f) && \
		       sizeof(((a *)0)->f) == sizeof(((b *)0)->f), \
		       #a "." #f " mirrors " #b "." #f)
_Static_assert(FT_CV_NLIN == L_NLIN, "FT_CV_NLIN is model_internal.h's L_NLIN");
_Static_assert(sizeof(ft_cv_wg) == sizeof(ftp_wg), "ft_cv_wg mirrors ftp_wg");
SAME_FIELD(ft_cv_wg, ftp_wg, w);
SAME_FIELD(ft_cv_wg, ftp_wg, g);
_Static_assert(sizeof(ft_cv_lora) == sizeof(ftp_lora), "ft_cv_lora mirrors ftp_lora");
SAME_FIELD(ft_cv_lora, ftp_lora, on);
SAME_FIELD(ft_cv_lora, ftp_lora, r);
SAME_FIELD(ft_cv_lora, ftp_lora, scale);
SAME_FIELD(ft_cv_lora, ftp_lora, A);
SAME_FIELD(ft_cv_lora, ftp_lora, B);
_Static_assert(sizeof(ft_cv_layer) == sizeof(ftp_layer), "ft_cv_layer mirrors ftp_layer");
SAME_FIELD(ft_cv_layer, ftp_layer, ln1);
SAME_FIELD(ft_cv_layer, ftp_layer, ln2);
SAME_FIELD(ft_cv_layer, ftp_layer, lin);
SAME_FIELD(ft_cv_layer, ftp_layer, bias);
SAME_FIELD(ft_cv_layer, ftp_layer, lora);
SAME_FIELD(ft_cv_layer, ftp_layer, qn);
SAME_FIELD(ft_cv_layer, ftp_layer, kn);
SAME_FIELD(ft_cv_layer, ftp_layer, ln3);
SAME_FIELD(ft_cv_layer, ftp_layer, ln4);
_Static_assert(sizeof(ft_cv_qweight) == sizeof(ft_qweight), "ft_cv_qweight mirrors ft_qweight");
SAME_FIELD(ft_cv_qweight, ft_qweight, bits);
SAME_FIELD(ft_cv_qweight, ft_qweight, fp4);
SAME_FIELD(ft_cv_qweight, ft_qweight, in);
SAME_FIELD(ft_cv_qweight, ft_qweight, out);
SAME_FIELD(ft_cv_qweight, ft_qweight, packed);
SAME_FIELD(ft_cv_qweight, ft_qweight, absmax);
SAME_FIELD(ft_cv_qweight, ft_qweight, qabsmax);
SAME_FIELD(ft_cv_qweight, ft_qweight, absmax2);
SAME_FIELD(ft_cv_qweight, ft_qweight, offset);
SAME_FIELD(ft_cv_qweight, ft_qweight, cb);
SAME_FIELD(ft_cv_qweight, ft_qweight, scb);

static ft_cv_wg wg(ftp_wg x)
{
	ft_cv_wg r = { x.w, x.g };
	return r;
}

const char *ft_cuda_view_lin_name(int j)
{
	return j >= 0 && j < L_NLIN ? ft_lin_names[j] : "?";
}

void ft_cuda_view_group(const ft_cuda_view *v, int l, int g, ft_cv_group *out)
{
	static const int mods[FT_CV_NGROUP][3] = { { L_Q, L_K, L_V }, { L_GATE, L_UP, -1 } };
	memset(out, 0, sizeof *out);
	for (int i = 0; i < 3 && mods[g][i] >= 0; i++) {
		int j = mods[g][i];
		out->js[out->n++] = j;
		out->off[i] = out->base;
		out->base += v->lin_out[j];
		out->in = v->lin_in[j];
	}
	out->tot = out->base;
	for (int i = 0; i < out->n; i++) {
		const ft_cv_lora *lo = &v->layers[l].lora[out->js[i]];
		if (v->fused && i > 0) {   /* Phi-3: the lead's A, so its hidden */
			out->loff[i] = out->loff[0];
			continue;
		}
		out->loff[i] = lo->on ? out->tot : -1;
		out->tot += lo->on ? lo->r : 0;
	}
}

int ft_cuda_view_sliding(const ft_cuda_view *v, int l)
{
	return v->gemma && l >= 0 && l < 256 && (v->sliding[l / 64] >> (l % 64) & 1);
}

int ft_cv_lora_owner(const ft_cv_group *c, int i)
{
	for (int k = 0; k < i; k++)
		if (c->loff[k] == c->loff[i])
			return 0;
	return c->loff[i] >= 0;
}

int ft_cuda_view_of(ft_model *m, ft_cuda_view *v)
{
	const ft_config *c = &m->c;
	memset(v, 0, sizeof *v);
	if (c->head_dim % 2 || c->num_attention_heads % c->num_key_value_heads)
		return ft_fail("model shape not supported on CUDA: head_dim %d, %d heads, "
			       "%d kv heads", c->head_dim, c->num_attention_heads,
			       c->num_key_value_heads);
	v->V = c->vocab_size; v->D = c->hidden_size; v->F = c->intermediate_size;
	v->L = c->num_hidden_layers; v->Hq = c->num_attention_heads;
	v->Hk = c->num_key_value_heads; v->hd = c->head_dim;
	v->window = c->sliding_window; v->eps = (float)c->rms_norm_eps;
	v->qk_norm = c->qk_norm;
	v->fused = c->fused;
	v->rd = ftp_rotary_dim(c);
	if (v->rd % 2 || v->rd > v->hd)
		return ft_fail("model shape not supported on CUDA: rotary dim %d, head_dim %d",
			       v->rd, v->hd);
	for (int j = 0; j < L_NLIN; j++)
		ftp_lin_dims(c, j, &v->lin_in[j], &v->lin_out[j]);
	ft_rope_params_of(c, &v->rope);
	v->gemma = c->gemma;
	if (c->gemma) {
		v->attn_scale = (float)(1.0 / sqrt(c->query_pre_attn_scalar));
		v->attn_softcap = (float)c->attn_softcap;
		v->final_softcap = (float)c->final_softcap;
		memcpy(v->sliding, c->sliding_layers, sizeof v->sliding);
		ftp_rope_local_params(c, &v->rope_local);
	}
	/* the embedding trains in full fine-tuning, as PEFT's modules_to_save
	 * copy beside LoRA (docs/VOCAB.md) and with freeze_extra_modules */
	v->full = ftp_emb_trains(m);
	v->neftune_alpha = m->o.neftune_noise_alpha;
	v->label_smoothing = (float)m->o.label_smoothing;
	v->gen_neftune = m->gen_neft_on;
	v->gen_neftune_stream = m->gen_neft_stream;
	v->lora_rank = m->o.lora_rank;
	v->gradient_checkpointing = m->o.gradient_checkpointing;
	v->lora_dropout = m->lora_dropout_on ? m->o.lora_dropout : 0;
	v->seed = m->o.seed;
	v->qw = (const ft_cv_qweight *)m->qw;   /* [L * L_NLIN], mirrored above */
	v->fp8 = m->fp8;                         /* [L * L_NLIN] or NULL */
	v->qcode[0] = ft_nf4_code;
	v->qcode[1] = ft_fp4_code;
	v->qcode[2] = ft_dynamic_code;
	v->wte = wg(m->wte);
	v->lm_head = wg(m->lm_head);
	v->norm = wg(m->norm);
	v->layers = ft_xcalloc(v->L ? v->L : 1, sizeof *v->layers);
	for (int l = 0; l < v->L; l++) {
		ftp_layer *y = &m->layers[l];
		ft_cv_layer *d = &v->layers[l];
		d->ln1 = wg(y->ln1);
		d->ln2 = wg(y->ln2);
		d->qn = wg(y->qn);
		d->ln3 = wg(y->ln3);
		d->ln4 = wg(y->ln4);
		d->kn = wg(y->kn);
		for (int j = 0; j < L_NLIN; j++) {
			d->lin[j] = wg(y->lin[j]);
			ftp_lora *lo = &y->lora[j];
			d->lora[j].on = lo->on;
			d->lora[j].r = lo->r;
			d->lora[j].scale = lo->scale;
			d->lora[j].A = wg(lo->A);
			d->lora[j].B = wg(lo->B);
		}
		for (int j = 0; j < 3; j++)
			d->bias[j] = wg(y->bias[j]);
	}
	if (m->dora) {   /* lib/cuda/dora.cu */
		v->dora_mag = ft_xcalloc((size_t)v->L * L_NLIN, sizeof *v->dora_mag);
		for (int i = 0; i < v->L * L_NLIN; i++)
			if (m->dora[i].on)
				v->dora_mag[i] = wg(m->dora[i].mag);
	}
	if (m->oft) {   /* lib/cuda/oft.cu */
		v->oft = ft_xcalloc((size_t)v->L * L_NLIN, sizeof *v->oft);
		for (int i = 0; i < v->L * L_NLIN; i++) {
			const ftp_oft *o = &m->oft[i];
			if (!o->on) continue;
			if (o->b < 2) {
				ft_cuda_view_free(v);
				return ft_fail("OFT blocks of size %d: nothing to rotate", o->b);
			}
			ft_cv_oft d = { 1, o->r, o->b, wg(o->R) };
			v->oft[i] = d;
		}
		v->oft_K = ft_oft_coefs(m->oft_terms, v->oft_c);
	}
	v->nparams = m->nparams;
	v->params = ft_xcalloc(m->nparams ? m->nparams : 1, sizeof *v->params);
	for (size_t i = 0; i < m->nparams; i++) {
		ft_param *p = &m->params[i];
		ft_cv_param q = { p->name, p->w, p->g, p->n, p->trainable, p->decay };
		v->params[i] = q;
	}
	return 0;
}

void ft_cuda_view_neftune(const ft_cuda_view *v, float *out, int B, int T, uint64_t calls)
{
	size_t n = (size_t)B * T * (size_t)v->D;
	memset(out, 0, n * sizeof *out);   /* 0 + (float)u: the value the CPU adds */
	ft_neftune_add(out, n, ft_neftune_magnitude(v->neftune_alpha, T, v->D),
		       ft_neftune_seed(v->seed, calls));
}

void ft_cuda_view_neftune_tokens(const ft_cuda_view *v, float *out, const int *rows, int n, int nrows,
				 uint64_t k)
{
	memset(out, 0, (size_t)n * v->D * sizeof *out);
	ft_neftune_tokens(out, rows, n, nrows, v->neftune_alpha, v->D, v->gen_neftune_stream, k);
}

void ft_cuda_view_free(ft_cuda_view *v)
{
	free(v->layers);
	free(v->params);
	free(v->dora_mag);
	free(v->oft);
	v->oft = NULL;
	v->layers = NULL;
	v->params = NULL;
	v->dora_mag = NULL;
}
