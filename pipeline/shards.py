"""Geometry-token shards: WebDataset tar files of one sample per scene, their done-markers and index.

```
ROOT/tokens/shard-000000.tar        samples, each <key>.meta.json, .frames.json, .camera.npy, .patch.npy
                                    [, .points.npy] [, .frame_000.jpg ...]  (key = scene_key(dataset, scene_id))
ROOT/tokens/_done/shard-000000.json done-marker of a complete shard: keys, size, sha256, run identity and, per
                                    key, the sha256 of what the sample was made from (meta source_sha256)
ROOT/tokens/index.json              every complete shard (file, keys, size, sha256), rebuilt from the markers
```

Members of a sample:

- ``camera.npy`` [T, 1, C] and ``patch.npy`` [T, N, C]: tokens in the dtype named by ``meta["dtype"]``. bfloat16 has
  no numpy dtype, so it is stored losslessly as its uint16 bit patterns (``meta["storage"] == "uint16_bits"``);
  float16 and float32 are stored as themselves.
- ``frames.json``: the frame manifest rows (rank, frame_index, timestamp, camera_to_world, valid), T of them.
- ``meta.json``: model id, checkpoint sha256, model config, preprocessing / input size, dtype, code version.
- ``points.npy`` [T, N, 3] float32 (optional): per-patch 3D points in the first camera's frame.
- ``frame_000.jpg`` ... (optional): the 384x384 RGB frames the trainer's vision tower reads.

Shards are byte-reproducible: members are written with tarfile (USTAR) with a fixed mtime, uid/gid 0, empty user and
group names and mode 0444, and every payload is serialised deterministically. A shard is written to a temporary name,
renamed when complete, and only then gets its done-marker, so a marker always names a complete file.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.atomic import dumps_json, read_json, sha256_file, write_json
from pipeline.errors import InputError

SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
INDEX_NAME = "index.json"
MARKER_DIR = "_done"
INDEX_FORMAT = "vlm3r-tokens"
INDEX_FORMAT_VERSION = 1
TAR_MTIME = 0  # fixed member mtime (seconds since the epoch): same inputs give byte-identical shards
_TAR_BLOCK = 512

# Token dtypes: name recorded in meta.json -> (numpy dtype of the stored array, storage tag).
TOKEN_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "bfloat16": (np.dtype(np.uint16), "uint16_bits"),
    "float16": (np.dtype(np.float16), "native"),
    "float32": (np.dtype(np.float32), "native"),
}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

REQUIRED_META = ("key", "dataset", "scene_id", "model_id", "checkpoint_sha256", "dtype", "storage", "num_frames",
                 "num_patches", "token_width", "input_size", "with_points", "with_frames", "code_version")


class ShardError(InputError):
    """A shard, sample, index or marker that is malformed or does not match what the caller expects."""


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
    points: np.ndarray | None = None      # [T, N, 3] float32, first camera's frame
    jpegs: list[bytes] | None = None      # T JPEG files, 384x384 RGB

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
        from pipeline.frames import decode_image_bytes

        return [decode_image_bytes(data, f"{self.key}.{frame_member(i)}") for i, data in enumerate(self.jpegs or [])]


def frame_member(rank: int) -> str:
    return f"frame_{rank:03d}.jpg"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sample_members(sample: TokenSample) -> list[tuple[str, bytes]]:
    """(member name, payload) of a sample in the order they go into the tar; validates the sample first."""
    validate_sample(sample, where=sample.key)
    members = [
        (f"{sample.key}.meta.json", dumps_json(sample.meta).encode("utf-8")),
        (f"{sample.key}.frames.json", dumps_json(sample.frames).encode("utf-8")),
        (f"{sample.key}.camera.npy", _npy_bytes(sample.camera)),
        (f"{sample.key}.patch.npy", _npy_bytes(sample.patch)),
    ]
    if sample.points is not None:
        members.append((f"{sample.key}.points.npy", _npy_bytes(sample.points)))
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
    if bool(meta["with_points"]) != (sample.points is not None):
        raise ShardError(where, f"meta with_points={meta['with_points']} but points.npy is "
                                f"{'absent' if sample.points is None else 'present'}")
    if sample.points is not None:
        if sample.points.dtype != np.float32 or tuple(sample.points.shape) != (t, n, 3):
            raise ShardError(where, f"points.npy is {sample.points.dtype} {list(sample.points.shape)}, "
                                    f"expected float32 {[t, n, 3]}")
    n_jpegs = len(sample.jpegs) if sample.jpegs is not None else 0
    if bool(meta["with_frames"]) != (sample.jpegs is not None) or (sample.jpegs is not None and n_jpegs != t):
        raise ShardError(where, f"meta with_frames={meta['with_frames']} with {t} frames, but the sample has "
                                f"{n_jpegs} JPEG frames")
    return sample


# ---- writing -----------------------------------------------------------------------------------------------------

def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def marker_path(tokens_dir: Path, file_name: str) -> Path:
    return Path(tokens_dir) / MARKER_DIR / (Path(file_name).stem + ".json")


def _padded(size: int) -> int:
    return -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _closed_tar_size(offset: int) -> int:
    """Size of a tar file whose members end at ``offset`` once closed: tarfile appends two zero blocks and pads the
    archive to a whole record (``tarfile.RECORDSIZE`` = 20 blocks)."""
    end = offset + 2 * _TAR_BLOCK
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


@dataclass(frozen=True)
class ShardRecord:
    """A complete shard as its done-marker and the index describe it."""

    file: str                             # file name inside ROOT/tokens
    keys: tuple[str, ...]
    size_bytes: int
    sha256: str
    identity: dict[str, Any] = field(default_factory=dict, compare=False)  # the run's identity (model, config)
    sources: dict[str, str] = field(default_factory=dict, compare=False)   # key -> meta source_sha256

    @property
    def index(self) -> int:
        match = SHARD_RE.match(self.file)
        assert match, self.file
        return int(match.group(1))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "keys": list(self.keys), "num_samples": len(self.keys),
                "size_bytes": self.size_bytes, "sha256": self.sha256}


class ShardWriter:
    """Writes samples into ``tokens_dir/shard-%06d.tar``, starting a new shard before a sample that would take the
    current one past ``max_shard_bytes`` (the size of the closed file, tar padding included; a shard holds at least one
    sample, so one huge sample gets its own).

    A shard is written as ``.shard-XXXXXX.tar.tmp``, renamed when full (or at :meth:`close`), then its done-marker is
    written with ``identity`` (the run's model and config). Used as a context manager: an exception leaves no partial
    shard under a final name (the temporary file is removed), exactly like a killed run.
    """

    def __init__(self, tokens_dir: str | os.PathLike, *, max_shard_bytes: int, first_index: int = 0,
                 identity: Mapping[str, Any] | None = None):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.tokens_dir = Path(tokens_dir)
        self.max_shard_bytes = int(max_shard_bytes)
        self.next_index = int(first_index)
        self.identity = dict(identity or {})
        self.records: list[ShardRecord] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._file: str | None = None
        self._keys: list[str] = []
        self._sources: dict[str, str] = {}

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        self.tokens_dir.mkdir(parents=True, exist_ok=True)
        self._file = shard_name(self.next_index)
        self.next_index += 1
        self._tmp = self.tokens_dir / f".{self._file}.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._keys = []
        self._sources = {}

    def write(self, sample: TokenSample) -> None:
        self.write_members(sample.key, sample_members(sample))
        if "source_sha256" in sample.meta:
            self._sources[sample.key] = str(sample.meta["source_sha256"])

    def write_members(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Append one sample given as ready ``(member name, bytes)`` pairs, rolling over to a new shard first when
        the sample would push the current one past ``max_shard_bytes``."""
        if "." in key or any(not name.startswith(key + ".") for name, _ in members):
            raise ValueError(f"sample key {key!r} has a dot or its members are not named {key}.<member>")
        sample_bytes = sum(_TAR_BLOCK + _padded(len(data)) for _, data in members)
        if self._tar is not None and self._keys and \
                _closed_tar_size(self._tar.offset + sample_bytes) > self.max_shard_bytes:
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for name, data in members:
            self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        self._keys.append(key)

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None and self._file is not None
        self._tar.close()
        self._tar = None
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.tokens_dir / self._file
        os.replace(self._tmp, final)
        record = ShardRecord(self._file, tuple(self._keys), final.stat().st_size, sha256_file(final), self.identity,
                             dict(self._sources))
        write_json(marker_path(self.tokens_dir, self._file),
                   {**record.to_json(), "identity": self.identity, "sources": record.sources})
        self.records.append(record)
        self._tmp = self._file = None
        self._keys = []
        self._sources = {}

    def close(self) -> list[ShardRecord]:
        """Finish the current shard; returns the records of every shard this writer completed."""
        if self._tar is not None:
            self._finish()
        return list(self.records)

    def abort(self) -> None:
        """Drop the shard being written (its samples are redone by the next run)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


# ---- markers, recovery and the index -----------------------------------------------------------------------------

@dataclass
class ShardState:
    """What a tokens folder holds after :func:`recover_shards`."""

    records: list[ShardRecord]            # complete shards, by index
    removed: list[str]                    # debris that was deleted (temporary files, shards without a marker, ...)

    @property
    def keys(self) -> set[str]:
        return {k for r in self.records for k in r.keys}

    @property
    def next_index(self) -> int:
        return max((r.index for r in self.records), default=-1) + 1


def read_marker(path: Path) -> ShardRecord:
    try:
        data = read_json(path)
        return ShardRecord(str(data["file"]), tuple(data["keys"]), int(data["size_bytes"]), str(data["sha256"]),
                           dict(data.get("identity", {})), dict(data.get("sources", {})))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardError(path, f"unreadable shard done-marker ({exc})") from None


def recover_shards(tokens_dir: str | os.PathLike, *, verify_sha256: bool = False) -> ShardState:
    """Make ``tokens_dir`` consistent before a run: keep the shards whose marker matches the file (size, and the
    sha256 with ``verify_sha256``), delete temporary files, shards without a marker and markers without a shard.

    A killed run leaves at most a temporary file and possibly one renamed shard without its marker; both are deleted
    here, so their scenes are extracted again and every scene ends up in exactly one complete shard.
    """
    tokens_dir = Path(tokens_dir)
    removed: list[str] = []
    if not tokens_dir.is_dir():
        return ShardState([], removed)
    for tmp in sorted(tokens_dir.glob(".*.tmp")):
        tmp.unlink()
        removed.append(tmp.name)
    records: dict[str, ShardRecord] = {}
    for marker in sorted((tokens_dir / MARKER_DIR).glob("*.json")):
        record = read_marker(marker)
        shard = tokens_dir / record.file
        ok = SHARD_RE.match(record.file) is not None and marker == marker_path(tokens_dir, record.file) \
            and shard.is_file() and shard.stat().st_size == record.size_bytes \
            and (not verify_sha256 or sha256_file(shard) == record.sha256)
        if ok:
            records[record.file] = record
        else:
            marker.unlink()
            removed.append(f"{MARKER_DIR}/{marker.name}")
    for shard in sorted(tokens_dir.glob("shard-*.tar")):
        if shard.name not in records:
            shard.unlink()
            removed.append(shard.name)
    ordered = sorted(records.values(), key=lambda r: r.index)
    seen: dict[str, str] = {}
    for record in ordered:
        for key in record.keys:
            if key in seen:
                raise ShardError(tokens_dir / record.file, f"sample {key!r} is also in {seen[key]}")
            seen[key] = record.file
    return ShardState(ordered, removed)


def index_path(tokens_dir: str | os.PathLike) -> Path:
    return Path(tokens_dir) / INDEX_NAME


def write_index(tokens_dir: str | os.PathLike, records: Sequence[ShardRecord],
                identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.json`` atomically: every shard's file name, sample keys, size and sha256."""
    records = sorted(records, key=lambda r: r.index)
    index = {
        "format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION,
        "num_shards": len(records), "num_samples": sum(len(r.keys) for r in records),
        "identity": dict(identity or {}),
        "shards": [r.to_json() for r in records],
    }
    write_json(index_path(tokens_dir), index)
    return index


def read_index(tokens_dir: str | os.PathLike) -> dict[str, Any]:
    path = index_path(tokens_dir)
    if not path.is_file():
        raise ShardError(path, "shard index not found (run `vlm3r-data extract` first)")
    try:
        index = read_json(path)
    except (OSError, ValueError) as exc:
        raise ShardError(path, f"unreadable shard index ({exc})") from None
    if index.get("format") != INDEX_FORMAT or index.get("format_version") != INDEX_FORMAT_VERSION:
        raise ShardError(path, f"not a {INDEX_FORMAT} v{INDEX_FORMAT_VERSION} index "
                               f"(format {index.get('format')!r} v{index.get('format_version')!r})")
    return index


# ---- reading -----------------------------------------------------------------------------------------------------

_NPY_MEMBERS = ("camera.npy", "patch.npy", "points.npy")


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardError(where, f"not a readable .npy array ({exc})") from None


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
    sample = TokenSample(
        key=key,
        camera=_load_npy(members["camera.npy"], f"{where}:{key}.camera.npy"),
        patch=_load_npy(members["patch.npy"], f"{where}:{key}.patch.npy"),
        frames=frames, meta=meta,
        points=_load_npy(members["points.npy"], f"{where}:{key}.points.npy") if "points.npy" in members else None,
        jpegs=jpegs)
    return validate_sample(sample, f"{where}:{key}", expect)


def sample_from_wds(raw: Mapping[str, Any], expect: Mapping[str, Any] | None = None) -> TokenSample:
    """A validated sample from a raw (undecoded) webdataset sample dict, for ``wds.WebDataset(...).map(...)``
    pipelines such as the trainer's (split by node and worker as it needs)."""
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return sample_from_members(raw["__key__"], members, str(raw.get("__url__", "?")), expect)


def shard_paths(tokens_dir: str | os.PathLike) -> list[str]:
    """The shard files listed in the index, in order (the URLs to give webdataset)."""
    return [str(Path(tokens_dir) / entry["file"]) for entry in read_index(tokens_dir)["shards"]]


def read_shard(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Iterator[TokenSample]:
    """Validated samples of one shard file, read with webdataset (keys split at the first dot, no decoding)."""
    import webdataset as wds

    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "shard file not found")
    dataset = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, nodesplitter=None,
                             workersplitter=None)
    try:
        for raw in dataset:
            yield sample_from_wds(raw, expect)
    except (tarfile.TarError, ValueError, OSError) as exc:  # a truncated or garbled tar
        raise ShardError(path, f"not a readable shard ({type(exc).__name__}: {exc})") from None


