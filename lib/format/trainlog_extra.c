/* trainlog_extra.c - trainer_log.jsonl lines with fields beyond
 * ft_trainlog_entry's: the metrics of the preference stages
 * ("rewards/accuracies", "eval_logps/chosen", "kl", ...), which TRL adds to
 * every log.  They follow LLaMA-Factory's fields, in the order given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format/trainlog.h"
#include "util/error.h"
#include "util/sbuf.h"

char *ft_trainlog_format_extra(const ft_trainlog_entry *e, const char *const *keys,
			       const double *vals, size_t n)
{
	char *base = ft_trainlog_format(e);
	size_t len = strlen(base);
	if (n == 0)
		return base;
	ft_sbuf b = {0};
	/* base ends "}\n"; an entry with no field at all is "{}\n" */
	ft_sbuf_addn(&b, base, len - 2);
	int empty = len == 3;
	for (size_t i = 0; i < n; i++) {
		char num[64];
		ft_fmt_double_repr(num, sizeof num, vals[i]);
		/* keys are ft's own metric names: letters, digits, '_' and '/' */
		ft_sbuf_printf(&b, "%s\"%s\": %s", empty && i == 0 ? "" : ", ", keys[i], num);
	}
	ft_sbuf_add(&b, "}\n");
	free(base);
	return ft_sbuf_take(&b);
}

int ft_trainlog_write_extra(FILE *fp, const ft_trainlog_entry *e, const char *const *keys,
			    const double *vals, size_t n)
{
	char *s = ft_trainlog_format_extra(e, keys, vals, n);
	int bad = fputs(s, fp) == EOF || fflush(fp) != 0;
	free(s);
	return bad ? ft_fail("%s: write failed:", FT_TRAINLOG_NAME) : 0;
}
