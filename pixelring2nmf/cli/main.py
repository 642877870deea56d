"""The `pixelring2nmf` command line: parse, set up the process, run one command, map its end.

argparse (standard library) rather than typer: one dependency fewer and nothing the commands
need that argparse lacks. The command modules import their libraries inside the functions that
run, so `pixelring2nmf --help` stays instant and pyarrow, matplotlib, scikit-learn or mlserver
load only where needed.

How a command ends (the toolkit's error policy):
- done: exit 0 (or 2 when the command finished but could not use all of its input, e.g. `era`
  with an unreadable file, or `predict` with a repeated LS; it says why);
- a user error (`errors.UserError`, and the runtime's `InputError` and `ArtifactError`): one
  line naming the file, option or service and the problem, exit 2 (`-v` adds the traceback);
  a disk that is full or read-only counts as one too;
- Ctrl-C or SIGTERM: one line, exit 130 (`era` first writes what it has);
- a closed pipe (`predict ... | head`): a quiet end, exit 141 as for any Unix filter;
- anything else is a bug: its traceback, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator

from .. import __version__
from ..errors import user_error_types
from . import (
    compare_commands,
    data_commands,
    era_commands,
    model_commands,
    remote_commands,
    serving_commands,
    stats_commands,
)

COMMAND_GROUPS = (
    data_commands,
    model_commands,
    serving_commands,
    remote_commands,
    era_commands,
    stats_commands,
    compare_commands,
)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a filter killed by a closed pipe returns
# failed writes that are the machine's state, never the toolkit's bug
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelring2nmf",
        description="NMF anomaly detection for Ring 2 of the CMS forward pixel detector.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, tracebacks of errors"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def configure_logging(verbose: bool) -> None:
    """Every log line of a command on stdout as '[LEVEL]: message' (the final error: stderr).

    `force` replaces the previous command's handler when several run in one process (tests).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)s]: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """SIGTERM (what batch systems send before they kill) stops a command as Ctrl-C does, so
    that `era` keeps what it judged; the previous handler comes back afterwards."""
    from ..era.engine import Interrupted

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from mlserver_model.nmf2d import single_blas_thread

    single_blas_thread()  # this process kind's one place (the model's products are small)
    name = f"pixelring2nmf {args.command}"
    try:
        with termination_as_interrupt():
            return int(args.handler(args) or 0)
    except user_error_types() as error:
        return _fail(name, str(error), args.verbose)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        return _fail(name, f"cannot write{where}: {error.strerror}", args.verbose)
    except KeyboardInterrupt as stop:
        how = stop.args[0] if stop.args else "Ctrl-C"
        print(f"{name}: interrupted by {how}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(name: str, message: str, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"{name}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so that the interpreter's final flush
    does not raise a second BrokenPipeError at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
