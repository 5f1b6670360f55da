"""Hand-built scene graphs for the QA tests (tables built from the declared schemas)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pipeline.core.schemas import (GRAPH_FRAMES_SCHEMA, GRAPH_OBJECTS_SCHEMA, REGIONS_SCHEMA, VISIBILITY_SCHEMA,
                                   table_from_columns)
from scene_graph.graph import SceneGraph


def yaw_axes(yaw_deg: float) -> np.ndarray:
    """Rows = box axes of an upright box rotated by yaw about +z."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def look_pose(centre, forward, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """camera_to_world of an OpenCV camera (x right, y down, z forward) at ``centre`` looking along ``forward``."""
    z = np.asarray(forward, dtype=float)
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=float))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, centre
    return pose


def make_graph(objects: Iterable[tuple], poses: Iterable[np.ndarray] = (), visibility: Iterable[tuple] = (),
               room: dict[str, Any] | None = None, dataset: str = "scannet", scene_id: str = "scene0001_00",
               split: str = "train", timestamps: Iterable[float] | None = None) -> SceneGraph:
    """objects: (instance_id, category, centroid, lengths[, yaw_deg or 3x3 axes rows]);
    visibility: (rank, instance_id[, visible_pixels])."""
    objects = list(objects)
    ids, cats, cents, lens, axes = [], [], [], [], []
    for obj in objects:
        iid, cat, c, l = obj[:4]
        ax = obj[4] if len(obj) > 4 else 0.0
        ax = yaw_axes(ax) if np.ndim(ax) == 0 else np.asarray(ax, dtype=float)
        ids.append(iid); cats.append(cat); cents.append(c); lens.append(l); axes.append(ax.reshape(9))
    n = len(objects)
    cents = np.asarray(cents, dtype=float).reshape(n, 3)
    lens = np.asarray(lens, dtype=float).reshape(n, 3)
    counts = {c: cats.count(c) for c in cats}
    obj_table = table_from_columns(GRAPH_OBJECTS_SCHEMA, {
        "instance_id": np.asarray(ids, dtype=np.int64), "label": cats, "category": cats, "centroid": cents,
        "lengths": lens, "axes": np.asarray(axes, dtype=float).reshape(n, 9),
        "aabb_min": cents - lens / 2, "aabb_max": cents + lens / 2, "num_points": np.zeros(n, dtype=np.int64),
        "longest_edge": lens.max(axis=1) if n else np.zeros(0), "footprint_area": lens[:, 0] * lens[:, 1],
        "volume": lens.prod(axis=1), "is_unique": [counts[c] == 1 for c in cats],
    })
    poses = [np.asarray(p, dtype=float) for p in poses]
    f = len(poses)
    c2w = np.asarray(poses, dtype=float).reshape(f, 16)
    ts = np.arange(f, dtype=float) if timestamps is None else np.asarray(list(timestamps), dtype=float)
    frames = table_from_columns(GRAPH_FRAMES_SCHEMA, {
        "rank": np.arange(f, dtype=np.int32), "frame_index": np.arange(f, dtype=np.int64) * 10, "timestamp": ts,
        "camera_to_world": c2w, "camera_center": c2w.reshape(f, 4, 4)[:, :3, 3] if f else np.zeros((0, 3)),
        "valid": np.isfinite(c2w).all(axis=1) if f else np.zeros(0, dtype=bool),
        "fx": np.full(f, 100.0), "fy": np.full(f, 100.0), "cx": np.full(f, 32.0), "cy": np.full(f, 24.0),
        "width": np.full(f, 64, dtype=np.int32), "height": np.full(f, 48, dtype=np.int32),
    })
    vis = [tuple(v) + ((100,) if len(v) == 2 else ()) for v in visibility]
    m = len(vis)
    vis_table = table_from_columns(VISIBILITY_SCHEMA, {
        "rank": np.asarray([v[0] for v in vis], dtype=np.int32), "instance_id": np.asarray([v[1] for v in vis], dtype=np.int64),
        "bbox_2d": np.zeros((m, 4), dtype=np.int32) if m else np.zeros((0, 4), dtype=np.int32),
        "visible_pixels": np.asarray([v[2] for v in vis], dtype=np.int64), "visible_fraction": np.full(m, 0.5),
        "source": ["mesh_projection"] * m,
    })
    return SceneGraph(dataset=dataset, scene_id=scene_id, split=split, objects=obj_table, frames=frames,
                      visibility=vis_table, room=dict(room or {}))


def with_box_regions(graph: SceneGraph, width: int = 64, height: int = 48) -> SceneGraph:
    """The graph with one region per visibility row: a rectangular mask whose place and size follow from the rank and
    the instance id (real pycocotools RLE of a width x height frame)."""
    from dataclasses import replace

    from pipeline.core.masks import encode_mask

    cols: dict[str, list] = {name: [] for name in REGIONS_SCHEMA.names}
    for row in graph.visibility.to_pylist():
        rank, instance = row["rank"], row["instance_id"]
        x0, y0 = (3 * rank + 5 * instance) % (width - 16), (2 * rank + 7 * instance) % (height - 12)
        x1, y1 = x0 + 6 + instance % 9, y0 + 4 + rank % 7
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = True
        values = {"rank": rank, "instance_id": instance, "bbox_xyxy": [x0, y0, x1 - 1, y1 - 1], "mask_height": height,
                  "mask_width": width, "rle_counts": encode_mask(mask)["counts"], "visible_pixels": int(mask.sum()),
                  "visible_fraction": row["visible_fraction"], "truncated": x0 == 0, "source": "mesh_projection"}
        for name, value in values.items():
            cols[name].append(value)
    return replace(graph, regions=table_from_columns(REGIONS_SCHEMA, cols))


def run_task(graph: SceneGraph, name: str, seed: int = 0, **overrides) -> tuple[list[dict], dict]:
    """Finished records and stats of one task on one graph (no per-scene cap unless given)."""
    from dataclasses import replace

    from qa_templates.config import QAConfig
    from qa_templates.generate import generate_scene
    from qa_templates.tasks import TASKS_BY_NAME

    spec = TASKS_BY_NAME[name]
    cfg = replace(QAConfig(), **{"max_per_scene_task": 0, **overrides})
    result = generate_scene(graph, spec.bench, [spec], seed, cfg)
    return result.records, result.stats[name]


def option_text(record: dict, letter: str) -> str:
    """The text of option ``letter`` ("B" -> "sofa" from "B. sofa")."""
    for option in record["options"]:
        if option.startswith(letter + ". "):
            return option[3:]
    raise KeyError(letter)


def answer_of(record: dict) -> str:
    """The correct option's text of a multiple-choice record, read back through its letter."""
    letter = record.get("mc_answer", record["ground_truth"])
    return option_text(record, letter)
