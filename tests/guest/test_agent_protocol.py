"""The guest agent's channel, host side: the client against a fake agent
(bad frames, silence, hang-ups), and the real agent binary run on the host
over a socketpair (``vuser-agent --fd N``): commands, signals, big outputs,
files, and frames it must refuse without hanging."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import threading
import time

import pytest

from vuser.guest import agent_wire as w
from vuser.guest.agent import AgentClient, AgentError, AgentGone, AgentTimeout, build_agent
from vuser.guest.agent_wire import AgentProtocolError


# -- a fake agent ---------------------------------------------------------------------
class FakeAgent:
    """Reads one request frame per scripted answer and writes that answer's bytes."""

    def __init__(self, answers) -> None:
        self.host, self.peer = socket.socketpair()
        self.answers = list(answers)
        self.requests: list[w.Header] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.peer.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _run(self) -> None:
        try:
            for answer in self.answers:
                h = w.Header.unpack(self._recv(w.Header.SIZE))
                self._recv(h.length)
                self.requests.append(h)
                data = answer(h) if callable(answer) else answer
                if data is None:
                    self.peer.close()
                    return
                if isinstance(data, tuple):  # (bytes, "close"): send, then hang up
                    self.peer.sendall(data[0])
                    self.peer.close()
                    return
                self.peer.sendall(data)
        except (EOFError, OSError):
            pass

    def client(self) -> AgentClient:
        return AgentClient(self.host)


def rep(kind: int, rid: int, payload: bytes, magic: int = w.MAGIC_REP) -> bytes:
    return w.Header(magic, kind, 0, rid, len(payload)).pack() + payload


def exec_reply(rid: int, out: bytes = b"", err: bytes = b"", status: int = 0, sig: int = 0,
               flags: int = 0) -> bytes:
    return rep(w.Kind.EXEC, rid, w.ExecReply(status, sig, flags, len(out), len(err)).pack()
               + out + err)


def test_exec_reply_decoded_in_pieces():
    frame = exec_reply(1, b"hello\n", b"warn\n", status=3)
    dec = w.ReplyDecoder()
    got = []
    for i in range(len(frame)):  # one byte at a time
        got += dec.feed(frame[i:i + 1])
    assert len(got) == 1 and dec.pending == 0
    r = w.parse_reply(got[0], w.Kind.EXEC)
    assert (r.stdout, r.stderr, r.status, r.signal) == (b"hello\n", b"warn\n", 3, 0)
    assert r.describe() == "exit status 3" and not r.ok


def test_signal_reply_describes_the_signal():
    r = w.parse_reply(w.ReplyDecoder().feed(exec_reply(2, status=-1, sig=9,
                                                       flags=w.EXEC_TIMED_OUT))[0], w.Kind.EXEC)
    assert r.status is None and r.signal == signal.SIGKILL and r.timed_out
    assert r.describe() == "killed by SIGKILL (timed out)"


@pytest.mark.parametrize("frame, what", [
    (rep(w.Kind.EXEC, 1, b"", magic=0x12345678), "bad reply magic"),
    (rep(0x42, 1, b""), "unknown reply kind"),
    (w.Header(w.MAGIC_REP, w.Kind.EXEC, 0, 1, w.MAX_REPLY + 1).pack(), "the limit is"),
])
def test_decoder_refuses_frames_no_agent_sends(frame, what):
    with pytest.raises(AgentProtocolError, match=what):
        w.ReplyDecoder().feed(frame)


@pytest.mark.parametrize("payload, what", [
    (w.ExecReply(0, 0, 0, 5, 0).pack() + b"abc", "output bytes"),        # lengths disagree
    (b"\0" * 10, "needs 24"),                                             # short fixed part
    (w.ExecReply(-1, 0, 0, 0, 0).pack(), "status -1 and signal 0"),       # killed, by nothing
])
def test_malformed_exec_reply_is_a_protocol_error(payload, what):
    reply = w.ReplyDecoder().feed(rep(w.Kind.EXEC, 1, payload))[0]
    with pytest.raises(AgentProtocolError, match=what):
        w.parse_reply(reply, w.Kind.EXEC)


def test_error_reply_raises_agent_error():
    msg = b"open /nope: No such file or directory"
    fake = FakeAgent([lambda h: rep(w.Kind.ERROR, h.id,
                                    w.ErrorReply(errno.ENOENT, len(msg)).pack() + msg)])
    with fake.client() as c, pytest.raises(AgentError) as ei:
        c.read_file("/nope")
    assert ei.value.errno == errno.ENOENT and ei.value.errno_name == "ENOENT"
    assert "No such file" in ei.value.strerror


