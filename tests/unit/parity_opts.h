/* parity_opts.h - the trainer options of the 10-step parity runs
 * (tests/fixtures/parity/README.md: 20 micro-batches of 2, accumulation
 * 2, AdamW with weight decay 0.1, cosine with 2 warmup steps, a log line
 * per step), shared by the unit tests that train against those fixtures. */
#ifndef FT_TEST_PARITY_OPTS_H
#define FT_TEST_PARITY_OPTS_H

#include "train/trainer.h"

static void parity_opts(ft_train_opts *o, const char *out, double lr)
{
	ft_train_opts_default(o);
	o->output_dir = out;
	o->n_batches = 20;
	o->gradient_accumulation_steps = 2;
	o->num_train_epochs = 1;
	o->learning_rate = lr;
	o->weight_decay = 0.1;
	o->lr_scheduler_type = FT_SCHED_COSINE;
	o->warmup = 2;
	o->logging_steps = 1;
	o->save_steps = 0;
	o->train_batch_size = 2;
}

#endif
