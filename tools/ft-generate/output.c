/* output.c - ft-generate's results: JSON lines, prediction files with
 * LLaMA-Factory's metrics, and the interactive chat. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "util/atomicfile.h"
#include "cli/cli.h"
#include "ft-generate.h"
#include "util/json.h"
#include "gen/metrics.h"

/* Text of generated ids.  Ids the tokenizer does not know (a model whose
 * vocabulary is larger than its tokenizer's) are dropped, as the
 * `tokenizers` decoder drops them. */
static char *decode_ids(const gen_env *e, const ft_i32vec *ids, int skip)
{
	ft_i32vec known = {0};
	for (size_t i = 0; i < ids->n; i++)
		if (ft_tokenizer_id_to_token(e->tok, ids->v[i])) ft_i32vec_push(&known, ids->v[i]);
	char *s = ft_tokenizer_decode(e->tok, known.v, known.n, skip);
	ft_i32vec_free(&known);
	return s ? s : ft_xstrdup("");
}

static json_t *result_line(const gen_env *e, const gen_item *it, const ft_i32vec *out, int skip)
{
	char *prompt = decode_ids(e, &it->ids, 0);
	char *predict = decode_ids(e, out, skip);
	json_t *j = json_object();
	json_object_set_new(j, "prompt", json_string(prompt ? prompt : ""));
	json_object_set_new(j, "predict", json_string(predict ? predict : ""));
	if (it->label) json_object_set_new(j, "label", json_string(it->label));
	free(prompt);
	free(predict);
	return j;
}

static int write_lines(FILE *f, const gen_cli *o, const gen_env *e, const gen_items *it,
		       const ft_i32vec *outs)
{
	for (size_t i = 0; i < it->n; i++) {
		json_t *j = result_line(e, &it->v[i], &outs[i], o->skip_special);
		int rc = ft_json_write_line(j, f);
		json_decref(j);
		if (rc < 0) return ft_fail("write error:");
	}
	return 0;
}

static json_t *predict_metrics(const gen_cli *o, const gen_env *e, const gen_items *it,
			       const ft_i32vec *outs, double secs)
{
	ft_metrics m = {0};
	size_t tokens = 0;
	for (size_t i = 0; i < it->n; i++) {
		char *pred = decode_ids(e, &outs[i], 1);
		ft_metrics_add(&m, pred, it->v[i].label ? it->v[i].label : "");
		free(pred);
		tokens += outs[i].n;
	}
	double steps = ceil((double)it->n / o->gen.batch_size);
	json_t *r = json_object();
	const char *keys[] = {"bleu-4", "rouge-1", "rouge-2", "rouge-l"};
	for (int k = 0; k < 4; k++) {
		char name[32];
		snprintf(name, sizeof name, "predict_%s", keys[k]);
		json_object_set_new(r, name, json_real(ft_metrics_mean(&m, keys[k])));
	}
	json_object_set_new(r, "predict_runtime", json_real(round(secs * 1e4) / 1e4));
	json_object_set_new(r, "predict_samples_per_second", json_real(secs > 0 ? round(it->n / secs * 1e3) / 1e3 : 0));
	json_object_set_new(r, "predict_steps_per_second", json_real(secs > 0 ? round(steps / secs * 1e3) / 1e3 : 0));
	json_object_set_new(r, "predict_tokens_per_second", json_real(secs > 0 ? round(tokens / secs * 1e3) / 1e3 : 0));
	return r;
}

static int write_predictions(const gen_cli *o, const gen_env *e, const gen_items *it,
			     const ft_i32vec *outs, double secs)
{
	/* != 1: one that cannot be listed is refused too */
	if (!o->overwrite_output_dir && ft_dir_is_empty(o->output_dir) != 1)
		return ft_fail("%s: output directory is not empty (use --overwrite_output_dir)", o->output_dir);
	if (ft_mkdirs(o->output_dir) < 0) return -1;
	char *path = ft_xasprintf("%s/generated_predictions.jsonl", o->output_dir);
	ft_atomic a;
	int rc = ft_atomic_open(&a, path);
	if (rc == 0 && (rc = write_lines(a.fp, o, e, it, outs)) < 0) ft_atomic_abort(&a);
	else if (rc == 0) rc = ft_atomic_commit(&a);
	free(path);
	if (rc < 0) return -1;
	json_t *r = predict_metrics(o, e, it, outs, secs);
	path = ft_xasprintf("%s/predict_results.json", o->output_dir);
	rc = ft_json_save_file(r, path, 4);
	if (rc == 0 && ft_verbose >= 1) {
		fprintf(stderr, "%s: %zu predictions in %s/generated_predictions.jsonl; bleu-4 %.4f, rouge-l %.4f\n",
			ft_progname, it->n, o->output_dir,
			json_real_value(json_object_get(r, "predict_bleu-4")),
			json_real_value(json_object_get(r, "predict_rouge-l")));
	}
	free(path);
	json_decref(r);
	return rc;
}

