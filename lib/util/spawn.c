/* spawn.c - sh -c as a filter (spawn.h) */
#define _GNU_SOURCE
#include "util/spawn.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

pid_t ft_spawn_sh(const char *what, const char *cmd, int *to, int *from)
{
	int in[2], out[2];
	if (pipe2(in, O_CLOEXEC) < 0) return ft_fail("%s: pipe: %s", what, strerror(errno));
	if (pipe2(out, O_CLOEXEC) < 0) {
		close(in[0]); close(in[1]);
		return ft_fail("%s: pipe: %s", what, strerror(errno));
	}
	pid_t pid = fork();
	if (pid < 0) {
		close(in[0]); close(in[1]); close(out[0]); close(out[1]);
		return ft_fail("%s: fork: %s", what, strerror(errno));
	}
	if (pid == 0) {   /* dup2 clears O_CLOEXEC on 0 and 1 */
		dup2(in[0], 0);
		dup2(out[1], 1);
		signal(SIGPIPE, SIG_DFL);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	*to = in[1];
	*from = out[0];
	return pid;
}
