"""``vlm3r-data extract``: CUT3R geometry tokens of every ingested scene's frame manifest -> WebDataset shards.

The driver lists the completely ingested scenes (sorted), drops those already in complete shards (after checking
that the shards were made by the same model and configuration), hands the rest to :mod:`workers.extract` (CPU
decode tasks feeding the model actor through a bounded queue) and writes the samples, in scene order, to
``ROOT/tokens/shard-%06d.tar``. The index ``ROOT/tokens/index.json`` is rebuilt from the shards' done-markers at the
end, so a killed run followed by a rerun gives every scene exactly once.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HELP = "run CUT3R over every scene's frame manifest and write geometry-token shards (WebDataset) on Ray"
STAGE = "extract"
DEFAULT_SHARD_BYTES = 1_000_000_000

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30,
               "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"500MB"``, ``"1GiB"``, ``"2e6"``-free plain integers -> bytes."""
    match = _SIZE_RE.match(str(text))
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 500MB, 1GiB, 1000000)")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"byte size must be positive, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root written by ingest (ROOT)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="official CUT3R checkpoint (.pth)")
    model.add_argument("--weights", type=Path, help="weights (.safetensors or a plain state dict); needs --config")
    model.add_argument("--random-tiny", action="store_true",
                       help="the fixture-size CUT3R architecture with random weights (demo, tests)")
    parser.add_argument("--config", type=Path, help="CUT3R config JSON for --weights")
    parser.add_argument("--seed", type=int, default=0, help="weights seed of --random-tiny")
    parser.add_argument("--size", type=int, default=432, help="CUT3R input side (432 -> 27x27 = 729 patches)")
    parser.add_argument("--squash-size", type=int, default=384, help="SigLIP squash side before the resize")
    parser.add_argument("--batch-videos", type=int, default=4, help="videos encoded together in lock-step")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor (0 = run it on CPU)")
    parser.add_argument("--actors", type=int, default=1, help="model actors (e.g. one per GPU)")
    parser.add_argument("--actor-cpus", type=int, default=1,
                        help="CPUs (torch threads) per model actor; the same value gives the same bytes")
    parser.add_argument("--workers", type=int, default=2, help="CPU decode workers (local Ray cluster size)")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="compute precision of the model (bf16: bf16 weights and activations, float32 heads); "
                             "auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--token-dtype", choices=("auto", "fp32", "bf16", "fp16", "fp8_e4m3", "int8"), default="auto",
                        help="storage codec of the tokens: fp32, bf16, fp16 store the computed values (bf16/fp16 "
                             "round them); fp8_e4m3 and int8 take one byte per value with per-frame, per-channel "
                             "float32 scales. Part of the shards' identity. auto = the compute precision (--dtype)")
    parser.add_argument("--compile", choices=("none", "default", "reduce-overhead"), default="none",
                        help="torch.compile the encoder and the recurrent step (reduce-overhead: with CUDA graphs)")
    parser.add_argument("--with-frames", action="store_true", help="also store the squashed frames as JPEG")
    parser.add_argument("--with-points", action="store_true",
                        help="also store per-patch 3D points (point head) in the first camera's frame")
    parser.add_argument("--shard-bytes", type=parse_bytes, default=DEFAULT_SHARD_BYTES,
                        help="start a new shard before one would grow past this size (e.g. 500MB, 1GiB)")
    parser.add_argument("--retries", type=int, default=2, help="Ray retries of dead decode workers / model actors")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete existing shards first (needed to change the model or its configuration)")
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")


class ExtractConfigError(RuntimeError):
    """Existing shards were made by another model or configuration: mixing them would corrupt the dataset."""


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

    def counts(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("removed_debris", "aborted")}


def _first_difference(have: Any, want: Any, prefix: str = "") -> str | None:
    """Dotted name of the first field where two identity dicts differ (sorted field order), else None."""
    if isinstance(have, dict) and isinstance(want, dict):
        for name in sorted(set(have) | set(want)):
            diff = _first_difference(have.get(name), want.get(name), f"{prefix}{name}.")
            if diff is not None:
                return diff
        return None
    return None if have == want else prefix.rstrip(".")


