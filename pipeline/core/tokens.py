"""The geometry-token sample format, declared once: members, dtypes, validation, writer and reader.

```
ROOT/tokens/shard-000000.tar        samples, each <key>.meta.json, .frames.json, .camera.npy, .patch.npy
                                    [, .points.npy, .points_cam0.npy, .points_valid.npy] [, .frame_000.jpg ...]
                                    (key = scene_key(dataset, scene_id))
ROOT/tokens/_done/shard-000000.json done-marker of a complete shard (pipeline.core.shards)
ROOT/tokens/index.json              every complete shard (file, keys, size, sha256), rebuilt from the markers
```

Members of a sample:

- ``camera.npy`` [T, 1, C] and ``patch.npy`` [T, N, C]: tokens in the dtype named by ``meta["dtype"]``. bfloat16 has
  no numpy dtype, so it is stored losslessly as its uint16 bit patterns (``meta["storage"] == "uint16_bits"``);
  float16 and float32 are stored as themselves.
- ``frames.json``: the frame manifest rows (rank, frame_index, timestamp, camera_to_world, valid), T of them.
- ``meta.json``: model id, checkpoint sha256, model config, preprocessing / input size, dtype, code version.
- ``points.npy`` [T, N, 3] float32, ``points_cam0.npy`` [T, N, 3] float32, ``points_valid.npy`` [T, N] bool
  (optional, all three or none; ``meta["with_points"]``): one 3D point per patch in the scene's z-up world and in the
  first manifest frame's camera frame, and where it is valid (invalid entries are 0); ``meta["points_source"]`` says
  where they come from: "depth" (sensor depth and poses) or "cut3r" (the model's point head). See
  :mod:`pipeline.core.patch_points`.
- ``frame_000.jpg`` ... (optional): the 384x384 RGB frames the trainer's vision tower reads.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from pipeline.core.atomic import dumps_json
from pipeline.core.patch_points import POINTS_SOURCES
from pipeline.core.shards import ShardError, ShardWriter, checked_shards, iter_raw_samples, load_npy, npy_bytes

# Token dtypes: name recorded in meta.json -> (numpy dtype of the stored array, storage tag).
TOKEN_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "bfloat16": (np.dtype(np.uint16), "uint16_bits"),
    "float16": (np.dtype(np.float16), "native"),
    "float32": (np.dtype(np.float32), "native"),
}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

REQUIRED_META = ("key", "dataset", "scene_id", "model_id", "checkpoint_sha256", "dtype", "storage", "num_frames",
                 "num_patches", "token_width", "input_size", "with_points", "with_frames", "code_version")


# ---- token dtypes ------------------------------------------------------------------------------------------------

def token_dtype_name(dtype: str) -> str:
    """Canonical dtype name ("bfloat16", "float16", "float32") from it or its short form (bf16, fp16, fp32)."""
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in TOKEN_DTYPES:
        raise ValueError(f"unknown token dtype {dtype!r} (expected one of {sorted(TOKEN_DTYPES)} or bf16/fp16/fp32)")
    return name


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch's ``.to(torch.bfloat16)``."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    bits = x.view(np.uint32)
    # Add 0x7FFF plus the lowest kept bit, then truncate: round half to even on the 16 dropped bits.
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # keep NaN a (quiet) NaN with its sign; the rounding above could carry it into infinity
        rounded[nan] = (0x7FC0 | ((bits[nan] >> 16) & 0x8000)).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: bf16 is the upper half of a float32)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_tokens(values: np.ndarray, dtype: str) -> np.ndarray:
    """float tokens -> the stored array for ``dtype`` (uint16 bit patterns for bfloat16)."""
    name = token_dtype_name(dtype)
    if name == "bfloat16":
        return float32_to_bf16_bits(values)
    return np.ascontiguousarray(values, dtype=TOKEN_DTYPES[name][0])


def decode_tokens(stored: np.ndarray, dtype: str) -> np.ndarray:
    """The stored array of ``dtype`` -> float32 (exact for every supported dtype)."""
    name = token_dtype_name(dtype)
    if name == "bfloat16":
        return bf16_bits_to_float32(stored)
    return np.asarray(stored, dtype=np.float32)


def tokens_as_torch(stored: np.ndarray, dtype: str):
    """The stored array as a torch tensor of its real dtype (bf16 bit patterns are reinterpreted, not converted)."""
    import torch

    name = token_dtype_name(dtype)
    if name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(stored, np.uint16).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(stored))


# ---- samples -----------------------------------------------------------------------------------------------------

@dataclass
class TokenSample:
    """One scene's tokens as stored in a shard (arrays in their stored form; see :func:`decode_tokens`)."""

    key: str
    camera: np.ndarray                    # [T, 1, C] stored dtype
    patch: np.ndarray                     # [T, N, C] stored dtype
    frames: list[dict[str, Any]]          # frame manifest rows, rank order
    meta: dict[str, Any]
    points: np.ndarray | None = None      # [T, N, 3] float32, z-up world (0 where invalid)
    jpegs: list[bytes] | None = None      # T JPEG files, 384x384 RGB
    points_cam0: np.ndarray | None = None  # [T, N, 3] float32, first manifest frame's camera frame
    points_valid: np.ndarray | None = None  # [T, N] bool

    @property
    def num_frames(self) -> int:
        return int(self.camera.shape[0])

    def camera_tokens(self) -> np.ndarray:
        """[T, 1, C] float32."""
        return decode_tokens(self.camera, self.meta["dtype"])

    def patch_tokens(self) -> np.ndarray:
        """[T, N, C] float32."""
        return decode_tokens(self.patch, self.meta["dtype"])

    def images(self) -> list[np.ndarray]:
        """The stored JPEG frames decoded to RGB uint8 [H, W, 3]."""
        from pipeline.core.frames import decode_image_bytes

        return [decode_image_bytes(data, f"{self.key}.{frame_member(i)}") for i, data in enumerate(self.jpegs or [])]


