/* ft-train.h - pieces of the ft-train tool */
#ifndef FT_TRAIN_TOOL_H
#define FT_TRAIN_TOOL_H

#include "cli/cli.h"
#include "cli/lfargs.h"
#include "format/batch_io.h"
#include "model/model.h"
#include "train/trainer.h"

/* extras.c: LoRA+ and BAdam settings (NEFTune and LLaMA Pro are in tune) */
typedef struct {
	int loraplus, badam, badam_mode, badam_interval, badam_has_start, badam_start, badam_verbose;
	int pissa, pissa_iter, pissa_convert, dora, muon, adam_mini;
	int galore, galore_rank, galore_interval, galore_proj;
	double galore_scale;
	const char *galore_target;
	double loraplus_ratio, loraplus_embedding;
	ft_param **params;        /* BAdam's: the model's trainable params */
} ft_train_extras;

typedef struct {
	ft_train_opts t;
	ft_tune_opts tune;
	char stage[8];
	const char *model, *adapter, *config, *output_dir, *resume;
	const char *device;       /* --device as given: cpu (default), cuda[:N], auto */
	int device_given;
	int from_scratch, overwrite, plot_loss, bf16, fp16, do_train, do_eval, eval_strategy_no;
	int batch_size, eval_batch_size;
	int allow_tokenizer_mismatch;
	char **train, **val;
	size_t n_train, n_val;
	ft_train_extras x;
} ft_cli_args;

struct ft_optim_ext;
int ft_train_extras_known(const char *key);
void ft_train_extras_parse(ft_lfargs *a, ft_cli_args *c);
/* After the model is bound: the optimizer extension (NULL: AdamW). */
struct ft_optim_ext *ft_train_extras_setup(ft_cli_args *c, ft_model *m, int on_gpu);
void ft_train_extras_free(ft_cli_args *c, struct ft_optim_ext *e);
/* PiSSA: the init after loading; pissa_convert's directories around training */
void ft_train_extras_model(ft_cli_args *c, ft_model *m);
void ft_train_extras_begin(ft_cli_args *c, ft_model *m);
void ft_train_extras_end(ft_cli_args *c, ft_model *m);

void ft_train_args_parse(ft_lfargs *a, ft_cli_args *c);
/* checks.c: die unless the batches of `path` were tokenized with the
 * model's tokenizer (both hashed; unknown on either side passes). */
/* Whether output_dir holds an earlier run's outputs.  What only a failed
 * or killed run left is not that: the temporaries of killed runs are
 * removed (ft_atomic_reclaim_in) and an empty trainer_log.jsonl ignored. */
int output_dir_in_use(const char *dir);
void check_tokenizer(const ft_cli_args *c, const char *path, const ft_manifest *m);

#endif
