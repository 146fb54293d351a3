# ft - fine-tuning toolkit.  Targets: all test install clean demo
include config.mk

# The library, one explicit source list per subsystem folder of lib/ (the
# folders and which may include which: docs/ARCHITECTURE.md).
LIB_UTIL   := atomicfile dtype error json rng sbuf sha256 spawn
LIB_FORMAT := adapter_config adapter_oft batch batch_io safetensors stream stream_codec stream_write trainlog
LIB_TEXT   := template template_tools tokenizer tokenizer_bpe tokenizer_decode \
              tokenizer_json tokenizer_pipeline tokenizer_spm tokenizer_util
LIB_DATA   := dataset dataset_mix pack pack_batch preprocess stage
LIB_MODEL  := config_check cuda_view device infer layers model model_fwd model_io
LIB_TRAIN  := cuda_train cuda_ext lr_sched optim optim_state trainer trainer_array \
              trainer_ckpt trainer_data trainer_model trainer_best
LIB_GEN    := chat generate metrics sample beam
LIB_EXPORT := merge merge_lora gptq gptq_calib gptq_model
LIB_PLOT   := plot plot_ascii plot_cairo plot_log
LIB_CLI    := cli lfargs runplan runplan_settings
LIB_CUDA_C := backend decoder
LIB_CUDA   := api attention gemm layer lmhead model model_fwd ops optim optim_ext optim_x probe
LIB_MODEL  += infer_batch
LIB_CUDA   += infer gemma
LIB_CUDA   += dora oft fp8
LIB_MODEL  += model_pref
LIB_TRAIN  += pref pref_loss pref_cpu
LIB_FORMAT += trainlog_extra
# data parallel (lib/train/dist.h); dist_mpi.c is the MPI shim below, not in libft.a
LIB_TRAIN  += dist dist_shard dist_ckpt trainer_dist
# LLaMA-Factory's self-contained extras (issue 22 part 4)
LIB_MODEL  += extras lora_pissa lora_dora model_fp8
LIB_TRAIN  += optim_ext optim_loraplus optim_badam optim_muon optim_adam_mini optim_galore
LIB_MODEL  += flash_ref
LIB_MODEL  += quant model_quant
LIB_CUDA   += quant
LIB_MODEL  += arch rope model_gemma layers_gemma
LIB_MODEL  += model_tokloss model_asft model_oft
LIB_TRAIN  += optim_apollo
LIB_TEXT   += template_think
LIB_DATA   += preprocess_think
# PPO (issue 17): TRL 0.9 PPOTrainer arithmetic and the reward filter
LIB_TRAIN  += ppo ppo_reward ppo_model ppo_rm
LIB_TRAIN  += ppo_loop
# the preference stages on the GPU (lib/cuda/pref.cu, lib/train/cuda_pref.c)
LIB_CUDA   += pref
LIB_TRAIN  += cuda_pref
# SFT token losses and NEFTune on the GPU (issue 15)
LIB_CUDA   += tokloss asft neftune
LIB_TRAIN  += cuda_losses
# GRPO (issue 21): TRL 1.16 GRPOTrainer
LIB_TRAIN  += grpo grpo_loop grpo_ckpt grpo_reward
# vocabulary extension (add_tokens, add_special_tokens, resize_vocab)
LIB_TEXT   += tokenizer_add
LIB_CLI    += newtokens
LIB_MODEL  += model_vocab
# ZeRO-1 on the device (issue 19: lib/cuda/zero.cu)
LIB_CUDA   += zero

LIB_SRC   := $(LIB_UTIL:%=lib/util/%.c) $(LIB_FORMAT:%=lib/format/%.c) \
             $(LIB_TEXT:%=lib/text/%.c) $(LIB_DATA:%=lib/data/%.c) \
             $(LIB_MODEL:%=lib/model/%.c) $(LIB_TRAIN:%=lib/train/%.c) \
             $(LIB_GEN:%=lib/gen/%.c) $(LIB_EXPORT:%=lib/export/%.c) \
             $(LIB_PLOT:%=lib/plot/%.c) $(LIB_CLI:%=lib/cli/%.c) \
             $(LIB_CUDA_C:%=lib/cuda/%.c)
CU_SRC    := $(LIB_CUDA:%=lib/cuda/%.cu)
TOOLS     := $(notdir $(sort $(wildcard tools/ft-*)))
BINS      := $(addprefix bin/,$(TOOLS))
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))

OBJ       := $(LIB_SRC:%.c=build/obj/%.o)
ASAN_OBJ  := $(LIB_SRC:%.c=build/asan/%.o)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=build/asan/tests/%)
ASAN_BINS := $(addprefix build/asan/bin/,$(TOOLS))

ifeq ($(CUDA),1)
CU_OBJ    := $(CU_SRC:%.cu=build/cuda/%.o)
endif

