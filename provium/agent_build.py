"""Building the guest agent from its C source, on demand and cached.

The agent is compiled statically with the host's C compiler (glibc static
works; nothing else is needed on a fresh machine) and cached under a key of
its sources and the compiler version, so an edited source rebuilds it.
"""

import functools
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from . import cache as cache_mod
from .errors import ImageError

_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]


def source_dir():
    """The agent's sources: agent/ in a checkout, provium/agent_src in a wheel."""
    checkout = Path(__file__).resolve().parent.parent / "agent"
    if (checkout / "main.c").is_file():
        return checkout
    return Path(str(resources.files("provium") / "agent_src"))


def _compiler():
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise ImageError("no C compiler found to build the guest agent (install gcc)")


def build(cache):
    """Path of the static agent binary, compiling it if the cache has none."""
    return _build(cache.root)


@functools.lru_cache(maxsize=None)
def _build(cache_root):
    """Looked up once per process and cache, as a run asks for the agent at every boot and fixture lookup.
    The compiler's version and the sources' hashes are remembered across runs (Cache.remember)."""
    cache = cache_mod.Cache(cache_root)
    directory = source_dir()
    sources = sorted(p for p in directory.iterdir() if p.suffix in (".c", ".h"))
    if not sources:
        raise ImageError(f"no agent sources in {directory}")
    cc = _compiler()
    version = cache.remember("version", [Path(cc)],
                             lambda: subprocess.run([cc, "--version"], capture_output=True, text=True).stdout)
    key = cache.digest(version, *_CFLAGS, *(p.name for p in sources), *sources)

    def compile_to(out):
        result = subprocess.run(
            [cc, *_CFLAGS, "-o", str(out), *(str(p) for p in sources if p.suffix == ".c")],
            capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-20:])
            raise ImageError(f"building the agent failed ({cc}):\n{tail}")

    return cache.get_or_build("agent", key, "provium-agent", compile_to)
