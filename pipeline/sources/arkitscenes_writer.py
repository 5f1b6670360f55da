"""Write a :class:`SyntheticScene` as a real ARKitScenes scan folder, in the ``raw`` or the ``3dod`` layout.

What is written (datasets.md §3, §6.3), for video id ``vid`` under ``RAW_ROOT/<layout>/<Training|Validation>/<vid>/``
(frame files under ``<vid>_frames/`` for 3dod):

- ``lowres_wide/<vid>_<t:.3f>.png``: the rendered RGB stored SIDEWAYS as the sensor would have seen it for the
  given ``sky_direction`` (the reader turns it upright with ``rotate_k``); PNG, so the round trip is lossless;
- ``lowres_depth/<vid>_<t:.3f>.png``: uint16 millimetres, same orientation and size;
- ``lowres_wide_intrinsics/<vid>_<t:.3f>.pincam``: ``w h fx fy cx cy`` of the stored (sideways) image;
- ``lowres_wide.traj``: one ``t rx ry rz tx ty tz`` line per frame with a valid pose, the world->camera transform
  of the stored camera (axis-angle). Timestamps are written with 6 decimals as in the real files, while file names
  carry 3, so the reader has to match by nearest time (exercised whenever a frame time is not a whole millisecond);
  a pose line at every frame keeps the round trip exact. Frames listed in ``invalid_frames`` (or with a
  non-finite pose) get no line, so the reader flags them invalid;
- ``<vid>_3dod_annotation.json``: one entry per annotated object with ``segments.obbAligned`` (rows of
  ``normalizedAxes`` = box axes) and a decoy ``segments.obb`` (a tilted, shifted box, as the real files carry a
  different ``obb``), ``skipped: false``;
- ``<vid>_3dod_mesh.ply``: the mesh with vertex colours;
- ``RAW_ROOT/<layout>/metadata.csv``: ``video_id,visit_id,fold,sky_direction``, merged with the rows already there
  and sorted by video id. No ``.mov`` is written: the reader reads the ``lowres_wide`` frames.

Labels: ARKitScenes annotates only its 17 classes. A synthetic label already in that taxonomy is kept, ``tv``
becomes ``tv_monitor``, and every other label (``floor``, ``wall``, furniture outside the 17) is not annotated.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.core.atomic import write_bytes, write_text
from pipeline.core.ply import write_ply
from pipeline.sources.arkitscenes import (CLASS_NAMES, DEFAULT_POSE_MATCH_TOLERANCE_S, LAYOUTS, SKY_ROTATE_K,
                                          SPLIT_TO_FOLD, invert_rigid, read_scan_csv, rotate_camera, rotate_pose)
from pipeline.sources.synthetic import SyntheticScene

# Synthetic category -> ARKitScenes label, for the names that differ.
SYNTHETIC_TO_ARKIT = {"tv": "tv_monitor"}
METADATA_COLUMNS = ("video_id", "visit_id", "fold", "sky_direction")


def arkitscenes_label(label: str) -> str | None:
    """The ARKitScenes label of a synthetic category, or None where ARKitScenes does not annotate it."""
    name = SYNTHETIC_TO_ARKIT.get(label, label)
    return name if name in CLASS_NAMES else None


def _digits(text: str, n: int) -> str:
    """A deterministic n-digit decimal id (no leading zero) from a text."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return str(10 ** (n - 1) + value % (9 * 10 ** (n - 1)))


def video_id_for(name: str) -> str:
    """The 8-digit ARKitScenes video id of a synthetic scene name."""
    return _digits(f"video/{name}", 8)


def visit_id_for(name: str) -> str:
    """The 6-digit visit id of a synthetic scene name (one scan per visit)."""
    return _digits(f"visit/{name}", 6)


def _png(image: np.ndarray, path: Path) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    write_bytes(path, buf.tobytes())


def _number(x: float) -> str:
    return repr(float(x))   # shortest text that parses back to the same float


def _decoy_obb(centroid: np.ndarray, lengths: np.ndarray, axes_rows: np.ndarray) -> dict:
    """A different, tilted box for the ``obb`` key, which readers must not use."""
    tilt = Rotation.from_euler("x", 10.0, degrees=True).as_matrix()
    return {"centroid": (centroid + [0.1, -0.1, 0.05]).tolist(), "axesLengths": (lengths * 1.1).tolist(),
            "normalizedAxes": (axes_rows @ tilt.T).reshape(-1).tolist()}


def _merge_metadata(path: Path, row: dict[str, str]) -> None:
    rows: dict[str, dict[str, str]] = {}
    columns = list(METADATA_COLUMNS)
    if path.is_file():
        read_scan_csv(path)   # refuses a malformed file instead of silently rewriting it
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns += [c for c in (reader.fieldnames or []) if c not in columns]
            rows = {r["video_id"]: r for r in reader}
    rows[row["video_id"]] = row
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for video_id in sorted(rows):
        writer.writerow({c: rows[video_id].get(c, "") for c in columns})
    write_text(path, out.getvalue())


