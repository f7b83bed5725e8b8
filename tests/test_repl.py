"""provium repl, driven through a pseudo-terminal as a person types at it."""

import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from provium.cache import default_root
from provium.interactive import parse_disk
from provium.repl import PROMPT

BOOT = 300  # seconds for the banner: a kernel fetched, a fixture built, a boot under TCG


def start(suite, *args):
    """`provium repl ARGS` on a terminal of its own, its history under the suite; the banner's release."""
    terminal = suite.terminal("repl", *args, env={"XDG_STATE_HOME": str(suite.root / "state"), "TERM": "dumb"},
                              cols=200)
    banner = terminal.read_until(rb"kernel (\S+)\), (?:booted|resumed from fixture \S+)\. Ctrl-D leaves[^\n]*\n"
                                 + PROMPT.encode(), BOOT)
    return terminal, banner.group(1).decode()


def enter(terminal, line, timeout=60):
    """Type a line: what it printed (without the line itself) and the prompt that came next."""
    terminal.type(line + "\n")
    match = terminal.read_until(rb"(?s)\r?\n(.*?)((?:lua|\.\.\.)> )", timeout)
    return match.group(1).decode().replace("\r\n", "\n").strip("\n"), match.group(2).decode()


def interrupt(terminal, line, started):
    """Type a line, press Ctrl-C once `started` (a pattern) is on the screen: what it printed after."""
    terminal.type(line + "\n")
    terminal.read_until(started)
    time.sleep(0.5)
    terminal.type(b"\x03")
    match = terminal.read_until(rb"(?s)(.*?)lua> ", 30)
    return match.group(1).decode().replace("\r\n", "\n")


def test_a_session_at_the_prompt(suite):
    suite.write("provium.toml", "")
    terminal, release = start(suite)
    try:
        assert enter(terminal, 'vm:exec("uname -r").stdout') == (f'"{release}\\\n"', PROMPT)
        assert enter(terminal, "1+1") == ("2", PROMPT)
        assert enter(terminal, "=2^10") == ("1024.0", PROMPT)
        assert enter(terminal, '{a = 1, b = {2, 3}}') == ('{["a"] = 1, ["b"] = {[1] = 2, [2] = 3}}', PROMPT)
        assert enter(terminal, "vm") == ("VM<minimal>", PROMPT)
        assert enter(terminal, 'error("boom")') == ("stdin:1: boom", PROMPT)
        assert enter(terminal, "2*3") == ("6", PROMPT)
        assert enter(terminal, "assert_eq(1, 2)") == ("stdin:1: assert_eq failed\n  expected: 1\n  actual:   2",
                                                      PROMPT)
        # a chunk that ends early continues on the next line
        assert enter(terminal, "for i = 1, 3 do") == ("", "...> ")
        assert enter(terminal, "  print(i * 10)") == ("", "...> ")
        assert enter(terminal, "end") == ("10\n20\n30", PROMPT)
        assert enter(terminal, "n = 41") == ("", PROMPT)
        assert enter(terminal, "n + 1") == ("42", PROMPT)
        # test() runs the test at once and shows its outcome
        output, _ = enter(terminal, 'test("fails", function() assert_eq(1, vm:exec("echo 2").exit_code) end)')
        assert re.fullmatch(r"  FAIL  fails \(\d+\.\d\d s\)\n *stdin:1: assert_eq failed\n *expected: 1\n *actual: +0",
                            output), output
        output, _ = enter(terminal, 'test("passes", function() assert(vm:exec("true").ok) end)')
        assert re.fullmatch(r"  ok    passes \(\d+\.\d\d s\)", output), output
        # Ctrl-C at the prompt drops the line typed so far
        # (CPython's input() hears a Ctrl-C only while it waits for a key: one pressed while it still handles
        # the keys before it goes unheard until the next key. So the keys first, then Ctrl-C, as a person would.)
        terminal.type("this is not Lua")
        terminal.read_until(rb"this is not Lua")
        time.sleep(0.2)
        terminal.type(b"\x03")
        terminal.read_until(PROMPT.encode(), 10)
        assert enter(terminal, "3*3") == ("9", PROMPT)
        # Ctrl-C stops Lua code, and an op waited for (its worker is killed): the VM stays usable
        assert interrupt(terminal, "while true do end", rb"while true do end\r\n").replace("^C", "").strip() == \
            "interrupted"
        enter(terminal, "w = vm:spawn()")
        started = time.monotonic()
        stopped = interrupt(terminal, 'w:exec("sleep 600")', rb"sleep 600\"\)\r\n")
        assert time.monotonic() - started < 20
        assert re.search(r"interrupted\nworker \d+ of VM 'minimal' was still running an interrupted op: it was killed",
                         stopped), stopped
        assert enter(terminal, 'vm:exec("echo alive").stdout') == ('"alive\\\n"', PROMPT)
        terminal.type(b"\x04")  # Ctrl-D leaves
        assert terminal.wait(60) == 0
    finally:
        terminal.close()
    assert suite.qemu_pids() == []
    assert not list(suite.tmp.glob("provium-*")), "temporary directories are left"
    assert "1+1" in (suite.root / "state" / "provium" / "repl_history").read_text().splitlines()


