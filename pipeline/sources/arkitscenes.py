"""ARKitScenes reader: the ``raw`` and the ``3dod`` download layouts -> :class:`CanonicalScene`.

Layouts under the download root ``ROOT`` (``download_data.py`` puts each dataset in its own folder)::

    ROOT/raw/<Training|Validation>/<vid>/{lowres_wide.traj, lowres_wide/, lowres_depth/, lowres_wide_intrinsics/,
                                          <vid>_3dod_annotation.json, <vid>_3dod_mesh.ply, <vid>.mov}
    ROOT/3dod/<Training|Validation>/<vid>/{<vid>_3dod_annotation.json, <vid>_3dod_mesh.ply,
                                           <vid>_frames/{lowres_wide.traj, lowres_wide/, ...}}
    ROOT/<raw|3dod>/metadata.csv            video_id, visit_id, fold, sky_direction, ...
    ROOT/<raw|3dod>/<raw|3dod>_train_val_splits.csv   (optional) video_id, visit_id, fold

``ROOT`` may also be one layout folder itself (the folder holding ``Training/`` and ``Validation/``).

Decisions (see datasets.md §3):

- Frames are the ``lowres_wide`` PNGs sorted by the float timestamp of their name (``<vid>_<ts>.png``), never
  lexically (``99.950`` < ``100.050``). ``frame_index`` is the rank in that order.
- Poses: each ``.traj`` line is ``ts rx ry rz tx ty tz``, a world->camera transform (axis-angle in radians,
  metres); camera->world is its inverse. Each frame takes the traj line nearest in time when it lies within
  ``pose_match_tolerance_s`` (default 0.005 s, the official ARKitScenes loader's rule: only the ~10 Hz frames that
  coincide with a pose are posed exactly; VLM-3R uses 0.05 s, which gives every 60 fps frame its nearest pose, up to
  50 ms stale). The official rule is the default because everything downstream (CUT3R tokens, box projections,
  camera-motion QA) needs the pose of that very image, and the 10 Hz posed frames far outnumber the 32 sampled per
  scene. Times are compared in integer microseconds so ties and the tolerance edge are exact; a tie between two
  lines picks the earlier one. A frame without such a line but between two lines at most
  ``pose_interpolation_max_gap_s`` apart (default 0.15 s; 0 turns it off) gets CUT3R's interpolated pose (camera
  centre linear, rotation slerp), so every 60 fps frame of a tracked stretch is posed. Other frames (outside the
  traj, or in a longer gap: lost tracking) stay in the table with ``valid = false``.
- Intrinsics: one ``.pincam`` (``w h fx fy cx cy``) per frame, found by the frame's name or, as the official
  loader does for rounding differences, by the name of ``ts - 0.001`` then ``ts + 0.001``. A frame without one is
  kept with ``valid = false`` and NaN intrinsics.
- Orientation: images are stored as the sensor saw them. ``sky_direction`` (metadata.csv, or inferred from the
  poses when the CSV has no usable value) gives ``rotate_k`` (np.rot90 quarter turns, counter-clockwise) that makes
  the image upright: Up 0, Right 1, Down 2, Left 3 (Left = 90 deg clockwise, as the official loader rotates).
  Intrinsics and poses are those of the upright image (see :func:`rotate_camera`).
- Objects: ``segments.obbAligned`` of the annotation (the ``obb`` entry is something else, issue #70); the ROWS of
  ``normalizedAxes`` are the box axes, ``axesLengths`` full lengths. ``label`` is the raw string; ``category`` is
  the label with ' ', '-', '/' replaced by '_' (the official normalisation) and must be one of the 17 classes of
  ``taxonomy.py`` (no renaming). ``instance_id`` is the index in the annotation's ``data`` list. Only boxes exist,
  so ``num_points`` is 0 and the mesh has no per-vertex instances. An annotation marked ``skipped`` fails the
  scene, and so does a label outside the 17 classes unless the reader is built with ``unknown_labels="skip"``.
- The world is ARKit's z-up, gravity-aligned metric frame shared by mesh, boxes and poses: alignment = identity.
"""
from __future__ import annotations

import csv
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.core.errors import InputError
from pipeline.core.ply import read_ply
from pipeline.core.scene import CanonicalScene, finite_pose_mask, frames_columns, objects_table
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns

DATASET = "arkitscenes"