def write_arkitscenes(scene: SyntheticScene, raw_root: Path, split: str = "train", sky_direction: str = "Left",
                      layout: str = "raw") -> str:
    """Write ``scene`` under ``raw_root/<layout>/`` as an ARKitScenes scan; returns its video id (the scene id)."""
    if split not in SPLIT_TO_FOLD:
        raise ValueError(f"split must be one of {sorted(SPLIT_TO_FOLD)}, got {split!r}")
    if sky_direction not in SKY_ROTATE_K:
        raise ValueError(f"sky_direction must be one of {sorted(SKY_ROTATE_K)}, got {sky_direction!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    raw_root = Path(raw_root)
    video_id = video_id_for(scene.name)
    layout_dir = raw_root / layout
    for fold in SPLIT_TO_FOLD.values():   # a rewrite replaces the scan, also when its split changed
        shutil.rmtree(layout_dir / fold / video_id, ignore_errors=True)
    scene_dir = layout_dir / SPLIT_TO_FOLD[split] / video_id
    frames_dir = scene_dir / f"{video_id}_frames" if layout == "3dod" else scene_dir

    timestamps = np.asarray(scene.timestamps, np.float64)
    names = [f"{video_id}_{t:.3f}" for t in timestamps]
    if len(set(names)) != len(names):
        raise ValueError(f"{scene.name}: frame times collide at millisecond precision (ARKitScenes file names)")
    c2w_upright = np.asarray(scene.camera_to_world, np.float64)
    valid = np.isfinite(c2w_upright).all(axis=(1, 2))
    valid[list(scene.invalid_frames)] = False
    for i in np.flatnonzero(~valid):
        gaps = np.abs(timestamps[valid] - timestamps[i])
        if gaps.size and gaps.min() <= DEFAULT_POSE_MATCH_TOLERANCE_S:
            raise ValueError(f"{scene.name}: invalid frame {i} is within {DEFAULT_POSE_MATCH_TOLERANCE_S} s of a "
                             "posed frame, so a reader would give it that pose")

    # Stored = sensor orientation: the inverse turn of the one the reader applies (rotate_k = SKY_ROTATE_K).
    to_stored = (4 - SKY_ROTATE_K[sky_direction]) % 4
    intr = np.asarray(scene.intrinsics, np.float64)
    (fx, fy, cx, cy, width, height), _ = rotate_camera(intr[0, 0], intr[1, 1], intr[0, 2], intr[1, 2],
                                                       scene.width, scene.height, to_stored)
    pincam = " ".join([str(int(width)), str(int(height))] + [_number(v) for v in (fx, fy, cx, cy)]) + "\n"
    for i, name in enumerate(names):
        _png(cv2.cvtColor(np.ascontiguousarray(np.rot90(scene.rgb[i], to_stored)), cv2.COLOR_RGB2BGR),
             frames_dir / "lowres_wide" / f"{name}.png")
        depth_m = np.nan_to_num(np.asarray(scene.depth[i], np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        depth_mm = np.clip(np.rint(depth_m * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        _png(np.ascontiguousarray(np.rot90(depth_mm, to_stored)), frames_dir / "lowres_depth" / f"{name}.png")
        write_text(frames_dir / "lowres_wide_intrinsics" / f"{name}.pincam", pincam)

    # World->camera of the stored camera, one line per posed frame.
    world_to_camera = invert_rigid(rotate_pose(c2w_upright[valid], to_stored))
    rotvec = Rotation.from_matrix(world_to_camera[:, :3, :3]).as_rotvec()
    lines = [f"{t:.6f} " + " ".join(_number(v) for v in (*r, *w2c[:3, 3]))
             for t, r, w2c in zip(timestamps[valid], rotvec, world_to_camera)]
    write_text(frames_dir / "lowres_wide.traj", "\n".join(lines) + "\n")

    data = []
    for obj in scene.objects:
        label = arkitscenes_label(obj.label)
        if label is None:
            continue
        centroid, lengths = np.asarray(obj.centroid, np.float64), np.asarray(obj.lengths, np.float64)
        axes_rows = np.asarray(obj.axes, np.float64)
        data.append({
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"synthetic/{scene.name}/{obj.instance_id}")),
            "label": label, "objectId": int(obj.instance_id), "labelType": "object", "isInGroup": False,
            "children": [], "attributes": {},
            "segments": {
                "obbAligned": {"centroid": centroid.tolist(), "axesLengths": lengths.tolist(),
                               "normalizedAxes": axes_rows.reshape(-1).tolist()},
                "obb": _decoy_obb(centroid, lengths, axes_rows),
            },
        })
    annotation = {"data": data, "skipped": False, "comment": f"synthetic scene {scene.name} (seed {scene.seed})"}
    write_text(scene_dir / f"{video_id}_3dod_annotation.json", json.dumps(annotation, indent=1) + "\n")
    write_ply(scene_dir / f"{video_id}_3dod_mesh.ply", scene.vertices, scene.faces, scene.colors)

    _merge_metadata(layout_dir / "metadata.csv", {"video_id": video_id, "visit_id": visit_id_for(scene.name),
                                                  "fold": SPLIT_TO_FOLD[split], "sky_direction": sky_direction})
    return video_id
