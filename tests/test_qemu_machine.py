"""A QemuMachine's life with a real QEMU: a launch that fails leaves nothing behind and says why; a
shutdown kills what did not exit and keeps its console."""

import pytest

from provium import images, qemu
from provium.cache import Cache
from provium.config import load
from provium.errors import QemuError
from provium.vm import accelerator


@pytest.fixture(scope="module")
def boot_images():
    return images.prepare(load().profile("minimal"), Cache())


def machine(boot_images, extra_args):
    return qemu.QemuMachine(vmlinux=boot_images.vmlinux, initrd=boot_images.initrd, cmdline="console=ttyS0",
                            memory_mib=128, cpus=1, accel=accelerator()[0], extra_args=extra_args)


def test_a_failed_launch_leaves_nothing_and_carries_the_command_and_exit_code(boot_images):
    m = machine(boot_images, ["-no-such-option"])
    with pytest.raises(QemuError, match="QEMU exited at start: .*-no-such-option: invalid option") as caught:
        m.launch(30.0)
    error = caught.value
    assert error.command[0] == qemu.find_qemu() and "-no-such-option" in error.command
    assert error.exit_code == 1
    assert "invalid option" in error.stderr
    assert m.returncode == 1
    assert not m.workdir.exists()
    assert m not in qemu._live


def test_a_machine_that_does_not_exit_is_killed_at_shutdown(boot_images):
    m = machine(boot_images, ["-S"])  # paused before the first instruction: it never exits on its own
    agent = m.launch(30.0)
    try:
        assert m in qemu._live and m.returncode is None
        m.shutdown(0.2)
        assert m.returncode == -9
        assert not m.workdir.exists()
        assert m not in qemu._live
        assert m.console_text() == ""
        m.shutdown(0.2)  # again: nothing left to do
    finally:
        agent.close()
        m.kill()
