"""The `provium` command line: argument parsing, exit statuses, signals.

Exit status: 0 when nothing failed, 1 when a test failed or errored, 2 for
usage and configuration errors, 130 when interrupted.
"""

import argparse
import os
import signal
import sys
import time

from . import __version__, config as config_mod, qemu, runner
from .cache import Cache
from .errors import ConfigError, ProviumError
from .fixtures import Fixtures
from .lua_runtime import build_fixture
from .report import TerminalReporter
from .vm import accelerator

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"provium: error: {message}\n")


def build_parser():
    parser = _Parser(prog="provium", description="Run Lua tests against real Linux guests under QEMU.")
    parser.add_argument("--version", action="version", version=f"provium {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run test files", description="Run Lua test files.")
    run.add_argument("paths", nargs="+", metavar="PATH", help="test files, directories or globs")
    fixtures = commands.add_parser("fixtures", help="list, build or clean cached fixtures",
                                   description="Manage the fixture cache of the suite.")
    actions = fixtures.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="cached fixtures: name, key, size, last use")
    build = actions.add_parser("build", help="build fixtures now (default: every fixtures/*.lua)")
    build.add_argument("names", nargs="*", metavar="NAME")
    actions.add_parser("clean", help="delete every cached fixture")
    return parser


class _Interrupts:
    """First SIGINT/SIGTERM: stop after cleaning up. Second: kill every VM and leave now."""

    def __init__(self):
        self.count = 0

    def __call__(self, signum, frame):
        self.count += 1
        if self.count > 1:
            qemu.kill_all()
            os._exit(EXIT_INTERRUPTED)
        raise KeyboardInterrupt

    def install(self):
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __bool__(self):
        return self.count > 0


def cmd_run(args, reporter):
    files = runner.discover(args.paths)
    config = config_mod.load()
    qemu.find_qemu()
    _, notice = accelerator()
    if notice:
        reporter.notice(notice)
    interrupts = _Interrupts()
    interrupts.install()
    summary = None
    try:
        summary = runner.run(files, config, Cache(), reporter, interrupted=lambda: bool(interrupts))
    except KeyboardInterrupt:
        pass
    if interrupts:
        qemu.kill_all()
        reporter.notice("interrupted")
    if summary is not None:
        reporter.summary(summary)
    if interrupts:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed else EXIT_OK


def cmd_fixtures(args):
    config = config_mod.load()
    fixtures = Fixtures(config, Cache(), build_fixture)
    if args.action == "list":
        rows = fixtures.entries()
        print(f"{'NAME':<20} {'KEY':<32} {'SIZE':>9}  LAST USED")
        for name, key, _, size, last in rows:
            print(f"{name:<20} {key:<32} {size / 1048576:>7.1f}M  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last))}")
        return EXIT_OK
    if args.action == "clean":
        fixtures.clean()
        return EXIT_OK
    qemu.find_qemu()
    names = args.names or sorted(p.stem for p in (config.root / "fixtures").glob("*.lua"))
    if not names:
        raise ConfigError(f"no fixtures: {config.root / 'fixtures'} has no *.lua files")
    for name in names:
        started = time.monotonic()
        entry = fixtures.entry(name)
        print(f"{name}: {entry.key} ({time.monotonic() - started:.2f} s)")
    return EXIT_OK


def main(argv=None):
    args = build_parser().parse_args(argv)
    reporter = TerminalReporter()
    try:
        if args.command == "fixtures":
            return cmd_fixtures(args)
        return cmd_run(args, reporter)
    except ConfigError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ProviumError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
