"""Done-markers: what a unit of work wrote, and from what (the stage contract's record, :mod:`pipeline.stages`).

A marker is written last, after every output of its unit is in place, so a marker always names complete outputs.
It holds the unit's ``fingerprint`` (a digest of the stage, its config scope and version, its config and the
fingerprints of the upstream outputs the unit read) and its ``output`` fingerprint (a digest of what it wrote). Its
``identity`` (the output digest, renewed by every rebuild) is what downstream units record as their upstream. An upstream reference names a unit of a stage, ``<stage>:<unit>``, or a
named part of its output, ``<stage>:<unit>#<part>`` (e.g. only the frames of an ingested scene).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.atomic import dumps_json, read_json
from pipeline.core.errors import InputError


def digest(payload: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys)."""
    return hashlib.sha256(dumps_json(payload).encode("utf-8")).hexdigest()


def ref(stage: str, unit: str, part: str | None = None) -> str:
    """An upstream reference: ``<stage>:<unit>`` or ``<stage>:<unit>#<part>`` (a named part of its output)."""
    return f"{stage}:{unit}" + (f"#{part}" if part else "")


def split_ref(reference: str) -> tuple[str, str, str | None]:
    stage, rest = reference.split(":", 1)
    unit, _, part = rest.partition("#")
    return stage, unit, part or None


@dataclass(frozen=True)
class Marker:
    """A unit's done-marker: written last, after every output of the unit is in place."""

    stage: str
    scope: str                            # the config's scope: the stage name, or e.g. "ingest:scannet"
    unit: str
    fingerprint: str                      # digest of (stage, scope, version, config, upstream)
    version: int
    config: dict[str, Any]
    upstream: dict[str, str]
    output: str                           # digest of what the unit wrote (downstream records it as its upstream)
    parts: dict[str, str] = field(default_factory=dict)    # digests of named parts of the output
    stats: dict[str, Any] = field(default_factory=dict)
    generation: int = 0                   # how many times the unit was rebuilt over an earlier marker of its own

    @classmethod
    def made(cls, stage: str, scope: str, unit: str, version: int, config: Mapping[str, Any],
             upstream: Mapping[str, str], output: str, parts: Mapping[str, str] | None = None,
             stats: Mapping[str, Any] | None = None, generation: int = 0) -> "Marker":
        """The marker of a unit made with ``config`` from ``upstream``, its fingerprint computed here."""
        config, upstream = dict(config), dict(upstream)
        return cls(stage, scope, unit, fingerprint(stage, scope, version, config, upstream), version, config,
                   upstream, output, dict(parts or {}), dict(stats or {}), generation)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "Marker":
        try:
            return cls(stage=str(data["stage"]), scope=str(data["scope"]), unit=str(data["unit"]),
                       fingerprint=str(data["fingerprint"]), version=int(data["version"]),
                       config=dict(data["config"]), upstream=dict(data["upstream"]), output=str(data["output"]),
                       parts=dict(data.get("parts") or {}), stats=dict(data.get("stats") or {}),
                       generation=int(data.get("generation", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(where, f"not a done-marker of this vlm3r-data version ({exc!r}); rebuild the stage "
                                    "with --rebuild") from None

    @property
    def identity(self) -> str:
        """What downstream units record as their upstream: the output digest, renewed by every rebuild (so a rebuild
        makes what read the old outputs stale, as make would, even when the bytes come out the same)."""
        return self.identity_of(None) or ""

    def identity_of(self, part: str | None) -> str | None:
        digest_ = self.output if part is None else self.parts.get(part)
        if digest_ is None or not self.generation:
            return digest_
        return digest({"output": digest_, "generation": self.generation})


def fingerprint(stage: str, scope: str, version: int, config: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    return digest({"stage": stage, "scope": scope, "version": version, "config": dict(config),
                   "upstream": dict(upstream)})


def read_marker(path: str | Path) -> Marker:
    """The marker in a file; InputError naming it when it is unreadable or of another format."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable done-marker ({exc})") from None
    return Marker.from_json(data, str(path))
