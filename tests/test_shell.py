"""`provium shell` and `provium run --shell-on-failure`, driven through a real terminal as a person would."""

import time

from test_examples import clean_copy

PROMPT = rb"minimal:/# "


def test_a_shell_in_a_booted_guest_runs_interrupts_resizes_and_exits_with_the_shells_status(suite):
    term = suite.terminal("shell", rows=24, cols=80)
    try:
        term.read_until(PROMPT, timeout=300)
        term.type("echo $((6*7))\r")
        term.read_until(rb"\r\n42\r\n")
        term.type("sleep 100\r")
        time.sleep(1)
        term.type("\x03")  # reaches the guest's foreground job, not provium
        term.read_until(PROMPT, timeout=20)
        term.type("echo alive $?\r")
        term.read_until(rb"alive 130")
        term.type("sleep 30 &\r")
        term.type("jobs\r")
        term.read_until(rb"\[1\]\+ +Running +sleep 30")
        term.resize(40, 100)
        time.sleep(0.5)
        term.type("stty size\r")
        term.read_until(rb"\r\n40 100\r\n")
        term.type("printf '\\351\\000\\377x\\n'\r")  # bytes that are not UTF-8, and a NUL
        term.read_until(b"\xe9\x00\xffx")
        term.type("exit 7\r")
        assert term.wait() == 7, term.screen.decode("utf-8", "replace")
    finally:
        term.close()
    assert suite.qemu_pids() == []


def test_a_shell_in_a_fixture_starts_from_its_snapshot_and_ctrl_d_ends_it(suite):
    suite.write("fixtures/marked.lua", """\
        local vm = provium.create("minimal")
        vm:boot{memory = "256M"}
        vm:write_file("/root/marker", "made by the fixture\\n")
        return vm
    """)
    term = suite.terminal("shell", "--fixture", "marked")
    try:
        term.read_until(rb"marked:/# ", timeout=300)  # the VM is named after its fixture
        term.type("cat /root/marker\r")
        term.read_until(rb"\r\nmade by the fixture\r\n")
        term.read_until(rb"marked:/# ")
        term.type("\x04")
        assert term.wait() == 0, term.screen.decode("utf-8", "replace")
    finally:
        term.close()
    assert suite.qemu_pids() == []


def test_closing_the_terminal_ends_the_shell_and_its_vm(suite):
    term = suite.terminal("shell")
    try:
        term.read_until(PROMPT, timeout=300)
        term.type("sleep 600\r")
    finally:
        term.close()
    assert term.proc.returncode is not None
    deadline = time.monotonic() + 10
    while suite.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert suite.qemu_pids() == []


LANDLOCKED = """\
local sys = require("lib.sys")
local landlock = require("lib.landlock")
local A = landlock.ACCESS
local vm = provium.create("security")
vm:boot()
vm:exec("mkdir -p /srv/secret && echo hidden > /srv/secret/data && echo readable > /tmp/open.txt")

test("passes", function() assert_eq(1, 1) end)

test("restricted", function()
  local w = vm:spawn()
  landlock.restrict(w, A.READ_FILE, {["/tmp"] = A.READ_FILE, ["/dev"] = A.READ_FILE, ["/bin"] = A.READ_FILE})
  assert_eq("readable\\n", w:exec("cat /tmp/open.txt").stdout.value)
  assert_eq(0, sys.openat(w, "/srv/secret/data", sys.O_RDONLY))
end)

test("never runs", function() error("the run should have ended with the shell") end)
"""


def test_shell_on_failure_opens_in_the_failing_workers_landlock_domain_and_ends_the_run(suite):
    copy = clean_copy(suite, "security")
    (copy / "tests" / "shell.lua").write_text(LANDLOCKED)
    term = suite.terminal("run", "--shell-on-failure", "tests/shell.lua", cwd=copy)
    try:
        term.read_until(rb"FAIL +restricted", timeout=300)
        term.read_until(rb"a shell in worker \d+ of VM 'security', as test 'restricted' left it")
        term.read_until(rb"security/\d+:/# ")
        term.type("cat /srv/secret/data; cat /tmp/open.txt\r")
        term.read_until(rb"Permission denied\r\nreadable\r\n")
        term.type("exit\r")
        assert term.wait() == 1
    finally:
        term.close()
    screen = term.screen.decode("utf-8", "replace")
    assert "1 passed, 1 failed, 0 skipped" in screen, screen
    assert "never runs" not in screen, screen
    assert suite.qemu_pids() == []


def test_shell_on_failure_without_a_terminal_is_a_one_line_error(suite):
    suite.write("t.lua", 'test("x", function() end)\n')
    result = suite.run("run", "--shell-on-failure", "t.lua")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "provium: --shell-on-failure needs a terminal: standard input and output are not one\n"
