/* ppo_reward.c - the reward filter (ppo_reward.h): one sh -c per batch,
 * JSON lines in, numbers out, multiplexed with poll. */
#define _GNU_SOURCE
#include "train/ppo_reward.h"
#include "util/error.h"
#include "util/sbuf.h"
#include "util/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

char *ft_reward_request_line(const char *prompt, const char *key, const char *text, const json_t *extra)
{
	json_t *jp = json_string(prompt), *jt = json_string(text);
	if (!jp || !jt) {
		json_decref(jp);
		json_decref(jt);
		ft_fail("the %s is not valid UTF-8", jp ? key : "prompt");
		return NULL;
	}
	json_t *o = json_object(), *v;
	json_object_set_new(o, "prompt", jp);
	json_object_set_new(o, key, jt);
	const char *k;
	if (json_is_object(extra))
		json_object_foreach((json_t *)extra, k, v)
			if (strcmp(k, "prompt") && strcmp(k, key)) json_object_set(o, k, v);
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}

/* The whole stdin of the command: one compact JSON object per line.
 * NULL (with the response named) when a text is not UTF-8: the caller
 * decodes with replacement characters, as transformers' decode does. */
static char *request_text(const char *const *prompts, const char *const *responses,
			  const json_t *const *extra, size_t n, size_t *len)
{
	ft_sbuf b = { 0 };
	for (size_t i = 0; i < n; i++) {
		char *s = ft_reward_request_line(prompts[i], "response", responses[i], extra ? extra[i] : NULL);
		if (!s) {
			free(ft_sbuf_take(&b));
			ft_fail_ctx("reward command: response %zu: ", i + 1);
			return NULL;
		}
		ft_sbuf_add(&b, s);
		ft_sbuf_addc(&b, '\n');
		free(s);
	}
	*len = b.n;
	return ft_sbuf_take(&b);
}

/* Feed req to the command and collect all it prints until EOF. */
static int exchange(int to, int from, const char *req, size_t len, ft_sbuf *outb)
{
	size_t off = 0;
	if (len == 0) { close(to); to = -1; }
	for (;;) {
		struct pollfd p[2] = { { from, POLLIN, 0 }, { to, POLLOUT, 0 } };
		int np = to >= 0 ? 2 : 1;
		if (poll(p, np, -1) < 0) {
			if (errno == EINTR) continue;
			return ft_fail("reward command: poll: %s", strerror(errno));
		}
		if (np == 2 && p[1].revents) {
			ssize_t w = write(to, req + off, len - off);
			if (w > 0) off += (size_t)w;
			/* EPIPE: it stopped reading; what it printed decides */
			if ((w < 0 && errno != EAGAIN && errno != EINTR) || off == len) {
				close(to);
				to = -1;
			}
		}
		if (p[0].revents) {
			char buf[4096];
			ssize_t r = read(from, buf, sizeof buf);
			if (r < 0 && errno == EINTR) continue;
			if (r < 0) return ft_fail("reward command: read: %s", strerror(errno));
			if (r == 0) break;
			ft_sbuf_addn(outb, buf, (size_t)r);
		}
	}
	if (to >= 0) close(to);
	return 0;
}

/* One number per line; the line named when it is not. */
static int parse_scores(char *text, size_t n, float *scores)
{
	size_t line = 0;
	char *save = NULL;
	for (char *s = strtok_r(text, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
		line++;
		size_t l = strlen(s);
		if (l && s[l - 1] == '\r') s[--l] = 0;
		char *end;
		errno = 0;
		double v = strtod(s, &end);
		while (*end == ' ' || *end == '\t') end++;
		if (end == s || *end || !isfinite(v) || errno == ERANGE)
			return ft_fail("reward command: line %zu of its output, '%.40s', is not a number",
				       line, s);
		if (line > n)
			return ft_fail("reward command: line %zu of its output: more lines than the %zu "
				       "responses", line, n);
		scores[line - 1] = (float)v;
	}
	if (line < n)
		return ft_fail("reward command: it answered %zu lines for %zu responses (line %zu is "
			       "missing)", line, n, line + 1);
	return 0;
}

int ft_ppo_reward_cmd(const char *cmd, const char *const *prompts, const char *const *responses,
		      const json_t *const *extra, size_t n, float *scores)
{
	size_t len;
	char *req = request_text(prompts, responses, extra, n, &len);
	if (!req) return -1;
	/* a command that exits before reading all would otherwise kill us */
	struct sigaction ign = { 0 }, old;
	ign.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &ign, &old);
	int to = -1, from = -1;
	pid_t pid = ft_spawn_sh("reward command", cmd, &to, &from);
	int rc = -1;
	ft_sbuf outb = { 0 };
	if (pid > 0) {
		rc = exchange(to, from, req, len, &outb);
		close(from);
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
		if (rc == 0 && WIFSIGNALED(status))
			rc = ft_fail("reward command died of signal %d (%s)", WTERMSIG(status),
				     strsignal(WTERMSIG(status)));
		else if (rc == 0 && WEXITSTATUS(status) == 127)
			rc = ft_fail("reward command exited with status 127 (not found?): %s", cmd);
		else if (rc == 0 && WEXITSTATUS(status) != 0)
			rc = ft_fail("reward command exited with status %d", WEXITSTATUS(status));
	}
	sigaction(SIGPIPE, &old, NULL);
	free(req);
	char *text = ft_sbuf_take(&outb);
	if (rc == 0) rc = parse_scores(text, n, scores);
	free(text);
	return rc;
}
