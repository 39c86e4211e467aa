"""What a failed command must look like: one line, ``runoff: error: ...``; and folder listings."""

from pathlib import Path


def one_error_line(capsys) -> str:
    """The stderr of a failed command: exactly one line, ``runoff: error: ...``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("runoff: error: "), err
    assert "Traceback" not in err and "\x1b" not in err
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
