"""ScanNet v2 reader: a raw release (``scans/``, ``scans_test/``, root label map and split lists) -> CanonicalScene.

Per scene ``<raw>/scans/<scene_id>/`` (train/val) or ``<raw>/scans_test/<scene_id>/`` (test):

- ``<scene>.sens`` is streamed (``pipeline.sources.sens``): one frame row per ``.sens`` frame, pointing at the
  frame's JPEG and zlib-depth byte ranges inside the file. Poses are ``A @ c2w`` with ``A`` the ``axisAlignment``
  of ``<scene>.txt`` (identity when the line is absent, as for test scenes; recorded in ``alignment_source``).
  Frames whose stored pose is not finite (ScanNet writes all -inf when tracking was lost) or not a rigid
  transform keep their row with a NaN pose and ``valid = false``. ``timestamp`` is the colour timestamp when the
  ``.sens`` timestamps increase strictly; most released scans store 0 for every frame (ScanNet issues #9, #39),
  and then it is frame index / 24 s, VLM-3R's ScanNet video rate (``meta["timestamp_source"]`` says which).
- ``<scene>_vh_clean_2.ply`` is the mesh; its vertices are aligned with ``A`` too.
- ``<scene>_vh_clean_2.0.010000.segs.json`` + ``<scene>.aggregation.json`` give the instances: vertex v belongs to
  the group whose ``segments`` contain ``segIndices[v]``; a segment listed by several groups goes to the last one
  (as ScanNet's own export script does). ``instance_id`` = ``objectId`` (0-based; -1 = unannotated vertex, so the
  object at objectId 0 does not collide with "unannotated" as it does in the ScanNet200 preprocessing).
- Categories: ``label`` is the raw ``segGroups[].label``; ``category`` is that raw_category's ``category`` column
  in the release's ``scannetv2-labels.combined.tsv`` (the ScanNet200 naming, e.g. raw "sofa"-like labels become
  "couch"). A label missing from the TSV is an error naming the aggregation file and the label: the TSV covers
  every label of the release, so a miss means a mismatched TSV or a corrupt annotation, not something to guess.
- Boxes are gravity-aligned oriented boxes of each instance's aligned mesh vertices
  (:func:`pipeline.core.scene.upright_box`: the minimum-area rectangle of the floor-plane convex hull times the z
  range). This is exact for upright box-like furniture; VLM-3R instead fits open3d's unconstrained 3D minimal OBB,
  which can tilt. ``num_points`` = the instance's vertex count.

Annotations are required except for the split ``test`` (the release has none there).
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import cv2
import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError, read_input_json
from pipeline.core.ply import read_ply, write_ply
from pipeline.core.scene import CanonicalScene, finite_pose_mask, frames_columns, objects_table, upright_box
from pipeline.core.schemas import FRAMES_SCHEMA, column_as_array, table_from_columns
from pipeline.sources.sens import (COLOR_COMPRESSION, COLOR_JPEG, DEPTH_COMPRESSION, DEPTH_ZLIB_USHORT,
                                   read_sens_index)

LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"
INSTANCE_ZIP_PATTERN = "instance-filt/{frame_index}.png"
_SPLIT_FILE = re.compile(r"^scannetv2_([A-Za-z0-9]+)\.txt$")
_SCENE_ID = re.compile(r"^scene\d{4}_\d{2}$")
# Where split lists may live: the release root, or a copy of ScanNet's Tasks/Benchmark folder inside it.
_SPLIT_DIRS = (".", "Tasks/Benchmark")
UNLISTED_SPLIT = "unlisted"
# Frame rate VLM-3R writes ScanNet videos at (and its FPS tables use): the time base when the .sens has no usable
# timestamps.
SCANNET_NOMINAL_FPS = 24.0


@dataclass(frozen=True)
class ScanNetPaths:
    scene_dir: Path
    sens: Path
    meta: Path
    mesh: Path
    segments: Path
    aggregation: Path
    instance_zip: Path

    @classmethod
    def of(cls, scene_dir: Path) -> "ScanNetPaths":
        s = scene_dir.name
        return cls(scene_dir, scene_dir / f"{s}.sens", scene_dir / f"{s}.txt", scene_dir / f"{s}_vh_clean_2.ply",
                   scene_dir / f"{s}_vh_clean_2.0.010000.segs.json", scene_dir / f"{s}.aggregation.json",
                   scene_dir / f"{s}_2d-instance-filt.zip")


@dataclass(frozen=True)
class LabelRow:
    raw_category: str
    scannet_id: int        # the TSV `id` column (ScanNet200 uses these ids)
    category: str          # the TSV `category` column (ScanNet200 naming)
    nyu40_id: int


# ---- split lists and scene discovery --------------------------------------------------------------------------

def read_split_lists(raw: str | Path) -> dict[str, list[str]]:
    """{split: scene ids} from ``scannetv2_<split>.txt`` at the root (or under ``Tasks/Benchmark``; the root wins)."""
    raw = Path(raw)
    found: dict[str, Path] = {}
    for sub in reversed(_SPLIT_DIRS):
        base = raw / sub
        if base.is_dir():
            for p in sorted(base.iterdir()):
                m = _SPLIT_FILE.match(p.name)
                if m and p.is_file():
                    found[m.group(1)] = p
    out = {}
    for split, path in sorted(found.items()):
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        bad = [i for i in ids if not _SCENE_ID.match(i)]
        if bad:
            raise InputError(path, f"not a ScanNet scene id: {bad[0]!r}")
        out[split] = ids
    return out


def _scene_dir(raw: Path, scene_id: str) -> Path | None:
    for sub in ("scans", "scans_test"):
        d = raw / sub / scene_id
        if d.is_dir():
            return d
    return None


def list_scenes(raw: str | Path, split: str | None = None) -> list[tuple[str, str]]:
    """(scene_id, split) of the scenes present on disk, sorted by scene id.

    The split comes from the split lists; a listed scene without a folder is skipped (partial downloads). A folder
    in no list gets ``test`` under ``scans_test/`` and ``"unlisted"`` under ``scans/`` (it is still read with
    annotations required, as every ``scans/`` scene has them).
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(raw, "ScanNet root not found")
    lists = read_split_lists(raw)
    split_of: dict[str, str] = {}
    for name, ids in lists.items():
        for scene_id in ids:
            if scene_id in split_of and split_of[scene_id] != name:
                raise InputError(raw, f"{scene_id} is in both split lists {split_of[scene_id]!r} and {name!r}")
            split_of[scene_id] = name
    scenes: dict[str, str] = {}
    for sub in ("scans", "scans_test"):
        base = raw / sub
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if d.is_dir() and _SCENE_ID.match(d.name) and d.name not in scenes:
                scenes[d.name] = split_of.get(d.name, "test" if sub == "scans_test" else UNLISTED_SPLIT)
    return sorted((s, sp) for s, sp in scenes.items() if split is None or sp == split)


