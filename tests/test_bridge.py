"""The bridge's guard: what reaches a test when an op fails inside provium itself (a bug).

Nothing boots: the file's one VM handle leads to a guest whose every request fails as a bug would.
"""

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
