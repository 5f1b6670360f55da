"""Shard sets: WebDataset tar files of samples, one done-marker per complete shard, and an index.

```
DIR/shard-000000.tar        samples; a sample is the tar members ``<key>.<member>`` written together
DIR/_done/shard-000000.json done-marker of a complete shard: keys, size, sha256, run identity, per-key entries
DIR/index.json              every complete shard (file, keys, size, sha256), rebuilt from the markers
```

The token shards (:mod:`pipeline.core.tokens`) and the training shards (:mod:`pipeline.core.train_samples`) are
both shard sets. Shards are byte-reproducible: members are written with tarfile (USTAR) with a fixed mtime, uid/gid 0,
empty user and group names and mode 0444, and every payload is serialised deterministically. A shard is written to
a temporary name unique to the writing process, renamed when complete, and only then gets its done-marker, so a
marker always names a complete file.
"""
from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from pipeline.core.atomic import read_json, sha256_file, unique_tmp_name, write_json
from pipeline.core.errors import InputError
from pipeline.core.layout import MARKER_DIR

SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
INDEX_NAME = "index.json"
INDEX_FORMAT = "vlm3r-tokens"
INDEX_FORMAT_VERSION = 1
TAR_MTIME = 0  # fixed member mtime (seconds since the epoch): same inputs give byte-identical shards
_TAR_BLOCK = 512
_MEMBER_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key / suffix split: at the first dot


class ShardError(InputError):
    """A shard, sample, index or marker that is malformed or does not match what the caller expects."""


