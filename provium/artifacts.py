"""--artifacts: what a failed test leaves for a human or a CI job to look at.

One directory per failed test: failure.json (the result, its consoles and
findings), the full console log of each VM the test made, and each kernel
finding of the test as the kernel printed it and with its frames decoded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from .results import TestResult
from .vm import Vm


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def slug(file_name: str, test_name: str) -> str:
    """The directory name of a test's artifacts."""
    return _safe(f"{file_name}--{test_name}").strip("_")


def keep(target: Path, result: TestResult, vms: dict[int, Vm], made: list[int]) -> None:
    """Write the artifacts of a failed test: `vms` are the file's VMs by handle, `made` the test's own."""
    target.mkdir(parents=True, exist_ok=True)
    consoles, found = {}, []
    for handle, vm in vms.items():
        stem = f"{handle}-{_safe(vm.name)}"
        if handle in made:
            (target / f"console-{stem}.log").write_text(vm.console_text())
            consoles[vm.name] = f"console-{stem}.log"
        for index, (finding, decoded) in enumerate(vm.reported, 1):
            (target / f"finding-{stem}-{index}.txt").write_text(finding.report + "\n")
            (target / f"finding-{stem}-{index}.decoded.txt").write_text(decoded + "\n")
            found.append({"vm": vm.name, "kind": finding.kind, "title": finding.title,
                          "report": f"finding-{stem}-{index}.txt", "decoded": f"finding-{stem}-{index}.decoded.txt"})
    record = {"file": result.file, "test": result.name, **{k: v for k, v in dataclasses.asdict(result).items()
                                                           if isinstance(v, (str, float)) and k not in ("file", "name")},
              **result.details, "consoles": consoles, "findings": found}
    (target / "failure.json").write_text(json.dumps(record, indent=1))
