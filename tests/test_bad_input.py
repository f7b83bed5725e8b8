"""Bad input gets a one-line error and loses nothing: provium.toml, the command line, the guest."""

import os
import socket
import struct
import threading

import msgpack
import pytest

from provium import protocol, qemu
from provium.agent_client import AgentClient, ConnectionLost
from provium.config import load, newest_host_kernel
from provium.errors import AgentError, ProtocolError
from provium.vm import Vm

# ---------------------------------------------------------------- provium.toml and the command line


@pytest.mark.parametrize("toml, message", [
    ("[profiles.x\n", "provium.toml: syntax error: Expected ']' at the end of a table declaration (at line 1, column 12)"),
    ("[profiles.x]\nkernal = \"k\"\n", "provium.toml: profile 'x': key 'kernal': unknown key (allowed: allow_warnings, available_modules, build, cmdline, cpus, debug_symbols, initrd, kconfig, kernel, kernel_source, leak_check, memory, modules, modules_dir, qemu_args)"),
    ("[profiles.x]\ncpus = \"two\"\n", "provium.toml: profile 'x': key 'cpus': must be an integer, not a string"),
    ("[profiles.x]\nmemory = 512\n", "provium.toml: profile 'x': key 'memory': must be a string, not an integer"),
    ("[profiles.x]\nkernel = \"missing/bzImage\"\n", "provium.toml: profile 'x': key 'kernel': file not found: {root}/missing/bzImage"),
    ("[profiles.x]\ninitrd = \"missing.cpio\"\n", "provium.toml: profile 'x': key 'initrd': file not found: {root}/missing.cpio"),
    ("[profile.x]\n", "provium.toml: unknown top-level key 'profile' (allowed: cache, fixtures, matrix, profiles, run)"),
    ("[run]\ntest_timeout = -5\n", "provium.toml: [run]: key 'test_timeout': must be a positive number of seconds, not -5"),
])
def test_configuration_errors_are_one_line_and_exit_2(suite, toml, message):
    suite.write("provium.toml", toml)
    suite.write("t.lua", 'test("x", function() end)\n')
    result = suite.run("run", "t.lua")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"provium: {suite.root}/{message.format(root=suite.root)}\n"


@pytest.mark.parametrize("key", ["modules", "available_modules"])
def test_an_unknown_kernel_module_is_a_configuration_error_before_anything_runs(suite, key):
    suite.write("provium.toml", f'[profiles.ok]\n{key} = ["dummy"]\n[profiles.x]\n{key} = ["dummy", "no_such_mod"]\n')
    suite.write("t.lua", 'test("x", function() error("must not run") end)\n')
    result = suite.run("run", "t.lua")
    assert result.returncode == 2
    assert result.stdout == ""
    modules = newest_host_kernel()[1]
    assert result.stderr == (f"provium: {suite.root}/provium.toml: profile 'x': key '{key}': "
                             f"kernel module 'no_such_mod' not found in {modules}\n")


def test_an_unknown_profile_lists_the_known_ones(suite):
    suite.write("provium.toml", '[profiles.big]\nmemory = "1G"\n')
    suite.write("t.lua", 'test("x", function() provium.create("bigg") end)\n')
    result = suite.run("run", "t.lua")
    assert result.returncode == 1
    assert "t.lua:1: unknown profile 'bigg' (known: big, minimal)" in result.stdout


def test_a_missing_qemu_is_named_with_the_install_hint(suite, tmp_path):
    suite.write("t.lua", 'test("x", function() end)\n')
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = suite.run("run", "t.lua", env={"PATH": str(empty)})
    assert result.returncode == 2
    assert result.stderr == ("provium: qemu-system-x86_64 not found "
                             "(install it: apt-get install qemu-system-x86)\n")


def test_nothing_half_written_in_the_cache_after_a_failed_build(tmp_path):
    """A kernel that is not a kernel: the error names it and no cache entry is left."""
    from provium import images
    from provium.cache import Cache
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"MZ" + os.urandom(4096))
    (tmp_path / "provium.toml").write_text(f'[profiles.bad]\nkernel = "{bogus}"\nmodules_dir = "{tmp_path}"\n')
    cache = Cache(tmp_path / "cache")
    with pytest.raises(Exception, match="no compressed ELF kernel"):
        images.prepare(load(tmp_path).profile("bad"), cache)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