def npy_bytes(array: np.ndarray) -> bytes:
    """A ``.npy`` payload (no pickle; deterministic bytes for the same array)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes | np.ndarray, where: str) -> np.ndarray:
    """The array of a ``.npy`` payload (no pickle). When the payload is a writable uint8 buffer (what
    :func:`iter_raw_samples` gives for ``.npy`` members) the array is a view of it, not a copy: a shard's bytes are
    copied once, from the file into that buffer."""
    try:
        if not isinstance(data, np.ndarray):
            return np.load(io.BytesIO(data), allow_pickle=False)
        raw = data.reshape(-1).view(np.uint8)
        version = int(raw[6]) if raw.size > 6 else 0
        length_bytes = 2 if version == 1 else 4
        header_end = 8 + length_bytes + int.from_bytes(raw[8:8 + length_bytes].tobytes(), "little")
        header = io.BytesIO(raw[:header_end].tobytes())
        major, _ = np.lib.format.read_magic(header)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(header)
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        count = int(np.prod(shape, dtype=np.int64))
        if header_end + count * dtype.itemsize != raw.size:
            raise ValueError(f"{raw.size - header_end} payload bytes for {count} values of {dtype}")
        array = raw[header_end:].view(dtype) if count else np.empty(0, dtype)
        return array.reshape(shape, order="F" if fortran_order else "C")
    except (ValueError, OSError, EOFError) as exc:
        raise ShardError(where, f"not a readable .npy array ({exc})") from None


# ---- writing -----------------------------------------------------------------------------------------------------

def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def marker_path(shards_dir: Path, file_name: str) -> Path:
    return Path(shards_dir) / MARKER_DIR / (Path(file_name).stem + ".json")


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

    file: str                             # file name inside the shard folder
    keys: tuple[str, ...]
    size_bytes: int
    sha256: str
    identity: dict[str, Any] = field(default_factory=dict, compare=False)  # the run's identity (model, config)
    units: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)  # key -> its unit's done-marker

    @property
    def index(self) -> int:
        match = SHARD_RE.match(self.file)
        assert match, self.file
        return int(match.group(1))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "keys": list(self.keys), "num_samples": len(self.keys),
                "size_bytes": self.size_bytes, "sha256": self.sha256}


class ShardWriter:
    """Writes samples into ``shards_dir/shard-%06d.tar``, starting a new shard before a sample that would take the
    current one past ``max_shard_bytes`` (the size of the closed file, tar padding included; a shard holds at least one
    sample, so one huge sample gets its own).

    A shard is written under a temporary name unique to this process, renamed when full (or at :meth:`close`), then
    its done-marker is written with ``identity`` (the run's model and config) and, per key, the done-marker of the
    unit of work that made the sample. Used as a context manager: an exception leaves no partial shard under a final
    name (the temporary file is removed), exactly like a killed run.
    """

    def __init__(self, shards_dir: str | os.PathLike, *, max_shard_bytes: int, first_index: int = 0,
                 identity: Mapping[str, Any] | None = None):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.shards_dir = Path(shards_dir)
        self.max_shard_bytes = int(max_shard_bytes)
        self.next_index = int(first_index)
        self.identity = dict(identity or {})
        self.records: list[ShardRecord] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._file: str | None = None
        self._keys: list[str] = []
        self._units: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self._file = shard_name(self.next_index)
        self.next_index += 1
        self._tmp = self.shards_dir / unique_tmp_name(self._file)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._keys = []
        self._units = {}

    def write_members(self, key: str, members: list[tuple[str, bytes]],
                      unit_marker: Mapping[str, Any] | None = None) -> None:
        """Append one sample given as ready ``(member name, bytes)`` pairs, rolling over to a new shard first when
        the sample would push the current one past ``max_shard_bytes``. ``unit_marker``: the done-marker of the unit
        of work that made the sample, kept in the shard's marker (it counts once the shard is complete)."""
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
        if unit_marker is not None:
            self._units[key] = dict(unit_marker)

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None and self._file is not None
        self._tar.close()
        self._tar = None
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.shards_dir / self._file
        os.replace(self._tmp, final)
        record = ShardRecord(self._file, tuple(self._keys), final.stat().st_size, sha256_file(final), self.identity,
                             dict(self._units))
        write_json(marker_path(self.shards_dir, self._file),
                   {**record.to_json(), "identity": self.identity, "units": record.units})
        self.records.append(record)
        self._tmp = self._file = None
        self._keys = []
        self._units = {}

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


def read_shard_marker(path: Path) -> ShardRecord:
    try:
        data = read_json(path)
        return ShardRecord(str(data["file"]), tuple(data["keys"]), int(data["size_bytes"]), str(data["sha256"]),
                           dict(data.get("identity", {})), dict(data.get("units", {})))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardError(path, f"unreadable shard done-marker ({exc})") from None


def complete_shards(shards_dir: str | os.PathLike) -> list[ShardRecord]:
    """The complete shards of a folder, by index, read-only: the markers that :func:`_marker_counts` accepts (those
    :func:`recover_shards` keeps; nothing is deleted here, so it is safe while a writer runs)."""
    shards_dir = Path(shards_dir)
    records = []
    for marker in sorted((shards_dir / MARKER_DIR).glob("*.json")) if (shards_dir / MARKER_DIR).is_dir() else []:
        record = read_shard_marker(marker)
        if _marker_counts(shards_dir, marker, record):
            records.append(record)
    return sorted(records, key=lambda r: r.index)


def _marker_counts(shards_dir: Path, marker: Path, record: ShardRecord) -> bool:
    """Whether a done-marker marks a complete shard: it is the shard's own marker (not a copy under another name)
    and the shard exists with the recorded size."""
    shard = shards_dir / record.file
    return SHARD_RE.match(record.file) is not None and marker == marker_path(shards_dir, record.file) \
        and shard.is_file() and shard.stat().st_size == record.size_bytes


def remove_shards(shards_dir: str | os.PathLike, files: Iterable[str]) -> None:
    """Delete complete shards: the marker first (so no marker ever names a missing file), then the file."""
    shards_dir = Path(shards_dir)
    for name in files:
        marker_path(shards_dir, name).unlink(missing_ok=True)
        (shards_dir / name).unlink(missing_ok=True)


def sample_digest(members: Sequence[tuple[str, bytes]]) -> str:
    """sha256 of one sample's members (names, sizes and bytes, in order): its output fingerprint."""
    h = hashlib.sha256()
    for name, data in members:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def recover_shards(shards_dir: str | os.PathLike) -> ShardState:
    """Make ``shards_dir`` consistent before a run: keep the shards whose marker matches the file (as
    :func:`complete_shards` decides), delete temporary files, shards without a marker and markers without a shard.

    A killed run leaves at most a temporary file and possibly one renamed shard without its marker; both are deleted
    here, so their scenes are extracted again and every scene ends up in exactly one complete shard.
    """
    shards_dir = Path(shards_dir)
    removed: list[str] = []
    if not shards_dir.is_dir():
        return ShardState([], removed)
    for tmp in sorted(shards_dir.glob(".*.tmp")):
        tmp.unlink()
        removed.append(tmp.name)
    records: dict[str, ShardRecord] = {}
    for marker in sorted((shards_dir / MARKER_DIR).glob("*.json")):
        record = read_shard_marker(marker)
        if _marker_counts(shards_dir, marker, record):
            records[record.file] = record
        else:
            marker.unlink()
            removed.append(f"{MARKER_DIR}/{marker.name}")
    for shard in sorted(shards_dir.glob("shard-*.tar")):
        if shard.name not in records:
            shard.unlink()
            removed.append(shard.name)
    ordered = sorted(records.values(), key=lambda r: r.index)
    seen: dict[str, str] = {}
    for record in ordered:
        for key in record.keys:
            if key in seen:
                raise ShardError(shards_dir / record.file, f"sample {key!r} is also in {seen[key]}")
            seen[key] = record.file
    return ShardState(ordered, removed)


def index_path(shards_dir: str | os.PathLike) -> Path:
    return Path(shards_dir) / INDEX_NAME


def write_index(shards_dir: str | os.PathLike, records: Sequence[ShardRecord],
                identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.json`` atomically: every shard's file name, sample keys, size and sha256."""
    records = sorted(records, key=lambda r: r.index)
    index = {
        "format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION,
        "num_shards": len(records), "num_samples": sum(len(r.keys) for r in records),
        "identity": dict(identity or {}),
        "shards": [r.to_json() for r in records],
    }
    write_json(index_path(shards_dir), index)
    return index


def read_index(shards_dir: str | os.PathLike) -> dict[str, Any]:
    path = index_path(shards_dir)
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


def checked_shards(shards_dir: str | os.PathLike, *, verify_sha256: bool = True,
                   shards: Iterable[str] | None = None) -> Iterator[tuple[Path, list[str]]]:
    """(path, keys the index lists) of every shard in ``shards_dir/index.json``, in index order, after checking that
    the file exists with the listed size (and sha256 with ``verify_sha256``). ``shards`` restricts to these files."""
    shards_dir = Path(shards_dir)
    index = read_index(shards_dir)
    wanted = set(shards) if shards is not None else None
    for entry in index["shards"]:
        if wanted is not None and entry["file"] not in wanted:
            continue
        path = shards_dir / entry["file"]
        if not path.is_file():
            raise ShardError(path, "listed in index.json but missing")
        if path.stat().st_size != entry["size_bytes"]:
            raise ShardError(path, f"size {path.stat().st_size} bytes, index.json says {entry['size_bytes']}")
        if verify_sha256 and sha256_file(path) != entry["sha256"]:
            raise ShardError(path, "sha256 differs from index.json (the shard was modified or corrupted)")
        yield path, list(entry["keys"])


def iter_raw_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes | np.ndarray]]]:
    """(key, member suffix -> payload) of every sample of one shard, grouped as webdataset groups them (key = the
    member name up to its first dot, consecutive members of one key form a sample), without decoding. A truncated or
    garbled tar raises ShardError naming the file.

    The shards this project writes (plain USTAR headers, regular files) are read by a parser of their 512-byte
    headers that reads each payload once: a ``.npy`` member straight into its own writable uint8 numpy buffer (its
    array then loads without a copy, see :func:`load_npy`), the others as bytes. A tar with other member types (pax
    or GNU extensions, directories, links: another tool's) is read with webdataset, every payload as bytes."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "shard file not found")
    with open(path, "rb", buffering=0) as fh:
        members = _plain_members(fh, path)
        if members is not None:
            yield from _group_samples(_read_members(fh, path, members), path)
            return
    yield from _iter_wds_samples(path)


def _plain_members(fh, path: Path) -> list[tuple[str, int, int]] | None:
    """(name, payload offset, size) of every member, from the headers alone; None when a member is not a regular
    file under a plain USTAR header."""
    size = os.fstat(fh.fileno()).st_size
    members, offset = [], 0
    while offset + _TAR_BLOCK <= size:
        fh.seek(offset)
        block = fh.read(_TAR_BLOCK)
        if block.count(0) == _TAR_BLOCK:  # end-of-archive marker
            return members
        try:
            info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ShardError(path, f"not a readable shard (tar header at byte {offset}: {exc})") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return None
        if offset + _TAR_BLOCK + info.size > size:
            raise ShardError(path, f"not a readable shard (member {info.name} is truncated)")
        members.append((info.name, offset + _TAR_BLOCK, info.size))
        offset += _TAR_BLOCK + _padded(info.size)
    if offset != size:
        raise ShardError(path, f"not a readable shard ({size - offset} bytes at its end are not a tar block)")
    return members


def _read_members(fh, path: Path, members: list[tuple[str, int, int]]
                  ) -> Iterator[tuple[str, bytes | np.ndarray]]:
    for name, offset, size in members:
        fh.seek(offset)
        # .npy payloads go into uninitialised writable numpy buffers (no zero-fill pass, and their arrays are views);
        # the other members (JSON, JPEG) are small and read as bytes.
        data = np.empty(size, np.uint8) if name.endswith(".npy") else bytearray(size)
        view, done = memoryview(data).cast("B"), 0
        while done < size:
            n = fh.readinto(view[done:])
            if not n:
                raise ShardError(path, f"not a readable shard (member {name} is truncated)")
            done += n
        yield name, data if isinstance(data, np.ndarray) else bytes(data)


def _group_samples(members: Iterable[tuple[str, bytes | np.ndarray]], path: Path
                   ) -> Iterator[tuple[str, dict[str, bytes | np.ndarray]]]:
    key, sample = None, {}
    for name, data in members:
        match = _MEMBER_RE.match(name)
        if match is None:
            raise ShardError(path, f"member {name!r} has no key.suffix name")
        member_key, suffix = match.group(1), match.group(2).lower()
        if member_key != key:
            if sample:
                yield key, sample
            key, sample = member_key, {}
        if suffix in sample:
            raise ShardError(path, f"sample {key!r} has two {suffix!r} members")
        sample[suffix] = data
    if sample:
        yield key, sample


def _iter_wds_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    import webdataset as wds

    dataset = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, nodesplitter=None,
                             workersplitter=None)
    try:
        for raw in dataset:
            yield raw["__key__"], {k: v for k, v in raw.items() if not k.startswith("__")}
    except (tarfile.TarError, ValueError, OSError) as exc:
        raise ShardError(path, f"not a readable shard ({type(exc).__name__}: {exc})") from None


def shard_paths(shards_dir: str | os.PathLike) -> list[str]:
    """The shard files listed in the index, in order (the URLs to give webdataset)."""
    return [str(Path(shards_dir) / entry["file"]) for entry in read_index(shards_dir)["shards"]]


# ---- reading ahead -------------------------------------------------------------------------------------------------

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` in order, produced up to ``depth`` items ahead of the consumer by one background thread.

    For readers whose producer waits on the disk (``readinto`` and ``hashlib`` release the GIL) while the consumer
    computes (numpy decoding releases it too): the next sample's bytes arrive while this one decodes. An exception
    raised by the producer is raised here at its place in the sequence. A consumer that stops early (``break``, an
    unfinished ``next()``) stops the thread when the generator closes; at most ``depth`` unconsumed items are held.
    ``depth`` 0 iterates in the calling thread."""
    if depth <= 0:
        yield from items
        return
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((_DONE, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="shard-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = handoff.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()
