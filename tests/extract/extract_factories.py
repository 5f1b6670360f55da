"""Dataset roots for the extraction tests, built with the real writers and readers.

* :func:`ingest_synthetic`: synthetic scenes written as a raw ScanNet release and read back by ``vlm3r-data ingest``
  (colour = JPEG byte ranges inside ``.sens`` files);
* :func:`write_video_scene`: a canonical scene whose colour references are frames of an mp4 encoded with PyAV,
  written with ``pipeline.stages.ingest.write_ingested_scene`` exactly as ingest writes scenes;
* :class:`CrashingFactory`: an encoder factory whose encoder kills its own process (``os._exit``) on a chosen call
  while a flag file exists, to kill a real Ray actor mid-run.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from pipeline.cli import main as cli_main
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import CanonicalScene, frames_columns, objects_table
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns
from pipeline.sources.scannet_writer import write_scannet
from pipeline.sources.synthetic import generate_scene

IMAGE_W, IMAGE_H = 48, 36


def ingest_synthetic(raw: Path, root: Path, frame_counts: list[int], seed0: int = 0) -> None:
    """One synthetic scene per entry of ``frame_counts`` (that many source frames, one of them with a lost pose),
    written as ScanNet and ingested into ``root``."""
    for i, count in enumerate(frame_counts):
        scene = generate_scene(seed0 + i, num_frames=count, width=IMAGE_W, height=IMAGE_H)
        write_scannet(scene, raw)
    status = cli_main(["ingest", "--dataset", "scannet", "--raw", str(raw), "--out", str(root), "--local"])
    assert status == 0


def encode_mp4(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    """RGB uint8 [T, H, W, 3] -> an H.264 mp4 (every frame a key frame, so decoding is exact per frame index)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "1", "crf": "18"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video_scene(root: Path, video_dir: Path, scene_id: str, seed: int, num_frames: int = 5,
                      dataset: str = "arkitscenes") -> Path:
    """A canonical scene whose frames are an mp4 (colour kind "video"); returns the video's path."""
    synth = generate_scene(seed, num_frames=num_frames, width=IMAGE_W, height=IMAGE_H)
    video = video_dir / f"{scene_id}.mp4"
    encode_mp4(video, synth.rgb)
    n = num_frames
    cols = frames_columns(n)
    k = synth.intrinsics
    cols.update({
        "timestamp": synth.timestamps, "camera_to_world": synth.camera_to_world.reshape(n, 16),
        "valid": np.ones(n, bool), "fx": np.full(n, k[0, 0]), "fy": np.full(n, k[1, 1]),
        "cx": np.full(n, k[0, 2]), "cy": np.full(n, k[1, 2]),
        "width": np.full(n, IMAGE_W, np.int32), "height": np.full(n, IMAGE_H, np.int32),
        "color_kind": ["video"] * n, "color_path": [str(video)] * n, "color_offset": np.arange(n, dtype=np.int64),
    })
    objects = objects_table([0], ["chair"], ["chair"], [[1.0, 1.0, 0.5]], [[0.5, 0.5, 1.0]], [np.eye(3)], [0])
    scene = CanonicalScene(
        dataset=dataset, scene_id=scene_id, split="train", frames=table_from_columns(FRAMES_SCHEMA, cols),
        objects=objects, mesh_vertices=synth.vertices, mesh_faces=synth.faces, mesh_colors=synth.colors,
        vertex_instance=synth.vertex_instance, meta={"video_source": str(video)})
    from pipeline.stages.ingest import write_ingested_scene

    write_ingested_scene(DatasetRoot(root), scene, num_frames=num_frames)
    return video


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hash)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class CrashingEncoder:
    def __init__(self, inner, flag: str, crash_on_call: int, remove_flag: bool):
        self.inner, self.flag, self.crash_on_call, self.remove_flag = inner, flag, crash_on_call, remove_flag
        self.calls = 0

    def encode(self, frames, **kwargs):
        self.calls += 1
        if self.calls >= self.crash_on_call and os.path.exists(self.flag):
            if self.remove_flag:
                os.remove(self.flag)
            os._exit(1)  # the process dies like an OOM-killed or preempted worker: no exception, no cleanup
        return self.inner.encode(frames, **kwargs)


class CrashingFactory:
    """Builds the real encoder of ``model`` and wraps it so its process dies on call ``crash_on_call``."""

    def __init__(self, model, flag: Path, crash_on_call: int, remove_flag: bool):
        self.model, self.flag, self.crash_on_call, self.remove_flag = model, str(flag), crash_on_call, remove_flag

    def __call__(self, options):
        return CrashingEncoder(self.model.build_encoder(options), self.flag, self.crash_on_call, self.remove_flag)
