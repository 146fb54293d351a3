/* qlora.c - what ft-train says about QLoRA memory: the --help note and the
 * log line with the loaded model's resident bytes. */
#include "ft-train.h"
#include "model/quant.h"
#include "util/error.h"
#include "util/sbuf.h"

#include <stdio.h>

/* Planned by lib/model's ft_quant_plan for Llama-2-7B's shape, the shape of
 * LLaMA-Factory's hardware table, so the numbers follow the code. */
void print_quant_help(FILE *f)
{
	ft_config c = { .arch = FT_ARCH_LLAMA, .vocab_size = 32000, .hidden_size = 4096,
			.intermediate_size = 11008, .num_hidden_layers = 32, .num_attention_heads = 32,
			.num_key_value_heads = 32, .head_dim = 128 };
	ft_quant_plan_t p[3];
	const int bits[3] = { 0, 8, 4 };
	for (int i = 0; i < 3; i++)
		ft_quant_plan(&c, bits[i], bits[i] == 4, 8, FT_MOD_ALL_LINEAR, 512, 1, 1, &p[i]);
	fprintf(f, "\nMemory: Llama-2-7B, LoRA r=8 on all linears, 1 x 512 tokens, gradient\n"
		"checkpointing, planned in bf16 (the GPU's precision): %.1f GB unquantized,\n"
		"%.1f GB with --quantization_bit 8, %.1f GB with 4 (base weights resident on the\n"
		"device %.1f / %.1f / %.1f GB; the device plan adds a dequantized tile of 32 MiB).\n"
		"On the CPU (float32) the base weights take %.1f / %.1f / %.1f GB.  On the GPU the\n"
		"linears stay quantized in device memory, dequantized a tile at a time for each\n"
		"product; ft-train logs the loaded model's resident bytes and the device plan.\n",
		p[0].total / 1e9, p[1].total / 1e9, p[2].total / 1e9, p[0].weights / 1e9,
		p[1].weights / 1e9, p[2].weights / 1e9, ft_config_weight_bytes(&c) / 1e9,
		ft_config_weight_bytes_quant(&c, 8, 0) / 1e9, ft_config_weight_bytes_quant(&c, 4, 1) / 1e9);
}

void note_quant_memory(const ft_model *m, const ft_tune_opts *t)
{
	if (!ft_model_is_quantized(m) || ft_verbose < 1)
		return;
	char q[32], f[32];
	ft_bytes_fmt(ft_model_resident_bytes(m), q, sizeof q);
	ft_bytes_fmt(ft_config_weight_bytes(ft_model_config(m)), f, sizeof f);
	warn("note: base weights resident %s with --quantization_bit %d%s%s (%s in float32)", q,
	     t->quantization_bit, t->quantization_bit == 4 ? (t->quantization_fp4 ? " fp4" : " nf4") : "",
	     t->quantization_bit == 4 && t->double_quantization ? ", double quantization" : "", f);
}

/* On the GPU: the base weights as the device holds them (the quantized
 * linears' bytes, the rest in the working precision), planned by
 * ft_quant_plan, which tests/gpu/test_cuda_plan.c holds to the device's
 * own plan. */
void note_quant_device(const ft_model *m, const ft_tune_opts *t, int half)
{
	if (!ft_model_is_quantized(m) || ft_verbose < 1)
		return;
	const ft_config *c = ft_model_config(m);
	ft_quant_plan_t p;
	ft_quant_plan(c, t->quantization_bit, t->double_quantization, 1, 0, 1, 1, half, &p);
	char b[32];
	ft_bytes_fmt(p.weights, b, sizeof b);
	warn("note: base weights resident on the device %s (%d-bit linears, the rest in %s)", b,
	     t->quantization_bit, half ? "half precision" : "float32");
}