def test_client_skips_a_late_reply_to_an_abandoned_request():
    fake = FakeAgent([b"",   # the first ping: no answer (the client gives up)
                      lambda h: rep(w.Kind.PING, h.id - 1, w.PingReply(1, 5).pack())
                      + rep(w.Kind.PING, h.id, w.PingReply(1, 7).pack())])
    with fake.client() as c:
        with pytest.raises(AgentTimeout):
            c.ping(timeout=0.2)
        assert c.ping(timeout=5).max_request == 7


def test_silent_agent_times_out_instead_of_hanging(monkeypatch):
    from vuser.guest import agent

    monkeypatch.setattr(agent, "EXEC_REPLY_SLACK_S", 0.4)
    fake = FakeAgent([b""])
    with fake.client() as c:
        t0 = time.monotonic()
        with pytest.raises(AgentTimeout):
            c.exec("true", timeout=0.1)  # the reply is awaited 0.1 + 0.4 s
        assert 0.45 < time.monotonic() - t0 < 5


def test_hang_up_mid_frame_is_agent_gone_and_stays_so():
    frame = exec_reply(1, b"x" * 100)
    fake = FakeAgent([lambda h: (frame[:50], "close")])
    with fake.client() as c:
        with pytest.raises(AgentGone):
            c.exec("true", timeout=5)
        with pytest.raises(AgentGone, match="unusable"):
            c.ping()


def test_garbage_from_the_peer_breaks_the_channel():
    fake = FakeAgent([b"\xff" * 16])
    with fake.client() as c:
        with pytest.raises(AgentProtocolError):
            c.ping(timeout=5)
        with pytest.raises(AgentGone, match="bad reply magic"):
            c.ping()


def test_big_output_through_the_client():
    out = bytes(range(256)) * (8 << 12)  # 8 MiB
    fake = FakeAgent([lambda h: exec_reply(h.id, out, b"e" * 1000)])
    with fake.client() as c:
        r = c.exec("cat big", timeout=30)
    assert r.stdout == out and r.stderr == b"e" * 1000


def test_requests_refuse_what_the_agent_would_refuse():
    with pytest.raises(ValueError, match="absolute"):
        w.encode_write(1, "relative/path", b"")
    with pytest.raises(ValueError, match="NUL"):
        w.encode_exec(1, "echo \0")
    with pytest.raises(ValueError, match="at most"):
        w.encode_write(1, "/big", b"\0" * w.MAX_REQUEST)


# -- the real agent, on the host ----------------------------------------------------------
@pytest.fixture(scope="module")
def agent_binary():
    return build_agent()


@pytest.fixture
def real(agent_binary):
    host, peer = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary), "--fd", str(peer.fileno())],
                            pass_fds=(peer.fileno(),), stdin=subprocess.DEVNULL)
    peer.close()
    client = AgentClient(host)
    yield client, host
    client.close()
    try:
        proc.wait(5)  # end-of-file ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_agent_ping(real):
    c, _ = real
    p = c.ping()
    assert (p.version, p.max_request) == (w.VERSION, w.MAX_REQUEST)


def test_agent_runs_a_command(real):
    c, _ = real
    r = c.exec("echo out; echo err >&2; exit 7", timeout=20)
    assert (r.stdout, r.stderr, r.status, r.signal) == (b"out\n", b"err\n", 7, 0)


def test_agent_reports_the_signal_that_killed_a_command(real):
    c, _ = real
    r = c.exec("echo before; kill -SEGV $$", timeout=20)
    assert r.status is None and r.signal == signal.SIGSEGV and not r.timed_out
    assert r.stdout == b"before\n"


