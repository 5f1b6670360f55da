"""Failures are rows, not log lines: ``ROOT/errors.parquet`` holds one row per failed input of any stage (and per
input used with a warning, ``severity == "warning"``).

A stage collects :class:`ErrorRow` s while it runs and calls :func:`record_errors` once at the end; the rows of
an earlier run of the same stage for the same units are replaced, so a successful rerun clears them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.core.schemas import ERRORS_SCHEMA, read_table, table_from_columns, write_table


class InputError(Exception):
    """Bad input data: names the offending file and the problem. Becomes a row in the errors table."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # two-argument constructor: tell pickle (and so Ray) how to rebuild it
        return (type(self), (self.path, self.problem))


ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class ErrorRow:
    stage: str
    dataset: str
    scene_id: str
    error_type: str
    message: str
    path: str = ""
    severity: str = ERROR

    @classmethod
    def from_exception(cls, stage: str, dataset: str, scene_id: str, exc: BaseException) -> "ErrorRow":
        if isinstance(exc, OSError) and exc.filename:
            # A file that could not be read or written (full disk, permissions): name it.
            return cls(stage, dataset, scene_id, type(exc).__name__, f"{exc.filename}: {exc.strerror or exc}",
                       str(exc.filename))
        return cls(stage, dataset, scene_id, type(exc).__name__, str(exc), getattr(exc, "path", "") or "")

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


def read_input_json(path: str | Path, what: str):
    """A JSON input file of a dataset, or an InputError naming the file (missing, or not valid JSON). Python's json
    accepts the -Infinity/NaN that Python-written dataset files use for lost poses."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"{what} is not valid JSON: {exc}") from exc


def read_errors(path: str | Path) -> list[ErrorRow]:
    path = Path(path)
    if not path.exists():
        return []
    return [ErrorRow(**row) for row in read_table(path, ERRORS_SCHEMA).to_pylist()]


def record_errors(path: str | Path, stage: str, processed: Iterable[tuple[str, str]], rows: Iterable[ErrorRow]) -> None:
    """Replace this stage's rows for the ``processed`` (dataset, scene_id) pairs with ``rows``."""
    processed = set(processed)
    kept = [r for r in read_errors(path) if not (r.stage == stage and (r.dataset, r.scene_id) in processed)]
    merged = sorted(kept + list(rows), key=lambda r: (r.stage, r.dataset, r.scene_id, r.error_type, r.message))
    if not merged and not Path(path).exists():
        return
    cols = {name: [getattr(r, name) for r in merged] for name in ERRORS_SCHEMA.names}
    write_table(path, table_from_columns(ERRORS_SCHEMA, cols), ERRORS_SCHEMA)
