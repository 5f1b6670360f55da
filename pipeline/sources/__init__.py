"""Dataset readers. Each module ``pipeline.sources.<dataset>`` provides a :class:`DatasetReader`:

- ``list_scenes(raw, split=None) -> list[tuple[scene_id, split]]``: the scenes of a raw release (sorted);
- ``read_scene(raw, scene_id, split) -> CanonicalScene``: one scene in the canonical form (raises
  ``pipeline.core.errors.InputError`` naming the file and the problem on bad input).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from pipeline.core.scene import CanonicalScene

READERS = ("scannet", "scannetpp", "arkitscenes", "video")


class DatasetReader(Protocol):
    name: str
    layout: str                 # the raw layout it reads, in one line (for "no scene found" messages)

    def looks_like(self, raw: Path) -> bool: ...

    def list_scenes(self, raw: Path, split: str | None = None) -> list[tuple[str, str]]: ...

    def read_scene(self, raw: Path, scene_id: str, split: str) -> CanonicalScene: ...


def get_reader(dataset: str, **options: str) -> DatasetReader:
    """The dataset's reader; ``options`` (e.g. ScanNet++'s ``stream="dslr"``) construct a configured one."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(READERS)}")
    default = importlib.import_module(f"pipeline.sources.{dataset}").READER
    if not options:
        return default
    try:
        return type(default)(**options)
    except TypeError as exc:
        raise ValueError(f"reader {dataset!r} does not take options {sorted(options)}: {exc}") from None


def recognise(raw: Path) -> list[str]:
    """The datasets whose raw layout ``raw`` looks like (usually one; none for an unrelated folder)."""
    return [name for name in READERS if get_reader(name).looks_like(raw)]
