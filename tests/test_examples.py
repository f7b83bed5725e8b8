"""The examples users copy: the first file, the kernel-module suite and the security suite."""

import re
import shutil

from conftest import REPO

EXAMPLES = REPO / "examples"


def count_tests(root):
    files = [p for p in root.rglob("*.lua") if not {"fixtures", "lib"} & set(p.relative_to(root).parts[:-1])]
    return sum(len(re.findall(r"^test\(", p.read_text(), re.M)) for p in files)


def test_every_example_passes_from_the_repository_root(suite):
    """`provium run examples/` runs three suites, each with its own provium.toml (or none)."""
    result = suite.run("run", "examples/", cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{count_tests(EXAMPLES)} passed, 0 failed, 0 skipped"
    assert "building profile 'kmod': make -s -C module" in result.stdout
    assert suite.qemu_pids() == []


def test_a_module_that_does_not_compile_stops_the_run_with_the_compiler_output(suite):
    copy = suite.root / "kmod"
    shutil.copytree(EXAMPLES / "kmod", copy, ignore=shutil.ignore_patterns("*.ko", "*.o", "*.mod*", ".*.cmd"))
    source = copy / "module" / "provium_kv.c"
    source.write_text(source.read_text().replace("static DEFINE_MUTEX(pkv_lock);", "static DEFINE_MUTEX(pkv_lock)"))
    result = suite.run("run", "tests/", cwd=copy, timeout=300)
    assert result.returncode == 2
    assert "profile 'kmod': build failed (exit 2): make -s -C module" in result.stderr
    assert re.search(r"provium_kv\.c:\d+:\d+: error", result.stderr), result.stderr
    assert "passed" not in result.stdout, "no test ran"
    assert suite.qemu_pids() == []
