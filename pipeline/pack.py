"""Pack: join each scene's geometry tokens with its frames, video timing and all its training QA into training
shards (one sample per scene and frame list; storing tokens per question would duplicate ~36 MB per question).

```
ROOT/train_shards/shard-000000.tar      samples, each <key>.meta.json, .frames.json, .camera.npy, .patch.npy,
                                        .video.json, .qa.json and .frame_000.jpg ... (or .vision.npy)
ROOT/train_shards/_done/shard-*.json    done-markers (pipeline.shards)
ROOT/train_shards/index.json            every complete shard (file, keys, size, sha256)
ROOT/train_shards/qa_counts.json        questions per shard and key (the trainer sizes its epochs with it)
```

- ``video.json``: ``{"duration_s", "frame_times_s"}`` from the scene's frame timestamps (seconds from its first
  frame; the duration counts N frame periods for N frames, as LLaVA-Video's ``total_frames / fps``), both ``null``
  when the source has no finite timestamps (the time instruction is then left out).
- ``qa.json``: the scene's records of every bench from the non-benchmark splits, sorted by (bench, qa_key).
  Scenes with QA in a benchmark split (``val``, ``test``) never enter: a scene found in both is a split leak and an
  error, not a silent choice.
- Frames: the token shard's 384x384 JPEGs, or when it has none, the scene's manifest frames decoded from the raw
  source, squashed to 384x384 (PIL bicubic, as SigLIP's processor and extract) and JPEG-encoded (quality 95); with a
  vision encoder, its features (``vision.npy`` [T, 729, d], bfloat16 bits) replace the JPEGs.

Shard writing, markers, recovery and the index are :mod:`pipeline.shards`' (same atomicity, byte-reproducibility
and resume: a rerun keeps complete shards and packs only the scenes they lack; a different identity is refused).
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pipeline import __version__
from pipeline.atomic import dumps_json, read_json, sha256_file, write_json
from pipeline.errors import ErrorRow, InputError, record_errors
from pipeline.layout import DatasetRoot
from pipeline.shards import (ShardRecord, ShardWriter, TokenSample, encode_tokens,
                             frame_member, iter_samples, recover_shards, write_index)

STAGE = "pack"
TRAIN_DIR = "train_shards"
QA_COUNTS = "qa_counts.json"
BENCHMARK_SPLITS = frozenset({"val", "test"})  # as pipeline/commands/qa.py: benchmark scenes never train
JPEG_QUALITY = 95
FRAME_SIZE = 384
DEFAULT_MAX_SHARD_BYTES = 1 << 30

VisionEncoder = Callable[[list[np.ndarray]], np.ndarray]   # RGB uint8 frames -> [T, 729, d] float32


class PackError(InputError):
    """Inputs of the pack stage that do not fit together (stale tokens, split leak, other identity)."""


def train_dir(root: DatasetRoot) -> Path:
    return root.path / TRAIN_DIR


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

def video_timing(frame_timestamps_s: np.ndarray, sampled_timestamps_s: np.ndarray) -> dict[str, Any]:
    """Duration of the whole video and the sampled frames' times, in seconds from the first frame (None when the
    timestamps are not finite).

    As LLaVA-Video's reader (``process_video_with_decord``: ``video_time = total_frames / fps``, ``frame_time =
    index / fps``), a video of N frames lasts N frame periods, one more than the span from its first to its last
    frame: the duration is that span plus the frame period (the median step between the timestamps)."""
    all_ts = np.asarray(frame_timestamps_s, dtype=np.float64)
    sampled = np.asarray(sampled_timestamps_s, dtype=np.float64)
    if all_ts.size == 0 or not np.isfinite(all_ts).all() or not np.isfinite(sampled).all():
        return {"duration_s": None, "frame_times_s": None}
    ordered = np.sort(all_ts)
    steps = np.diff(ordered)
    steps = steps[steps > 0]
    period = float(np.median(steps)) if steps.size else 0.0
    start = float(ordered[0])
    return {"duration_s": round(float(ordered[-1]) - start + period, 6),
            "frame_times_s": [round(float(t) - start, 6) for t in sampled]}


def squash_rgb(rgb: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """RGB uint8 [H, W, 3] → [size, size, 3] as SigLIP's image processor squashes (PIL bicubic on uint8, which
    antialiases when shrinking; OpenCV's cubic does not) — the same squash as extract's stored frames."""
    if rgb.shape[:2] == (size, size):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.Resampling.BICUBIC))


def jpeg_frames(images: Iterable[np.ndarray], where: str) -> list[bytes]:
    """RGB uint8 images → 384x384 JPEGs (squashed, PIL bicubic; deterministic bytes for given pixels)."""
    import cv2

    out = []
    for i, rgb in enumerate(images):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(where, f"frame {i} is {rgb.dtype} {list(rgb.shape)}, expected RGB uint8")
        rgb = squash_rgb(rgb)
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(where, f"could not JPEG-encode frame {i}")
        out.append(data.tobytes())
    return out


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def pack_members(sample: TokenSample, records: list[dict[str, Any]], timing: Mapping[str, Any], *,
                 jpegs: list[bytes] | None = None, vision_features: np.ndarray | None = None,
                 vision_model: str = "") -> list[tuple[str, bytes]]:
    """The pure core: one training sample's tar members (name, payload), in a fixed order."""
    if not records:
        raise ValueError(f"{sample.key}: a training sample needs at least one question")
    if (jpegs is None) == (vision_features is None):
        raise ValueError(f"{sample.key}: give exactly one of jpegs and vision_features")
    t = sample.num_frames
    meta = dict(sample.meta)
    meta["train"] = {"code_version": __version__, "num_questions": len(records),
                     "visual": "jpeg" if jpegs is not None else "vision_features", "vision_model": vision_model}
    key = sample.key
    members = [(f"{key}.meta.json", dumps_json(meta).encode()),
               (f"{key}.frames.json", dumps_json(sample.frames).encode()),
               (f"{key}.camera.npy", _npy(sample.camera)),
               (f"{key}.patch.npy", _npy(sample.patch)),
               (f"{key}.video.json", dumps_json(dict(timing)).encode()),
               (f"{key}.qa.json", dumps_json(records).encode())]
    if vision_features is not None:
        if vision_features.shape[0] != t:
            raise ValueError(f"{key}: vision features for {vision_features.shape[0]} frames, tokens for {t}")
        meta["vision_dtype"] = "bfloat16"
        members[0] = (f"{key}.meta.json", dumps_json(meta).encode())
        members.append((f"{key}.vision.npy", _npy(encode_tokens(vision_features, "bfloat16"))))
    else:
        assert jpegs is not None
        if len(jpegs) != t:
            raise ValueError(f"{key}: {len(jpegs)} JPEG frames for {t} token frames")
        members += [(f"{key}.{frame_member(i)}", bytes(d)) for i, d in enumerate(jpegs)]
    return members