# ---- small parsers ---------------------------------------------------------------------------------------------

def read_scene_meta(path: str | Path) -> dict[str, str]:
    """``key = value`` lines of ``<scene>.txt``; split on the first " = " (values such as "Bedroom / Hotel" keep
    their spaces and slashes); lines without it are ignored, as are unknown keys by the callers."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "scene meta file not found")
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def axis_alignment(meta: dict[str, str], path: str | Path) -> tuple[np.ndarray, str]:
    """The 4x4 ``axisAlignment`` (row-major) and a note of where it came from; identity when absent."""
    if "axisAlignment" not in meta:
        return np.eye(4), f"identity: no axisAlignment in {path}"
    try:
        values = np.array([float(v) for v in meta["axisAlignment"].split()], np.float64)
    except ValueError as exc:
        raise InputError(path, f"axisAlignment is not 16 numbers: {exc}") from exc
    if values.size != 16 or not np.isfinite(values).all():
        raise InputError(path, f"axisAlignment must be 16 finite numbers, got {values.size}")
    align = values.reshape(4, 4)
    rot = align[:3, :3]
    # A rigid transform is what ScanNet stores; anything else would silently distort every box and pose.
    if (np.abs(rot @ rot.T - np.eye(3)).max() > 1e-4 or abs(np.linalg.det(rot) - 1.0) > 1e-4
            or np.abs(align[3] - [0, 0, 0, 1]).max() > 1e-9):
        raise InputError(path, "axisAlignment is not a rigid transform (rotation + translation)")
    return align, f"axisAlignment from {path}"


def read_label_map(path: str | Path) -> dict[str, LabelRow]:
    """raw_category -> LabelRow from ``scannetv2-labels.combined.tsv`` (a later duplicate row wins, as with the
    dict that ScanNet's own scripts build)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label map not found")
    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        raise InputError(path, "label map is empty")
    header = rows[0]
    need = ("id", "raw_category", "category", "nyu40id")
    missing = [c for c in need if c not in header]
    if missing:
        raise InputError(path, f"label map header lacks columns {missing}")
    col = {c: header.index(c) for c in need}
    out: dict[str, LabelRow] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col.values()):
            raise InputError(path, f"line {line_no}: {len(row)} fields, expected {len(header)}")
        try:
            out[row[col["raw_category"]]] = LabelRow(row[col["raw_category"]], int(row[col["id"]]),
                                                     row[col["category"]], int(row[col["nyu40id"]]))
        except ValueError as exc:
            raise InputError(path, f"line {line_no}: id/nyu40id not integers: {exc}") from exc
    return out


