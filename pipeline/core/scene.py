"""The canonical scene: one z-up, metric, gravity-aligned world per scene, whatever dataset it came from.

Readers (``pipeline.sources.*``) produce a :class:`CanonicalScene`; ingest writes it with :func:`write_scene` to
``ROOT/scenes/<dataset>/<scene_id>/`` as ``scene.json``, ``frames.parquet``, ``objects.parquet``, ``mesh.ply`` (aligned
vertices, colours and a per-vertex ``instance_id``, -1 where none), ``manifest.parquet`` and finally the done-marker.

A scene declares where its poses come from (``CanonicalScene.poses``): ``"dataset"`` for a scan (poses, intrinsics,
mesh; the manifest samples among the frames with a valid pose), or ``"none"`` for a plain video (no pose, intrinsics,
depth or mesh: ``scene.json`` says so, every pose in ``frames.parquet`` and the manifest is NaN and invalid, no
``mesh.ply`` is written, and each row of ``frames.parquet`` is a frame the reader decoded, so the manifest samples
among all rows). Scans' files are exactly what they were before the declaration existed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.atomic import read_json, sha256_file, write_json
from pipeline.core.errors import InputError
from pipeline.core.layout import DONE_MARKER, VIDEO_DATASET, DatasetRoot, scene_key
from pipeline.core.ply import read_ply, write_ply
from pipeline.core.schemas import (FRAMES_SCHEMA, MANIFEST_SCHEMA, OBJECTS_SCHEMA, column_as_array, read_table,
                              table_from_columns, write_table)

DEFAULT_NUM_FRAMES = 32
# What the frames of a scene are made of (the part of an ingested scene that extraction reads).
FRAME_FILES = ("frames.parquet", "manifest.parquet")
POSES_DATASET = "dataset"    # poses, intrinsics and mesh from the dataset (scans)
POSES_NONE = "none"          # a plain video: decodable frames only, no pose, intrinsics, depth or mesh
POSES = (POSES_DATASET, POSES_NONE)


@dataclass
class CanonicalScene:
    dataset: str
    scene_id: str
    split: str
    frames: pa.Table                      # FRAMES_SCHEMA
    objects: pa.Table                     # OBJECTS_SCHEMA
    mesh_vertices: np.ndarray             # [V, 3] float64, aligned world (z-up, metres)
    mesh_faces: np.ndarray                # [F, 3] int64
    mesh_colors: np.ndarray | None = None     # [V, 3] uint8
    vertex_instance: np.ndarray | None = None  # [V] int64 instance id, -1 = none
    meta: dict[str, Any] = field(default_factory=dict)  # video source, alignment, label map, raw paths, ...
    poses: str = POSES_DATASET            # POSES: where poses come from ("none": a plain video)

    def __post_init__(self) -> None:
        if self.poses not in POSES:
            raise ValueError(f"poses must be one of {POSES}, got {self.poses!r}")

    @property
    def camera_to_world(self) -> np.ndarray:
        return column_as_array(self.frames, "camera_to_world").reshape(-1, 4, 4)


def uniform_ranks(valid: np.ndarray, num_frames: int = DEFAULT_NUM_FRAMES) -> np.ndarray:
    """Row positions of ``num_frames`` frames sampled uniformly among the valid ones (all of them if fewer).

    ``floor(linspace(0, M-1, N))`` over the M valid frames, as VLM-3R samples, made unique and increasing.
    """
    candidates = np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(candidates) <= num_frames:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, num_frames).astype(np.int64)
    return candidates[np.unique(picks)]


def manifest_candidates(frames: pa.Table, poses: str = POSES_DATASET) -> np.ndarray:
    """Which rows the manifest samples from: frames with a valid pose, or (``poses="none"``) every row, each being a
    frame the video reader decoded."""
    if poses == POSES_NONE:
        return np.ones(frames.num_rows, dtype=bool)
    return column_as_array(frames, "valid").astype(bool)


def build_manifest(frames: pa.Table, num_frames: int = DEFAULT_NUM_FRAMES, poses: str = POSES_DATASET) -> pa.Table:
    rows = uniform_ranks(manifest_candidates(frames, poses), num_frames)
    sub = frames.take(pa.array(rows, type=pa.int64()))
    return table_from_columns(MANIFEST_SCHEMA, {
        "rank": np.arange(len(rows), dtype=np.int32),
        "frame_index": column_as_array(sub, "frame_index"),
        "timestamp": column_as_array(sub, "timestamp"),
        "camera_to_world": column_as_array(sub, "camera_to_world"),
        "valid": column_as_array(sub, "valid"),
    })


def write_scene(scene_dir: str | Path, scene: CanonicalScene, num_frames: int = DEFAULT_NUM_FRAMES) -> dict[str, Any]:
    """Write every file of the canonical scene and the frame manifest (any old done-marker is removed first; the
    caller writes the new one last). Returns the stats, with the sha256 of every file."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    (scene_dir / DONE_MARKER).unlink(missing_ok=True)
    valid = column_as_array(scene.frames, "valid")
    posed = scene.poses == POSES_DATASET
    if posed:
        if not valid.any():
            raise InputError(scene.meta.get("pose_source", scene_dir), "scene has no frame with a valid pose")
        if len(scene.mesh_vertices) == 0:
            raise InputError(scene.meta.get("mesh_source", scene_dir), "mesh has no vertices")
    else:
        if scene.frames.num_rows == 0:
            raise InputError(scene.meta.get("video_source", {}).get("path", scene_dir), "video has no decodable frame")
        if valid.any() or len(scene.mesh_vertices) or scene.objects.num_rows:
            raise ValueError(f"{scene.dataset}/{scene.scene_id}: a scene without poses cannot have valid poses, "
                             "a mesh or objects")
    write_table(scene_dir / "frames.parquet", scene.frames, FRAMES_SCHEMA)
    write_table(scene_dir / "objects.parquet", scene.objects, OBJECTS_SCHEMA)
    files = ["frames.parquet", "objects.parquet", "manifest.parquet", "scene.json"]
    if posed:
        extra = {}
        if scene.vertex_instance is not None:
            extra["instance_id"] = np.asarray(scene.vertex_instance, dtype=np.int32)
        write_ply(scene_dir / "mesh.ply", scene.mesh_vertices, scene.mesh_faces, scene.mesh_colors, extra)
        files.insert(3, "mesh.ply")
    else:
        (scene_dir / "mesh.ply").unlink(missing_ok=True)
    manifest = build_manifest(scene.frames, num_frames, scene.poses)
    write_table(scene_dir / "manifest.parquet", manifest, MANIFEST_SCHEMA)
    if posed:
        info = {
            "dataset": scene.dataset, "scene_id": scene.scene_id, "split": scene.split,
            "units": "metres", "up_axis": "z", "camera": "opencv", "mesh": "mesh.ply", **scene.meta,
        }
    else:
        info = {
            "dataset": scene.dataset, "scene_id": scene.scene_id, "split": scene.split,
            "poses": POSES_NONE, "intrinsics": "none", "depth": "none", "mesh": None, **scene.meta,
        }
    write_json(scene_dir / "scene.json", info)
    return {
        "frames": int(len(valid)), "valid_frames": int(valid.sum()), "manifest_frames": int(manifest.num_rows),
        "objects": int(scene.objects.num_rows), "mesh_vertices": int(len(scene.mesh_vertices)),
        "mesh_faces": int(len(scene.mesh_faces)), "poses": scene.poses,
        "sha256": {name: sha256_file(scene_dir / name) for name in files},
    }


