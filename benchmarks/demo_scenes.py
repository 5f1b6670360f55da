"""The demo's scenes as benchmark inputs: the synthetic rooms of ``vlm3r-data demo`` (seed 0; without the wall-mounted
objects the demo has added since, as the results in ``benchmarks/results`` were measured), written as a real ScanNet
release, ingested, and their manifest frames decoded and preprocessed exactly as ``extract`` does."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cli import main as cli_main  # noqa: E402
from pipeline.core.layout import DatasetRoot, scene_key  # noqa: E402


def demo_root(workdir: Path, scenes: int = 3, seed: int = 0) -> DatasetRoot:
    """A dataset root with the demo's first ``scenes`` rooms ingested from ScanNet's raw format (reused if there)."""
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scenes

    root = DatasetRoot(workdir / "root")
    if len(root.scenes("scannet")) == scenes:
        return root
    for scene in generate_scenes(scenes, seed=seed):
        write_scannet(scene, workdir / "raw")
    status = cli_main(["ingest", "--dataset", "scannet", "--raw", str(workdir / "raw"), "--out", str(root.path),
                       "--local"])
    if status != 0:
        raise RuntimeError(f"ingest of the demo scenes failed (exit {status})")
    return root


def demo_videos(root: DatasetRoot, frames_per_video: int, size: int = 432) -> list[tuple[str, np.ndarray]]:
    """(scene key, preprocessed frames [T,3,size,size] float32) of every ingested scene: ``frames_per_video`` frames
    spread evenly over its manifest (32 frames), as extract decodes them."""
    from workers.extract import ExtractOptions, SceneJob, decode_scene

    options = ExtractOptions(input_size=size)
    videos = []
    for dataset, scene_id in root.scenes():
        job = SceneJob(dataset, scene_id, scene_key(dataset, scene_id), str(root.scene_dir(dataset, scene_id)))
        pixels = decode_scene(job, options).pixels
        ranks = np.linspace(0, len(pixels) - 1, frames_per_video).round().astype(int)
        videos.append((job.key, np.ascontiguousarray(pixels[ranks])))
    return videos
