"""The geometry-token sample format, declared once: members, codecs, validation, writer and reader.

```
ROOT/tokens/shard-000000.tar        samples, each <key>.meta.json, .frames.json, .camera.npy, .patch.npy
                                    [, .camera_scale.npy, .patch_scale.npy] [, .points.npy, .points_cam0.npy,
                                    .points_valid.npy] [, .frame_000.jpg ...]
                                    (key = scene_key(dataset, scene_id))
ROOT/tokens/_done/shard-000000.json done-marker of a complete shard (pipeline.core.shards)
ROOT/tokens/index.json              every complete shard (file, keys, size, sha256), rebuilt from the markers
```

Members of a sample:

- ``camera.npy`` [T, 1, C] and ``patch.npy`` [T, N, C]: tokens stored with the codec named by ``meta["dtype"]``
  (:data:`TOKEN_CODECS`; ``meta["storage"]`` names how the bits are laid out):

  * ``float32``, ``float16``: the values themselves (``"native"``); ``bfloat16``: its uint16 bit patterns
    (``"uint16_bits"``, numpy has no bfloat16). All three decode to float32 exactly.
  * ``float8_e4m3`` (``"e4m3_bits_scaled"``, uint8 bit patterns of OCP FP8 E4M3, the ``float8_e4m3fn`` of torch and
    CUDA) and ``int8`` (``"int8_scaled"``): lossy, one byte per value, with float32 scales.
- ``camera_scale.npy`` and ``patch_scale.npy`` [T, 1, C] float32, for the scaled codecs only: per frame and channel,
  the largest magnitude over the frame's tokens divided by the codec's largest code (448 or 127), so each frame's
  channel uses the codec's whole range. A token decodes to ``code * scale`` (float32).
- ``frames.json``: the frame manifest rows (rank, frame_index, timestamp, camera_to_world, valid), T of them.
  ``camera_to_world`` is always the *sensor* pose from the scene (16 floats, row-major, OpenCV camera, z-up world;
  16 nulls and ``valid`` false where the scene has none, e.g. plain videos). With CUT3R points
  (``meta["estimated_poses"] == "cut3r"``) every row also carries the model's own estimate, never mixed with it:

  * ``estimated_camera_to_world``: 16 floats, row-major 4x4 camera-to-world (OpenCV camera, a rigid rotation and the
    model's scale), in the frame ``meta["points_frame"]`` names, the frame of ``points.npy``;
  * ``estimated_pose_source``: ``"cut3r"`` (the pose head).

  The pose head is trained to give frame 0 the identity in camera 0; nothing forces it, so a randomly initialised
  model gives any rigid pose there.
- ``meta.json``: model id, checkpoint sha256, model config, preprocessing / input size, dtype (the codec), code
  version; with CUT3R points also ``estimated_poses`` ("cut3r") and ``points_frame`` (below).
- ``points.npy`` [T, N, 3] float32, ``points_cam0.npy`` [T, N, 3] float32, ``points_valid.npy`` [T, N] bool
  (optional, all three or none; ``meta["with_points"]``): one 3D point per patch in the world and in the first
  manifest frame's camera frame, and where it is valid (invalid entries are 0); ``meta["points_source"]`` says where
  they come from: "depth" (sensor depth and poses) or "cut3r" (the model's point head). ``meta["points_frame"]``
  (CUT3R points only; absent means "world_z_up") names the world: "world_z_up" (the scene's z-up world, through the
  first manifest frame's sensor pose) or "camera0" (a scene without a sensor pose for its first frame, such as a
  plain video: the first frame's camera is the world, and ``points.npy`` equals ``points_cam0.npy``). See
  :mod:`pipeline.core.patch_points`.
- ``frame_000.jpg`` ... (optional): the 384x384 RGB frames the trainer's vision tower reads.

Readers never see the codec: :meth:`TokenSample.camera_tokens` / :meth:`TokenSample.patch_tokens` and
:func:`decode_tokens` return float32 whatever it is.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from pipeline.core.atomic import atomic_open, dumps_json
from pipeline.core.patch_points import POINTS_FRAMES, POINTS_SOURCES
from pipeline.core.shards import (ShardError, ShardWriter, checked_shards, iter_raw_samples, load_npy, npy_bytes,
                                  read_ahead, read_index)


# ---- token codecs ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenCodec:
    """How token values are stored: the numpy dtype of the stored array, the storage tag recorded in meta.json, and
    for the one-byte codecs the largest code magnitude that a channel's largest value is scaled to."""

    name: str
    stored: np.dtype
    storage: str
    max_code: float | None = None       # None: lossless, no scales

    @property
    def scaled(self) -> bool:
        return self.max_code is not None


