/* metrics.h - prediction scores as LLaMA-Factory computes them
 * (llamafactory 0.9.5, train/sft/metric.py ComputeSimilarity):
 *
 *   bleu-4   nltk sentence_bleu over *characters* (list(str)), smoothing
 *            method3, uniform 4-gram weights: reproduced exactly.
 *   rouge-1/2/l  rouge_chinese F1 over words.  LLaMA-Factory segments with
 *            jieba; ft segments with ft_segment_words(): runs of ASCII
 *            letters/digits (a decimal like 3.14 and a trailing % stay in
 *            the number) are words, every other non-space character is a
 *            word of its own, so English matches jieba's output and Chinese
 *            is scored per character instead of per dictionary word.
 *
 * Scores are fractions in [0, 1]; LLaMA-Factory reports round(100*x, 4)
 * per example and the mean over examples (ft_metrics_* below).
 */
#ifndef FT_METRICS_H
#define FT_METRICS_H

#include <stddef.h>

double ft_bleu4(const char *pred, const char *label);

typedef struct { double rouge1, rouge2, rougel; } ft_rouge_scores;
ft_rouge_scores ft_rouge(const char *pred, const char *label);

/* Words of s as described above; returns the count and an array of
 * NUL-terminated strings in *words (free with ft_segment_free). */
size_t ft_segment_words(const char *s, char ***words);
void ft_segment_free(char **words, size_t n);

/* Running means of the per-example rounded percentages. */
typedef struct {
	double sum_bleu4, sum_rouge1, sum_rouge2, sum_rougel;
	size_t n;
} ft_metrics;
void ft_metrics_add(ft_metrics *m, const char *pred, const char *label);
/* Means as LLaMA-Factory's predict_results.json reports them. */
double ft_metrics_mean(const ft_metrics *m, const char *key); /* "bleu-4", "rouge-1", ... */

#endif
