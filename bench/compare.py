"""Same benchmark, two commits, side by side in one run.

Run: python bench/compare.py COMMIT [--rounds N] [--bench PATH] [-- BENCH ARGS...]
e.g. python bench/compare.py HEAD~3 --rounds 3 -- --iterations 50.
The old side is a `git archive` of COMMIT, the new side this working tree as it
is (uncommitted changes included); each runs its own copy of the benchmark
(default bench/ops.py) with its own provium on PYTHONPATH, alternating old,
new, old, new ... so machine drift hits both alike. The benchmark must print
bench/ops.py's table (`name  median ms  p90 ms  target  ratio`) and may print
its "host CPU per op" line; the result is one table of the medians over the
rounds, old against new.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
from argparse import ArgumentParser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"\d+(?:\.\d+)?"
# anchored at the end, so a name may hold anything (spaces, quotes, parentheses)
ROW = re.compile(rf"^(?P<name>.+?)\s+(?P<median>{NUMBER}) ms\s+{NUMBER} ms\s+(?:{NUMBER} ms|-)\s+(?:{NUMBER}x|-)\s*$")
CPU_LINE = "host CPU per op"
CPU_ITEM = re.compile(rf"(?:^|, )(?P<name>.+?) (?P<us>{NUMBER}) us(?=, |$)")


def run(tree, bench, bench_args):
    """One run of `bench` in `tree`: ({op: median ms}, {op: host CPU us})."""
    result = subprocess.run([sys.executable, str(tree / bench), *bench_args], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{bench} in {tree} failed (exit {result.returncode}); stderr tail:\n{result.stderr[-3000:]}")
    medians, cpu = {}, {}
    for line in result.stdout.splitlines():
        if line.startswith(CPU_LINE):
            cpu.update((m["name"], float(m["us"])) for m in CPU_ITEM.finditer(line.split(": ", 1)[1].rstrip()))
        elif row := ROW.match(line):
            medians[row["name"]] = float(row["median"])
    if not medians:
        sys.exit(f"{bench} in {tree} printed no table rows; stdout tail:\n{result.stdout[-3000:]}")
    return medians, cpu


def table(title, unit, old_runs, new_runs):
    """Rows of the median over the rounds per name, old against new."""
    names = list(dict.fromkeys(name for runs in (old_runs, new_runs) for one in runs for name in one))
    width = max(len(title), *map(len, names))

    def median(runs, name):
        values = [one[name] for one in runs if name in one]
        return statistics.median(values) if values else None

    print(f"{title:<{width}} {'old':>12} {'new':>12} {'new/old':>8}")
    for name in names:
        old, new = median(old_runs, name), median(new_runs, name)
        cells = ["-" if v is None else f"{v:.{3 if unit == 'ms' else 0}f} {unit}" for v in (old, new)]
        ratio = f"{new / old:.2f}x" if old and new is not None else "-"
        print(f"{name:<{width}} {cells[0]:>12} {cells[1]:>12} {ratio:>8}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the old side (any git revision)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bench", default="bench/ops.py", help="the benchmark, relative to each tree")
    args, bench_args = parser.parse_args(argv[:split]), argv[split + 1:]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.commit],
                            capture_output=True, text=True, check=True).stdout.strip()
    old_runs, new_runs = [], []
    with tempfile.TemporaryDirectory(prefix="provium-compare-") as scratch:
        old_tree = Path(scratch)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
            old_runs.append(run(old_tree, args.bench, bench_args))
            new_runs.append(run(REPO, args.bench, bench_args))
    print(f"{args.bench}: old = {commit}, new = working tree; {args.rounds} rounds, alternating; "
          f"args: {' '.join(bench_args) or '(none)'}")
    table("op (median ms)", "ms", [m for m, _ in old_runs], [m for m, _ in new_runs])
    if any(cpu for _, cpu in old_runs + new_runs):
        print()
        table("host CPU per op", "us", [c for _, c in old_runs], [c for _, c in new_runs])


if __name__ == "__main__":
    main()
