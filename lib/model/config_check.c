/* config_check.c - a config.json's numbers checked before anything is
 * allocated: every value in its range, and the weights' memory against
 * what the machine has.  Used by every loader (ft_config_load,
 * ft_model_load, ft_model_from_config). */
#include "model/model.h"
#include "model/model_internal.h"
#include "format/safetensors.h"
#include "util/error.h"
#include "util/sbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sizes ft can represent: products of them index float arrays in size_t
 * and int, so each is bounded well below 2^31. */
#define MAX_DIM    (1 << 20)
#define MAX_LAYERS 4096
#define MAX_VOCAB  (1 << 24)

static int int_range(const char *path, const char *key, long long v, long long lo, long long hi)
{
	if (v >= lo && v <= hi) return 0;
	return ft_fail("%s: %s = %lld is out of range (%lld to %lld)", path, key, v, lo, hi);
}

static int num_range(const char *path, const char *key, double v, double lo, double hi, int open_lo)
{
	if (isfinite(v) && (open_lo ? v > lo : v >= lo) && v <= hi) return 0;
	return ft_fail("%s: %s = %g is out of range (%s%g to %g)", path, key, v,
		       open_lo ? "above " : "", lo, hi);
}

int ftp_config_check(const ft_config *c, const char *path)
{
	if (int_range(path, "vocab_size", c->vocab_size, 1, MAX_VOCAB) ||
	    int_range(path, "hidden_size", c->hidden_size, 1, MAX_DIM) ||
	    int_range(path, "intermediate_size", c->intermediate_size, 1, 4 * MAX_DIM) ||
	    int_range(path, "num_hidden_layers", c->num_hidden_layers, 1, MAX_LAYERS) ||
	    int_range(path, "num_attention_heads", c->num_attention_heads, 1, 4096) ||
	    int_range(path, "num_key_value_heads", c->num_key_value_heads, 1, c->num_attention_heads) ||
	    int_range(path, "head_dim", c->head_dim, 2, 8192) ||
	    int_range(path, "max_position_embeddings", c->max_position_embeddings, 1, 1 << 24) ||
	    int_range(path, "sliding_window", c->sliding_window, 0, 1 << 24) ||
	    int_range(path, "rope original_max_position_embeddings", c->rope_original_max_pos, 1, 1 << 24))
		return -1;
	if ((long long)c->num_attention_heads * c->head_dim > 4 * MAX_DIM)
		return ft_fail("%s: num_attention_heads x head_dim = %lld is out of range (up to %d)", path,
			       (long long)c->num_attention_heads * c->head_dim, 4 * MAX_DIM);
	/* rms_norm_eps <= 0 divides by zero on a zero row: NaN weights */
	if (num_range(path, "rms_norm_eps", c->rms_norm_eps, 0, 1, 1) ||
	    num_range(path, "rope_theta", c->rope_theta, 0, 1e12, 1) ||
	    num_range(path, "initializer_range", c->initializer_range, 0, 10, 0) ||
	    num_range(path, "rope factor", c->rope_factor, 0, 1e6, 1) ||
	    num_range(path, "rope low_freq_factor", c->rope_low_freq_factor, 0, 1e6, 1) ||
	    num_range(path, "rope high_freq_factor", c->rope_high_freq_factor, 0, 1e6, 1))
		return -1;
	return 0;
}

double ft_config_weight_bytes(const ft_config *c)
{
	double D = c->hidden_size, V = c->vocab_size, per_layer = 2 * D;
	for (int j = 0; j < L_NLIN; j++) {
		int in, out;
		ftp_lin_dims(c, j, &in, &out);
		per_layer += (double)in * out + (j <= L_V && c->attention_bias ? out : 0);
	}
	double n = V * D * (c->tie_word_embeddings ? 1 : 2) + D + per_layer * c->num_hidden_layers;
	return 4 * n;   /* float32 */
}

/* MemAvailable from /proc/meminfo, else free physical pages; 0 unknown. */
static double available_bytes(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	unsigned long long kb = 0;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
	if (f) fclose(f);
	if (kb) return (double)kb * 1024;
	long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
	return pages > 0 && size > 0 ? (double)pages * size : 0;
}

int ftp_config_memory_plan(const ft_config *c, const char *what)
{
	return ftp_memory_plan_check(ft_config_weight_bytes(c), "float32", what);
}

int ftp_memory_plan_check(double need, const char *kind, const char *what)
{
	double avail = available_bytes();
	/* FT_MEMORY_AVAILABLE (bytes) stands in for the machine's, in tests */
	const char *env = getenv("FT_MEMORY_AVAILABLE");
	if (env && *env) avail = strtod(env, NULL);
	if (avail <= 0 || need <= avail) return 0;
	char n[32], a[32];
	ft_bytes_fmt(need, n, sizeof n);
	ft_bytes_fmt(avail, a, sizeof a);
	return ft_fail("%s: the model's %s weights need %s, %s of memory available "
		       "(is num_hidden_layers / hidden_size / vocab_size right?)", what, kind, n, a);
}

/* tensor `name` has shape [d0] (d1 < 0) or [d0, d1] */
static int tensor_is(const ft_st *st, const char *dir, const char *name, int64_t d0, int64_t d1)
{
	const ft_st_tensor *t = ft_st_find(st, name);
	if (!t) return ft_fail("%s: tensor %s is missing (config.json and the weights disagree)", dir, name);
	if (t->ndim == (d1 < 0 ? 1 : 2) && t->shape[0] == d0 && (d1 < 0 || t->shape[1] == d1)) return 0;
	return ft_fail("%s: tensor %s has shape [%lld%s%lld], config.json says [%lld%s%lld]", dir, name,
		       (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
		       (long long)d0, d1 < 0 ? "" : ", ", d1 < 0 ? 0LL : (long long)d1);
}

int ftp_config_check_weights(const ft_config *c, const char *dir)
{
	ft_st *st = ft_st_open(dir);
	if (!st) return -1;
	/* the sizes that drive the allocation, checked before it: every
	 * tensor's shape is checked again when the weights are read */
	char nm[96];
	int L = c->num_hidden_layers, rc;
	snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", L - 1);
	rc = tensor_is(st, dir, "model.embed_tokens.weight", c->vocab_size, c->hidden_size);
	if (!rc) rc = tensor_is(st, dir, nm, c->hidden_size, -1);
	if (!rc) {
		int in, out;
		ftp_lin_dims(c, L_GATE, &in, &out);
		snprintf(nm, sizeof nm, "model.layers.%d.mlp.%s.weight", L - 1, ftp_module_name(c, L_GATE));
		rc = tensor_is(st, dir, nm, ftp_fused_rows(c, L_GATE), in);
	}
	snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", L);
	if (!rc && ft_st_find(st, nm))
		rc = ft_fail("%s: the weights hold more layers than num_hidden_layers %d", dir, L);
	ft_st_close(st);
	return rc;
}
