"""Streaming reader and writer of ScanNet's ``.sens`` RGB-D container (version 4, little-endian).

Layout (ScanNet ``SensReader/c++/src/sensorData.h``): a header of ``304 + len(sensor_name)`` bytes, then
``num_frames`` frames of ``[16 f4 camera_to_world][u8 timestamp_color][u8 timestamp_depth][u8 color_size]
[u8 depth_size]`` (96 bytes) followed by the colour and depth payloads, then an IMU block (``u8`` count and
128-byte samples) that readers ignore. Real files are hundreds of MB to GB, so the reader never holds more than
one frame header: it records each payload's byte range and seeks past it. The frame table then points into the
file (``FRAMES_SCHEMA`` kinds ``sens_jpeg`` / ``sens_zlib_u16``) and images are decoded only on demand.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from pipeline.core.atomic import atomic_open
from pipeline.core.errors import InputError
from pipeline.core.frames import read_range

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
COLOR_JPEG = 2
DEPTH_ZLIB_USHORT = 1

# Header after the sensor name: 4 matrices, 2 compression types, 4 sizes, depth_shift, num_frames.
_HEADER_TAIL = struct.Struct("<64f2i4IfQ")
# Per-frame header: camera_to_world, timestamp_color, timestamp_depth, color_size_bytes, depth_size_bytes.
_FRAME_HEAD = struct.Struct("<16f4Q")
FRAME_HEADER_BYTES = _FRAME_HEAD.size                  # 96
IMU_SAMPLE_BYTES = 15 * 8 + 8                          # 5 x 3 float64 + u8 timestamp = 128


@dataclass(frozen=True)
class SensHeader:
    sensor_name: str
    intrinsic_color: np.ndarray            # [4, 4] float64: [[fx,0,mx,0],[0,fy,my,0],[0,0,1,0],[0,0,0,1]]
    extrinsic_color: np.ndarray            # [4, 4] float64
    intrinsic_depth: np.ndarray            # [4, 4] float64
    extrinsic_depth: np.ndarray            # [4, 4] float64
    color_compression: int                 # key of COLOR_COMPRESSION (2 = jpeg for ScanNet)
    depth_compression: int                 # key of DEPTH_COMPRESSION (1 = zlib_ushort for ScanNet)
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float                     # stored depth value per metre (1000 = millimetres)
    num_frames: int = 0                    # as read; write_sens writes the number of frames it is given
    version: int = SENS_VERSION
    header_bytes: int = field(default=0, compare=False)   # byte offset of frame 0 (304 + len(sensor name))


@dataclass(frozen=True)
class SensFrame:
    """One frame's header and the byte ranges of its payloads (absolute offsets in the file)."""
    index: int
    camera_to_world: np.ndarray            # [4, 4] float64 as stored (unaligned world; -inf when tracking was lost)
    timestamp_color_us: int
    timestamp_depth_us: int
    color_offset: int
    color_length: int
    depth_offset: int
    depth_length: int


@dataclass(frozen=True)
class SensFramePayload:
    """What write_sens stores per frame: the pose and the already-compressed colour and depth bytes."""
    camera_to_world: np.ndarray            # [4, 4] (written as float32)
    timestamp_color_us: int
    timestamp_depth_us: int
    color_bytes: bytes
    depth_bytes: bytes


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise InputError(path, f"truncated .sens: {what} needs {n} bytes, file has {len(data)} left")
    return data


