"""The spatio-temporal scene graph of one scene: objects with metric boxes, the manifest frames with camera poses,
which object is visible in which frame, and room measures. Every QA task is a pure function of a SceneGraph.

On disk (``ROOT/graph/<dataset>/<scene_id>/``): ``objects.parquet`` (GRAPH_OBJECTS_SCHEMA), ``frames.parquet``
(GRAPH_FRAMES_SCHEMA), ``visibility.parquet`` (VISIBILITY_SCHEMA), ``room.json``, optionally ``regions.parquet``
(REGIONS_SCHEMA: region prompts, :mod:`scene_graph.regions`), and the done-marker written last by the stage (its
stats: dataset, scene id, split, counts and file hashes).

:func:`build_scene_graph` is pure (arrays in, tables out); :func:`write_graph` / :func:`read_graph` do the I/O.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.atomic import read_json, sha256_file, write_json
from pipeline.core.errors import InputError
from pipeline.core.layout import DONE_MARKER
from pipeline.core.markers import read_marker
from pipeline.core.scene import CanonicalScene, finite_pose_mask
from pipeline.core.schemas import (GRAPH_FRAMES_SCHEMA, GRAPH_OBJECTS_SCHEMA, OBJECTS_SCHEMA, REGIONS_SCHEMA,
                                   VISIBILITY_SCHEMA, column_as_array, read_table, table_from_columns, write_table)
from scene_graph import geometry, regions

GRAPH_FILES = ("objects.parquet", "frames.parquet", "visibility.parquet", "room.json")
REGIONS_FILE = "regions.parquet"          # written only for graphs built with region prompts
# The NumPy seed VLM-3R's metadata scripts set before calculate_room_area draws its 10,000 floor points:
# --random_seed defaults 42 (scannet_metadata.py, scannetpp_metadata.py) and 0 (arkitscenes_metadata.py).
VLM3R_FLOOR_SEEDS = {"scannet": 42, "scannetpp": 42, "arkitscenes": 0}
# room.json of an imported graph: {category: {"declared", "boxes"}} where the metadata's object_counts disagree
# with its boxes (such categories are kept out of counting and of tasks that need a unique object).
INCONSISTENT_KEY = "inconsistent_categories"
SOURCE_MASK = "instance_mask"
SOURCE_PROJECTION = "mesh_projection"


@dataclass
class SceneGraph:
    dataset: str
    scene_id: str
    split: str
    objects: pa.Table          # GRAPH_OBJECTS_SCHEMA
    frames: pa.Table           # GRAPH_FRAMES_SCHEMA (may have 0 rows when imported from metadata without frames)
    visibility: pa.Table       # VISIBILITY_SCHEMA
    # room.json: {"floor_area_m2": float, "outline": [[x, y], ...], "center": [x, y, z],
    #             "first_appearance_s": {category: seconds}, "video_duration_s": float, "fps": float}
    # Also "time_origin_s" (the timestamp of the video's first frame: appearance times and durations are seconds
    # from it) and, for built graphs, "floor_method" (alpha, samples, seed); imported ones may have "outline": []
    # and "center": None when the metadata does not give them.
    room: dict[str, Any] = field(default_factory=dict)
    regions: pa.Table | None = None   # REGIONS_SCHEMA, or None for a graph built without region prompts

    @property
    def camera_centers(self) -> np.ndarray:
        """[T, 3] camera centres of the frames by rank (= camera_to_world[:3, 3]; NaN rows for invalid poses)."""
        return column_as_array(self.frames, "camera_center")

    @property
    def camera_to_world(self) -> np.ndarray:
        """[T, 4, 4] camera-to-world poses of the frames by rank (OpenCV camera, z-up world)."""
        return column_as_array(self.frames, "camera_to_world").reshape(-1, 4, 4)


@dataclass(frozen=True)
class GraphConfig:
    """Every knob of the graph builder; its dict is the graph stage's configuration (in every marker and info.json)."""
    depth_tolerance: float = 0.2          # relative: a surface point is visible where |z - depth| <= tol * depth (VLM-3R)
    near_m: float = 0.05                  # near clipping plane of the rasteriser (metres)
    max_raster_pixels: int = 640 * 480    # raster grid cap when no depth map fixes the grid
    min_visible_pixels: int = 1           # a visibility row needs at least this many visible pixels
    floor_alpha: float = geometry.VLM3R_FLOOR_ALPHA
    floor_samples: int = geometry.VLM3R_FLOOR_SAMPLES
    floor_seed: int | None = None         # None: VLM-3R's seed of the dataset (VLM3R_FLOOR_SEEDS); any int overrides

    def __post_init__(self) -> None:
        if not 0 < self.depth_tolerance < 1:
            raise ValueError(f"depth_tolerance must be in (0, 1), got {self.depth_tolerance}")
        if self.near_m <= 0 or self.max_raster_pixels < 1 or self.min_visible_pixels < 1:
            raise ValueError("near_m must be > 0, max_raster_pixels and min_visible_pixels >= 1")
        if self.floor_alpha <= 0 or self.floor_samples < 4:
            raise ValueError("floor_alpha must be > 0 and floor_samples >= 4")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- objects -----------------------------------------------------------------------------------------------------