def is_complete(scene_dir: str | Path) -> bool:
    return (Path(scene_dir) / DONE_MARKER).exists()


def read_scene(scene_dir: str | Path, with_mesh: bool = True) -> CanonicalScene:
    scene_dir = Path(scene_dir)
    if not is_complete(scene_dir):
        raise FileNotFoundError(f"{scene_dir}: not a completely ingested scene (no {DONE_MARKER})")
    info = read_json(scene_dir / "scene.json")
    poses = info.get("poses", POSES_DATASET)
    verts = np.zeros((0, 3)); faces = np.zeros((0, 3), np.int64); colors = inst = None
    if with_mesh and info.get("mesh") is not None:
        mesh = read_ply(scene_dir / "mesh.ply")
        verts, faces, colors = mesh.vertices, mesh.faces, mesh.colors
        inst = mesh.vertex["instance_id"].astype(np.int64) if "instance_id" in mesh.vertex else None
    declared = ("dataset", "scene_id", "split") if poses == POSES_DATASET else \
        ("dataset", "scene_id", "split", "poses", "intrinsics", "depth", "mesh")
    meta = {k: v for k, v in info.items() if k not in declared}
    return CanonicalScene(
        dataset=info["dataset"], scene_id=info["scene_id"], split=info["split"],
        frames=read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA),
        objects=read_table(scene_dir / "objects.parquet", OBJECTS_SCHEMA),
        mesh_vertices=verts, mesh_faces=faces, mesh_colors=colors, vertex_instance=inst, meta=meta, poses=poses)