def read_sens_header(path: str | os.PathLike) -> SensHeader:
    """Parse and check the header: version 4 and known compression types (else InputError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, ".sens file not found")
    with open(path, "rb") as fh:
        return _parse_header(fh, path)


def _parse_header(fh, path: Path) -> SensHeader:
    (version,) = struct.unpack("<I", _read_exact(fh, 4, path, "header version"))
    if version != SENS_VERSION:
        raise InputError(path, f"unsupported .sens version {version} (expected {SENS_VERSION})")
    (name_len,) = struct.unpack("<Q", _read_exact(fh, 8, path, "sensor name length"))
    if name_len > 4096:  # a garbage length would make us read the whole file as a name
        raise InputError(path, f"implausible sensor name length {name_len}: not a .sens file or corrupt header")
    name = _read_exact(fh, name_len, path, "sensor name").decode("utf-8", "replace")
    tail = _HEADER_TAIL.unpack(_read_exact(fh, _HEADER_TAIL.size, path, "header"))
    mats = np.asarray(tail[:64], np.float64).reshape(4, 4, 4)
    color_comp, depth_comp = tail[64], tail[65]
    if color_comp not in COLOR_COMPRESSION:
        raise InputError(path, f"unknown colour compression type {color_comp} (known: {sorted(COLOR_COMPRESSION)})")
    if depth_comp not in DEPTH_COMPRESSION:
        raise InputError(path, f"unknown depth compression type {depth_comp} (known: {sorted(DEPTH_COMPRESSION)})")
    cw, ch, dw, dh = tail[66:70]
    return SensHeader(
        sensor_name=name, intrinsic_color=mats[0], extrinsic_color=mats[1], intrinsic_depth=mats[2],
        extrinsic_depth=mats[3], color_compression=color_comp, depth_compression=depth_comp,
        color_width=cw, color_height=ch, depth_width=dw, depth_height=dh, depth_shift=float(tail[70]),
        num_frames=int(tail[71]), version=version, header_bytes=12 + name_len + _HEADER_TAIL.size)


def iter_sens_frames(path: str | os.PathLike) -> Iterator[SensFrame]:
    """Yield every frame's header and payload byte ranges, reading 96 bytes per frame and seeking past the rest.

    Memory stays constant whatever the file size. A frame header or payload that runs past the end of the
    file raises InputError (truncated download); bytes after the last frame (the IMU block) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, ".sens file not found")
    file_bytes = path.stat().st_size
    with open(path, "rb") as fh:
        header = _parse_header(fh, path)
        offset = header.header_bytes
        for index in range(header.num_frames):
            head = fh.read(FRAME_HEADER_BYTES)
            if len(head) != FRAME_HEADER_BYTES:
                raise InputError(path, f"truncated .sens: frame {index} of {header.num_frames} starts at byte "
                                       f"{offset} but the file ends at byte {file_bytes}")
            values = _FRAME_HEAD.unpack(head)
            color_length, depth_length = values[18], values[19]
            color_offset = offset + FRAME_HEADER_BYTES
            depth_offset = color_offset + color_length
            end = depth_offset + depth_length
            if end > file_bytes:
                raise InputError(path, f"truncated .sens: frame {index} of {header.num_frames} needs bytes up to "
                                       f"{end} but the file has {file_bytes}")
            yield SensFrame(index=index, camera_to_world=np.asarray(values[:16], np.float64).reshape(4, 4),
                            timestamp_color_us=values[16], timestamp_depth_us=values[17],
                            color_offset=color_offset, color_length=color_length,
                            depth_offset=depth_offset, depth_length=depth_length)
            fh.seek(end)
            offset = end


@dataclass(frozen=True)
class SensIndex:
    """All frame headers of a .sens as arrays (what the frame table needs), built by streaming."""
    camera_to_world: np.ndarray            # [N, 4, 4] float64, as stored
    timestamp_color_us: np.ndarray         # [N] uint64
    timestamp_depth_us: np.ndarray         # [N] uint64
    color_offset: np.ndarray               # [N] int64 byte offsets / lengths
    color_length: np.ndarray
    depth_offset: np.ndarray
    depth_length: np.ndarray


