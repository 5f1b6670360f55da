"""Plain video folders from generated scenes, for the demo's video path and for tests.

``write_video_folder`` writes each scene's rendered frames as ``<out>/<dataset>/<scene_name>.mp4``, the way
VSI-Bench ships its evaluation videos (``scene_name`` is the scene id the scan writer of ``dataset`` gives it, so our
own benchmark questions about that scan name this video too), and optionally one phone clip stored sideways: the
same frames turned a quarter in the file, with a -90 degree display matrix that turns them back, as phones store
video filmed in the other orientation (``<out>/phone/<scene_name>_sideways.mov``). Frames are encoded as H.264 4:2:0
at the scene's frame rate.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.sources.synthetic import SyntheticScene

SCENE_NAMERS = {
    "scannet": ("pipeline.sources.scannet_writer", "scannet_scene_id", "scene"),
    "scannetpp": ("pipeline.sources.scannetpp_writer", "scannetpp_scene_id", "name"),
}


def scene_name(scene: SyntheticScene, dataset: str) -> str:
    """The scene id the ``dataset`` writer gives a generated scene (what QA records call ``scene_name``)."""
    import importlib

    if dataset not in SCENE_NAMERS:
        raise ValueError(f"dataset must be one of {sorted(SCENE_NAMERS)}, got {dataset!r}")
    module, func, argument = SCENE_NAMERS[dataset]
    namer = getattr(importlib.import_module(module), func)
    return namer(scene if argument == "scene" else scene.name)


def encode_video(path: Path, frames: np.ndarray, fps: Fraction, rotation_degrees: float | None = None) -> Path:
    """RGB uint8 frames [T, H, W, 3] -> H.264 (yuv420p, reproducible bytes: see below) in the container the suffix
    names; ``rotation_degrees`` sets the display matrix (counter-clockwise, as FFmpeg's av_display_rotation_set)."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 video needs even sizes, got {w}x{h}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Reproducible bytes: one thread and x264's lookahead off (with it, the same frames encoded twice gave different
    # streams, decoded pixels included; with asm=0 they did not: a SIMD path reads padding).
    mux_video(path, frames, fps, "libx264", "yuv420p",
              {"crf": "18", "threads": "1", "x264-params": "rc-lookahead=0:mbtree=0"}, rotation_degrees)
    return path


def mux_video(path: Path, frames: np.ndarray, fps: Fraction, codec: str, pix_fmt: str, options: dict[str, str],
              rotation_degrees: float | None = None) -> None:
    """RGB uint8 frames [T, H, W, 3] encoded with PyAV's ``codec`` into the container the suffix names (mp4, mov,
    mkv), written atomically; frame k at pts k in a 1 / fps time base."""
    import av

    container_format = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[path.suffix.lower()]
    t, h, w, _ = frames.shape
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
            stream.options = dict(options)
            stream.codec_context.time_base = 1 / fps
            if rotation_degrees is not None:
                stream.set_display_rotation(rotation_degrees)
            for k in range(t):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[k]), format="rgb24")
                frame.pts = k
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def video_fps(timestamps: np.ndarray, default: float = 30) -> Fraction:
    """The stream rate implied by the timestamps (integer fps when they are regular), else ``default``."""
    steps = np.diff(np.asarray(timestamps, np.float64))
    if len(steps) == 0 or not np.all(steps > 0):
        return Fraction(default)
    fps = 1.0 / float(np.median(steps))
    return Fraction(round(fps)) if abs(fps - round(fps)) < 1e-3 * fps else Fraction(fps).limit_denominator(1001)


def write_video_folder(scenes: list[SyntheticScene], out: Path, dataset: str = "scannetpp",
                       sideways: bool = True) -> list[str]:
    """Write the scenes as plain videos under ``out``; returns the video names (relative paths without suffix)."""
    out = Path(out)
    names = []
    for scene in scenes:
        name = f"{dataset}/{scene_name(scene, dataset)}"
        encode_video(out / f"{name}.mp4", scene.rgb, video_fps(scene.timestamps))
        names.append(name)
    if sideways and scenes:
        scene = scenes[0]
        stored = np.ascontiguousarray(np.rot90(scene.rgb, 1, axes=(1, 2)))   # the display turns it back clockwise
        name = f"phone/{scene_name(scene, dataset)}_sideways"
        encode_video(out / f"{name}.mov", stored, video_fps(scene.timestamps), rotation_degrees=-90)
        names.append(name)
    return names