def graph_objects(objects: pa.Table, where: str = "objects") -> pa.Table:
    """GRAPH_OBJECTS_SCHEMA rows (sorted by instance id): the canonical columns plus derived fields. Refuses an
    empty table, non-finite or negative boxes and repeated instance ids (InputError naming ``where``)."""
    if objects.num_rows == 0:
        raise InputError(where, "scene has no objects: nothing to build a scene graph from")
    objects = objects.take(pa.array(np.argsort(column_as_array(objects, "instance_id"), kind="stable")))
    ids = column_as_array(objects, "instance_id")
    if len(np.unique(ids)) != len(ids):
        raise InputError(where, f"repeated instance ids: {sorted(set(ids[np.r_[False, ids[1:] == ids[:-1]]].tolist()))}")
    centroid, lengths, axes = geometry.boxes_from_table(objects)
    finite = np.isfinite(centroid).all(1) & np.isfinite(lengths).all(1) & np.isfinite(axes).all((1, 2))
    if not finite.all():
        raise InputError(where, f"non-finite box (NaN/inf) for instance ids {ids[~finite].tolist()}")
    if (lengths < 0).any():
        raise InputError(where, f"negative box lengths for instance ids {ids[(lengths < 0).any(1)].tolist()}")
    categories = objects.column("category").to_pylist()
    _, inverse, counts = np.unique(np.asarray(categories, dtype=object), return_inverse=True, return_counts=True)
    columns = {name: (column_as_array(objects, name) if name not in ("label", "category")
                      else objects.column(name).to_pylist()) for name in OBJECTS_SCHEMA.names}
    columns.update({
        "longest_edge": lengths.max(axis=1),
        "footprint_area": geometry.box_floor_area(lengths, axes),
        "volume": lengths.prod(axis=1),
        "is_unique": counts[inverse] == 1,
    })
    return table_from_columns(GRAPH_OBJECTS_SCHEMA, columns)


# ---- frames ------------------------------------------------------------------------------------------------------

def _frame_rows(scene: CanonicalScene, manifest: pa.Table, where: str) -> pa.Table:
    """The scene's FRAMES_SCHEMA rows named by the manifest, in rank order."""
    row_of = {int(fi): i for i, fi in enumerate(column_as_array(scene.frames, "frame_index"))}
    rows = []
    for fi in column_as_array(manifest, "frame_index"):
        if int(fi) not in row_of:
            raise InputError(where, f"manifest frame_index {int(fi)} is not in the scene's frames")
        rows.append(row_of[int(fi)])
    return scene.frames.take(pa.array(rows, type=pa.int64()))


