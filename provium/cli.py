"""The `provium` command line: argument parsing, exit statuses, signals.

Exit status: 0 when nothing failed, 1 when a test failed or errored, 2 for
usage and configuration errors, 130 when interrupted.
"""

import argparse
import functools
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from . import __version__, config as config_mod, deadline, images, kernels, qemu, runner, tempdirs
from .cache import Cache
from .errors import ConfigError, ProviumError
from .fixtures import FixtureError, Fixtures
from .guest import Worker
from .lua_runtime import FileOptions, build_fixture
from .profile_build import Preparer
from .profile_files import ProfileOrigin
from .report import (JsonEventsReport, JUnitReport, KtapReport, ListReporter, LiveTerminalReporter, Reporters,
                     TerminalReporter)
from .vm import accelerator

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"provium: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. The options of the commands other modules define (cache, repl, report, shell)
    are added for `command` alone (for every command with None): a run does not import those modules."""
    parser = _Parser(prog="provium", description="Run Lua tests against real Linux guests under QEMU.")
    parser.add_argument("--version", action="version", version=f"provium {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run test files", description="Run Lua test files.")
    run.add_argument("paths", nargs="+", metavar="PATH", help="test files, directories or globs")
    run.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                     help="test files run at once (default: the number of cores)")
    run.add_argument("-k", metavar="PATTERN", dest="keyword",
                     help="only tests whose name, or whose file's name, contains PATTERN")
    run.add_argument("--list", action="store_true", help="list the tests found, run nothing")
    run.add_argument("--fail-fast", action="store_true", help="stop after the first failing test")
    run.add_argument("--shard", metavar="K/N", help="run shard K of N (a stable partition of the files)")
    run.add_argument("--matrix", metavar="NAME=P1,P2,...",
                     help="run every file once per profile Pi, with profile NAME standing for Pi "
                          "(default: the suite's [matrix])")
    run.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    run.add_argument("--ktap", metavar="FILE", help="write a KTAP report (- for standard output)")
    run.add_argument("--json", metavar="FILE", help="write JSON events, one per line")
    run.add_argument("--artifacts", metavar="DIR",
                     help="keep the console logs and a JSON record of every failed test in DIR")
    run.add_argument("--shell-on-failure", action="store_true",
                     help="stop at the first failing test and open a shell in the VM or worker it last used, "
                          "as it failed; leaving the shell ends the run (needs a terminal; runs one file at a time)")
    fixtures = commands.add_parser("fixtures", help="list, build or clean cached fixtures",
                                   description="Manage the fixture cache of the suite.")
    actions = fixtures.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="cached fixtures: name, key, size, last use")
    build = actions.add_parser("build", help="build fixtures now (default: every fixtures/*.lua)")
    build.add_argument("names", nargs="*", metavar="NAME")
    actions.add_parser("clean", help="delete every cached fixture")
    kernel = commands.add_parser("kernel", help="fetch, build or list the suite's kernels",
                                 description="Kernels provium fetches from the archive or builds from source.")
    kernel_actions = kernel.add_subparsers(dest="action", metavar="ACTION", required=True)
    kernel_build = kernel_actions.add_parser(
        "build", help="fetch or build now, and run the build steps (default: every profile whose "
                      "kernel provium fetches or builds)")
    kernel_build.add_argument("profiles", nargs="*", metavar="PROFILE")
    kernel_actions.add_parser("list", help="cached kernels: profiles, release, source, size")
    commands.add_parser("profiles", help="the suite's profiles: where each is defined and what it boots",
                        description="List the suite's profiles: where each is defined (built-in, provium.toml, "
                                    "profiles/NAME.yaml) and what it resolves to.")
    cache = commands.add_parser(
        "cache", help="what the cache holds (info), or trim it to a size (prune)",
        description="The cache of kernels, boot images, build outputs and fixtures: where it is and what it holds "
                    "(info), or trimmed to a size by removing least recently used entries (prune).")
    repl = commands.add_parser(
        "repl", help="a Lua prompt with a booted vm",
        description="A Lua prompt in the test sandbox, with a guest booted from PROFILE (or resumed from a "
                    "fixture) bound to vm. Ctrl-D leaves and stops the guest.")
    report = commands.add_parser("report", help="merge the reports of a sharded run",
                                 description="Work on the --json event files of provium run.")
    report_actions = report.add_subparsers(dest="action", metavar="ACTION", required=True)
    merge = report_actions.add_parser(
        "merge", help="merge the --json files of the shards of one run: print, exit and write reports as one run",
        description="Merge the --json event files of provium run --shard K/N (one per shard): print the results "
                    "as provium run does, exit with its status, and write one JUnit and one KTAP report. A missing, "
                    "repeated or incomplete shard, or shards of different N, are named and fail the merge "
                    "(status 1); a file that is not a provium JSON event file is an error (status 2).")
    shell = commands.add_parser(
        "shell", help="an interactive shell in a booted guest",
        description="Boot a guest from PROFILE (or resume a fixture) and open an interactive shell in it on this "
                    "terminal. exit or Ctrl-D ends the shell and stops the guest; provium exits with the shell's "
                    "status.")
    if command in (None, "cache"):
        from . import cache_admin
        cache_admin.add_arguments(cache)
    if command in (None, "repl"):
        from . import repl as repl_mod
        repl_mod.add_arguments(repl)
    if command in (None, "report"):
        from . import report_merge
        report_merge.add_arguments(merge)
    if command in (None, "shell"):
        from .interactive import add_guest_arguments
        add_guest_arguments(shell)
    return parser


class _Interrupts:
    """First SIGINT/SIGTERM: stop scheduling and shut the VMs down. Second: kill them and leave now."""

    def __init__(self):
        self.count = 0

    def __call__(self, signum, frame):
        self.count += 1
        if self.count > 1:
            qemu.kill_all()
            os._exit(EXIT_INTERRUPTED)
        qemu.terminate_all()  # unblocks every file thread waiting on its guest

    def install(self):
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __bool__(self):
        return self.count > 0


def _reporters(args, opened, shard, runs, suite_runs):
    """The reporters the options ask for; files they write are appended to `opened`. shard: (K, N) or None;
    runs: the RunItems of this run; suite_runs: those of the whole suite, unsharded (for --json)."""
    def open_for(path):
        stream = open(path, "w", errors="surrogateescape")  # a test may print any bytes
        opened.append(stream)
        return stream

    human = sys.stderr if args.ktap == "-" else sys.stdout
    reporters = [LiveTerminalReporter(human) if human.isatty() else TerminalReporter(human)]
    if args.junit:
        reporters.append(JUnitReport(args.junit))
    if args.ktap:
        reporters.append(KtapReport(sys.stdout if args.ktap == "-" else open_for(args.ktap)))
    if args.json:
        reporters.append(JsonEventsReport(open_for(args.json), shard="/".join(map(str, shard)) if shard else None,
                                          runs=[run.name for run in runs],
                                          suite_runs=[run.name for run in suite_runs]))
    return Reporters(reporters)


def _notice(line):
    print(f"provium: {line}", file=sys.stderr)


def cmd_run(args):
    if args.jobs < 1:
        raise ConfigError(f"-j {args.jobs}: must be at least 1")
    if args.shell_on_failure and not args.list:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise ConfigError("--shell-on-failure needs a terminal: standard input and output are not one")
        args.jobs, args.fail_fast = 1, True
    files = runner.discover(args.paths)
    default = config_mod.load()
    cache = Cache.for_suite(default)
    configs = runner.suites(files, default)
    suite_runs = runner.items(files, configs, runner.parse_matrix(args.matrix) if args.matrix else None)
    shard = runner.parse_shard(args.shard) if args.shard else None
    runs = runner.shard(suite_runs, *shard) if shard else suite_runs
    suites = {config.root: config for config in configs.values()}.values()
    for config in suites:
        for name in config.raw_profiles:
            # every error in provium.toml and profiles/ surfaces now, before anything runs (a kernel
            # at hand and its module names too: its release is in its image header)
            images.check(config.profile(name), cache)
    accel, notice = accelerator()
    opened = []
    reporter = ListReporter() if args.list else _reporters(args, opened, shard, runs, suite_runs)
    preparer = Preparer(cache, reporter.notice)

    def options_for(config):
        return FileOptions.for_run(config.run, accel, keyword=args.keyword, collect_only=args.list,
                                   artifacts=Path(args.artifacts) if args.artifacts else None, preparer=preparer,
                                   on_failure=functools.partial(_shell_on_failure, reporter)
                                   if args.shell_on_failure else None)

    if args.list:
        runner.run(runs, configs, cache, reporter, options_for)
        return EXIT_OK
    qemu.find_qemu()
    if notice:
        reporter.notice(notice)
    interrupts = _Interrupts()
    interrupts.install()
    summary = None
    try:
        summary = runner.run(runs, configs, cache, reporter, options_for, jobs=args.jobs,
                             fail_fast=args.fail_fast, interrupted=lambda: bool(interrupts))
    except KeyboardInterrupt:
        pass
    finally:
        if interrupts:
            qemu.kill_all()
            reporter.notice("interrupted")
        if summary is not None:
            reporter.summary(summary)
        for stream in opened:
            stream.close()
    if interrupts:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed else EXIT_OK


def _shell_on_failure(reporter, result, target):
    """--shell-on-failure: a shell where the failed test (already reported) left its VM or worker."""
    if target is None:
        reporter.notice(f"test {result.name!r} used no VM: there is no shell to open")
        return
    where = f"worker {target.tid} of VM {target.vm.name!r}" if isinstance(target, Worker) else f"VM {target.name!r}"
    reporter.notice(f"a shell in {where}, as test {result.name!r} left it; exit or Ctrl-D ends the run")
    sys.stdout.write("\r\033[K")  # the live status line
    sys.stdout.flush()
    name = f"{target.vm.name}/{target.tid}" if isinstance(target, Worker) else target.name
    from . import shell
    try:
        with deadline.suspended():  # the test's deadline does not hurry the person at the terminal
            shell.attach(target, prompt=f"{name}:\\w\\$ ")
    except ProviumError as exc:
        reporter.notice(f"the shell ended: {exc}")


def cmd_shell(args):
    from . import shell
    from .interactive import Guest, Terminated
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError("provium shell needs a terminal: standard input and output are not one")
    try:
        with Guest(args, interrupted=lambda: False) as guest:
            status = shell.attach(guest.vm, prompt=f"{guest.vm.name}:\\w\\$ ")
    except KeyboardInterrupt:  # while the guest was starting
        return EXIT_INTERRUPTED
    except Terminated as exc:
        return exc.status
    return EXIT_FAILED if status is None else status


def cmd_fixtures(args):
    config = config_mod.load()
    scratch = tempdirs.make("run")
    cache = Cache.for_suite(config)
    fixtures = Fixtures(config, cache, build_fixture, FileOptions.for_run(
        config.run, scratch=scratch, preparer=Preparer(cache, _notice)))
    try:
        return _fixtures_action(args, config, fixtures)
    finally:
        fixtures.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _fixtures_action(args, config, fixtures):
    if args.action == "list":
        rows = fixtures.entries()
        print(f"{'NAME':<20} {'KEY/VARIANT':<25} {'SIZE':>9}  LAST USED")
        for name, identity, _, size, last in rows:
            short = "/".join(part[:12] for part in identity.split("/"))
            print(f"{name:<20} {short:<25} {size / 1048576:>7.1f}M  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last))}")
        return EXIT_OK
    if args.action == "clean":
        fixtures.clean()
        return EXIT_OK
    qemu.find_qemu()
    names = args.names or sorted(p.stem for p in (config.root / "fixtures").glob("*.lua"))
    if not names:
        raise ConfigError(f"no fixtures: {config.root / 'fixtures'} has no *.lua files")
    for name in names:
        try:
            fixtures.source(name)  # an unknown name fails before any build runs
        except FixtureError as exc:
            raise ConfigError(str(exc)) from None
    for name in names:
        started = time.monotonic()
        entry = fixtures.entry(name)
        print(f"{name}: {entry.identity} ({time.monotonic() - started:.2f} s)")
    return EXIT_OK


def cmd_kernel(args):
    config = config_mod.load()
    cache = Cache.for_suite(config)
    named = getattr(args, "profiles", [])
    profiles = [config.profile(name) for name in named or config.profile_names()]
    if args.action == "list":
        users = {}
        for profile in profiles:
            users.setdefault(kernels.origin(profile), []).append(profile.name)
        print(f"{'PROFILES':<24} {'RELEASE':<32} {'SIZE':>8}  SOURCE")
        for record in kernels.cached(cache):
            names = ",".join(users.get(record["source"], [])) or "-"
            print(f"{names:<24} {record['release']:<32} {record['bytes'] / 1048576:>7.0f}M  {record['source']}")
        return EXIT_OK
    preparer = Preparer(cache, _notice)
    for profile in profiles:
        if named or not profile.kernel_at_hand:
            started = time.monotonic()
            prepared = preparer.prepare(profile)
            print(f"{profile.name}: {prepared.kernel.release} ({kernels.origin(profile)}, "
                  f"{time.monotonic() - started:.1f} s)")
    return EXIT_OK


def cmd_profiles(args):
    config = config_mod.load()
    cache = Cache.for_suite(config)
    rows = [("PROFILE", "DEFINED IN", "KERNEL", "RELEASE", "MODULES", "MEMORY", "CPUS")]
    errors = []
    for name in config.profile_names():
        path = config.origins.get(name, ProfileOrigin()).path
        defined = str(path.relative_to(config.root)) if path else "built-in"
        try:
            profile = config.profile(name)
            images.check(profile, cache)
            release = kernels.known_release(profile, cache)
        except ProviumError as exc:
            errors.append(str(exc))
            rows.append((name, defined, "-", "-", "-", "-", "-"))
            continue
        if release is None:
            release = "(not built yet)" if profile.kernel_source else "(not fetched yet)"
        modules = ",".join(profile.modules) or "-"
        if profile.available_modules:
            modules += f" (available: {','.join(profile.available_modules)})"
        memory = f"{profile.memory_mib // 1024}G" if profile.memory_mib % 1024 == 0 else f"{profile.memory_mib}M"
        rows.append((name, defined, kernels.origin(profile), release, modules, memory, str(profile.cpus)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for error in errors:
        _notice(error)
    return EXIT_USAGE if errors else EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((arg for arg in argv if not arg.startswith("-")), None)).parse_args(argv)
    try:
        if args.command == "cache":
            from . import cache_admin
            return cache_admin.main(args)
        if args.command == "fixtures":
            return cmd_fixtures(args)
        if args.command == "kernel":
            return cmd_kernel(args)
        if args.command == "profiles":
            return cmd_profiles(args)
        if args.command == "repl":
            from . import repl
            return repl.main(args)
        if args.command == "report":
            from . import report_merge
            return report_merge.main(args)
        if args.command == "shell":
            return cmd_shell(args)
        return cmd_run(args)
    except ConfigError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ProviumError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader went away (`provium run --list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
