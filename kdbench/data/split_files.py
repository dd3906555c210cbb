"""Reading a set's split files, with errors for people: a missing file says how to get the
set and where the data root is; a malformed line names the file, the line and what was
expected."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError

DATA_ROOT_NOTE = (
    "The data root is the --data-root argument, else $KDBENCH_DATA, else ~/.cache/kdbench/data."
)


def require(path: Path, dataset: str, how: str) -> Path:
    """``path``, or a DataError saying it is missing and how to get the set."""
    if not path.exists():
        raise DataError(f"{dataset}: {path} not found. {how} {DATA_ROOT_NOTE}")
    return path


def require_files(paths: Sequence[Path], listed_in: Path) -> None:
    """A DataError when images listed in a split file are not on disk."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {listed_in} are missing, e.g. {missing[0]}"
        )


def read_records(
    path: Path, pattern: str, expected: str, skip: int = 0
) -> list[tuple[int, tuple[str, ...]]]:
    """``(line number, groups)`` of every non-blank line of a text file that the regex
    ``pattern`` matches in full (after stripping), the first ``skip`` lines left out; a
    line that does not match is a DataError naming the file, the line and ``expected``."""
    regex = re.compile(pattern)
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if number <= skip or not line:
                continue
            match = regex.fullmatch(line)
            if match is None:
                raise malformed(path, number, f"expected {expected}, got {line!r}")
            records.append((number, match.groups()))
    return records


def malformed(path: Path, line: int, problem: str) -> DataError:
    return DataError(f"{path}, line {line}: {problem}")
