/* grpo_reward.c - a reward command kept running for the whole run
 * (grpo_reward.h).  Started as ppo_reward.c's (util/spawn.h), whose
 * command runs once per batch and answers at EOF; this one answers line
 * by line over a stdin that stays open. */
#define _GNU_SOURCE
#include "train/grpo_reward.h"
#include "util/error.h"
#include "util/sbuf.h"
#include "util/spawn.h"
#include <stdio.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct ft_grpo_reward {
	char *name;
	pid_t pid;
	int to, from;
	ft_sbuf in;          /* what it printed and we have not consumed */
	long long line;      /* its output lines so far */
	size_t last_n;       /* completions of the last request */
	int status, exited;
};

ft_grpo_reward *ft_grpo_reward_start(const char *name, const char *cmd)
{
	char what[256];
	snprintf(what, sizeof what, "reward %s", name);
	int to, from;
	pid_t pid = ft_spawn_sh(what, cmd, &to, &from);
	if (pid < 0) return NULL;
	ft_grpo_reward *r = ft_xcalloc(1, sizeof *r);
	r->name = ft_xstrdup(name);
	r->pid = pid;
	r->to = to;
	r->from = from;
	return r;
}

static int reap(ft_grpo_reward *r)
{
	if (!r->exited) {
		while (waitpid(r->pid, &r->status, 0) < 0 && errno == EINTR) {}
		r->exited = 1;
	}
	return r->status;
}

static int died(ft_grpo_reward *r, size_t got, size_t n)
{
	int st = reap(r);
	if (WIFSIGNALED(st))
		return ft_fail("reward %s died of signal %d (%s) after %zu of %zu answers", r->name,
			       WTERMSIG(st), strsignal(WTERMSIG(st)), got, n);
	if (WEXITSTATUS(st) == 127)
		return ft_fail("reward %s exited with status 127 (command not found?)", r->name);
	if (WEXITSTATUS(st))
		return ft_fail("reward %s exited with status %d after %zu of %zu answers", r->name,
			       WEXITSTATUS(st), got, n);
	return ft_fail("reward %s ended after %zu of %zu answers (it must answer one number per line "
		       "and keep reading)", r->name, got, n);
}

/* Take the complete lines of r->in as numbers; *got counts them. */
static int take_lines(ft_grpo_reward *r, size_t n, float *scores, size_t *got)
{
	size_t off = 0;
	char *nl;
	while ((nl = memchr(r->in.s + off, '\n', r->in.n - off))) {
		*nl = 0;
		char *s = r->in.s + off;
		size_t l = strlen(s);
		if (l && s[l - 1] == '\r') s[--l] = 0;
		off = (size_t)(nl - r->in.s) + 1;
		r->line++;
		if (*got == n)
			return ft_fail("reward %s: line %lld of its output: more lines than the %zu completions "
				       "it was sent", r->name, r->line, n);
		char *end;
		errno = 0;
		double v = strtod(s, &end);
		while (*end == ' ' || *end == '\t') end++;
		if (end == s || *end || !isfinite(v) || errno == ERANGE)
			return ft_fail("reward %s: line %lld of its output (completion %zu of the batch), '%.40s', "
				       "is not a number", r->name, r->line, *got + 1, s);
		scores[(*got)++] = (float)v;
	}
	memmove(r->in.s, r->in.s + off, r->in.n - off);
	r->in.n -= off;
	return 0;
}

/* Output already there beyond the answers of the last request (a command
 * that answers twice): read without waiting, refused naming its line, so
 * an extra answer is never taken for the next request's. */
static int leftover(ft_grpo_reward *r)
{
	struct pollfd p = { r->from, POLLIN, 0 };
	while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
		char buf[4096];
		ssize_t k = read(r->from, buf, sizeof buf);
		if (k <= 0) break;   /* EOF: the next exchange says how it ended */
		ft_sbuf_addn(&r->in, buf, (size_t)k);
	}
	if (!r->in.n) return 0;
	return ft_fail("reward %s: line %lld of its output: more lines than the %zu completions it was "
		       "sent", r->name, r->line + 1, r->last_n);
}

int ft_grpo_reward_score(ft_grpo_reward *r, const char *const *lines, size_t n, float *scores)
{
	if (r->exited) return ft_fail("reward %s is no longer running", r->name);
	if (leftover(r) < 0) return -1;
	r->last_n = n;
	ft_sbuf req = { 0 };
	for (size_t i = 0; i < n; i++) {
		ft_sbuf_add(&req, lines[i]);
		ft_sbuf_addc(&req, '\n');
	}
	struct sigaction ign = { 0 }, old;
	ign.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &ign, &old);
	size_t off = 0, got = 0;
	int rc = 0, writing = n > 0;
	while (rc == 0 && got < n) {
		struct pollfd p[2] = { { r->from, POLLIN, 0 }, { r->to, POLLOUT, 0 } };
		if (poll(p, writing ? 2 : 1, -1) < 0) {
			if (errno == EINTR) continue;
			rc = ft_fail("reward %s: poll: %s", r->name, strerror(errno));
			break;
		}
		if (writing && p[1].revents) {
			ssize_t w = write(r->to, req.s + off, req.n - off);
			if (w > 0) off += (size_t)w;
			if (w < 0 && errno != EAGAIN && errno != EINTR) writing = 0;   /* EPIPE: its output decides */
			if (off == req.n) writing = 0;
		}
		if (p[0].revents) {
			char buf[4096];
			ssize_t k = read(r->from, buf, sizeof buf);
			if (k < 0 && errno == EINTR) continue;
			if (k < 0) { rc = ft_fail("reward %s: read: %s", r->name, strerror(errno)); break; }
			if (k == 0) { rc = died(r, got, n); break; }
			ft_sbuf_addn(&r->in, buf, (size_t)k);
			rc = take_lines(r, n, scores, &got);
		}
	}
	if (rc == 0)   /* what came with the answers, before the step uses them */
		rc = leftover(r);
	sigaction(SIGPIPE, &old, NULL);
	free(ft_sbuf_take(&req));
	return rc;
}

int ft_grpo_reward_close(ft_grpo_reward *r)
{
	if (!r) return 0;
	close(r->to);
	close(r->from);
	int st = reap(r), rc = 0;
	if (WIFSIGNALED(st) && WTERMSIG(st) != SIGPIPE)
		rc = ft_fail("reward %s died of signal %d (%s) at the end of the run", r->name, WTERMSIG(st),
			     strsignal(WTERMSIG(st)));
	else if (WIFEXITED(st) && WEXITSTATUS(st))
		rc = ft_fail("reward %s exited with status %d at the end of the run", r->name, WEXITSTATUS(st));
	free(ft_sbuf_take(&r->in));
	free(r->name);
	free(r);
	return rc;
}
