/* text.c - placeholder until the text mode lands (replaced by its owner). */
#include "cli.h"
#include "ft-tokenize.h"

int tokenize_text_main(int argc, char **argv)
{
	(void)argc; (void)argv;
	die("the text mode is not built yet");
}
