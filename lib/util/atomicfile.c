/* atomicfile.c - temporary name + rename; see atomicfile.h */
#define _GNU_SOURCE
#include "util/atomicfile.h"
#include "util/error.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Pending temporaries, for the signal handler.  Fixed size so the handler
 * touches no allocator. */
#define MAX_PENDING 64
static char *volatile pending[MAX_PENDING];
static int pending_is_dir[MAX_PENDING];

static void pending_add(char *tmp, int is_dir)
{
	for (int i = 0; i < MAX_PENDING; i++)
		if (!pending[i]) {
			pending_is_dir[i] = is_dir;
			pending[i] = tmp;
			return;
		}
}

static void pending_remove(const char *tmp)
{
	for (int i = 0; i < MAX_PENDING; i++)
		if (pending[i] == tmp) pending[i] = NULL;
}

static char *temp_name(const char *path)
{
	static int counter;
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	int dirlen = slash ? (int)(slash - path + 1) : 0;
	return ft_xasprintf("%.*s.%s.tmp.%d.%d", dirlen, path, base, (int)getpid(),
			    __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
}

static int open_direct(ft_atomic *a, const char *path)
{
	a->direct = 1;
	a->tmp = NULL;
	a->fp = fopen(path, "wb");
	if (!a->fp) return ft_fail("%s:", path);
	a->path = ft_xstrdup(path);
	return 0;
}

int ft_atomic_open(ft_atomic *a, const char *path)
{
	struct stat st;
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		return open_direct(a, path);
	a->direct = 0;
	a->path = ft_xstrdup(path);
	a->tmp = temp_name(path);
	a->fp = fopen(a->tmp, "wb");
	if (!a->fp) {
		ft_fail("%s: cannot create:", path);
		free(a->path); free(a->tmp);
		a->path = a->tmp = NULL;
		return -1;
	}
	pending_add(a->tmp, 0);
	return 0;
}

static void atomic_free(ft_atomic *a)
{
	pending_remove(a->tmp);
	free(a->path); free(a->tmp);
	a->path = a->tmp = NULL;
	a->fp = NULL;
}

static int commit_direct(ft_atomic *a)
{
	int bad = fflush(a->fp) != 0 || ferror(a->fp);
	if (fclose(a->fp) != 0) bad = 1;
	if (bad) ft_fail("%s: write failed:", a->path);
	free(a->path);
	a->path = NULL;
	a->fp = NULL;
	return bad ? -1 : 0;
}

int ft_atomic_commit(ft_atomic *a)
{
	if (a->direct) return commit_direct(a);
	int bad = fflush(a->fp) != 0 || ferror(a->fp) || fsync(fileno(a->fp)) != 0;
	if (fclose(a->fp) != 0) bad = 1;
	a->fp = NULL;
	if (bad) {
		ft_fail("%s: write failed:", a->path);
		unlink(a->tmp);
		atomic_free(a);
		return -1;
	}
	if (rename(a->tmp, a->path) != 0) {
		ft_fail("%s: rename failed:", a->path);
		unlink(a->tmp);
		atomic_free(a);
		return -1;
	}
	atomic_free(a);
	return 0;
}

void ft_atomic_abort(ft_atomic *a)
{
	if (a->direct) {
		if (a->fp) fclose(a->fp);
		free(a->path);
		a->path = NULL, a->fp = NULL, a->direct = 0;
		return;
	}
	if (!a->tmp) return;
	if (a->fp) fclose(a->fp);
	unlink(a->tmp);
	atomic_free(a);
}

int ft_atomic_dir_open(ft_atomic *a, const char *path)
{
	if (ft_atomic_reclaim(path) < 0) return -1;
	a->fp = NULL;
	a->direct = 0;
	a->path = ft_xstrdup(path);
	size_t l = strlen(a->path);
	while (l > 1 && a->path[l - 1] == '/') a->path[--l] = 0;   /* "out/" names out */
	a->tmp = temp_name(a->path);
	int made = mkdir(a->tmp, 0777) == 0;
	if (!made && errno == ENOENT && strchr(a->path, '/')) {   /* parents first */
		char *parent = ft_xstrdup(a->path);
		*strrchr(parent, '/') = 0;
		made = *parent && ft_mkdirs(parent) == 0 && mkdir(a->tmp, 0777) == 0;
		free(parent);
	}
	if (!made) {
		ft_fail("%s: cannot create:", a->tmp);
		free(a->path); free(a->tmp);
		a->path = a->tmp = NULL;
		return -1;
	}
	pending_add(a->tmp, 1);
	return 0;
}

int ft_atomic_dir_commit(ft_atomic *a, int replace)
{
	struct stat st;
	if (replace && stat(a->path, &st) == 0) {
		/* Move the old one aside first so the name is never missing a
		 * complete directory for longer than two renames. */
		char *old = temp_name(a->path);
		if (rename(a->path, old) != 0) {
			ft_fail("%s: rename failed:", a->path);
			free(old);
			ft_atomic_dir_abort(a);
			return -1;
		}
		int rc = rename(a->tmp, a->path);
		if (rc != 0) {
			ft_fail("%s: rename failed:", a->path);
			rename(old, a->path);
			free(old);
			ft_atomic_dir_abort(a);
			return -1;
		}
		ft_remove_tree(old);
		free(old);
		atomic_free(a);
		return 0;
	}
	/* rename(2) replaces only an empty directory: of two runs claiming
	 * one new name, the second fails here and leaves nothing in it */
	if (rename(a->tmp, a->path) != 0) {
		if (errno == ENOTEMPTY || errno == EEXIST)
			ft_fail("%s: already exists and is not empty (another run wrote it first?)", a->path);
		else
			ft_fail("%s: rename failed:", a->path);
		ft_atomic_dir_abort(a);
		return -1;
	}
	atomic_free(a);
	return 0;
}

void ft_atomic_dir_abort(ft_atomic *a)
{
	if (!a->tmp) return;
	ft_remove_tree(a->tmp);
	atomic_free(a);
}

/* ".<base>.tmp.<pid>.<n>" (temp_name): the pid, or 0 when `name` is not
 * one of those or not for `base` (NULL: any base). */
static pid_t temp_owner(const char *name, const char *base)
{
	if (name[0] != '.') return 0;
	const char *t = strstr(name + 1, ".tmp.");
	if (!t || t == name + 1) return 0;
	if (base && ((size_t)(t - name - 1) != strlen(base) || strncmp(name + 1, base, strlen(base))))
		return 0;
	char *end;
	long pid = strtol(t + 5, &end, 10);
	if (pid <= 0 || *end != '.' || !end[1]) return 0;
	strtol(end + 1, &end, 10);
	return *end ? 0 : (pid_t)pid;
}

/* A temporary whose writer is gone: its pid no longer runs, and it is
 * ours (a live process, or another user's file, is left alone). */
static int abandoned(const char *path, pid_t pid)
{
	struct stat st;
	if (pid == getpid() || lstat(path, &st) != 0 || st.st_uid != getuid()) return 0;
	return kill(pid, 0) != 0 && errno == ESRCH;
}

static int reclaim_in(const char *dir, const char *base)
{
	DIR *d = opendir(dir);
	if (!d) return errno == ENOENT ? 0 : ft_fail("%s:", dir);
	struct dirent *e;
	int n = 0, rc = 0;
	while ((e = readdir(d)) && rc == 0) {
		pid_t pid = temp_owner(e->d_name, base);
		if (!pid) continue;
		char *p = ft_xasprintf("%s/%s", dir, e->d_name);
		if (abandoned(p, pid)) {
			rc = ft_remove_tree(p);
			n++;
		}
		free(p);
	}
	closedir(d);
	return rc < 0 ? -1 : n;
}

int ft_atomic_reclaim(const char *path)
{
	char *p = ft_xstrdup(path);
	size_t l = strlen(p);
	while (l > 1 && p[l - 1] == '/') p[--l] = 0;   /* "out/" names out */
	char *slash = strrchr(p, '/');
	const char *base = slash ? slash + 1 : p, *dir = ".";
	if (slash == p) dir = "/";
	else if (slash) *slash = 0, dir = p;
	int rc = reclaim_in(dir, base);
	free(p);
	return rc;
}

int ft_atomic_reclaim_in(const char *dir)
{
	return reclaim_in(dir, NULL);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

int ft_remove_tree(const char *path)
{
	if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
		return ft_fail("%s: cannot remove:", path);
	return 0;
}

int ft_mkdirs(const char *path)
{
	if (!*path) {   /* the loop below starts past the first character */
		errno = ENOENT;
		return ft_fail("cannot create a directory with an empty name");
	}
	char *p = ft_xstrdup(path);
	for (char *s = p + 1; ; s++) {
		if (*s == '/' || *s == 0) {
			char c = *s;
			*s = 0;
			if (mkdir(p, 0777) != 0 && errno != EEXIST) {
				ft_fail("%s:", p);
				free(p);
				return -1;
			}
			*s = c;
			if (!c) break;
		}
	}
	free(p);
	return 0;
}

int ft_dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	if (!d) return errno == ENOENT ? 1 : ft_fail("%s:", path);
	struct dirent *e;
	int empty = 1;
	while (empty && (e = readdir(d)))
		empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
	closedir(d);
	return empty;
}

/* Async-signal-safe: unlink/rmdir of files in a pending directory is not
 * possible without nftw, so directories are removed shallowly (their
 * files first via a fixed buffer walk is overkill): we unlink files and
 * try rmdir; a leftover ".x.tmp.*" directory is never mistaken for a
 * complete checkpoint because of its name. */
static void on_signal(int sig)
{
	for (int i = 0; i < MAX_PENDING; i++) {
		char *t = pending[i];
		if (!t) continue;
		if (pending_is_dir[i]) rmdir(t);
		else unlink(t);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

/* A tool that dies (exit 1) with a temporary pending: remove it whole,
 * so only a kill -9 leaves one (for ft_atomic_reclaim to find). */
static void on_exit_cleanup(void)
{
	for (int i = 0; i < MAX_PENDING; i++) {
		char *t = pending[i];
		if (!t) continue;
		if (pending_is_dir[i]) ft_remove_tree(t);
		else unlink(t);
		pending[i] = NULL;
	}
}

void ft_atomic_install_signal_cleanup(void)
{
	static int registered;
	if (!registered++) atexit(on_exit_cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
}

int ft_copy_into(const char *src, const char *dir)
{
	const char *base = strrchr(src, '/');
	base = base ? base + 1 : src;
	char *dst = ft_xasprintf("%s/%s", dir, base);
	struct stat st;
	int rc = 0;
	if (stat(dst, &st) == 0) goto out;
	FILE *in = fopen(src, "rb");
	if (!in) { rc = ft_fail("%s:", src); goto out; }
	ft_atomic a;
	if (ft_atomic_open(&a, dst) < 0) { fclose(in); rc = -1; goto out; }
	char buf[65536];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, a.fp) != n) break;
	int bad = ferror(in);
	fclose(in);
	if (bad) {
		ft_atomic_abort(&a);
		rc = ft_fail("%s: read failed:", src);
		goto out;
	}
	rc = ft_atomic_commit(&a);
out:
	free(dst);
	return rc;
}