E4M3_MAX = 448.0                        # largest finite float8_e4m3fn value (exponent 15, mantissa 6)
INT8_MAX = 127.0                        # symmetric: -128 is never used

TOKEN_CODECS: dict[str, TokenCodec] = {codec.name: codec for codec in (
    TokenCodec("float32", np.dtype(np.float32), "native"),
    TokenCodec("bfloat16", np.dtype(np.uint16), "uint16_bits"),
    TokenCodec("float16", np.dtype(np.float16), "native"),
    TokenCodec("float8_e4m3", np.dtype(np.uint8), "e4m3_bits_scaled", E4M3_MAX),
    TokenCodec("int8", np.dtype(np.int8), "int8_scaled", INT8_MAX),
)}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8_e4m3": "float8_e4m3"}

ESTIMATED_POSE_SOURCES = ("cut3r",)
RIGID_TOLERANCE = 1e-3                  # |R^T R - I| and |det R - 1| of a stored estimated pose


def with_estimated_poses(frames: list[dict[str, Any]], camera_to_world: np.ndarray,
                         source: str) -> list[dict[str, Any]]:
    """frames.json rows with a model's camera-to-world [T, 4, 4] added as ``estimated_camera_to_world`` and
    ``estimated_pose_source`` (the rows' sensor ``camera_to_world`` is left as it is)."""
    poses = np.asarray(camera_to_world, np.float64)
    if poses.shape != (len(frames), 4, 4):
        raise ValueError(f"expected {len(frames)} poses [T, 4, 4], got shape {list(poses.shape)}")
    return [{**row, "estimated_camera_to_world": [float(v) for v in pose.reshape(16)], "estimated_pose_source": source}
            for row, pose in zip(frames, poses)]


REQUIRED_META = ("key", "dataset", "scene_id", "model_id", "checkpoint_sha256", "dtype", "storage", "num_frames",
                 "num_patches", "token_width", "input_size", "with_points", "with_frames", "code_version")


def token_dtype_name(dtype: str) -> str:
    """Canonical codec name (a key of :data:`TOKEN_CODECS`) from it or its short form (bf16, fp16, fp32, fp8_e4m3)."""
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in TOKEN_CODECS:
        raise ValueError(f"unknown token dtype {dtype!r} (expected one of {sorted(TOKEN_CODECS)} or "
                         f"{'/'.join(_DTYPE_ALIASES)})")
    return name


def token_codec(dtype: str) -> TokenCodec:
    return TOKEN_CODECS[token_dtype_name(dtype)]


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
    return decode_tokens(bits, "bfloat16")