# The 17 classes of apple/ARKitScenes threedod/benchmark_scripts/utils/taxonomy.py, in its order. The dataset
# release ships no label-map file (the taxonomy lives only in that script), so this is the one copy.
CLASS_NAMES = (
    "cabinet", "refrigerator", "shelf", "stove", "bed", "sink", "washer", "toilet", "bathtub", "oven",
    "dishwasher", "fireplace", "stool", "chair", "table", "tv_monitor", "sofa",
)

FOLD_TO_SPLIT = {"Training": "train", "Validation": "val"}
SPLIT_TO_FOLD = {split: fold for fold, split in FOLD_TO_SPLIT.items()}
LAYOUTS = ("raw", "3dod")   # searched in this order; a video present in both is read from raw (60 fps frames)

# np.rot90 counts (counter-clockwise quarter turns) that make a stored image upright, per sky direction.
SKY_ROTATE_K = {"Up": 0, "Right": 1, "Down": 2, "Left": 3}

DEFAULT_POSE_MATCH_TOLERANCE_S = 0.005   # official ARKitScenes loader; VLM-3R uses 0.05
DEFAULT_POSE_INTERPOLATION_MAX_GAP_S = 0.15   # 1.5 x the 10 Hz traj interval: longer gaps are lost tracking
PINCAM_NAME_FALLBACK_S = 0.001           # official loader: try ts -/+ 1 ms when the .pincam name differs
DEPTH_SCALE_M = 0.001                    # lowres_depth PNGs hold uint16 millimetres

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- metadata / split CSVs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanInfo:
    """One row of metadata.csv (or of a split CSV, which has no sky direction)."""
    video_id: str
    visit_id: str | None          # None for the literal "NA" (several rows of the official CSVs)
    split: str                    # "train" or "val"
    sky_direction: str | None     # "Up"/"Down"/"Left"/"Right", None when absent or unusable
    source: str                   # the CSV it came from


def read_scan_csv(path: str | os.PathLike) -> dict[str, ScanInfo]:
    """Rows of a ``metadata.csv`` or ``*_train_val_splits.csv`` keyed by video id."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            missing = [c for c in ("video_id", "fold") if c not in fields]
            if missing:
                raise InputError(path, f"missing column(s) {missing} (header: {fields})")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable CSV: {exc}") from exc
    out: dict[str, ScanInfo] = {}
    for line_no, row in enumerate(rows, start=2):
        video_id, fold = row["video_id"], row["fold"]
        if not video_id:
            raise InputError(path, f"line {line_no}: empty video_id")
        if fold not in FOLD_TO_SPLIT:
            raise InputError(path, f"line {line_no}: fold {fold!r} is not one of {sorted(FOLD_TO_SPLIT)}")
        visit = row.get("visit_id", "")
        sky = row.get("sky_direction", "")
        out[video_id] = ScanInfo(video_id=video_id, visit_id=None if visit in ("", "NA", "nan") else visit,
                                 split=FOLD_TO_SPLIT[fold], sky_direction=sky if sky in SKY_ROTATE_K else None,
                                 source=str(path))
    return out


def _csv_candidates(root: Path, layout_dir: Path) -> list[Path]:
    """Where the scan tables of one layout folder may be, best first (metadata.csv carries the sky direction)."""
    names = ["metadata.csv", f"{layout_dir.name}_train_val_splits.csv"]
    dirs = [layout_dir] + ([root] if root != layout_dir else [])
    return [d / n for n in names for d in dirs if (d / n).is_file()]


def _scan_table(root: Path, layout_dir: Path) -> dict[str, ScanInfo]:
    """Merged scan rows of a layout folder: an earlier CSV wins for a video listed in several."""
    merged: dict[str, ScanInfo] = {}
    for path in reversed(_csv_candidates(root, layout_dir)):
        merged.update(read_scan_csv(path))
    return merged


# ---- .traj, .pincam, PNG headers ---------------------------------------------------------------------------------

def read_traj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``lowres_wide.traj`` -> (timestamps [N] s, world_to_camera [N, 4, 4]) in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "trajectory file not found")
    values = []
    with open(path, encoding="ascii", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 7:
                raise InputError(path, f"line {line_no}: expected 7 numbers (ts rx ry rz tx ty tz), got {len(tokens)}")
            try:
                values.append([float(t) for t in tokens])
            except ValueError as exc:
                raise InputError(path, f"line {line_no}: {exc}") from exc
    if not values:
        raise InputError(path, "trajectory has no poses")
    table = np.asarray(values, np.float64)
    if not np.isfinite(table[:, 0]).all():
        raise InputError(path, f"line {int(np.flatnonzero(~np.isfinite(table[:, 0]))[0]) + 1}: non-finite timestamp")
    world_to_camera = np.tile(np.eye(4), (len(table), 1, 1))
    finite = np.isfinite(table[:, 1:]).all(axis=1)
    world_to_camera[~finite] = np.nan   # kept as a line, never matched to a valid frame
    if finite.any():
        world_to_camera[finite, :3, :3] = Rotation.from_rotvec(table[finite, 1:4]).as_matrix()
    world_to_camera[finite, :3, 3] = table[finite, 4:7]
    return table[:, 0], world_to_camera


def invert_rigid(transform: np.ndarray) -> np.ndarray:
    """Inverse of rigid [..., 4, 4] transforms (R^T, -R^T t); NaN stays NaN."""
    rot_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    out = np.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ transform[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def match_timestamps(frame_s: np.ndarray, pose_s: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index into ``pose_s`` of the pose nearest each frame time, -1 where none lies within ``tolerance_s``.

    Times are compared in integer microseconds (file names have ms, traj lines usually µs), so an exact hit is
    exact and the tolerance edge is inclusive without float noise; of two equally near poses the earlier wins.
    """
    frame_us = np.rint(np.asarray(frame_s, np.float64) * 1e6).astype(np.int64)
    pose_us = np.rint(np.asarray(pose_s, np.float64) * 1e6).astype(np.int64)
    if len(pose_us) == 0:
        return np.full(len(frame_us), -1, np.int64)
    order = np.argsort(pose_us, kind="stable")
    sorted_us = pose_us[order]
    right = np.searchsorted(sorted_us, frame_us, side="left")
    left = np.clip(right - 1, 0, len(sorted_us) - 1)
    right = np.clip(right, 0, len(sorted_us) - 1)
    left_gap, right_gap = np.abs(frame_us - sorted_us[left]), np.abs(sorted_us[right] - frame_us)
    nearest = np.where(right_gap < left_gap, right, left)
    gap = np.minimum(left_gap, right_gap)
    return np.where(gap <= int(round(tolerance_s * 1e6)), order[nearest], -1)


