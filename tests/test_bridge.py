"""The bridge's guard: what reaches a test when an op fails inside provium itself (a bug).

Nothing boots: the file's one VM handle leads to a guest whose every request fails as a bug would.
"""

import subprocess
import sys

from provium import config
from provium.cache import Cache
from provium.guest import GuestOps
from provium.lua_runtime import LuaFile
from provium.results import Outcome


class BrokenGuest(GuestOps):
    def _request(self, op, timeout=None, /, **fields):
        return {}[op]  # a KeyError, as a bug in provium would raise


def test_an_internal_error_fails_the_test_at_its_line_with_the_python_traceback(tmp_path, monkeypatch):
    path = tmp_path / "t.lua"
    path.write_text('local vm = provium.create("minimal")\n'
                    'test("exec", function()\n'
                    '  vm:exec("true")\n'
                    'end)\n')
    monkeypatch.setattr(LuaFile, "_create", lambda self, profile: 1)
    monkeypatch.setattr(LuaFile, "_target", lambda self, handle: BrokenGuest())
    results = []
    LuaFile(path, "t.lua", config.load(tmp_path), Cache(tmp_path / "cache"), results.append).run()
    result, = results
    assert result.outcome == Outcome.ERROR
    assert result.message == "internal error (KeyError): 'exec'"
    assert result.where.endswith("t.lua:3")
    assert "Python traceback (a bug in provium):" in result.traceback
    assert "in _request" in result.traceback and "KeyError: 'exec'" in result.traceback


KEPT_ERRORS = '''
import sys
from pathlib import Path
from provium import config
from provium.cache import Cache
from provium.errors import ProviumError
from provium.guest import GuestOps
from provium.lua_runtime import LuaFile

kept = []


class KeepingGuest(GuestOps):
    """Fails every op with an error it keeps, as a VM keeps the kernel finding it raised: the error's traceback
    holds the bridge's frames, and they hold the Lua tables the op was called with."""

    def _request(self, op, timeout=None, /, **fields):
        error = ProviumError("kept")
        kept.append(error)
        raise error


root = Path(sys.argv[1])
LuaFile._create = lambda self, profile: 1
LuaFile._target = lambda self, handle: KeepingGuest()
file = LuaFile(root / "t.lua", "t.lua", config.load(root), Cache(root / "cache"), lambda result: None)
file.run()
file.runtime.execute("collectgarbage() collectgarbage()")  # the tests' coroutines are freed
kept.clear()  # and so are the tables they handed over
print("released")
'''


def test_lua_values_a_finished_test_handed_to_python_are_released_safely(tmp_path):
    """Each test body is a coroutine, and an op's Lua tables stay referenced past it in the traceback of an
    error the guest keeps. Releasing them after the coroutine was collected crashed the harness (SIGSEGV)."""
    (tmp_path / "t.lua").write_text('local vm = provium.create("minimal")\n'
                                    'for i = 1, 300 do\n'
                                    '  test("syscall " .. i, function()\n'
                                    '    vm:syscall_buf(1, 2, "x", 1, 0, 1)\n'
                                    '    coroutine.wrap(function() vm:syscall(39) end)()\n'
                                    '  end)\n'
                                    'end\n')
    result = subprocess.run([sys.executable, "-c", KEPT_ERRORS, str(tmp_path)], capture_output=True, text=True,
                            env={"MALLOC_PERTURB_": "85", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert (result.returncode, result.stdout) == (0, "released\n"), result.stderr
