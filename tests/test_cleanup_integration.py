"""No QEMU process or temporary directory outlives provium: normal end, Ctrl-C, SIGTERM, SIGKILL."""

import signal
import time

import pytest

HANGS = """\
test("sleeps in the guest", function()
  local vm = provium.create("minimal")
  vm:boot{memory = "256M"}
  vm:exec("sleep 600")
end)
"""


def wait_for(predicate, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.mark.parametrize("signum, status", [
    (signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -signal.SIGKILL),
])
def test_no_qemu_survives_provium(suite, signum, status):
    suite.write("hang.lua", HANGS)
    proc = suite.popen("run", "hang.lua")
    try:
        assert wait_for(lambda: suite.qemu_pids(), 60), "QEMU never started"
        time.sleep(3)  # let it boot and block in the exec
        proc.send_signal(signum)
        proc.wait(30)
        assert proc.returncode == status, proc.stdout.read()
        assert wait_for(lambda: not suite.qemu_pids(), 5), f"QEMU left running: {suite.qemu_pids()}"
    finally:
        proc.kill()
        proc.wait()
    left = sorted(p.name for p in suite.tmp.iterdir())
    if signum == signal.SIGKILL:  # nothing could clean up: the sockets and the run's scratch are there...
        assert any(name.startswith(f"provium-run-{proc.pid}-") for name in left), left
        assert any(name.startswith(f"provium-{proc.pid}-") for name in left), left
        suite.write("quick.lua", 'test("x", function() end)\n')
        assert suite.run("run", "quick.lua").returncode == 0
        left = sorted(p.name for p in suite.tmp.iterdir())  # ...until the next provium makes a directory
    assert left == [], left
