/* preprocess.c - llamafactory 0.9.5's dataset processors; see preprocess.h */
#include <stdlib.h>
#include <string.h>
#include "data/preprocess.h"
#include "data/stage.h"
#include "util/sbuf.h"

struct ft_prep {
	const ft_tokenizer *tok;
	const ft_template *t;
	ft_prep_opts o;
	int32_t bos_id, eos_id, pad_id;
	char *eos_token;
	char *warning;
	const char **tok_names;    /* the template's named tokens and their ids */
	int32_t *tok_ids;
	size_t n_tok;
};

void ft_infer_seqlen(long long source_len, long long target_len, long long cutoff_len,
		     long long *ns, long long *nt)
{
	long long max_target;
	if (target_len * 2 < cutoff_len) max_target = cutoff_len;
	else if (source_len * 2 < cutoff_len) max_target = cutoff_len - source_len;
	else   /* int(cutoff_len * (target_len / (source_len + target_len))) */
		max_target = (long long)((double)cutoff_len * ((double)target_len / (double)(source_len + target_len)));
	long long new_target = max_target < target_len ? max_target : target_len;
	long long max_source = cutoff_len - new_target > 0 ? cutoff_len - new_target : 0;
	*ns = max_source < source_len ? max_source : source_len;
	*nt = new_target;
}

static int token_id(const ft_tokenizer *tok, const char *piece, const char *what, const char *tname)
{
	int32_t id = ft_tokenizer_token_to_id(tok, piece);
	if (id < 0)
		return ft_fail("template '%s' needs the %s '%s', which this tokenizer does not have "
			       "(llamafactory would add it and need resize_vocab; ft adds a template's tokens "
			       "only as given: --add_special_tokens to ft-tokenize and ft-train)",
			       tname, what, piece);
	return id;
}

ft_prep *ft_prep_new(const ft_tokenizer *tok, const ft_template *t, const ft_prep_opts *o)
{
	ft_prep *p = ft_xcalloc(1, sizeof *p);
	p->tok = tok;
	p->t = t;
	p->o = *o;
	const ft_tokenizer_info *inf = ft_tokenizer_info_get(tok);
	const char *tname = ft_template_name(t);
	p->bos_id = inf->bos_id;
	p->eos_id = inf->eos_id;
	p->eos_token = inf->eos_token ? ft_xstrdup(inf->eos_token) : NULL;
	size_t nstop = ft_template_n_stop_words(t), first_stop = 0;
	if (ft_template_replace_eos(t) && nstop) {   /* Template.fix_special_tokens */
		const char *w = ft_template_stop_word(t, 0);
		int id = token_id(tok, w, "eos token", tname);
		if (id < 0) goto fail;
		p->eos_id = id;
		free(p->eos_token);
		p->eos_token = ft_xstrdup(w);
		first_stop = 1;
	}
	if (p->eos_id < 0) {
		int id = token_id(tok, "<|endoftext|>", "eos token", tname);
		if (id < 0) goto fail;
		p->eos_id = id;
		p->eos_token = ft_xstrdup("<|endoftext|>");
	}
	p->pad_id = inf->pad_id >= 0 ? inf->pad_id : p->eos_id;
	for (size_t i = first_stop; i < nstop; i++)
		if (token_id(tok, ft_template_stop_word(t, i), "stop word", tname) < 0) goto fail;
	const char **names;
	p->n_tok = ft_template_tokens(t, &names);
	p->tok_names = names;
	p->tok_ids = ft_xcalloc(p->n_tok ? p->n_tok : 1, sizeof *p->tok_ids);
	for (size_t i = 0; i < p->n_tok; i++) {
		int id = token_id(tok, names[i], "token", tname);
		if (id < 0) goto fail;
		p->tok_ids[i] = id;
	}
	/* The endless-generation trap: turns end with a stop word the model's
	 * generation config does not stop on. */
	if (nstop) {
		int32_t sid = ft_tokenizer_token_to_id(tok, ft_template_stop_word(t, 0));
		int known = sid == inf->eos_id;
		for (int i = 0; i < inf->n_extra_eos; i++) known |= sid == inf->extra_eos_ids[i];
		if (!known)
			p->warning = ft_xasprintf(
				"template '%s' ends turns with '%s' but the tokenizer's eos is '%s'%s: make sure "
				"generation stops on '%s' (set eos_token_id in generation_config.json), or the "
				"model will not stop", tname, ft_template_stop_word(t, 0),
				inf->eos_token ? inf->eos_token : "(none)",
				ft_template_replace_eos(t) ? " (records use it as eos, as llamafactory's replace_eos)" : "",
				ft_template_stop_word(t, 0));
	}
	return p;
fail:
	ft_prep_free(p);
	return NULL;
}

