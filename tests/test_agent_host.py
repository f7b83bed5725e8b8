"""The agent's ops and its resilience, run on the host (--stdio): no VM needed."""

import os
import random
import socket
import subprocess

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


def op(client, name, channel=protocol.MAIN_CHANNEL, **fields):
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
        op(agent, "ping", channel=9)
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
