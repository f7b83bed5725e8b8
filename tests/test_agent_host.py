"""The agent's ops and its resilience, run on the host (--stdio): no VM needed."""

import errno
import os
import random
import socket
import subprocess
import threading
import time

import pytest

from provium import agent_build, protocol
from provium.agent_client import AgentClient
from provium.cache import Cache
from provium.errors import AgentError

T = 10.0


@pytest.fixture(scope="module")
def agent_binary():
    return agent_build.build(Cache())


@pytest.fixture
def agent(agent_binary):
    host, guest = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary), "--stdio"], stdin=guest, stdout=guest)
    guest.close()
    client = AgentClient(host)
    client.wait_hello(T)
    client.handshake(T)
    yield client
    host.close()
    proc.wait(10)
    assert proc.returncode == 0


def op(client, name, channel=protocol.MAIN_CHANNEL, /, **fields):
    return client.request(channel, name, T, **fields)


def test_handshake_names_the_agent(agent):
    assert agent.agent_name.startswith("provium-agent/")


def test_router_and_worker_answer_ping(agent):
    assert op(agent, "ping", protocol.ROUTER_CHANNEL)["id"] > 0
    assert op(agent, "ping")["id"] > 0


def test_exec_separates_streams_and_reports_status(agent):
    reply = op(agent, "exec", cmd="echo hi; echo err >&2; exit 3")
    assert (reply["stdout"], reply["stderr"], reply["exit_code"]) == (b"hi\n", b"err\n", 3)
    assert op(agent, "exec", cmd="kill -9 $$")["exit_code"] == 137
    assert op(agent, "exec", cmd="no-such-command-xyz")["exit_code"] == 127


def test_exec_is_binary_safe_and_streams_megabytes(agent):
    assert op(agent, "exec", cmd="printf 'a\\0b'")["stdout"] == b"a\0b"
    assert len(op(agent, "exec", cmd="head -c 3000000 /dev/zero")["stdout"]) == 3_000_000


def test_files_round_trip_in_chunks(agent, tmp_path):
    data = os.urandom(protocol.CHUNK + 1)
    path = str(tmp_path / "f")
    op(agent, "write_file", path=path, data=data[:protocol.CHUNK], append=False)
    op(agent, "write_file", path=path, data=data[protocol.CHUNK:], append=True)
    reply = op(agent, "read_file", path=path)
    assert reply["data"] == data and reply["size"] == len(data)


def test_errors_name_the_op_path_and_errno(agent, tmp_path):
    with pytest.raises(AgentError) as info:
        op(agent, "read_file", path=str(tmp_path / "missing"))
    assert "missing" in str(info.value) and info.value.errno == 2
    with pytest.raises(AgentError, match="unknown op"):
        op(agent, "frobnicate")
    with pytest.raises(AgentError, match="cmd"):
        op(agent, "exec", cmd=42)
    with pytest.raises(AgentError, match="no worker on channel 9"):
        op(agent, "ping", 9)
    assert op(agent, "ping")["id"] > 0


def drain(sock, quiet=0.0):
    """Read and drop what the agent sent until it has been quiet for `quiet` seconds."""
    sock.settimeout(quiet)
    try:
        while sock.recv(1 << 20):
            pass
    except (BlockingIOError, socket.timeout):
        pass
    finally:
        sock.settimeout(None)


