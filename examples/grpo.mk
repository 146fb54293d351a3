# grpo.mk - RL with a verifiable reward (TRL's GRPOTrainer, DeepSeek-R1's
# recipe) as ft stages: prompts of a toy arithmetic set, eight sampled
# answers each, rewarded by a 10-line checker script (examples/grpo/check.sh):
#
#   make -f examples/grpo.mk MODEL=path/to/model   (a model directory with tokenizer.json)
#
# Targets: tokens batches train plot all (default: all).  docs/GRPO.md.
MODEL       ?= $(error set MODEL=model directory (with tokenizer.json: the checker reads text))
HERE        := $(dir $(lastword $(MAKEFILE_LIST)))
DATASET     ?= $(HERE)grpo/arith.jsonl
REWARD      ?= acc=sh $(HERE)grpo/check.sh
TEMPLATE    ?= default
CUTOFF_LEN  ?= 128
BATCH       ?= 8
ACCUM       ?= 2
GENERATIONS ?= 8
MAX_COMPLETION ?= 8
LR          ?= 1e-4
MAX_STEPS   ?= 20
LOGGING_STEPS ?= 1

include $(HERE)common.mk

TOKENIZE_ARGS = --stage ppo --model_name_or_path $(TOKENIZER) --dataset $(DATASET) \
	--dataset_dir $(DATASET_DIR) --template $(TEMPLATE) --cutoff_len $(CUTOFF_LEN) --overwrite_cache
PACK_ARGS = --stage ppo --per_device_train_batch_size $(BATCH)
TRAIN_ARGS = --stage grpo --model_name_or_path $(MODEL) --finetuning_type lora --lora_target all \
	--overwrite_output_dir --gradient_accumulation_steps $(ACCUM) --num_generations $(GENERATIONS) \
	--max_completion_length $(MAX_COMPLETION) --learning_rate $(LR) --max_steps $(MAX_STEPS) \
	--logging_steps $(LOGGING_STEPS) --log_completions true --plot_loss --reward_funcs '$(REWARD)'

all: plot
tokens: $(OUT)/tokens.ftb.zst
batches: $(OUT)/batches/manifest.json
train: $(OUT)/adapter/adapter_model.safetensors
plot: $(OUT)/reward.svg

$(eval $(call args,tokenize,$(TOKENIZE_ARGS)))
$(eval $(call args,pack,$(PACK_ARGS)))
$(eval $(call args,train,$(TRAIN_ARGS)))

$(OUT)/tokens.ftb.zst: $(OUT)/tokenize.args $(DATASET)
	$(FT)ft-tokenize $(TOKENIZE_ARGS) -o $@

$(OUT)/batches/manifest.json: $(OUT)/tokens.ftb.zst $(OUT)/pack.args
	$(FT)ft-pack $(PACK_ARGS) --overwrite_output_dir --output_dir $(OUT)/batches $<

$(OUT)/adapter/adapter_model.safetensors: $(OUT)/batches/manifest.json $(OUT)/train.args $(HERE)grpo/check.sh
	$(FT)ft-train $(TRAIN_ARGS) --train $(OUT)/batches --output_dir $(OUT)/adapter

$(OUT)/reward.svg: $(OUT)/adapter/adapter_model.safetensors
	$(FT)ft-plot --keys loss,reward,rewards/acc/mean -o $@ $(OUT)/adapter/trainer_log.jsonl

clean:
	rm -rf $(OUT)
