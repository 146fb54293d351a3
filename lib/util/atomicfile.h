/* atomicfile.h - outputs that appear complete or not at all.
 *
 * Every output file and checkpoint directory is written under a temporary
 * name in the same directory and renamed into place when complete, so a
 * crash or Ctrl-C never leaves a half-written file that looks valid.
 * Temporary names still pending are removed on SIGINT/SIGTERM/SIGHUP once
 * ft_atomic_install_signal_cleanup() has been called (tools do that).
 */
#ifndef FT_ATOMICFILE_H
#define FT_ATOMICFILE_H

#include <stdio.h>

typedef struct ft_atomic {
	char *path;   /* final name */
	char *tmp;    /* temporary name: ".<name>.tmp.<pid>.<n>" beside it */
	FILE *fp;     /* open for writing (files only) */
	int direct;   /* the path is a device or FIFO: written in place */
} ft_atomic;

/* Open a temporary file for `path`.  Returns -1 with a message.  An
 * existing path that is not a regular file (/dev/null, /dev/full, a FIFO)
 * is written in place: renaming over it would replace the device. */
int ft_atomic_open(ft_atomic *a, const char *path);
/* Flush, fsync, close and rename into place.  Returns -1 with a message
 * (and removes the temporary) on any write error. */
int ft_atomic_commit(ft_atomic *a);
/* Close and remove the temporary. */
void ft_atomic_abort(ft_atomic *a);

/* Directories (checkpoints, exports, ft-pack outputs): make a temporary
 * sibling directory (created exclusively: the claim of one run), fill it,
 * then ft_atomic_dir_commit() renames it to `path`.  Without `replace`
 * the rename succeeds only when `path` is absent or an empty directory,
 * so of two runs into one new name the second fails cleanly and leaves
 * nothing in the first's output; with `replace` an existing directory is
 * replaced whole.  Opening first reclaims the abandoned temporaries of
 * `path` (ft_atomic_reclaim). */
int ft_atomic_dir_open(ft_atomic *a, const char *path);
int ft_atomic_dir_commit(ft_atomic *a, int replace);
void ft_atomic_dir_abort(ft_atomic *a);

/* Remove what killed runs left: the temporaries ".<name>.tmp.<pid>.<n>"
 * of `path` (ft_atomic_reclaim) or of any name in `dir`
 * (ft_atomic_reclaim_in) whose process no longer runs and which belong
 * to this user.  Returns how many were removed, or -1 with a message. */
int ft_atomic_reclaim(const char *path);
int ft_atomic_reclaim_in(const char *dir);

/* Remove a directory tree (used for replaced or aborted directories). */
int ft_remove_tree(const char *path);
/* mkdir -p */
int ft_mkdirs(const char *path);
/* 1: path is an empty directory or does not exist (an output directory
 * that may be written); 0: it holds an entry; -1 with a message: it cannot
 * be read (not a directory, no permission). */
int ft_dir_is_empty(const char *path);
/* Copy the file src into dir under its own name, atomically, unless a
 * file of that name is there (the tokenizer files beside a saved model). */
int ft_copy_into(const char *src, const char *dir);

/* Tools call this once: temporaries still pending are removed on
 * SIGINT/SIGTERM/SIGHUP and at exit (a tool that dies on an error). */
void ft_atomic_install_signal_cleanup(void);

#endif
