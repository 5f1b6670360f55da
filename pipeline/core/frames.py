"""Decode the colour (and depth) of a frame list, whatever way the source stores it.

Frames are addressed by the references in the canonical ``frames.parquet`` (see ``FRAMES_SCHEMA``): a JPEG byte
range inside a ``.sens``, a frame of a video, or an image file. Every path returns upright RGB uint8 ``[H, W, 3]``;
JPEG bytes are decoded by OpenCV in all cases, so the same image gives the same pixels however it is stored.

Videos are decoded to their stored pixels whatever rotation the container declares (a phone's display matrix);
the reader turns that rotation into ``rotate_k``, which is applied here like any other source's. Frame n of a
video is the n-th frame in presentation order of its packets, for decord and PyAV alike.
"""
from __future__ import annotations

import bisect
import math
import os
import struct
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pyarrow as pa

from pipeline.core.depth_bin import KIND_DEFLATE, KIND_RECORD, read_depth_frame
from pipeline.core.errors import InputError


def read_range(path: str | os.PathLike, offset: int, length: int, what: str = "") -> bytes:
    """``length`` bytes of a file at ``offset``; InputError naming the file (a ``what`` file) when it ends first."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise InputError(path, f"truncated{' ' + what if what else ''}: wanted {length} bytes at offset {offset}, "
                               f"got {len(data)}")
    return data


def decode_image_bytes(data: bytes, path: str, what: str = "image") -> np.ndarray:
    # libjpeg (through OpenCV) only warns on a JPEG cut short and returns grey pixels; require the end marker and a
    # strict PIL decode so a truncated or damaged frame is an error, not silently wrong pixels. (Damage inside the
    # entropy-coded data can still decode to valid-looking garbage: no JPEG decoder can detect every such case.)
    if data[:2] == b"\xff\xd8":
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise InputError(path, f"corrupt {what}: JPEG without end-of-image marker (truncated)")
        _verify_jpeg(data, path, what)
    buf = np.frombuffer(data, np.uint8)
    # Raw pixels: orientation is the reader's business (rotate_k), so EXIF orientation tags must not rotate them.
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if len(buf) else None
    if img is None:
        raise InputError(path, f"corrupt {what}: cannot decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _verify_jpeg(data: bytes, path: str, what: str) -> None:
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # PIL raises on premature end / broken data where libjpeg via OpenCV only warns
    except Exception as exc:  # noqa: BLE001 - any decoder complaint means a damaged frame
        raise InputError(path, f"corrupt {what}: {exc}") from exc


# ---- videos -------------------------------------------------------------------------------------------------------

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
_FIXED_16_16 = float(1 << 16)


def quarter_turns_from_display_matrix(matrix: Sequence[int]) -> int:
    """``np.rot90`` count (counter-clockwise quarter turns) that shows a frame as a container's display matrix asks.

    ``matrix``: FFmpeg's ``AV_PKT_DATA_DISPLAYMATRIX``, 9 int32 (row-major 3x3; a, b, c, d in 16.16 fixed point).
    Players rotate by ``-atan2(b, a)`` degrees counter-clockwise (FFmpeg's ``av_display_rotation_get``); phones
    write a pure rotation by a multiple of 90 degrees. Anything else (a mirror, a shear, another angle) raises
    ValueError: the frame cannot be made upright by quarter turns.
    """
    if len(matrix) != 9:
        raise ValueError(f"display matrix needs 9 values, got {len(matrix)}")
    a, b, c, d = (matrix[i] / _FIXED_16_16 for i in (0, 1, 3, 4))
    if matrix[2] or matrix[5] or not matrix[8]:
        raise ValueError(f"display matrix {list(matrix)} is a perspective transform, not a rotation")
    if abs(a * d - b * c - 1.0) > 1e-3 or abs(a - d) > 1e-3 or abs(b + c) > 1e-3:
        raise ValueError(f"display matrix {list(matrix)} mirrors or scales the frame (only rotations are supported)")
    angle = -math.degrees(math.atan2(b, a))  # counter-clockwise
    turns = round(angle / 90.0)
    if abs(angle - 90.0 * turns) > 0.01:
        raise ValueError(f"display rotation {angle:.2f} degrees is not a multiple of 90")
    return turns % 4


def quarter_turns_from_rotate_tag(value: str) -> int:
    """``np.rot90`` count for a legacy ``rotate`` stream tag (degrees clockwise, as old FFmpeg wrote it)."""
    try:
        degrees = float(value)
    except ValueError:
        raise ValueError(f"rotate tag {value!r} is not a number") from None
    if not math.isfinite(degrees) or degrees % 90:
        raise ValueError(f"rotate tag {value!r} is not a multiple of 90 degrees")
    return int(-degrees // 90) % 4


def frame_quarter_turns(frame: Any, stream: Any) -> int:
    """Container rotation of a decoded PyAV frame: its display matrix side data, else the stream's ``rotate`` tag
    (:func:`rotate_tag`), else none. ValueError for a rotation quarter turns cannot undo."""
    from av.sidedata.sidedata import Type

    for side in frame.side_data:
        if side.type == Type.DISPLAYMATRIX:
            return quarter_turns_from_display_matrix(struct.unpack("<9i", bytes(side)))
    tag = rotate_tag(stream)
    return quarter_turns_from_rotate_tag(tag) if tag is not None else 0


def rotate_tag(stream: Any) -> str | None:
    """A stream's legacy ``rotate`` tag (Matroska stores tags upper-case: ``ROTATE``), or None."""
    return next((value for key, value in stream.metadata.items() if key.lower() == "rotate"), None)


def _stored_rotation(path: str) -> int | None:
    """Quarter turns the container asks for (from its first frame), or None when PyAV cannot read the first frame."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            frame = next(container.decode(stream), None)
            return None if frame is None else frame_quarter_turns(frame, stream)
    except (av.error.FFmpegError, IndexError, ValueError, OSError):
        return None


def _decode_video(path: str, frame_numbers: Sequence[int]) -> dict[int, np.ndarray]:
    """The stored pixels (no container rotation: ``rotate_k`` is applied by the caller) of the given frame numbers.

    Frame n is the n-th frame in presentation order. decord reads it when the container declares no rotation (decord
    applies a display matrix itself, and returns broken 4-channel frames for 90-degree ones); PyAV otherwise, and for
    containers decord refuses.
    """
    wanted = sorted(set(int(i) for i in frame_numbers))
    if not Path(path).exists():
        raise InputError(path, "video file not found")
    decord_problem = "container declares a rotation"
    if _stored_rotation(path) in (0, None):
        try:
            import decord

            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            if wanted and wanted[-1] >= len(vr):
                raise InputError(path, f"video has {len(vr)} frames, frame {wanted[-1]} requested")
            batch = vr.get_batch(wanted).asnumpy()
            return {i: batch[k] for k, i in enumerate(wanted)}
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - decord raises plain RuntimeErrors / DECORDError
            decord_problem = str(exc)
    try:
        return _decode_video_av(path, wanted)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV / FFmpeg errors on damaged data
        raise InputError(path, f"corrupt video: decord: {decord_problem}; PyAV: {exc}") from exc


def presentation_timeline(container: Any, stream: Any) -> tuple[list[int], list[int]] | None:
    """(pts of every frame in presentation order, pts of the key frames), from the packets alone (no decoding), as
    decord indexes a video; None when some packet has no pts. Packets an edit list discards are not frames."""
    frame_pts, key_pts = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        if packet.pts is None:
            return None
        frame_pts.append(int(packet.pts))
        if packet.is_keyframe:
            key_pts.append(int(packet.pts))
    return sorted(frame_pts), sorted(key_pts)


def _decode_video_av(path: str, wanted: list[int]) -> dict[int, np.ndarray]:
    """PyAV decoding of frame numbers: seek to the key frame before each wanted frame unless decoding on from the
    previous one is shorter, then decode up to its pts (sequentially when the packets carry no pts)."""
    import av

    out: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1        # one CPU per decode task, as decord is used
        timeline = presentation_timeline(container, stream)
        if timeline is None:
            container.seek(0)
            return _decode_sequential(path, container, stream, wanted)
        frame_pts, key_pts = timeline
        if wanted and wanted[-1] >= len(frame_pts):
            raise InputError(path, f"video has {len(frame_pts)} frames, frame {wanted[-1]} requested")
        frames = None
        position: int | None = None   # pts of the last decoded frame
        for number in wanted:
            target = frame_pts[number]
            key = key_pts[max(0, bisect.bisect_right(key_pts, target) - 1)] if key_pts else target
            if frames is None or position is None or position >= target or key > position:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                position = frame.pts
                if position is not None and position >= target:
                    break
            else:
                raise InputError(path, f"video ended before frame {number}")
            if position != target:
                raise InputError(path, f"frame {number} (pts {target}) did not decode; the decoder gave pts {position}")
            out[number] = frame.to_ndarray(format="rgb24")
    return out


def _decode_sequential(path: str, container: Any, stream: Any, wanted: list[int]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    want = set(wanted)
    for i, frame in enumerate(container.decode(stream)):
        if i in want:
            out[i] = frame.to_ndarray(format="rgb24")
        if len(out) == len(want):
            break
    missing = want - set(out)
    if missing:
        raise InputError(path, f"video ended before frame {min(missing)}")
    return out


def decode_colors(frames: pa.Table) -> list[np.ndarray]:
    """Upright RGB uint8 images for every row of ``frames`` (a FRAMES_SCHEMA table or a subset of it)."""
    rows = frames.select(["color_kind", "color_path", "color_offset", "color_length", "rotate_k"]).to_pylist()
    out: list[np.ndarray | None] = [None] * len(rows)
    videos: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["color_kind"] == "video":
            videos[r["color_path"]].append(i)
        elif r["color_kind"] == "sens_jpeg":
            out[i] = decode_image_bytes(read_range(r["color_path"], r["color_offset"], r["color_length"]),
                                        r["color_path"], f"JPEG at byte {r['color_offset']}")
        elif r["color_kind"] == "image":
            if not Path(r["color_path"]).exists():
                raise InputError(r["color_path"], "image file not found")
            out[i] = decode_image_bytes(Path(r["color_path"]).read_bytes(), r["color_path"])
        else:
            raise InputError(r["color_path"], f"unknown colour source kind {r['color_kind']!r}")
    for path, idx in videos.items():
        decoded = _decode_video(path, [rows[i]["color_offset"] for i in idx])
        for i in idx:
            out[i] = decoded[rows[i]["color_offset"]]
    return [np.ascontiguousarray(np.rot90(img, int(r["rotate_k"]))) for img, r in zip(out, rows)]


def decode_depths(frames: pa.Table) -> list[np.ndarray | None]:
    """Upright depth maps in metres (float32, 0 = invalid) for every row; None where the frame has no depth."""
    out: list[np.ndarray | None] = []
    columns = ["depth_kind", "depth_path", "depth_offset", "depth_length", "depth_width", "depth_height",
               "depth_scale", "rotate_k"]
    for r in frames.select(columns).to_pylist():
        kind, path = r["depth_kind"], r["depth_path"]
        w, h = r["depth_width"], r["depth_height"]
        if kind == "none":
            out.append(None)
            continue
        if kind == "sens_zlib_u16":
            raw = zlib.decompress(read_range(path, r["depth_offset"], r["depth_length"]))
            depth = np.frombuffer(raw, "<u2").reshape(h, w).astype(np.float32) * r["depth_scale"]
        elif kind == "png_u16":
            img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if img is None:
                raise InputError(path, "depth PNG missing or corrupt")
            depth = img.astype(np.float32) * r["depth_scale"]
        elif kind in (KIND_DEFLATE, KIND_RECORD):
            depth = read_depth_frame(path, kind, r["depth_offset"], r["depth_length"], w, h) * np.float32(r["depth_scale"])
        else:
            raise InputError(path, f"unknown depth kind {kind!r}")
        out.append(np.ascontiguousarray(np.rot90(depth, int(r["rotate_k"]))))
    return out
