"""Every table schema of the project, declared once.

Writers build tables with :func:`table_from_columns` (which casts and checks), readers go through
:func:`read_table` (which validates names, types and fixed list sizes). Fixed-size vectors (poses, box axes)
are ``fixed_size_list`` columns; :func:`column_as_array` turns them back into ``[N, k]`` numpy arrays.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic import atomic_path


def _vec(n: int) -> pa.DataType:
    return pa.list_(pa.float64(), n)


# Canonical per-frame table of a scene (ROOT/scenes/<dataset>/<scene_id>/frames.parquet). One row per frame of the
# source stream, in stream order. Poses: camera-to-world, OpenCV camera (x right, y down, z forward), z-up metric
# world after the dataset's alignment. Intrinsics are for the upright image of size width x height.
FRAMES_SCHEMA = pa.schema([
    ("frame_index", pa.int64()),          # index in the source stream (sens frame, video frame, sorted file list)
    ("timestamp", pa.float64()),          # seconds
    ("camera_to_world", _vec(16)),        # row-major 4x4; NaN where the pose is missing
    ("valid", pa.bool_()),                # false for non-finite or missing poses
    ("fx", pa.float64()), ("fy", pa.float64()), ("cx", pa.float64()), ("cy", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()),
    # Where the colour image lives. kind: "sens_jpeg" (byte range of a JPEG inside a .sens),
    # "video" (offset = frame number in a video file), "image" (a whole image file; offset/length 0).
    ("color_kind", pa.string()), ("color_path", pa.string()),
    ("color_offset", pa.int64()), ("color_length", pa.int64()),
    ("rotate_k", pa.int8()),              # np.rot90 count (counter-clockwise quarter turns) to make the decoded image upright
    # Depth. kind: "sens_zlib_u16", "png_u16", "depth_bin_deflate_f32" (offset = frame index),
    # "depth_bin_record" (byte range of one record), or "none".
    ("depth_kind", pa.string()), ("depth_path", pa.string()),
    ("depth_offset", pa.int64()), ("depth_length", pa.int64()),
    ("depth_scale", pa.float64()),        # metres per stored unit (0.001 for millimetres)
    ("depth_width", pa.int32()), ("depth_height", pa.int32()),
    ("depth_fx", pa.float64()), ("depth_fy", pa.float64()), ("depth_cx", pa.float64()), ("depth_cy", pa.float64()),
])

# Canonical object instances (ROOT/scenes/<dataset>/<scene_id>/objects.parquet). Oriented boxes: the rows of
# ``axes`` (3x3, row-major) are the box axes in world coordinates; ``lengths`` are full edge lengths along them.
OBJECTS_SCHEMA = pa.schema([
    ("instance_id", pa.int64()),
    ("label", pa.string()),               # raw dataset label
    ("category", pa.string()),            # canonical category (documented mapping per dataset)
    ("centroid", _vec(3)),
    ("lengths", _vec(3)),
    ("axes", _vec(9)),
    ("aabb_min", _vec(3)),
    ("aabb_max", _vec(3)),
    ("num_points", pa.int64()),           # mesh vertices of the instance; 0 where the dataset gives only a box
])

# The frame manifest (ROOT/scenes/<dataset>/<scene_id>/manifest.parquet): the exact frames a scene contributes,
# read by extract (which frames CUT3R sees, in this order) and by the QA ("frame k of N" is rank k-1).
MANIFEST_SCHEMA = pa.schema([
    ("rank", pa.int32()),
    ("frame_index", pa.int64()),
    ("timestamp", pa.float64()),
    ("camera_to_world", _vec(16)),
    ("valid", pa.bool_()),
])

# One row per failed input (ROOT/errors.parquet), and per input accepted with a warning.
ERRORS_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("dataset", pa.string()),
    ("scene_id", pa.string()),             # or the unit of work when it is not a scene (e.g. "vsibench/val")
    ("error_type", pa.string()),
    ("message", pa.string()),
    ("path", pa.string()),
    ("severity", pa.string()),             # "error" (the input failed) or "warning" (used, with a caveat)
])


class SchemaError(ValueError):
    """A table does not match its declared schema."""


def table_from_columns(schema: pa.Schema, columns: Mapping[str, Any]) -> pa.Table:
    """Build a table with exactly ``schema`` from numpy arrays / lists (``[N, k]`` arrays for vector columns)."""
    missing = [f.name for f in schema if f.name not in columns]
    extra = sorted(set(columns) - set(schema.names))
    if missing or extra:
        raise SchemaError(f"columns do not match schema: missing {missing}, unexpected {extra}")
    arrays = []
    for field in schema:
        value = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            width = field.type.list_size
            value_type = field.type.value_type
            mat = np.asarray(value, dtype=value_type.to_pandas_dtype())
            if mat.ndim == 1 and mat.size == 0:
                mat = mat.reshape(0, width)
            mat = mat.reshape(len(mat), -1) if mat.ndim > 2 else mat
            if mat.ndim != 2 or mat.shape[1] != width:
                raise SchemaError(f"column {field.name!r}: expected shape [N, {width}], got {list(np.shape(value))}")
            flat = pa.array(np.ascontiguousarray(mat).reshape(-1), type=value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, width))
        else:
            try:
                arrays.append(pa.array(np.asarray(value) if isinstance(value, np.ndarray) else value, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise SchemaError(f"column {field.name!r}: cannot convert to {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def validate(table: pa.Table, schema: pa.Schema, where: str = "table") -> pa.Table:
    """Check names and types against ``schema``; returns the table with the schema's field order."""
    if table.schema.names != schema.names:
        missing = [n for n in schema.names if n not in table.schema.names]
        extra = [n for n in table.schema.names if n not in schema.names]
        if missing or extra:
            raise SchemaError(f"{where}: columns differ from the schema: missing {missing}, unexpected {extra}")
        table = table.select(schema.names)
    for field in schema:
        got = table.schema.field(field.name).type
        if got != field.type:
            raise SchemaError(f"{where}: column {field.name!r} has type {got}, expected {field.type}")
    return table