# ---------------------------------------------------------------- a guest that sends garbage


@pytest.fixture
def pair():
    host, guest = socket.socketpair()
    yield AgentClient(host), guest
    host.close()
    guest.close()


def reply(guest, channel, message):
    guest.sendall(protocol.encode(channel, message))


@pytest.mark.parametrize("garbage, message", [
    (b"PV\x01\x00" + struct.pack("<I", 0xFFFFFFFF), "the agent sent a malformed frame: frame length 4294967295 outside 1..2097152"),
    (b"XY" + bytes(6), "the agent sent a malformed frame: bad frame magic b'XY' (expected b'PV')"),
    (b"PV\x01\x00\x01\x00\x00\x00\xc1", "the agent sent a malformed frame: undecodable frame payload: unpack(b) received extra data."),
    (b"PV\x01\x00\x03\x00\x00\x00" + msgpack.packb([1, 2]), "the agent sent a malformed frame: frame payload is a list, not a map"),
])
def test_malformed_frames_break_only_that_connection(pair, garbage, message):
    client, guest = pair
    guest.sendall(garbage)
    with pytest.raises(ProtocolError) as first:
        client.request(1, "ping", 5)
    assert str(first.value) == message or str(first.value).startswith(message.split(": unpack")[0])
    with pytest.raises(ProtocolError, match="malformed frame"):
        client.request(1, "ping", 5)  # refused at once: the stream cannot be trusted again


def test_wrong_ids_are_skipped_and_the_right_reply_returns(pair):
    client, guest = pair

    def agent():
        guest.recv(4096)
        reply(guest, 1, {"id": 999, "stale": True})
        reply(guest, 2, {"id": 1, "other channel": True})
        reply(guest, 1, {"id": 1, "ok": True})

    threading.Thread(target=agent).start()
    assert client.request(1, "ping", 5)["ok"] is True


def test_a_reply_larger_than_the_cap_is_refused(pair, monkeypatch):
    monkeypatch.setattr(protocol, "MAX_REPLY_BYTES", 3 * 1024 * 1024)
    client, guest = pair

    def agent():
        guest.recv(4096)
        for _ in range(4):
            reply(guest, 1, {"id": 1, "more": True, "stdout": bytes(1024 * 1024)})

    threading.Thread(target=agent).start()
    with pytest.raises(ProtocolError, match="op 'exec': reply exceeds 3145728 bytes"):
        client.request(1, "exec", 5, cmd="x")


def test_a_dead_agent_connection_is_named(pair):
    client, guest = pair
    guest.close()
    with pytest.raises(ConnectionLost, match="agent connection"):
        client.request(1, "ping", 5)


# ---------------------------------------------------------------- a real guest misbehaving


@pytest.fixture
def vm():
    machine = Vm(load().profile("minimal"), __import__("provium.cache").cache.Cache())
    machine.boot(memory="256M")
    yield machine
    machine.kill()


def test_a_killed_router_fails_the_op_and_the_agent_comes_back(vm):
    with pytest.raises(AgentError, match="the agent restarted"):
        # the shell's parent is the main worker, whose parent is the router
        vm.exec("kill -9 $(cut -d' ' -f4 /proc/$PPID/stat); sleep 5")
    assert vm.exec("echo back").stdout == b"back\n"


def test_a_console_flood_keeps_the_host_log_bounded(vm, monkeypatch):
    monkeypatch.setattr(qemu, "CONSOLE_LOG_MAX", 64 * 1024)
    monkeypatch.setattr(qemu, "CONSOLE_LOG_HEAD", 8 * 1024)
    line = "<1>provium flood " + "x" * 80
    vm.exec(f"i=0; while [ $i -lt 3000 ]; do echo '{line}' > /dev/kmsg; i=$((i+1)); done")
    size = vm.machine.console_path.stat().st_size
    assert size <= 64 * 1024 + 4096, f"console log grew to {size} bytes"
    assert "bytes of console output dropped]" in vm.console_text()
    assert vm.exec("true").ok, "the guest still answers"
    with pytest.raises(AgentError, match="KASAN: use-after-free in after_the_flood"):
        vm.exec("echo '<1>BUG: KASAN: use-after-free in after_the_flood' > /dev/kmsg; sleep 2")