def vertex_instances(seg_indices: np.ndarray, groups: list[dict]) -> tuple[np.ndarray, int]:
    """Per-vertex objectId (-1 = unannotated) and the number of segments claimed by several objects."""
    if not groups:
        return np.full(len(seg_indices), -1, np.int64), 0
    keys = np.concatenate([np.asarray(g["segments"], np.int64).reshape(-1) for g in groups])
    vals = np.concatenate([np.full(len(g["segments"]), g["objectId"], np.int64) for g in groups])
    if len(keys) == 0:
        return np.full(len(seg_indices), -1, np.int64), 0
    pairs = np.unique(np.stack([keys, vals], axis=1), axis=0)
    shared = int((np.unique(pairs[:, 0], return_counts=True)[1] > 1).sum())
    # Last group wins for a shared segment: unique over the reversed list keeps each key's last occurrence.
    uniq, first_rev = np.unique(keys[::-1], return_index=True)
    owner = vals[::-1][first_rev]
    pos = np.clip(np.searchsorted(uniq, seg_indices), 0, len(uniq) - 1)
    return np.where(uniq[pos] == seg_indices, owner[pos], -1), shared


def read_instance_mask(zip_path: str | Path, frame_index: int) -> np.ndarray:
    """Instance ids of one ``.sens`` frame from ``<scene>_2d-instance-filt.zip`` (colour resolution).

    The 8-bit PNG holds objectId + 1 (0 = none); returns int32 objectIds with -1 = none.
    """
    zip_path = Path(zip_path)
    member = INSTANCE_ZIP_PATTERN.format(frame_index=int(frame_index))
    if not zip_path.is_file():
        raise InputError(zip_path, "instance mask zip not found")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            data = zf.read(member)
    except KeyError as exc:
        raise InputError(zip_path, f"no {member} in the instance mask zip") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(zip_path, f"corrupt instance mask zip: {exc}") from exc
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise InputError(zip_path, f"{member}: corrupt PNG")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise InputError(zip_path, f"{member}: expected an 8-bit single-channel PNG, got {img.dtype} {img.shape}")
    return img.astype(np.int32) - 1


# ---- the reader ------------------------------------------------------------------------------------------------