def float32_to_e4m3_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> float8 E4M3 (``float8_e4m3fn``) bit patterns (uint8): round to nearest even, saturating at +-448.

    Equal, bit for bit, to torch's ``.to(torch.float8_e4m3fn)`` (torch 2.13 on CPU), which also saturates; an
    out-of-range value never becomes the NaN pattern. NaN itself is refused (tokens are checked finite before they
    are stored).
    """
    shape = np.shape(values)
    x = np.asarray(values, dtype=np.float32, order="C").reshape(-1)
    if np.isnan(x).any():
        raise ValueError("float8 e4m3 encoding of NaN values")
    magnitude = np.abs(x)
    bits = magnitude.view(np.uint32)
    # Normal range (>= 2**-6): keep 3 of float32's 23 mantissa bits, rounding half to even on the 20 dropped ones (a
    # carry moves into the exponent, as it should): code = (float32 exponent << 3 | 3 mantissa bits) rebiased from
    # 127 to 7, i.e. minus 120 << 3. Past 448 it is clamped to 0x7E (0x7F would be NaN). In place, few passes.
    codes32 = bits >> 20
    codes32 &= 1
    codes32 += 0x7FFFF
    codes32 += bits
    codes32 >>= 20
    np.minimum(codes32, (120 << 3) + 0x7E, out=codes32)
    codes32 -= 120 << 3  # wraps below the normal range: those codes are replaced just below
    codes = codes32.astype(np.uint8)
    # Zero and the subnormals (< 2**-6, few in practice): multiples of 2**-9, so the code is the value in those units
    # (0..8, where 8 is the smallest normal number); the scaling is exact.
    small = np.flatnonzero(magnitude < np.float32(2.0 ** -6))
    if small.size:
        codes[small] = np.rint(magnitude[small] * np.float32(2.0 ** 9)).astype(np.uint8)
    codes |= (x.view(np.uint32) >> 24).astype(np.uint8) & np.uint8(0x80)  # the sign bit
    return codes.reshape(shape)


def _e4m3_table() -> np.ndarray:
    bits = np.arange(256, dtype=np.int64)
    exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
    magnitude = np.where(exponent == 0, mantissa * 2.0 ** -9, (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    magnitude[(exponent == 0xF) & (mantissa == 0x7)] = np.nan
    return np.where(bits >> 7, -magnitude, magnitude).astype(np.float32)


E4M3_VALUES = _e4m3_table()              # bit pattern -> float32 value (exact)
# Two codes at a time: uint16 index lo + 256 * hi (little-endian pairs of bytes) -> the two float32 values, as one
# uint64: half the lookups of E4M3_VALUES, from a 512 KiB table that stays in cache.
_E4M3_PAIRS = np.ascontiguousarray(np.stack(np.meshgrid(E4M3_VALUES, E4M3_VALUES), axis=-1)).view(np.uint64).ravel()


def e4m3_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float8 E4M3 bit patterns (uint8) -> float32 (exact)."""
    return _decode(bits, "float8_e4m3", None, None)


