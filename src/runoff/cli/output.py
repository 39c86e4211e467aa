"""What the commands print besides their results: one-line errors and warnings, tables."""

from __future__ import annotations

import sys

from ..errors import one_line
from ..reporting.collective_table import (
    COLLECTIVE_CAPTION,
    CollectiveProgress,
    collective_table,
)
from ..reporting.evaluation import add_collective
from ..reporting.tables import accuracy_table, table_caption


def _collective(ev, args, *, n_jobs=None) -> None:
    """Add --collective figures to ``ev``, with a progress line per budget while the MILPs run
    (on stderr with --json, to keep stdout JSON), then print their table (without --json)."""

    with CollectiveProgress(sys.stderr if args.json else sys.stdout) as progress:
        add_collective(ev, args.collective, time_limit=args.time_limit, n_jobs=n_jobs, progress=progress)
    if not args.json:
        _print_collective(ev.summary["collective"])


def _print_collective(summary: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print(collective_table(summary))
    console.print(COLLECTIVE_CAPTION, soft_wrap=True, markup=False)  # its "[a, b]" is text, not a style


def _print_evaluation(summary: dict, title: str) -> None:
    from rich.console import Console

    console = Console()
    console.print(title, soft_wrap=True, markup=False)  # (a path is text, not a style)
    console.print(accuracy_table(summary))
    console.print(table_caption(summary), soft_wrap=True, markup=False)


def _error(message: str) -> None:
    try:
        print(f"runoff: error: {one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):  # stderr closed too: nothing left to tell
        pass


def _warn(message: str) -> None:
    """One line ``runoff: warning: ...`` on stderr: something not done, the command goes on."""
    try:
        print(f"runoff: warning: {one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):
        pass
