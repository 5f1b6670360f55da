"""Running stages: the one entry point that knows every stage (the registry), and the Python forms of the stages
that tests, benchmarks and notebooks call (:func:`extract_root`, :func:`pack`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.layout import DatasetRoot
from pipeline.stages.contract import Ledgers, RunOptions, Stage, StageRefused, StageResult, drive
from pipeline.stages.extract import DEFAULT_SHARD_BYTES, ExtractConfig, ExtractRun, ExtractStage
from pipeline.stages.pack import DEFAULT_MAX_SHARD_BYTES, PackConfig, PackStage
from pipeline.stages.registry import STAGES


def ledgers_of(root: DatasetRoot | str | Path) -> Ledgers:
    """Every stage's markers in ``root`` (the path made absolute, so reports name real places)."""
    path = root.path if isinstance(root, DatasetRoot) else Path(root)
    return Ledgers(DatasetRoot(path.resolve()), STAGES)


def run_stage(stage: Stage, root: DatasetRoot, config: Any, options: RunOptions,
              extra: dict[str, Any] | None = None) -> StageResult:
    """Run one stage with the driver (:func:`pipeline.stages.contract.drive`), every stage of the pipeline known."""
    return drive(stage, root, config, options, registry=STAGES, extra=extra)


@dataclass
class ExtractSummary:
    scenes: int = 0
    extracted: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    shards: int = 0
    samples: int = 0
    removed_debris: list[str] = field(default_factory=list)
    aborted: str | None = None


def extract_root(root, model, options, scheduling, *, shard_bytes: int = DEFAULT_SHARD_BYTES, rebuild: bool = False,
                 encoder_factory=None, progress: bool = True, command: tuple[str, ...] = ()) -> ExtractSummary:
    """Extract every ingested scene of ``root`` that is not in a complete shard (the stage, from Python).

    ``model``: a :class:`workers.extract.ModelSpec`; ``encoder_factory``: builds the encoder inside the actor,
    ``model.build_encoder`` by default (tests pass wrappers). Raises StageRefused when existing shards were made
    with another identity (unless ``rebuild``)."""
    from workers.extract import run_identity

    root = root if isinstance(root, DatasetRoot) else DatasetRoot(root)
    if not root.scenes_dir.is_dir():
        raise StageRefused(f"extract: {root.path}: no ingested scenes (run `vlm3r-data ingest` first)")
    try:
        identity = run_identity(model.describe(), options)
    except ValueError as exc:                 # e.g. an input size that is no multiple of the model's patch size
        raise StageRefused(f"extract: {exc}") from None
    config = ExtractConfig(identity)
    run = ExtractRun(model, options, scheduling, shard_bytes, encoder_factory)
    extra: dict[str, Any] = {"run": run}
    options_ = RunOptions(local=scheduling.local, workers=scheduling.workers, ray_address=scheduling.ray_address,
                          rebuild=rebuild, progress=progress, command=command or ("extract", "--root", str(root.path)))
    result = run_stage(ExtractStage(), root, config, options_, extra=extra)
    counts = result.counts
    summary = ExtractSummary(scenes=counts.get("units", 0), extracted=counts.get("extracted", 0),
                             skipped=result.skipped, failed=result.failed, frames=extra.get("frames", 0),
                             seconds=extra.get("seconds", 0.0), shards=counts.get("shards", 0),
                             samples=counts.get("samples", 0), removed_debris=extra.get("removed_debris", []),
                             aborted=extra.get("aborted"))
    if summary.aborted:
        print(f"vlm3r-data extract: aborted: {summary.aborted}", file=sys.stderr)  # ends with "rerun to resume"
    return summary


def pack(root: DatasetRoot, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, vision_encoder=None,
         vision_model: str = "", verify_sha256: bool = True, rebuild: bool = False, allow_stale: bool = False):
    """The pack stage from Python (tests, notebooks): a StageResult."""
    config = PackConfig(visual=f"vision_features:{vision_model}" if vision_encoder is not None else "jpeg")
    options = RunOptions(local=True, rebuild=rebuild, allow_stale=allow_stale, progress=False,
                         command=("pack", "--root", str(root.path)))
    return run_stage(PackStage(), root, config, options,
                     extra={"vision_encoder": vision_encoder, "max_shard_bytes": max_shard_bytes,
                            "verify_sha256": verify_sha256})
