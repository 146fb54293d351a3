/* checks.c - ft-train's refusals of inputs that would train wrongly but
 * silently: batches made with another tokenizer than the model's. */
#include "ft-train.h"
#include "text/tokenizer.h"

#include <string.h>

void check_tokenizer(const ft_cli_args *c, const char *path, const ft_manifest *m)
{
	const char *colon = strrchr(m->tokenizer, ':');
	if (c->allow_tokenizer_mismatch || !c->model || !colon || strlen(colon + 1) != 64) return;
	char hex[65];
	int rc = ft_tokenizer_dir_sha256(c->model, hex);
	if (rc < 0) die("%s", ft_errmsg());
	if (rc == 0 || strcmp(hex, colon + 1) == 0) return;
	die("%s: the batches were tokenized with '%.*s' (sha256 %.12s...) but --model_name_or_path %s "
	    "has another tokenizer (sha256 %.12s...): tokenize again with this model, or pass "
	    "--allow_tokenizer_mismatch if that is deliberate", ft_display_name(path),
	    (int)(colon - m->tokenizer), m->tokenizer, colon + 1, c->model, hex);
}
