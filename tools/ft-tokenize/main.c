/* ft-tokenize - datasets + chat template + HF tokenizer -> token records.
 * main only picks the mode; see text.c and dataset.c. */
#include <string.h>
#include "cli/cli.h"
#include "ft-tokenize.h"

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
		if (!strcmp(argv[i], "--encode") || !strcmp(argv[i], "--decode"))
			return tokenize_text_main(argc, argv);
	return tokenize_dataset_main(argc, argv);
}
