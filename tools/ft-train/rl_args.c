/* rl_args.c - what --stage ppo and --stage grpo take of the training
 * extras (extras.c parses them for every stage).  Their loops
 * (lib/train/ppo_loop.c, grpo_loop.c) step a plain AdamW of their own,
 * with the value head beside the policy's weights for PPO, and never
 * build the trainer's optimizer: each optimizer choice is refused here
 * rather than ignored.  DoRA is a model setting (ft_train_extras_model,
 * called for these stages too); PiSSA is refused as LLaMA-Factory
 * refuses it for ppo: the reference, the adapters disabled, would be
 * PiSSA's residual, not the model.  NEFTune is transformers' Trainer.train
 * hook: TRL's GRPOTrainer trains through it, LLaMA-Factory's PPO trainer
 * (ppo_train) never calls it, so ppo ignores the flag with a note. */
#include "ft-train.h"

#include <string.h>

/* --FLAG: the stage's reason, one line */
static void refuse(const ft_cli_args *c, const char *flag, const char *what)
{
	die_usage("--%s: --stage %s steps plain AdamW; %s is not implemented for it in ft yet",
		  flag, c->stage, what);
}

void rl_args_check(ft_cli_args *c)
{
	if (!ppo_stage(c) && !grpo_stage(c))
		return;
	const ft_train_extras *x = &c->x;
	if (ppo_stage(c) && c->tune.neftune_noise_alpha > 0) {
		if (ft_verbose >= 0)
			warn("note: --neftune_noise_alpha is ignored by --stage ppo, as in LLaMA-Factory (its "
			     "ppo_train never calls Trainer.train, which turns NEFTune on)");
		c->tune.neftune_noise_alpha = 0;
	}
	if (x->pissa || x->pissa_convert)
		die_usage("--%s: PiSSA cannot be used for --stage %s (LLaMA-Factory refuses it for ppo): its reference, "
			  "the adapters disabled, would be PiSSA's residual, not the model",
			  x->pissa ? "pissa_init" : "pissa_convert", c->stage);
	if (x->loraplus) refuse(c, "loraplus_lr_ratio", "LoRA+'s learning rate for lora_B");
	if (x->galore) refuse(c, "use_galore", "GaLore");
	if (x->apollo) refuse(c, "use_apollo", "APOLLO");
	if (x->badam) refuse(c, "use_badam", "BAdam");
	if (x->adam_mini) refuse(c, "use_adam_mini (--optim adam_mini)", "Adam-mini");
	if (x->muon) refuse(c, "use_muon", "Muon");
}
