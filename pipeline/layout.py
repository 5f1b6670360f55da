"""The dataset root: where every stage reads and writes, and its versioned ``info.json``.

```
ROOT/info.json                              format version, resolved config per stage, counts
ROOT/errors.parquet                         one row per failed input (any stage)
ROOT/scenes/<dataset>/<scene_id>/           canonical scene (ingest): scene.json, frames.parquet,
                                            objects.parquet, manifest.parquet, mesh.ply, _DONE.json
ROOT/tokens/shard-%06d.tar, index.json      geometry-token shards (extract)
ROOT/graph/<dataset>/<scene_id>/            scene graphs (graph)
ROOT/routes/<dataset>/<scene_id>.parquet    navigation routes (routes)
ROOT/qa/<bench>/<split>.jsonl               QA records (qa)
ROOT/train_shards/                          packed training shards (pack)
```
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import FORMAT_VERSION, __version__
from pipeline.atomic import read_json, write_json

DATASETS = ("scannet", "scannetpp", "arkitscenes")
DONE_MARKER = "_DONE.json"


class DatasetRootError(RuntimeError):
    """The dataset root is missing, of another format version, or inconsistent."""


def scene_key(dataset: str, scene_id: str) -> str:
    """The WebDataset key of a scene: no dots (webdataset splits keys at the first dot)."""
    return f"{dataset}_{scene_id}".replace(".", "_")


@dataclass(frozen=True)
class DatasetRoot:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- locations -------------------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.path / "info.json"

    @property
    def errors_path(self) -> Path:
        return self.path / "errors.parquet"

    def scene_dir(self, dataset: str, scene_id: str) -> Path:
        return self.path / "scenes" / dataset / scene_id

    def graph_dir(self, dataset: str, scene_id: str) -> Path:
        return self.path / "graph" / dataset / scene_id

    @property
    def tokens_dir(self) -> Path:
        return self.path / "tokens"

    @property
    def qa_dir(self) -> Path:
        return self.path / "qa"

    @property
    def routes_dir(self) -> Path:
        return self.path / "routes"

    def scenes(self, dataset: str | None = None) -> list[tuple[str, str]]:
        """(dataset, scene_id) of every completely ingested scene, sorted."""
        out = []
        for ds in ([dataset] if dataset else DATASETS):
            base = self.path / "scenes" / ds
            if base.is_dir():
                out += [(ds, d.name) for d in sorted(base.iterdir()) if (d / DONE_MARKER).exists()]
        return out

    # ---- info.json ---------------------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """The info of an existing root; DatasetRootError when it is missing or of another format version."""
        if not self.path.is_dir():
            raise DatasetRootError(f"{self.path}: dataset root not found")
        return self.load_info()

    def load_info(self) -> dict[str, Any]:
        if not self.info_path.exists():
            return {"format_version": FORMAT_VERSION, "code_version": __version__, "stages": {}}
        info = read_json(self.info_path)
        if info.get("format_version") != FORMAT_VERSION:
            raise DatasetRootError(
                f"{self.info_path}: format version {info.get('format_version')} but this vlm3r-data writes "
                f"{FORMAT_VERSION}; regenerate the root or use the matching vlm3r-data release")
        return info

    def record_stage(self, stage: str, config: dict[str, Any], counts: dict[str, Any]) -> None:
        """Store a stage's resolved config and counts in info.json (merged with what other stages wrote)."""
        info = self.load_info()
        info["code_version"] = __version__
        info.setdefault("stages", {})[stage] = {"config": config, "counts": counts}
        write_json(self.info_path, info)


def ensure_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
