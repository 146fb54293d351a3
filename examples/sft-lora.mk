# sft-lora.mk - LLaMA-Factory's classic LoRA SFT run, as ft stages:
#
#   llamafactory-cli train --stage sft --model_name_or_path MODEL --do_train \
#     --dataset DATASET --template TEMPLATE --finetuning_type lora \
#     --lora_target q_proj,v_proj --output_dir OUT --overwrite_cache \
#     --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
#     --lr_scheduler_type cosine --logging_steps 10 --save_steps 100 \
#     --learning_rate 5e-4 --num_train_epochs 20.0 --max_samples 100000 \
#     --plot_loss --fp16
#
#   make -f examples/sft-lora.mk MODEL=llama/chinese-alpaca-2-13b-hf \
#       DATASET=cail_law_train DATASET_DIR=data TEMPLATE=default OUT=saves/cail
#
# Targets: tokens batches train plot merge predict all (default: all).
MODEL       ?= $(error set MODEL=model directory)
DATASET     ?= $(error set DATASET=name in DATASET_DIR/dataset_info.json or a file)
TEMPLATE    ?= default
CUTOFF_LEN  ?= 1024
MAX_SAMPLES ?= 100000
EPOCHS      ?= 20.0
BATCH       ?= 4
ACCUM       ?= 4
LR          ?= 5e-4
LOGGING_STEPS ?= 10
SAVE_STEPS  ?= 100
EXTRA_TRAIN ?= --fp16
PREDICT_DATASET ?= $(DATASET)
PREDICT_SAMPLES ?= 20
MAX_NEW_TOKENS ?= 128

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

TOKENIZE_ARGS = --stage sft --model_name_or_path $(TOKENIZER) --dataset $(DATASET) \
	--dataset_dir $(DATASET_DIR) --template $(TEMPLATE) --cutoff_len $(CUTOFF_LEN) \
	--max_samples $(MAX_SAMPLES) --overwrite_cache
PACK_ARGS = --stage sft --per_device_train_batch_size $(BATCH) --num_train_epochs $(EPOCHS)
TRAIN_ARGS = --stage sft --model_name_or_path $(MODEL) --do_train --finetuning_type lora \
	--lora_target q_proj,v_proj --overwrite_output_dir \
	--gradient_accumulation_steps $(ACCUM) --lr_scheduler_type cosine \
	--logging_steps $(LOGGING_STEPS) --save_steps $(SAVE_STEPS) --learning_rate $(LR) \
	--num_train_epochs $(EPOCHS) --plot_loss $(EXTRA_TRAIN)
PREDICT_ARGS = --model_name_or_path $(MODEL) --tokenizer $(TOKENIZER) --template $(TEMPLATE) \
	--do_predict --dataset $(PREDICT_DATASET) --dataset_dir $(DATASET_DIR) \
	--max_samples $(PREDICT_SAMPLES) --max_new_tokens $(MAX_NEW_TOKENS) --do_sample false \
	--overwrite_output_dir

all: plot merge predict
tokens: $(OUT)/tokens.ftb.zst
batches: $(OUT)/batches/manifest.json
train: $(OUT)/adapter/adapter_model.safetensors
plot: $(OUT)/loss.svg
merge: $(OUT)/merged/config.json
predict: $(OUT)/predict/predict_results.json

$(eval $(call args,tokenize,$(TOKENIZE_ARGS)))
$(eval $(call args,pack,$(PACK_ARGS)))
$(eval $(call args,train,$(TRAIN_ARGS)))
$(eval $(call args,predict,$(PREDICT_ARGS)))

$(OUT)/tokens.ftb.zst: $(OUT)/tokenize.args $(REGISTRY)
	$(FT)ft-tokenize $(TOKENIZE_ARGS) -o $@

$(OUT)/batches/manifest.json: $(OUT)/tokens.ftb.zst $(OUT)/pack.args
	$(FT)ft-pack $(PACK_ARGS) --overwrite_output_dir --output_dir $(OUT)/batches $<

$(OUT)/adapter/adapter_model.safetensors: $(OUT)/batches/manifest.json $(OUT)/train.args
	$(FT)ft-train $(TRAIN_ARGS) --train $(OUT)/batches --output_dir $(OUT)/adapter

$(OUT)/loss.svg: $(OUT)/adapter/adapter_model.safetensors
	$(FT)ft-plot -o $@ $(OUT)/adapter/trainer_log.jsonl

$(OUT)/merged/config.json: $(OUT)/adapter/adapter_model.safetensors
	$(FT)ft-merge --model_name_or_path $(MODEL) --adapter_name_or_path $(OUT)/adapter \
		--export_dir $(OUT)/merged --overwrite

$(OUT)/predict/predict_results.json: $(OUT)/adapter/adapter_model.safetensors $(OUT)/predict.args
	$(FT)ft-generate $(PREDICT_ARGS) --adapter_name_or_path $(OUT)/adapter --output_dir $(OUT)/predict

clean:
	rm -rf $(OUT)