@pytest.fixture
def fixture_name():
    """A fixture name of this test's own; its cache entries (~100 MB) are removed afterwards."""
    name = f"repl-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(default_root() / "fixtures" / name, ignore_errors=True)


def test_a_fixture_resumed_at_the_prompt_ends_when_the_terminal_closes(suite, fixture_name):
    suite.write("provium.toml", "")
    suite.write(f"fixtures/{fixture_name}.lua", """\
        local vm = provium.create("minimal")
        vm:boot{memory = "256M"}
        vm:exec("mkdir -p /srv && echo ready > /srv/state")
        return vm
        """)
    terminal, _ = start(suite, "--fixture", fixture_name)
    try:
        assert enter(terminal, 'vm:read_file("/srv/state")') == ('"ready\\\n"', PROMPT)
        assert enter(terminal, 'provium.path("@root")') == (f'"{suite.root.resolve()}"', PROMPT)
    finally:
        terminal.close()  # a hangup
    assert terminal.proc.returncode == 128 + signal.SIGHUP
    assert suite.qemu_pids() == []
    assert not list(suite.tmp.glob("provium-*")), "temporary directories are left"


def test_sigterm_while_lua_runs_stops_the_guest(suite):
    terminal, _ = start(suite)
    try:
        terminal.type("provium.sleep(600)\n")
        terminal.read_until(rb"sleep\(600\)\r\n")
        time.sleep(0.5)
        terminal.proc.send_signal(signal.SIGTERM)
        assert terminal.wait(60) == 128 + signal.SIGTERM
    finally:
        terminal.close()
    assert suite.qemu_pids() == []


@pytest.mark.parametrize("args, error", [
    (["nope"], "provium: unknown profile 'nope' (known: minimal)"),
    (["--fixture", "absent"], "provium: fixture 'absent' not found: no file {root}/fixtures/absent.lua"),
    (["--fixture", "absent", "--memory", "1G"],
     "provium: --fixture absent resumes a guest that is already booted: --memory do not apply"),
    (["--memory", "12"], "provium: --memory '12' must be a whole number of MiB, at least 64M"),
    (["--disk", "missing.img"], "provium: --disk missing.img: file not found: {root}/missing.img"),
    (["--disk", "disk.img:vmdk"], "provium: --disk 'disk.img:vmdk': format 'vmdk' is not one of raw, qcow2"),
    (["--file", "/x"], "provium: --file '/x': expected GUEST=HOST, such as /root/x.ko=build/x.ko"),
])
def test_a_bad_argument_is_one_line_and_boots_nothing(suite, args, error):
    result = subprocess.run(suite.command("repl", *args), cwd=suite.root, env=suite.env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.splitlines()) == (2, [error.format(root=suite.root.resolve())])
    assert result.stdout == ""


def test_disk_arguments():
    assert parse_disk("a.img") == ("a.img", "raw", False)
    assert parse_disk("a.qcow2:qcow2:ro") == ("a.qcow2", "qcow2", True)
    assert parse_disk("dir:1/a.img:ro") == ("dir:1/a.img", "raw", True)