def scene_frames(root: DatasetRoot, sample: TokenSample) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    """Timing of the sample's frames from the ingested scene, and its frames decoded from the raw source when the
    token shard carries no JPEGs (None otherwise)."""
    from pipeline.frames import decode_colors
    from pipeline.scene import is_complete, manifest_frames, read_manifest, read_scene
    from pipeline.schemas import column_as_array

    dataset, scene_id = sample.meta["dataset"], sample.meta["scene_id"]
    scene_dir = root.scene_dir(dataset, scene_id)
    if not is_complete(scene_dir):
        raise InputError(scene_dir, f"completely ingested scene for token sample {sample.key} not found")
    scene = read_scene(scene_dir, with_mesh=False)
    manifest = read_manifest(scene_dir)
    wanted = [int(row["frame_index"]) for row in sample.frames]
    if [int(i) for i in column_as_array(manifest, "frame_index")] != wanted:
        raise PackError(scene_dir / "manifest.parquet", f"frame manifest differs from the token shard's frames "
                                                        f"of {sample.key} (stale tokens: re-run extract)")
    chosen = manifest_frames(scene.frames, manifest)
    timing = video_timing(column_as_array(scene.frames, "timestamp"), column_as_array(chosen, "timestamp"))
    return timing, (None if sample.jpegs is not None else decode_colors(chosen))


# ---- shards ------------------------------------------------------------------------------------------------------

def shard_qa_counts(path: Path) -> dict[str, int]:
    """Questions per key in one training shard (reads only the qa.json members' payloads)."""
    counts: dict[str, int] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.name.endswith(".qa.json"):
                fh = tar.extractfile(member)
                assert fh is not None
                counts[member.name.split(".", 1)[0]] = len(json.loads(fh.read()))
    return counts


def read_qa_counts(directory: str | Path) -> dict[str, dict[str, int]]:
    path = Path(directory) / QA_COUNTS
    if not path.is_file():
        raise InputError(path, "question counts not found (run `vlm3r-data pack`)")
    return read_json(path)


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
                    from pipeline.frames import decode_image_bytes

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
