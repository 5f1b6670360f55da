"""ScanNet++ iPhone ``depth.bin``: both encodings, read frame by frame with bounded memory.

The file holds one 256x192 depth map per video frame (frame k of the depth stream = ``frame_%06d`` k of the video),
0 = no measurement, in one of two encodings (the official ``extract_depth`` tries them in this order):

1. **whole-file raw DEFLATE** (zlib, ``wbits=-15``, no header) of float32 **metres**, shape ``(N, 192, 256)``;
2. **per-frame records** until EOF: ``<uint32 little-endian payload size><payload>``, the payload being an LZ4
   *block* without size prefix of uint16 **millimetres**, or else raw DEFLATE of float32 metres.

Canonical references (``FRAMES_SCHEMA``): kind ``depth_bin_deflate_f32`` with ``offset`` = frame index in the
stream, values in metres (``depth_scale`` 1.0); kind ``depth_bin_record`` with ``offset``/``length`` = the byte range of
the record *payload* (after its size prefix), values in millimetres (``depth_scale`` 0.001) whichever codec the
record uses, as the official tool also converts DEFLATE records to millimetres. Non-finite depths read as 0.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_open
from pipeline.core.errors import InputError

DEPTH_WIDTH = 256   # pixels; fixed by the capture app (the official decoder hard-codes 256x192)
DEPTH_HEIGHT = 192
KIND_DEFLATE = "depth_bin_deflate_f32"
KIND_RECORD = "depth_bin_record"
UNIT_M = {KIND_DEFLATE: 1.0, KIND_RECORD: 0.001}   # metres per value returned by read_depth_frame
ENCODINGS = ("deflate", "lz4_records", "deflate_records")   # what write_depth_bin can produce

_CHUNK_IN = 1 << 20      # compressed bytes read per step
_CHUNK_OUT = 1 << 22     # bound on the decompressed bytes held at once (4 MiB, ~20 frames)


@dataclass(frozen=True)
class DepthBinIndex:
    path: str
    kind: str                  # KIND_DEFLATE or KIND_RECORD
    width: int
    height: int
    offsets: np.ndarray = field(repr=False)   # [N] int64: frame index (deflate) or payload byte offset (records)
    lengths: np.ndarray = field(repr=False)   # [N] int64: payload bytes (records); 0 (deflate)

    @property
    def num_frames(self) -> int:
        return len(self.offsets)

    @property
    def unit_m(self) -> float:
        return UNIT_M[self.kind]


# ---- records --------------------------------------------------------------------------------------------------------

def _max_payload(width: int, height: int) -> int:
    # A compressed record can be slightly larger than its input when incompressible; float32 input is the larger one.
    raw = width * height * 4
    return raw + raw // 64 + 1024


def _walk_records(path: Path, width: int, height: int) -> tuple[list[int], list[int], str | None]:
    """Follow the size prefixes from byte 0; reads 4 bytes per record. Returns offsets, lengths, first problem."""
    file_size = path.stat().st_size
    offsets: list[int] = []
    lengths: list[int] = []
    limit = _max_payload(width, height)
    pos = 0
    with open(path, "rb") as fh:
        while pos < file_size:
            k = len(offsets)
            if file_size - pos < 4:
                return offsets, lengths, (f"truncated: {file_size - pos} stray bytes at offset {pos} where record "
                                          f"{k}'s size prefix should be")
            fh.seek(pos)
            (size,) = struct.unpack("<I", fh.read(4))
            if size == 0 or size > limit:
                return offsets, lengths, f"record {k} at byte {pos} declares {size} bytes (plausible: 1..{limit})"
            if pos + 4 + size > file_size:
                return offsets, lengths, (f"truncated: record {k} at byte {pos} declares {size} bytes but only "
                                          f"{file_size - pos - 4} remain")
            offsets.append(pos + 4)
            lengths.append(size)
            pos += 4 + size
    return offsets, lengths, None if offsets else "empty file"


def decode_record(payload: bytes, path: str | os.PathLike, width: int = DEPTH_WIDTH,
                  height: int = DEPTH_HEIGHT, where: str = "record") -> np.ndarray:
    """One record payload -> float32 [H, W] millimetres (LZ4 uint16 mm, else raw-DEFLATE float32 m x 1000)."""
    import lz4.block

    n = width * height
    try:
        raw = lz4.block.decompress(payload, uncompressed_size=n * 2)
        if len(raw) == n * 2:
            return np.frombuffer(raw, "<u2").reshape(height, width).astype(np.float32)
    except lz4.block.LZ4BlockError:
        pass
    try:
        raw = zlib.decompress(payload, -15)
    except zlib.error as exc:
        raise InputError(path, f"corrupt depth {where}: neither an LZ4 block of {n * 2} bytes "
                               f"nor raw DEFLATE ({exc})") from exc
    if len(raw) != n * 4:
        raise InputError(path, f"corrupt depth {where}: raw DEFLATE gave {len(raw)} bytes, expected {n * 4} "
                               f"(float32 {width}x{height})")
    metres = np.frombuffer(raw, "<f4").reshape(height, width)
    return _finite_or_zero(metres * np.float32(1000.0))


def _finite_or_zero(depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth, np.float32)
    return np.where(np.isfinite(depth), depth, np.float32(0.0))


# ---- whole-file DEFLATE: a resumable streaming cursor ---------------------------------------------------------------

@dataclass
class _DeflateCursor:
    """Decompression state positioned just before frame ``next_frame``; lets sequential reads stay O(N) overall."""
    key: tuple
    decompressor: object
    file_pos: int = 0          # compressed bytes fed so far (the rest of the last read sits in unconsumed_tail)
    buf: bytes = b""           # decompressed bytes not yet consumed
    buf_pos: int = 0
    next_frame: int = 0
    out_bytes: int = 0         # decompressed bytes consumed so far


_CURSORS: "OrderedDict[str, _DeflateCursor]" = OrderedDict()
_CURSORS_LOCK = threading.Lock()
_MAX_CURSORS = 4


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _take_cursor(path: Path, frame: int) -> _DeflateCursor:
    key = _file_key(path)
    with _CURSORS_LOCK:
        cur = _CURSORS.pop(str(path), None)
    if cur is None or cur.key != key or cur.next_frame > frame:
        cur = _DeflateCursor(key, zlib.decompressobj(-15))
    return cur


def _put_cursor(path: Path, cur: _DeflateCursor) -> None:
    with _CURSORS_LOCK:
        _CURSORS[str(path)] = cur
        while len(_CURSORS) > _MAX_CURSORS:
            _CURSORS.popitem(last=False)


def _advance(path: Path, fh, cur: _DeflateCursor, nbytes: int, collect: bool) -> bytes:
    """Consume ``nbytes`` of decompressed output (returned if ``collect``); raises InputError at a premature end."""
    out = bytearray() if collect else None
    need = nbytes
    d = cur.decompressor
    while need:
        if cur.buf_pos >= len(cur.buf):
            src = d.unconsumed_tail
            if not src:
                if d.eof:
                    raise EOFError(cur.out_bytes)
                fh.seek(cur.file_pos)
                src = fh.read(_CHUNK_IN)
                cur.file_pos += len(src)
                if not src:
                    raise InputError(path, f"truncated raw-DEFLATE depth stream: input ends after {cur.out_bytes} "
                                           "decompressed bytes without the end-of-stream marker")
            try:
                cur.buf, cur.buf_pos = d.decompress(src, _CHUNK_OUT), 0
            except zlib.error as exc:
                raise InputError(path, f"corrupt raw-DEFLATE depth stream after {cur.out_bytes} bytes: {exc}") from exc
            continue
        take = min(need, len(cur.buf) - cur.buf_pos)
        if collect:
            out += cur.buf[cur.buf_pos:cur.buf_pos + take]
        cur.buf_pos += take
        cur.out_bytes += take
        need -= take
    return bytes(out) if collect else b""


def _read_deflate_frame(path: Path, frame: int, width: int, height: int) -> np.ndarray:
    frame_bytes = width * height * 4
    cur = _take_cursor(path, frame)
    with open(path, "rb") as fh:
        try:
            _advance(path, fh, cur, (frame - cur.next_frame) * frame_bytes, collect=False)
            raw = _advance(path, fh, cur, frame_bytes, collect=True)
        except EOFError as end:
            raise InputError(path, f"depth stream holds {int(end.args[0]) // frame_bytes} frames of {width}x{height}, "
                                   f"frame {frame} requested") from None
    cur.next_frame = frame + 1
    _put_cursor(path, cur)
    return _finite_or_zero(np.frombuffer(raw, "<f4").reshape(height, width))


def _count_deflate_frames(path: Path, width: int, height: int) -> tuple[int | None, str | None]:
    """Stream the whole file once (bounded memory); (frames, None) if it starts with one complete raw-DEFLATE
    stream of whole frames."""
    frame_bytes = width * height * 4
    d = zlib.decompressobj(-15)
    total = 0
    with open(path, "rb") as fh:
        while not d.eof:
            src = d.unconsumed_tail or fh.read(_CHUNK_IN)
            if not src:
                return None, f"truncated raw-DEFLATE stream: input ends after {total} decompressed bytes"
            try:
                total += len(d.decompress(src, _CHUNK_OUT))
            except zlib.error as exc:
                return None, f"not raw DEFLATE after {total} decompressed bytes ({exc})"
    # Bytes after the end-of-stream marker are ignored, as the official decoder's zlib.decompress ignores them.
    if total == 0 or total % frame_bytes:
        return None, f"raw-DEFLATE stream of {total} bytes is not a whole number of float32 {width}x{height} frames"
    return total // frame_bytes, None


# ---- public API -----------------------------------------------------------------------------------------------------

def index_depth_bin(path: str | os.PathLike, width: int = DEPTH_WIDTH, height: int = DEPTH_HEIGHT) -> DepthBinIndex:
    """Detect the encoding and locate every frame without holding the file in memory.

    Records are recognised structurally (size prefixes chain exactly to EOF and the first payload decodes to one
    frame), which reads 4 bytes per record; otherwise the file must be one complete raw-DEFLATE stream of whole
    frames, which is checked (and its frames counted) by streaming it once.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "depth.bin not found")
    offsets, lengths, record_problem = _walk_records(path, width, height)
    if record_problem is None:
        with open(path, "rb") as fh:
            fh.seek(offsets[0])
            payload = fh.read(lengths[0])
        try:
            decode_record(payload, path, width, height, where="record 0")
            return DepthBinIndex(str(path), KIND_RECORD, width, height,
                                 np.asarray(offsets, np.int64), np.asarray(lengths, np.int64))
        except InputError as exc:
            record_problem = exc.problem
    num_frames, deflate_problem = _count_deflate_frames(path, width, height)
    if num_frames is not None:
        return DepthBinIndex(str(path), KIND_DEFLATE, width, height,
                             np.arange(num_frames, dtype=np.int64), np.zeros(num_frames, np.int64))
    # Report the encoding the file got furthest in: a file with well-formed leading records is a truncated record file.
    if offsets:
        raise InputError(path, f"per-frame depth records: {record_problem}")
    if deflate_problem.startswith("truncated"):
        raise InputError(path, f"whole-file DEFLATE depth: {deflate_problem}")
    raise InputError(path, f"neither encoding of depth.bin: as records, {record_problem}; as whole-file DEFLATE, "
                           f"{deflate_problem}")


