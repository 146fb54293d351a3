/* merge.h - fold LoRA adapters into their base model and write a complete
 * Hugging Face model directory, as PEFT's merge_and_unload() +
 * save_pretrained() (and `llamafactory-cli export`) do.
 *
 *   lib/export/merge_lora.c  adapters: PEFT adapter_config.json (read by
 *                     format/adapter_config.h) + adapter_model.safetensors,
 *                     checks, W += s * B A
 *   lib/export/merge.c       the export: streaming tensor by tensor, shards and
 *                     index, config and tokenizer files, atomic directory
 *
 * For each targeted linear layer W [out, in] with A [r, in], B [out, r]:
 *     W' = W + scale * B A,   scale = alpha / r   (alpha / sqrt(r) with
 * use_rslora; r and alpha per module from rank_pattern / alpha_pattern),
 * computed in float32 and rounded once to the export dtype.
 */
#ifndef FT_MERGE_H
#define FT_MERGE_H

#include <stddef.h>
#include <stdint.h>

/* ---- one adapter ---- */

typedef struct ft_lora ft_lora;

/* Open a PEFT LoRA adapter directory and check it against the base
 * model's tensors (base may be NULL to skip the shape checks; it is an
 * ft_st * from safetensors.h).  Refuses, with a message naming the file:
 * peft_type other than LORA, DoRA, fan_in_fan_out, unknown target
 * modules, adapter_model.bin only, tensors it cannot place, shapes that
 * do not match the base. */
struct ft_st;
ft_lora *ft_lora_open(const char *dir, const struct ft_st *base);
void ft_lora_close(ft_lora *l);
size_t ft_lora_count(const ft_lora *l);     /* LoRA modules */

/* Apply this adapter's change to the base tensor `name` (HF name, e.g.
 * "model.layers.0.self_attn.q_proj.weight"), held in float32 at w with
 * `numel` elements: W += scale * B A for LoRA weights, B.bias * scale
 * for lora_B biases, replacement for modules_to_save.  Returns 1 when the
 * tensor was changed, 0 when the adapter does not touch it, -1 on error. */
int ft_lora_apply(const ft_lora *l, const char *name, float *w, size_t numel);

/* Would ft_lora_apply() change tensor `name`? */
int ft_lora_touches(const ft_lora *l, const char *name);

/* The scale of module `module` ("model.layers.0.self_attn.v_proj"), or
 * NAN when the adapter has no such module (tests). */
double ft_lora_scale(const ft_lora *l, const char *module);

/* ---- the whole export ---- */

enum { FT_MERGE_DTYPE_AUTO = -1 };

typedef struct {
	const char *model_dir;          /* base: config.json + safetensors */
	const char *const *adapters;    /* applied in order */
	size_t nadapters;
	const char *export_dir;
	int export_dtype;               /* FT_MERGE_DTYPE_AUTO or FT_F32/FT_F16/FT_BF16 */
	uint64_t shard_size;            /* bytes per shard; 0: 5 GB (LLaMA-Factory's export_size) */
	int overwrite;                  /* replace a non-empty export_dir */
	int threads;                    /* 0: all cores */
	/* called after each tensor (may be NULL); a non-zero return stops
	 * the merge ("interrupted"), leaving nothing at export_dir */
	int (*progress)(void *ctx, size_t done, size_t total, uint64_t bytes_done,
			uint64_t bytes_total);
	void *progress_ctx;
	/* may be NULL: edits the exported config.json (a jansson json_t *)
	 * before the directory appears, e.g. --rope_scaling; 0 or -1 */
	int (*config_edit)(void *config_json, void *ctx);
	void *config_edit_ctx;
} ft_merge_opts;

/* Merge and write.  Nothing appears at export_dir unless everything
 * succeeded.  Returns 0, or -1 with a message. */
int ft_merge(const ft_merge_opts *o);

/* Shard names as transformers writes them: "model.safetensors" when
 * nshards == 1, else "model-00001-of-00003.safetensors".  malloc'd. */
char *ft_merge_shard_name(size_t i, size_t nshards);

#endif
