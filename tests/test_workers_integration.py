"""A worker blocked in the guest never blocks the VM or the other workers (Python core)."""

import struct

import pytest

from provium import config
from provium.cache import Cache
from provium.errors import DeadlineError
from provium.vm import Vm

SYS_READ, SYS_WRITE, SYS_PIPE2 = 0, 1, 293


@pytest.fixture
def vm():
    machine = Vm(config.load().profile("minimal"), Cache())
    machine.boot(memory="256M")
    yield machine
    machine.shutdown()


@pytest.mark.parametrize("thread", [False, True], ids=["fork", "thread"])
def test_a_blocked_worker_blocks_nobody_else(vm, thread):
    ret, (fds,), _ = vm.syscall(SYS_PIPE2, [0, 0], {0: bytes(8)})
    assert ret == 0
    read_fd, write_fd = struct.unpack("<ii", fds)
    reader, other = vm.spawn(thread=thread), vm.spawn()
    with pytest.raises(DeadlineError, match="op 'syscall' did not answer"):
        reader._request("syscall", 0.5, nr=SYS_READ, args=[read_fd, 0, 3], bufs=[[1, bytes(3)]], ptrs=[])
    # the reader is still stuck in read(): everyone else answers
    assert vm.exec("echo vm").stdout == b"vm\n"
    assert other.exec("echo other").stdout == b"other\n"
    assert vm.syscall(SYS_WRITE, [write_fd, 0, 3], {1: b"abc"})[0] == 3
    # unblocked: its late reply is skipped, and it serves the next request
    assert reader.exec("echo reader").stdout == b"reader\n"
