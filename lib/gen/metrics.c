/* metrics.c - BLEU-4 and ROUGE as LLaMA-Factory computes them; see metrics.h */
#include "gen/metrics.h"
#include "util/error.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 to code points (Python's list(str)) ---------------------- */

static size_t utf8_next(const unsigned char *s, uint32_t *cp)
{
	unsigned c = s[0];
	size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
	if (len == 0) { *cp = 0xFFFD; return 1; }
	uint32_t v = len == 1 ? c : c & (0x7F >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80) { *cp = 0xFFFD; return i; }
		v = (v << 6) | (s[i] & 0x3F);
	}
	*cp = v;
	return len;
}

static uint32_t *code_points(const char *s, size_t *n)
{
	size_t len = strlen(s), k = 0;
	uint32_t *cps = ft_xmalloc((len + 1) * sizeof *cps);
	for (size_t i = 0; i < len;)
		i += utf8_next((const unsigned char *)s + i, &cps[k++]);
	*n = k;
	return cps;
}

/* ---- n-gram counting by sorting start positions --------------------- */

typedef struct { const void *seq; int n; int (*cmp)(const void *, size_t, size_t, int); } ngram_ctx;

static int cmp_cps(const void *seq, size_t a, size_t b, int n)
{
	const uint32_t *s = seq;
	for (int i = 0; i < n; i++)
		if (s[a + i] != s[b + i]) return s[a + i] < s[b + i] ? -1 : 1;
	return 0;
}

static int cmp_words(const void *seq, size_t a, size_t b, int n)
{
	char *const *w = seq;
	for (int i = 0; i < n; i++) {
		int c = strcmp(w[a + i], w[b + i]);
		if (c) return c;
	}
	return 0;
}

static _Thread_local const ngram_ctx *sort_ctx;

static int cmp_start(const void *x, const void *y)
{
	return sort_ctx->cmp(sort_ctx->seq, *(const size_t *)x, *(const size_t *)y, sort_ctx->n);
}

/* Sorted n-gram start positions of a sequence of length len. */
static size_t *sorted_ngrams(const ngram_ctx *c, size_t len, size_t *count)
{
	*count = len >= (size_t)c->n ? len - c->n + 1 : 0;
	size_t *idx = ft_xmalloc((*count + 1) * sizeof *idx);
	for (size_t i = 0; i < *count; i++) idx[i] = i;
	sort_ctx = c;
	qsort(idx, *count, sizeof *idx, cmp_start);
	return idx;
}

/* Walk two sorted lists of n-grams over the same kind of sequence.
 * clipped: sum over hyp n-grams of min(count in hyp, count in ref);
 * distinct_*: number of distinct n-grams; distinct_common: shared ones. */
typedef struct { size_t clipped, distinct_h, distinct_r, distinct_common; } ngram_overlap;

static size_t run_end(const ngram_ctx *c, const void *seq, const size_t *idx, size_t i, size_t n)
{
	size_t j = i + 1;
	while (j < n && c->cmp(seq, idx[i], idx[j], c->n) == 0) j++;
	return j;
}

static int cross_cmp(const ngram_ctx *h, size_t a, const ngram_ctx *r, size_t b)
{
	/* Same element type on both sides: compare through a combined view. */
	for (int k = 0; k < h->n; k++) {
		int c;
		if (h->cmp == cmp_cps) {
			uint32_t x = ((const uint32_t *)h->seq)[a + k], y = ((const uint32_t *)r->seq)[b + k];
			c = x == y ? 0 : x < y ? -1 : 1;
		} else {
			c = strcmp(((char *const *)h->seq)[a + k], ((char *const *)r->seq)[b + k]);
		}
		if (c) return c;
	}
	return 0;
}

static ngram_overlap overlap(const ngram_ctx *h, size_t hlen, const ngram_ctx *r, size_t rlen)
{
	ngram_overlap o = {0, 0, 0, 0};
	size_t nh, nr;
	size_t *ih = sorted_ngrams(h, hlen, &nh);
	size_t *ir = sorted_ngrams(r, rlen, &nr);
	size_t i = 0, j = 0;
	while (i < nh || j < nr) {
		size_t ie = i < nh ? run_end(h, h->seq, ih, i, nh) : i;
		size_t je = j < nr ? run_end(r, r->seq, ir, j, nr) : j;
		int c = i >= nh ? 1 : j >= nr ? -1 : cross_cmp(h, ih[i], r, ir[j]);
		if (c == 0) {
			size_t ch = ie - i, cr = je - j;
			o.clipped += ch < cr ? ch : cr;
			o.distinct_common++;
			o.distinct_h++, o.distinct_r++;
			i = ie, j = je;
		} else if (c < 0) {
			o.distinct_h++;
			i = ie;
		} else {
			o.distinct_r++;
			j = je;
		}
	}
	free(ih);
	free(ir);
	return o;
}

/* ---- BLEU-4 (nltk sentence_bleu, method3) --------------------------- */