def frame_member(rank: int) -> str:
    return f"frame_{rank:03d}.jpg"


def sample_members(sample: TokenSample) -> list[tuple[str, bytes]]:
    """(member name, payload) of a sample in the order they go into the tar; validates the sample first."""
    validate_sample(sample, where=sample.key)
    members = [
        (f"{sample.key}.meta.json", dumps_json(sample.meta).encode("utf-8")),
        (f"{sample.key}.frames.json", dumps_json(sample.frames).encode("utf-8")),
        (f"{sample.key}.camera.npy", npy_bytes(sample.camera)),
        (f"{sample.key}.patch.npy", npy_bytes(sample.patch)),
    ]
    if sample.points is not None:
        members += [(f"{sample.key}.points.npy", npy_bytes(sample.points)),
                    (f"{sample.key}.points_cam0.npy", npy_bytes(sample.points_cam0)),
                    (f"{sample.key}.points_valid.npy", npy_bytes(sample.points_valid))]
    for rank, data in enumerate(sample.jpegs or []):
        members.append((f"{sample.key}.{frame_member(rank)}", bytes(data)))
    return members


def validate_sample(sample: TokenSample, where: str, expect: Mapping[str, Any] | None = None) -> TokenSample:
    """Check a sample's shapes, dtypes and metadata against each other and against ``expect`` (meta field ->
    required value, e.g. ``{"checkpoint_sha256": ..., "num_frames": 32}``). Raises :class:`ShardError`."""
    meta = sample.meta
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ShardError(where, f"meta.json lacks {missing}")
    if "." in sample.key or "/" in sample.key or meta["key"] != sample.key:
        raise ShardError(where, f"sample key {sample.key!r} has a dot or slash, or differs from meta key "
                                f"{meta['key']!r}")
    if len(sample.key) > 80:  # USTAR member names: key + longest suffix must fit in 100 characters
        raise ShardError(where, f"sample key {sample.key!r} is longer than 80 characters")
    for name, value in (expect or {}).items():
        if meta.get(name) != value:
            raise ShardError(where, f"meta.json {name} is {meta.get(name)!r}, expected {value!r}")
    try:
        dtype = token_dtype_name(meta["dtype"])
    except ValueError as exc:
        raise ShardError(where, str(exc)) from None
    stored_dtype, storage = TOKEN_DTYPES[dtype]
    if meta["storage"] != storage:
        raise ShardError(where, f"dtype {dtype} must be stored as {storage!r}, meta says {meta['storage']!r}")
    t, n, c = int(meta["num_frames"]), int(meta["num_patches"]), int(meta["token_width"])
    config = meta.get("model_config")
    if isinstance(config, dict) and "patch_size" in config and "dec_embed_dim" in config:
        # The token grid follows from the input size and the model: (size / patch)^2 patches of width dec_embed_dim.
        side, patch = int(meta["input_size"]), int(config["patch_size"])
        if (side // patch) ** 2 != n or int(config["dec_embed_dim"]) != c:
            raise ShardError(where, f"meta.json num_patches {n} / token_width {c} do not match input_size {side} with "
                                    f"patch_size {patch} and dec_embed_dim {config['dec_embed_dim']} "
                                    f"(expected {(side // patch) ** 2} / {config['dec_embed_dim']})")
    for name, array, shape in (("camera", sample.camera, (t, 1, c)), ("patch", sample.patch, (t, n, c))):
        if array.dtype != stored_dtype:
            raise ShardError(where, f"{name}.npy has dtype {array.dtype}, expected {stored_dtype} for {dtype}")
        if tuple(array.shape) != shape:
            raise ShardError(where, f"{name}.npy has shape {list(array.shape)}, expected {list(shape)} "
                                    f"(num_frames {t}, num_patches {n}, token_width {c})")
    if len(sample.frames) != t:
        raise ShardError(where, f"frames.json has {len(sample.frames)} frames, tokens have {t}")
    ranks = [row.get("rank") for row in sample.frames]
    if ranks != list(range(t)):
        raise ShardError(where, f"frames.json ranks are not 0..{t - 1} in order")
    _validate_points(sample, where, t, n)
    n_jpegs = len(sample.jpegs) if sample.jpegs is not None else 0
    if bool(meta["with_frames"]) != (sample.jpegs is not None) or (sample.jpegs is not None and n_jpegs != t):
        raise ShardError(where, f"meta with_frames={meta['with_frames']} with {t} frames, but the sample has "
                                f"{n_jpegs} JPEG frames")
    return sample



def _validate_points(sample: TokenSample, where: str, t: int, n: int) -> None:
    """The three point members are present together, exactly when meta says with_points, with their source."""
    arrays = {"points.npy": sample.points, "points_cam0.npy": sample.points_cam0,
              "points_valid.npy": sample.points_valid}
    present = [name for name, a in arrays.items() if a is not None]
    if present and len(present) != len(arrays):
        raise ShardError(where, f"point members come together: has {present}, lacks "
                                f"{[name for name in arrays if name not in present]}")
    if bool(sample.meta["with_points"]) != bool(present):
        raise ShardError(where, f"meta with_points={sample.meta['with_points']} but points.npy is "
                                f"{'present' if present else 'absent'}")
    if not present:
        return
    if sample.meta.get("points_source") not in POINTS_SOURCES:
        raise ShardError(where, f"meta points_source is {sample.meta.get('points_source')!r}, expected one of "
                                f"{list(POINTS_SOURCES)}")
    for name, dtype, shape in (("points.npy", np.float32, (t, n, 3)), ("points_cam0.npy", np.float32, (t, n, 3)),
                               ("points_valid.npy", np.bool_, (t, n))):
        array = arrays[name]
        if array.dtype != dtype or tuple(array.shape) != shape:
            raise ShardError(where, f"{name} is {array.dtype} {list(array.shape)}, expected "
                                    f"{np.dtype(dtype)} {list(shape)}")


def write_sample(writer: ShardWriter, sample: TokenSample) -> None:
    """Append one validated token sample to a shard writer (its source digest goes into the shard's marker)."""
    source = sample.meta.get("source_sha256")
    writer.write_members(sample.key, sample_members(sample), None if source is None else str(source))


# ---- reading -----------------------------------------------------------------------------------------------------

_NPY_MEMBERS = ("camera.npy", "patch.npy", "points.npy", "points_cam0.npy", "points_valid.npy")


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ShardError(where, f"not valid JSON ({exc})") from None


def _optional_npy(members: Mapping[str, bytes], name: str, where: str) -> np.ndarray | None:
    return load_npy(members[name], f"{where}.{name}") if name in members else None


def sample_from_members(key: str, members: Mapping[str, bytes], where: str,
                        expect: Mapping[str, Any] | None = None) -> TokenSample:
    """Build and validate a sample from its tar members (suffix after the key -> bytes)."""
    for required in ("meta.json", "frames.json", "camera.npy", "patch.npy"):
        if required not in members:
            raise ShardError(f"{where}:{key}", f"member {required} is missing")
    frame_names = [name for name in members if name.startswith("frame_") and name.endswith(".jpg")]
    unknown = sorted(set(members) - {"meta.json", "frames.json", *_NPY_MEMBERS, *frame_names})
    if unknown:
        raise ShardError(f"{where}:{key}", f"unexpected members {unknown}")
    meta = _load_json(members["meta.json"], f"{where}:{key}.meta.json")
    frames = _load_json(members["frames.json"], f"{where}:{key}.frames.json")
    if not isinstance(meta, dict) or not isinstance(frames, list):
        raise ShardError(f"{where}:{key}", "meta.json must be an object and frames.json a list")
    jpegs = None
    if frame_names:
        # Compare as sets: names sort as text, so frame_1000.jpg would come before frame_101.jpg.
        expected_names = [frame_member(i) for i in range(len(frame_names))]
        if set(frame_names) != set(expected_names):
            raise ShardError(f"{where}:{key}", f"JPEG frames are not numbered 0..{len(frame_names) - 1}")
        jpegs = [members[name] for name in expected_names]
    sample = TokenSample(
        key=key,
        camera=load_npy(members["camera.npy"], f"{where}:{key}.camera.npy"),
        patch=load_npy(members["patch.npy"], f"{where}:{key}.patch.npy"),
        frames=frames, meta=meta,
        points=_optional_npy(members, "points.npy", f"{where}:{key}"), jpegs=jpegs,
        points_cam0=_optional_npy(members, "points_cam0.npy", f"{where}:{key}"),
        points_valid=_optional_npy(members, "points_valid.npy", f"{where}:{key}"))
    return validate_sample(sample, f"{where}:{key}", expect)


def sample_from_wds(raw: Mapping[str, Any], expect: Mapping[str, Any] | None = None) -> TokenSample:
    """A validated sample from a raw (undecoded) webdataset sample dict, for ``wds.WebDataset(...).map(...)``
    pipelines such as the trainer's (split by node and worker as it needs)."""
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return sample_from_members(raw["__key__"], members, str(raw.get("__url__", "?")), expect)


def read_shard(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Iterator[TokenSample]:
    """Validated samples of one shard file, read with webdataset (keys split at the first dot, no decoding)."""
    for key, members in iter_raw_samples(path):
        yield sample_from_members(key, members, str(path), expect)


def iter_samples(tokens_dir: str | os.PathLike, *, expect: Mapping[str, Any] | None = None,
                 verify_sha256: bool = True, shards: Iterable[str] | None = None) -> Iterator[TokenSample]:
    """Every sample listed in ``tokens_dir/index.json``, validated, in index order.

    Fails with :class:`ShardError` when a shard's sha256 or size differs from the index, when a shard holds other
    keys than the index lists, or when a sample has a wrong shape, frame count or dtype, or a meta field differs from
    ``expect`` (e.g. ``{"checkpoint_sha256": sha}``). ``shards`` restricts reading to these file names.
    """
    for path, listed in checked_shards(tokens_dir, verify_sha256=verify_sha256, shards=shards):
        keys = []
        for sample in read_shard(path, expect):
            keys.append(sample.key)
            yield sample
        if keys != listed:
            raise ShardError(path, f"holds samples {keys}, index.json lists {listed}")
