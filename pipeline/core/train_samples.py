"""The training-sample format, declared once: one sample per scene and frame list in ``ROOT/train_shards``.

```
ROOT/train_shards/shard-000000.tar      samples, each <key>.meta.json, .frames.json, .camera.npy, .patch.npy,
                                        .video.json, .qa.json and .frame_000.jpg ... (or .vision.npy)
                                        [, .points.npy, .points_cam0.npy, .points_valid.npy]
ROOT/train_shards/_done/shard-*.json    done-markers (pipeline.core.shards)
ROOT/train_shards/index.json            every complete shard (file, keys, size, sha256)
ROOT/train_shards/qa_counts.json        questions per shard and key (the trainer sizes its epochs with it)
```

- ``meta.json``, ``frames.json``, ``camera.npy``, ``patch.npy`` (and ``camera_scale.npy``, ``patch_scale.npy`` for
  the scaled token codecs): the token sample's (:mod:`pipeline.core.tokens`), meta extended with ``train`` (code
  version, question count, visual input, vision model); frames.json byte for byte, CUT3R's estimated poses
  (``estimated_camera_to_world``, beside the sensor ``camera_to_world``) included.
- ``video.json``: ``{"duration_s", "frame_times_s"}`` from the scene's frame timestamps (seconds from its first
  frame; the duration counts N frame periods for N frames, as LLaVA-Video's ``total_frames / fps``), both ``null``
  when the source has no finite timestamps (the time instruction is then left out).
- ``qa.json``: the scene's training records of every bench, sorted by (bench, qa_key); region questions carry their
  region prompts (``regions``: frame rank, box and COCO RLE mask each, see :mod:`pipeline.core.qa_records`).
- ``points.npy``, ``points_cam0.npy``, ``points_valid.npy`` (when the token sample has them): the per-patch 3D
  points, as the token sample stores them (:mod:`pipeline.core.tokens`; source in ``meta.json``).
- Frames: 384x384 JPEGs (:mod:`pipeline.core.images`), or pre-computed vision-tower features ``vision.npy``
  [T, 729, d] (bfloat16 bits) in their place.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline.core.atomic import dumps_json, read_json
from pipeline.core.errors import InputError
from pipeline.core.layout import QA_COUNTS, DatasetRoot
from pipeline.core.shards import iter_raw_samples, npy_bytes
from pipeline.core.tokens import TokenSample, encode_tokens, frame_member
from pipeline.core.version import __version__

TRAIN_MEMBERS = ("meta.json", "frames.json", "camera.npy", "patch.npy", "video.json", "qa.json")


class PackError(InputError):
    """Inputs of a training sample that do not fit together (stale tokens, split leak, other identity)."""


# ---- writing ------------------------------------------------------------------------------------------------------

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


def pack_members(sample: TokenSample, records: list[dict[str, Any]], timing: Mapping[str, Any], *,
                 jpegs: list[bytes] | None = None, vision_features: np.ndarray | None = None,
                 vision_model: str = "") -> list[tuple[str, bytes]]:
    """The pure core: one training sample's tar members (name, payload), in a fixed order."""
    if not records:
        raise ValueError(f"{sample.key}: a training sample needs at least one question")
    if (jpegs is None) == (vision_features is None):
        raise ValueError(f"{sample.key}: give exactly one of jpegs and vision_features")
    t, key = sample.num_frames, sample.key
    if vision_features is not None and vision_features.shape[0] != t:
        raise ValueError(f"{key}: vision features for {vision_features.shape[0]} frames, tokens for {t}")
    if jpegs is not None and len(jpegs) != t:
        raise ValueError(f"{key}: {len(jpegs)} JPEG frames for {t} token frames")
    meta = dict(sample.meta)
    meta["train"] = {"code_version": __version__, "num_questions": len(records),
                     "visual": "jpeg" if jpegs is not None else "vision_features", "vision_model": vision_model}
    if vision_features is not None:
        meta["vision_dtype"] = "bfloat16"
    members = [(f"{key}.meta.json", dumps_json(meta).encode()),
               (f"{key}.frames.json", dumps_json(sample.frames).encode()),
               *[(f"{key}.{suffix}", npy_bytes(array)) for suffix, array in sample.token_members()],
               (f"{key}.video.json", dumps_json(dict(timing)).encode()),
               (f"{key}.qa.json", dumps_json(records).encode()),
               *[(f"{key}.{suffix}", npy_bytes(array)) for suffix, array in sample.point_members()]]
    if vision_features is not None:
        members.append((f"{key}.vision.npy", npy_bytes(encode_tokens(vision_features, "bfloat16"))))
    else:
        members += [(f"{key}.{frame_member(i)}", bytes(d)) for i, d in enumerate(jpegs)]
    return members


def scene_frames(root: DatasetRoot, sample: TokenSample) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    """Timing of the sample's frames from the ingested scene, and its frames decoded from the raw source when the
    token shard carries no JPEGs (None otherwise)."""
    from pipeline.core.frames import decode_colors
    from pipeline.core.scene import is_complete, manifest_frames, read_manifest
    from pipeline.core.schemas import FRAMES_SCHEMA, column_as_array, read_table

    dataset, scene_id = sample.meta["dataset"], sample.meta["scene_id"]
    scene_dir = root.scene_dir(dataset, scene_id)
    if not is_complete(scene_dir):
        raise InputError(scene_dir, f"completely ingested scene for token sample {sample.key} not found")
    frames = read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA)
    manifest = read_manifest(scene_dir)
    wanted = [int(row["frame_index"]) for row in sample.frames]
    if [int(i) for i in column_as_array(manifest, "frame_index")] != wanted:
        raise PackError(scene_dir / "manifest.parquet", f"frame manifest differs from the token shard's frames "
                                                        f"of {sample.key} (stale tokens: re-run extract)")
    chosen = manifest_frames(frames, manifest)
    timing = video_timing(column_as_array(frames, "timestamp"), column_as_array(chosen, "timestamp"))
    return timing, (None if sample.jpegs is not None else decode_colors(chosen))


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



# ---- reading ------------------------------------------------------------------------------------------------------

@dataclass
class SceneSample:
    """One training sample with its members still encoded (the trainer decodes tensors per batch)."""

    key: str
    members: dict[str, bytes]
    meta: dict[str, Any]
    video: dict[str, Any]
    qa: list[dict[str, Any]]
    where: str

    @classmethod
    def from_members(cls, key: str, members: Mapping[str, bytes], where: str) -> "SceneSample":
        missing = [m for m in TRAIN_MEMBERS if m not in members]
        if missing:
            raise InputError(f"{where}:{key}", f"training sample lacks members {missing}")
        has_frames = any(n.startswith("frame_") for n in members)
        if not has_frames and "vision.npy" not in members:
            raise InputError(f"{where}:{key}", "training sample has neither JPEG frames nor vision.npy")
        try:
            meta, video, qa = (json.loads(members[m]) for m in ("meta.json", "video.json", "qa.json"))
        except ValueError as exc:
            raise InputError(f"{where}:{key}", f"unreadable JSON member ({exc})") from None
        return cls(key, dict(members), meta, video, qa, where)


def iter_scene_samples(path: str) -> Iterator[SceneSample]:
    """Scene samples of one training shard (:func:`pipeline.core.shards.iter_raw_samples`: members grouped as
    webdataset groups them, no decoding)."""
    for key, members in iter_raw_samples(path):
        yield SceneSample.from_members(key, members, path)
