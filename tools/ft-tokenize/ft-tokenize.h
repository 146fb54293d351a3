/* ft-tokenize.h - the two modes of ft-tokenize, each parsing its own
 * options: text mode (--encode/--decode, text.c) and dataset mode
 * (datasets + template -> token records, dataset.c). */
#ifndef FT_TOKENIZE_TOOL_H
#define FT_TOKENIZE_TOOL_H

int tokenize_text_main(int argc, char **argv);
int tokenize_dataset_main(int argc, char **argv);

#endif