int write_results(const gen_cli *o, const gen_env *e, const gen_items *it,
		  const ft_i32vec *outs, double secs)
{
	if (o->do_predict) return write_predictions(o, e, it, outs, secs);
	if (ft_is_stdio(o->output)) return write_lines(stdout, o, e, it, outs);
	ft_atomic a;
	if (ft_atomic_open(&a, o->output) < 0) return -1;
	if (write_lines(a.fp, o, e, it, outs) < 0) { ft_atomic_abort(&a); return -1; }
	return ft_atomic_commit(&a);
}

/* ---- interactive chat ---------------------------------------------- */

typedef struct {
	const gen_env *e;
	ft_i32vec ids;
	size_t shown;      /* bytes of the decoded answer already printed */
	int skip;
} stream_state;

/* Decode everything so far and print what is new, holding back an
 * incomplete UTF-8 sequence (shown as U+FFFD by the decoder). */
static void on_token(void *ctx, size_t prompt, int32_t token)
{
	(void)prompt;
	stream_state *s = ctx;
	ft_i32vec_push(&s->ids, token);
	char *text = decode_ids(s->e, &s->ids, s->skip);
	size_t n = strlen(text);
	if (n >= 3 && !memcmp(text + n - 3, "\xef\xbf\xbd", 3)) { free(text); return; }
	if (n > s->shown) {
		fwrite(text + s->shown, 1, n - s->shown, stdout);
		fflush(stdout);
		s->shown = n;
	}
	free(text);
}

typedef struct { ft_message *v; size_t n, cap; } history;

static void history_add(history *h, int role, const char *text)
{
	if (h->n == h->cap) h->v = ft_xrealloc(h->v, (h->cap = h->cap ? 2 * h->cap : 16) * sizeof *h->v);
	h->v[h->n++] = (ft_message){role, ft_xstrdup(text)};
}

static void history_clear(history *h)
{
	for (size_t i = 0; i < h->n; i++) free((char *)h->v[i].content);
	h->n = 0;
}

static int chat_turn(const gen_cli *o, gen_env *e, history *h)
{
	ft_i32vec prompt = {0}, out = {0};
	stream_state s = {e, {0}, 0, o->skip_special};
	int rc = ft_chat_prompt(e->prep, e->tmpl, h->v, h->n, NULL, NULL, &prompt);
	fputs("Assistant: ", stdout);
	fflush(stdout);
	if (rc == 0) rc = gen_run(e, &prompt, 1, &o->gen, &out, on_token, &s);
	fputs("\n\n", stdout);
	if (rc == 0) {
		char *answer = decode_ids(e, &out, 1);
		history_add(h, FT_ROLE_ASSISTANT, answer);
		free(answer);
	}
	ft_i32vec_free(&prompt);
	ft_i32vec_free(&out);
	ft_i32vec_free(&s.ids);
	return rc;
}

int run_interactive(const gen_cli *o, gen_env *e)
{
	history h = {0};
	char line[16384];
	printf("Chat with %s: \"clear\" forgets the history, \"exit\" (or end of input) quits.\n\n", o->model_dir);
	for (;;) {
		fputs("User: ", stdout);
		fflush(stdout);
		if (!fgets(line, sizeof line, stdin)) break;
		line[strcspn(line, "\r\n")] = 0;
		if (!strcmp(line, "exit")) break;
		if (!strcmp(line, "clear")) { history_clear(&h); puts("History has been removed.\n"); continue; }
		if (!*line) continue;
		history_add(&h, FT_ROLE_USER, line);
		if (chat_turn(o, e, &h) < 0) {
			warn("%s", ft_errmsg());
			h.n--;
			free((char *)h.v[h.n].content);
		}
	}
	history_clear(&h);
	free(h.v);
	putchar('\n');
	return 0;
}