def scene_poses(scene_dir: str | Path) -> str:
    """Where an ingested scene's poses come from (``POSES``): stages that need poses or a mesh (graph, routes, QA)
    skip ``"none"`` scenes."""
    return read_json(Path(scene_dir) / "scene.json").get("poses", POSES_DATASET)


def video_name_index(root: DatasetRoot) -> dict[str, str]:
    """Shard key of every ingested plain video by its name (relative path without suffix, as ``scene.json`` records
    it: ``arkitscenes/41069025``), which is how benchmark questions name videos (``<dataset>/<scene_name>``)."""
    index = {}
    for dataset, scene_id in root.scenes(VIDEO_DATASET):
        video = read_json(root.scene_dir(dataset, scene_id) / "scene.json").get("video") or {}
        if "name" in video:
            index[str(video["name"])] = scene_key(dataset, scene_id)
    return index


def read_manifest(scene_dir: str | Path) -> pa.Table:
    return read_table(Path(scene_dir) / "manifest.parquet", MANIFEST_SCHEMA)


def manifest_frames(frames: pa.Table, manifest: pa.Table) -> pa.Table:
    """The rows of ``frames`` (FRAMES_SCHEMA) that the manifest names, in rank order."""
    row_of = {int(fi): i for i, fi in enumerate(column_as_array(frames, "frame_index"))}
    try:
        rows = [row_of[int(fi)] for fi in column_as_array(manifest, "frame_index")]
    except KeyError as exc:
        raise ValueError(f"manifest names frame_index {exc.args[0]} that frames.parquet does not have") from None
    return frames.take(pa.array(rows, type=pa.int64()))


# ---- helpers shared by the readers -------------------------------------------------------------------------------

