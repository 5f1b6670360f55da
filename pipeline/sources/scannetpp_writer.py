"""Write a :class:`SyntheticScene` as a real ScanNet++ release folder (the layout and formats of the v1/v2 data).

``raw_root/data/<scene_id>/``:

- ``scans/mesh_aligned_0.05.ply`` (+ an identical ``_semantic`` copy), ``segments.json`` (one segment per vertex,
  as in the release) and ``segments_anno.json`` (one segGroup per object, ``objectId`` = the synthetic instance id,
  ``obb`` with rows-as-axes ``normalizedAxes`` and the AABB of its corners as ``min``/``max``);
- ``iphone/rgb.mp4`` (or ``.mkv``): H.264 in RGB 4:4:4 at qp 0 (``libx264rgb``), i.e. a lossless stream, so decoded
  frames equal the rendered RGB; the real release is lossy yuv420, which changes pixels but not the layout;
- ``iphone/pose_intrinsic_imu.json``: per ``frame_%06d`` the timestamp, the 3x3 intrinsic (for the video size),
  ``aligned_pose`` (camera-to-world, OpenCV; ``-Infinity`` everywhere for the scene's invalid frames) and a ``pose``
  in an ARKit-like y-up world with an OpenGL camera, which a reader must not use with the mesh;
- ``iphone/depth.bin`` at the real 256x192 (nearest-neighbour resampled from the rendered depth) in one of
  :data:`pipeline.core.depth_bin.ENCODINGS`;
- ``iphone/colmap/{cameras,images,points3D}.txt``: an OPENCV camera and every ``colmap_stride``-th valid frame;
- optionally ``iphone/rgb/frame_%06d.jpg`` (what the official ``prepare_iphone_data`` extracts).

Root files are rebuilt from every scene under ``raw_root/data`` on each call, so several scenes written into one
root give the same files whatever the order: ``splits/nvs_sem_<split>.txt`` (merged, sorted) and ``metadata/``
class lists and ``semantic_benchmark/map_benchmark.csv``. Not safe to call concurrently on one root.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.atomic import write_bytes, write_text
from pipeline.core.ply import write_ply
from pipeline.core.scene import box_aabb
from pipeline.sources.colmap import (ColmapCamera, ColmapImage, rotmat_to_qvec, world_to_camera_inverse,
                                     write_cameras_txt, write_images_txt, write_points3d_txt)
from pipeline.core.depth_bin import DEPTH_HEIGHT, DEPTH_WIDTH, write_depth_bin
from pipeline.sources.synthetic import SyntheticScene
from pipeline.sources.video_writer import mux_video, video_fps

# Structure classes that ScanNet++'s instance benchmark leaves out (its map_benchmark.csv maps them to 'None').
_STRUCTURE_CLASSES = frozenset({"wall", "floor", "ceiling", "doorframe", "window frame"})
# ARKit-like raw world: y-up. Maps z-up mesh coordinates (x, y, z) to (x, z, -y).
_ZUP_TO_YUP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
DEFAULT_FPS = 60  # the iPhone stream's rate


def scannetpp_scene_id(name: str) -> str:
    """10 lowercase hex chars, like real ScanNet++ ids, derived deterministically from the synthetic name."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]


def write_video(path: Path, rgb: np.ndarray, fps: Fraction) -> None:
    """Lossless H.264 (RGB 4:4:4, qp 0) in mp4 or mkv (by the suffix), one thread so the bytes are reproducible."""
    mux_video(path, rgb, fps, "libx264rgb", "rgb24", {"qp": "0", "preset": "medium", "threads": "1"})


def _resample_depth(depth_m: np.ndarray) -> np.ndarray:
    """[T, H, W] -> [T, 192, 256] nearest-neighbour (the iPhone depth is always 256x192)."""
    if depth_m.shape[1:] == (DEPTH_HEIGHT, DEPTH_WIDTH):
        return depth_m.astype(np.float32)
    return np.stack([cv2.resize(d.astype(np.float32), (DEPTH_WIDTH, DEPTH_HEIGHT), interpolation=cv2.INTER_NEAREST)
                     for d in depth_m])


def _matrix(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(m, np.float64)]


def _pose_json(scene: SyntheticScene) -> str:
    invalid = set(scene.invalid_frames)
    lost = np.full((4, 4), -np.inf)
    frames = {}
    for k, c2w in enumerate(np.asarray(scene.camera_to_world, np.float64)):
        aligned = lost if k in invalid else c2w
        frames[f"frame_{k:06d}"] = {
            "timestamp": float(scene.timestamps[k]),
            "intrinsic": _matrix(scene.intrinsics),
            "pose": _matrix(aligned if k in invalid else _ZUP_TO_YUP @ c2w @ _OPENCV_TO_OPENGL),
            "aligned_pose": _matrix(aligned),
            "imu": {},
        }
    # allow_nan: lost poses are written as -Infinity, which Python's json (the format's producer and readers) accepts.
    return json.dumps(frames, indent=1, allow_nan=True) + "\n"


