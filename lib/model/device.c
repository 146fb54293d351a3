/* device.c - device selection and loading the CUDA backend (see device.h).
 *
 * The backend is found beside the executable rather than on the loader's
 * search path so that a tree's bin/ uses that tree's build/libft_cuda.so
 * and a bundle is relocatable.  Loading is not thread-safe: the tools
 * resolve --device on the main thread before starting any work.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "model/device.h"
#include "util/error.h"

#define SO_NAME "libft_cuda.so"
/* lib/cuda/backend_internal.h (model/ may not include cuda/) */
#define PROBE_SYMBOL "ftp_cuda_backend_probe"

static struct {
	int tried, ok;
	void *h;
	char path[PATH_MAX], why[PATH_MAX + 512];
} be;

int ft_device_exe_dir(char *dir, size_t n)
{
	ssize_t k = readlink("/proc/self/exe", dir, n - 1);
	if (k <= 0)
		return -1;
	dir[k] = 0;
	char *slash = strrchr(dir, '/');
	if (!slash)
		return -1;
	*slash = 0;
	return 0;
}

/* dlopen one candidate; 1 loaded, 0 absent, -1 present but unloadable. */
static int try_open(const char *path)
{
	if (access(path, F_OK) != 0)
		return 0;
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(be.why, sizeof be.why, "%s does not load: %s", path, e ? e : "?");
		return -1;
	}
	be.h = h;
	snprintf(be.path, sizeof be.path, "%s", path);
	return 1;
}

static void load_once(void)
{
	be.tried = 1;
	const char *env = getenv("FT_CUDA_LIB");
	if (env && *env) {
		int r = try_open(env);
		if (r == 0)
			snprintf(be.why, sizeof be.why, "FT_CUDA_LIB=%s: no such file", env);
		be.ok = r == 1;
		return;
	}
	char dir[PATH_MAX - 64];
	if (ft_device_exe_dir(dir, sizeof dir) < 0) {
		snprintf(be.why, sizeof be.why, "cannot read /proc/self/exe to find " SO_NAME
			 " (set FT_CUDA_LIB)");
		return;
	}
	static const char *const rel[] = { "", "../lib/ft/", "../build/", "../", "../../" };
	for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s" SO_NAME, dir, rel[i]);
		int r = try_open(p);
		if (r != 0) {
			be.ok = r == 1;
			return;
		}
	}
	snprintf(be.why, sizeof be.why, "no CUDA backend: " SO_NAME " is not beside %s (build it "
		 "with make where nvcc is installed, or set FT_CUDA_LIB)", dir);
}

int ft_device_cuda_load(void)
{
	if (!be.tried)
		load_once();
	return be.ok ? 1 : ft_fail("%s", be.why);
}

const char *ft_device_cuda_path(void) { return be.ok ? be.path : ""; }

void *ft_device_cuda_symbol(const char *name)
{
	if (ft_device_cuda_load() < 0)
		return NULL;
	void *s = dlsym(be.h, name);
	if (!s)
		ft_fail("%s: no symbol %s (a libft_cuda.so from another build?)", be.path, name);
	return s;
}

int ft_device_cuda_count(char *desc, size_t desc_size)
{
	if (desc && desc_size)
		desc[0] = 0;
	int (*probe)(char *, size_t) = (int (*)(char *, size_t))ft_device_cuda_symbol(PROBE_SYMBOL);
	if (!probe)
		return -1;
	int n = probe(desc, desc_size);
	if (n < 0)
		return -1;
	if (n == 0)
		return ft_fail("no CUDA device found");
	return n;
}

static int parse_cuda(const char *want, int *idx)
{
	*idx = 0;
	if (strncmp(want, "cuda", 4) || (want[4] && want[4] != ':'))
		return ft_fail("--device '%s': expected cpu, cuda, cuda:N or auto", want);
	if (want[4] == ':') {
		char *end;
		long v = strtol(want + 5, &end, 10);
		if (end == want + 5 || *end || v < 0 || v > 1024)
			return ft_fail("--device '%s': bad device index", want);
		*idx = (int)v;
	}
	return 0;
}

int ft_device_resolve(const char *want, int *index, char *why, size_t why_size)
{
	*index = 0;
	if (why && why_size)
		why[0] = 0;
	if (!want || !*want || !strcmp(want, "auto")) {
		if (ft_device_cuda_count(NULL, 0) > 0)
			return FT_DEV_CUDA;
		if (why && why_size)
			snprintf(why, why_size, "%s", ft_errmsg());
		ft_errclear();
		return FT_DEV_CPU;
	}
	if (!strcmp(want, "cpu"))
		return FT_DEV_CPU;
	int idx;
	if (parse_cuda(want, &idx) < 0)
		return -1;
	int n = ft_device_cuda_count(NULL, 0);
	if (n < 0)
		return ft_fail_ctx("--device %s: ", want);
	if (idx >= n)
		return ft_fail("--device %s: only %d CUDA device%s", want, n, n == 1 ? "" : "s");
	*index = idx;
	return FT_DEV_CUDA;
}