void ft_prep_free(ft_prep *p)
{
	if (!p) return;
	free(p->eos_token);
	free(p->warning);
	free(p->tok_ids);
	free(p);
}

int32_t ft_prep_eos_id(const ft_prep *p) { return p->eos_id; }
const char *ft_prep_eos_token(const ft_prep *p) { return p->eos_token; }
int32_t ft_prep_pad_id(const ft_prep *p) { return p->pad_id; }
int32_t ft_prep_bos_id(const ft_prep *p) { return p->bos_id; }
const char *ft_prep_eos_warning(const ft_prep *p) { return p->warning; }
const ft_template *ft_prep_get_template(const ft_prep *p) { return p->t; }

void ft_prep_rec_free(ft_prep_rec *r)
{
	ft_i32vec_free(&r->ids); ft_i32vec_free(&r->labels);
	ft_i32vec_free(&r->ids2); ft_i32vec_free(&r->labels2);
}

int ft_prep_elements(const ft_prep *p, const ft_elements *e, ft_i32vec *out)
{
	for (size_t i = 0; i < e->n; i++) {
		const ft_element *x = &e->v[i];
		switch (x->kind) {
		case FT_EL_TEXT:
			if (*x->text && ft_tokenizer_encode(p->tok, x->text, strlen(x->text), 0, out) < 0) return -1;
			break;
		case FT_EL_TOKEN:
			for (size_t k = 0; k < p->n_tok; k++)
				if (!strcmp(p->tok_names[k], x->text)) { ft_i32vec_push(out, p->tok_ids[k]); break; }
			break;
		case FT_EL_BOS:
			if (p->bos_id >= 0) ft_i32vec_push(out, p->bos_id);
			break;
		case FT_EL_EOS:
			if (p->eos_id >= 0) ft_i32vec_push(out, p->eos_id);
			break;
		}
	}
	return 0;
}

/* Template._encode: ids per message.  1 when the example cannot be
 * rendered (marked), -1 on a tokenizer error. */
static int encode_messages(ft_prep *p, ft_example *e, const ft_message *m, size_t n, ft_i32vec *ids)
{
	if (ft_template_is_reasoning(p->t)) {   /* ReasoningTemplate.encode_multiturn */
		int rc = ft_prep_think_multiturn(p, m, n, e->system, e->tools,
						 p->o.mask_history && !ft_template_preserve_thinking(p->t), ids);
		if (rc == 1) {
			e->bad = FT_BAD_RENDER;
			free(e->why);
			e->why = ft_xstrdup(ft_errmsg());
		}
		return rc;
	}
	ft_elements *els = ft_xcalloc(n, sizeof *els);
	int rc = ft_template_render(p->t, m, n, e->system, e->tools, els);
	if (rc < 0) {
		e->bad = FT_BAD_RENDER;
		free(e->why);
		e->why = ft_xstrdup(ft_errmsg());
		rc = 1;
	}
	for (size_t i = 0; i < n && rc == 0; i++)
		if (ft_prep_elements(p, &els[i], &ids[i]) < 0) rc = -1;
	for (size_t i = 0; i < n; i++) ft_elements_free(&els[i]);
	free(els);
	return rc;
}

