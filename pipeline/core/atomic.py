"""Atomic writes: everything goes to a temporary name beside the target and is renamed into place.

A partially written file never appears under its final name; a crash leaves only ``*.tmp`` debris that the
next run overwrites.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator


def unique_tmp_name(name: str) -> str:
    """A temporary file name beside ``name``, unique to this process (pid and a random part, so writers on other
    hosts sharing the folder never collide either): ``.name.<pid>.<hex>.tmp``."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _tmp_name(path: Path) -> Path:
    return path.with_name(unique_tmp_name(path.name))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsynced and renamed to ``path``, on failure removed. A failed write
    (full disk, read-only folder) raises an OSError naming ``path``, whatever library wrote the temporary file."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename == str(path):
            raise
        code = exc.errno if exc.errno is not None else errno.EIO
        raise type(exc)(code, exc.strerror or str(exc), str(path)) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, fixed indent, no NaN (non-finite values are a bug upstream)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