def graph_frames(scene: CanonicalScene, manifest: pa.Table, where: str = "manifest") -> pa.Table:
    """GRAPH_FRAMES_SCHEMA: one row per manifest rank, the pose from the manifest, intrinsics from the scene frames.

    The camera centre is ``camera_to_world[:3, 3]`` (the translation column of the camera-to-world matrix), never
    ``-R.T @ t`` (that is the centre of a world-to-camera matrix: VSTI-Bench's labels used it by mistake).
    """
    manifest = manifest.take(pa.array(np.argsort(column_as_array(manifest, "rank"), kind="stable")))
    ranks = column_as_array(manifest, "rank")
    if not np.array_equal(ranks, np.arange(len(ranks))):
        raise InputError(where, f"manifest ranks are not 0..{len(ranks) - 1}")
    rows = _frame_rows(scene, manifest, where)
    c2w = column_as_array(manifest, "camera_to_world").reshape(-1, 4, 4)
    valid = column_as_array(manifest, "valid").astype(bool) & finite_pose_mask(c2w)
    center = np.where(valid[:, None], c2w[:, :3, 3], np.nan)
    return table_from_columns(GRAPH_FRAMES_SCHEMA, {
        "rank": ranks.astype(np.int32), "frame_index": column_as_array(manifest, "frame_index"),
        "timestamp": column_as_array(manifest, "timestamp"), "camera_to_world": c2w.reshape(-1, 16),
        "camera_center": center, "valid": valid,
        **{k: column_as_array(rows, k) for k in ("fx", "fy", "cx", "cy", "width", "height")},
    })


# ---- visibility --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ObjectGeometry:
    """World-space surface of every object, for projection: triangles with their owner, and splat points."""
    triangles: np.ndarray       # [F, 3, 3] world
    tri_owner: np.ndarray       # [F] object row
    points: np.ndarray          # [P, 3] world (instance vertices; splatted so sub-pixel objects still register)
    point_owner: np.ndarray     # [P]


