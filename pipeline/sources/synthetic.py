"""Deterministic synthetic indoor scenes, written in the real raw formats of ScanNet, ScanNet++ and ARKitScenes.

:func:`generate_scene` builds a room (floor, walls, 5-15 furniture objects of distinct and repeated categories),
a camera path through it, and renders RGB, depth and instance masks from the mesh. The writers in
``pipeline.sources.<dataset>_writer`` turn a :class:`SyntheticScene` into that dataset's raw release layout, so
the real readers can be tested against the generator's ground truth and the demo runs on all three formats.
With ``mounted=True`` a room also gets 1-3 wall-mounted objects (an upper cabinet, a wall tv, a wall shelf) hanging
above the floor furniture, as real scans have them; by default every object stands on the floor (or a tv on a
cabinet).

Conventions of the ground truth: z-up metric world, floor at z = 0; camera-to-world poses with an OpenCV camera
(x right, y down, z forward); boxes with rows as axes and full edge lengths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path
from shapely.geometry import Polygon, box as shapely_box
from shapely.ops import unary_union


@dataclass(frozen=True)
class SyntheticObject:
    instance_id: int           # unique in the scene, >= 0 (floor and walls are instances too)
    label: str                 # canonical category name, e.g. "chair", "table", "tv", "floor", "wall"
    centroid: np.ndarray       # [3] metres
    lengths: np.ndarray        # [3] full edge lengths along the axes
    axes: np.ndarray           # [3, 3] rows = box axes in world coordinates (third row = +z: furniture is upright)


@dataclass
class SyntheticScene:
    name: str                  # e.g. "synth0003"
    seed: int
    vertices: np.ndarray       # [V, 3] float64, z-up world, metres
    faces: np.ndarray          # [F, 3] int64
    colors: np.ndarray         # [V, 3] uint8
    vertex_instance: np.ndarray  # [V] int64, instance id per vertex (-1 = none)
    objects: list[SyntheticObject]
    camera_to_world: np.ndarray  # [T, 4, 4] float64, OpenCV camera
    timestamps: np.ndarray     # [T] float64 seconds
    intrinsics: np.ndarray     # [3, 3] float64 for width x height
    width: int
    height: int
    rgb: np.ndarray            # [T, H, W, 3] uint8
    depth: np.ndarray          # [T, H, W] float32 metres, 0 = no surface
    instance: np.ndarray       # [T, H, W] int32 instance id per pixel, -1 = background
    invalid_frames: tuple[int, ...] = field(default=())  # frames whose pose a writer stores as lost (-inf / missing)


# ---- the generator ----------------------------------------------------------------------------------------------
#
# A scene is built in four steps, each drawing from one numpy Generator so the whole scene is a function of the seed:
# the room (floor polygon, wall slabs), the furniture layout (compound boxes placed against walls or free-standing,
# no overlaps), the camera walk (shortest paths on a clearance grid through the free floor), and a numpy z-buffer
# rendering of the mesh from every pose. Mounted objects (opt-in) are hung last, from their own Generator, in the
# finished room and clear of the chosen walk, so the rest of the scene is the same with or without them.

FURNITURE_CATEGORIES = ("chair", "table", "sofa", "bed", "cabinet", "shelf", "refrigerator", "toilet", "sink",
                        "stool", "tv")

_FPS = 2.0
_FLOOR_CELL_M = 0.25          # floor grid spacing: dense enough for floor-area estimation from vertices
_WALL_CELL_M = 0.5            # wall faces are subdivided so near-plane clipping and texture behave
_WALL_THICKNESS_M = 0.1
# The walk's grid cells keep these clearances; smoothing the walk may cut corners down to the hard limits.
_CAMERA_WALL_CLEARANCE_M, _CAMERA_WALL_LIMIT_M = 0.4, 0.3
_CAMERA_FURNITURE_CLEARANCE_M, _CAMERA_FURNITURE_LIMIT_M = 0.3, 0.15
_PATH_GRID_M = 0.05
_NEAR_PLANE_M = 0.05
_LIGHT_DIRECTION = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])

# Base RGB per category; instances vary around it so repeated objects are not identical.
_CATEGORY_RGB = {
    "floor": (150, 118, 86), "wall": (214, 208, 196), "chair": (164, 84, 46), "table": (118, 82, 52),
    "sofa": (70, 96, 150), "bed": (200, 196, 226), "cabinet": (186, 150, 104), "shelf": (132, 106, 74),
    "refrigerator": (226, 228, 230), "toilet": (240, 240, 236), "sink": (196, 204, 210), "stool": (90, 130, 80),
    "tv": (28, 28, 32),
}

# Categories whose back goes against a wall (the rest stand free, at any yaw).
_WALL_CATEGORIES = ("bed", "sofa", "refrigerator", "shelf", "cabinet", "sink", "toilet", "tv")
# Rough footprints (m^2) used to keep the furniture from filling the room.
_APPROX_FOOTPRINT_M2 = {"chair": 0.6, "table": 1.0, "sofa": 1.7, "bed": 3.4, "cabinet": 0.5, "shelf": 0.4,
                        "refrigerator": 0.5, "toilet": 0.4, "sink": 0.3, "stool": 0.2, "tv": 0.3}
# Placement order: big wall pieces first, then the table group, small things last.
_PLACEMENT_ORDER = ("bed", "sofa", "refrigerator", "shelf", "cabinet", "sink", "toilet", "table", "chair", "stool",
                    "tv")

# Wall-mounted objects (generate_scene(..., mounted=True)): categories every raw writer can express (ARKitScenes
# "cabinet", "shelf", "tv_monitor"), hung with their back against an outer wall's inner face.
MOUNTED_CATEGORIES = ("cabinet", "tv", "shelf")
MOUNTED_BOTTOM_M = (1.4, 1.8)        # range of a mounted object's bottom height above the floor
_MOUNTED_STREAM = 0x6D6F756E         # second entropy word of the mounted objects' Generator: (seed, this)
_MOUNTED_WALL_GAP_M = 0.01           # back of a mounted object to the wall's inner face
_MOUNTED_CEILING_GAP_M = 0.1         # a mounted object's top stays this far below the top of the walls
_MOUNTED_SPACING_M = 0.05            # floor-plan gap between mounted objects, and to furniture they do not clear
_MOUNTED_OVER_FURNITURE_M = 0.3      # furniture under a mounted object ends at least this far below its bottom
_MOUNTED_CAMERA_CLEARANCE_M = 0.2    # the camera walk (centres and the straight path between) to a mounted box, 3D
_WALK_SAMPLE_M = 0.002               # the path between frames is checked at points this far apart
_MOUNTED_MIN_VIEWS = 3               # frames whose view reaches the middle of its front, unoccluded
_MOUNTED_TRIES = 30                  # random wall spots tried per object

_Part = tuple[np.ndarray, np.ndarray, float]   # local box (min [3], max [3]) and a colour factor


def generate_scene(seed: int, name: str | None = None, num_frames: int = 48, width: int = 96,
                   height: int = 72, mounted: bool = False) -> SyntheticScene:
    """Build a deterministic synthetic room for ``seed``: mesh, objects with exact boxes, a camera walk at 2 frames per second (the frames stand for a video's sampled frames,
    so a walk across the room takes tens of seconds, as in a real scan),
    and RGB / depth / instance renderings of every frame (OpenCV camera, z-up world, metres).

    ``mounted=True`` adds 1-3 wall-mounted objects (categories ``MOUNTED_CATEGORIES``, bottom within
    ``MOUNTED_BOTTOM_M``; one drawn object that finds no free, visible wall spot is left out, see
    :func:`_hang_mounted`) after the rest of the scene is built: their instances come after the floor furniture and
    they are in the renderings, while the room, the furniture, the walk and the lost frame stay those of
    ``mounted=False`` (they are drawn from a second Generator seeded with ``(seed, _MOUNTED_STREAM)``)."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
    rng = np.random.default_rng(seed)
    focal_px = 4.0 * width / 5.0     # 0.8 * width, written so that 96 px gives exactly 76.8
    intrinsics = np.array([[focal_px, 0.0, (width - 1) / 2.0],
                           [0.0, focal_px, (height - 1) / 2.0],
                           [0.0, 0.0, 1.0]])

    room = _make_room(rng)
    for _attempt in range(50):
        layout = _place_furniture(rng, room)
        walk_grid = _walk_grid(room, layout) if layout is not None else None
        if walk_grid is not None:
            break
    else:  # pragma: no cover - every tested seed lays out within a few attempts
        raise RuntimeError(f"seed {seed}: could not lay out furniture with a free camera walk")

    mesh = _MeshBuilder()
    objects: list[SyntheticObject] = []
    instance_id = 0
    # Floor: one plane grid over the room polygon, normal +z.
    _add_floor(mesh, rng, room, instance_id)
    objects.append(_floor_object(room, instance_id))
    instance_id += 1
    for slab in room.wall_slabs:
        objects.append(_add_rigid(mesh, rng, "wall", [(slab.lo, slab.hi, 1.0)], slab.yaw, slab.origin, instance_id,
                                  max_cell_m=_WALL_CELL_M))
        instance_id += 1
    for item in layout:
        objects.append(_add_rigid(mesh, rng, item.label, item.parts, item.yaw, item.origin, instance_id,
                                  max_cell_m=np.inf))
        instance_id += 1
    vertices, faces, colors, vertex_instance = mesh.arrays()

    furniture_ids = np.array([o.instance_id for o in objects if o.label in FURNITURE_CATEGORIES])
    camera_to_world = _choose_walk(rng, room, layout, walk_grid, num_frames, (vertices, faces, vertex_instance),
                                   furniture_ids, intrinsics, width, height)
    rgb, depth, instance = _render(vertices, faces, colors, vertex_instance, camera_to_world, intrinsics, width,
                                   height)
    # One pose in the middle half of the walk is stored as lost by the writers (never the first frame).
    first = min(max(1, num_frames // 4), num_frames - 1)
    lost_frame = int(rng.integers(first, max(first + 1, (3 * num_frames) // 4)))
    if mounted:
        mounted_rng = np.random.default_rng((seed, _MOUNTED_STREAM))
        wall_height = float(room.wall_slabs[0].hi[2])
        for item in _hang_mounted(mounted_rng, room, layout, wall_height, camera_to_world, depth, intrinsics):
            objects.append(_add_rigid(mesh, mounted_rng, item.label, item.parts, item.yaw, item.origin, instance_id,
                                      max_cell_m=np.inf))
            instance_id += 1
        vertices, faces, colors, vertex_instance = mesh.arrays()
        rgb, depth, instance = _render(vertices, faces, colors, vertex_instance, camera_to_world, intrinsics, width,
                                       height)
    return SyntheticScene(
        name=name if name is not None else f"synth{seed:04d}", seed=int(seed), vertices=vertices, faces=faces,
        colors=colors, vertex_instance=vertex_instance, objects=objects, camera_to_world=camera_to_world,
        timestamps=np.arange(num_frames, dtype=np.float64) / _FPS, intrinsics=intrinsics, width=int(width),
        height=int(height), rgb=rgb, depth=depth, instance=instance, invalid_frames=(lost_frame,))


def generate_scenes(n: int, seed: int, num_frames: int = 48, width: int = 96, height: int = 72,
                    mounted: bool = False) -> list[SyntheticScene]:
    """``n`` scenes with seeds ``seed, seed + 1, ...`` (so any one of them can be regenerated alone)."""
    return [generate_scene(seed + i, num_frames=num_frames, width=width, height=height, mounted=mounted)
            for i in range(n)]


# ---- room -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Slab:
    lo: np.ndarray      # local box min [3]
    hi: np.ndarray      # local box max [3]
    yaw: float          # radians, local x -> world (cos, sin)
    origin: np.ndarray  # world position of the local origin [3]


@dataclass(frozen=True)
class _Room:
    floor: Polygon            # floor outline (rectangle or L), z = 0
    free: Polygon             # floor minus interior walls: where furniture and the camera may be
    wall_slabs: tuple[_Slab, ...]
    # Inner faces of the outer walls, for placing furniture against them: (start [2], end [2], inward normal [2]).
    wall_edges: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]


def _q(value: float, step: float = 0.05) -> float:
    """Round to a ``step`` grid so room measures are tidy numbers."""
    return round(value / step) * step


def _make_room(rng: np.random.Generator) -> _Room:
    size_x = _q(rng.uniform(3.5, 7.0))
    size_y = _q(rng.uniform(3.0, 6.0))
    wall_height = _q(rng.uniform(2.5, 2.8), 0.01)
    kind = rng.choice(["rectangle", "l_shape", "partial_wall"], p=[0.5, 0.25, 0.25])
    floor = shapely_box(0.0, 0.0, size_x, size_y)
    interior: list[Polygon] = []
    slabs: list[_Slab] = []
    if kind == "l_shape":
        cut_x, cut_y = _q(rng.uniform(0.3, 0.45) * size_x), _q(rng.uniform(0.3, 0.45) * size_y)
        corner = int(rng.integers(4))
        x0 = 0.0 if corner in (0, 3) else size_x - cut_x
        y0 = 0.0 if corner in (0, 1) else size_y - cut_y
        floor = floor.difference(shapely_box(x0, y0, x0 + cut_x, y0 + cut_y))
    # Canonical vertex order (normalize), then counter-clockwise so the inward normal is left of each edge.
    floor = shapely.geometry.polygon.orient(shapely.normalize(floor), sign=1.0)

    ring = np.asarray(floor.exterior.coords)[:-1]
    edges = []
    for previous, start, end in zip(np.roll(ring, 1, axis=0), ring, np.roll(ring, -1, axis=0)):
        length = float(np.linalg.norm(end - start))
        direction = (end - start) / length
        inward = np.array([-direction[1], direction[0]])
        edges.append((start.copy(), end.copy(), inward))
        # At a reflex (inner) corner the previous slab's end already covers the first wall thickness of this edge:
        # starting this slab after it keeps the two walls from overlapping (and their faces from z-fighting).
        incoming = start - previous
        reflex = incoming[0] * direction[1] - incoming[1] * direction[0] < 0.0
        skip = _WALL_THICKNESS_M if reflex else 0.0
        # Local frame: x along the edge, y inward (so rows x, y, z are right-handed); slab lies outside the room.
        yaw = math.atan2(direction[1], direction[0])
        slabs.append(_Slab(lo=np.array([skip, -_WALL_THICKNESS_M, 0.0]), hi=np.array([length, 0.0, wall_height]),
                           yaw=yaw, origin=np.array([start[0], start[1], 0.0])))

    if kind == "partial_wall":
        # A wall stub from the middle part of one wall, reaching 35-50 % across the room.
        start, end, inward = edges[int(rng.integers(len(edges)))]
        wall_length = float(np.linalg.norm(end - start))
        direction = (end - start) / wall_length
        across = size_y if abs(inward[1]) > 0.5 else size_x
        stub_length = _q(rng.uniform(0.35, 0.5) * across)
        foot = start + direction * _q(rng.uniform(0.35, 0.65) * wall_length)
        yaw = math.atan2(inward[1], inward[0])
        slabs.append(_Slab(lo=np.array([0.0, -_WALL_THICKNESS_M / 2, 0.0]),
                           hi=np.array([stub_length, _WALL_THICKNESS_M / 2, wall_height]), yaw=yaw,
                           origin=np.array([foot[0], foot[1], 0.0])))
        interior.append(_footprint(slabs[-1].lo, slabs[-1].hi, yaw, slabs[-1].origin))
    free = floor.difference(unary_union(interior)) if interior else floor
    return _Room(floor=floor, free=free, wall_slabs=tuple(slabs), wall_edges=tuple(edges))


def _rotation_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _footprint(lo: np.ndarray, hi: np.ndarray, yaw: float, origin: np.ndarray) -> Polygon:
    """World floor polygon of the local box [lo, hi] placed with ``yaw`` at ``origin``."""
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    c, s = math.cos(yaw), math.sin(yaw)
    world = corners @ np.array([[c, s], [-s, c]]) + origin[:2]
    return Polygon(world)


# ---- furniture shapes (local frame: footprint centred on the origin, standing on z = 0, front = +y) ---------

def _slab(x0, y0, z0, x1, y1, z1, shade: float = 1.0) -> _Part:
    return np.array([x0, y0, z0], float), np.array([x1, y1, z1], float), shade


def _legs(half_w: float, half_d: float, top_z: float, leg_m: float) -> list[_Part]:
    parts = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = sx * (half_w - leg_m / 2)
            y = sy * (half_d - leg_m / 2)
            parts.append(_slab(x - leg_m / 2, y - leg_m / 2, 0.0, x + leg_m / 2, y + leg_m / 2, top_z, 0.7))
    return parts


def _shape(label: str, rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    if label == "chair":
        hw, hd, seat, back = _q(u(0.42, 0.5), 0.01) / 2, _q(u(0.42, 0.5), 0.01) / 2, _q(u(0.43, 0.48), 0.01), \
            _q(u(0.8, 0.95), 0.01)
        return _legs(hw, hd, seat - 0.04, 0.04) + [_slab(-hw, -hd, seat - 0.04, hw, hd, seat),
                                                   _slab(-hw, -hd, seat, hw, -hd + 0.05, back, 0.85)]
    if label == "stool":
        hw, top = _q(u(0.3, 0.4), 0.01) / 2, _q(u(0.45, 0.7), 0.01)
        return _legs(hw, hw, top - 0.04, 0.035) + [_slab(-hw, -hw, top - 0.04, hw, hw, top)]
    if label == "table":
        hw, hd, top = _q(u(0.8, 1.5), 0.05) / 2, _q(u(0.6, 0.9), 0.05) / 2, _q(u(0.72, 0.76), 0.01)
        return _legs(hw - 0.04, hd - 0.04, top - 0.04, 0.05) + [_slab(-hw, -hd, top - 0.04, hw, hd, top)]
    if label == "sofa":
        hw, hd, height = _q(u(1.6, 2.2), 0.05) / 2, _q(u(0.8, 0.95), 0.05) / 2, _q(u(0.75, 0.9), 0.01)
        return [_slab(-hw, -hd, 0.0, hw, hd, 0.42),
                _slab(-hw, -hd, 0.42, hw, -hd + 0.2, height, 0.85),
                _slab(-hw, -hd + 0.2, 0.42, -hw + 0.18, hd, 0.62, 0.9),
                _slab(hw - 0.18, -hd + 0.2, 0.42, hw, hd, 0.62, 0.9)]
    if label == "bed":
        hw, hd = _q(u(1.4, 1.8), 0.05) / 2, _q(u(1.95, 2.1), 0.05) / 2
        return [_slab(-hw, -hd, 0.0, hw, hd, 0.3, 0.7),
                _slab(-hw + 0.02, -hd + 0.06, 0.3, hw - 0.02, hd - 0.02, 0.52),
                _slab(-hw, -hd, 0.0, hw, -hd + 0.06, _q(u(0.9, 1.1), 0.01), 0.6)]
    if label == "cabinet":
        hw, hd, height = _q(u(0.6, 1.2), 0.05) / 2, _q(u(0.4, 0.55), 0.05) / 2, _q(u(0.6, 0.9), 0.01)
        # Body and two door panels standing 1 cm proud of the front.
        return [_slab(-hw, -hd, 0.0, hw, hd - 0.01, height),
                _slab(-hw + 0.02, hd - 0.01, 0.05, -0.01, hd, height - 0.03, 0.85),
                _slab(0.01, hd - 0.01, 0.05, hw - 0.02, hd, height - 0.03, 0.85)]
    if label == "shelf":
        hw, hd, height = _q(u(0.8, 1.2), 0.05) / 2, _q(u(0.3, 0.4), 0.05) / 2, _q(u(1.5, 2.0), 0.05)
        levels = int(rng.integers(3, 6))
        parts = [_slab(-hw, -hd, 0.0, -hw + 0.03, hd, height, 0.8), _slab(hw - 0.03, -hd, 0.0, hw, hd, height, 0.8),
                 _slab(-hw + 0.03, -hd, 0.0, hw - 0.03, -hd + 0.01, height, 0.6)]
        for z in np.linspace(0.0, height - 0.03, levels + 1):
            parts.append(_slab(-hw + 0.03, -hd + 0.01, z, hw - 0.03, hd, z + 0.03))
        return parts
    if label == "refrigerator":
        hw, hd, height = _q(u(0.6, 0.8), 0.05) / 2, _q(u(0.65, 0.75), 0.05) / 2, _q(u(1.7, 1.9), 0.01)
        return [_slab(-hw, -hd, 0.0, hw, hd - 0.03, height),
                _slab(-hw + 0.06, hd - 0.03, height * 0.45, -hw + 0.09, hd, height * 0.85, 0.5)]
    if label == "toilet":
        hw, height = _q(u(0.36, 0.42), 0.01) / 2, _q(u(0.75, 0.82), 0.01)
        return [_slab(-hw, -0.35, 0.0, hw, -0.17, height, 0.95),
                _slab(-hw + 0.02, -0.17, 0.0, hw - 0.02, 0.35, 0.4)]
    if label == "sink":
        hw, hd, height = _q(u(0.5, 0.8), 0.05) / 2, _q(u(0.4, 0.5), 0.05) / 2, _q(u(0.8, 0.88), 0.01)
        return [_slab(-hw + 0.02, -hd, 0.0, hw - 0.02, hd - 0.02, height - 0.04, 0.8),
                _slab(-hw, -hd, height - 0.04, hw, hd, height),
                _slab(-0.02, -hd + 0.02, height, 0.02, -hd + 0.1, height + 0.2, 0.5)]
    raise ValueError(f"no shape for category {label!r}")


def _tv_shape(rng: np.random.Generator, screen_width_m: float, stand_height_m: float) -> list[_Part]:
    hw = screen_width_m / 2
    screen_h = _q(screen_width_m * rng.uniform(0.55, 0.6), 0.01)
    base_hw = max(0.12, 0.3 * hw)
    return [_slab(-base_hw, -0.1, 0.0, base_hw, 0.1, 0.02, 0.6),
            _slab(-0.025, -0.02, 0.02, 0.025, 0.01, stand_height_m, 0.6),
            _slab(-hw, 0.01, stand_height_m - 0.05, hw, 0.06, stand_height_m - 0.05 + screen_h)]


def _parts_bounds(parts: list[_Part]) -> tuple[np.ndarray, np.ndarray]:
    return np.min([p[0] for p in parts], axis=0), np.max([p[1] for p in parts], axis=0)


# ---- layout -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Placed:
    label: str
    parts: list[_Part]
    yaw: float
    origin: np.ndarray      # world position of the local origin [3]
    footprint: Polygon


def _choose_categories(rng: np.random.Generator, floor_area_m2: float) -> list[str]:
    """Categories to place, in placement order: a table with 2-4 chairs (sometimes stools too), then distinct
    extras up to a seeded count of 5-15, within a furniture-area budget of 30 % of the floor."""
    labels = ["table"] + ["chair"] * int(rng.integers(2, 5))
    if rng.random() < 0.35:
        labels += ["stool"] * int(rng.integers(2, 4))
    target = int(rng.integers(5, 16))
    budget = 0.3 * floor_area_m2 - sum(_APPROX_FOOTPRINT_M2[c] for c in labels)
    # Unique extras; "cabinet" is listed twice so a room sometimes has a pair of them.
    for label in rng.permutation(["sofa", "bed", "cabinet", "shelf", "refrigerator", "toilet", "sink", "tv",
                                  "stool", "cabinet"]):
        if len(labels) >= target:
            break
        if label in labels and label != "cabinet":
            continue
        if _APPROX_FOOTPRINT_M2[label] > budget:
            continue
        labels.append(str(label))
        budget -= _APPROX_FOOTPRINT_M2[label]
    return sorted(labels[:15], key=_PLACEMENT_ORDER.index)


def _fits(footprint: Polygon, room: _Room, placed: list[_Placed], gap_m: float = 0.05) -> bool:
    if not room.free.contains(footprint):
        return False
    grown = footprint.buffer(gap_m, join_style="mitre")
    return not any(grown.intersects(p.footprint) for p in placed)


def _place_against_wall(rng, room: _Room, parts: list[_Part], placed: list[_Placed]):
    lo, hi = _parts_bounds(parts)
    width = hi[0] - lo[0]
    for _ in range(40):
        start, end, inward = room.wall_edges[int(rng.integers(len(room.wall_edges)))]
        length = float(np.linalg.norm(end - start))
        if length < width + 0.1:
            continue
        direction = (end - start) / length
        along = rng.uniform(0.05 + width / 2, length - 0.05 - width / 2)
        gap = rng.uniform(0.02, 0.08)
        # Local x runs along the wall and local +y (the front) points into the room.
        yaw = math.atan2(inward[1], inward[0]) - math.pi / 2
        anchor = start + direction * along + inward * gap       # where the back-centre of the object goes
        origin_xy = anchor - direction * (lo[0] + hi[0]) / 2 - inward * lo[1]
        origin = np.array([origin_xy[0], origin_xy[1], 0.0])
        footprint = _footprint(lo, hi, yaw, origin)
        if _fits(footprint, room, placed):
            return yaw, origin, footprint
    return None


def _place_free(rng, room: _Room, parts: list[_Part], placed: list[_Placed]):
    lo, hi = _parts_bounds(parts)
    min_x, min_y, max_x, max_y = room.free.bounds
    for _ in range(60):
        yaw = rng.uniform(-math.pi, math.pi)
        origin = np.array([rng.uniform(min_x, max_x), rng.uniform(min_y, max_y), 0.0])
        footprint = _footprint(lo, hi, yaw, origin)
        if _fits(footprint, room, placed):
            return yaw, origin, footprint
    return None


def _place_at_table(rng, room: _Room, parts: list[_Part], placed: list[_Placed], table: _Placed):
    """Chairs go round the table, facing it: long sides first, then the ends, in a seeded order."""
    lo, hi = _parts_bounds(parts)
    t_lo, t_hi = _parts_bounds(table.parts)
    half_w, half_d = (t_hi[0] - t_lo[0]) / 2, (t_hi[1] - t_lo[1]) / 2
    chair_depth = hi[1] - lo[1]
    offset_y = half_d + chair_depth / 2 + 0.08
    offset_x = half_w + chair_depth / 2 + 0.08
    side_xs = [-half_w / 2, half_w / 2] if half_w >= 0.55 else [0.0]
    # (table-local x, y, chair yaw relative to the table): chair +y faces the table centre.
    slots = [(x, offset_y, math.pi) for x in side_xs] + [(x, -offset_y, 0.0) for x in side_xs]
    slots = [slots[i] for i in rng.permutation(len(slots))]
    ends = [(offset_x, 0.0, math.pi / 2), (-offset_x, 0.0, -math.pi / 2)]
    rot = _rotation_z(table.yaw)
    for x, y, rel_yaw in slots + [ends[i] for i in rng.permutation(2)]:
        yaw = table.yaw + rel_yaw + rng.uniform(-0.15, 0.15)
        centre_xy = table.origin[:2] + (rot[:2, :2] @ np.array([x, y]))
        origin = np.array([centre_xy[0], centre_xy[1], 0.0])
        footprint = _footprint(lo, hi, yaw, origin)
        if _fits(footprint, room, placed):
            return yaw, origin, footprint
    return _place_free(rng, room, parts, placed)


def _place_furniture(rng: np.random.Generator, room: _Room) -> list[_Placed] | None:
    """One layout attempt; ``None`` if it misses the category mix (>= 5 objects, a repeat, two singletons)."""
    labels = _choose_categories(rng, room.floor.area)
    placed: list[_Placed] = []
    for label in labels:
        if label == "tv":
            cabinets = [p for p in placed if p.label == "cabinet"]
            if cabinets:
                # The tv stands on the first cabinet's top, facing the same way, fully inside its footprint.
                cabinet = cabinets[0]
                c_lo, c_hi = _parts_bounds(cabinet.parts)
                screen = _q(min(c_hi[0] - c_lo[0] - 0.04, rng.uniform(0.7, 1.2)), 0.01)
                parts = _tv_shape(rng, screen, 0.1)
                centre = np.array([(c_lo[0] + c_hi[0]) / 2, (c_lo[1] + c_hi[1]) / 2 - 0.05, c_hi[2]])
                origin = cabinet.origin + _rotation_z(cabinet.yaw) @ centre
                lo, hi = _parts_bounds(parts)
                placed.append(_Placed(label, parts, cabinet.yaw, origin, _footprint(lo, hi, cabinet.yaw, origin)))
                continue
            parts = _tv_shape(rng, _q(rng.uniform(0.8, 1.2), 0.01), _q(rng.uniform(0.75, 0.9), 0.01))
        else:
            parts = _shape(label, rng)
        tables = [p for p in placed if p.label == "table"]
        if label in _WALL_CATEGORIES:
            spot = _place_against_wall(rng, room, parts, placed)
        elif label == "chair" and tables:
            spot = _place_at_table(rng, room, parts, placed, tables[0])
        else:
            spot = _place_free(rng, room, parts, placed)
        if spot is not None:
            placed.append(_Placed(label, parts, spot[0], spot[1], spot[2]))
    counts: dict[str, int] = {}
    for p in placed:
        counts[p.label] = counts.get(p.label, 0) + 1
    if not (5 <= len(placed) <= 15 and max(counts.values()) >= 2 and sum(c == 1 for c in counts.values()) >= 2):
        return None
    return placed


# ---- wall-mounted objects (opt-in) ------------------------------------------------------------------------------

def _mounted_shape(label: str, rng: np.random.Generator) -> list[_Part]:
    """Local frame as for furniture (x along the wall, front = +y), with z = 0 at the object's bottom."""
    u = rng.uniform
    if label == "cabinet":
        # An upper kitchen cabinet: shallower than a floor one, body and two door panels 1 cm proud of the front.
        hw, hd, height = _q(u(0.6, 1.2), 0.05) / 2, _q(u(0.3, 0.35), 0.05) / 2, _q(u(0.6, 0.8), 0.01)
        return [_slab(-hw, -hd, 0.0, hw, hd - 0.01, height),
                _slab(-hw + 0.02, hd - 0.01, 0.03, -0.01, hd, height - 0.03, 0.85),
                _slab(0.01, hd - 0.01, 0.03, hw - 0.02, hd, height - 0.03, 0.85)]
    if label == "tv":
        # A flat screen on a wall bracket.
        hw = _q(u(0.8, 1.3), 0.01) / 2
        screen_h, thickness = _q(2 * hw * u(0.55, 0.6), 0.01), _q(u(0.04, 0.07), 0.01)
        return [_slab(-0.15, -0.03, 0.3 * screen_h, 0.15, 0.0, 0.7 * screen_h, 0.6),
                _slab(-hw, 0.0, 0.0, hw, thickness, screen_h)]
    if label == "shelf":
        # An open wall shelf: two side boards and 2-3 boards between them.
        hw, hd = _q(u(0.6, 1.2), 0.05) / 2, _q(u(0.2, 0.3), 0.05) / 2
        levels, spacing = int(rng.integers(2, 4)), _q(u(0.25, 0.35), 0.01)
        height = spacing * (levels - 1) + 0.03
        parts = [_slab(-hw, -hd, 0.0, -hw + 0.02, hd, height, 0.8), _slab(hw - 0.02, -hd, 0.0, hw, hd, height, 0.8)]
        for z in spacing * np.arange(levels):
            parts.append(_slab(-hw + 0.02, -hd, z, hw - 0.02, hd, z + 0.03))
        return parts
    raise ValueError(f"no mounted shape for category {label!r}")


def _wall_spot(room: _Room, item: _Placed) -> tuple[int, float] | None:
    """(wall edge index, distance along it) of the back centre of a piece of furniture placed against that wall."""
    lo, hi = _parts_bounds(item.parts)
    back = item.origin[:2] + _rotation_z(item.yaw)[:2, :2] @ np.array([(lo[0] + hi[0]) / 2, lo[1]])
    for index, (start, end, inward) in enumerate(room.wall_edges):
        facing = math.atan2(inward[1], inward[0]) - math.pi / 2
        if abs(math.remainder(item.yaw - facing, 2 * math.pi)) > 1e-6:
            continue
        if 0.0 <= float(np.dot(back - start, inward)) <= 0.1:
            direction = (end - start) / np.linalg.norm(end - start)
            return index, float(np.dot(back - start, direction))
    return None


def _views_of(point: np.ndarray, camera_to_world: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray) -> int:
    """Frames whose image shows the world ``point`` unoccluded by the rendered scene (``depth`` [T, H, W])."""
    camera = np.einsum("tji,tj->ti", camera_to_world[:, :3, :3], point - camera_to_world[:, :3, 3])  # R^T (p - t)
    z = camera[:, 2]
    ahead = z > _NEAR_PLANE_M
    safe_z = np.where(ahead, z, 1.0)
    u = np.rint(intrinsics[0, 0] * camera[:, 0] / safe_z + intrinsics[0, 2]).astype(np.int64)
    v = np.rint(intrinsics[1, 1] * camera[:, 1] / safe_z + intrinsics[1, 2]).astype(np.int64)
    height, width = depth.shape[1:]
    inside = ahead & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    frames = np.flatnonzero(inside)
    surface = depth[frames, v[frames], u[frames]]
    return int(((surface == 0.0) | (surface >= z[frames] - 0.02)).sum())


def _polyline_points(points: np.ndarray, spacing_m: float) -> np.ndarray:
    """The polyline through ``points`` [N, 3] as points at most ``spacing_m`` apart, its vertices included."""
    pieces = []
    for a, b in zip(points[:-1], points[1:]):
        count = max(1, int(math.ceil(np.linalg.norm(b - a) / spacing_m)))
        pieces.append(a + np.arange(count)[:, None] / count * (b - a))
    return np.concatenate(pieces + [points[-1:]])


def _hang_mounted(rng: np.random.Generator, room: _Room, layout: list[_Placed], wall_height: float,
                  camera_to_world: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray) -> list[_Placed]:
    """1-3 wall-mounted objects, each at the first spot that works: above a wall cabinet or sink (upper cabinets
    only), then random spots on the outer walls. A spot works when the object's back is on the wall's inner face,
    its bottom within MOUNTED_BOTTOM_M and its top below the walls' top, it keeps clear of the other mounted objects,
    any furniture under it ends _MOUNTED_OVER_FURNITURE_M below it, the camera walk (between frames too)
    keeps _MOUNTED_CAMERA_CLEARANCE_M from its box, and at least _MOUNTED_MIN_VIEWS frames see the middle of its
    front past the rest of the scene (``depth``). An object with no such spot is left out."""
    count = int(rng.integers(1, 4))
    labels = [str(x) for x in rng.permutation(["cabinet", "tv", "shelf", "cabinet"])[:count]]
    walk = _polyline_points(camera_to_world[:, :3, 3], _WALK_SAMPLE_M)
    tops = [p.origin[2] + _parts_bounds(p.parts)[1][2] for p in layout]
    hung: list[_Placed] = []
    for label in labels:
        parts = _mounted_shape(label, rng)
        lo, hi = _parts_bounds(parts)
        width = hi[0] - lo[0]
        highest = math.floor((wall_height - _MOUNTED_CEILING_GAP_M - hi[2]) * 100.0) / 100.0
        bottom = min(_q(rng.uniform(*MOUNTED_BOTTOM_M), 0.01), highest)
        if bottom < MOUNTED_BOTTOM_M[0]:
            continue
        margin = 0.05 + width / 2           # from the object's centre to the ends of its wall
        spots = [_wall_spot(room, p) for p in layout if p.label in ("cabinet", "sink")] if label == "cabinet" else []
        for _ in range(_MOUNTED_TRIES):
            edge = int(rng.integers(len(room.wall_edges)))
            edge_length = float(np.linalg.norm(room.wall_edges[edge][1] - room.wall_edges[edge][0]))
            spots.append((edge, margin + rng.uniform() * (edge_length - 2 * margin)))
        for spot in spots:
            if spot is None:
                continue
            edge, along = spot
            start, end, inward = room.wall_edges[edge]
            length = float(np.linalg.norm(end - start))
            if length < 2 * margin:
                continue
            along = min(max(along, margin), length - margin)
            direction = (end - start) / length
            yaw = math.atan2(inward[1], inward[0]) - math.pi / 2     # local x along the wall, +y into the room
            anchor = start + direction * along + inward * _MOUNTED_WALL_GAP_M
            origin_xy = anchor - direction * (lo[0] + hi[0]) / 2 - inward * lo[1]
            origin = np.array([origin_xy[0], origin_xy[1], bottom - lo[2]])
            footprint = _footprint(lo, hi, yaw, origin)
            if not room.free.contains(footprint):
                continue
            grown = footprint.buffer(_MOUNTED_SPACING_M, join_style="mitre")
            if any(grown.intersects(p.footprint) for p in hung):
                continue
            if any(grown.intersects(p.footprint) and top > bottom - _MOUNTED_OVER_FURNITURE_M
                   for p, top in zip(layout, tops)):
                continue
            local = (walk - origin) @ _rotation_z(yaw)                # world -> local: R^T (p - origin)
            outside = np.maximum(np.maximum(lo - local, local - hi), 0.0)
            if np.linalg.norm(outside, axis=1).min() < _MOUNTED_CAMERA_CLEARANCE_M:
                continue
            front = origin + _rotation_z(yaw) @ np.array([(lo[0] + hi[0]) / 2, hi[1], (lo[2] + hi[2]) / 2])
            if _views_of(front, camera_to_world, depth, intrinsics) < _MOUNTED_MIN_VIEWS:
                continue
            hung.append(_Placed(label, parts, yaw, origin, footprint))
            break
    return hung


# ---- camera walk ------------------------------------------------------------------------------------------------

def _camera_regions(room: _Room, layout: list[_Placed]) -> tuple[Polygon, Polygon]:
    """(where path cells may lie, the hard limit every camera position must respect)."""
    obstacles = [p.footprint for p in layout]
    soft = room.free.buffer(-_CAMERA_WALL_CLEARANCE_M, join_style="mitre")
    soft = soft.difference(unary_union([o.buffer(_CAMERA_FURNITURE_CLEARANCE_M) for o in obstacles]))
    hard = room.free.buffer(-_CAMERA_WALL_LIMIT_M, join_style="mitre")
    hard = hard.difference(unary_union([o.buffer(_CAMERA_FURNITURE_LIMIT_M) for o in obstacles]))
    return soft, hard


@dataclass(frozen=True)
class _WalkGrid:
    points: np.ndarray      # [N, 2] metres: centres of the free cells the camera may walk through
    graph: csr_matrix       # 8-connected cell graph, edge weights in metres
    hard: Polygon           # every camera position lies in here (clearance limits from walls and furniture)


def _walk_grid(room: _Room, layout: list[_Placed]) -> _WalkGrid | None:
    """The largest connected free area for the camera, or ``None`` if the layout leaves too little floor."""
    soft, hard = _camera_regions(room, layout)
    min_x, min_y, max_x, max_y = room.floor.bounds
    xs = np.arange(min_x + _PATH_GRID_M / 2, max_x, _PATH_GRID_M)
    ys = np.arange(min_y + _PATH_GRID_M / 2, max_y, _PATH_GRID_M)
    grid_x, grid_y = np.meshgrid(xs, ys, indexing="ij")
    free = shapely.contains_xy(soft, grid_x, grid_y)
    labels, count = ndimage.label(free, structure=np.ones((3, 3)))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == (1 + int(np.argmax(sizes)))
    if component.sum() * _PATH_GRID_M ** 2 < 1.5:
        return None
    cells = np.argwhere(component)
    return _WalkGrid(points=np.stack([xs[cells[:, 0]], ys[cells[:, 1]]], axis=1), graph=_grid_graph(component),
                     hard=hard)


def _choose_walk(rng: np.random.Generator, room: _Room, layout: list[_Placed], grid: _WalkGrid, num_frames: int,
                 mesh: tuple[np.ndarray, np.ndarray, np.ndarray], furniture_ids: np.ndarray, intrinsics: np.ndarray,
                 width: int, height: int) -> np.ndarray:
    """Camera-to-world poses [T, 4, 4] (OpenCV): of a few candidate walks, the one that sees the most furniture
    (rendered instance masks at half resolution, so occlusion by walls counts)."""
    vertices, faces, vertex_instance = mesh
    centre = np.asarray(room.free.centroid.coords[0])
    small_k = intrinsics.copy()
    small_w, small_h = max(8, width // 2), max(8, height // 2)
    small_k[0] *= small_w / width
    small_k[1] *= small_h / height
    small_k[0, 2], small_k[1, 2] = (small_w - 1) / 2, (small_h - 1) / 2
    best_seen, best_poses = -1, None
    for _candidate in range(4):
        waypoints = _spread_waypoints(rng, grid.points, count=5)
        raw = _resample(_route(grid.graph, grid.points, waypoints), num_frames)
        smoothed = ndimage.gaussian_filter1d(raw, sigma=1.5, axis=0, mode="nearest")
        # Smoothing cuts corners: keep it only where the position still respects the clearances.
        positions = np.where(shapely.contains_xy(grid.hard, smoothed[:, 0], smoothed[:, 1])[:, None], smoothed, raw)
        poses = _look_around(rng, positions, centre, num_frames)
        instance = _render(vertices, faces, np.zeros((len(vertices), 3), np.uint8), vertex_instance, poses,
                           small_k, small_w, small_h)[2]
        ids, pixels = np.unique(instance, return_counts=True)
        seen = int(np.isin(furniture_ids, ids[pixels >= 4]).sum())
        if seen > best_seen:
            best_seen, best_poses = seen, poses
        if best_seen == len(furniture_ids):
            break
    return best_poses


def _grid_graph(component: np.ndarray) -> csr_matrix:
    """8-connected graph over the component's cells (weights in metres), indexed like ``np.argwhere``."""
    index = np.full(component.shape, -1, np.int64)
    cells = np.argwhere(component)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    rows, cols, weights = [], [], []
    for di, dj in ((1, 0), (0, 1), (1, 1), (1, -1)):
        ni, nj = cells[:, 0] + di, cells[:, 1] + dj
        inside = (ni >= 0) & (ni < component.shape[0]) & (nj >= 0) & (nj < component.shape[1])
        neighbour = np.full(len(cells), -1, np.int64)
        neighbour[inside] = index[ni[inside], nj[inside]]
        keep = neighbour >= 0
        rows.append(np.arange(len(cells))[keep])
        cols.append(neighbour[keep])
        weights.append(np.full(keep.sum(), _PATH_GRID_M * math.hypot(di, dj)))
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    return csr_matrix((np.concatenate([weights, weights]), (np.concatenate([rows, cols]),
                                                           np.concatenate([cols, rows]))),
                      shape=(len(cells), len(cells)))


def _spread_waypoints(rng: np.random.Generator, points: np.ndarray, count: int) -> list[int]:
    """Farthest-point sampling from a random start, visited in angular order around the free area's centre."""
    chosen = [int(rng.integers(len(points)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    centre = points.mean(axis=0)
    angles = np.arctan2(points[chosen, 1] - centre[1], points[chosen, 0] - centre[0])
    order = list(np.argsort(angles, kind="stable"))
    if rng.random() < 0.5:
        order.reverse()
    shift = int(rng.integers(count))
    return [chosen[i] for i in order[shift:] + order[:shift]]


def _route(graph: csr_matrix, points: np.ndarray, waypoints: list[int]) -> np.ndarray:
    """Polyline [M, 2] of shortest grid paths between consecutive waypoints."""
    _, predecessors = shortest_path(graph, directed=False, indices=waypoints[:-1], return_predecessors=True)
    route = [waypoints[0]]
    for leg, target in enumerate(waypoints[1:]):
        nodes = []
        node = target
        while node != waypoints[leg] and node >= 0:
            nodes.append(node)
            node = predecessors[leg, node]
        route.extend(reversed(nodes))
    return points[route]


def _resample(polyline: np.ndarray, count: int) -> np.ndarray:
    """``count`` points evenly spaced by arc length along ``polyline``."""
    step = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    if arc[-1] <= 0.0:
        return np.repeat(polyline[:1], count, axis=0)
    targets = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(targets, arc, polyline[:, 0]), np.interp(targets, arc, polyline[:, 1])], axis=1)


def _look_around(rng: np.random.Generator, positions_xy: np.ndarray, room_centre_xy: np.ndarray,
                 num_frames: int) -> np.ndarray:
    """Poses looking into the room (towards its centre, or along the walk near the centre) with a yaw sweep and a
    gentle pitch nod, like someone filming the room while walking through it."""
    velocity = np.gradient(positions_xy, axis=0)
    speed = np.linalg.norm(velocity, axis=1, keepdims=True)
    heading = np.where(speed > 1e-9, velocity / np.maximum(speed, 1e-9), 0.0)
    to_centre = room_centre_xy - positions_xy
    distance = np.linalg.norm(to_centre, axis=1, keepdims=True)
    inward = to_centre / np.maximum(distance, 1e-9)
    weight = np.clip(distance / 1.5, 0.0, 1.0)          # far from the centre: look at it; near it: look ahead
    view = weight * inward + (1.0 - weight) * heading
    base_yaw = np.unwrap(np.arctan2(view[:, 1], view[:, 0]))
    base_yaw = ndimage.gaussian_filter1d(base_yaw, sigma=1.5, mode="nearest")
    frames = np.arange(num_frames)
    sweeps = rng.uniform(1.0, 2.5)
    yaw = base_yaw + math.radians(rng.uniform(30.0, 50.0)) * np.sin(
        2 * math.pi * sweeps * frames / num_frames + rng.uniform(0, 2 * math.pi))
    pitch = math.radians(-rng.uniform(12.0, 22.0)) + math.radians(5.0) * np.sin(
        2 * math.pi * rng.uniform(0.5, 1.5) * frames / num_frames + rng.uniform(0, 2 * math.pi))
    eye_height = rng.uniform(1.45, 1.55) + 0.04 * np.sin(2 * math.pi * 3 * frames / num_frames)
    forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros(num_frames)], axis=1)   # forward x up, normalised
    down = np.cross(forward, right)
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    # OpenCV camera: columns are the world directions of camera x (right), y (down), z (forward).
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2] = right, down, forward
    poses[:, :2, 3], poses[:, 2, 3] = positions_xy, eye_height
    return poses


# ---- mesh -------------------------------------------------------------------------------------------------------

class _MeshBuilder:
    def __init__(self) -> None:
        self._vertices: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self._instances: list[np.ndarray] = []
        self._count = 0

    def add(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, instance_id: int) -> None:
        self._vertices.append(vertices)
        self._faces.append(faces + self._count)
        self._colors.append(colors)
        self._instances.append(np.full(len(vertices), instance_id, np.int64))
        self._count += len(vertices)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self._vertices).astype(np.float64), np.concatenate(self._faces).astype(np.int64),
                np.concatenate(self._colors).astype(np.uint8), np.concatenate(self._instances))


def _grid_face(origin: np.ndarray, u_vec: np.ndarray, v_vec: np.ndarray, n_u: int, n_v: int):
    """Planar grid of (n_u+1)(n_v+1) vertices; triangles wound so their normal is u x v."""
    a = np.linspace(0.0, 1.0, n_u + 1)
    b = np.linspace(0.0, 1.0, n_v + 1)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    vertices = origin + aa.reshape(-1, 1) * u_vec + bb.reshape(-1, 1) * v_vec
    i, j = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="ij")
    v00 = (i * (n_v + 1) + j).ravel()
    v10, v01, v11 = v00 + (n_v + 1), v00 + 1, v00 + n_v + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return vertices, faces


def _box_mesh(lo: np.ndarray, hi: np.ndarray, max_cell_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed axis-aligned box [lo, hi] with outward-facing triangles; faces subdivided to ``max_cell_m``."""
    size = hi - lo
    basis = np.eye(3)
    vertices, faces, count = [], [], 0
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        n_b = max(1, int(math.ceil(size[b] / max_cell_m - 1e-9))) if np.isfinite(max_cell_m) else 1
        n_c = max(1, int(math.ceil(size[c] / max_cell_m - 1e-9))) if np.isfinite(max_cell_m) else 1
        u, v = size[b] * basis[b], size[c] * basis[c]
        for origin, u_vec, v_vec, n_u, n_v in ((lo + size[a] * basis[a], u, v, n_b, n_c),   # +a face: b x c = a
                                               (lo, v, u, n_c, n_b)):                        # -a face: c x b = -a
            face_vertices, face_faces = _grid_face(origin, u_vec, v_vec, n_u, n_v)
            vertices.append(face_vertices)
            faces.append(face_faces + count)
            count += len(face_vertices)
    return np.concatenate(vertices), np.concatenate(faces)


def _instance_color(rng: np.random.Generator, label: str) -> np.ndarray:
    base = np.asarray(_CATEGORY_RGB[label], np.float64)
    return np.clip(base * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10, size=3), 0, 255)


def _vertex_colors(rng: np.random.Generator, color: np.ndarray, count: int, shade: float) -> np.ndarray:
    # Slight per-vertex grain gives the renderings texture without changing the object's colour.
    return np.clip(np.rint(color * shade + rng.uniform(-6, 6, size=(count, 1))), 0, 255).astype(np.uint8)


def _add_rigid(mesh: _MeshBuilder, rng: np.random.Generator, label: str, parts: list[_Part], yaw: float,
               origin: np.ndarray, instance_id: int, max_cell_m: float) -> SyntheticObject:
    """Add an object made of local boxes, placed by ``yaw`` about +z at ``origin``; return its exact box."""
    rotation = _rotation_z(yaw)
    color = _instance_color(rng, label)
    for lo, hi, shade in parts:
        local_vertices, faces = _box_mesh(lo, hi, max_cell_m)
        mesh.add(local_vertices @ rotation.T + origin, faces,
                 _vertex_colors(rng, color, len(local_vertices), shade), instance_id)
    lo, hi = _parts_bounds(parts)
    return SyntheticObject(instance_id=instance_id, label=label, centroid=rotation @ ((lo + hi) / 2) + origin,
                           lengths=hi - lo, axes=rotation.T.copy())


def _floor_breaks(start: float, stop: float, corners: np.ndarray) -> np.ndarray:
    """Grid coordinates from start to stop, through every outline corner, at most _FLOOR_CELL_M apart."""
    stops = np.unique(np.concatenate([[start, stop], corners[(corners > start) & (corners < stop)]]))
    pieces = [np.linspace(a, b, max(1, int(math.ceil((b - a) / _FLOOR_CELL_M - 1e-9))) + 1)[:-1]
              for a, b in zip(stops[:-1], stops[1:])]
    return np.concatenate(pieces + [[stop]])


def _add_floor(mesh: _MeshBuilder, rng: np.random.Generator, room: _Room, instance_id: int) -> None:
    ring = np.asarray(room.floor.exterior.coords)
    min_x, min_y, max_x, max_y = room.floor.bounds
    xs = _floor_breaks(min_x, max_x, ring[:, 0])
    ys = _floor_breaks(min_y, max_y, ring[:, 1])
    grid_x, grid_y = np.meshgrid(xs, ys, indexing="ij")
    vertices = np.stack([grid_x.ravel(), grid_y.ravel(), np.zeros(grid_x.size)], axis=1)
    # Keep the cells of the outline (the breaks pass through its corners, so a cell is wholly in or out).
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = shapely.contains_xy(room.floor, *np.meshgrid(cx, cy, indexing="ij"))
    i, j = np.nonzero(inside)
    v00 = i * len(ys) + j
    v10, v01, v11 = v00 + len(ys), v00 + 1, v00 + len(ys) + 1
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])   # normal +z
    used, faces = np.unique(faces, return_inverse=True)
    faces = faces.reshape(-1, 3)
    vertices = vertices[used]
    color = _instance_color(rng, "floor")
    # Plank-like stripes so the floor has texture in the renderings.
    stripe = np.where((np.floor(vertices[:, 0] / 0.5) % 2) == 0, 1.0, 0.88)[:, None]
    colors = np.clip(np.rint(color * stripe + rng.uniform(-6, 6, size=(len(vertices), 1))), 0, 255).astype(np.uint8)
    mesh.add(vertices, faces, colors, instance_id)


def _floor_object(room: _Room, instance_id: int) -> SyntheticObject:
    min_x, min_y, max_x, max_y = room.floor.bounds
    return SyntheticObject(instance_id=instance_id, label="floor",
                           centroid=np.array([(min_x + max_x) / 2, (min_y + max_y) / 2, 0.0]),
                           lengths=np.array([max_x - min_x, max_y - min_y, 0.0]), axes=np.eye(3))


# ---- rendering --------------------------------------------------------------------------------------------------

def _render(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, vertex_instance: np.ndarray,
            camera_to_world: np.ndarray, intrinsics: np.ndarray, width: int,
            height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rendering of every pose: rgb [T, H, W, 3] uint8, depth [T, H, W] float32 (camera z, metres,
    0 = nothing), instance [T, H, W] int32 (-1 = nothing). Pixel (u, v) samples the image point (u, v) of K."""
    corners = vertices[faces]                                              # [F, 3, 3]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shading = 0.45 + 0.55 * np.clip(normals @ _LIGHT_DIRECTION, 0.0, 1.0)   # Lambertian plus ambient, per face
    face_colors = colors[faces].astype(np.float64) * shading[:, None, None]   # [F, 3 corners, 3 channels]
    face_instance = vertex_instance[faces[:, 0]].astype(np.int32)
    count = len(camera_to_world)
    rgb = np.zeros((count, height, width, 3), np.uint8)
    depth = np.zeros((count, height, width), np.float32)
    instance = np.full((count, height, width), -1, np.int32)
    for k, pose in enumerate(camera_to_world):
        rotation, translation = pose[:3, :3], pose[:3, 3]
        camera_vertices = (vertices - translation) @ rotation              # R^T (p - t): world -> camera
        _rasterise(camera_vertices[faces], face_colors, face_instance, intrinsics, rgb[k], depth[k], instance[k])
    return rgb, depth, instance


def _clip_near(points: np.ndarray, colors: np.ndarray, ids: np.ndarray):
    """Clip camera-space triangles [F, 3, 3] against z = near; returns the kept and split triangles."""
    behind = points[:, :, 2] < _NEAR_PLANE_M
    n_behind = behind.sum(axis=1)
    keep = n_behind == 0
    out_p, out_c, out_i = [points[keep]], [colors[keep]], [ids[keep]]
    for n in (1, 2):
        sel = n_behind == n
        if not sel.any():
            continue
        p, c, i, b = points[sel], colors[sel], ids[sel], behind[sel]
        # Rotate each triangle (keeping its winding) so the odd vertex out comes first.
        odd = np.argmax(b if n == 1 else ~b, axis=1)
        order = (odd[:, None] + np.arange(3)) % 3
        p = np.take_along_axis(p, order[:, :, None], axis=1)
        c = np.take_along_axis(c, order[:, :, None], axis=1)
        t_b = ((_NEAR_PLANE_M - p[:, 0, 2]) / (p[:, 1, 2] - p[:, 0, 2]))[:, None]
        t_c = ((_NEAR_PLANE_M - p[:, 0, 2]) / (p[:, 2, 2] - p[:, 0, 2]))[:, None]
        p_ab, p_ac = p[:, 0] + t_b * (p[:, 1] - p[:, 0]), p[:, 0] + t_c * (p[:, 2] - p[:, 0])
        c_ab, c_ac = c[:, 0] + t_b * (c[:, 1] - c[:, 0]), c[:, 0] + t_c * (c[:, 2] - c[:, 0])
        if n == 1:   # the quad (ab, b, c, ac) in front becomes two triangles
            out_p += [np.stack([p_ab, p[:, 1], p[:, 2]], 1), np.stack([p_ab, p[:, 2], p_ac], 1)]
            out_c += [np.stack([c_ab, c[:, 1], c[:, 2]], 1), np.stack([c_ab, c[:, 2], c_ac], 1)]
            out_i += [i, i]
        else:        # only the corner a is in front
            out_p.append(np.stack([p[:, 0], p_ab, p_ac], 1))
            out_c.append(np.stack([c[:, 0], c_ab, c_ac], 1))
            out_i.append(i)
    return np.concatenate(out_p), np.concatenate(out_c), np.concatenate(out_i)


def _rasterise(points: np.ndarray, colors: np.ndarray, ids: np.ndarray, intrinsics: np.ndarray,
               rgb: np.ndarray, depth: np.ndarray, instance: np.ndarray) -> None:
    """Rasterise camera-space triangles into the given frame buffers (written in place)."""
    height, width = depth.shape
    # Back faces (normal pointing away from the eye) are never the visible surface of a closed object.
    normals = np.cross(points[:, 1] - points[:, 0], points[:, 2] - points[:, 0])
    front = np.einsum("fi,fi->f", normals, points[:, 0]) < 0.0
    points, colors, ids = _clip_near(points[front], colors[front], ids[front])
    if len(points) == 0:
        return
    z = points[:, :, 2]                                                    # [F, 3] > near
    u = intrinsics[0, 0] * points[:, :, 0] / z + intrinsics[0, 2]
    v = intrinsics[1, 1] * points[:, :, 1] / z + intrinsics[1, 2]
    u_lo = np.clip(np.ceil(u.min(axis=1)), 0, width).astype(np.int64)
    u_hi = np.clip(np.floor(u.max(axis=1)), -1, width - 1).astype(np.int64)
    v_lo = np.clip(np.ceil(v.min(axis=1)), 0, height).astype(np.int64)
    v_hi = np.clip(np.floor(v.max(axis=1)), -1, height - 1).astype(np.int64)
    box_w, box_h = u_hi - u_lo + 1, v_hi - v_lo + 1
    area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (u[:, 2] - u[:, 0]) * (v[:, 1] - v[:, 0])
    live = (box_w > 0) & (box_h > 0) & (np.abs(area) > 1e-12)
    if not live.any():
        return
    tri = np.nonzero(live)[0]
    sizes = box_w[tri] * box_h[tri]
    # One candidate (triangle, pixel) pair per pixel of each triangle's bounding box.
    owner = np.repeat(tri, sizes)
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    px = u_lo[owner] + offset % box_w[owner]
    py = v_lo[owner] + offset // box_w[owner]
    u0, u1, u2 = u[owner, 0], u[owner, 1], u[owner, 2]
    v0, v1, v2 = v[owner, 0], v[owner, 1], v[owner, 2]
    a = area[owner]
    w0 = ((u1 - px) * (v2 - py) - (u2 - px) * (v1 - py)) / a
    w1 = ((u2 - px) * (v0 - py) - (u0 - px) * (v2 - py)) / a
    w2 = 1.0 - w0 - w1
    inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    owner, px, py, w0, w1, w2 = owner[inside], px[inside], py[inside], w0[inside], w1[inside], w2[inside]
    # Perspective-correct: 1/z and attribute/z interpolate linearly in the image.
    inv_z = w0 / z[owner, 0] + w1 / z[owner, 1] + w2 / z[owner, 2]
    pixel_depth = 1.0 / inv_z
    pixel = py * width + px
    order = np.lexsort((pixel_depth, pixel))                              # nearest first within each pixel
    pixel, first = pixel[order], np.ones(len(order), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    win = order[first]
    pixel = pixel[first]
    o = owner[win]
    weights = np.stack([w0[win] / z[o, 0], w1[win] / z[o, 1], w2[win] / z[o, 2]], axis=1) * pixel_depth[win, None]
    color = np.einsum("pk,pkc->pc", weights, colors[o])
    depth.reshape(-1)[pixel] = pixel_depth[win]
    instance.reshape(-1)[pixel] = ids[o]
    rgb.reshape(-1, 3)[pixel] = np.clip(np.rint(color), 0, 255).astype(np.uint8)


# ---- straight to the canonical form -----------------------------------------------------------------------------

def canonical_inputs(scene: SyntheticScene, split: str = "train", dataset: str = "scannet"):
    """(CanonicalScene, manifest, depths by rank, instance masks by rank) of a generated scene, straight from the
    generator's truth (no raw files): what the graph stage gets after ingest, for tests and benchmarks. Frames in
    ``invalid_frames`` have NaN poses, as a reader marks lost tracking."""
    from pipeline.core.scene import CanonicalScene, build_manifest, frames_columns, objects_table
    from pipeline.core.schemas import FRAMES_SCHEMA, column_as_array, table_from_columns

    t = len(scene.camera_to_world)
    cols = frames_columns(t)
    c2w = scene.camera_to_world.reshape(t, 16).copy()
    valid = np.ones(t, bool)
    valid[list(scene.invalid_frames)] = False
    c2w[~valid] = np.nan
    k = scene.intrinsics
    cols.update(timestamp=scene.timestamps, camera_to_world=c2w, valid=valid,
                fx=np.full(t, k[0, 0]), fy=np.full(t, k[1, 1]), cx=np.full(t, k[0, 2]), cy=np.full(t, k[1, 2]),
                width=np.full(t, scene.width, np.int32), height=np.full(t, scene.height, np.int32),
                depth_width=np.full(t, scene.width, np.int32), depth_height=np.full(t, scene.height, np.int32),
                depth_fx=np.full(t, k[0, 0]), depth_fy=np.full(t, k[1, 1]), depth_cx=np.full(t, k[0, 2]),
                depth_cy=np.full(t, k[1, 2]))
    frames = table_from_columns(FRAMES_SCHEMA, cols)
    objs = scene.objects
    objects = objects_table([o.instance_id for o in objs], [o.label for o in objs], [o.label for o in objs],
                            [o.centroid for o in objs], [o.lengths for o in objs], [o.axes for o in objs],
                            [int((scene.vertex_instance == o.instance_id).sum()) for o in objs])
    canonical = CanonicalScene(dataset, scene.name, split, frames, objects, scene.vertices, scene.faces, scene.colors,
                               scene.vertex_instance)
    manifest = build_manifest(frames)
    picks = column_as_array(manifest, "frame_index").astype(int)
    return canonical, manifest, [scene.depth[i] for i in picks], [scene.instance[i] for i in picks]
