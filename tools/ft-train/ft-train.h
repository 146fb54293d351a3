/* ft-train.h - pieces of the ft-train tool */
#ifndef FT_TRAIN_TOOL_H
#define FT_TRAIN_TOOL_H

#include "cli/cli.h"
#include "cli/lfargs.h"
#include "format/batch_io.h"
#include "model/model.h"
#include "train/trainer.h"

typedef struct {
	ft_train_opts t;
	ft_tune_opts tune;
	char stage[8];
	const char *model, *adapter, *config, *output_dir, *resume;
	const char *device;       /* --device as given: cpu (default), cuda[:N], auto */
	const char *lora_target;  /* --lora_target as given (module names per family) */
	int device_given;
	int from_scratch, overwrite, plot_loss, bf16, fp16, do_train, do_eval, eval_strategy_no;
	int batch_size, eval_batch_size;
	int allow_tokenizer_mismatch;
	char **train, **val;
	size_t n_train, n_val;
} ft_cli_args;

void ft_train_args_parse(ft_lfargs *a, ft_cli_args *c);
/* checks.c: die unless the batches of `path` were tokenized with the
 * model's tokenizer (both hashed; unknown on either side passes). */
/* Whether output_dir holds an earlier run's outputs.  What only a failed
 * or killed run left is not that: the temporaries of killed runs are
 * removed (ft_atomic_reclaim_in) and an empty trainer_log.jsonl ignored. */
int output_dir_in_use(const char *dir);
void check_tokenizer(const ft_cli_args *c, const char *path, const ft_manifest *m);

#endif