def _segments_anno(scene: SyntheticScene, scene_id: str) -> dict:
    vertex_instance = np.asarray(scene.vertex_instance, np.int64)
    groups = []
    for k, obj in enumerate(sorted(scene.objects, key=lambda o: o.instance_id)):
        lo, hi = box_aabb(obj.centroid, obj.lengths, obj.axes)
        groups.append({
            "id": k + 1,
            "objectId": int(obj.instance_id),
            "label": obj.label,
            # One segment per vertex (segments.json is the identity), so segment ids are the vertex ids.
            "segments": np.flatnonzero(vertex_instance == obj.instance_id).tolist(),
            "obb": {
                "centroid": [float(v) for v in obj.centroid],
                "axesLengths": [float(v) for v in obj.lengths],
                "normalizedAxes": [float(v) for v in np.asarray(obj.axes, np.float64).reshape(9)],
                "min": [float(v) for v in lo],
                "max": [float(v) for v in hi],
            },
        })
    return {"sceneId": scene_id, "segGroups": groups}


def _colmap(scene: SyntheticScene, colmap_dir: Path, stride: int) -> None:
    fx, fy = scene.intrinsics[0, 0], scene.intrinsics[1, 1]
    cx, cy = scene.intrinsics[0, 2], scene.intrinsics[1, 2]
    write_cameras_txt(colmap_dir / "cameras.txt",
                      [ColmapCamera(1, "OPENCV", scene.width, scene.height, (fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0))])
    invalid = set(scene.invalid_frames)
    images = []
    for k in range(0, len(scene.camera_to_world), stride):
        if k in invalid:
            continue  # COLMAP registers only frames it could localise
        w2c = world_to_camera_inverse(scene.camera_to_world[k])
        images.append(ColmapImage(k + 1, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], 1, f"frame_{k:06d}.jpg"))
    write_images_txt(colmap_dir / "images.txt", images)
    write_points3d_txt(colmap_dir / "points3D.txt", np.zeros((0, 3)), np.zeros((0, 3), np.uint8))


def _write_root_files(raw_root: Path, scene_id: str, split: str) -> None:
    split_path = raw_root / "splits" / f"nvs_sem_{split}.txt"
    listed = set(split_path.read_text().split()) if split_path.exists() else set()
    write_text(split_path, "\n".join(sorted(listed | {scene_id})) + "\n")

    counts: dict[str, int] = {}
    for anno in sorted((raw_root / "data").glob("*/scans/segments_anno.json")):
        for group in json.loads(anno.read_text())["segGroups"]:
            counts[group["label"]] = counts.get(group["label"], 0) + 1
    labels = sorted(counts)
    instance_labels = [name for name in labels if name not in _STRUCTURE_CLASSES]
    meta = raw_root / "metadata"
    write_text(meta / "semantic_classes.txt", "\n".join(labels) + "\n")
    write_text(meta / "instance_classes.txt", "\n".join(instance_labels) + "\n")
    write_text(meta / "semantic_benchmark" / "top100.txt", "\n".join(labels) + "\n")
    write_text(meta / "semantic_benchmark" / "top100_instance.txt", "\n".join(instance_labels) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "count", "semantic_map_to", "instance_map_to"])
    for name in labels:  # empty target = keep the class as is; 'None' = left out of that benchmark
        writer.writerow([name, counts[name], "", "None" if name in _STRUCTURE_CLASSES else ""])
    write_text(meta / "semantic_benchmark" / "map_benchmark.csv", table.getvalue())


def write_scannetpp(scene: SyntheticScene, raw_root: Path, split: str = "train", depth_encoding: str = "deflate",
                    video_container: str = "mp4", colmap_stride: int = 3, extract_frames: bool = False) -> str:
    """Write ``scene`` under ``raw_root/data/<scene_id>/`` plus the root split and class files; returns the id.

    ``depth_encoding``: ``deflate`` (whole file), ``lz4_records`` or ``deflate_records``. ``video_container``:
    ``mp4`` (v1 name) or ``mkv`` (v2 name). ``extract_frames`` also writes ``iphone/rgb/frame_%06d.jpg`` (quality 95).
    """
    if video_container not in ("mp4", "mkv"):
        raise ValueError(f"video_container must be 'mp4' or 'mkv', got {video_container!r}")
    raw_root = Path(raw_root)
    scene_id = scannetpp_scene_id(scene.name)
    scene_dir = raw_root / "data" / scene_id
    scans, iphone = scene_dir / "scans", scene_dir / "iphone"

    write_ply(scans / "mesh_aligned_0.05.ply", scene.vertices, scene.faces, scene.colors)
    write_bytes(scans / "mesh_aligned_0.05_semantic.ply", (scans / "mesh_aligned_0.05.ply").read_bytes())
    write_text(scans / "segments.json", json.dumps(
        {"params": {}, "sceneId": scene_id, "segIndices": list(range(len(scene.vertices)))}) + "\n")
    write_text(scans / "segments_anno.json", json.dumps(_segments_anno(scene, scene_id), indent=1) + "\n")

    rgb = np.asarray(scene.rgb, np.uint8)
    write_video(iphone / f"rgb.{video_container}", rgb, video_fps(scene.timestamps, DEFAULT_FPS))
    stale = iphone / ("rgb.mkv" if video_container == "mp4" else "rgb.mp4")
    stale.unlink(missing_ok=True)  # a rewrite with the other container must not leave two videos
    if extract_frames:
        for k, img in enumerate(rgb):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            write_bytes(iphone / "rgb" / f"frame_{k:06d}.jpg", buf.tobytes())
    write_text(iphone / "pose_intrinsic_imu.json", _pose_json(scene))
    write_depth_bin(iphone / "depth.bin", _resample_depth(np.asarray(scene.depth)), depth_encoding)
    _colmap(scene, iphone / "colmap", colmap_stride)

    _write_root_files(raw_root, scene_id, split)
    return scene_id