double ft_bleu4(const char *pred, const char *label)
{
	size_t hl, rl;
	uint32_t *h = code_points(pred, &hl), *r = code_points(label, &rl);
	double num[5], den[5];
	for (int n = 1; n <= 4; n++) {
		ngram_ctx ch = {h, n, cmp_cps}, cr = {r, n, cmp_cps};
		ngram_overlap o = overlap(&ch, hl, &cr, rl);
		num[n] = (double)o.clipped;
		size_t total = hl >= (size_t)n ? hl - n + 1 : 0;
		den[n] = total > 0 ? (double)total : 1.0;
	}
	free(h);
	free(r);
	if (num[1] == 0) return 0.0;
	double bp = hl > rl ? 1.0 : hl == 0 ? 0.0 : exp(1.0 - (double)rl / (double)hl);
	double s = 0;
	int k = 1;
	for (int n = 1; n <= 4; n++) {
		double p = num[n] / den[n];
		if (num[n] == 0) p = 1.0 / (ldexp(1.0, k++) * den[n]);
		s += 0.25 * log(p);
	}
	return bp * exp(s);
}

/* ---- word segmentation ---------------------------------------------- */

/* Python str.split() whitespace. */
static int is_space(uint32_t c)
{
	return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

static int is_alnum_ascii(uint32_t c)
{
	return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

/* Length in bytes of the word starting at s (jieba's finalseg re_skip:
 * [a-zA-Z0-9]+(?:\.\d+)?%? ), or of one character otherwise. */
static size_t word_length(const char *s)
{
	uint32_t c;
	size_t len = utf8_next((const unsigned char *)s, &c);
	if (!is_alnum_ascii(c)) return len;
	size_t i = 0;
	while (is_alnum_ascii((unsigned char)s[i])) i++;
	if (s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9') {
		i++;
		while (s[i] >= '0' && s[i] <= '9') i++;
	}
	if (s[i] == '%') i++;
	return i;
}

size_t ft_segment_words(const char *s, char ***words)
{
	size_t n = 0, cap = 16;
	char **w = ft_xmalloc(cap * sizeof *w);
	while (*s) {
		uint32_t c;
		size_t len = utf8_next((const unsigned char *)s, &c);
		if (is_space(c)) { s += len; continue; }
		len = word_length(s);
		if (n == cap) w = ft_xrealloc(w, (cap *= 2) * sizeof *w);
		w[n] = ft_xmalloc(len + 1);
		memcpy(w[n], s, len);
		w[n++][len] = 0;
		s += len;
	}
	*words = w;
	return n;
}

void ft_segment_free(char **words, size_t n)
{
	for (size_t i = 0; i < n; i++) free(words[i]);
	free(words);
}

/* ---- ROUGE (rouge_chinese, exclusive n-gram sets, summary-level LCS) - */

static double f1(double p, double r)
{
	return 2.0 * ((p * r) / (p + r + 1e-8));
}

static double rouge_n(char **h, size_t hn, char **r, size_t rn, int n)
{
	ngram_ctx ch = {h, n, cmp_words}, cr = {r, n, cmp_words};
	ngram_overlap o = overlap(&ch, hn, &cr, rn);
	double p = o.distinct_h ? (double)o.distinct_common / o.distinct_h : 0.0;
	double rc = o.distinct_r ? (double)o.distinct_common / o.distinct_r : 0.0;
	return f1(p, rc);
}

static size_t lcs_length(char **x, size_t n, char **y, size_t m)
{
	size_t *prev = ft_xcalloc(m + 1, sizeof *prev), *cur = ft_xcalloc(m + 1, sizeof *cur);
	for (size_t i = 1; i <= n; i++) {
		for (size_t j = 1; j <= m; j++)
			cur[j] = !strcmp(x[i - 1], y[j - 1]) ? prev[j - 1] + 1
				 : prev[j] > cur[j - 1] ? prev[j] : cur[j - 1];
		size_t *t = prev; prev = cur; cur = t;
	}
	size_t l = prev[m];
	free(prev);
	free(cur);
	return l;
}

ft_rouge_scores ft_rouge(const char *pred, const char *label)
{
	ft_rouge_scores s = {0, 0, 0};
	char **h, **r;
	size_t hn = ft_segment_words(pred, &h), rn = ft_segment_words(label, &r);
	if (hn > 0 && rn > 0) {
		s.rouge1 = rouge_n(h, hn, r, rn, 1);
		s.rouge2 = rouge_n(h, hn, r, rn, 2);
		size_t l = lcs_length(r, rn, h, hn);
		s.rougel = f1((double)l / hn, (double)l / rn);
	}
	ft_segment_free(h, hn);
	ft_segment_free(r, rn);
	return s;
}

/* ---- running means -------------------------------------------------- */

/* Python's round(100 * x, 4). */
static double pct4(double x)
{
	return nearbyint(x * 100.0 * 1e4) / 1e4;
}

void ft_metrics_add(ft_metrics *m, const char *pred, const char *label)
{
	ft_rouge_scores r = ft_rouge(pred, label);
	m->sum_rouge1 += pct4(r.rouge1);
	m->sum_rouge2 += pct4(r.rouge2);
	m->sum_rougel += pct4(r.rougel);
	m->sum_bleu4 += pct4(ft_bleu4(pred, label));
	m->n++;
}

double ft_metrics_mean(const ft_metrics *m, const char *key)
{
	if (!m->n) return 0.0;
	double s = !strcmp(key, "bleu-4") ? m->sum_bleu4 : !strcmp(key, "rouge-1") ? m->sum_rouge1
		 : !strcmp(key, "rouge-2") ? m->sum_rouge2 : !strcmp(key, "rouge-l") ? m->sum_rougel : NAN;
	return s / (double)m->n;
}