def box_aabb(centroid: np.ndarray, lengths: np.ndarray, axes_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of oriented boxes. ``axes_rows`` [..., 3, 3]: row i is box axis i (world coords)."""
    centroid = np.asarray(centroid, np.float64)
    half = np.asarray(lengths, np.float64)[..., :, None] / 2.0 * np.asarray(axes_rows, np.float64)
    extent = np.abs(half).sum(axis=-2)
    return centroid - extent, centroid + extent


def objects_table(instance_id, label, category, centroid, lengths, axes, num_points) -> pa.Table:
    """Build OBJECTS_SCHEMA rows from oriented boxes; the AABB is derived with rows-as-axes."""
    centroid = np.asarray(centroid, np.float64).reshape(-1, 3)
    lengths = np.asarray(lengths, np.float64).reshape(-1, 3)
    axes = np.asarray(axes, np.float64).reshape(-1, 3, 3)
    lo, hi = box_aabb(centroid, lengths, axes)
    return table_from_columns(OBJECTS_SCHEMA, {
        "instance_id": np.asarray(instance_id, np.int64), "label": list(label), "category": list(category),
        "centroid": centroid, "lengths": lengths, "axes": axes.reshape(-1, 9), "aabb_min": lo, "aabb_max": hi,
        "num_points": np.asarray(num_points, np.int64),
    })


def upright_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gravity-aligned oriented box of a point set: z stays vertical, the yaw is that of the minimum-area
    rectangle enclosing the floor projection (rotating calipers over the convex hull's edges), which is exact
    for box-shaped objects where a PCA yaw is biased by the point distribution.

    Returns centroid [3], lengths [3], axes [3, 3] (rows = axes, right-handed, third row = +z). The first axis is
    the longer floor edge, pointing to +x (or +y when perpendicular to x), so results do not depend on point order.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    xy = pts[:, :2]
    directions = np.array([[1.0, 0.0]])
    if len(np.unique(xy, axis=0)) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = xy[ConvexHull(xy).vertices]
            edges = np.roll(hull, -1, axis=0) - hull
            norms = np.linalg.norm(edges, axis=1)
            directions = edges[norms > 1e-12] / norms[norms > 1e-12, None]
        except QhullError:  # collinear points
            pass
    # Area of the enclosing rectangle for every candidate edge direction.
    perp = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    u, v = xy @ directions.T, xy @ perp.T
    area = np.ptp(u, axis=0) * np.ptp(v, axis=0)
    best = int(np.argmin(np.round(area, 12)))
    major, minor = directions[best], perp[best]
    if np.ptp(xy @ minor) > np.ptp(xy @ major):
        major = minor
    if major[0] < -1e-12 or (abs(major[0]) <= 1e-12 and major[1] < 0):
        major = -major
    axes = np.array([[major[0], major[1], 0.0], [-major[1], major[0], 0.0], [0.0, 0.0, 1.0]])
    local = pts @ axes.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    centroid = ((lo + hi) / 2.0) @ axes
    return centroid, hi - lo, axes


def frames_columns(n: int) -> dict[str, Any]:
    """Default column values for ``n`` frames (readers overwrite what they know)."""
    nan = np.full(n, np.nan)
    return {
        "frame_index": np.arange(n, dtype=np.int64), "timestamp": nan.copy(),
        "camera_to_world": np.full((n, 16), np.nan), "valid": np.zeros(n, bool),
        "fx": nan.copy(), "fy": nan.copy(), "cx": nan.copy(), "cy": nan.copy(),
        "width": np.zeros(n, np.int32), "height": np.zeros(n, np.int32),
        "color_kind": ["image"] * n, "color_path": [""] * n,
        "color_offset": np.zeros(n, np.int64), "color_length": np.zeros(n, np.int64),
        "rotate_k": np.zeros(n, np.int8),
        "depth_kind": ["none"] * n, "depth_path": [""] * n,
        "depth_offset": np.zeros(n, np.int64), "depth_length": np.zeros(n, np.int64),
        "depth_scale": np.full(n, 0.001), "depth_width": np.zeros(n, np.int32), "depth_height": np.zeros(n, np.int32),
        "depth_fx": nan.copy(), "depth_fy": nan.copy(), "depth_cx": nan.copy(), "depth_cy": nan.copy(),
    }


def finite_pose_mask(camera_to_world: np.ndarray, tol: float = 1e-2) -> np.ndarray:
    """True where a [N, 4, 4] (or [N, 16]) pose is entirely finite and its rotation is proper (|det - 1| < tol)."""
    c2w = np.asarray(camera_to_world, np.float64).reshape(-1, 4, 4)
    ok = np.isfinite(c2w).all(axis=(1, 2))
    det = np.full(len(c2w), np.nan)
    det[ok] = np.linalg.det(c2w[ok, :3, :3])
    ok &= np.abs(det - 1.0) < tol
    return ok
