/* test_error.c - error messages, atomic outputs, option parsing helpers */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tap.h"
#include "util/error.h"
#include "util/atomicfile.h"

static int exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

static void test_messages(void)
{
	ft_fail("bad %s at %d", "thing", 3);
	ok(strcmp(ft_errmsg(), "bad thing at 3") == 0, "ft_fail formats");
	errno = ENOENT;
	ft_fail("x.json:");
	ok(strcmp(ft_errmsg(), "x.json: No such file or directory") == 0,
	   "trailing ':' appends strerror (%s)", ft_errmsg());
	ft_fail("inner");
	ft_fail_ctx("outer: ");
	ok(strcmp(ft_errmsg(), "outer: inner") == 0, "ft_fail_ctx prefixes");
	ft_errclear();
	ok(strcmp(ft_errmsg(), "unknown error") == 0, "cleared message");
	char *s = ft_xasprintf("%d-%s", 7, "a");
	ok(strcmp(s, "7-a") == 0, "ft_xasprintf");
	free(s);
}

static void test_atomic_file(const char *dir)
{
	char path[512];
	snprintf(path, sizeof path, "%s/out.bin", dir);
	ft_atomic a;
	ok(ft_atomic_open(&a, path) == 0, "atomic open");
	fputs("hello", a.fp);
	ok(!exists(path), "final name absent before commit");
	ok(exists(a.tmp), "temporary present");
	ok(ft_atomic_commit(&a) == 0 && exists(path), "commit renames into place");

	ok(ft_atomic_open(&a, path) == 0, "reopen");
	fputs("partial", a.fp);
	char *tmp = ft_xstrdup(a.tmp);
	ft_atomic_abort(&a);
	ok(!exists(tmp), "abort removes the temporary");
	FILE *f = fopen(path, "rb");
	char buf[16] = {0};
	ok(f && fread(buf, 1, sizeof buf, f) == 5 && !strcmp(buf, "hello"), "old file untouched by abort");
	if (f) fclose(f);
	free(tmp);

	ok(ft_atomic_open(&a, "/dev/null") == 0 && a.direct && fputs("x", a.fp) >= 0 &&
	   ft_atomic_commit(&a) == 0, "a device is written in place");
	struct stat st;
	ok(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode), "/dev/null is still a device");
	if (ft_atomic_open(&a, "/dev/full") == 0) {
		char big[8192] = {0};
		fwrite(big, 1, sizeof big, a.fp);
		ok(ft_atomic_commit(&a) == -1 && strstr(ft_errmsg(), "/dev/full"), "/dev/full: write failure reported");
	} else {
		ok(0, "/dev/full opens");
	}
	ok(stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode), "/dev/full is still a device");
	ok(ft_atomic_open(&a, "/nonexistent-dir/x") == -1, "open in missing dir fails");
	ok(strstr(ft_errmsg(), "nonexistent-dir") != NULL, "message names the path");
}

static void test_atomic_dir(const char *dir)
{
	char path[512], inner[600];
	snprintf(path, sizeof path, "%s/ckpt", dir);
	ft_atomic a;
	ok(ft_atomic_dir_open(&a, path) == 0, "dir open");
	snprintf(inner, sizeof inner, "%s/f", a.tmp);
	FILE *f = fopen(inner, "w");
	fputs("1", f);
	fclose(f);
	ok(ft_atomic_dir_commit(&a, 0) == 0 && exists(path), "dir commit");
	ok(ft_atomic_dir_open(&a, path) == 0, "dir reopen");
	ok(ft_atomic_dir_commit(&a, 0) == -1, "refuses to replace without flag");
	ok(ft_atomic_dir_open(&a, path) == 0, "dir reopen 2");
	ok(ft_atomic_dir_commit(&a, 1) == 0, "replaces with flag");
	snprintf(inner, sizeof inner, "%s/f", path);
	ok(!exists(inner), "replaced directory has the new contents");
	snprintf(inner, sizeof inner, "%s/a/b/c", dir);
	ok(ft_mkdirs(inner) == 0 && exists(inner), "mkdirs");
	ok(ft_mkdirs("") == -1 && strstr(ft_errmsg(), "empty name"), "mkdirs refuses an empty name");
	ok(ft_remove_tree(path) == 0 && !exists(path), "remove tree");
}

int main(void)
{
	char tmpl[] = "/tmp/ft-test-XXXXXX";
	const char *dir = mkdtemp(tmpl);
	test_messages();
	test_atomic_file(dir);
	test_atomic_dir(dir);
	ft_remove_tree(dir);
	return tap_done();
}
