"""Write a :class:`~pipeline.sources.synthetic.SyntheticScene` as a real ScanNet v2 release.

``write_scannet(scene, raw_root)`` produces, under ``raw_root``:

- ``scans/<scene_id>/`` (``scans_test/`` for the split ``test``) with ``<scene_id>.sens`` (JPEG colour, zlib
  uint16 millimetre depth at the colour resolution, as ScanNet's 640x480-colour scenes have it; the scene's
  ``invalid_frames`` stored as all -inf poses; an empty IMU block), ``<scene_id>.txt`` (meta lines with the
  ``axisAlignment``), ``<scene_id>_vh_clean_2.ply`` (float xyz + uchar RGBA, uchar/int faces), the
  ``_vh_clean_2.0.010000.segs.json`` over-segmentation and ``.aggregation.json`` instance groups (every instance,
  floor and walls included, ``objectId`` = the ground-truth instance id), and ``_2d-instance-filt.zip`` with the
  rendered instance masks as 8-bit PNGs holding objectId + 1;
- ``scannetv2-labels.combined.tsv`` (the 17 real columns; one row per label used, merged with an existing file)
  and ``scannetv2_<split>.txt`` (merged, sorted; a scene is moved out of any other split list).

Everything 3D is stored in the *unaligned* frame ``inv(A) @ world``, so the reader's ``A @ ...`` gives back the
generator's ground truth. Test scenes get no annotations and no ``axisAlignment`` (A = identity), as in the release.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.core.atomic import atomic_open, write_text
from pipeline.core.ply import write_ply
from pipeline.sources.scannet import LABEL_MAP_NAME, ScanNetPaths
from pipeline.sources.sens import (COLOR_JPEG, DEPTH_ZLIB_USHORT, SensFramePayload, SensHeader, encode_depth_zlib,
                                   encode_jpeg, write_sens)
from pipeline.sources.synthetic import SyntheticScene

TSV_COLUMNS = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
               "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
               "wnsynsetkey", "mpcat40", "mpcat40index")

# Generator label -> (raw_category, category, ScanNet id, nyu40 id, nyu40 class). The ids are ScanNet's real
# ones: `id` from ScanNet's BenchmarkScripts/ScanNet200/scannet200_constants.py (VALID_CLASS_IDS_200 zipped with
# CLASS_LABELS_200), the nyu40 ids/classes from the NYU40 taxonomy that the TSV's nyu40 columns use. ScanNet200 has
# no "sofa": its name for the class is "couch" (nyu40 "sofa").
SCANNET_LABELS: dict[str, tuple[str, str, int, int, str]] = {
    "wall": ("wall", "wall", 1, 1, "wall"),
    "chair": ("chair", "chair", 2, 5, "chair"),
    "floor": ("floor", "floor", 3, 2, "floor"),
    "table": ("table", "table", 4, 7, "table"),
    "sofa": ("couch", "couch", 6, 6, "sofa"),
    "cabinet": ("cabinet", "cabinet", 7, 3, "cabinet"),
    "shelf": ("shelf", "shelf", 8, 15, "shelves"),
    "bed": ("bed", "bed", 11, 4, "bed"),
    "sink": ("sink", "sink", 14, 34, "sink"),
    "toilet": ("toilet", "toilet", 17, 33, "toilet"),
    "refrigerator": ("refrigerator", "refrigerator", 27, 24, "refridgerator"),
    "tv": ("tv", "tv", 33, 25, "television"),
    "stool": ("stool", "stool", 38, 40, "otherprop"),
}

SEGMENT_MAX_VERTICES = 32   # over-segmentation granularity: each instance is split into several segments
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member time: byte-reproducible zips


def default_alignment() -> np.ndarray:
    """A non-trivial axisAlignment: 90 degrees about z plus a shift (kept small so float32 storage stays < 1e-6)."""
    return np.array([[0.0, -1.0, 0.0, 2.5],
                     [1.0, 0.0, 0.0, -1.0],
                     [0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


def scannet_scene_id(scene: SyntheticScene) -> str:
    """``sceneXXXX_YY`` from the seed (XXXX = seed mod 10000, YY = the next two digits of the seed)."""
    if not 0 <= scene.seed < 1_000_000:  # beyond six digits two seeds would share a scene id
        raise ValueError(f"seed {scene.seed} outside [0, 1000000): no distinct ScanNet scene id")
    return f"scene{scene.seed % 10000:04d}_{(scene.seed // 10000) % 100:02d}"


def _fmt(x: float) -> str:
    return repr(float(x))


def _check_alignment(align: np.ndarray) -> np.ndarray:
    align = np.asarray(align, np.float64)
    if align.shape != (4, 4):
        raise ValueError(f"alignment must be 4x4, got {align.shape}")
    rot = align[:3, :3]
    if (np.abs(rot @ rot.T - np.eye(3)).max() > 1e-9
            or abs(np.linalg.det(rot) - 1) > 1e-9 or np.abs(align[3] - [0, 0, 0, 1]).max() > 0):
        raise ValueError("alignment must be a 4x4 rigid transform (rotation + translation)")
    return align


def _segments(vertex_instance: np.ndarray) -> np.ndarray:
    """Per-vertex segment ids: each instance's vertices (and the unannotated ones) cut into chunks of at most
    SEGMENT_MAX_VERTICES in index order; ids are 3 + 7k so they are neither contiguous nor 0-based, as in ScanNet."""
    order = np.lexsort((np.arange(len(vertex_instance)), vertex_instance))
    sorted_inst = vertex_instance[order]
    starts = np.flatnonzero(np.r_[True, sorted_inst[1:] != sorted_inst[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    key = np.stack([sorted_inst, rank // SEGMENT_MAX_VERTICES], axis=1)
    _, chunk = np.unique(key, axis=0, return_inverse=True)
    seg = np.empty(len(order), np.int64)
    seg[order] = 3 + 7 * chunk.reshape(-1)
    return seg


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _write_zip(path: Path, members: Iterator[tuple[str, bytes]]) -> None:
    with atomic_open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)


def _merge_label_map(path: Path, labels: set[str]) -> None:
    rows: dict[str, list[str]] = {}
    if path.exists():
        parsed = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t"))
        if not parsed or tuple(parsed[0]) != TSV_COLUMNS:
            raise ValueError(f"{path}: existing label map has an unexpected header; refusing to merge into it")
        rows = {r[1]: r for r in parsed[1:] if len(r) == len(TSV_COLUMNS)}
    for label in labels:
        raw, category, scannet_id, nyu40, nyu40_class = SCANNET_LABELS[label]
        rows.setdefault(raw, [str(scannet_id), raw, category, "1", str(nyu40), "", "", nyu40_class] + [""] * 9)
    ordered = sorted(rows.values(), key=lambda r: (int(r[0]), r[1]))
    write_text(path, "\n".join("\t".join(r) for r in [list(TSV_COLUMNS)] + ordered) + "\n")


def _merge_split_lists(raw_root: Path, scene_id: str, split: str) -> None:
    for path in sorted(raw_root.glob("scannetv2_*.txt")):
        if path.name != f"scannetv2_{split}.txt":
            ids = [s for s in path.read_text(encoding="utf-8").split() if s != scene_id]
            write_text(path, "".join(f"{s}\n" for s in ids))
    path = raw_root / f"scannetv2_{split}.txt"
    ids = set(path.read_text(encoding="utf-8").split()) if path.exists() else set()
    write_text(path, "".join(f"{s}\n" for s in sorted(ids | {scene_id})))


def write_scannet(scene: SyntheticScene, raw_root: Path, split: str = "train",
                  alignment: np.ndarray | None = None) -> str:
    """Write ``scene`` into the ScanNet release at ``raw_root``; returns its scene id (``sceneXXXX_YY``)."""
    raw_root = Path(raw_root)
    scene_id = scannet_scene_id(scene)
    is_test = split == "test"
    if is_test and alignment is not None and not np.allclose(alignment, np.eye(4)):
        raise ValueError("ScanNet test scenes have no axisAlignment; pass alignment=None for split 'test'")
    align = np.eye(4) if is_test else _check_alignment(default_alignment() if alignment is None else alignment)
    unknown = sorted({o.label for o in scene.objects} - set(SCANNET_LABELS))
    if unknown:
        raise ValueError(f"no ScanNet label for generator labels {unknown}")
    object_ids = [o.instance_id for o in scene.objects]
    stray = sorted(set(np.unique(scene.vertex_instance).tolist()) - set(object_ids) - {-1})
    if stray or len(set(object_ids)) != len(object_ids):
        raise ValueError(f"vertex instances {stray} have no object, or object ids repeat")
    if max(object_ids, default=-1) >= 255:
        raise ValueError("ScanNet's 8-bit instance PNGs hold objectId + 1 <= 255")

    other = raw_root / ("scans" if is_test else "scans_test") / scene_id
    if other.exists():
        raise ValueError(f"{other} exists: the scene was written for another split; remove it first")
    scene_dir = raw_root / ("scans_test" if is_test else "scans") / scene_id
    scene_dir.mkdir(parents=True, exist_ok=True)
    paths = ScanNetPaths.of(scene_dir)
    to_raw = np.linalg.inv(align)     # stored = inv(A) @ world, so that the reader's A @ stored = world

    # .sens
    k4 = np.eye(4)
    k4[:3, :3] = scene.intrinsics
    num_frames = len(scene.camera_to_world)
    header = SensHeader(sensor_name="synthetic", intrinsic_color=k4, extrinsic_color=np.eye(4),
                        intrinsic_depth=k4, extrinsic_depth=np.eye(4), color_compression=COLOR_JPEG,
                        depth_compression=DEPTH_ZLIB_USHORT, color_width=scene.width, color_height=scene.height,
                        depth_width=scene.width, depth_height=scene.height, depth_shift=1000.0)
    invalid = set(int(i) for i in scene.invalid_frames)

    def payloads() -> Iterator[SensFramePayload]:
        for k in range(num_frames):
            pose = np.full((4, 4), -np.inf) if k in invalid else to_raw @ scene.camera_to_world[k]
            depth_mm = np.clip(np.round(scene.depth[k].astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
            stamp_us = int(round(float(scene.timestamps[k]) * 1e6))
            yield SensFramePayload(pose, stamp_us, stamp_us, encode_jpeg(scene.rgb[k], 95),
                                   encode_depth_zlib(depth_mm))

    write_sens(paths.sens, header, payloads())

    # <scene>.txt: ScanNet writes its keys in alphabetical order.
    k = scene.intrinsics
    meta = {
        "colorHeight": scene.height, "colorToDepthExtrinsics": " ".join(_fmt(v) for v in np.eye(4).reshape(-1)),
        "colorWidth": scene.width, "depthHeight": scene.height, "depthWidth": scene.width,
        "fx_color": _fmt(k[0, 0]), "fx_depth": _fmt(k[0, 0]), "fy_color": _fmt(k[1, 1]), "fy_depth": _fmt(k[1, 1]),
        "mx_color": _fmt(k[0, 2]), "mx_depth": _fmt(k[0, 2]), "my_color": _fmt(k[1, 2]), "my_depth": _fmt(k[1, 2]),
        "numColorFrames": num_frames, "numDepthFrames": num_frames, "numIMUmeasurements": 0,
        "sceneType": "Living room / Lounge",
    }
    if not is_test:
        meta = {"axisAlignment": " ".join(_fmt(v) for v in align.reshape(-1)), **meta}
    write_text(paths.meta, "".join(f"{key} = {value}\n" for key, value in meta.items()))

    # Mesh in the unaligned frame, ScanNet's vertex layout (x y z red green blue alpha).
    vertices = scene.vertices @ to_raw[:3, :3].T + to_raw[:3, 3]
    write_ply(paths.mesh, vertices, scene.faces, scene.colors,
              extra={"alpha": np.full(len(vertices), 255, np.uint8)})

    if not is_test:
        seg = _segments(np.asarray(scene.vertex_instance, np.int64))
        write_text(paths.segments, json.dumps({
            "params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
                       "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
            "sceneId": f"{scene_id}_vh_clean_2", "segIndices": seg.tolist()}))
        groups = []
        for group_id, obj in enumerate(sorted(scene.objects, key=lambda o: o.instance_id)):
            segments = np.unique(seg[scene.vertex_instance == obj.instance_id]).tolist()
            groups.append({"id": group_id, "objectId": int(obj.instance_id), "segments": segments,
                           "label": SCANNET_LABELS[obj.label][0]})
        write_text(paths.aggregation, json.dumps({
            "sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2", "segGroups": groups,
            "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"}))
        _write_zip(paths.instance_zip, (
            (f"instance-filt/{i}.png", _png((np.asarray(scene.instance[i]) + 1).astype(np.uint8)))
            for i in range(num_frames)))
        _merge_label_map(raw_root / LABEL_MAP_NAME, {o.label for o in scene.objects})
    _merge_split_lists(raw_root, scene_id, split)
    return scene_id
