/* dataset.c - placeholder until the dataset mode lands (replaced by its owner). */
#include "cli.h"
#include "ft-tokenize.h"

int tokenize_dataset_main(int argc, char **argv)
{
	(void)argc; (void)argv;
	die("the dataset mode is not built yet");
}