def _lookup(identity: dict[str, Any], dotted: str) -> Any:
    value: Any = identity
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_identity(tokens_dir: Path, records, identity: dict[str, Any]) -> None:
    """Refuse to add samples to shards made with another model or configuration, naming the field that changed."""
    from pipeline.core.shards import marker_path

    for record in records:
        diff = _first_difference(record.identity, identity)
        if diff is not None:
            raise ExtractConfigError(
                f"{marker_path(tokens_dir, record.file)}: existing shards were extracted with {diff}="
                f"{_lookup(record.identity, diff)!r}, this run has {diff}={_lookup(identity, diff)!r}; "
                f"rerun with the original settings, extract into another root, or pass --overwrite")


def extract_root(root, model, options, scheduling, *, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 overwrite: bool = False, encoder_factory=None, progress: bool = True) -> ExtractSummary:
    """Extract every ingested scene of ``root`` not yet in a complete shard (the driver behind the command).

    ``model``: a :class:`workers.extract.ModelSpec` (what the samples' meta records); ``encoder_factory``: builds the
    encoder inside the actor, ``model.build_encoder`` by default (tests pass wrappers). Raises
    :class:`ExtractConfigError` when existing shards were made with another identity.
    """
    from tqdm import tqdm

    from pipeline.core.atomic import sha256_file
    from pipeline.core.errors import ErrorRow, record_errors
    from pipeline.core.layout import DatasetRoot, scene_key
    from pipeline.core.shards import ShardWriter, recover_shards, write_index
    from pipeline.core.tokens import write_sample
    from workers.extract import ExtractionAborted, SceneJob, iter_extracted, run_identity

    root = root if isinstance(root, DatasetRoot) else DatasetRoot(root)
    root.check()  # a missing root or one of another format version is refused (exit 2)
    tokens_dir = root.tokens_dir
    identity = run_identity(model.describe(), options)
    if overwrite and tokens_dir.exists():
        shutil.rmtree(tokens_dir)
    state = recover_shards(tokens_dir)
    check_identity(tokens_dir, state.records, identity)

    scenes = root.scenes()
    done_in = {key: record for record in state.records for key in record.keys}
    jobs, owner = [], {}
    for dataset, scene_id in scenes:
        key = scene_key(dataset, scene_id)
        if key in owner:
            raise ExtractConfigError(f"scenes {owner[key]} and {dataset}/{scene_id} share the shard key {key!r}")
        owner[key] = f"{dataset}/{scene_id}"
        scene_dir = root.scene_dir(dataset, scene_id)
        manifest_sha = sha256_file(scene_dir / "manifest.parquet")
        record = done_in.get(key)
        if record is None:
            jobs.append(SceneJob(dataset, scene_id, key, str(scene_dir), manifest_sha))
        elif record.sources.get(key, manifest_sha) != manifest_sha:
            # A sample cannot be replaced inside a complete shard; mixing old tokens with a new manifest would be
            # silently wrong for the QA that names frames by rank.
            raise ExtractConfigError(
                f"{scene_dir / 'manifest.parquet'}: the frame manifest of {dataset}/{scene_id} changed since it was "
                f"extracted into {tokens_dir / record.file}; pass --overwrite to extract again")
    summary = ExtractSummary(scenes=len(scenes), skipped=len(scenes) - len(jobs), removed_debris=state.removed)

    errors: list[ErrorRow] = []
    processed: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="extract", unit="scene", disable=not progress or not jobs, dynamic_ncols=True)
    writer = ShardWriter(tokens_dir, max_shard_bytes=shard_bytes, first_index=state.next_index, identity=identity)
    try:
        with writer:
            for job, sample, error in iter_extracted(jobs, encoder_factory or model.build_encoder, options, identity,
                                                     scheduling):
                processed.append((job.dataset, job.scene_id))
                if error is None:
                    write_sample(writer, sample)
                    summary.frames += sample.num_frames
                else:
                    errors.append(ErrorRow(STAGE, job.dataset, job.scene_id, error.error_type, error.message,
                                           error.path))
                    print(f"error: {job.dataset}/{job.scene_id}: {error.message}", file=sys.stderr)
                bar.update(1)
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{summary.frames / elapsed:.1f} frames/s")
    except ExtractionAborted as exc:
        summary.aborted = str(exc)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.failed = len(errors)
    summary.extracted = sum(len(r.keys) for r in writer.records)  # an aborted run drops its open shard

    # The index lists every complete shard: those of earlier runs and those this run finished.
    records = state.records + writer.records
    index = write_index(tokens_dir, records, identity)
    summary.shards, summary.samples = index["num_shards"], index["num_samples"]
    record_errors(root.errors_path, STAGE, processed, errors)
    config = {"identity": identity, "scheduling": asdict(scheduling), "shard_bytes": shard_bytes,
              "model": asdict(model)}
    root.record_stage(STAGE, config, summary.counts())
    return summary