def _frames_table(paths: ScanNetPaths, align: np.ndarray) -> tuple[pa.Table, str, str]:
    header, index = read_sens_index(paths.sens)
    if header.color_compression != COLOR_JPEG:
        raise InputError(paths.sens, f"colour compression {COLOR_COMPRESSION[header.color_compression]!r} is not "
                                     "supported (ScanNet stores jpeg)")
    if header.depth_compression != DEPTH_ZLIB_USHORT:
        raise InputError(paths.sens, f"depth compression {DEPTH_COMPRESSION[header.depth_compression]!r} is not "
                                     "supported (ScanNet stores zlib_ushort)")
    kc, kd = header.intrinsic_color, header.intrinsic_depth
    if min(header.color_width, header.color_height, header.depth_width, header.depth_height) <= 0:
        raise InputError(paths.sens, "image sizes in the header must be positive")
    if not (kc[0, 0] > 0 and kc[1, 1] > 0 and kd[0, 0] > 0 and kd[1, 1] > 0) or header.depth_shift <= 0:
        raise InputError(paths.sens, "header intrinsics (focal lengths) and depth_shift must be positive")
    n = header.num_frames
    if n == 0:
        raise InputError(paths.sens, ".sens has no frames")
    valid = finite_pose_mask(index.camera_to_world)
    if not valid.any():
        raise InputError(paths.sens, f"no frame of {n} has a valid (finite, rigid) pose")
    c2w = np.full((n, 4, 4), np.nan)
    c2w[valid] = align @ index.camera_to_world[valid]
    timestamps, timestamp_source = frame_timestamps(index.timestamp_color_us)
    sens_path = str(paths.sens)
    cols = frames_columns(n)
    cols.update({
        "frame_index": np.arange(n, dtype=np.int64),
        "timestamp": timestamps,
        "camera_to_world": c2w.reshape(n, 16), "valid": valid,
        "fx": np.full(n, kc[0, 0]), "fy": np.full(n, kc[1, 1]), "cx": np.full(n, kc[0, 2]), "cy": np.full(n, kc[1, 2]),
        "width": np.full(n, header.color_width, np.int32), "height": np.full(n, header.color_height, np.int32),
        "color_kind": ["sens_jpeg"] * n, "color_path": [sens_path] * n,
        "color_offset": index.color_offset, "color_length": index.color_length,
        "depth_kind": ["sens_zlib_u16"] * n, "depth_path": [sens_path] * n,
        "depth_offset": index.depth_offset, "depth_length": index.depth_length,
        "depth_scale": np.full(n, 1.0 / header.depth_shift),               # metres per stored unit
        "depth_width": np.full(n, header.depth_width, np.int32),
        "depth_height": np.full(n, header.depth_height, np.int32),
        "depth_fx": np.full(n, kd[0, 0]), "depth_fy": np.full(n, kd[1, 1]),
        "depth_cx": np.full(n, kd[0, 2]), "depth_cy": np.full(n, kd[1, 2]),
    })
    return table_from_columns(FRAMES_SCHEMA, cols), header.sensor_name, timestamp_source


def frame_timestamps(timestamp_color_us: np.ndarray) -> tuple[np.ndarray, str]:
    """Frame times (s) and where they came from.

    The ``.sens`` colour timestamps (microseconds) are used when they are strictly increasing. Most released scans
    store 0 for every frame, and some hold stray values in a few frames (ScanNet issues #9, #39); then the frame
    index at VLM-3R's ScanNet video rate (``SCANNET_NOMINAL_FPS``) is the time, as VLM-3R's videos and frame
    metadata use.
    """
    stamps = np.asarray(timestamp_color_us, np.uint64).astype(np.float64)
    if len(stamps) >= 2 and bool((np.diff(stamps) > 0).all()):
        return stamps / 1e6, "sens timestamp_color (microseconds)"
    return (np.arange(len(stamps), dtype=np.float64) / SCANNET_NOMINAL_FPS,
            f"frame index / {SCANNET_NOMINAL_FPS:g} fps (the .sens colour timestamps are not strictly increasing)")