all: $(BINS) $(if $(CU_OBJ),build/libft_cuda.so)

build/libft.a: $(OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

build/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# A tool is every .c file in its directory (main.c plus any helpers)
.SECONDEXPANSION:
bin/%: $$(wildcard tools/%/*.c) $$(wildcard tools/%/*.h) build/libft.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -iquote tools/$* $(filter %.c,$^) build/libft.a $(LDLIBS) -o $@

# Sanitizer builds: the library, the unit tests and the tools
build/asan/libft.a: $(ASAN_OBJ)
	rm -f $@ && ar rcs $@ $^

build/asan/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -MMD -MP -c $< -o $@

build/asan/tests/%: tests/unit/%.c tests/unit/tap.h tests/unit/st_test.h build/asan/libft.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -iquote tests/unit $< build/asan/libft.a $(LDLIBS) -o $@

build/asan/bin/%: $$(wildcard tools/%/*.c) $$(wildcard tools/%/*.h) build/asan/libft.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -iquote tools/$* $(filter %.c,$^) build/asan/libft.a $(LDLIBS) -o $@

# CUDA sources compile whenever nvcc is present, so CI catches errors
# without a GPU; nvcc -MMD writes their header dependencies as cc does.
# They form build/libft_cuda.so, which the tools dlopen at --device
# cuda|auto (lib/model/device.c): every symbol but its two entry points is
# hidden, cudart is static, cuBLAS is found through the rpath or
# LD_LIBRARY_PATH.  The .so calls the library's helpers back in the
# executable, which is why the tools link with -rdynamic.
build/cuda/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) -O2 -std=c++17 $(CUDA_ARCH) -Ilib -Xcompiler -Wall,-Werror,-fPIC,-fvisibility=hidden \
		-MMD -MP -c $< -o $@

ifeq ($(CUDA),1)
CUDA_LIBDIR ?= $(dir $(NVCC))../lib64
build/libft_cuda.so: $(CU_OBJ)
	$(NVCC) -shared -o $@ $^ -Xlinker -rpath,'$$ORIGIN':$(abspath $(CUDA_LIBDIR)) \
		-Xlinker -Bsymbolic -L$(CUDA_LIBDIR) -lcublas -lcublasLt -lcudart_static -ldl -lrt -lpthread
# `make gpu-tests` builds tests/gpu/*.c (run by tests/gpu/run.sh); like
# the tools they load the backend at run time.
GPU_TESTS := $(patsubst tests/gpu/%.c,build/gpu/%,$(wildcard tests/gpu/*.c))
build/gpu/%: tests/gpu/%.c tests/unit/tap.h tests/unit/st_test.h tests/unit/attn_bound.h \
		tests/gpu/gpu_test.h build/libft.a build/libft_cuda.so
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -iquote tests/unit $< build/libft.a $(LDLIBS) -o $@
gpu-tests: $(GPU_TESTS)
build/gpu/bench_gpu: bench/train-gpu/bench_gpu.c build/libft.a build/libft_cuda.so
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $< build/libft.a $(LDLIBS) -o $@
endif
.PHONY: gpu-tests gpu-check gpu-check-dry

# The MPI shim: build/libft_mpi.so from lib/train/dist_mpi.c, compiled
# against <mpi.h> whenever mpicc is present (Debian: libopenmpi-dev) and
# dlopen'ed by ft-train only when mpirun or srun started it, so the tools
# never link libmpi (lib/train/dist_internal.h).
MPICC ?= mpicc
MPI   ?= $(shell command -v $(MPICC) >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(MPI),1)
all: build/libft_mpi.so
endif
build/libft_mpi.so: lib/train/dist_mpi.c lib/train/dist_internal.h
	@mkdir -p $(@D)
	$(MPICC) -std=gnu11 $(WARN) -O2 -fPIC -shared -fvisibility=hidden -iquote lib $< -o $@

# The one device check: a self-contained bundle/ (bench/train-gpu/bundle.sh)
# and its script, which on a GPU machine runs the parity tests, ft-train
# on the GPU vs the CPU and the throughput table, and here runs the
# CPU-runnable parts and skips the rest (docs/CUDA.md).  Both run a copy,
# build/bundle-run/, since run.sh unpacks its payload and writes its logs
# beside itself: bundle/ stays as the device tool carries it.
gpu-check: all
	bench/train-gpu/bundle.sh
	rm -rf build/bundle-run && cp -a bundle build/bundle-run
	build/bundle-run/run.sh
# The same bundle run here on the host emulation (DEVICE=emu: the tools and
# tests load build/libft_cuda_emu.so), so every script path, file name,
# fixture and results.md line runs before a GPU sees it; about 5 minutes
# on 2 cores, so not part of `make test`.  PYTHON: one with torch and
# transformers for the generation line (else that line says it failed).
gpu-check-dry: all unit
	bench/train-gpu/bundle.sh
	rm -rf build/bundle-run && cp -a bundle build/bundle-run
	DEVICE=emu FT_CUDA_LIB=$(abspath $(EMU_CUDA)) OMP_NUM_THREADS=1 build/bundle-run/run.sh

# Fuzzing (not part of `make test`): one libFuzzer target per parser,
# tests/fuzz/fuzz_*.c, over the library built with clang's coverage and
# ASan/UBSan; each runs FUZZ_SECONDS from its committed seed corpus
# tests/fuzz/corpus/NAME/ (new inputs go to build/fuzz/corpus/NAME/, crashes
# to build/fuzz/crash-NAME-*).  Needs clang (Debian: apt-get install clang).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 20
FUZZ_FLAGS    = -std=gnu11 -g -O1 -fopenmp -iquote lib -iquote tests/fuzz $(PKG_CFLAGS) \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined -Wno-pass-failed
FUZZ_OBJ     := $(LIB_SRC:%.c=build/fuzz/%.o)
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS    := $(FUZZ_NAMES:%=build/fuzz/fuzz_%)

build/fuzz/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

build/fuzz/libft.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) build/fuzz/libft.a
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $< build/fuzz/libft.a $(LDLIBS) -o $@

fuzz: $(FUZZ_BINS)
	@command -v $(FUZZ_CC) >/dev/null || { echo "fuzz: $(FUZZ_CC) is not installed (apt-get install clang)"; exit 1; }
	@set -e; for n in $(FUZZ_NAMES); do \
		mkdir -p build/fuzz/corpus/$$n; \
		echo "fuzz: $$n for $(FUZZ_SECONDS) s"; \
		ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 build/fuzz/fuzz_$$n \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
			-print_final_stats=1 -artifact_prefix=build/fuzz/crash-$$n- \
			build/fuzz/corpus/$$n tests/fuzz/corpus/$$n 2>&1 | grep -E "^(stat::number_of_executed_units|==|SUMMARY)|Done|ERROR" || true; \
		ls build/fuzz/crash-$$n-* >/dev/null 2>&1 && { echo "fuzz: $$n: crash, see build/fuzz/crash-$$n-*"; exit 1; }; \
	done; echo "fuzz: every target ran $(FUZZ_SECONDS) s without a finding"

unit: $(UNIT_BINS)
# helpers the bats tests run (tests/tools/*.c)
TEST_TOOLS := $(patsubst tests/tools/%.c,build/tests/%,$(wildcard tests/tools/*.c))
unit: $(TEST_TOOLS)
build/tests/%: tests/tools/%.c build/libft.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $< build/libft.a $(LDLIBS) -o $@

# CUDA kernel headers compiled for the host with emulated threads
# (tests/emu/emu.h): unit tests of the kernels that need no GPU.
CXX ?= c++
EMU_BINS := $(patsubst tests/emu/%.cc,build/asan/tests/%,$(wildcard tests/emu/test_*.cc))
unit: $(EMU_BINS)
$(EMU_BINS): build/asan/tests/%: tests/emu/%.cc tests/emu/emu.h tests/emu/emu_test.h $(wildcard lib/cuda/*.cuh) \
		$(wildcard tests/emu/include/*.h) lib/model/flash.h lib/model/kernels.h tests/unit/tap.h tests/unit/attn_bound.h \
		build/asan/libft.a
	@mkdir -p $(@D)
	$(CXX) -std=c++17 $(WARN) -Wno-unknown-pragmas $(OPT) -g -O1 $(SAN) -I tests/emu/include -I tests/emu -iquote lib \
		-iquote tests/unit -x c++ $< \
		-x none build/asan/libft.a $(LDLIBS) -pthread -o $@
# The backend table over the CPU model (tests/emu/fake_backend.c): what
# tests/bats/ft-train-pref-device.bats loads with FT_CUDA_LIB to run the
# tools' device wiring without a GPU.  Its undefined symbols are the
# library's, resolved in the tool (-rdynamic) as libft_cuda.so's are.
FAKE_CUDA := build/tests/libft_fake_cuda.so
unit: $(FAKE_CUDA)
$(FAKE_CUDA): tests/emu/fake_backend.c lib/cuda/backend_internal.h lib/cuda/ft_cuda.h
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -fPIC -shared -fvisibility=hidden $< -o $@
# The whole CUDA backend emulated on the host: lib/cuda's .cu sources
# compiled by g++ against tests/emu/include (a CUDA runtime and cuBLAS
# over host memory and OpenBLAS, kernels run by tests/emu/emu.h's
# fibers), so FT_CUDA_LIB=build/libft_cuda_emu.so runs every line of the
# device path on the CPU (tests/bats/ft-train-cuda-emu.bats).  Needs no
# CUDA toolkit.  Its undefined ft_* symbols resolve in the tool, as
# libft_cuda.so's do.
EMU_CUDA := build/libft_cuda_emu.so
EMU_CXXFLAGS = -std=c++17 $(WARN) -Wno-unknown-pragmas $(OPT) -g -fPIC -fvisibility=hidden \
	-I tests/emu/include -I tests/emu -I lib -iquote lib
EMU_OBJ := $(CU_SRC:%.cu=build/emu/%.o) build/emu/tests/emu/cuda_runtime_emu.o \
	build/emu/tests/emu/cublas_emu.o
unit: $(EMU_CUDA)
build/emu/%.o: %.cu
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -x c++ -c $< -o $@
build/emu/%.o: %.cc
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c $< -o $@
$(EMU_CUDA): $(EMU_OBJ)
	$(CXX) -shared -o $@ $^ -Wl,-Bsymbolic -lopenblas -lpthread
-include $(EMU_OBJ:.o=.d)
# NCCL's calls that lib/train/dist.c makes, across the processes of one
# host over an anonymous shared file (tests/emu/fake_nccl.c): with the emulated
# backend, FT_NCCL_LIB=build/libnccl_emu.so runs mpirun -np N ft-train
# --device cuda's NCCL path (tests/bats/ft-train-nccl-emu.bats).
EMU_NCCL := build/libnccl_emu.so
unit: $(EMU_NCCL)
$(EMU_NCCL): tests/emu/fake_nccl.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(WARN) -O2 -g -fPIC -shared -fvisibility=hidden $< -o $@ -lrt
# The emulation's own checks (tests/emu/check_runtime.cc): emu.h, the
# runtime and cuBLAS shims in one ASan binary.
EMU_RT_TEST := build/asan/tests/test_cuda_emu_runtime
unit: $(EMU_RT_TEST)
$(EMU_RT_TEST): tests/emu/check_runtime.cc tests/emu/cuda_runtime_emu.cc tests/emu/cublas_emu.cc \
		tests/emu/emu.h tests/emu/emu_test.h $(wildcard tests/emu/include/*.h) tests/unit/tap.h build/asan/libft.a
	@mkdir -p $(@D)
	$(CXX) -std=c++17 $(WARN) $(OPT) -g -O1 $(SAN) -I tests/emu/include -I tests/emu -I lib \
		-iquote lib -iquote tests/unit $(filter %.cc,$^) build/asan/libft.a $(LDLIBS) -pthread -o $@
# tests/gpu's device checks against the emulated backend (docs/CUDA-TESTING.md):
# several CPU minutes, so not part of `make test`.
EMU_GPU_TESTS := build/emu-gpu/test_gpu_parity build/emu-gpu/test_gpu_generate \
	build/emu-gpu/test_gpu_qlora build/emu-gpu/test_gpu_attn_half \
	build/emu-gpu/test_gpu_generate_half
# The QLoRA and half-decoder device checks take seconds on the emulation:
# part of `make test` (scripts/run-tests.sh runs whatever of build/emu-gpu/
# it finds in EMU_QUICK).
EMU_QUICK := build/emu-gpu/test_gpu_qlora build/emu-gpu/test_gpu_generate_half
unit: $(EMU_QUICK)
build/emu-gpu/%: tests/gpu/%.c tests/unit/tap.h tests/unit/st_test.h tests/unit/attn_bound.h \
		tests/gpu/gpu_test.h build/libft.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -iquote tests/unit $< build/libft.a $(LDLIBS) -o $@
emu-gpu-tests: $(EMU_GPU_TESTS) $(EMU_CUDA)
	@for t in $(EMU_GPU_TESTS); do echo "# $$t (FT_CUDA_LIB=$(EMU_CUDA))"; \
		FT_CUDA_LIB=$(EMU_CUDA) OMP_NUM_THREADS=1 $$t || exit 1; done
.PHONY: emu-gpu-tests
asan-tools: $(ASAN_BINS)

test: all unit asan-tools
	@scripts/run-tests.sh

demo:
	@scripts/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	if [ -f build/libft_cuda.so ]; then install -d $(DESTDIR)$(PREFIX)/lib/ft && \
		install -m 755 build/libft_cuda.so $(DESTDIR)$(PREFIX)/lib/ft/; fi
	if [ -f build/libft_mpi.so ]; then install -d $(DESTDIR)$(PREFIX)/lib/ft && \
		install -m 755 build/libft_mpi.so $(DESTDIR)$(PREFIX)/lib/ft/; fi

clean:
	rm -rf build bin

.PHONY: all test unit asan-tools demo install clean fuzz
.SECONDARY:
-include $(OBJ:.o=.d) $(ASAN_OBJ:.o=.d) $(CU_OBJ:.o=.d) $(FUZZ_OBJ:.o=.d)