def read_depth_frame(path: str | os.PathLike, kind: str, offset: int, length: int,
                     width: int = DEPTH_WIDTH, height: int = DEPTH_HEIGHT) -> np.ndarray:
    """One depth frame, float32 [height, width], in the stored unit (see ``UNIT_M``; 0 = invalid).

    ``depth_bin_deflate_f32``: ``offset`` = frame index; the stream is decompressed up to that frame with bounded
    memory, resuming from the previous call's position when frames are read in increasing order.
    ``depth_bin_record``: ``offset``/``length`` = the byte range of the record payload.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "depth.bin not found")
    if kind == KIND_DEFLATE:
        if offset < 0:
            raise InputError(path, f"negative depth frame index {offset}")
        return _read_deflate_frame(path, int(offset), width, height)
    if kind == KIND_RECORD:
        with open(path, "rb") as fh:
            fh.seek(offset)
            payload = fh.read(length)
        if len(payload) != length:
            raise InputError(path, f"truncated: depth record at byte {offset} needs {length} bytes, got {len(payload)}")
        return decode_record(payload, path, width, height, where=f"record at byte {offset}")
    raise InputError(path, f"unknown depth.bin reference kind {kind!r}")


def write_depth_bin(path: str | os.PathLike, depth_m: np.ndarray, encoding: str = "deflate") -> None:
    """Write ``depth_m`` [T, H, W] (metres, 0 = invalid) as a depth.bin in one of ``ENCODINGS`` (atomically).

    ``lz4_records`` stores rounded uint16 millimetres (clipped to 65.535 m); the DEFLATE forms keep float32 metres.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown depth.bin encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    depth_m = np.asarray(depth_m, np.float32)
    if depth_m.ndim != 3:
        raise ValueError(f"depth must be [T, H, W], got shape {depth_m.shape}")
    with atomic_open(path, "wb") as fh:
        if encoding == "deflate":
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            for frame in depth_m:
                fh.write(comp.compress(frame.astype("<f4").tobytes()))
            fh.write(comp.flush())
            return
        import lz4.block

        for frame in depth_m:
            if encoding == "lz4_records":
                mm = np.clip(np.round(frame.astype(np.float64) * 1000.0), 0, 65535).astype("<u2")
                payload = lz4.block.compress(mm.tobytes(), store_size=False)
            else:
                comp = zlib.compressobj(6, zlib.DEFLATED, -15)
                payload = comp.compress(frame.astype("<f4").tobytes()) + comp.flush()
            fh.write(struct.pack("<I", len(payload)))
            fh.write(payload)