def _read_annotations(paths: ScanNetPaths, num_vertices: int) -> tuple[np.ndarray, list[dict], int]:
    segs = read_input_json(paths.segments, "segments file")
    agg = read_input_json(paths.aggregation, "aggregation file")
    seg_indices = segs.get("segIndices") if isinstance(segs, dict) else None
    if not isinstance(seg_indices, list):
        raise InputError(paths.segments, "no segIndices list")
    if len(seg_indices) != num_vertices:
        raise InputError(paths.segments, f"segIndices has {len(seg_indices)} entries but the mesh {paths.mesh.name} "
                                         f"has {num_vertices} vertices")
    groups = agg.get("segGroups") if isinstance(agg, dict) else None
    if not isinstance(groups, list):
        raise InputError(paths.aggregation, "no segGroups list")
    for i, g in enumerate(groups):
        if not (isinstance(g, dict) and isinstance(g.get("objectId"), int) and g["objectId"] >= 0
                and isinstance(g.get("segments"), list) and isinstance(g.get("label"), str)):
            raise InputError(paths.aggregation, f"segGroups[{i}] needs a non-negative int objectId, a segments list "
                                                "and a label string")
    labels: dict[int, str] = {}
    for g in groups:  # a repeated objectId is one object split over several groups, if the labels agree
        if labels.setdefault(g["objectId"], g["label"]) != g["label"]:
            raise InputError(paths.aggregation, f"objectId {g['objectId']} has two labels "
                                                f"{labels[g['objectId']]!r} and {g['label']!r}")
    try:
        seg_arr = np.asarray(seg_indices, np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(paths.segments, f"segIndices are not integers: {exc}") from exc
    try:
        vertex_instance, shared = vertex_instances(seg_arr, groups)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(paths.aggregation, f"segGroups segments are not integer ids: {exc}") from exc
    return vertex_instance, groups, shared


def _objects(vertices: np.ndarray, vertex_instance: np.ndarray, groups: list[dict], label_map: dict[str, LabelRow],
             paths: ScanNetPaths, label_map_path: Path):
    labels = {g["objectId"]: g["label"] for g in groups}
    unknown = sorted({lab for lab in labels.values() if lab not in label_map})
    if unknown:
        raise InputError(paths.aggregation, f"labels not in {label_map_path.name}: {unknown}")
    order = np.argsort(vertex_instance, kind="stable")
    ids, starts, counts = np.unique(vertex_instance[order], return_index=True, return_counts=True)
    members = {int(i): order[s:s + c] for i, s, c in zip(ids, starts, counts) if i >= 0}
    rows = {"instance_id": [], "label": [], "category": [], "centroid": [], "lengths": [], "axes": [],
            "num_points": []}
    empty = []
    for object_id in sorted(labels):
        idx = members.get(object_id)
        if idx is None:
            empty.append(object_id)  # a group whose segments match no vertex has no geometry to box
            continue
        centroid, lengths, axes = upright_box(vertices[idx])
        rows["instance_id"].append(object_id)
        rows["label"].append(labels[object_id])
        rows["category"].append(label_map[labels[object_id]].category)
        rows["centroid"].append(centroid)
        rows["lengths"].append(lengths)
        rows["axes"].append(axes)
        rows["num_points"].append(len(idx))
    table = objects_table(rows["instance_id"], rows["label"], rows["category"],
                          np.reshape(rows["centroid"], (-1, 3)), np.reshape(rows["lengths"], (-1, 3)),
                          np.reshape(rows["axes"], (-1, 3, 3)), rows["num_points"])
    used = {lab: label_map[lab] for lab in sorted(set(labels.values()))}
    label_ids = {lab: {"id": r.scannet_id, "category": r.category, "nyu40id": r.nyu40_id} for lab, r in used.items()}
    return table, empty, label_ids


class ScanNetReader:
    layout = ("<raw>/scans/sceneXXXX_YY/ (and scans_test/) with <scene>.sens, <scene>.txt, <scene>_vh_clean_2.ply, "
              "segs/aggregation JSON; split lists scannetv2_<split>.txt")

    def looks_like(self, raw: Path) -> bool:
        """A ScanNet release: scene folders under scans/ or scans_test/."""
        return any(d.is_dir() and _SCENE_ID.match(d.name) for sub in ("scans", "scans_test") if (raw / sub).is_dir()
                   for d in (raw / sub).iterdir())

    name = "scannet"

    def list_scenes(self, raw: Path, split: str | None = None) -> list[tuple[str, str]]:
        return list_scenes(raw, split)

    def read_scene(self, raw: Path, scene_id: str, split: str) -> CanonicalScene:
        raw = Path(raw).absolute()
        scene_dir = _scene_dir(raw, scene_id)
        if scene_dir is None:
            raise InputError(raw / "scans" / scene_id, "scene folder not found under scans/ or scans_test/")
        paths = ScanNetPaths.of(scene_dir)
        meta_txt = read_scene_meta(paths.meta)
        align, alignment_source = axis_alignment(meta_txt, paths.meta)
        frames, sensor_name, timestamp_source = _frames_table(paths, align)

        mesh = read_ply(paths.mesh)
        if len(mesh.vertices) == 0:
            raise InputError(paths.mesh, "mesh has no vertices")
        if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices)):
            raise InputError(paths.mesh, f"face vertex index out of range 0..{len(mesh.vertices) - 1}")
        vertices = mesh.vertices @ align[:3, :3].T + align[:3, 3]

        has_annotations = paths.segments.exists() or paths.aggregation.exists()
        label_map_path = raw / LABEL_MAP_NAME
        meta: dict[str, Any] = {
            "video_source": {"kind": "sens", "path": str(paths.sens)},
            "pose_source": str(paths.sens),
            "mesh_source": str(paths.mesh),
            "alignment": align.tolist(),
            "alignment_source": alignment_source,
            "sensor_name": sensor_name,
            "timestamp_source": timestamp_source,
            "scene_type": meta_txt.get("sceneType", ""),
            "invalid_frames": int((~np.asarray(frames.column("valid").to_numpy(zero_copy_only=False))).sum()),
        }
        if split != "test" or has_annotations:
            vertex_instance, groups, shared = _read_annotations(paths, len(vertices))
            label_map = read_label_map(label_map_path)
            objects, empty, label_ids = _objects(vertices, vertex_instance, groups, label_map, paths, label_map_path)
            meta.update({
                "annotations": {"segments": str(paths.segments), "aggregation": str(paths.aggregation)},
                "label_map": str(label_map_path), "label_ids": label_ids,
                "segments_in_several_objects": shared, "instances_without_vertices": empty,
            })
        else:  # test scenes ship no annotations: no objects, every vertex unannotated
            vertex_instance = np.full(len(vertices), -1, np.int64)
            objects = objects_table([], [], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), [])
            meta.update({"annotations": None, "label_map": None})
        if paths.instance_zip.is_file():
            meta["instance_masks"] = {"kind": "zip", "path": str(paths.instance_zip),
                                      "pattern": INSTANCE_ZIP_PATTERN, "value": "objectId+1"}
        return CanonicalScene(dataset=self.name, scene_id=scene_id, split=split, frames=frames, objects=objects,
                              mesh_vertices=vertices, mesh_faces=mesh.faces, mesh_colors=mesh.colors,
                              vertex_instance=vertex_instance, meta=meta)


