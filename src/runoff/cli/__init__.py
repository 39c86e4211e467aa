"""The ``runoff`` command line. Thin: parse, call the library, print a table or JSON.

PyTorch is imported only by the commands that train or read ``.pth`` files.

Every failure ends in one line on stderr, ``runoff: error: ...``, and exit status 1: usage
errors, bad options (named as typed), bad files, missing optional dependencies, operating
system errors. Anything else is a bug: one line saying so, or, with ``--debug`` (or
``RUNOFF_DEBUG=1``), the traceback. A closed stdout (``runoff ... | head``) ends quietly
with status 141, as a tool stopped by SIGPIPE, except for the commands that train: they
say on stderr that their output closed and how to resume (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from ..allocator import tune_allocator
from ..errors import InvalidParameterError, RunoffError, RunoffWarning
from ..param_checks import check_choice
from .catalog import _add_configs, _add_models, _add_predict
from .certify import _add_certify, _add_evaluate, _add_report
from .options import _DEBUG_HELP
from .output import _error
from .train import _add_demo, _add_train, _add_update

#: Exit status when stdout is closed early (128 + SIGPIPE), as the shell reports for other tools.
EXIT_BROKEN_PIPE = 141


#: Commands that train, and the option naming the folder their work is saved in: a closed
#: stdout stops them, which must not pass in silence for a finished training.
_TRAINING_COMMANDS = {"train": "out", "update": "run", "demo": "out"}


# ---------------------------------------------------------------------------- parser and main
class _UsageError(Exception):
    """A command line argparse refuses; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``runoff: error: ...`` line and exit status 1 (see :func:`main`)."""

    def error(self, message):
        raise _UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runoff",
        description="Provable defenses against data poisoning: partition ensembles with certified predictions.",
    )
    parser.add_argument("--version", action="version", version=f"runoff {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_train(sub)
    _add_update(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_configs(sub)
    _add_models(sub)
    _add_certify(sub)
    _add_predict(sub)
    for p in sub.choices.values():  # also after the command: runoff certify FILE --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    parser.commands = tuple(sub.choices)  # for "did you mean" (main)
    return parser


def _usage_message(exc: "_UsageError", parser, argv) -> str:
    """argparse's complaint, but an unknown command in the words of runoff.param_checks, with the close ones."""
    command = next((a for a in argv if not a.startswith("-")), None)  # runoff's own options take no value
    if exc.prog == parser.prog and command is not None and command not in parser.commands:
        try:
            check_choice(command, "command", parser.commands)
        except InvalidParameterError as unknown:
            return f"{unknown} (see: {parser.prog} --help)"
    return f"{exc} (see: {exc.prog} --help)"


def _named_as_typed(exc: BaseException, args) -> str | None:
    """A library check's ``k must be ...`` as ``--k must be ...`` when the value came from ``--k``.

    The library names its keywords; the command line names options as typed. Only an option
    given (not None) is named: a value from ``--config`` or from the run keeps the keyword.
    """
    name = getattr(exc, "parameter", None)
    if not isinstance(exc, RunoffError) or not name or not str(exc).startswith(f"{name} must be "):
        return None
    if getattr(args, name, None) is None:  # not an option of this command, or not given
        return None
    return f"--{name.replace('_', '-')}{str(exc)[len(name):]}"


def _describe(exc: BaseException) -> str:
    """The one-line message of a failure."""
    if isinstance(exc, RunoffError):
        return str(exc)
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        files = [f for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(map(str, files))}: {what}" if files else what
    return (f"{type(exc).__name__}: {exc} (internal error; rerun with --debug for the traceback and report it)")


def _stdout_closed(args) -> int:
    """The reader of stdout went away (``runoff ... | head``).

    Further writes, including Python's own flush at exit, go to /dev/null, so no
    "Exception ignored ... BrokenPipeError" follows. A command that only prints stops
    quietly (141, the convention of tools stopped by SIGPIPE); one that trains says on stderr
    where its work is and how to resume (exit 1).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass
    folder = getattr(args, _TRAINING_COMMANDS.get(args.command, ""), None)
    if folder is None:
        return EXIT_BROKEN_PIPE
    _error(f"output closed (broken pipe): runoff {args.command} stopped; finished chunks and the last "
           f"checkpoints are saved in {folder}: rerun the same command with its output in a file (> train.log) "
           "to resume (a finished run is not trained again)")
    return 1


def _stdout_broken() -> bool:
    """Whether stdout's reader has gone (a BrokenPipeError can also come from a socket or a
    child's pipe, which is a failure like any other). True where it cannot be told."""
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows), or not a real file
        return True


def _debug_env() -> bool:
    return os.environ.get("RUNOFF_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _tune_allocator() -> None:
    """Keep freed tensor memory in this process (the commands that run torch): on a CPU,
    glibc's default hands every large tensor back to the kernel and faults it in again."""

    tune_allocator()


def main(argv=None) -> int:
    """Run the ``runoff`` command line; returns the exit status.

    0: done; 1: a failure, told in one line ``runoff: error: ...`` on stderr (also a closed
    stdout that stopped a command that trains); 130: interrupted; 141: stdout was closed
    before the output was written. With ``--debug`` or
    ``RUNOFF_DEBUG=1`` an unexpected error shows its traceback.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(_usage_message(exc, parser, argv))
        return 1
    debug = args.debug or _debug_env()
    if getattr(args, "tunes_allocator", False):
        _tune_allocator()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(warnings.showwarning)
            status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError as exc:
        if _stdout_broken():
            return _stdout_closed(args)
        if debug:
            raise
        _error(_describe(exc))
        return 1
    except KeyboardInterrupt:
        _error_interrupted()
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line unless debugging
        if debug:
            raise
        _error(_named_as_typed(exc, args) or _describe(exc))
        return 1


def _warning_printer(show):
    """A ``warnings.showwarning`` that prints runoff's own warnings as one line
    ``runoff: warning: ...`` and hands the others to ``show``."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RunoffWarning):
            print(f"runoff: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def _error_interrupted() -> None:
    try:
        print("runoff: interrupted", file=sys.stderr)
    except (OSError, ValueError):
        pass
