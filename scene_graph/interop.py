"""Scene graphs from and to the metadata files of VLM-3R and VSI-Bench.

- VLM-3R ``scene_metadata.json`` (``{scene_id: {video_path, dataset, room_size, room_center, object_counts,
  object_bboxes: {category: [box, ...]}}}``) and ``frame_metadata.json`` (``{scene_id: {camera_intrinsics,
  img_width, img_height, frames: [{frame_id, camera_pose_camera_to_world, bboxes_2d: [{instance_id, bbox_2d}]}]}}``).
- VSI-Bench ``*_meta_info_val.json``: the scene-metadata layout with the key ``object_bbox``.

Box entries come in the variants VLM-3R wrote: ``centroid``/``axesLengths``/``normalizedAxes`` (rows = axes) with
``min``/``max`` (ScanNet, ScanNet++ and VSI-Bench) or ``min_corner``/``max_corner`` (ARKitScenes, computed there with
columns as axes, so they are ignored and recomputed with rows), with or without ``instance_id`` (ScanNet++ and
ARKitScenes have none: ids are then assigned in file order above the file's own ids, and since ``bboxes_2d`` cannot
refer to an assigned id, their 2D boxes are not linked, as VLM-3R links none either). Imported objects carry
``num_points = 0``. First appearances follow VLM-3R: over every listed frame (whatever its pose), at
``round(frame_id / fps)`` whole seconds (frames carrying a ``timestamp``, as ours do, use it unrounded).
Imported visibility rows come from ``bboxes_2d``; the masks are gone, so ``visible_pixels`` is the 2D box's pixel
area (an upper bound), ``visible_fraction`` is NaN (unknown) and ``source`` is ``"vlm3r_bbox"``. Imported frames are
ranked by their position in the file (VLM-3R's list is the sampled frame list): frames left out of an export
because their pose was not finite are absent, so the ranks of a re-imported export are renumbered 0..N-1.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.atomic import write_text
from pipeline.core.errors import InputError
from pipeline.core.scene import finite_pose_mask, objects_table
from pipeline.core.schemas import GRAPH_FRAMES_SCHEMA, VISIBILITY_SCHEMA, column_as_array, table_from_columns
from scene_graph.graph import INCONSISTENT_KEY, SceneGraph, graph_objects

SOURCE_IMPORTED_BBOX = "vlm3r_bbox"
# Our dataset names -> the ``dataset`` strings VLM-3R writes.
VLM3R_DATASET_NAMES = {"scannet": "scannet", "scannetpp": "ScanNetpp", "arkitscenes": "ARkitScenes"}
# VLM-3R's FRAME_CATEGORY_FPS_LOOKUP_TABLE: seconds = frame_id / fps for frame metadata without timestamps.
VLM3R_FRAME_FPS = {"scannet": 24.0, "scannetpp": 30.0, "arkitscenes": 10.0}


def dataset_name(name: str, where: str = "metadata") -> str:
    """Our dataset name for any spelling VLM-3R / VSI-Bench use (``ScanNetpp``, ``ARkitScenes``, ``scannet++``...)."""
    key = re.sub(r"[^a-z+]", "", str(name).lower()).replace("++", "pp")
    if key in ("scannet", "scannetpp", "arkitscenes"):
        return key
    raise InputError(where, f"unknown dataset name {name!r} (expected scannet, ScanNetpp or ARkitScenes)")


def _load(source: str | Path | dict, what: str) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, what
    path = Path(source)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, f"{what} must map scene ids to entries, got {type(data).__name__}")
    return data, str(path)


def _vector(entry: dict, keys: tuple[str, ...], size: int, where: str) -> np.ndarray | None:
    for key in keys:
        if key in entry:
            value = np.asarray(entry[key], dtype=np.float64).reshape(-1)
            if value.size != size:
                raise InputError(where, f"box key {key!r} has {value.size} values, expected {size}")
            return value
    return None


def _objects(boxes_by_category: dict[str, list[dict]], where: str) -> tuple[pa.Table, int, set[int]]:
    """OBJECTS_SCHEMA rows from ``{category: [box, ...]}``; returns the table, the number of exact duplicate
    entries dropped (VLM-3R's ScanNet whitelist lists ``printer`` twice, so its boxes appear twice) and the set of
    instance ids the file itself gave (only those can be linked to ``bboxes_2d``; assigned ids cannot)."""
    parsed = []
    for category, entries in boxes_by_category.items():
        if not isinstance(entries, list):
            raise InputError(where, f"object boxes of {category!r} must be a list")
        for k, entry in enumerate(entries):
            at = f"{where} [{category}][{k}]"
            centroid = _vector(entry, ("centroid",), 3, at)
            size = _vector(entry, ("axesLengths",), 3, at)
            rows = _vector(entry, ("normalizedAxes",), 9, at)
            if centroid is None or size is None:
                lo = _vector(entry, ("min", "min_corner"), 3, at)
                hi = _vector(entry, ("max", "max_corner"), 3, at)
                if lo is None or hi is None:
                    raise InputError(at, "box has neither centroid/axesLengths nor min/max")
                centroid, size, rows = (lo + hi) / 2.0, hi - lo, np.eye(3).reshape(-1)
            if rows is None:
                rows = np.eye(3).reshape(-1)
            given = int(entry["instance_id"]) if entry.get("instance_id") is not None else None
            parsed.append((given, category, centroid, size, rows))
    explicit = {given for given, *_ in parsed if given is not None}
    # Ids for entries without one (ScanNet++ raw obb, ARKitScenes): file order, above every id the file gives.
    next_id = max(explicit, default=-1) + 1
    ids, cats, centroids, lengths, axes = [], [], [], [], []
    seen: set[tuple] = set()
    duplicates = 0
    for given, category, centroid, size, rows in parsed:
        key = (given, category, *centroid.tolist(), *size.tolist(), *rows.tolist())
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if given is None:
            inst, next_id = next_id, next_id + 1
        else:
            inst = given
        ids.append(inst); cats.append(category)
        centroids.append(centroid); lengths.append(size); axes.append(rows.reshape(3, 3))
    if not ids:
        return (objects_table([], [], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), []), duplicates,
                explicit)
    return objects_table(ids, cats, cats, centroids, lengths, axes, [0] * len(ids)), duplicates, explicit


def inconsistent_categories(declared: Any, categories: list[str], where: str) -> dict[str, dict[str, int]]:
    """Categories whose declared ``object_counts`` disagree with their boxes: ``{category: {"declared", "boxes"}}``.

    VSI-Bench's own meta_info has such entries (scannet scene0474_04: chair 3 declared, 4 boxes; scene0500_00:
    chair 38 vs 39, window 7 vs 5). Which number is right cannot be told from the file, so these categories are
    reported and kept out of counting and of every task that needs a unique object, not guessed."""
    if declared is None:
        return {}
    if not isinstance(declared, dict):
        raise InputError(where, f"object_counts must map categories to counts, got {type(declared).__name__}")
    boxes = Counter(categories)
    out = {}
    for category in sorted(declared):
        try:
            n = int(declared[category])
        except (TypeError, ValueError):
            raise InputError(where, f"object_counts[{category!r}] is not a count: {declared[category]!r}") from None
        if n != boxes[category]:
            out[category] = {"declared": n, "boxes": boxes[category]}
    return out


def _frame_index(frame_id: Any, rank: int) -> int:
    """Integer frame index of a VLM-3R ``frame_id``: ints as they are, strings by their digits (``DSC01752``)."""
    if isinstance(frame_id, (int, np.integer)):
        return int(frame_id)
    if isinstance(frame_id, (float, np.floating)) and float(frame_id).is_integer():
        return int(frame_id)            # 12.0 from a float-writing tool: not the digits "12", "0"
    digits = re.findall(r"\d+", str(frame_id))
    return int(digits[-1]) if digits else rank


def _frames_and_visibility(entry: dict, dataset: str, fps: float | None, object_ids: set[int], where: str):
    intr = entry.get("camera_intrinsics") or {}
    fx, fy, cx, cy = (float(intr.get(k, math.nan)) for k in ("fx", "fy", "cx", "cy"))
    width, height = int(entry.get("img_width") or 0), int(entry.get("img_height") or 0)
    frames = entry.get("frames")
    if not isinstance(frames, list):
        raise InputError(where, "frame metadata entry has no 'frames' list")
    rate = fps or VLM3R_FRAME_FPS[dataset]
    n = len(frames)
    c2w = np.full((n, 4, 4), np.nan)
    frame_index = np.zeros(n, np.int64)
    stamps = np.zeros(n)
    vis: dict[str, list] = {k: [] for k in VISIBILITY_SCHEMA.names}
    dropped = 0
    # First appearance per instance over every frame listed, whatever its pose (VLM-3R's
    # calculate_first_appearance_time reads all frames): round(frame_id / fps) whole seconds for VLM-3R's files,
    # the exact timestamp for files that carry one (ours).
    first_seen: dict[int, float] = {}
    ranks = np.arange(n, dtype=np.int32)
    for i, frame in enumerate(frames):
        pose = frame.get("camera_pose_camera_to_world")
        if pose is not None:
            # VLM-3R writes lost-tracking poses as NaN / -Infinity (json accepts them); they become invalid frames.
            c2w[i] = np.asarray(pose, dtype=np.float64).reshape(4, 4)
        frame_index[i] = _frame_index(frame.get("frame_id"), int(ranks[i]))
        if "timestamp" in frame:
            stamps[i] = appear = float(frame["timestamp"])
        else:
            stamps[i] = frame_index[i] / rate
            appear = float(round(int(frame_index[i]) / rate))      # Python round (half to even), as VLM-3R
        for box in frame.get("bboxes_2d") or []:
            inst = int(box["instance_id"])
            if inst not in object_ids:
                dropped += 1     # walls, floors...: 2D boxes of instances without a 3D box
                continue
            first_seen[inst] = min(first_seen.get(inst, appear), appear)
            vis["rank"].append(int(ranks[i])); vis["instance_id"].append(inst)
            x0, y0, x1, y1 = (int(x) for x in box["bbox_2d"])
            vis["bbox_2d"].append([x0, y0, x1, y1])
            vis["visible_pixels"].append(max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0))
            vis["visible_fraction"].append(math.nan)
            vis["source"].append(SOURCE_IMPORTED_BBOX)
    valid = finite_pose_mask(c2w)
    frames_table = table_from_columns(GRAPH_FRAMES_SCHEMA, {
        "rank": ranks, "frame_index": frame_index, "timestamp": stamps,
        "camera_to_world": c2w.reshape(-1, 16), "camera_center": np.where(valid[:, None], c2w[:, :3, 3], np.nan),
        "valid": valid, "fx": np.full(n, fx), "fy": np.full(n, fy), "cx": np.full(n, cx), "cy": np.full(n, cy),
        "width": np.full(n, width, np.int32), "height": np.full(n, height, np.int32),
    })
    # Visibility of invalid frames is meaningless without a pose: drop it, counted.
    valid_rank = dict(zip(ranks.tolist(), valid.tolist()))
    keep = [i for i, r in enumerate(vis["rank"]) if valid_rank[r]]
    dropped += len(vis["rank"]) - len(keep)
    vis = {k: [v[i] for i in keep] for k, v in vis.items()}
    order = sorted(range(len(keep)), key=lambda i: (vis["rank"][i], vis["instance_id"][i]))
    vis_table = table_from_columns(VISIBILITY_SCHEMA, {k: [v[i] for i in order] for k, v in vis.items()})
    return frames_table, vis_table, dropped, rate, first_seen


def _empty_frames() -> tuple[pa.Table, pa.Table]:
    return (table_from_columns(GRAPH_FRAMES_SCHEMA, {k: [] for k in GRAPH_FRAMES_SCHEMA.names}),
            table_from_columns(VISIBILITY_SCHEMA, {k: [] for k in VISIBILITY_SCHEMA.names}))


def _graph_from_entry(scene_id: str, entry: dict, frame_entry: dict | None, dataset: str | None, split: str | None,
                      fps: float | None, box_key: str, where: str) -> tuple[SceneGraph, dict[str, int]]:
    at = f"{where} [{scene_id}]"
    if not isinstance(entry, dict):
        raise InputError(at, "scene entry must be an object")
    ds = dataset_name(dataset or entry.get("dataset", ""), at)
    boxes = entry.get(box_key)
    if boxes is None:  # accept either spelling whatever the declared format
        boxes = entry.get("object_bboxes" if box_key == "object_bbox" else "object_bbox")
    if not isinstance(boxes, dict):
        raise InputError(at, f"no {box_key!r} mapping of category -> boxes")
    canonical, duplicates, linkable = _objects(boxes, at)
    objects = graph_objects(canonical, at)      # refuses empty / non-finite boxes
    counts = {"duplicate_boxes": duplicates, "dropped_bboxes_2d": 0}
    if len(linkable) < objects.num_rows:
        # Boxes without instance_id (ScanNet++, ARKitScenes) got ids here: 2D boxes cannot name them.
        counts["objects_without_instance_id"] = objects.num_rows - len(linkable)
    inconsistent = inconsistent_categories(entry.get("object_counts"), objects.column("category").to_pylist(), at)
    counts["count_mismatches"] = len(inconsistent)
    room_size = float(entry.get("room_size", 0.0) or 0.0)
    if not math.isfinite(room_size) or room_size < 0:
        counts["invalid_room_size"] = 1          # VLM-3R writes 0.0 when the area failed: unknown, like here
        room_size = 0.0
    center = [float(x) for x in (entry.get("room_center") or [math.nan] * 3)]
    room: dict[str, Any] = {"floor_area_m2": room_size, "outline": [], "center": center,
                            "first_appearance_s": {}, "video_duration_s": 0.0, "fps": 0.0}
    if inconsistent:
        room[INCONSISTENT_KEY] = inconsistent
    if not all(math.isfinite(x) for x in center):
        room["center"] = None
    if frame_entry is not None:
        frames, visibility, dropped, rate, first_seen = _frames_and_visibility(frame_entry, ds, fps, linkable, at)
        counts["dropped_bboxes_2d"] = dropped
        stamps = column_as_array(frames, "timestamp")
        # VLM-3R's frame_id / fps is already video time (origin 0); our exports state their origin.
        t0 = float(frame_entry.get("time_origin_s", 0.0))
        category_of = dict(zip(column_as_array(objects, "instance_id").tolist(), objects.column("category").to_pylist()))
        first: dict[str, float] = {}
        for inst, seen_s in first_seen.items():
            t = seen_s - t0
            cat = category_of[inst]
            first[cat] = min(first.get(cat, t), t)
        room.update({"first_appearance_s": dict(sorted(first.items())), "time_origin_s": t0,
                     "video_duration_s": float(stamps.max() - t0) if len(stamps) else 0.0, "fps": rate})
    else:
        frames, visibility = _empty_frames()
    scene_split = split or entry.get("split") or (frame_entry or {}).get("split") or "unknown"
    return SceneGraph(ds, str(scene_id), str(scene_split), objects, frames, visibility, room), counts


def import_vlm3r(scene_meta: str | Path | dict, frame_meta: str | Path | dict | None = None, *,
                 dataset: str | None = None, split: str | None = None, fps: float | None = None,
                 box_key: str = "object_bboxes") -> list[tuple[SceneGraph | None, dict[str, Any]]]:
    """One (graph, report) per scene of a VLM-3R scene-metadata file (plus its frame metadata when given).

    A scene that cannot be imported gives ``(None, {"error": InputError})`` so the caller records it and goes on.
    ``dataset`` overrides the entries' ``dataset`` field; ``fps`` overrides VLM-3R's per-dataset frame rate used to
    turn ``frame_id`` into seconds (frames exported by us carry ``timestamp`` and need neither).
    """
    scenes, where = _load(scene_meta, "scene metadata")
    frames: dict = {}
    if frame_meta is not None:
        frames, _ = _load(frame_meta, "frame metadata")
    out = []
    for scene_id in sorted(scenes):
        try:
            graph, counts = _graph_from_entry(scene_id, scenes[scene_id], frames.get(scene_id) if frame_meta else None,
                                              dataset, split, fps, box_key, where)
            if frame_meta is not None and scene_id not in frames:
                counts["missing_frame_metadata"] = 1
            out.append((graph, counts))
        except InputError as exc:
            out.append((None, {"scene_id": scene_id, "error": exc}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:   # wrong shapes / types in the entry
            error = InputError(f"{where} [{scene_id}]", f"malformed entry: {type(exc).__name__}: {exc}")
            out.append((None, {"scene_id": scene_id, "error": error}))
    return out


def import_vsibench(meta_info: str | Path | dict, *, dataset: str | None = None,
                    split: str = "val") -> list[tuple[SceneGraph | None, dict[str, Any]]]:
    """Scene graphs (objects and room only, no frames) from a VSI-Bench ``*_meta_info_val.json``."""
    return import_vlm3r(meta_info, None, dataset=dataset, split=split, box_key="object_bbox")


# ---- export ------------------------------------------------------------------------------------------------------

def _finite_list(values) -> list:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("non-finite value in exported metadata")
    return arr.tolist()


def graph_to_vlm3r(graph: SceneGraph) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (scene metadata entry, frame metadata entry) of one graph in VLM-3R's layout. Only frames with finite
    poses are written (VLM-3R wrote lost-tracking poses as NaN/-Infinity, which strict JSON readers reject)."""
    objects = graph.objects
    ids = column_as_array(objects, "instance_id")
    cats = objects.column("category").to_pylist()
    centroid, lengths = column_as_array(objects, "centroid"), column_as_array(objects, "lengths")
    axes, lo, hi = (column_as_array(objects, k) for k in ("axes", "aabb_min", "aabb_max"))
    boxes: dict[str, list] = {}
    for i in sorted(range(len(ids)), key=lambda i: (cats[i], ids[i])):
        boxes.setdefault(cats[i], []).append({
            "centroid": _finite_list(centroid[i]), "axesLengths": _finite_list(lengths[i]),
            "normalizedAxes": _finite_list(axes[i]), "min": _finite_list(lo[i]), "max": _finite_list(hi[i]),
            "instance_id": int(ids[i])})
    room = graph.room
    center = room.get("center")
    scene_entry = {
        # VLM-3R's relative layout <dataset_name>/videos/<split>/<scene>.mp4 (ScanNet++, ARKitScenes scripts).
        "video_path": f"{VLM3R_DATASET_NAMES[graph.dataset]}/videos/{graph.split}/{graph.scene_id}.mp4",
        "dataset": VLM3R_DATASET_NAMES[graph.dataset], "scene_name": graph.scene_id, "split": graph.split,
        "room_size": float(room.get("floor_area_m2") or 0.0),
        "room_center": _finite_list(center) if center is not None else [0.0, 0.0, 0.0],
        "object_counts": {c: len(b) for c, b in boxes.items()},
        "object_bboxes": boxes,
    }
    frames = graph.frames
    valid = column_as_array(frames, "valid").astype(bool) if frames.num_rows else np.zeros(0, bool)
    c2w = column_as_array(frames, "camera_to_world").reshape(-1, 4, 4)
    valid &= finite_pose_mask(c2w)
    by_rank: dict[int, list] = {}
    for r in graph.visibility.select(["rank", "instance_id", "bbox_2d"]).to_pylist():
        by_rank.setdefault(r["rank"], []).append({"instance_id": int(r["instance_id"]), "bbox_2d": r["bbox_2d"]})
    frame_rows = frames.to_pylist()
    first = next((r for r, ok in zip(frame_rows, valid) if ok), None)
    frame_entry = {
        "camera_intrinsics": ({k: float(first[k]) for k in ("fx", "fy", "cx", "cy")} if first else {}),
        "img_width": int(first["width"]) if first else 0, "img_height": int(first["height"]) if first else 0,
        "split": graph.split, "time_origin_s": float(room.get("time_origin_s", 0.0)),
        "frames": [{
            "frame_id": int(r["frame_index"]), "timestamp": float(r["timestamp"]),
            "camera_pose_camera_to_world": _finite_list(c2w[i]),
            "bboxes_2d": by_rank.get(int(r["rank"]), []),
        } for i, (r, ok) in enumerate(zip(frame_rows, valid)) if ok],
    }
    return scene_entry, frame_entry


def export_vlm3r(graphs: list[SceneGraph], scene_meta_path: str | Path, frame_meta_path: str | Path) -> dict[str, int]:
    """Write VLM-3R's two files for ``graphs`` (``json.dump(indent=4)`` as VLM-3R does; atomic). Returns counts."""
    scenes, frames = {}, {}
    dropped = 0
    for graph in sorted(graphs, key=lambda g: g.scene_id):
        scenes[graph.scene_id], frames[graph.scene_id] = graph_to_vlm3r(graph)
        dropped += graph.frames.num_rows - len(frames[graph.scene_id]["frames"])
    write_text(scene_meta_path, json.dumps(scenes, indent=4, allow_nan=False))
    write_text(frame_meta_path, json.dumps(frames, indent=4, allow_nan=False))
    return {"scenes": len(scenes), "frames": sum(len(f["frames"]) for f in frames.values()),
            "frames_without_finite_pose": dropped}