def run(args: argparse.Namespace) -> int:
    from pipeline.core.layout import DatasetRootError
    from pipeline.core.shards import ShardError
    from workers.extract import ExtractOptions, ModelSpec, Scheduling

    if args.weights and not args.config:
        print("vlm3r-data extract: --weights needs --config", file=sys.stderr)
        return 2
    if not (args.root / "scenes").is_dir():
        print(f"vlm3r-data extract: {args.root}: no ingested scenes (run `vlm3r-data ingest` first)", file=sys.stderr)
        return 2
    if args.random_tiny:
        model = ModelSpec("random_tiny", seed=args.seed)
    elif args.checkpoint:
        model = ModelSpec("checkpoint", path=str(args.checkpoint))
    else:
        model = ModelSpec("weights", path=str(args.weights), config_path=str(args.config))
    precision = {"auto": "bf16" if args.num_gpus > 0 else "fp32"}.get(args.dtype, args.dtype)
    token_dtype = precision if args.token_dtype == "auto" else args.token_dtype
    try:
        options = ExtractOptions(input_size=args.size, squash_size=args.squash_size, token_dtype=token_dtype,
                                 precision=precision, compile=args.compile,
                                 device="cuda" if args.num_gpus > 0 else "cpu", with_points=args.with_points,
                                 with_frames=args.with_frames)
        scheduling = Scheduling(batch_videos=args.batch_videos, local=args.local, workers=args.workers,
                                num_gpus=args.num_gpus, actors=args.actors, actor_cpus=args.actor_cpus,
                                retries=args.retries,
                                ray_address=args.ray_address)
        summary = extract_root(args.root, model, options, scheduling, shard_bytes=args.shard_bytes,
                               overwrite=args.overwrite)
    except (ExtractConfigError, DatasetRootError, ShardError, ValueError, OSError) as exc:
        print(f"vlm3r-data extract: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - model loading errors (bad checkpoint) name the file
        from workers.cut3r import Cut3rCheckpointError, Cut3rConfigError

        if isinstance(exc, (Cut3rCheckpointError, Cut3rConfigError)):
            print(f"vlm3r-data extract: {exc}", file=sys.stderr)
            return 2
        raise
    tokens = Path(args.root) / "tokens"
    fps = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(f"extract: {summary.extracted} extracted ({summary.frames} frames, {fps:.1f} frames/s), "
          f"{summary.skipped} already in shards, {summary.failed} failed -> {tokens} "
          f"({summary.shards} shards, {summary.samples} samples, index.json)"
          + (f" (errors: {Path(args.root) / 'errors.parquet'})" if summary.failed else ""))
    if summary.removed_debris:
        print(f"  removed incomplete outputs of an earlier run: {', '.join(summary.removed_debris)}")
    if summary.aborted:
        print(f"vlm3r-data extract: aborted: {summary.aborted}", file=sys.stderr)
        return 1
    return 1 if summary.failed else 0