def read_sens_index(path: str | os.PathLike) -> tuple[SensHeader, SensIndex]:
    """The header and every frame's pose, timestamps and payload byte ranges; O(num_frames) memory."""
    header = read_sens_header(path)
    n = header.num_frames
    file_bytes = Path(path).stat().st_size
    if header.header_bytes + n * FRAME_HEADER_BYTES > file_bytes:  # before allocating n rows from a corrupt count
        raise InputError(path, f"truncated .sens: header says {n} frames but the file has only {file_bytes} bytes")
    c2w = np.empty((n, 4, 4), np.float64)
    ints = np.empty((n, 6), np.int64)  # ts_color, ts_depth, color_offset, color_length, depth_offset, depth_length
    for f in iter_sens_frames(path):
        c2w[f.index] = f.camera_to_world
        ints[f.index] = (f.timestamp_color_us, f.timestamp_depth_us, f.color_offset, f.color_length,
                         f.depth_offset, f.depth_length)
    return header, SensIndex(camera_to_world=c2w, timestamp_color_us=ints[:, 0].astype(np.uint64),
                             timestamp_depth_us=ints[:, 1].astype(np.uint64), color_offset=ints[:, 2],
                             color_length=ints[:, 3], depth_offset=ints[:, 4], depth_length=ints[:, 5])


def read_frame_bytes(path: str | os.PathLike, offset: int, length: int) -> bytes:
    return read_range(path, offset, length, ".sens")


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes (OpenCV, the same codec pipeline.core.frames decodes with)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_depth_zlib(depth_units: np.ndarray) -> bytes:
    """uint16 depth [H, W] (stored units, e.g. mm) -> a zlib stream with header, as ScanNet's zlib_ushort."""
    return zlib.compress(np.ascontiguousarray(depth_units, "<u2").tobytes(), 6)


def write_sens(path: str | os.PathLike, header: SensHeader, frames: Iterable[SensFramePayload],
               imu_samples: np.ndarray | None = None, imu_timestamps_us: np.ndarray | None = None) -> int:
    """Write a version-4 .sens atomically, streaming the frames; returns the number of frames written.

    ``header.num_frames`` is ignored: the count of ``frames`` is written (the header field is patched at the end,
    so ``frames`` may be a generator). The IMU block holds ``imu_samples`` [M, 15] float64 (rotationRate,
    acceleration, magneticField, attitude, gravity) with ``imu_timestamps_us`` [M], or a zero count.
    """
    name = header.sensor_name.encode("utf-8")
    mats = np.concatenate([np.asarray(m, np.float32).reshape(16) for m in (
        header.intrinsic_color, header.extrinsic_color, header.intrinsic_depth, header.extrinsic_depth)])
    count = 0
    with atomic_open(path, "wb") as fh:
        fh.write(struct.pack("<IQ", SENS_VERSION, len(name)) + name)
        tail_at = fh.tell()
        fh.write(_HEADER_TAIL.pack(*mats.tolist(), header.color_compression, header.depth_compression,
                                   header.color_width, header.color_height, header.depth_width,
                                   header.depth_height, header.depth_shift, 0))
        for frame in frames:
            c2w = np.asarray(frame.camera_to_world, np.float32).reshape(16)
            fh.write(_FRAME_HEAD.pack(*c2w.tolist(), int(frame.timestamp_color_us), int(frame.timestamp_depth_us),
                                      len(frame.color_bytes), len(frame.depth_bytes)))
            fh.write(frame.color_bytes)
            fh.write(frame.depth_bytes)
            count += 1
        samples = np.zeros((0, 15)) if imu_samples is None else np.asarray(imu_samples, np.float64).reshape(-1, 15)
        stamps = np.zeros(len(samples), np.uint64) if imu_timestamps_us is None else np.asarray(imu_timestamps_us)
        if len(stamps) != len(samples):
            raise ValueError(f"{len(samples)} IMU samples but {len(stamps)} IMU timestamps")
        fh.write(struct.pack("<Q", len(samples)))
        if len(samples):
            rec = np.zeros(len(samples), dtype=[("values", "<f8", (15,)), ("timestamp", "<u8")])
            rec["values"], rec["timestamp"] = samples, stamps
            fh.write(rec.tobytes())
        # num_frames is the last 8 bytes of the header tail.
        fh.seek(tail_at + _HEADER_TAIL.size - 8)
        fh.write(struct.pack("<Q", count))
    return count