static void free_ids(ft_i32vec *ids, size_t n)
{
	for (size_t i = 0; i < n; i++) ft_i32vec_free(&ids[i]);
	free(ids);
}

static void push_n(ft_i32vec *v, int32_t x, long long n)
{
	for (long long i = 0; i < n; i++) ft_i32vec_push(v, x);
}

/* prompt + one response, encoded: prompt ids (all but the last message)
 * and response ids (encode_oneturn). */
static int oneturn(ft_prep *p, ft_example *e, const ft_message *resp, ft_i32vec *prompt, ft_i32vec *response)
{
	size_t n = e->n_prompt + 1;
	ft_message *m = ft_xmalloc(n * sizeof *m);
	memcpy(m, e->prompt, e->n_prompt * sizeof *m);
	m[n - 1] = *resp;
	ft_i32vec *ids = ft_xcalloc(n, sizeof *ids);
	int rc = ft_template_is_reasoning(p->t) ? 2 : encode_messages(p, e, m, n, ids);
	if (rc == 2) {   /* ReasoningTemplate.encode_oneturn */
		rc = ft_prep_think_oneturn(p, m, n, e->system, e->tools, prompt, response);
		if (rc == 1) {
			e->bad = FT_BAD_RENDER;
			free(e->why);
			e->why = ft_xstrdup(ft_errmsg());
		}
	} else if (rc == 0) {
		for (size_t i = 0; i + 1 < n; i++) ft_i32vec_append(prompt, ids[i].v, ids[i].n);
		ft_i32vec_append(response, ids[n - 1].v, ids[n - 1].n);
	}
	free_ids(ids, n);
	free(m);
	return rc;
}

static int prep_sft(ft_prep *p, ft_example *e, ft_prep_rec *r)
{
	size_t n = e->n_prompt + 1;
	ft_message *m = ft_xmalloc(n * sizeof *m);
	memcpy(m, e->prompt, e->n_prompt * sizeof *m);
	m[n - 1] = e->response[0];
	ft_i32vec *ids = ft_xcalloc(n, sizeof *ids);
	int rc = encode_messages(p, e, m, n, ids);
	free(m);
	if (rc) { free_ids(ids, n); return rc; }
	int eff = ft_template_efficient_eos(p->t), mh = p->o.mask_history;
	long long cutoff = p->o.cutoff_len, total = eff ? 1 : 0;
	size_t npairs = n / 2;
	for (size_t k = 0; k < npairs; k++) {
		size_t turn = mh ? npairs - 1 - k : k;   /* mask_history: last turns first */
		ft_i32vec *src = &ids[2 * turn], *tgt = &ids[2 * turn + 1];
		if (total >= cutoff) { r->truncated = 1; break; }
		long long sl, tl;
		ft_infer_seqlen((long long)src->n, (long long)tgt->n, cutoff - total, &sl, &tl);
		if (sl < (long long)src->n || tl < (long long)tgt->n) r->truncated = 1;
		total += sl + tl;
		ft_i32vec in = { 0 }, lab = { 0 };
		ft_i32vec_append(&in, src->v, (size_t)sl);
		ft_i32vec_append(&in, tgt->v, (size_t)tl);
		if (p->o.train_on_prompt) ft_i32vec_append(&lab, src->v, (size_t)sl);
		else if (eff && k != 0) { ft_i32vec_push(&lab, p->eos_id); push_n(&lab, FT_IGNORE_INDEX, sl - 1); }
		else push_n(&lab, FT_IGNORE_INDEX, sl);
		if (mh && k != 0) push_n(&lab, FT_IGNORE_INDEX, tl);
		else ft_i32vec_append(&lab, tgt->v, (size_t)tl);
		if (mh) {   /* prepend */
			ft_i32vec_append(&in, r->ids.v, r->ids.n);
			ft_i32vec_append(&lab, r->labels.v, r->labels.n);
			ft_i32vec_free(&r->ids); ft_i32vec_free(&r->labels);
			r->ids = in;
			r->labels = lab;
		} else {
			ft_i32vec_append(&r->ids, in.v, in.n);
			ft_i32vec_append(&r->labels, lab.v, lab.n);
			ft_i32vec_free(&in); ft_i32vec_free(&lab);
		}
	}
	if (eff) { ft_i32vec_push(&r->ids, p->eos_id); ft_i32vec_push(&r->labels, p->eos_id); }
	free_ids(ids, n);
	return 0;
}