def interpolate_poses(frame_s: np.ndarray, pose_s: np.ndarray, camera_to_world: np.ndarray,
                      max_gap_s: float) -> np.ndarray:
    """Camera-to-world at each frame time between two traj lines at most ``max_gap_s`` apart (CUT3R's rule: the
    camera centre linearly, the rotation by spherical interpolation); NaN where the frame is outside the traj or
    inside a longer gap (lost tracking). ``camera_to_world`` [P, 4, 4] are the traj poses, ``pose_s`` their times."""
    from scipy.spatial.transform import Rotation

    frame_us = np.rint(np.asarray(frame_s, np.float64) * 1e6).astype(np.int64)
    pose_us = np.rint(np.asarray(pose_s, np.float64) * 1e6).astype(np.int64)
    out = np.full((len(frame_us), 4, 4), np.nan)
    order = np.argsort(pose_us, kind="stable")
    pose_us, c2w = pose_us[order], np.asarray(camera_to_world, np.float64)[order]
    usable = np.isfinite(c2w).all(axis=(1, 2))
    pose_us, c2w = pose_us[usable], c2w[usable]
    if len(pose_us) < 2:
        return out
    right = np.searchsorted(pose_us, frame_us, side="right")
    inside = (right > 0) & (right < len(pose_us))
    left = np.clip(right - 1, 0, len(pose_us) - 1)
    right = np.clip(right, 0, len(pose_us) - 1)
    span = pose_us[right] - pose_us[left]
    inside &= (span > 0) & (span <= int(round(max_gap_s * 1e6)))
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return out
    w = (frame_us[idx] - pose_us[left[idx]]) / span[idx]                    # [K] in [0, 1)
    r0 = Rotation.from_matrix(c2w[left[idx], :3, :3])
    r1 = Rotation.from_matrix(c2w[right[idx], :3, :3])
    delta = (r0.inv() * r1).as_rotvec()                                     # shortest arc from r0 to r1
    rot = (r0 * Rotation.from_rotvec(delta * w[:, None])).as_matrix()
    out[idx] = np.eye(4)
    out[idx, :3, :3] = rot
    out[idx, :3, 3] = (1 - w)[:, None] * c2w[left[idx], :3, 3] + w[:, None] * c2w[right[idx], :3, 3]
    return out


