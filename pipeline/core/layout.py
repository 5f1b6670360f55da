"""The dataset root: every path under it, every stage, bench and split name, and its versioned ``info.json``.

```
ROOT/info.json                              format version, code version, resolved config and counts per stage
ROOT/errors.parquet                         one row per failed input (any stage); warnings too
ROOT/.lock                                  the writer lock (one writing command per root)
ROOT/scenes/<dataset>/<scene_id>/           canonical scene (ingest): scene.json, frames.parquet, objects.parquet,
                                            manifest.parquet, mesh.ply, _DONE.json
ROOT/tokens/shard-%06d.tar, index.json      geometry-token shards (extract); _done/shard-%06d.json markers
ROOT/graph/<dataset>/<scene_id>/            scene graphs (graph, import-meta), _DONE.json
ROOT/routes/<dataset>/<scene_id>.parquet    navigation routes (routes), <scene_id>_DONE.json; plots/<dataset>/*.png
ROOT/qa/<bench>/<split>.jsonl               QA records (qa), <split>_llava.json, <split>_stats.json;
                                            qa/_done/<bench>_<split>.json markers, qa/scenes.json (split guard)
ROOT/train_shards/                          training shards (pack), index.json, qa_counts.json, _done/
ROOT/train/                                 checkpoints/, predictions/<bench>_<split>.jsonl (train), _done/
ROOT/eval/<bench>_<split>.json              scores (eval), _done/
ROOT/report/report.md, plots/               the dataset report (stats)
```
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import read_json, write_json
from pipeline.core.version import FORMAT_VERSION, __version__

DATASETS = ("scannet", "scannetpp", "arkitscenes", "video")
VIDEO_DATASET = "video"               # plain video files (pipeline.sources.video): no poses, depth or mesh
# Every stage, in pipeline order (import-meta makes graphs from metadata files; predict is run by train --predict).
STAGES = ("ingest", "import-meta", "extract", "graph", "routes", "qa", "pack", "train", "predict", "eval", "stats")
BENCHES = ("vsibench", "vstibench", "regionbench")
# Splits whose scenes are the benchmarks' own: only the benchmarks' question forms are generated for them, they never
# enter training shards, and their questions are what ``train --predict`` answers and ``eval`` scores.
BENCHMARK_SPLITS = frozenset({"val", "test"})

DONE_MARKER = "_DONE.json"
MARKER_DIR = "_done"                  # per-unit markers of stages whose units share a folder (shards, qa, eval)
LOCK_NAME = ".lock"

SCENES_DIR = "scenes"
TOKENS_DIR = "tokens"
GRAPH_DIR = "graph"
ROUTES_DIR = "routes"
QA_DIR = "qa"
TRAIN_SHARDS_DIR = "train_shards"
TRAIN_DIR = "train"
EVAL_DIR = "eval"
REPORT_DIR = "report"
CHECKPOINTS_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
PLOTS_DIR = "plots"
QA_SCENES = "scenes.json"             # ROOT/qa/scenes.json: split -> scene keys (the split guard's memory)
QA_COUNTS = "qa_counts.json"          # ROOT/train_shards/qa_counts.json: shard file -> key -> questions


class DatasetRootError(RuntimeError):
    """The dataset root is missing, of another format version, or inconsistent."""


def scene_key(dataset: str, scene_id: str) -> str:
    """The WebDataset key of a scene: no dots (webdataset splits keys at the first dot)."""
    return f"{dataset}_{scene_id}".replace(".", "_")


# A shard key is <= 80 characters (pipeline.core.tokens): "video_" + a scene id of at most 74.
_MAX_VIDEO_SCENE_ID = 74
_NOT_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def video_scene_id(name: str) -> str:
    """The scene id of a video named by its relative path without extension (``arkitscenes/41069025``).

    Readable and without dots: folders become ``__`` (``arkitscenes__41069025``), every character other than letters,
    digits, ``_`` and ``-`` becomes ``_``. When that cannot be read back to the name (the name had such characters,
    or ``__`` / ``_`` beside a ``/``) or is too long for a shard key, 8 hex digits of the name's sha256 follow a
    ``-``, so different names keep different ids. The name itself is recorded in the scene (``scene.json`` ``video``).
    """
    readable = _NOT_KEY_SAFE.sub("_", name.replace("/", "__"))
    if readable.replace("__", "/") == name and len(readable) <= _MAX_VIDEO_SCENE_ID:
        return readable
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{readable[:_MAX_VIDEO_SCENE_ID - 9]}-{digest}"


def bench_file_name(bench: str, split: str) -> str:
    """``<bench>_<split>``: how predictions, scores and QA markers name one benchmark question file."""
    return f"{bench}_{split}"


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

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def scenes_dir(self) -> Path:
        return self.path / SCENES_DIR

    def scene_dir(self, dataset: str, scene_id: str) -> Path:
        return self.path / SCENES_DIR / dataset / scene_id

    @property
    def graphs_dir(self) -> Path:
        return self.path / GRAPH_DIR

    def graph_dir(self, dataset: str, scene_id: str) -> Path:
        return self.path / GRAPH_DIR / dataset / scene_id

    @property
    def tokens_dir(self) -> Path:
        return self.path / TOKENS_DIR

    @property
    def routes_dir(self) -> Path:
        return self.path / ROUTES_DIR

    def routes_table(self, dataset: str, scene_id: str) -> Path:
        return self.routes_dir / dataset / f"{scene_id}.parquet"

    def routes_marker(self, dataset: str, scene_id: str) -> Path:
        return self.routes_dir / dataset / f"{scene_id}{DONE_MARKER}"

    def routes_plot(self, dataset: str, scene_id: str) -> Path:
        return self.routes_dir / PLOTS_DIR / dataset / f"{scene_id}.png"

    @property
    def qa_dir(self) -> Path:
        return self.path / QA_DIR

    def qa_file(self, bench: str, split: str) -> Path:
        return self.qa_dir / bench / f"{split}.jsonl"

    def qa_files(self) -> list[tuple[str, str, Path]]:
        """(bench, split, path) of every ``ROOT/qa/<bench>/<split>.jsonl``, sorted."""
        if not self.qa_dir.is_dir():
            return []
        return [(p.parent.name, p.stem, p) for p in sorted(self.qa_dir.glob("*/*.jsonl"))
                if p.parent.name != MARKER_DIR]

    @property
    def qa_scenes_path(self) -> Path:
        return self.qa_dir / QA_SCENES

    @property
    def train_shards_dir(self) -> Path:
        return self.path / TRAIN_SHARDS_DIR

    @property
    def train_dir(self) -> Path:
        return self.path / TRAIN_DIR

    @property
    def predictions_dir(self) -> Path:
        return self.train_dir / PREDICTIONS_DIR

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def eval_file(self, bench: str, split: str) -> Path:
        return self.eval_dir / f"{bench_file_name(bench, split)}.json"

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    def scenes(self, dataset: str | None = None) -> list[tuple[str, str]]:
        """(dataset, scene_id) of every completely ingested scene, sorted."""
        return _marked_scene_dirs(self.scenes_dir, dataset)

    def graphs(self, dataset: str | None = None) -> list[tuple[str, str]]:
        """(dataset, scene_id) of every complete scene graph, sorted."""
        return _marked_scene_dirs(self.graphs_dir, dataset)

    # ---- info.json ---------------------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """The info of an existing root; DatasetRootError when it is missing or of another format version."""
        if not self.path.is_dir():
            raise DatasetRootError(f"{self.path}: dataset root not found" if not self.path.exists()
                                   else f"{self.path}: not a folder")
        return self.load_info()

    def load_info(self) -> dict[str, Any]:
        if not self.info_path.exists():
            return {"format_version": FORMAT_VERSION, "code_version": __version__, "stages": {}}
        try:
            info = read_json(self.info_path)
        except (OSError, ValueError) as exc:
            raise DatasetRootError(f"{self.info_path}: unreadable ({exc}); it records what each stage made, so "
                                   f"restore it from a backup or regenerate the root") from None
        version = info.get("format_version") if isinstance(info, dict) else None
        if version != FORMAT_VERSION:
            raise DatasetRootError(
                f"{self.info_path}: format version {version} but this vlm3r-data writes "
                f"{FORMAT_VERSION}; regenerate the root or use the matching vlm3r-data release")
        return info

    def record_stage(self, stage: str, config: dict[str, Any], counts: dict[str, Any]) -> None:
        """Store a stage's resolved config and counts in info.json (merged with what other stages wrote)."""
        info = self.load_info()
        info["code_version"] = __version__
        info.setdefault("stages", {})[stage] = {"config": config, "counts": counts}
        write_json(self.info_path, info)


def _marked_scene_dirs(base: Path, dataset: str | None) -> list[tuple[str, str]]:
    out = []
    for ds in ([dataset] if dataset else DATASETS):
        d = base / ds
        if d.is_dir():
            out += [(ds, p.name) for p in sorted(d.iterdir()) if (p / DONE_MARKER).exists()]
    return out