static int prep_pairwise(ft_prep *p, ft_example *e, ft_prep_rec *r)
{
	ft_i32vec prompt = { 0 }, prompt2 = { 0 }, ch = { 0 }, rj = { 0 };
	int rc = oneturn(p, e, &e->response[0], &prompt, &ch);
	if (rc == 0) rc = oneturn(p, e, &e->response[1], &prompt2, &rj);
	if (rc == 0) {
		if (ft_template_efficient_eos(p->t)) { ft_i32vec_push(&ch, p->eos_id); ft_i32vec_push(&rj, p->eos_id); }
		long long sl, tl, tmax = (long long)(ch.n > rj.n ? ch.n : rj.n);
		ft_infer_seqlen((long long)prompt.n, tmax, p->o.cutoff_len, &sl, &tl);
		r->truncated = sl < (long long)prompt.n || tl < tmax;
		long long tc = tl < (long long)ch.n ? tl : (long long)ch.n, tr = tl < (long long)rj.n ? tl : (long long)rj.n;
		ft_i32vec_append(&r->ids, prompt.v, (size_t)sl);
		ft_i32vec_append(&r->ids, ch.v, (size_t)tc);
		push_n(&r->labels, FT_IGNORE_INDEX, sl);
		ft_i32vec_append(&r->labels, ch.v, (size_t)tc);
		ft_i32vec_append(&r->ids2, prompt.v, (size_t)sl);
		ft_i32vec_append(&r->ids2, rj.v, (size_t)tr);
		push_n(&r->labels2, FT_IGNORE_INDEX, sl);
		ft_i32vec_append(&r->labels2, rj.v, (size_t)tr);
	}
	ft_i32vec_free(&prompt); ft_i32vec_free(&prompt2); ft_i32vec_free(&ch); ft_i32vec_free(&rj);
	return rc;
}

/* prompt + response, cut by infer_seqlen, labels -100 on the prompt. */
static int feedback_seq(ft_prep *p, ft_example *e, const ft_message *resp, ft_i32vec *ids, ft_i32vec *labels,
			int *truncated)
{
	ft_i32vec prompt = { 0 }, res = { 0 };
	int rc = oneturn(p, e, resp, &prompt, &res);
	if (rc == 0) {
		if (ft_template_efficient_eos(p->t)) ft_i32vec_push(&res, p->eos_id);
		long long sl, tl;
		ft_infer_seqlen((long long)prompt.n, (long long)res.n, p->o.cutoff_len, &sl, &tl);
		*truncated |= sl < (long long)prompt.n || tl < (long long)res.n;
		ft_i32vec_append(ids, prompt.v, (size_t)sl);
		ft_i32vec_append(ids, res.v, (size_t)tl);
		push_n(labels, FT_IGNORE_INDEX, sl);
		ft_i32vec_append(labels, res.v, (size_t)tl);
	}
	ft_i32vec_free(&prompt); ft_i32vec_free(&res);
	return rc;
}

