"""Decode the colour (and depth) of a frame list, whatever way the source stores it.

Frames are addressed by the references in the canonical ``frames.parquet`` (see ``FRAMES_SCHEMA``): a JPEG byte
range inside a ``.sens``, a frame of a video, or an image file. Every path returns upright RGB uint8 ``[H, W, 3]``;
JPEG bytes are decoded by OpenCV in all cases, so the same image gives the same pixels however it is stored.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError


def _read_range(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise InputError(path, f"truncated: wanted {length} bytes at offset {offset}, got {len(data)}")
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


def _decode_video(path: str, frame_numbers: Sequence[int]) -> dict[int, np.ndarray]:
    """Decode the given frame numbers of a video (decord; PyAV as a fallback for containers decord refuses)."""
    wanted = sorted(set(int(i) for i in frame_numbers))
    if not Path(path).exists():
        raise InputError(path, "video file not found")
    try:
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        if wanted and wanted[-1] >= len(vr):
            raise InputError(path, f"video has {len(vr)} frames, frame {wanted[-1]} requested")
        batch = vr.get_batch(wanted).asnumpy()
        return {i: batch[k] for k, i in enumerate(wanted)}
    except InputError:
        raise
    except Exception as decord_exc:  # noqa: BLE001 - decord raises plain RuntimeErrors / DECORDError
        try:
            return _decode_video_av(path, wanted)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"corrupt video: {decord_exc}; PyAV: {exc}") from exc


def _decode_video_av(path: str, wanted: list[int]) -> dict[int, np.ndarray]:
    import av

    out: dict[int, np.ndarray] = {}
    want = set(wanted)
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
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
            out[i] = decode_image_bytes(_read_range(r["color_path"], r["color_offset"], r["color_length"]),
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
    for r in frames.to_pylist():
        kind, path = r["depth_kind"], r["depth_path"]
        w, h = r["depth_width"], r["depth_height"]
        if kind == "none":
            out.append(None)
            continue
        if kind == "sens_zlib_u16":
            raw = zlib.decompress(_read_range(path, r["depth_offset"], r["depth_length"]))
            depth = np.frombuffer(raw, "<u2").reshape(h, w).astype(np.float32) * r["depth_scale"]
        elif kind == "png_u16":
            img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if img is None:
                raise InputError(path, "depth PNG missing or corrupt")
            depth = img.astype(np.float32) * r["depth_scale"]
        elif kind in ("depth_bin_deflate_f32", "depth_bin_record"):
            from pipeline.core.depth_bin import read_depth_frame

            depth = read_depth_frame(path, kind, r["depth_offset"], r["depth_length"], w, h) * np.float32(r["depth_scale"])
        else:
            raise InputError(path, f"unknown depth kind {kind!r}")
        out.append(np.ascontiguousarray(np.rot90(depth, int(r["rotate_k"]))))
    return out
