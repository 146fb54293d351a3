/* checks.c - ft-train's checks of its inputs and output directory:
 * batches made with another tokenizer than the model's are refused, and
 * a killed or failed run's leftovers do not block its rerun. */
#include "ft-train.h"
#include "text/tokenizer.h"
#include "util/atomicfile.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int output_dir_in_use(const char *dir)
{
	if (ft_atomic_reclaim_in(dir) < 0) die("%s", ft_errmsg());
	DIR *d = opendir(dir);
	if (!d) return 0;
	struct dirent *e;
	int n = 0;
	while (!n && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
		struct stat st;
		char *p = ft_xasprintf("%s/%s", dir, e->d_name);
		n = strcmp(e->d_name, "trainer_log.jsonl") || stat(p, &st) != 0 || st.st_size > 0;
		free(p);
	}
	closedir(d);
	return n;
}

void check_tokenizer(const ft_cli_args *c, const char *path, const ft_manifest *m)
{
	const char *colon = strrchr(m->tokenizer, ':');
	if (c->allow_tokenizer_mismatch || !c->model || !colon || strlen(colon + 1) != 64) return;
	char hex[65];
	const char *ext = vocab_identity_sha(c);   /* the model's tokenizer with the new tokens */
	int rc = ext ? 1 : ft_tokenizer_dir_sha256(c->model, hex);
	if (ext) snprintf(hex, sizeof hex, "%s", ext + 1);
	if (rc < 0) die("%s", ft_errmsg());
	if (rc == 0 || strcmp(hex, colon + 1) == 0) return;
	die("%s: the batches were tokenized with '%.*s' (sha256 %.12s...) but --model_name_or_path %s "
	    "has another tokenizer%s (sha256 %.12s...): tokenize again with this model%s, or pass "
	    "--allow_tokenizer_mismatch if that is deliberate", ft_display_name(path),
	    (int)(colon - m->tokenizer), m->tokenizer, colon + 1, c->model,
	    ext ? " with the new tokens" : "", hex,
	    ext ? " and the same add_tokens / add_special_tokens" : " (and the same new tokens, if any)");
}
