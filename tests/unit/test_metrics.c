/* test_metrics.c - BLEU-4 and ROUGE against nltk / rouge_chinese values
 * (tests/fixtures/metrics/cases.jsonl, from tests/reference/make_metric_fixtures.py).
 * Tolerance 1e-9: the formulas are reproduced exactly; ROUGE is compared
 * with ft's own segmentation (the fixture also holds jieba-based values
 * for the comparison reported in docs). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gen/metrics.h"

static void test_segmentation(void)
{
	char **w;
	size_t n = ft_segment_words("I'm ft-bot: 3.14 50%  你好", &w);
	const char *want[] = {"I", "'", "m", "ft", "-", "bot", ":", "3.14", "50%", "你", "好"};
	int same = n == sizeof want / sizeof *want;
	for (size_t i = 0; same && i < n; i++) same = !strcmp(w[i], want[i]);
	ok(same, "segmentation splits words, numbers and CJK characters (%zu words)", n);
	ft_segment_free(w, n);
}

static void test_fixture_cases(void)
{
	FILE *f = fopen("tests/fixtures/metrics/cases.jsonl", "r");
	if (!f) { ok(0, "fixture cases.jsonl opens"); return; }
	char line[65536];
	int cases = 0, bleu_bad = 0, rouge_bad = 0;
	double worst = 0;
	while (fgets(line, sizeof line, f)) {
		json_error_t e;
		json_t *c = json_loads(line, 0, &e);
		if (!c) { ok(0, "fixture line parses: %s", e.text); break; }
		const char *pred = json_string_value(json_object_get(c, "pred"));
		const char *label = json_string_value(json_object_get(c, "label"));
		double b = ft_bleu4(pred, label);
		double want_b = json_number_value(json_object_get(c, "bleu4"));
		if (fabs(b - want_b) > 1e-9) bleu_bad++;
		ft_rouge_scores r = ft_rouge(pred, label);
		double d = fmax(fabs(r.rouge1 - json_number_value(json_object_get(c, "ft_rouge1"))),
				fmax(fabs(r.rouge2 - json_number_value(json_object_get(c, "ft_rouge2"))),
				     fabs(r.rougel - json_number_value(json_object_get(c, "ft_rougel")))));
		if (d > 1e-9) rouge_bad++;
		worst = fmax(worst, d);
		cases++;
		json_decref(c);
	}
	fclose(f);
	ok(cases > 5, "fixture has cases (%d)", cases);
	ok(bleu_bad == 0, "BLEU-4 equals nltk method3 on every case (%d differ)", bleu_bad);
	ok(rouge_bad == 0, "ROUGE-1/2/L equal rouge_chinese on every case (%d differ, worst %.3g)", rouge_bad, worst);
}

static void test_means(void)
{
	ft_metrics m = {0};
	ft_metrics_add(&m, "abcdef", "abcdef");
	ft_metrics_add(&m, "", "abcdef");
	ok(fabs(ft_metrics_mean(&m, "bleu-4") - 50.0) < 1e-9, "mean of rounded percentages");
	ok(fabs(ft_metrics_mean(&m, "rouge-l") - 50.0) < 1e-6, "rouge-l mean (%g)", ft_metrics_mean(&m, "rouge-l"));
	ok(isnan(ft_metrics_mean(&m, "nope")), "unknown key is NaN");
}

int main(void)
{
	test_segmentation();
	test_fixture_cases();
	test_means();
	return tap_done();
}