def write_table(path: str | os.PathLike, table: pa.Table, schema: pa.Schema) -> None:
    """Validate then write a parquet file atomically (deterministic bytes for the same table)."""
    table = validate(table, schema, where=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a readable parquet file: {exc}") from exc
    return validate(table, schema, where=str(path))


def column_as_array(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy; fixed-size list columns become ``[N, k]`` float arrays."""
    col = table.column(name)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        if len(col) == 0:
            return np.zeros((0, width), dtype=col.type.value_type.to_pandas_dtype())
        flat = pa.concat_arrays([chunk.flatten() for chunk in col.chunks]).to_numpy(zero_copy_only=False)
        return flat.reshape(-1, width)
    return col.to_numpy(zero_copy_only=False)


# ---- scene graph (ROOT/graph/<dataset>/<scene_id>/) ------------------------------------------------------------

# Objects of the graph: the canonical object columns plus derived fields shared by all QA tasks.
GRAPH_OBJECTS_SCHEMA = pa.schema(list(OBJECTS_SCHEMA) + [
    ("longest_edge", pa.float64()),       # metres, max(lengths)
    ("footprint_area", pa.float64()),     # m^2, area of the box's floor projection
    ("volume", pa.float64()),             # m^3
    ("is_unique", pa.bool_()),            # the only instance of its category in the scene
])

# Frames of the graph: the ranks of the frame manifest ("frame k of N" = rank k-1) with pose and camera centre.
GRAPH_FRAMES_SCHEMA = pa.schema([
    ("rank", pa.int32()),
    ("frame_index", pa.int64()),
    ("timestamp", pa.float64()),          # seconds
    ("camera_to_world", _vec(16)),        # row-major, OpenCV camera, z-up world
    ("camera_center", _vec(3)),           # = camera_to_world[:3, 3]
    ("valid", pa.bool_()),
    ("fx", pa.float64()), ("fy", pa.float64()), ("cx", pa.float64()), ("cy", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()),
])

# Which object is visible in which manifest frame.
VISIBILITY_SCHEMA = pa.schema([
    ("rank", pa.int32()),
    ("instance_id", pa.int64()),
    ("bbox_2d", pa.list_(pa.int32(), 4)), # [xmin, ymin, xmax, ymax] inclusive pixels of the upright image
    ("visible_pixels", pa.int64()),
    ("visible_fraction", pa.float64()),   # visible pixels / pixels of the object's whole projection in the frame
    ("source", pa.string()),              # "instance_mask", "mesh_projection", or "vlm3r_bbox" (imported metadata:
                                          # visible_pixels = 2D box area, visible_fraction = NaN)
])


# Region prompts (SR-3D style): one row per (manifest frame, instance) whose visible mask covers at least the minimum
# region area (scene_graph.regions.MIN_REGION_AREA_FRACTION of the frame). Masks are at the frame's stored
# resolution (the graph frame's width x height, upright) as COCO compressed RLE (pycocotools' ``counts`` string;
# ``{"size": [mask_height, mask_width], "counts": rle_counts}`` is the pycocotools object).
REGIONS_SCHEMA = pa.schema([
    ("rank", pa.int32()),                 # manifest rank of the frame
    ("instance_id", pa.int64()),
    ("bbox_xyxy", pa.list_(pa.int32(), 4)),  # [x0, y0, x1, y1] inclusive pixels of the mask's box (as bbox_2d):
                                          # columns x0..x1, rows y0..y1 (COCO's [x, y, w, h] = x0, y0, x1-x0+1, ...)
    ("mask_height", pa.int32()),          # = the frame's height
    ("mask_width", pa.int32()),           # = the frame's width
    ("rle_counts", pa.string()),          # COCO compressed RLE counts of the visible-pixel mask (column-major runs)
    ("visible_pixels", pa.int64()),       # mask area in pixels of the stored frame
    ("visible_fraction", pa.float64()),   # as in VISIBILITY_SCHEMA: visible / whole (unoccluded) projection
    ("truncated", pa.bool_()),            # the object's projection crosses the image border (or the near plane)
    ("source", pa.string()),              # "instance_mask" (the release's 2D masks) or "mesh_projection"
])

# ---- navigation routes (ROOT/routes/<dataset>/<scene_id>.parquet) -----------------------------------------------

# One row per route sampled on the scene's navigable floor (z-up world, metres, headings counter-clockwise from +x).
# A route is legs of "Go forward until <landmark>"; ``turns[k]`` is the turn made before leg k + (0 if
# starts_with_turn else 1), so len(turns) = len(landmark_labels) - (0 if starts_with_turn else 1).
ROUTES_SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("scene_id", pa.string()),
    ("route_index", pa.int32()),          # 0..R-1 within the scene, in generation order
    ("kind", pa.string()),                # "forward", "reversed" (of route parent_index) or "partial" (its prefix)
    ("parent_index", pa.int32()),         # route_index of the route it was derived from; -1 for "forward"
    ("backend", pa.string()),             # navigation backend: "grid" or "habitat"
    ("start_instance_id", pa.int64()), ("start_label", pa.string()),
    ("facing_instance_id", pa.int64()), ("facing_label", pa.string()),
    ("goal_instance_id", pa.int64()), ("goal_label", pa.string()),
    ("start", _vec(3)),
    ("goal", _vec(3)),
    ("start_heading_deg", pa.float64()),  # initial heading: towards the facing object
    ("corner_points", pa.list_(_vec(3))), # simplified geodesic path, start and goal included
    ("starts_with_turn", pa.bool_()),
    ("turns", pa.list_(pa.string())),     # "Turn Left" / "Turn Right" / "Turn Back"
    ("turn_angles_deg", pa.list_(pa.float64())),  # signed heading change of each turn (+ = left)
    ("turn_points", pa.list_(_vec(3))),   # where each turn is made
    ("landmark_instance_ids", pa.list_(pa.int64())),  # per leg: the unique object at its end (last = goal)
    ("landmark_labels", pa.list_(pa.string())),
    ("leg_lengths_m", pa.list_(pa.float64())),
    ("geodesic_length_m", pa.float64()),
    ("euclidean_length_m", pa.float64()),
    ("num_turns", pa.int32()),
])