READER = ScanNetReader()


def export_scannet200_ply(scene: CanonicalScene, path: str | Path, valid_ids: Collection[int] | None = None) -> dict:
    """Write a canonical ScanNet scene as the ScanNet200-preprocessed PLY that VLM-3R's scene metadata reads
    (``BenchmarkScripts/ScanNet200/preprocess_scannet200.py``): binary PLY, vertex ``x y z`` (float, axis-aligned),
    ``red green blue`` (uchar), ``label`` (uint: the label map's ``id``, 0 unless in ``valid_ids``; every id of the
    label map when ``valid_ids`` is None) and ``instance_id`` (uint: the aggregation's objectId, 0 where
    unannotated — so, as in the official output, object 0 and unannotated vertices share the value 0); faces as they
    are. Returns counts."""
    if scene.dataset != "scannet":
        raise ValueError(f"{scene.scene_id}: a ScanNet200 PLY is written for ScanNet scenes, not {scene.dataset}")
    if scene.vertex_instance is None:
        raise ValueError(f"{scene.scene_id}: the canonical scene has no per-vertex instances")
    label_ids = scene.meta.get("label_ids") or {}
    instance_ids = column_as_array(scene.objects, "instance_id").astype(np.int64)
    object_label = np.array([
        label_ids.get(lbl, {}).get("id", 0) for lbl in scene.objects.column("label").to_pylist()], np.int64)
    if valid_ids is not None:
        object_label = np.where(np.isin(object_label, np.asarray(sorted(valid_ids), np.int64)), object_label, 0)
    vertex_instance = np.asarray(scene.vertex_instance, np.int64)
    label = np.zeros(len(vertex_instance), np.uint32)
    annotated = vertex_instance >= 0
    if len(instance_ids):
        order = np.argsort(instance_ids)
        pos = np.clip(np.searchsorted(instance_ids[order], vertex_instance), 0, len(order) - 1)
        known = annotated & (instance_ids[order][pos] == vertex_instance)
        label[known] = object_label[order][pos][known]
    colors = scene.mesh_colors if scene.mesh_colors is not None else np.zeros((len(vertex_instance), 3), np.uint8)
    write_ply(path, scene.mesh_vertices, scene.mesh_faces, colors,
              {"label": label, "instance_id": np.where(annotated, vertex_instance, 0).astype(np.uint32)})
    return {"vertices": int(len(vertex_instance)), "labelled_vertices": int((label > 0).sum()),
            "instances": int(len(np.unique(vertex_instance[annotated])))}