def read_pincam(path: Path) -> tuple[float, float, float, float, float, float]:
    """``w h fx fy cx cy`` of a .pincam file (pixels)."""
    try:
        tokens = path.read_text(encoding="ascii", errors="replace").split()
    except OSError as exc:
        raise InputError(path, f"unreadable intrinsics: {exc}") from exc
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError as exc:
        raise InputError(path, f"intrinsics are not numbers: {exc}") from exc
    if len(values) != 6 or not all(math.isfinite(v) for v in values) or min(values[:4]) <= 0:
        raise InputError(path, f"expected 'w h fx fy cx cy' with positive sizes and focals, got {tokens}")
    return values  # type: ignore[return-value]


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, without decoding the image."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError as exc:
        raise InputError(path, f"unreadable image: {exc}") from exc
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(path, "corrupt PNG: bad signature or missing IHDR header")
    width, height = struct.unpack(">II", head[16:24])
    if width == 0 or height == 0:
        raise InputError(path, f"corrupt PNG: size {width}x{height}")
    return width, height, head[24], head[25]


# ---- orientation -------------------------------------------------------------------------------------------------

def rotate_camera(fx, fy, cx, cy, width, height, k: int):
    """Intrinsics of an image turned by ``np.rot90(image, k)``, and the camera rotation that goes with it.

    Exact in pixel-index space (OpenCV: pixel (u, v) has its centre at integer u, v), so the principal point is
    reflected about ``W - 1`` / ``H - 1``, not merely swapped (the swap ``cx' = cy`` is only right for a centred
    principal point). For a W x H image, np.rot90 sends pixel (u, v) to:

    ====  ======================  ==========================================  =====================
    k     upright pixel (u', v')  (fx', fy', cx', cy'), size W' x H'          camera point p' = R p
    ====  ======================  ==========================================  =====================
    0     (u, v)                  (fx, fy, cx, cy), W x H                     identity
    1     (v, W-1-u)              (fy, fx, cy, W-1-cx), H x W                 (y, -x, z)
    2     (W-1-u, H-1-v)          (fx, fy, W-1-cx, H-1-cy), W x H             (-x, -y, z)
    3     (H-1-v, u)              (fy, fx, H-1-cy, cx), H x W                 (-y, x, z)
    ====  ======================  ==========================================  =====================

    Returns ``((fx', fy', cx', cy', W', H'), R)`` with R [3, 3]; the upright pose is ``c2w @ [[R^T, 0], [0, 1]]``.
    Works on scalars or arrays.
    """
    k %= 4
    w_px, h_px = np.asarray(width), np.asarray(height)
    if k == 0:
        return (fx, fy, cx, cy, width, height), np.eye(3)
    if k == 1:
        return (fy, fx, cy, w_px - 1 - cx, height, width), np.array([[0., 1, 0], [-1, 0, 0], [0, 0, 1]])
    if k == 2:
        return (fx, fy, w_px - 1 - cx, h_px - 1 - cy, width, height), np.diag([-1., -1, 1])
    return (fy, fx, h_px - 1 - cy, cx, height, width), np.array([[0., -1, 0], [1, 0, 0], [0, 0, 1]])


def rotate_pose(camera_to_world: np.ndarray, k: int) -> np.ndarray:
    """Camera-to-world [..., 4, 4] of the camera whose image is ``np.rot90(image, k)`` (see :func:`rotate_camera`)."""
    _, rot = rotate_camera(1.0, 1.0, 0.0, 0.0, 1, 1, k)
    in_plane = np.eye(4)
    in_plane[:3, :3] = rot.T
    return np.asarray(camera_to_world, np.float64) @ in_plane


def infer_sky_direction(camera_to_world: np.ndarray) -> str:
    """Sky direction of the stored images from the poses (CUT3R's rule, without its asserts).

    Averages the camera up (c2w . (0, -1, 0)) and right (c2w . (1, 0, 0)) vectors over the frames and measures
    their angles to world +z: when the up vector is the more horizontal of the two, the scan is sideways (Left if
    the right vector points down, else Right); otherwise Down if the up vector points down, else Up. As in CUT3R,
    the angle is ``acos`` of the mean vector's z component, the mean vector **not** renormalised (a direction that
    varies over the scan counts as more horizontal).
    """
    rot = np.asarray(camera_to_world, np.float64).reshape(-1, 4, 4)[:, :3, :3]
    if len(rot) == 0:
        raise ValueError("no poses to infer the sky direction from")
    up, right = -rot[:, :, 1].mean(axis=0), rot[:, :, 0].mean(axis=0)

    def angle_to_z_deg(v: np.ndarray) -> float:
        return math.degrees(math.acos(float(np.clip(v[2], -1.0, 1.0))))

    up_deg, right_deg = angle_to_z_deg(up), angle_to_z_deg(right)
    if abs(up_deg - 90.0) < abs(right_deg - 90.0):
        return "Left" if right_deg > 90.0 else "Right"
    return "Down" if up_deg > 90.0 else "Up"


