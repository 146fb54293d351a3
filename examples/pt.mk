# pt.mk - continued pretraining on a text corpus (LLaMA-Factory --stage pt):
#
#   make -f examples/pt.mk MODEL=path/to/model DATASET=c4_demo DATASET_DIR=data OUT=saves/pt
#
# Texts are joined with eos and cut into blocks of CUTOFF_LEN, as
# LLaMA-Factory's pt preprocessing; full fine-tuning by default.
MODEL       ?= $(error set MODEL=model directory)
DATASET     ?= $(error set DATASET=name in DATASET_DIR/dataset_info.json or a file)
TEMPLATE    ?= empty
CUTOFF_LEN  ?= 1024
MAX_SAMPLES ?= 100000
EPOCHS      ?= 1.0
BATCH       ?= 4
LR          ?= 5e-5
FINETUNING  ?= full
VAL_SIZE    ?= 0.05

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

TOKENIZE_ARGS = --stage pt --model_name_or_path $(TOKENIZER) --dataset $(DATASET) \
	--dataset_dir $(DATASET_DIR) --template $(TEMPLATE) --cutoff_len $(CUTOFF_LEN) \
	--max_samples $(MAX_SAMPLES)
PACK_ARGS = --stage pt --packing --cutoff_len $(CUTOFF_LEN) --per_device_train_batch_size $(BATCH) \
	--val_size $(VAL_SIZE) --num_train_epochs $(EPOCHS)
TRAIN_ARGS = --stage pt --model_name_or_path $(MODEL) --do_train --do_eval \
	--finetuning_type $(FINETUNING) --learning_rate $(LR) --num_train_epochs $(EPOCHS) \
	--lr_scheduler_type cosine --warmup_ratio 0.1 --logging_steps 10 --save_steps 500 \
	--overwrite_output_dir --plot_loss

all: $(OUT)/model/train_results.json $(OUT)/loss.svg

$(eval $(call args,tokenize,$(TOKENIZE_ARGS)))
$(eval $(call args,pack,$(PACK_ARGS)))
$(eval $(call args,train,$(TRAIN_ARGS)))

$(OUT)/tokens.ftb.zst: $(OUT)/tokenize.args $(REGISTRY)
	$(FT)ft-tokenize $(TOKENIZE_ARGS) -o $@

$(OUT)/batches/manifest.json: $(OUT)/tokens.ftb.zst $(OUT)/pack.args
	$(FT)ft-pack $(PACK_ARGS) --overwrite_output_dir --output_dir $(OUT)/batches $<

$(OUT)/model/train_results.json: $(OUT)/batches/manifest.json $(OUT)/train.args
	$(FT)ft-train $(TRAIN_ARGS) --train $(OUT)/batches --val $(OUT)/batches/val \
		--output_dir $(OUT)/model

$(OUT)/loss.svg: $(OUT)/model/train_results.json
	$(FT)ft-plot --keys loss,eval_loss -o $@ $(OUT)/model/trainer_log.jsonl

clean:
	rm -rf $(OUT)
