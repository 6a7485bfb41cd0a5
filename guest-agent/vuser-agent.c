// SPDX-License-Identifier: MIT
/*
 * vuser-agent: serves the host's requests over a virtio-serial port
 * (docs/python-api.md "The agent channel"; frames in vuser_agent.h).
 *
 *   vuser-agent            find the port named org.vuser.agent in
 *                          /sys/class/virtio-ports and serve it; when the
 *                          host is not connected, reads see end-of-file:
 *                          wait and read again
 *   vuser-agent --fd N     serve fd N; end-of-file ends the agent (the
 *                          host's tests run it this way over a socketpair)
 *
 * Requests are served one at a time. A command runs as `/bin/sh -c CMD` in
 * its own session, stdin /dev/null; its stdout and stderr are kept up to
 * VAGENT_MAX_OUTPUT bytes each (the rest is read and dropped, the reply says
 * so); after its timeout the whole process group gets SIGKILL.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vuser_agent.h"

#define FRAME_TIMEOUT_MS 2000 /* a started frame must arrive within this */

static int chan = -1;
static int exit_on_eof;

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int write_all(const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(chan, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_reply(uint16_t kind, uint32_t id, const void *a, size_t alen,
		      const void *b, size_t blen, const void *c, size_t clen)
{
	struct vagent_hdr h = { VAGENT_MAGIC_REP, kind, 0, id, (uint32_t)(alen + blen + clen) };

	if (write_all(&h, sizeof(h)) || (alen && write_all(a, alen)) ||
	    (blen && write_all(b, blen)) || (clen && write_all(c, clen)))
		return -1;
	return 0;
}

static int send_error(uint32_t id, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int send_error(uint32_t id, int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	struct vagent_error_rep e;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	e.err = err;
	e.msg_len = (uint32_t)strlen(msg);
	return send_reply(VAGENT_ERROR, id, &e, sizeof(e), msg, e.msg_len, NULL, 0);
}

/* Read exactly len bytes. 1: done; 0: end-of-file before the first byte;
 * -1: error, end-of-file or timeout in the middle (timeout_ms < 0: none). */
static int read_exact(void *buf, size_t len, int timeout_ms)
{
	char *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n;

		if (timeout_ms >= 0) {
			struct pollfd pfd = { chan, POLLIN, 0 };
			int r = poll(&pfd, 1, timeout_ms);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return -1;
		}
		n = read(chan, p + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return got ? -1 : 0;
		got += (size_t)n;
	}
	return 1;
}

/* Drop whatever the host has sent so far (after a frame we cannot use). */
static void drain(void)
{
	char buf[4096];
	struct pollfd pfd = { chan, POLLIN, 0 };

	while (poll(&pfd, 1, 100) > 0 && (pfd.revents & POLLIN)) {
		if (read(chan, buf, sizeof(buf)) <= 0)
			break;
	}
}

struct out {
	char *buf;
	uint32_t len;
	int truncated;
};

static void collect(int fd, struct out *o, int *open_)
{
	char tmp[65536];
	ssize_t n = read(fd, tmp, sizeof(tmp));

	if (n <= 0) {
		if (n == 0 || (errno != EINTR && errno != EAGAIN))
			*open_ = 0;
		return;
	}
	if (o->len < VAGENT_MAX_OUTPUT) {
		uint32_t room = VAGENT_MAX_OUTPUT - o->len;
		uint32_t take = (uint32_t)n < room ? (uint32_t)n : room;
		char *nb = realloc(o->buf, o->len + take);

		if (!nb) {
			o->truncated = 1;
			return;
		}
		o->buf = nb;
		memcpy(o->buf + o->len, tmp, take);
		o->len += take;
		if (take < (uint32_t)n)
			o->truncated = 1;
	} else {
		o->truncated = 1;
	}
}

static void do_exec(uint32_t id, const char *payload, uint32_t len)
{
	struct vagent_exec_req req;
	struct vagent_exec_rep rep = { 0 };
	struct out out[2] = { { 0 }, { 0 } };
	int pout[2], perr[2], open_[2] = { 1, 1 }, status = 0, exited = 0;
	long long deadline;
	char *cmd;
	pid_t pid;

	if (len < sizeof(req)) {
		send_error(id, EINVAL, "exec request of %u bytes, the header needs %zu", len, sizeof(req));
		return;
	}
	memcpy(&req, payload, sizeof(req));
	if (req.cmd_len != len - sizeof(req)) {
		send_error(id, EINVAL, "exec command length %u, the frame holds %zu", req.cmd_len,
			   len - sizeof(req));
		return;
	}
	cmd = strndup(payload + sizeof(req), req.cmd_len);
	if (!cmd || strlen(cmd) != req.cmd_len) {
		send_error(id, EINVAL, "exec command holds a NUL byte");
		free(cmd);
		return;
	}
	if (pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
		send_error(id, errno, "pipe: %s", strerror(errno));
		free(cmd);
		return;
	}
	pid = fork();
	if (pid < 0) {
		send_error(id, errno, "fork: %s", strerror(errno));
		free(cmd);
		close(pout[0]); close(pout[1]); close(perr[0]); close(perr[1]);
		return;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		setsid();
		signal(SIGPIPE, SIG_DFL);
		dup2(null, 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		dprintf(2, "vuser-agent: /bin/sh: %s\n", strerror(errno));
		_exit(127);
	}
	free(cmd);
	close(pout[1]);
	close(perr[1]);
	deadline = req.timeout_ms ? now_ms() + req.timeout_ms : 0;
	for (;;) {
		struct pollfd pfd[2] = { { open_[0] ? pout[0] : -1, POLLIN, 0 },
					 { open_[1] ? perr[0] : -1, POLLIN, 0 } };
		int r;

		if (!exited && waitpid(pid, &status, WNOHANG) == pid)
			exited = 1;
		if (!open_[0] && !open_[1]) {
			if (exited)
				break;
		}
		if (deadline && now_ms() > deadline && !(rep.flags & VAGENT_EXEC_TIMED_OUT)) {
			rep.flags |= VAGENT_EXEC_TIMED_OUT;
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
		}
		r = poll(pfd, 2, 50);
		if (r < 0 && errno != EINTR)
			break;
		for (int i = 0; i < 2; i++)
			if (open_[i] && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				collect(i ? perr[0] : pout[0], &out[i], &open_[i]);
		if (exited && r == 0) {
			/* The command is gone; what it left running in the
			 * background may hold the pipes: stop reading. */
			break;
		}
	}
	if (!exited)
		waitpid(pid, &status, 0);
	close(pout[0]);
	close(perr[0]);
	if (WIFSIGNALED(status)) {
		rep.status = -1;
		rep.signal = WTERMSIG(status);
	} else {
		rep.status = WEXITSTATUS(status);
	}
	if (out[0].truncated)
		rep.flags |= VAGENT_EXEC_STDOUT_TRUNCATED;
	if (out[1].truncated)
		rep.flags |= VAGENT_EXEC_STDERR_TRUNCATED;
	rep.stdout_len = out[0].len;
	rep.stderr_len = out[1].len;
	send_reply(VAGENT_EXEC, id, &rep, sizeof(rep), out[0].buf, out[0].len, out[1].buf,
		   out[1].len);
	free(out[0].buf);
	free(out[1].buf);
}

/* The path of a request: len bytes, no NUL, absolute. NULL after an error reply. */
static char *request_path(uint32_t id, const char *p, uint32_t len)
{
	char *path = strndup(p, len);

	if (!path || strlen(path) != len || len == 0 || path[0] != '/') {
		send_error(id, EINVAL, "the path must be absolute and hold no NUL byte");
		free(path);
		return NULL;
	}
	return path;
}

static int mkdirs(char *path)
{
	for (char *s = strchr(path + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = 0;
		if (mkdir(path, 0755) && errno != EEXIST) {
			*s = '/';
			return -1;
		}
		*s = '/';
	}
	return 0;
}

static void do_write(uint32_t id, const char *payload, uint32_t len)
{
	struct vagent_write_req req;
	const char *data;
	char *path;
	int fd;

	if (len < sizeof(req)) {
		send_error(id, EINVAL, "write request of %u bytes, the header needs %zu", len, sizeof(req));
		return;
	}
	memcpy(&req, payload, sizeof(req));
	if ((uint64_t)req.path_len + req.data_len != len - sizeof(req)) {
		send_error(id, EINVAL, "write lengths %u + %u, the frame holds %zu", req.path_len,
			   req.data_len, len - sizeof(req));
		return;
	}
	if (req.mode & ~07777u) {
		send_error(id, EINVAL, "mode %#o has bits beyond 07777", req.mode);
		return;
	}
	path = request_path(id, payload + sizeof(req), req.path_len);
	if (!path)
		return;
	data = payload + sizeof(req) + req.path_len;
	if ((req.flags & VAGENT_WRITE_MKDIRS) && mkdirs(path)) {
		send_error(id, errno, "mkdir for %s: %s", path, strerror(errno));
		free(path);
		return;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, req.mode);
	if (fd < 0) {
		send_error(id, errno, "open %s: %s", path, strerror(errno));
		free(path);
		return;
	}
	for (uint32_t done = 0; done < req.data_len;) {
		ssize_t n = write(fd, data + done, req.data_len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			send_error(id, n < 0 ? errno : EIO, "write %s: %s", path,
				   n < 0 ? strerror(errno) : "short write");
			close(fd);
			free(path);
			return;
		}
		done += (uint32_t)n;
	}
	if (fchmod(fd, req.mode) || close(fd)) {
		send_error(id, errno, "%s: %s", path, strerror(errno));
		free(path);
		return;
	}
	free(path);
	send_reply(VAGENT_WRITE_FILE, id, NULL, 0, NULL, 0, NULL, 0);
}

static void do_read_file(uint32_t id, const char *payload, uint32_t len)
{
	struct vagent_read_req req;
	struct stat st;
	char *path, *buf;
	ssize_t n;
	int fd;

	if (len < sizeof(req)) {
		send_error(id, EINVAL, "read request of %u bytes, the header needs %zu", len, sizeof(req));
		return;
	}
	memcpy(&req, payload, sizeof(req));
	if (req.path_len != len - sizeof(req)) {
		send_error(id, EINVAL, "read path length %u, the frame holds %zu", req.path_len,
			   len - sizeof(req));
		return;
	}
	path = request_path(id, payload + sizeof(req), req.path_len);
	if (!path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		send_error(id, errno, "open %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(path);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		send_error(id, EINVAL, "%s is not a regular file", path);
		goto out;
	}
	if ((uint64_t)st.st_size > req.max_len || (uint64_t)st.st_size > VAGENT_MAX_OUTPUT) {
		send_error(id, EFBIG, "%s has %lld bytes, more than %u", path, (long long)st.st_size,
			   req.max_len < VAGENT_MAX_OUTPUT ? req.max_len : VAGENT_MAX_OUTPUT);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		send_error(id, ENOMEM, "%s: no memory", path);
		goto out;
	}
	n = read(fd, buf, (size_t)st.st_size);
	if (n < 0)
		send_error(id, errno, "read %s: %s", path, strerror(errno));
	else
		send_reply(VAGENT_READ_FILE, id, buf, (size_t)n, NULL, 0, NULL, 0);
	free(buf);
out:
	close(fd);
	free(path);
}

static void do_kmsg(uint32_t id)
{
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0), n;
	char *buf;

	if (size <= 0) {
		send_error(id, size < 0 ? errno : EIO, "syslog SIZE_BUFFER: %s",
			   size < 0 ? strerror(errno) : "empty");
		return;
	}
	buf = malloc((size_t)size);
	if (!buf) {
		send_error(id, ENOMEM, "no memory for %d bytes of kernel log", size);
		return;
	}
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
	if (n < 0)
		send_error(id, errno, "syslog READ_ALL: %s", strerror(errno));
	else
		send_reply(VAGENT_READ_KMSG, id, buf, (size_t)n, NULL, 0, NULL, 0);
	free(buf);
}

static void serve_one(const struct vagent_hdr *h, const char *payload)
{
	switch (h->kind) {
	case VAGENT_PING: {
		struct vagent_ping_rep r = { VAGENT_VERSION, VAGENT_MAX_REQUEST };

		if (h->length)
			send_error(h->id, EINVAL, "ping carries no payload, got %u bytes", h->length);
		else
			send_reply(VAGENT_PING, h->id, &r, sizeof(r), NULL, 0, NULL, 0);
		break;
	}
	case VAGENT_EXEC:
		do_exec(h->id, payload, h->length);
		break;
	case VAGENT_WRITE_FILE:
		do_write(h->id, payload, h->length);
		break;
	case VAGENT_READ_FILE:
		do_read_file(h->id, payload, h->length);
		break;
	case VAGENT_READ_KMSG:
		if (h->length)
			send_error(h->id, EINVAL, "read_kmsg carries no payload, got %u bytes", h->length);
		else
			do_kmsg(h->id);
		break;
	}
}

static int open_port(void)
{
	for (int tries = 0; tries < 200; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;

		while (d && (e = readdir(d))) {
			char p[300], name[64] = "";
			FILE *f;

			if (e->d_name[0] == '.')
				continue;
			snprintf(p, sizeof(p), "/sys/class/virtio-ports/%s/name", e->d_name);
			f = fopen(p, "r");
			if (!f)
				continue;
			if (fgets(name, sizeof(name), f))
				name[strcspn(name, "\n")] = 0;
			fclose(f);
			if (!strcmp(name, VAGENT_PORT_NAME)) {
				int fd;

				snprintf(p, sizeof(p), "/dev/%s", e->d_name);
				fd = open(p, O_RDWR | O_CLOEXEC);
				if (fd >= 0) {
					closedir(d);
					return fd;
				}
			}
		}
		if (d)
			closedir(d);
		usleep(50000);
	}
	fprintf(stderr, "vuser-agent: no virtio port named %s\n", VAGENT_PORT_NAME);
	return -1;
}

int main(int argc, char **argv)
{
	static char payload[VAGENT_MAX_REQUEST];

	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && !strcmp(argv[1], "--fd")) {
		chan = atoi(argv[2]);
		exit_on_eof = 1;
	} else if (argc == 1) {
		chan = open_port();
	} else {
		fprintf(stderr, "usage: vuser-agent [--fd N]\n");
		return 2;
	}
	if (chan < 0)
		return 1;
	for (;;) {
		struct vagent_hdr h;
		int r = read_exact(&h, sizeof(h), -1);

		if (r == 0) {
			if (exit_on_eof)
				return 0;
			usleep(100000); /* the host is not connected */
			continue;
		}
		if (r < 0) {
			if (exit_on_eof)
				return 0;
			usleep(100000);
			continue;
		}
		if (h.magic != VAGENT_MAGIC_REQ) {
			drain();
			send_error(0, EPROTO, "bad frame magic %#x (want %#x)", h.magic,
				   VAGENT_MAGIC_REQ);
			continue;
		}
		if (h.length > VAGENT_MAX_REQUEST) {
			drain();
			send_error(h.id, EMSGSIZE, "request of %u bytes, the limit is %u", h.length,
				   VAGENT_MAX_REQUEST);
			continue;
		}
		if (h.length && read_exact(payload, h.length, FRAME_TIMEOUT_MS) != 1) {
			drain();
			send_error(h.id, EPROTO, "truncated frame: %u payload bytes did not arrive "
				   "within %d ms", h.length, FRAME_TIMEOUT_MS);
			continue;
		}
		if (h.flags) {
			send_error(h.id, EINVAL, "frame flags %#x, want 0", h.flags);
			continue;
		}
		if (h.kind < VAGENT_PING || h.kind > VAGENT_READ_FILE) {
			send_error(h.id, EOPNOTSUPP, "unknown request kind %u", h.kind);
			continue;
		}
		serve_one(&h, payload);
	}
}