# ---- annotation --------------------------------------------------------------------------------------------------

def taxonomy_name(label: str) -> str:
    """The official normalisation before matching the taxonomy: ' ', '-', '/' become '_'."""
    for delimiter in (" ", "-", "/"):
        label = label.replace(delimiter, "_")
    return label


def read_annotation(path: Path, unknown_labels: str = "error"):
    """Boxes of ``<vid>_3dod_annotation.json`` -> (OBJECTS_SCHEMA table, uids)."""
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable annotation JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(path, "annotation has no 'data' list")
    if doc.get("skipped") is True:
        # The annotators skipped this scan: its boxes are not a complete annotation.
        raise InputError(path, "annotation is marked 'skipped'")
    ids, labels, categories, centroids, lengths, axes, uids = [], [], [], [], [], [], []
    for index, item in enumerate(doc["data"]):
        where = f"data[{index}]"
        try:
            label = item["label"]
            box = item["segments"]["obbAligned"]
            centroid = np.asarray(box["centroid"], np.float64).reshape(3)
            size = np.asarray(box["axesLengths"], np.float64).reshape(3)
            rows = np.asarray(box["normalizedAxes"], np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"{where}: malformed box (needs label and segments.obbAligned with centroid[3], "
                                   f"axesLengths[3], normalizedAxes[9]): {exc!r}") from exc
        if not isinstance(label, str):
            raise InputError(path, f"{where}: label {label!r} is not a string")
        if not (np.isfinite(centroid).all() and np.isfinite(size).all() and np.isfinite(rows).all()):
            raise InputError(path, f"{where} ({label}): non-finite box values")
        category = taxonomy_name(label)
        if category not in CLASS_NAMES:
            if unknown_labels == "skip":
                continue
            raise InputError(path, f"{where}: label {label!r} is not one of the 17 ARKitScenes classes")
        ids.append(index)
        labels.append(label)
        categories.append(category)
        centroids.append(centroid)
        lengths.append(size)
        axes.append(rows)
        uids.append(str(item.get("uid", "")))
    table = objects_table(ids, labels, categories, np.reshape(centroids, (-1, 3)), np.reshape(lengths, (-1, 3)),
                          np.reshape(axes, (-1, 3, 3)), np.zeros(len(ids), np.int64))
    return table, uids


# ---- the reader --------------------------------------------------------------------------------------------------

def _layout_dirs(root: Path) -> list[Path]:
    """The layout folders under ``root`` (raw first), or ``root`` itself when it holds the fold folders."""
    found = [root / name for name in LAYOUTS if (root / name).is_dir()]
    if not found and any((root / fold).is_dir() for fold in FOLD_TO_SPLIT):
        found = [root]
    return found


def _frame_stamp(path: Path, video_id: str) -> str:
    """The timestamp text of ``<vid>_<ts>.png`` (checked to be a number)."""
    stem = path.stem
    prefix = f"{video_id}_"
    text = stem[len(prefix):] if stem.startswith(prefix) else ""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise InputError(path, f"frame file name is not '{video_id}_<seconds>.png'")
    return text


