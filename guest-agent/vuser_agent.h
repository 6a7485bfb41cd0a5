/* SPDX-License-Identifier: MIT */
/*
 * The vuser guest agent's frames (docs/python-api.md "The agent channel").
 * The host side declares the same layouts in vuser/guest/agent_wire.py.
 *
 * Every frame is a 16-byte header and `length` bytes of payload, all fields
 * little-endian. The host sends requests (magic VAGENT_MAGIC_REQ), the agent
 * answers each with one reply (VAGENT_MAGIC_REP) of the same kind and id, or
 * with a VAGENT_ERROR reply of that id. A frame the agent cannot use (bad
 * magic, unknown kind, payload over VAGENT_MAX_REQUEST, truncated) gets a
 * VAGENT_ERROR reply and the agent drops what it has buffered.
 */
#ifndef VUSER_AGENT_H
#define VUSER_AGENT_H

#include <stdint.h>

#define VAGENT_MAGIC_REQ 0x51474156u /* "VAGQ" */
#define VAGENT_MAGIC_REP 0x52474156u /* "VAGR" */
#define VAGENT_VERSION 1u
#define VAGENT_MAX_REQUEST (64u << 20)  /* request payload bytes */
#define VAGENT_MAX_OUTPUT (16u << 20)   /* bytes kept of each of stdout, stderr */
#define VAGENT_PORT_NAME "org.vuser.agent"

enum vagent_kind {
	VAGENT_PING = 1,       /* -> struct vagent_ping_rep */
	VAGENT_EXEC = 2,       /* struct vagent_exec_req, command -> vagent_exec_rep, stdout, stderr */
	VAGENT_WRITE_FILE = 3, /* struct vagent_write_req, path, data -> empty */
	VAGENT_READ_KMSG = 4,  /* empty -> the kernel log (syslog(2) READ_ALL) */
	VAGENT_READ_FILE = 5,  /* struct vagent_read_req, path -> the file's bytes */
	VAGENT_ERROR = 0x8000, /* reply only: struct vagent_error_rep, message */
};

struct vagent_hdr {
	uint32_t magic;
	uint16_t kind;
	uint16_t flags;  /* 0 */
	uint32_t id;
	uint32_t length; /* payload bytes after the header */
};

struct vagent_ping_rep {
	uint32_t version;
	uint32_t max_request;
};

#define VAGENT_EXEC_STDOUT_TRUNCATED 1u
#define VAGENT_EXEC_STDERR_TRUNCATED 2u
#define VAGENT_EXEC_TIMED_OUT 4u

struct vagent_exec_req {
	uint32_t timeout_ms; /* 0: none; else SIGKILL to the command's process group */
	uint32_t cmd_len;    /* bytes of the command after this struct (/bin/sh -c) */
};

struct vagent_exec_rep {
	int32_t status;      /* exit status, -1 when killed by a signal */
	int32_t signal;      /* the signal that killed it, else 0 */
	uint32_t flags;      /* VAGENT_EXEC_* */
	uint32_t stdout_len;
	uint32_t stderr_len;
	uint32_t reserved;
};

#define VAGENT_WRITE_MKDIRS 1u /* create missing parent directories (0755) */

struct vagent_write_req {
	uint32_t mode;     /* permission bits of the file */
	uint32_t flags;    /* VAGENT_WRITE_* */
	uint32_t path_len;
	uint32_t data_len;
};

struct vagent_read_req {
	uint32_t path_len;
	uint32_t max_len;  /* a longer file is an EFBIG error */
};

struct vagent_error_rep {
	int32_t err;       /* an errno value */
	uint32_t msg_len;
};

#endif
