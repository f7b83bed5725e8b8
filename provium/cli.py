"""The `provium` command line: argument parsing, exit statuses, signals.

Exit status: 0 when nothing failed, 1 when a test failed or errored, 2 for
usage and configuration errors, 130 when interrupted.
"""

import argparse
import os
import signal
import sys

from . import __version__, config as config_mod, qemu, runner
from .cache import Cache
from .errors import ConfigError, ProviumError
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    reporter = TerminalReporter()
    try:
        return cmd_run(args, reporter)
    except ConfigError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ProviumError as exc:
        print(f"provium: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