class ArkitScenesReader:
    """ARKitScenes in the canonical form. ``list_scenes``/``read_scene`` follow the reader protocol.

    Options: ``pose_match_tolerance_s`` (see the module docstring), ``unknown_labels`` ("error": a label outside
    the 17 classes fails the scene; "skip": such boxes are dropped, as the official loader does).
    """

    name = DATASET
    layout = ("<raw>/{raw,3dod}/{Training,Validation}/<video id>/ with <video id>_3dod_annotation.json, "
              "<video id>_3dod_mesh.ply, lowres_wide/ and lowres_wide.traj (3dod: inside <video id>_frames/)")

    def looks_like(self, raw: Path) -> bool:
        """An ARKitScenes download: numeric video folders in the fold folders of raw/ or 3dod/ (or of the root)."""
        return any(d.is_dir() and d.name.isdigit() for layout_dir in _layout_dirs(raw)
                   for fold in FOLD_TO_SPLIT if (layout_dir / fold).is_dir() for d in (layout_dir / fold).iterdir())

    def __init__(self, pose_match_tolerance_s: float = DEFAULT_POSE_MATCH_TOLERANCE_S, unknown_labels: str = "error",
                 pose_interpolation_max_gap_s: float = DEFAULT_POSE_INTERPOLATION_MAX_GAP_S):
        if not (pose_match_tolerance_s >= 0 and math.isfinite(pose_match_tolerance_s)):
            raise ValueError(f"pose_match_tolerance_s must be a finite number >= 0, got {pose_match_tolerance_s}")
        if not (pose_interpolation_max_gap_s >= 0 and math.isfinite(pose_interpolation_max_gap_s)):
            raise ValueError("pose_interpolation_max_gap_s must be a finite number >= 0 (0 = no interpolation), "
                             f"got {pose_interpolation_max_gap_s}")
        self.pose_interpolation_max_gap_s = float(pose_interpolation_max_gap_s)
        if unknown_labels not in ("error", "skip"):
            raise ValueError(f"unknown_labels must be 'error' or 'skip', got {unknown_labels!r}")
        self.pose_match_tolerance_s = float(pose_match_tolerance_s)
        self.unknown_labels = unknown_labels

    # -- listing --
    def _scan_folders(self, root: Path) -> Iterable[tuple[Path, Path, str]]:
        """(layout folder, scene folder, split of the fold folder) of every video folder on disk."""
        for layout_dir in _layout_dirs(root):
            for fold, split in FOLD_TO_SPLIT.items():
                fold_dir = layout_dir / fold
                if fold_dir.is_dir():
                    for scene_dir in sorted(fold_dir.iterdir()):
                        if scene_dir.is_dir() and scene_dir.name.isdigit():
                            yield layout_dir, scene_dir, split

    def list_scenes(self, raw: Path, split: str | None = None) -> list[tuple[str, str]]:
        """(video id, split) of every scan folder on disk, sorted; the split comes from metadata.csv / the split
        CSV when it lists the video, else from the fold folder. CSV rows without a folder are not listed."""
        root = Path(raw)
        if split is not None and split not in SPLIT_TO_FOLD:
            raise ValueError(f"unknown ARKitScenes split {split!r}; choose from {sorted(SPLIT_TO_FOLD)}")
        tables: dict[Path, dict[str, ScanInfo]] = {}
        scenes: dict[str, str] = {}
        for layout_dir, scene_dir, folder_split in self._scan_folders(root):
            if scene_dir.name in scenes:
                continue   # the same video in raw and 3dod: raw was found first
            if layout_dir not in tables:
                tables[layout_dir] = _scan_table(root, layout_dir)
            info = tables[layout_dir].get(scene_dir.name)
            scenes[scene_dir.name] = info.split if info else folder_split
        return sorted((vid, s) for vid, s in scenes.items() if split is None or s == split)

    def _locate(self, root: Path, video_id: str, split: str) -> tuple[Path, Path]:
        """(layout folder, scene folder) of a video: the fold folder of ``split`` first, raw before 3dod."""
        fold = SPLIT_TO_FOLD.get(split)
        folds = sorted(FOLD_TO_SPLIT, key=lambda f: f != fold)
        layout_dirs = _layout_dirs(root)
        for fold_name in folds:
            for layout_dir in layout_dirs:
                if (layout_dir / fold_name / video_id).is_dir():
                    return layout_dir, layout_dir / fold_name / video_id
        where = layout_dirs[0] if layout_dirs else root / LAYOUTS[0]
        raise InputError(where / (fold or "<fold>") / video_id, "scan folder not found")

    # -- one scene --
    def read_scene(self, raw: Path, scene_id: str, split: str) -> CanonicalScene:
        root = Path(raw).absolute()
        video_id = str(scene_id)
        layout_dir, scene_dir = self._locate(root, video_id, split)
        frames_dir = scene_dir / f"{video_id}_frames"
        layout = "3dod" if frames_dir.is_dir() else "raw"
        if layout == "raw":
            frames_dir = scene_dir
        info = _scan_table(root, layout_dir).get(video_id)

        objects, uids = read_annotation(scene_dir / f"{video_id}_3dod_annotation.json", self.unknown_labels)
        mesh_path = scene_dir / f"{video_id}_3dod_mesh.ply"
        mesh = read_ply(mesh_path)
        traj_path = frames_dir / "lowres_wide.traj"
        traj_s, world_to_camera = read_traj(traj_path)

        columns, counts, sky, sky_source, sky_from_poses = self._frames(
            frames_dir, video_id, traj_path, traj_s, invert_rigid(world_to_camera), info)

        mov = scene_dir / f"{video_id}.mov"
        meta: dict[str, Any] = {
            "video_id": video_id,
            "visit_id": info.visit_id if info else None,
            "layout": layout,
            "scan_dir": str(scene_dir),
            "video_source": {"kind": "frames", "path": str(frames_dir / "lowres_wide")},
            "mov_path": str(mov) if mov.is_file() else None,
            "mesh_source": str(mesh_path),
            "annotation_source": str(scene_dir / f"{video_id}_3dod_annotation.json"),
            "pose_source": str(traj_path),
            "alignment": np.eye(4).tolist(),
            "alignment_source": "identity: ARKit world is z-up, gravity-aligned, metric for mesh, boxes and poses",
            "sky_direction": sky,
            "sky_direction_source": sky_source,
            "sky_direction_from_poses": sky_from_poses,
            "rotate_k": SKY_ROTATE_K[sky],
            "pose_match_tolerance_s": self.pose_match_tolerance_s,
            "pose_interpolation_max_gap_s": self.pose_interpolation_max_gap_s,
            "category_map": "ARKitScenes taxonomy.py, 17 classes; label with ' ', '-', '/' -> '_'",
            "object_uids": uids,
            **counts,
        }
        return CanonicalScene(
            dataset=DATASET, scene_id=video_id, split=split, frames=table_from_columns(FRAMES_SCHEMA, columns),
            objects=objects, mesh_vertices=mesh.vertices, mesh_faces=mesh.faces, mesh_colors=mesh.colors,
            vertex_instance=None, meta=meta)

    def _frames(self, frames_dir: Path, video_id: str, traj_path: Path, traj_s: np.ndarray,
                traj_camera_to_world: np.ndarray, info: ScanInfo | None):
        color_dir = frames_dir / "lowres_wide"
        depth_dir = frames_dir / "lowres_depth"
        intrinsics_dir = frames_dir / "lowres_wide_intrinsics"
        if not color_dir.is_dir():
            raise InputError(color_dir, "frame folder not found")
        paths = [p for p in color_dir.iterdir() if p.suffix == ".png"]
        if not paths:
            raise InputError(color_dir, "no frames (*.png)")
        stamps = [_frame_stamp(p, video_id) for p in paths]
        frame_s = np.array([float(s) for s in stamps])
        order = np.lexsort((np.array([p.name for p in paths]), frame_s))   # numeric time, name breaks ties
        paths, stamps, frame_s = [paths[i] for i in order], [stamps[i] for i in order], frame_s[order]
        n = len(paths)

        # Poses of the stored (sensor-oriented) images.
        match = match_timestamps(frame_s, traj_s, self.pose_match_tolerance_s)
        stored_c2w = np.full((n, 4, 4), np.nan)
        stored_c2w[match >= 0] = traj_camera_to_world[match[match >= 0]]
        if self.pose_interpolation_max_gap_s > 0:  # frames between two traj lines: CUT3R's interpolation
            between = interpolate_poses(frame_s, traj_s, traj_camera_to_world, self.pose_interpolation_max_gap_s)
            fill = (match < 0) & np.isfinite(between).all(axis=(1, 2))
            stored_c2w[fill] = between[fill]
        posed = finite_pose_mask(stored_c2w)
        if not posed.any():
            raise InputError(traj_path, f"no frame of {color_dir} has a pose within {self.pose_match_tolerance_s} s "
                                        f"(poses {traj_s.min():.3f}..{traj_s.max():.3f} s, "
                                        f"frames {frame_s[0]:.3f}..{frame_s[-1]:.3f} s)")

        sky_from_poses = infer_sky_direction(stored_c2w[posed])
        if info is not None and info.sky_direction is not None:
            sky, sky_source = info.sky_direction, info.source
        else:
            sky, sky_source = sky_from_poses, "poses"
        k = SKY_ROTATE_K[sky]

        # Intrinsics per frame, each checked against its image's size.
        pincams = set(os.listdir(intrinsics_dir)) if intrinsics_dir.is_dir() else set()
        depths = set(os.listdir(depth_dir)) if depth_dir.is_dir() else set()
        intr = np.full((n, 6), np.nan)   # stored image: w h fx fy cx cy
        depth_size = np.zeros((n, 2), np.int64)
        has_depth = np.zeros(n, bool)
        parsed: dict[Path, tuple] = {}
        for i, (path, stamp) in enumerate(zip(paths, stamps)):
            width, height, _, _ = png_header(path)
            name = self._pincam_name(video_id, stamp, pincams)
            if name is not None:
                pincam_path = intrinsics_dir / name
                if pincam_path not in parsed:
                    parsed[pincam_path] = read_pincam(pincam_path)
                values = parsed[pincam_path]
                if (values[0], values[1]) != (width, height):
                    raise InputError(pincam_path, f"intrinsics are for a {values[0]:g}x{values[1]:g} image but "
                                                  f"{path.name} is {width}x{height}")
                intr[i] = values
            if path.name in depths:
                d_w, d_h, bit_depth, colour_type = png_header(depth_dir / path.name)
                if (bit_depth, colour_type) != (16, 0):
                    raise InputError(depth_dir / path.name, f"depth PNG must be 16-bit greyscale, got bit depth "
                                                            f"{bit_depth}, colour type {colour_type}")
                depth_size[i] = (d_w, d_h)
                has_depth[i] = True
        has_intrinsics = np.isfinite(intr[:, 0])

        # Upright image: rotate intrinsics and poses together.
        (fx, fy, cx, cy, width, height), _ = rotate_camera(intr[:, 2], intr[:, 3], intr[:, 4], intr[:, 5],
                                                           intr[:, 0], intr[:, 1], k)
        # lowres_depth is registered to lowres_wide; scale K when its size differs (pixel-edge aligned resize).
        scale_x = np.where(has_depth, depth_size[:, 0] / np.where(has_intrinsics, intr[:, 0], 1.0), np.nan)
        scale_y = np.where(has_depth, depth_size[:, 1] / np.where(has_intrinsics, intr[:, 1], 1.0), np.nan)
        (dfx, dfy, dcx, dcy, d_width, d_height), _ = rotate_camera(
            intr[:, 2] * scale_x, intr[:, 3] * scale_y, (intr[:, 4] + 0.5) * scale_x - 0.5,
            (intr[:, 5] + 0.5) * scale_y - 0.5, depth_size[:, 0], depth_size[:, 1], k)

        columns = frames_columns(n)
        columns["timestamp"] = frame_s
        columns["camera_to_world"] = rotate_pose(stored_c2w, k).reshape(n, 16)
        columns["valid"] = posed & has_intrinsics
        for key, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
            columns[key] = np.where(has_intrinsics, value, np.nan)
        columns["width"] = np.where(has_intrinsics, width, 0).astype(np.int32)
        columns["height"] = np.where(has_intrinsics, height, 0).astype(np.int32)
        columns["color_path"] = [str(p) for p in paths]
        columns["rotate_k"] = np.full(n, k, np.int8)
        columns["depth_kind"] = ["png_u16" if d else "none" for d in has_depth]
        columns["depth_path"] = [str(depth_dir / p.name) if d else "" for p, d in zip(paths, has_depth)]
        columns["depth_scale"] = np.full(n, DEPTH_SCALE_M)
        columns["depth_width"] = np.asarray(d_width, np.int32)
        columns["depth_height"] = np.asarray(d_height, np.int32)
        depth_known = has_depth & has_intrinsics
        for key, value in (("depth_fx", dfx), ("depth_fy", dfy), ("depth_cx", dcx), ("depth_cy", dcy)):
            columns[key] = np.where(depth_known, value, np.nan)
        counts = {"frames_total": n, "frames_with_pose": int(posed.sum()),
                  "frames_without_intrinsics": int((~has_intrinsics).sum()),
                  "frames_without_depth": int((~has_depth).sum())}
        return columns, counts, sky, sky_source, sky_from_poses

    @staticmethod
    def _pincam_name(video_id: str, stamp: str, available: set[str]) -> str | None:
        """The .pincam of a frame: its own name, else the names of ts - 1 ms and ts + 1 ms (rounding in names)."""
        value = float(stamp)
        for name in (f"{video_id}_{stamp}.pincam", f"{video_id}_{value - PINCAM_NAME_FALLBACK_S:.3f}.pincam",
                     f"{video_id}_{value + PINCAM_NAME_FALLBACK_S:.3f}.pincam"):
            if name in available:
                return name
        return None


READER = ArkitScenesReader()