def test_agent_kills_a_command_past_its_timeout(real):
    c, _ = real
    t0 = time.monotonic()
    r = c.exec("echo started; sleep 30", timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert r.timed_out and r.signal == signal.SIGKILL and r.stdout == b"started\n"


def test_agent_does_not_wait_for_what_a_command_leaves_running(real):
    c, _ = real
    t0 = time.monotonic()
    r = c.exec("sleep 20 & echo bg", timeout=30)
    assert r.status == 0 and r.stdout == b"bg\n" and time.monotonic() - t0 < 10


def test_agent_caps_big_output(real):
    c, _ = real
    r = c.exec(f"head -c {20 << 20} /dev/zero; echo tail >&2", timeout=60)
    assert r.status == 0 and len(r.stdout) == w.MAX_OUTPUT and r.stdout_truncated
    assert r.stderr == b"tail\n" and not r.stderr_truncated


def test_agent_writes_and_reads_files(real, tmp_path):
    c, _ = real
    target = tmp_path / "a" / "b" / "f.bin"
    data = bytes(range(256)) * 1000
    c.write_file(str(target), data, 0o751)
    assert target.read_bytes() == data and (target.stat().st_mode & 0o777) == 0o751
    assert c.read_file(str(target)) == data


def test_agent_file_errors_are_error_replies(real, tmp_path):
    c, _ = real
    with pytest.raises(AgentError) as ei:
        c.read_file(str(tmp_path / "missing"))
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(AgentError) as ei:
        c.read_file(str(tmp_path))  # a directory
    assert ei.value.errno == errno.EINVAL
    (tmp_path / "file").write_text("x")
    with pytest.raises(AgentError) as ei:
        c.write_file(str(tmp_path / "file" / "below"), b"x")
    assert ei.value.errno == errno.ENOTDIR
    assert c.exec("echo alive").stdout == b"alive\n"  # still serving


def _raw_reply(sock: socket.socket, timeout: float = 10.0) -> w.Reply:
    sock.settimeout(timeout)
    dec = w.ReplyDecoder()
    while True:
        got = dec.feed(sock.recv(1 << 16))
        if got:
            return got[0]


@pytest.mark.parametrize("frame, err, rid", [
    (b"NOPE" + b"\0" * 12, errno.EPROTO, 0),                                          # magic
    (w.Header(w.MAGIC_REQ, w.Kind.EXEC, 0, 9, w.MAX_REQUEST + 1).pack(), errno.EMSGSIZE, 9),
    (w.Header(w.MAGIC_REQ, 77, 0, 5, 0).pack(), errno.EOPNOTSUPP, 5),                  # kind
    (w.Header(w.MAGIC_REQ, w.Kind.PING, 1, 6, 0).pack(), errno.EINVAL, 6),             # flags
    (w.Header(w.MAGIC_REQ, w.Kind.EXEC, 0, 7, 8).pack()
     + w.ExecRequest(0, 100).pack(), errno.EINVAL, 7),                                 # lengths
    (w.Header(w.MAGIC_REQ, w.Kind.WRITE_FILE, 0, 8, 16).pack()
     + w.WriteRequest(0o644, 0, 0, 0).pack(), errno.EINVAL, 8),                        # no path
])
def test_agent_answers_bad_frames_with_errors_and_keeps_serving(real, frame, err, rid):
    c, host = real
    host.sendall(frame)
    reply = _raw_reply(host)
    assert (reply.kind, reply.id) == (w.Kind.ERROR, rid)
    with pytest.raises(AgentError) as ei:
        w.parse_reply(reply, w.Kind.PING)
    assert ei.value.errno == err
    host.settimeout(None)
    assert c.exec("echo again", timeout=20).stdout == b"again\n"


def test_agent_times_out_a_truncated_frame(real):
    c, host = real
    host.sendall(w.Header(w.MAGIC_REQ, w.Kind.EXEC, 0, 3, 100).pack() + b"\0" * 10)
    t0 = time.monotonic()
    reply = _raw_reply(host, timeout=20)
    assert reply.kind == w.Kind.ERROR and reply.id == 3 and b"truncated" in reply.payload
    assert time.monotonic() - t0 < 15
    host.settimeout(None)
    assert c.ping().version == w.VERSION


def test_the_c_header_and_the_python_layouts_agree():
    import re

    from vuser.guest.agent import AGENT_SOURCES

    text = AGENT_SOURCES[1].read_text()
    defines = {m[0]: int(m[1], 0) for m in re.findall(r"#define (VAGENT_\w+) \(?(0x[0-9a-f]+|\d+)u?",
                                                       text)}
    shifts = dict(re.findall(r"#define (VAGENT_MAX_\w+) \((\d+)u << 20\)", text))
    assert defines["VAGENT_MAGIC_REQ"] == w.MAGIC_REQ and defines["VAGENT_MAGIC_REP"] == w.MAGIC_REP
    assert defines["VAGENT_VERSION"] == w.VERSION
    assert int(shifts["VAGENT_MAX_REQUEST"]) << 20 == w.MAX_REQUEST
    assert int(shifts["VAGENT_MAX_OUTPUT"]) << 20 == w.MAX_OUTPUT
    kinds = dict(re.findall(r"\tVAGENT_(\w+) = (0x[0-9a-f]+|\d+),", text))
    assert {k: int(v, 0) for k, v in kinds.items()} == {
        "PING": w.Kind.PING, "EXEC": w.Kind.EXEC, "WRITE_FILE": w.Kind.WRITE_FILE,
        "READ_KMSG": w.Kind.READ_KMSG, "READ_FILE": w.Kind.READ_FILE, "ERROR": w.Kind.ERROR}
    # each struct: its u32/i32/u16 fields in order, as the Python Struct declares them
    for c_name, py in [("vagent_hdr", w.Header), ("vagent_exec_req", w.ExecRequest),
                       ("vagent_exec_rep", w.ExecReply), ("vagent_write_req", w.WriteRequest),
                       ("vagent_read_req", w.ReadRequest), ("vagent_error_rep", w.ErrorReply),
                       ("vagent_ping_rep", w.PingReply)]:
        body = re.search(rf"struct {c_name} {{(.*?)}};", text, re.S).group(1)
        names = re.findall(r"\b(?:u?int\d+_t) (\w+);", body)
        assert tuple(names) == py.fields(), c_name
