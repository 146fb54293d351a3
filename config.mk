# config.mk - build settings; override on the command line (make CC=clang)
# Project headers are included with quotes and found through -iquote, so a
# module named like a system header (lib/train/lr_sched.h, were it sched.h) never shadows <sched.h>.
CC      ?= cc
PREFIX  ?= /usr/local
NVCC    ?= /usr/local/cuda/bin/nvcc
# CUDA=1 compiles lib/cuda/*.cu; default: on when nvcc is present
CUDA    ?= $(shell test -x $(NVCC) && echo 1 || echo 0)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
            -gencode arch=compute_90,code=compute_90

PKGS    = libzstd msgpack jansson libpcre2-8 libutf8proc cairo yaml-0.1
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# -fno-trapping-math: ft never enables FP traps; it lets GCC if-convert and
# so vectorize loops with float selects (lib/model/vexp.h).  Values are unchanged.
WARN    = -Wall -Wextra -Werror -Wno-unused-parameter
# x86-64-v3 (AVX2, FMA) where the building CPU has it, plain x86-64
# otherwise: results are the same bits either way (-ffp-contract=off, and
# an explicit fmaf is correctly rounded as an instruction or a libm call),
# only the speed differs.  Override with ARCH=... for a machine other than
# the one building.
ARCH    ?= $(if $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null && echo y),-march=x86-64-v3,-march=x86-64)
OPT     ?= -O2 $(ARCH) -ffp-contract=off -fno-math-errno -fno-trapping-math
CFLAGS  ?= $(OPT) -g
ALL_CFLAGS = -std=gnu11 $(WARN) -fopenmp -iquote lib $(PKG_CFLAGS) $(CFLAGS)
LDLIBS  = -rdynamic $(PKG_LIBS) -lopenblas -fopenmp -lm -lpthread -ldl
SAN     = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