def iter_samples(tokens_dir: str | os.PathLike, *, expect: Mapping[str, Any] | None = None,
                 verify_sha256: bool = True, shards: Iterable[str] | None = None) -> Iterator[TokenSample]:
    """Every sample listed in ``tokens_dir/index.json``, validated, in index order.

    Fails with :class:`ShardError` when a shard's sha256 or size differs from the index, when a shard holds other
    keys than the index lists, or when a sample has a wrong shape, frame count or dtype, or a meta field differs from
    ``expect`` (e.g. ``{"checkpoint_sha256": sha}``). ``shards`` restricts reading to these file names.
    """
    tokens_dir = Path(tokens_dir)
    index = read_index(tokens_dir)
    wanted = set(shards) if shards is not None else None
    for entry in index["shards"]:
        if wanted is not None and entry["file"] not in wanted:
            continue
        path = tokens_dir / entry["file"]
        if not path.is_file():
            raise ShardError(path, "listed in index.json but missing")
        if path.stat().st_size != entry["size_bytes"]:
            raise ShardError(path, f"size {path.stat().st_size} bytes, index.json says {entry['size_bytes']}")
        if verify_sha256 and sha256_file(path) != entry["sha256"]:
            raise ShardError(path, "sha256 differs from index.json (the shard was modified or corrupted)")
        keys = []
        for sample in read_shard(path, expect):
            keys.append(sample.key)
            yield sample
        if keys != list(entry["keys"]):
            raise ShardError(path, f"holds samples {keys}, index.json lists {entry['keys']}")
