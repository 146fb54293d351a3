# common.mk - shared by the example experiments.
# Each stage writes its output atomically and depends on the files and
# options it uses, so `make -j` runs independent stages together and a
# re-run redoes only what changed.  Options are recorded in OUT/*.args:
# changing a variable on the command line re-runs the stages it feeds.

FT      ?= $(dir $(lastword $(MAKEFILE_LIST)))../bin/
OUT     ?= saves/$(basename $(notdir $(firstword $(MAKEFILE_LIST))))
DATASET_DIR ?= data
TOKENIZER ?= $(MODEL)
REGISTRY := $(wildcard $(DATASET_DIR)/dataset_info.json)

# $(call args,NAME,VALUE): OUT/NAME.args holds VALUE, rewritten only when
# it changes, so it can be a prerequisite.
define args
$(OUT)/$(1).args: FORCE
	@mkdir -p $(OUT)
	@printf '%s\n' '$(2)' | cmp -s - $$@ || printf '%s\n' '$(2)' > $$@
endef

.PHONY: FORCE all clean
.DELETE_ON_ERROR:
