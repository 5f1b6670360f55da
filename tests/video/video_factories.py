"""Tiny real video files written with PyAV: rotation metadata, variable frame rates, corrupt tails, short clips."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

MARK = 255          # the white marker block in the stored top-left corner


def marked_image(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth gradients (kept well by 4:2:0 codecs), a brightness that encodes ``index``, and a white block in the
    top-left corner that shows which way the picture is turned."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 120 / width, y * 120 / height, np.full_like(x, 10 + 20 * index)], axis=-1)
    img[: height // 4, : width // 4] = MARK
    return img.astype(np.uint8)


def noise_image(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Random pixels: every frame costs about as many bytes, so cutting the file cuts frames, not headers."""
    return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_video(path: Path, images: Sequence[np.ndarray], *, fps: int = 10, pts_ms: Sequence[int] | None = None,
                rotation_degrees: float | None = None, display_matrix: Sequence[int] | None = None,
                rotate_tag: str | None = None, codec: str | None = None, gop: int | None = None,
                options: dict | None = None) -> Path:
    """Encode ``images`` (RGB uint8) into ``path`` (container from the suffix). ``pts_ms``: explicit presentation
    times in milliseconds (a variable frame rate); ``rotation_degrees`` / ``display_matrix``: the container's
    display matrix (counter-clockwise degrees, as FFmpeg's ``av_display_rotation_set``); ``rotate_tag``: a legacy
    ``rotate`` stream tag; ``codec``: H.264 by default, VP9 in WebM."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = images[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        codec = codec or ("libvpx-vp9" if path.suffix == ".webm" else "libx264")
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if gop is not None:
            stream.codec_context.gop_size = gop
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation_degrees is not None:
            stream.set_display_rotation(rotation_degrees)
        if display_matrix is not None:
            stream.set_display_matrix(list(display_matrix))
        if rotate_tag is not None:
            stream.metadata["rotate"] = rotate_tag
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_cut_video(path: Path, frames: int, keep_fraction: float) -> Path:
    """A video whose tail is cut off: intra-only noise frames (so every frame is its own packet of similar size),
    the index first (``faststart`` for mp4), then the file truncated to ``keep_fraction`` of its bytes."""
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else None
    write_video(path, [noise_image(i) for i in range(frames)], gop=1, options=options)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path