def _object_geometry(scene: CanonicalScene, objects: pa.Table) -> _ObjectGeometry:
    """Instance faces (all three vertices in the instance) and vertices from the mesh; an object without mesh
    vertices (datasets that give only boxes) is represented by its box's 12 triangles."""
    ids = column_as_array(objects, "instance_id")
    centroid, lengths, axes = geometry.boxes_from_table(objects)
    tris, tri_owner, pts, pt_owner = [], [], [], []
    has_vertices = np.zeros(len(ids), bool)
    inst = scene.vertex_instance
    if inst is not None and len(inst) == len(scene.mesh_vertices) and len(scene.mesh_vertices):
        pos = np.searchsorted(ids, inst)
        pos_c = np.clip(pos, 0, len(ids) - 1)
        vertex_owner = np.where((inst >= 0) & (ids[pos_c] == inst), pos_c, -1)
        keep = vertex_owner >= 0
        pts.append(scene.mesh_vertices[keep]); pt_owner.append(vertex_owner[keep])
        has_vertices[np.unique(vertex_owner[keep])] = True
        faces = np.asarray(scene.mesh_faces, np.int64).reshape(-1, 3)
        if len(faces):
            fo = vertex_owner[faces]
            same = (fo[:, 0] >= 0) & (fo[:, 0] == fo[:, 1]) & (fo[:, 1] == fo[:, 2])
            tris.append(scene.mesh_vertices[faces[same]]); tri_owner.append(fo[same, 0])
    for row in np.flatnonzero(~has_vertices):
        corners, faces = geometry.box_triangles(centroid[row], lengths[row], axes[row])
        tris.append(corners[faces]); tri_owner.append(np.full(len(faces), row))
    return _ObjectGeometry(_concat(tris, (0, 3, 3), np.float64), _concat(tri_owner, (0,), np.int64),
                           _concat(pts, (0, 3), np.float64), _concat(pt_owner, (0,), np.int64))


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _grid_intrinsics(k: tuple[float, float, float, float], src_wh: tuple[int, int], dst_wh: tuple[int, int]):
    """Intrinsics of the same camera on a resampled pixel grid (pixel centres at integer coordinates)."""
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    fx, fy, cx, cy = k
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def _capped_grid(wh: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The grid size of ``wh`` scaled down (aspect kept) to at most about ``max_pixels`` pixels."""
    scale = min(1.0, math.sqrt(max_pixels / (wh[0] * wh[1])))
    return max(1, round(wh[0] * scale)), max(1, round(wh[1] * scale))


def _bbox_to_image(xmin, ymin, xmax, ymax, grid_k, image_k, width: int, height: int) -> np.ndarray:
    """Inclusive pixel boxes [N, 4] on a raster grid -> inclusive pixel boxes of the colour image: the grid pixels'
    outer edges mapped through the two intrinsics, then the image pixels whose centres they cover."""
    gfx, gfy, gcx, gcy = grid_k
    fx, fy, cx, cy = image_k
    left, right = (xmin - 0.5 - gcx) / gfx * fx + cx, (xmax + 0.5 - gcx) / gfx * fx + cx    # image u of the edges
    top, bottom = (ymin - 0.5 - gcy) / gfy * fy + cy, (ymax + 0.5 - gcy) / gfy * fy + cy
    box = np.stack([np.floor(left + 0.5), np.floor(top + 0.5), np.ceil(right - 0.5), np.ceil(bottom - 0.5)], axis=1)
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, width - 1)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, height - 1)
    return box.astype(np.int32)


def _object_samples(geo: _ObjectGeometry, world_to_camera: np.ndarray, k, width: int, height: int, near_m: float):
    """(owner, pixel, depth) of the objects' surfaces on a grid: rasterised triangles, plus the splatted vertices
    of objects that cover no pixel centre with their triangles (point-cloud instances, sub-pixel objects)."""
    rot, trans = world_to_camera[:3, :3], world_to_camera[:3, 3]
    face, pix, z = geometry.rasterize_triangles(geo.triangles @ rot.T + trans, k, width, height, near_m)
    owner = geo.tri_owner[face]
    rastered = np.zeros(int(geo.point_owner.max(initial=-1)) + 1, bool)
    rastered[owner[owner < len(rastered)]] = True
    need = ~rastered[geo.point_owner] if len(geo.point_owner) else np.zeros(0, bool)
    splat_pix, splat_z, ok = geometry.splat_points(geo.points[need] @ rot.T + trans, k, width, height, near_m)
    return (np.concatenate([owner, geo.point_owner[need][ok]]), np.concatenate([pix, splat_pix]),
            np.concatenate([z, splat_z]))


def _nearest_per_key(owner: np.ndarray, pix: np.ndarray, z: np.ndarray, num_pixels: int):
    """Unique (owner, pixel) pairs with the nearest depth: the object's own z-buffer, occlusion by others ignored."""
    key = owner * num_pixels + pix
    order = np.lexsort((z, key))
    key, z = key[order], z[order]
    first = np.ones(len(key), bool)  # np.r_[True, ...] would be one too long for a frame that sees no object
    first[1:] = key[1:] != key[:-1]
    key, z = key[first], z[first]
    return key // num_pixels, key % num_pixels, z


def _scene_depth(scene: CanonicalScene, geo: _ObjectGeometry, world_to_camera, k, width, height, near_m):
    """Depth map rendered from the whole mesh (plus box proxies) for frames without a measured depth."""
    rot, trans = world_to_camera[:3, :3], world_to_camera[:3, 3]
    faces = np.asarray(scene.mesh_faces, np.int64).reshape(-1, 3)
    tris = np.concatenate([scene.mesh_vertices[faces], geo.triangles]) if len(faces) else geo.triangles
    _, pix, z = geometry.rasterize_triangles(tris @ rot.T + trans, k, width, height, near_m)
    depth = np.full(width * height, np.inf)
    np.minimum.at(depth, pix, z)
    return np.where(np.isfinite(depth), depth, 0.0).reshape(height, width)


@dataclass(frozen=True)
class _FramePixels:
    """One frame's visible pixels on the raster grid they were counted on: what both the visibility row and the
    region prompt of an object are made from."""
    owner: np.ndarray                   # [K] object row of each visible pixel
    pixels: np.ndarray                  # [K] pixel index on the grid (row * width + column)
    grid_wh: tuple[int, int]
    grid_k: tuple[float, float, float, float]
    projected: np.ndarray               # [N] each object's unoccluded projection, in pixels of this grid
    source: str                         # SOURCE_MASK or SOURCE_PROJECTION


def _frame_pixels(scene, geo, ids, world_to_camera, image_k, image_wh, depth_k, depth, mask, config) -> _FramePixels:
    """The visible pixels of every object in one frame.

    With an instance mask the mask's pixels are the visible pixels; otherwise each object's surface is rasterised
    and a pixel counts where it agrees with the depth map (VLM-3R's rule: |z - depth| <= tolerance x depth). The
    projection (the denominator of ``visible_fraction``) is the object's rasterised surface with occlusion ignored
    (its part inside the image: truncation by the image border does not lower the fraction).
    """
    n_objects = len(ids)
    if mask is not None:
        # Visible pixels and boxes at the mask's resolution (exact); the projection that only feeds the fraction's
        # denominator is rasterised on a grid capped at max_raster_pixels (ScanNet masks are 1296x968).
        seen_wh = (mask.shape[1], mask.shape[0])
        seen_k = _grid_intrinsics(image_k, image_wh, seen_wh)
        grid_wh = _capped_grid(seen_wh, config.max_raster_pixels)
        grid_k = _grid_intrinsics(image_k, image_wh, grid_wh)
        source = SOURCE_MASK
    elif depth is not None:
        grid_wh = (depth.shape[1], depth.shape[0])
        grid_k = depth_k if depth_k is not None else _grid_intrinsics(image_k, image_wh, grid_wh)
        seen_wh, seen_k = grid_wh, grid_k
        source = SOURCE_PROJECTION
    else:  # no measured depth: render one from the mesh, on a grid capped at max_raster_pixels
        grid_wh = _capped_grid(image_wh, config.max_raster_pixels)
        grid_k = _grid_intrinsics(image_k, image_wh, grid_wh)
        seen_wh, seen_k = grid_wh, grid_k
        source = SOURCE_PROJECTION
    gw, gh = grid_wh
    owner, pix, z = _object_samples(geo, world_to_camera, grid_k, gw, gh, config.near_m)
    owner, pix, z = _nearest_per_key(owner, pix, z, gw * gh)
    # Each object's unoccluded projection, in pixels of the grid the visible pixels are counted on.
    projected = np.bincount(owner, minlength=n_objects) * (seen_wh[0] * seen_wh[1] / (gw * gh))
    if source == SOURCE_MASK:
        values = np.asarray(mask, np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(ids, values), 0, n_objects - 1)
        hit = (values >= 0) & (ids[pos] == values)               # pixels of instances that are objects of the scene
        seen_owner, seen_pix = pos[hit], np.flatnonzero(hit)
    else:
        if depth is None:
            depth = _scene_depth(scene, geo, world_to_camera, grid_k, gw, gh, config.near_m)
        measured = np.asarray(depth, np.float64).reshape(-1)[pix]
        seen = (measured > 0) & (np.abs(z - measured) <= config.depth_tolerance * measured)
        seen_owner, seen_pix = owner[seen], pix[seen]
    return _FramePixels(seen_owner, seen_pix, seen_wh, seen_k, projected, source)


def _visible_fraction(visible: np.ndarray, projected: np.ndarray) -> np.ndarray:
    # Masks can exceed the mesh projection: cap at 1.
    return visible / np.maximum(np.maximum(projected, visible), 1)


def _frame_visibility(rank, frame: _FramePixels, visible, image_k, width, height, config):
    """Visibility rows of one frame as a dict of columns, or None when no object is visible; ``visible``: the
    frame's visible pixels per object (``np.bincount(frame.owner)``)."""
    n_objects = len(visible)
    rows = np.flatnonzero(visible >= config.min_visible_pixels)
    if len(rows) == 0:
        return None
    owner, grid_w = frame.owner, frame.grid_wh[0]
    col, row = frame.pixels % grid_w, frame.pixels // grid_w
    big = np.iinfo(np.int64).max
    xmin = np.full(n_objects, big); ymin = np.full(n_objects, big)
    xmax = np.full(n_objects, -1); ymax = np.full(n_objects, -1)
    np.minimum.at(xmin, owner, col); np.minimum.at(ymin, owner, row)
    np.maximum.at(xmax, owner, col); np.maximum.at(ymax, owner, row)
    bbox = _bbox_to_image(xmin[rows], ymin[rows], xmax[rows], ymax[rows], frame.grid_k, image_k, width, height)
    v = visible[rows]
    fraction = _visible_fraction(v, frame.projected[rows])
    return {"rank": np.full(len(rows), rank, np.int32), "object_row": rows, "bbox_2d": bbox,
            "visible_pixels": v.astype(np.int64), "visible_fraction": fraction,
            "source": [frame.source] * len(rows)}


def _frame_regions(rank, frame: _FramePixels, visible, geo, world_to_camera, image_k, image_wh, config,
                   region_config):
    """Region rows of one frame (scene_graph.regions), from the same visible pixels as its visibility rows."""
    n_objects = len(visible)
    seen = visible >= config.min_visible_pixels
    if not seen.any():
        return None
    rot, trans = world_to_camera[:3, :3], world_to_camera[:3, 3]
    tri, pts = seen[geo.tri_owner], seen[geo.point_owner]   # only the visible objects' surfaces are projected
    truncated = regions.truncated_objects(
        np.concatenate([geo.triangles[tri].reshape(-1, 3), geo.points[pts]]) @ rot.T + trans,
        np.concatenate([np.repeat(geo.tri_owner[tri], 3), geo.point_owner[pts]]), n_objects, image_k, image_wh,
        config.near_m)
    keep = seen[frame.owner]                   # the pixels of the visible objects
    return regions.frame_region_rows(rank, frame.owner[keep], frame.pixels[keep], frame.grid_wh, frame.grid_k,
                                     image_k, image_wh, _visible_fraction(visible, frame.projected), truncated,
                                     frame.source, region_config)


def _camera_k(row: dict[str, Any], prefix: str = "") -> tuple[float, float, float, float] | None:
    k = tuple(float(row[f"{prefix}{name}"]) for name in ("fx", "fy", "cx", "cy"))
    return k if all(math.isfinite(x) for x in k) and k[0] > 0 and k[1] > 0 else None


def visibility_and_regions(scene: CanonicalScene, objects: pa.Table, frames: pa.Table,
                           depths: Sequence[np.ndarray | None] | None = None,
                           instance_masks: Sequence[np.ndarray | None] | None = None,
                           config: GraphConfig = GraphConfig(), region_config: "regions.RegionConfig | None" = None,
                           where: str = "scene") -> tuple[pa.Table, pa.Table | None]:
    """The VISIBILITY_SCHEMA rows for every valid frame (by rank) and object and, with ``region_config``, the
    REGIONS_SCHEMA table, both sorted by (rank, instance id) and made in one pass over the frames: a region is made of
    exactly the pixels its visibility row counts (carried to the frame's stored resolution). Without
    ``region_config`` the second item is None and nothing of the regions is computed.

    ``depths[r]``: depth map in metres (0 = no measurement) of rank r on the depth grid of the scene's
    ``depth_fx/fy/cx/cy``; ``instance_masks[r]``: instance ids per pixel (-1 = none) over the whole colour image at
    any resolution. Either list may hold None for some ranks; a rank with neither is tested against a depth map
    rendered from the mesh."""
    n = frames.num_rows
    for name, seq in (("depths", depths), ("instance_masks", instance_masks)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name}: {len(seq)} entries for {n} manifest frames")
    ids = column_as_array(objects, "instance_id")
    geo = _object_geometry(scene, objects)
    scene_rows = {int(r["frame_index"]): r for r in scene.frames.select(
        ["frame_index", "depth_fx", "depth_fy", "depth_cx", "depth_cy"]).to_pylist()}
    parts, region_parts = [], []
    for r in frames.to_pylist():
        if not r["valid"]:
            continue
        image_k = _camera_k(r)
        if image_k is None or r["width"] <= 0 or r["height"] <= 0:
            raise InputError(where, f"frame {r['frame_index']}: missing intrinsics or image size")
        rank = int(r["rank"])
        mask = None if instance_masks is None else instance_masks[rank]
        depth = None if depths is None else depths[rank]
        if mask is not None and np.asarray(mask).ndim != 2:
            raise InputError(where, f"frame {r['frame_index']}: instance mask must be 2D, got {np.shape(mask)}")
        if depth is not None and np.asarray(depth).ndim != 2:
            raise InputError(where, f"frame {r['frame_index']}: depth map must be 2D, got {np.shape(depth)}")
        depth_k = _camera_k(scene_rows[int(r["frame_index"])], "depth_")
        c2w = np.asarray(r["camera_to_world"], np.float64).reshape(4, 4)
        world_to_camera = np.linalg.inv(c2w)
        image_wh = (int(r["width"]), int(r["height"]))
        frame = _frame_pixels(scene, geo, ids, world_to_camera, image_k, image_wh, depth_k, depth, mask, config)
        visible = np.bincount(frame.owner, minlength=len(ids))
        part = _frame_visibility(rank, frame, visible, image_k, image_wh[0], image_wh[1], config)
        if part is not None:
            parts.append(part)
        if region_config is not None:
            region_part = _frame_regions(rank, frame, visible, geo, world_to_camera, image_k, image_wh, config,
                                         region_config)
            if region_part is not None:
                region_parts.append(region_part)
    region_table = regions.regions_table(region_parts, ids) if region_config is not None else None
    if not parts:
        return table_from_columns(VISIBILITY_SCHEMA, {name: [] for name in VISIBILITY_SCHEMA.names}), region_table
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return table_from_columns(VISIBILITY_SCHEMA, {
        "rank": cols["rank"], "instance_id": ids[cols["object_row"]], "bbox_2d": cols["bbox_2d"],
        "visible_pixels": cols["visible_pixels"], "visible_fraction": cols["visible_fraction"],
        "source": list(cols["source"]),
    }), region_table


# ---- room --------------------------------------------------------------------------------------------------------

def room_measures(scene: CanonicalScene, objects: pa.Table, frames: pa.Table, visibility: pa.Table,
                  config: GraphConfig = GraphConfig(), where: str = "scene") -> dict[str, Any]:
    """room.json: floor area (m^2) and outline of the alpha shape of the scan's vertices on the floor plane, the
    room centre, per category the first time (s) it is visible, the video duration and frame rate.

    Times are relative to the first frame of the scene's stream (the video's start), so they match the video the
    questions are asked about; manifest ranks carry the timestamps.
    """
    if len(scene.mesh_vertices) == 0:
        raise InputError(where, "mesh has no vertices: no floor area")
    vertices = np.asarray(scene.mesh_vertices, np.float64)
    if not np.isfinite(vertices).all():
        raise InputError(where, "mesh has non-finite vertices")
    seed = config.floor_seed if config.floor_seed is not None else VLM3R_FLOOR_SEEDS.get(scene.dataset, 42)
    floor = geometry.floor_shape(vertices, config.floor_alpha, config.floor_samples, seed)
    stamps = column_as_array(scene.frames, "timestamp")
    stamps = np.sort(stamps[np.isfinite(stamps)])
    t0 = float(stamps[0]) if len(stamps) else 0.0
    steps = np.diff(stamps)
    steps = steps[steps > 0]
    first: dict[str, float] = {}
    if visibility.num_rows:
        rank_time = dict(zip(column_as_array(frames, "rank").tolist(), column_as_array(frames, "timestamp").tolist()))
        category_of = dict(zip(column_as_array(objects, "instance_id").tolist(), objects.column("category").to_pylist()))
        for rank, inst in zip(column_as_array(visibility, "rank").tolist(),
                              column_as_array(visibility, "instance_id").tolist()):
            t = rank_time[rank]
            cat = category_of.get(inst)
            if cat is not None and math.isfinite(t) and (cat not in first or t - t0 < first[cat]):
                first[cat] = t - t0
    return {
        "floor_area_m2": floor.area_m2,
        "outline": floor.outline.tolist(),
        "center": geometry.room_center(vertices).tolist(),
        "first_appearance_s": dict(sorted(first.items())),
        "video_duration_s": float(stamps[-1] - t0) if len(stamps) else 0.0,
        "fps": float(1.0 / np.median(steps)) if len(steps) else 0.0,
        "time_origin_s": t0,            # timestamp of the video's first frame: video time = timestamp - origin
        "floor_method": {"alpha": config.floor_alpha, "samples": config.floor_samples, "seed": seed,
                         "points": "mesh vertices"},
    }


# ---- the pure core -----------------------------------------------------------------------------------------------

def build_scene_graph(scene: CanonicalScene, manifest: pa.Table,
                      depths: Sequence[np.ndarray | None] | None = None,
                      instance_masks: Sequence[np.ndarray | None] | None = None,
                      config: GraphConfig = GraphConfig(), where: str | None = None,
                      region_config: "regions.RegionConfig | None" = None) -> SceneGraph:
    """The scene graph of one canonical scene and its frame manifest. Pure: no I/O.

    ``depths`` / ``instance_masks`` are aligned with the manifest ranks (see :func:`visibility_and_regions`); ``where``
    names the input in error messages (default ``<dataset>/<scene_id>``). With ``region_config`` the
    graph also carries its region prompts, made in the same pass as the visibility table.
    """
    where = where or f"{scene.dataset}/{scene.scene_id}"
    objects = graph_objects(scene.objects, where)
    frames = graph_frames(scene, manifest, where)
    visibility, region_table = visibility_and_regions(scene, objects, frames, depths, instance_masks, config,
                                                      region_config, where)
    room = room_measures(scene, objects, frames, visibility, config, where)
    return SceneGraph(scene.dataset, scene.scene_id, scene.split, objects, frames, visibility, room, region_table)


# ---- files -------------------------------------------------------------------------------------------------------

def graph_stats(graph: SceneGraph) -> dict[str, Any]:
    sources = graph.visibility.column("source").to_pylist()
    stats = {
        "objects": graph.objects.num_rows, "frames": graph.frames.num_rows,
        "valid_frames": int(column_as_array(graph.frames, "valid").sum()) if graph.frames.num_rows else 0,
        "visibility_rows": graph.visibility.num_rows,
        "visible_objects": len(set(column_as_array(graph.visibility, "instance_id").tolist())),
        "visibility_sources": {s: sources.count(s) for s in sorted(set(sources))},
        "floor_area_m2": graph.room.get("floor_area_m2"),
    }
    if graph.regions is not None:
        stats.update(regions.region_stats(graph.regions))
    return stats


def write_graph(graph_dir: str | Path, graph: SceneGraph) -> dict[str, Any]:
    """Write the four graph files (and ``regions.parquet`` when the graph has region prompts) atomically
    (schema-validated); any old done-marker is removed first (the caller writes the new one last). Returns the
    stats: identity, counts and the sha256 of every file."""
    graph_dir = Path(graph_dir)
    graph_dir.mkdir(parents=True, exist_ok=True)
    (graph_dir / DONE_MARKER).unlink(missing_ok=True)
    write_table(graph_dir / "objects.parquet", graph.objects, GRAPH_OBJECTS_SCHEMA)
    write_table(graph_dir / "frames.parquet", graph.frames, GRAPH_FRAMES_SCHEMA)
    write_table(graph_dir / "visibility.parquet", graph.visibility, VISIBILITY_SCHEMA)
    write_json(graph_dir / "room.json", graph.room)
    files = GRAPH_FILES
    if graph.regions is not None:
        write_table(graph_dir / REGIONS_FILE, graph.regions, REGIONS_SCHEMA)
        files += (REGIONS_FILE,)
    else:  # a stale file of an earlier build with regions must not be read as this graph's
        (graph_dir / REGIONS_FILE).unlink(missing_ok=True)
    return {"dataset": graph.dataset, "scene_id": graph.scene_id, "split": graph.split, **graph_stats(graph),
            "sha256": {name: sha256_file(graph_dir / name) for name in files}}


def graph_info(graph_dir: str | Path) -> dict[str, Any] | None:
    """What the done-marker of a complete graph says of it (dataset, scene_id, split, counts, sha256), or None."""
    path = Path(graph_dir) / DONE_MARKER
    return read_marker(path).stats if path.exists() else None


def read_graph(graph_dir: str | Path, verify: bool = False) -> SceneGraph:
    """Read a complete graph (tables validated against their schemas; region prompts when its marker lists
    ``regions.parquet``); ``verify`` also checks the file hashes."""
    graph_dir = Path(graph_dir)
    info = graph_info(graph_dir)
    if info is None:
        raise FileNotFoundError(f"{graph_dir}: not a complete scene graph (no {DONE_MARKER})")
    if verify:
        for name, digest in info["sha256"].items():
            if sha256_file(graph_dir / name) != digest:
                raise InputError(graph_dir / name, "content differs from the sha256 in the done-marker")
    return SceneGraph(
        dataset=info["dataset"], scene_id=info["scene_id"], split=info["split"],
        objects=read_table(graph_dir / "objects.parquet", GRAPH_OBJECTS_SCHEMA),
        frames=read_table(graph_dir / "frames.parquet", GRAPH_FRAMES_SCHEMA),
        visibility=read_table(graph_dir / "visibility.parquet", VISIBILITY_SCHEMA),
        room=read_json(graph_dir / "room.json"),
        regions=(read_table(graph_dir / REGIONS_FILE, REGIONS_SCHEMA) if REGIONS_FILE in info["sha256"] else None))