def test_garbage_never_wedges_the_agent(agent):
    rng = random.Random(1234)
    valid = protocol.encode(1, {"id": 999999, "op": "ping"})
    sock = agent._sock
    for i in range(2000):
        if i % 100 == 0:
            drain(sock)
        kind = rng.random()
        if kind < 0.4:
            junk = rng.randbytes(rng.randrange(1, 64))
        elif kind < 0.8:
            frame = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            junk = bytes(frame)
        else:
            junk = b"PV" + rng.randbytes(6)
        sock.sendall(junk)
    # A mutated header may announce up to MAX_PAYLOAD bytes: complete it with zeros, which
    # the agent then skips while resynchronising.
    for _ in range(protocol.MAX_PAYLOAD // 65536 + 1):
        sock.sendall(b"\0" * 65536)
        drain(sock)
    drain(sock, quiet=0.5)
    agent._decoder = protocol.FrameDecoder()
    assert op(agent, "exec", cmd="echo alive")["stdout"] == b"alive\n"


def test_syscall_patches_pointers_and_returns_buffers(agent):
    ret = op(agent, "syscall", nr=39, args=[])["ret"]  # getpid: the worker, not the router
    assert ret > 1
    # writev to an invalid fd still copies nothing but returns -EBADF
    reply = op(agent, "syscall", nr=20, args=[-1, 0, 1], bufs=[[1, bytes(16)]],
               ptrs=[[1, 0, 4, b"abcd"]])
    assert reply["ret"] == -9
    pointer = int.from_bytes(reply["bufs"][0][:8], "little")
    assert pointer != 0 and reply["ptrs"] == [b"abcd"]
    # uname fills its output buffer
    reply = op(agent, "syscall", nr=63, args=[0], bufs=[[0, bytes(390)]])
    assert reply["ret"] == 0 and reply["bufs"][0].startswith(b"Linux\0")


@pytest.mark.parametrize("fields, message", [
    ({"args": [1] * 7}, "at most 6"),
    ({"args": [0], "bufs": [[6, b"x"]]}, "argument index must be 0..5"),
    ({"args": [0], "bufs": [[0, b"x"], [0, b"y"]]}, "unique"),
    ({"args": [0], "bufs": [[0, b"short"]], "ptrs": [[0, 0, 1, None]]}, "does not leave 8 bytes"),
    ({"args": [0], "bufs": [[0, bytes(8)]], "ptrs": [[1, 0, 1, None]]}, "no buffer at argument index 1"),
    ({"args": [0], "bufs": [[0, bytes(8)]], "ptrs": [[0, 0, 1, b"toolong"]]}, "hold the data"),
    ({"args": ["x"]}, "must be an integer"),
])
def test_syscall_refuses_bad_specs_before_running(agent, fields, message):
    with pytest.raises(AgentError, match=message):
        op(agent, "syscall", nr=39, **fields)
    assert op(agent, "ping")


def test_background_jobs(agent):
    job = op(agent, "background", cmd="echo a; sleep 0.3; echo b >&2; exit 5")
    assert job["job"] >= 1 and job["pid"] > 1
    assert op(agent, "job_wait", job=job["job"], timeout_ms=0)["running"] is True
    done = op(agent, "job_wait", job=job["job"])
    assert (done["running"], done["exit_code"], done["stdout"], done["stderr"]) == (False, 5, b"a\n", b"b\n")
    slow = op(agent, "background", cmd="sleep 60")
    killed = op(agent, "job_kill", job=slow["job"])
    assert (killed["running"], killed["exit_code"]) == (False, 137)
    with pytest.raises(AgentError, match="no job"):
        op(agent, "job_wait", job=slow["job"])


def test_spawned_workers_and_kill(agent):
    main_pid = op(agent, "syscall", nr=39, args=[])["ret"]
    fork = op(agent, "spawn", protocol.ROUTER_CHANNEL, thread=False)
    thread = op(agent, "spawn", protocol.ROUTER_CHANNEL, thread=True)
    assert fork["channel"] != thread["channel"] and min(fork["channel"], thread["channel"]) >= 2
    assert op(agent, "syscall", fork["channel"], nr=39, args=[])["ret"] == fork["pid"] != main_pid
    assert op(agent, "syscall", thread["channel"], nr=39, args=[])["ret"] == main_pid == thread["pid"]
    assert op(agent, "syscall", thread["channel"], nr=186, args=[])["ret"] == thread["tid"]
    for worker in (fork, thread):
        op(agent, "kill_worker", protocol.ROUTER_CHANNEL, channel=worker["channel"])
        with pytest.raises(AgentError, match="no worker on channel"):
            op(agent, "ping", worker["channel"])
    with pytest.raises(AgentError, match="no spawned worker on channel 1"):
        op(agent, "kill_worker", protocol.ROUTER_CHANNEL, channel=1)
    assert op(agent, "exec", cmd="echo ok")["stdout"] == b"ok\n"


def test_workers_killed_while_they_write_to_the_port_leave_it_whole(agent):
    """Workers write their frames to the port themselves, under a lock shared with the router: killing them in the
    middle of a stream of output cuts no frame and leaves no lock held."""
    for _ in range(5):
        fork = op(agent, "spawn", protocol.ROUTER_CHANNEL, thread=False)
        ended = []
        streaming = threading.Thread(target=lambda: ended.append(
            pytest.raises(AgentError, op, agent, "exec", fork["channel"], cmd="while :; do echo x; done")))
        streaming.start()
        time.sleep(0.05 + random.random() * 0.1)
        op(agent, "kill_worker", protocol.ROUTER_CHANNEL, channel=fork["channel"])
        agent.abandon(fork["channel"], AgentError("killed"))
        streaming.join(T)
        assert ended and op(agent, "ping", protocol.ROUTER_CHANNEL)["id"] > 0
    assert op(agent, "exec", cmd="head -c 300000 /dev/zero")["stdout"] == bytes(300000)
    assert op(agent, "exec", cmd="echo ok")["stdout"] == b"ok\n"


def test_a_worker_that_dies_is_reported_and_the_main_worker_restarts(agent):
    with pytest.raises(AgentError, match="died"):
        op(agent, "syscall", nr=60, args=[7])  # exit(7) in the main worker
    assert op(agent, "exec", cmd="echo back")["stdout"] == b"back\n"


PROMPT = b"PV> "


class Terminal:
    """A terminal session (pty_open) of the worker on `channel`, and what it printed so far."""

    def __init__(self, client, channel=protocol.MAIN_CHANNEL, **fields):
        self.client, self.channel = client, channel
        self.output, self.exit_code = b"", None
        client.listen(channel)
        self.pid = op(client, "pty_open", channel, **{"rows": 24, "cols": 80, "prompt": PROMPT.decode(), **fields})["pid"]

    def write(self, data):
        assert op(self.client, "pty_write", self.channel, data=data)["id"] > 0

    def _next(self, deadline):
        event = self.client.next_event(self.channel, max(0.0, deadline - time.monotonic()))
        if event and event["event"] == "pty_output":
            self.output += event["data"]
        elif event and event["event"] == "pty_exit":
            self.exit_code = event["exit_code"]

    def wait_for(self, needle, start=0):
        """The output from `start` up to the end of the first `needle` after it; fails after T seconds."""
        deadline = time.monotonic() + T
        while needle not in self.output[start:]:
            assert self.exit_code is None and time.monotonic() < deadline, \
                f"no {needle!r} (exit code {self.exit_code}) in {self.output[start:]!r}"
            self._next(deadline)
        return self.output[start:self.output.index(needle, start) + len(needle)]

    def run(self, line):
        """Type `line` and Enter; its echo and output up to the next prompt."""
        start = len(self.output)
        self.write(line + b"\n")
        return self.wait_for(PROMPT, start)

    def wait_exit(self):
        deadline = time.monotonic() + T
        while self.exit_code is None:
            assert time.monotonic() < deadline, f"the shell did not exit; output {self.output!r}"
            self._next(deadline)
        return self.exit_code


def test_pty_session_runs_commands_at_its_prompt(agent):
    term = Terminal(agent, term="xterm")
    term.wait_for(PROMPT)
    assert b"\r\n42\r\n" in term.run(b"echo $((6*7))")
    assert f"\r\nshell={term.pid} term=xterm\r\n".encode() in term.run(b'echo "shell=$$ term=$TERM"')
    assert b"\r\npath=/usr/sbin:/usr/bin:/sbin:/bin\r\n" in term.run(b'echo "path=$PATH"')


def wait_foreground(shell, comm):
    """Wait until a child of process `shell` runs `comm` as the foreground process group of its terminal."""
    deadline = time.monotonic() + T
    while True:
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    name, fields = f.read().rsplit(")", 1)
            except (OSError, ValueError):
                continue
            _, ppid, pgrp, _, _, tpgid = fields.split()[:6]
            if name.endswith("(" + comm) and int(ppid) == shell and pgrp == tpgid:
                return
        assert time.monotonic() < deadline, f"no {comm} in the foreground of shell {shell}"
        time.sleep(0.01)


def test_pty_ctrl_c_interrupts_the_foreground_command_not_the_session(agent):
    term = Terminal(agent)
    term.wait_for(PROMPT)
    start = len(term.output)
    term.write(b"sleep 100\n")
    wait_foreground(term.pid, "sleep")  # a ^C before that could reach the shell, or sleep before its exec
    term.write(b"\x03")
    term.wait_for(PROMPT, start)  # within T, not after 100 s
    assert b"\r\nalive\r\n" in term.run(b"echo alive")
    assert term.exit_code is None


@pytest.fixture
def lines_columns(monkeypatch):
    """LINES and COLUMNS in the environment of the agent started after this fixture, as a terminal sets them."""
    monkeypatch.setenv("LINES", "24")
    monkeypatch.setenv("COLUMNS", "80")


def test_pty_resize_reaches_the_terminal(lines_columns, agent):
    term = Terminal(agent, rows=30, cols=100)
    term.wait_for(PROMPT)
    assert b"\r\n30 100\r\n" in term.run(b"stty size")
    # another terminal's size would override this one's (busybox ash even resizes the terminal to it)
    assert b"\r\nenv=,\r\n" in term.run(b'echo "env=$LINES,$COLUMNS"')
    op(agent, "pty_resize", rows=50, cols=132)
    start = len(term.output)
    term.write(b"stty size\n")
    term.wait_for(b"\r\n50 132\r\n" + PROMPT, start)  # busybox ash redraws its prompt on SIGWINCH first


def test_pty_output_is_binary_safe(agent):
    term = Terminal(agent)
    term.wait_for(PROMPT)
    assert term.run(b"printf '\\377\\000\\001'").endswith(b"\r\n\xff\x00\x01" + PROMPT)


def test_pty_exit_reports_the_code_after_the_last_output_then_frees_the_session(agent):
    term = Terminal(agent)
    term.wait_for(PROMPT)
    term.write(b"echo bye; exit 3\n")
    assert term.wait_exit() == 3
    assert b"\r\nbye\r\n" in term.output
    with pytest.raises(AgentError, match="no terminal session") as info:
        op(agent, "pty_write", data=b"echo late\n")
    assert info.value.errno == errno.ENOENT
    again = Terminal(agent)
    again.wait_for(PROMPT)
    again.write(b"kill -9 $$\n")
    assert again.wait_exit() == 128 + 9


def test_pty_one_session_per_worker(agent):
    term = Terminal(agent)
    with pytest.raises(AgentError, match="already runs") as info:
        op(agent, "pty_open", rows=24, cols=80)
    assert info.value.errno == errno.EBUSY
    term.wait_for(PROMPT)
    assert b"\r\nstill\r\n" in term.run(b"echo still")


def test_pty_ops_without_a_session_fail(agent):
    with pytest.raises(AgentError, match="no terminal session in this worker") as info:
        op(agent, "pty_write", data=b"x")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(AgentError, match="no terminal session in this worker"):
        op(agent, "pty_resize", rows=1, cols=1)
    with pytest.raises(AgentError, match="'rows'"):
        op(agent, "pty_open", cols=80)
    with pytest.raises(AgentError, match="'data' must be bytes"):
        op(agent, "pty_write", data="text")


def test_pty_long_write_reads_the_output_meanwhile(agent):
    term = Terminal(agent)
    term.wait_for(PROMPT)
    start = len(term.output)
    term.write(b"cat\n")
    lines = b"".join(b"%06d%s\n" % (i, b"x" * 93) for i in range(3000))  # 300 KB: far more than a tty buffers
    term.write(lines)  # cat's output fills the terminal unless the write reads it
    term.write(b"\x04")
    out = term.wait_for(PROMPT, start)
    # all of cat's copy came (the kernel may drop echoes it has no room for, and mix them into cat's lines)
    assert len(out) > len(lines) and b"002999" + b"x" * 93 + b"\r\n" in out


def test_pty_session_runs_in_a_spawned_worker(agent):
    main_pid = op(agent, "syscall", nr=39, args=[])["ret"]
    main = Terminal(agent)
    main.wait_for(PROMPT)
    start = len(main.output)
    main.write(b"sleep 0.3; echo late\n")
    fork = op(agent, "spawn", protocol.ROUTER_CHANNEL, thread=False)  # served by the main worker on channel 0
    main.wait_for(b"\r\nlate\r\n" + PROMPT, start)  # still on channel 1
    term = Terminal(agent, fork["channel"])
    term.wait_for(PROMPT)
    assert fork["pid"] != main_pid
    assert f"\r\nparent={fork['pid']}\r\n".encode() in term.run(b'echo "parent=$PPID"')
    assert f"\r\nparent={main_pid}\r\n".encode() in main.run(b'echo "parent=$PPID"')


def test_pty_shell_is_killed_and_reaped_with_its_worker(agent):
    thread = op(agent, "spawn", protocol.ROUTER_CHANNEL, thread=True)
    term = Terminal(agent, thread["channel"])
    term.wait_for(PROMPT)
    op(agent, "kill_worker", protocol.ROUTER_CHANNEL, channel=thread["channel"])
    deadline = time.monotonic() + T
    while os.path.exists(f"/proc/{term.pid}"):  # a zombie nobody reaps stays listed
        assert time.monotonic() < deadline, f"shell {term.pid} still there"
        time.sleep(0.01)