def channel_scales(values: np.ndarray, max_code: float) -> np.ndarray:
    """[T, K, C] tokens -> [T, 1, C] float32 scales: each frame's and channel's largest magnitude / ``max_code``.
    A channel that is zero in a frame gets scale 1 (its codes are 0 whatever the scale)."""
    peak = np.abs(np.asarray(values, dtype=np.float32)).max(axis=1, keepdims=True)
    scale = peak / np.float32(max_code)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize_tokens(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """float tokens [T, K, C] -> (codes, scales [T, 1, C] float32) of a scaled codec (float8_e4m3 or int8)."""
    codec = token_codec(dtype)
    if not codec.scaled:
        raise ValueError(f"{codec.name} is not a scaled codec (use encode_tokens)")
    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected tokens [T, K, C], got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{codec.name} encoding of non-finite token values")
    scale = channel_scales(x, codec.max_code)
    scaled = x / scale  # float32 division, correctly rounded: the same codes on every machine
    if codec.name == "int8":
        codes = np.clip(np.rint(scaled), -INT8_MAX, INT8_MAX).astype(np.int8)
    else:
        codes = float32_to_e4m3_bits(scaled)
    return codes, scale


def encode_tokens(values: np.ndarray, dtype: str) -> np.ndarray:
    """float tokens -> the stored array of a lossless codec (uint16 bit patterns for bfloat16)."""
    codec = token_codec(dtype)
    if codec.scaled:
        raise ValueError(f"{codec.name} stores scales next to the codes: use store_tokens or quantize_tokens")
    if codec.name == "bfloat16":
        return float32_to_bf16_bits(values)
    return np.ascontiguousarray(values, dtype=codec.stored)


def store_tokens(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float tokens [T, K, C] -> (stored array, scales [T, 1, C] or None) for any codec."""
    if token_codec(dtype).scaled:
        return quantize_tokens(values, dtype)
    return encode_tokens(values, dtype), None


def decode_tokens(stored: np.ndarray, dtype: str, scale: np.ndarray | None = None, *,
                  threads: int | None = None) -> np.ndarray:
    """The stored array of a codec -> float32 (exact for the lossless codecs; ``code * scale`` for the scaled ones,
    which need ``scale``, broadcastable to the codes: [T, 1, C] for [T, N, C]).

    float32 tokens are returned as they are (no copy). The others are decoded into a new array, split over the first
    (frame) axis between the calling thread and a shared pool when the output is at least
    :data:`PARALLEL_DECODE_BYTES` (``threads`` blocks at most; default :func:`decode_threads`). Every value is
    computed on its own, so the result is the same bit for bit whatever the split.
    """
    codec = token_codec(dtype)
    if codec.name == "float32":
        return np.asarray(stored, dtype=np.float32)
    if codec.scaled and scale is None:
        raise ValueError(f"{codec.name} tokens need their scales to be decoded")
    return _decode(stored, codec.name, scale if codec.scaled else None, threads)


def tokens_as_torch(stored: np.ndarray, dtype: str):
    """The stored array of a lossless codec as a torch tensor of its real dtype (bf16 bit patterns are reinterpreted,
    not converted)."""
    import torch

    codec = token_codec(dtype)
    if codec.scaled:
        raise ValueError(f"{codec.name} tokens have no torch dtype of their own: decode them with their scales")
    if codec.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(stored, np.uint16).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(stored))


# ---- decoding, in blocks of frames on a thread pool ----------------------------------------------------------------

DECODE_THREADS_ENV = "VLM3R_DECODE_THREADS"
PARALLEL_DECODE_BYTES = 4 << 20         # float32 output below this is decoded on the calling thread
_E4M3_BLOCK_VALUES = 1 << 16            # codes per table lookup: its indices, output and table stay in L2

_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def decode_threads() -> int:
    """Threads that decode one large token array: ``$VLM3R_DECODE_THREADS``, else 1.

    One by default: the readers run inside training processes, DataLoader workers and Ray workers that already
    have their own threads (torch's, gloo's) and share the node's CPUs. A process that only reads (an export, a
    benchmark) sets it, e.g. to :func:`available_cpus` capped at 4."""
    value = os.environ.get(DECODE_THREADS_ENV, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{DECODE_THREADS_ENV} must be a positive integer, got {value!r}")
    return int(value)


def available_cpus() -> int:
    """CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, created on first use (and again, larger, when more workers are asked for; the old one's
    threads end once it is unreferenced)."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="token-decode")
            _pool_workers = workers
        return _pool


def _forget_pool() -> None:
    # A forked child (a DataLoader worker, say) inherits the pool object but none of its threads: start afresh.
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _decode(stored: np.ndarray, codec: str, scale: np.ndarray | None, threads: int | None) -> np.ndarray:
    """Decode ``stored`` (codec bfloat16, float16, float8_e4m3 or int8; ``scale`` None for fp8 gives the bare
    E4M3 values) into a new float32 array, in blocks of its first axis."""
    if np.ndim(stored) == 0:  # one value (np.ascontiguousarray would make it [1])
        return _decode(np.reshape(stored, 1), codec, scale, 1).reshape(())
    if codec in ("bfloat16", "float8_e4m3"):  # bit patterns: reinterpreted, and fp8 codes index a table
        stored = np.ascontiguousarray(stored, dtype=TOKEN_CODECS[codec].stored)
    else:
        stored = np.ascontiguousarray(stored)
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float32)
        if np.broadcast_shapes(stored.shape, scale.shape) != stored.shape:
            raise ValueError(f"scales of shape {list(scale.shape)} do not broadcast to the codes' "
                             f"{list(stored.shape)}")
        scale = scale.reshape((1,) * (stored.ndim - scale.ndim) + scale.shape)
    out = np.empty(stored.shape, np.float32)
    if out.size == 0:
        return out
    frames = stored.shape[0]
    blocks = min(frames, decode_threads() if threads is None else max(1, int(threads)))
    if out.nbytes < PARALLEL_DECODE_BYTES or blocks < 2:
        _decode_block(stored, codec, scale, out)
        return out
    bounds = [frames * i // blocks for i in range(blocks + 1)]

    def block(i: int) -> None:
        part = slice(bounds[i], bounds[i + 1])
        part_scale = None if scale is None else scale[part] if scale.shape[0] > 1 else scale
        _decode_block(stored[part], codec, part_scale, out[part])

    pool = _decode_pool(blocks - 1)
    futures = [pool.submit(block, i) for i in range(1, blocks)]
    try:
        block(0)  # the calling thread decodes the first block itself
    finally:
        wait(futures)  # no block still writes into ``out`` once this returns or raises
    for future in futures:
        future.result()  # re-raises a block's error
    return out


def _decode_block(stored: np.ndarray, codec: str, scale: np.ndarray | None, out: np.ndarray) -> None:
    """Decode C-contiguous ``stored`` into ``out`` (same shape, float32), one pass over each."""
    if codec == "bfloat16":
        np.left_shift(stored, 16, out=out.view(np.uint32), dtype=np.uint32)  # widened and shifted in one loop
    elif codec == "float16":
        np.copyto(out, stored)
    elif codec == "int8":
        np.multiply(stored, scale, out=out, dtype=np.float32)  # int8 -> float32 and the product in one loop
    else:
        _e4m3_block(stored, scale, out)


def _e4m3_block(codes: np.ndarray, scale: np.ndarray | None, out: np.ndarray) -> None:
    """Table lookup, then ``* scale`` in place, up to :data:`_E4M3_BLOCK_VALUES` codes at a time: np.take widens
    its indices to intp, and on whole frames that temporary (8 bytes a code) and the output would make extra trips
    to memory.
    Two codes per lookup (little-endian uint16 pairs into :data:`_E4M3_PAIRS`) for [T, N, C] codes of even C with
    [T, 1, C] scales; any other shape in one go. mode="wrap": every index is in range, and the default mode would
    buffer ``out``."""
    if codes.ndim == 3 and codes.shape[2] % 2 == 0 and sys.byteorder == "little" \
            and (scale is None or scale.shape[1] == 1):
        pairs, values = codes.view(np.uint16), out.view(np.uint64)  # [T, N, C / 2] each
        if pairs.flags.aligned and values.flags.aligned:
            _e4m3_pairs_block(pairs, values, scale, out)
            return
    np.take(E4M3_VALUES, codes, out=out, mode="wrap")
    if scale is not None:
        np.multiply(out, scale, out=out)


def _e4m3_pairs_block(pairs: np.ndarray, values: np.ndarray, scale: np.ndarray | None, out: np.ndarray) -> None:
    frames, rows, width = out.shape
    step = max(1, _E4M3_BLOCK_VALUES // width)  # token rows per lookup
    if rows <= step:  # small frames (camera tokens): whole frames per lookup
        step = max(1, step // rows)
        for i in range(0, frames, step):
            part = slice(i, i + step)
            np.take(_E4M3_PAIRS, pairs[part], out=values[part], mode="wrap")
            if scale is not None:
                np.multiply(out[part], scale[part] if scale.shape[0] > 1 else scale, out=out[part])
        return
    for i in range(frames):
        frame_scale = None if scale is None else scale[i] if scale.shape[0] > 1 else scale[0]  # [1, C]
        for j in range(0, rows, step):
            part = (i, slice(j, j + step))
            np.take(_E4M3_PAIRS, pairs[part], out=values[part], mode="wrap")
            if frame_scale is not None:
                np.multiply(out[part], frame_scale, out=out[part])


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
    camera_scale: np.ndarray | None = None  # [T, 1, C] float32, scaled codecs only
    patch_scale: np.ndarray | None = None   # [T, 1, C] float32, scaled codecs only

    @classmethod
    def from_float(cls, key: str, camera: np.ndarray, patch: np.ndarray, frames: list[dict[str, Any]],
                   meta: dict[str, Any], points: np.ndarray | None = None,
                   jpegs: list[bytes] | None = None, points_cam0: np.ndarray | None = None,
                   points_valid: np.ndarray | None = None) -> "TokenSample":
        """A sample from float tokens, stored with the codec named by ``meta["dtype"]``."""
        camera_stored, camera_scale = store_tokens(camera, meta["dtype"])
        patch_stored, patch_scale = store_tokens(patch, meta["dtype"])
        return cls(key, camera_stored, patch_stored, frames, meta, points, jpegs, points_cam0, points_valid,
                   camera_scale, patch_scale)

    @property
    def num_frames(self) -> int:
        return int(self.camera.shape[0])

    def camera_tokens(self) -> np.ndarray:
        """[T, 1, C] float32, whatever the codec."""
        return decode_tokens(self.camera, self.meta["dtype"], self.camera_scale)

    def patch_tokens(self) -> np.ndarray:
        """[T, N, C] float32, whatever the codec."""
        return decode_tokens(self.patch, self.meta["dtype"], self.patch_scale)

    def token_members(self) -> list[tuple[str, np.ndarray]]:
        """(member suffix, array) of the stored tokens and, for a scaled codec, their scales."""
        members = [("camera.npy", self.camera), ("patch.npy", self.patch)]
        if self.camera_scale is not None:
            members.append(("camera_scale.npy", self.camera_scale))
        if self.patch_scale is not None:
            members.append(("patch_scale.npy", self.patch_scale))
        return members

    def point_members(self) -> list[tuple[str, np.ndarray]]:
        """(member suffix, array) of the per-patch points, when the sample has them."""
        if self.points is None:
            return []
        return [("points.npy", self.points), ("points_cam0.npy", self.points_cam0),
                ("points_valid.npy", self.points_valid)]

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
        *[(f"{sample.key}.{suffix}", npy_bytes(array))
          for suffix, array in sample.token_members() + sample.point_members()],
    ]
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
        codec = token_codec(meta["dtype"])
    except ValueError as exc:
        raise ShardError(where, str(exc)) from None
    dtype, stored_dtype = codec.name, codec.stored
    if meta["storage"] != codec.storage:
        raise ShardError(where, f"dtype {dtype} must be stored as {codec.storage!r}, meta says {meta['storage']!r}")
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
    for name, scale in (("camera_scale", sample.camera_scale), ("patch_scale", sample.patch_scale)):
        if not codec.scaled:
            if scale is not None:
                raise ShardError(where, f"{name}.npy is present but dtype {dtype} has no scales")
            continue
        if scale is None:
            raise ShardError(where, f"{name}.npy is missing: dtype {dtype} stores per-channel scales")
        if scale.dtype != np.float32 or tuple(scale.shape) != (t, 1, c):
            raise ShardError(where, f"{name}.npy is {scale.dtype} {list(scale.shape)}, expected float32 {[t, 1, c]}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ShardError(where, f"{name}.npy holds scales that are not finite and positive")
    if len(sample.frames) != t:
        raise ShardError(where, f"frames.json has {len(sample.frames)} frames, tokens have {t}")
    ranks = [row.get("rank") for row in sample.frames]
    if ranks != list(range(t)):
        raise ShardError(where, f"frames.json ranks are not 0..{t - 1} in order")
    _validate_points(sample, where, t, n)
    _validate_estimated_poses(sample, where)
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


def _validate_estimated_poses(sample: TokenSample, where: str) -> None:
    """Estimated poses come with CUT3R points, in every frame row, rigid and marked with their source; the points'
    frame is named, and a "camera0" world is camera 0 itself."""
    meta = sample.meta
    source = meta.get("estimated_poses")
    marked = [row["rank"] for row in sample.frames
              if "estimated_camera_to_world" in row or "estimated_pose_source" in row]
    if source is None:
        if marked or "points_frame" in meta:
            raise ShardError(where, f"meta.json has no estimated_poses, but frames.json rows {marked[:5]} carry "
                                    f"estimated poses or meta.json a points_frame")
        return
    if source not in ESTIMATED_POSE_SOURCES or not meta["with_points"] or meta.get("points_source") != source:
        raise ShardError(where, f"meta estimated_poses is {source!r} with points_source "
                                f"{meta.get('points_source')!r}; expected one of {list(ESTIMATED_POSE_SOURCES)}, "
                                f"the same as points_source")
    if meta.get("points_frame") not in POINTS_FRAMES:
        raise ShardError(where, f"meta points_frame is {meta.get('points_frame')!r}, expected one of "
                                f"{list(POINTS_FRAMES)}")
    for row in sample.frames:
        pose = row.get("estimated_camera_to_world")
        problem = None
        if row.get("estimated_pose_source") != source:
            problem = f"estimated_pose_source is {row.get('estimated_pose_source')!r}, expected {source!r}"
        elif not (isinstance(pose, list) and len(pose) == 16
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pose)):
            problem = "estimated_camera_to_world is not a list of 16 numbers"
        else:
            c2w = np.asarray(pose, np.float64).reshape(4, 4)
            rot = c2w[:3, :3]
            if not np.isfinite(c2w).all():
                problem = "estimated_camera_to_world is not finite"
            elif (np.abs(c2w[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6
                  or np.abs(rot.T @ rot - np.eye(3)).max() > RIGID_TOLERANCE
                  or abs(np.linalg.det(rot) - 1.0) > RIGID_TOLERANCE):
                problem = "estimated_camera_to_world is not a rigid camera-to-world matrix"
        if problem is not None:
            raise ShardError(where, f"frames.json rank {row['rank']}: {problem}")
    if meta["points_frame"] == "camera0" and not np.array_equal(sample.points, sample.points_cam0):
        raise ShardError(where, "meta points_frame is 'camera0', but points.npy differs from points_cam0.npy")


def write_sample(writer: ShardWriter, sample: TokenSample,
                 unit_marker: Mapping[str, Any] | None = None) -> None:
    """Append one validated token sample to a shard writer; ``unit_marker`` as in
    :meth:`pipeline.core.shards.ShardWriter.write_members`."""
    writer.write_members(sample.key, sample_members(sample), unit_marker)


# ---- reading -----------------------------------------------------------------------------------------------------

_NPY_MEMBERS = ("camera.npy", "patch.npy", "camera_scale.npy", "patch_scale.npy", "points.npy", "points_cam0.npy",
                "points_valid.npy")


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ShardError(where, f"not valid JSON ({exc})") from None


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
    arrays = {name: load_npy(members[name], f"{where}:{key}.{name}") if name in members else None
              for name in _NPY_MEMBERS}
    sample = TokenSample(
        key=key, camera=arrays["camera.npy"], patch=arrays["patch.npy"], frames=frames, meta=meta,
        points=arrays["points.npy"], jpegs=jpegs, points_cam0=arrays["points_cam0.npy"],
        points_valid=arrays["points_valid.npy"], camera_scale=arrays["camera_scale.npy"],
        patch_scale=arrays["patch_scale.npy"])
    return validate_sample(sample, f"{where}:{key}", expect)


def sample_from_wds(raw: Mapping[str, Any], expect: Mapping[str, Any] | None = None) -> TokenSample:
    """A validated sample from a raw (undecoded) webdataset sample dict, for ``wds.WebDataset(...).map(...)``
    pipelines such as the trainer's (split by node and worker as it needs)."""
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return sample_from_members(raw["__key__"], members, str(raw.get("__url__", "?")), expect)


def read_shard(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Iterator[TokenSample]:
    """Validated samples of one shard file (:func:`pipeline.core.shards.iter_raw_samples`: members grouped as
    webdataset groups them, each payload read once)."""
    for key, members in iter_raw_samples(path):
        yield sample_from_members(key, members, str(path), expect)


def iter_samples(tokens_dir: str | os.PathLike, *, expect: Mapping[str, Any] | None = None,
                 verify_sha256: bool = True, shards: Iterable[str] | None = None,
                 read_ahead_samples: int = 1) -> Iterator[TokenSample]:
    """Every sample listed in ``tokens_dir/index.json``, validated, in index order.

    Fails with :class:`ShardError` when a shard's sha256 or size differs from the index, when a shard holds other
    keys than the index lists, or when a sample has a wrong shape, frame count or dtype, or a meta field differs from
    ``expect`` (e.g. ``{"checkpoint_sha256": sha}``). ``shards`` restricts reading to these file names.

    Reading (and hashing) runs ``read_ahead_samples`` samples ahead of the caller on a background thread
    (:func:`pipeline.core.shards.read_ahead`), so the disk works while the caller decodes; 0 reads in the calling
    thread. Either way the samples, their order and the errors are the same.
    """
    return read_ahead(_iter_samples(tokens_dir, expect, verify_sha256, shards), read_ahead_samples)


def _iter_samples(tokens_dir: str | os.PathLike, expect: Mapping[str, Any] | None, verify_sha256: bool,
                  shards: Iterable[str] | None) -> Iterator[TokenSample]:
    for path, listed in checked_shards(tokens_dir, verify_sha256=verify_sha256, shards=shards):
        keys = []
        for sample in read_shard(path, expect):
            keys.append(sample.key)
            yield sample
        if keys != listed:
            raise ShardError(path, f"holds samples {keys}, index.json lists {listed}")


def find_sample(tokens_dir: str | os.PathLike, key: str, *, verify_sha256: bool = True) -> TokenSample:
    """The sample ``key`` of a token shard set, found through ``index.json`` (only its shard is read).

    Raises :class:`ShardError` naming the index when the key is not listed (or the index is missing), and like
    :func:`iter_samples` when its shard does not match the index."""
    tokens_dir = Path(tokens_dir)
    index = read_index(tokens_dir)
    holder = next((entry["file"] for entry in index["shards"] if key in entry["keys"]), None)
    if holder is None:
        listed = [k for entry in index["shards"] for k in entry["keys"]]
        hint = f"; it lists e.g. {listed[:3]}" if listed else "; it lists no sample"
        raise ShardError(tokens_dir / "index.json", f"no sample with key {key!r} ({len(listed)} samples{hint})")
    [(path, _)] = list(checked_shards(tokens_dir, verify_sha256=verify_sha256, shards=[holder]))
    for sample in read_shard(path):
        if sample.key == key:
            return sample
    raise ShardError(path, f"index.json lists key {key!r} in this shard, but the shard does not hold it")


def decoded_arrays(sample: TokenSample) -> dict[str, np.ndarray]:
    """A sample's tokens as float32 arrays, ``camera`` [T, 1, C] and ``patch`` [T, N, C], and its points when it has
    them: ``points`` and ``points_cam0`` [T, N, 3] float32 (world and first-camera frames), ``points_valid`` [T, N]
    bool."""
    arrays = {"camera": sample.camera_tokens(), "patch": sample.patch_tokens()}
    if sample.points is not None:
        arrays["points"] = np.asarray(sample.points, dtype=np.float32)
        arrays["points_cam0"] = np.asarray(sample.points_cam0, dtype=np.float32)
        arrays["points_valid"] = np.asarray(sample.points_valid, dtype=bool)
    return arrays


def write_decoded_npz(sample: TokenSample, out: str | os.PathLike) -> dict[str, np.ndarray]:
    """Write :func:`decoded_arrays` of ``sample`` to ``out`` (an ``.npz``, atomically); returns the arrays."""
    arrays = decoded_arrays(sample)
    with atomic_open(out, "wb") as fh:
        np.savez(fh, **arrays)
    return arrays
