"""Pack: join each scene's geometry tokens with its frames, video timing and all its training QA into training
shards (one sample per scene and frame list; storing tokens per question would duplicate ~36 MB per question).
The sample format is :mod:`pipeline.core.train_samples`'.

- ``qa.json``: the scene's records of every bench from the non-benchmark splits, sorted by (bench, qa_key).
  Scenes with QA in a benchmark split (``val``, ``test``) never enter: a scene found in both is a split leak and an
  error, not a silent choice.
- Frames: the token shard's 384x384 JPEGs, or when it has none, the scene's manifest frames decoded from the raw
  source, squashed to 384x384 (PIL bicubic, as SigLIP's processor and extract) and JPEG-encoded (quality 95); with a
  vision encoder, its features (``vision.npy`` [T, 729, d], bfloat16 bits) replace the JPEGs.

Shard writing, markers, recovery and the index are :mod:`pipeline.core.shards`' (same atomicity, byte-reproducibility
and resume: a rerun keeps complete shards and packs only the scenes they lack; a different identity is refused).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.atomic import sha256_file, write_json
from pipeline.core.errors import ErrorRow, InputError, record_errors
from pipeline.core.images import FRAME_SIZE, JPEG_QUALITY, jpeg_frames
from pipeline.core.layout import BENCHMARK_SPLITS, QA_COUNTS, DatasetRoot
from pipeline.core.shards import ShardRecord, ShardWriter, recover_shards, write_index
from pipeline.core.tokens import iter_samples
from pipeline.core.train_samples import PackError, pack_members, scene_frames, shard_qa_counts

STAGE = "pack"
DEFAULT_MAX_SHARD_BYTES = 1 << 30

VisionEncoder = Callable[[list[np.ndarray]], np.ndarray]   # RGB uint8 frames -> [T, 729, d] float32


def train_dir(root: DatasetRoot) -> Path:
    return root.train_shards_dir


# ---- QA ----------------------------------------------------------------------------------------------------------

@dataclass
class QaSets:
    train: dict[str, list[dict[str, Any]]]    # scene key -> training records (every bench)
    benchmark_keys: set[str]                  # scene keys with benchmark-split QA
    files: dict[str, str]                     # "bench/split.jsonl" -> sha256


def load_qa(qa_dir: Path) -> QaSets:
    """Every ``qa/<bench>/<split>.jsonl``: training records grouped by scene, and the benchmark scenes."""
    train: dict[str, list[dict[str, Any]]] = defaultdict(list)
    bench_keys: set[str] = set()
    files: dict[str, str] = {}
    for path in sorted(qa_dir.glob("*/*.jsonl")):
        bench, split = path.parent.name, path.stem
        files[f"{bench}/{path.name}"] = sha256_file(path)
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["scene_key"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(path, f"line {line_no}: not a QA record with a scene_key ({exc})") from None
            if split in BENCHMARK_SPLITS:
                bench_keys.add(key)
            else:
                train[key].append({**record, "bench": record.get("bench", bench), "split": split})
    leaks = sorted(set(train) & bench_keys)
    if leaks:
        raise PackError(qa_dir, f"scenes with both training and benchmark QA (split leak): {leaks[:10]}")
    for records in train.values():
        records.sort(key=lambda r: (r["bench"], str(r.get("qa_key", "")), str(r.get("id", ""))))
    return QaSets(dict(train), bench_keys, files)


# ---- one scene ---------------------------------------------------------------------------------------------------

# ---- shards ------------------------------------------------------------------------------------------------------

@dataclass
class PackResult:
    shards: list[ShardRecord]
    packed: list[str]          # keys packed in this run
    skipped_done: int          # keys already in complete shards
    skipped_benchmark: int     # scenes with benchmark QA (never trained on)
    skipped_no_qa: int         # scenes without any training question
    errors: list[ErrorRow]
    removed: list[str]         # debris cleaned up before the run


def pack(root: DatasetRoot, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
         vision_encoder: VisionEncoder | None = None, vision_model: str = "", verify_sha256: bool = True,
         overwrite: bool = False) -> PackResult:
    """Pack every token sample with training QA into ``ROOT/train_shards`` (resumable; see the module docstring)."""
    out_dir = train_dir(root)
    tokens_index = root.tokens_dir / "index.json"
    if not tokens_index.is_file():
        raise InputError(tokens_index, "token shard index not found (run `vlm3r-data extract` first)")
    qa = load_qa(root.qa_dir)
    if not qa.train and not qa.benchmark_keys:
        raise InputError(root.qa_dir, "no QA records found (run `vlm3r-data qa` first)")
    identity = {"stage": STAGE, "tokens_index_sha256": sha256_file(tokens_index), "qa_files": qa.files,
                "visual": f"vision_features:{vision_model}" if vision_encoder else "jpeg",
                "frame_size": FRAME_SIZE, "frame_resample": "pil_bicubic", "jpeg_quality": JPEG_QUALITY,
                "max_shard_bytes": int(max_shard_bytes)}
    if overwrite and out_dir.is_dir():
        import shutil

        shutil.rmtree(out_dir)
    state = recover_shards(out_dir, verify_sha256=verify_sha256)
    other = [r for r in state.records if r.identity != identity]
    if other:
        changed = sorted(k for k in set(identity) | set(other[0].identity)
                         if other[0].identity.get(k) != identity.get(k))
        raise PackError(out_dir, f"shards {[r.file for r in other[:3]]} were packed from other inputs or settings "
                                 f"(changed: {changed}); re-run with --overwrite to repack")
    done = state.keys
    packed, errors, processed = [], [], []
    skipped_bench = skipped_no_qa = skipped_done = 0
    seen: set[str] = set()
    with ShardWriter(out_dir, max_shard_bytes=max_shard_bytes, first_index=state.next_index,
                          identity=identity) as writer:
        for sample in iter_samples(root.tokens_dir, verify_sha256=verify_sha256):
            seen.add(sample.key)
            if sample.key in qa.benchmark_keys:
                skipped_bench += 1
                continue
            records = qa.train.get(sample.key)
            if not records:
                skipped_no_qa += 1
                continue
            if sample.key in done:
                skipped_done += 1
                continue
            processed.append((sample.meta["dataset"], sample.meta["scene_id"]))
            try:
                timing, images = scene_frames(root, sample)
                jpegs = sample.jpegs if images is None else jpeg_frames(images, str(root.scene_dir(
                    sample.meta["dataset"], sample.meta["scene_id"])))
                features = None
                if vision_encoder is not None:
                    from pipeline.core.frames import decode_image_bytes

                    features = vision_encoder([decode_image_bytes(d, sample.key) for d in jpegs])
                    jpegs = None
                members = pack_members(sample, records, timing, jpegs=jpegs, vision_features=features,
                                       vision_model=vision_model)
            except InputError as exc:
                errors.append(ErrorRow.from_exception(STAGE, sample.meta["dataset"], sample.meta["scene_id"], exc))
                continue
            writer.write_members(sample.key, members)
            packed.append(sample.key)
    records_all = sorted(state.records + writer.records, key=lambda r: r.index)
    write_index(out_dir, records_all, identity)
    write_json(out_dir / QA_COUNTS, {r.file: shard_qa_counts(out_dir / r.file) for r in records_all})
    missing_tokens = sorted(set(qa.train) - seen)
    record_errors(root.errors_path, STAGE, processed, errors)
    result = PackResult(records_all, packed, skipped_done, skipped_bench, skipped_no_qa, errors, state.removed)
    root.record_stage(STAGE, {k: v for k, v in identity.items() if k != "qa_files"},
                      {"shards": len(records_all), "scenes": sum(len(r.keys) for r in records_all),
                       "packed_now": len(packed), "benchmark_scenes_skipped": skipped_bench,
                       "scenes_without_qa": skipped_no_qa, "qa_scenes_without_tokens": len(missing_tokens),
                       "failed": len(errors)})
    return result