static int prep_kto(ft_prep *p, ft_example *e, const ft_example *kl, ft_prep_rec *r)
{
	if (!kl || kl->n_response < 2) {
		e->bad = FT_BAD_NEIGHBOUR;
		free(e->why);
		e->why = ft_xstrdup("the previous example (whose response kto uses for the KL term) is unusable");
		return 1;
	}
	r->kto_tag = *e->response[0].content != 0;
	const ft_message *resp = r->kto_tag ? &e->response[0] : &e->response[1];
	const ft_message *klr = *kl->response[0].content ? &kl->response[0] : &kl->response[1];
	int rc = feedback_seq(p, e, resp, &r->ids, &r->labels, &r->truncated);
	if (rc == 0) rc = feedback_seq(p, e, klr, &r->ids2, &r->labels2, &r->truncated);
	return rc;
}

static int prep_unsupervised(ft_prep *p, ft_example *e, ft_prep_rec *r)
{
	ft_message empty = { FT_ROLE_ASSISTANT, "" };
	const ft_message *resp = e->n_response == 1 ? &e->response[0] : &empty;
	ft_i32vec prompt = { 0 }, res = { 0 };
	int rc = oneturn(p, e, resp, &prompt, &res);
	if (rc == 0) {
		if (ft_template_efficient_eos(p->t)) ft_i32vec_push(&res, p->eos_id);
		long long sl, tl;
		ft_infer_seqlen((long long)prompt.n, (long long)res.n, p->o.cutoff_len, &sl, &tl);
		r->truncated = sl < (long long)prompt.n || tl < (long long)res.n;
		ft_i32vec_append(&r->ids, prompt.v, (size_t)sl);
		ft_i32vec_append(&r->labels, res.v, (size_t)tl);
	}
	ft_i32vec_free(&prompt); ft_i32vec_free(&res);
	return rc;
}

static int prep_pt(ft_prep *p, ft_example *e, ft_prep_rec *r)
{
	if (!e->n_prompt) {
		e->bad = FT_BAD_MISSING;
		e->why = ft_xstrdup("no text");
		return 1;
	}
	/* llamafactory appends the eos *text* ("<|end_of_text|>" for llama3) */
	const char *eos = !strcmp(ft_template_name(p->t), "llama3") ? "<|end_of_text|>" : p->eos_token;
	char *text = ft_xasprintf("%s%s", e->prompt[0].content, eos ? eos : "");
	int rc = ft_tokenizer_encode(p->tok, text, strlen(text), 0, &r->ids);
	free(text);
	return rc < 0 ? -1 : 0;
}

static int invalid(ft_example *e, int reason, const char *why)
{
	e->bad = reason;
	free(e->why);
	e->why = ft_xstrdup(why);
	return 1;
}

int ft_prep_example(ft_prep *p, ft_example *e, const ft_example *kl, ft_prep_rec *r)
{
	memset(r, 0, sizeof *r);
	if (e->bad) return 1;
	int stage = p->o.stage;
	if (stage == FT_STAGE_PT) return prep_pt(p, e, r);
	if (e->n_prompt % 2 != 1)
		return invalid(e, e->n_prompt ? FT_BAD_COUNT : FT_BAD_MISSING,
			       e->n_prompt ? "the prompt needs an odd number of messages" : "no prompt");
	if (stage == FT_STAGE_PPO || p->o.predict) return prep_unsupervised(p, e, r);
	if (stage == FT_STAGE_SFT) {
		if (e->n_response != 1) {
			/* the loader says which column was missing, when it knows */
			char *why = e->n_response == 0 && e->why ? ft_xasprintf("no response: %s", e->why)
				  : ft_xstrdup("no response (or more than one)");
			invalid(e, FT_BAD_RESPONSE, why);
			free(why);
			return 1;
		}
		return prep_sft(p, e, r);
	}
	if (e->n_response < 2)
		return invalid(e, FT_BAD_RESPONSE, stage == FT_STAGE_KTO ? "no kto label and response"
									  : "no chosen and rejected responses");
	if (stage == FT_STAGE_KTO) return prep_kto(p, e, kl, r);
	return prep_pairwise(p, e, r);
}
