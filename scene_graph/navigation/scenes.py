"""Small generated indoor layouts (z-up meshes + objects) for the navigation tests and benchmarks.

A layout is a floor plan of square tiles (``free[row, col]``: row = y, col = x): free tiles get an up-facing floor
quad, and every boundary between a free tile and a wall tile (or the outside) gets a vertical wall quad facing the
free side. Furniture is added as closed boxes. Everything is deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core.scene import objects_table
from scene_graph.geometry import box_triangles

WALL_HEIGHT_M = 2.5


@dataclass
class Layout:
    vertices: np.ndarray      # [V, 3] z-up metres
    faces: np.ndarray         # [F, 3] int64
    objects: pa.Table         # OBJECTS_SCHEMA (furniture only)


def _quads_to_mesh(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quads [Q, 4, 3] (counter-clockwise seen from their front) -> vertices, faces."""
    vertices = quads.reshape(-1, 3)
    base = np.arange(len(quads))[:, None] * 4
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
    return vertices, faces.astype(np.int64)


def tile_plan_mesh(free: np.ndarray, tile_m: float = 0.5, wall_height_m: float = WALL_HEIGHT_M,
                   floor_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Floor and walls of a tile plan; see the module docstring."""
    free = np.asarray(free, bool)
    rows, cols = free.shape
    quads = []
    r, c = np.nonzero(free)
    x0, y0 = c * tile_m, r * tile_m
    x1, y1 = x0 + tile_m, y0 + tile_m
    z0 = np.full(len(r), floor_z)
    # Floor: counter-clockwise seen from above, so the normal is +z.
    quads.append(np.stack([np.stack([x0, y0, z0], -1), np.stack([x1, y0, z0], -1),
                           np.stack([x1, y1, z0], -1), np.stack([x0, y1, z0], -1)], axis=1))
    padded = np.zeros((rows + 2, cols + 2), bool)
    padded[1:-1, 1:-1] = free
    zt = z0 + wall_height_m
    # For each side: the wall segment (a -> b) seen from the free tile, ordered so the quad faces the tile.
    sides = {
        (0, -1): ((x0, y0), (x0, y1)),   # west wall, faces +x
        (0, 1): ((x1, y1), (x1, y0)),    # east wall, faces -x
        (-1, 0): ((x1, y0), (x0, y0)),   # south wall, faces +y
        (1, 0): ((x0, y1), (x1, y1)),    # north wall, faces -y
    }
    for (dr, dc), ((ax, ay), (bx, by)) in sides.items():
        wall = ~padded[r + 1 + dr, c + 1 + dc]
        if wall.any():
            k = wall
            quads.append(np.stack([np.stack([ax[k], ay[k], z0[k]], -1), np.stack([bx[k], by[k], z0[k]], -1),
                                   np.stack([bx[k], by[k], zt[k]], -1), np.stack([ax[k], ay[k], zt[k]], -1)],
                                  axis=1))
    return _quads_to_mesh(np.concatenate(quads))


def add_boxes(vertices: np.ndarray, faces: np.ndarray, centroids, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Append upright axis-aligned closed boxes (furniture) to a mesh."""
    verts, tris = [vertices], [faces]
    offset = len(vertices)
    for centroid, length in zip(np.asarray(centroids, np.float64).reshape(-1, 3),
                                np.asarray(lengths, np.float64).reshape(-1, 3)):
        v, f = box_triangles(centroid, length, np.eye(3))
        verts.append(v); tris.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(tris)


def layout(free: np.ndarray, furniture: list[tuple[str, tuple, tuple]], tile_m: float = 0.5,
           markers: list[tuple[str, tuple]] = ()) -> Layout:
    """A tile plan with furniture ``(category, centroid, lengths)`` (boxes in the mesh) and ``markers``
    ``(category, centroid)``: flat 0.2 m objects that are listed as objects but not added to the mesh (wall art,
    rugs), which is how scans give landmarks that do not block the floor."""
    vertices, faces = tile_plan_mesh(free, tile_m)
    if furniture:
        vertices, faces = add_boxes(vertices, faces, [f[1] for f in furniture], [f[2] for f in furniture])
    items = [(cat, np.asarray(c, float), np.asarray(l, float)) for cat, c, l in furniture]
    items += [(cat, np.asarray(c, float), np.array([0.2, 0.2, 0.2])) for cat, c in markers]
    n = len(items)
    table = objects_table(np.arange(n), [i[0] for i in items], [i[0] for i in items],
                          [i[1] for i in items] or np.zeros((0, 3)), [i[2] for i in items] or np.zeros((0, 3)),
                          np.tile(np.eye(3), (n, 1, 1)), np.zeros(n))
    return Layout(vertices, faces, table)


def l_corridor(mirror: bool = False, arm_tiles: int = 12, width_tiles: int = 3, tile_m: float = 0.5) -> Layout:
    """An L-shaped corridor: east along y in [0, width], then north along the east end. ``mirror`` flips y, so
    the only route (west end -> north end) turns left, and in the mirror (-> south end) turns right."""
    size = arm_tiles
    free = np.zeros((size, size), bool)
    free[:width_tiles, :] = True
    free[:, size - width_tiles:] = True
    w = width_tiles * tile_m
    end = size * tile_m
    markers = [("door", (0.1, w / 2, 1.0)), ("picture", (end - w / 2, end - 0.1, 1.5)),
               ("plant", (end - 0.1, w / 2, 0.5)), ("lamp", (end - w / 2, end / 2, 0.3))]
    lay = layout(free, [], tile_m, markers)
    if mirror:
        lay = _mirror_y(lay)
    return lay


def hairpin(length_m: float = 6.0, tile_m: float = 0.2) -> Layout:
    """A room 6 m x 2.6 m split lengthwise by a thin wall (0.1 m thick, 2.5 m high) open at the east end: walking
    from the west end of the south half to the west end of the north half is a U-turn around the wall's tip."""
    cols, rows = int(round(length_m / tile_m)), 13
    free = np.ones((rows, cols), bool)
    height = rows * tile_m
    wall_len = length_m - 1.2
    wall = ("partition", (wall_len / 2, height / 2, WALL_HEIGHT_M / 2), (wall_len, 0.1, WALL_HEIGHT_M))
    markers = [("door", (0.1, 0.6)), ("window", (0.1, height - 0.6)), ("plant", (length_m - 0.1, 0.6))]
    lay = layout(free, [wall], tile_m, [(c, (x, y, 0.5)) for c, (x, y) in markers])
    return lay


def _mirror_y(lay: Layout) -> Layout:
    from pipeline.core.schemas import column_as_array

    v = lay.vertices * [1.0, -1.0, 1.0]
    f = lay.faces[:, ::-1].copy()   # mirroring flips the winding; restore outward / upward normals
    obj = lay.objects
    c = column_as_array(obj, "centroid") * [1.0, -1.0, 1.0]
    n = obj.num_rows
    table = objects_table(column_as_array(obj, "instance_id"), obj.column("label").to_pylist(),
                          obj.column("category").to_pylist(), c, column_as_array(obj, "lengths"),
                          np.tile(np.eye(3), (n, 1, 1)), np.zeros(n))
    return Layout(v, f, table)


_CATEGORIES = ("bed", "sofa", "table", "desk", "cabinet", "tv", "refrigerator", "toilet", "sink", "bathtub",
               "bookshelf", "dresser", "nightstand", "piano", "washer", "stove", "plant", "lamp")


def multi_room(seed: int, rooms_x: int = 2, rooms_y: int = 2, room_tiles: int = 8, tile_m: float = 0.5,
               furniture_per_room: int = 3) -> Layout:
    """Rooms of ``room_tiles`` tiles separated by one-tile walls with a random two-tile door between every pair of
    adjacent rooms; each room gets non-overlapping furniture of distinct categories away from the doors."""
    rng = np.random.default_rng(seed)
    step = room_tiles + 1
    rows, cols = rooms_y * step - 1, rooms_x * step - 1
    free = np.zeros((rows, cols), bool)
    for ry in range(rooms_y):
        for rx in range(rooms_x):
            free[ry * step:ry * step + room_tiles, rx * step:rx * step + room_tiles] = True
    doors = []
    for ry in range(rooms_y):
        for rx in range(rooms_x):
            if rx + 1 < rooms_x:   # door in the vertical wall to the east
                k = ry * step + int(rng.integers(1, room_tiles - 2))
                free[k:k + 2, rx * step + room_tiles] = True
                doors.append(((rx * step + room_tiles + 0.5) * tile_m, (k + 1) * tile_m))
            if ry + 1 < rooms_y:   # door in the horizontal wall to the north
                k = rx * step + int(rng.integers(1, room_tiles - 2))
                free[ry * step + room_tiles, k:k + 2] = True
                doors.append(((k + 1) * tile_m, (ry * step + room_tiles + 0.5) * tile_m))
    categories = list(rng.permutation(_CATEGORIES))
    furniture = []
    door_xy = np.array(doors).reshape(-1, 2)
    for ry in range(rooms_y):
        for rx in range(rooms_x):
            x_lo, y_lo = rx * step * tile_m, ry * step * tile_m
            span = room_tiles * tile_m
            placed = []
            for _ in range(60):
                if len(placed) == furniture_per_room or not categories:
                    break
                size = np.array([rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.0)])
                centre = np.array([x_lo + rng.uniform(size[0] / 2 + 0.05, span - size[0] / 2 - 0.05),
                                   y_lo + rng.uniform(size[1] / 2 + 0.05, span - size[1] / 2 - 0.05)])
                if len(door_xy) and (np.abs(door_xy - centre) < size[:2] / 2 + 0.9).all(axis=1).any():
                    continue   # keep doors free
                if any((np.abs(p[0] - centre) < (p[1][:2] + size[:2]) / 2 + 0.6).all() for p in placed):
                    continue   # keep passages between furniture
                placed.append((centre, size))
                furniture.append((str(categories.pop()), (centre[0], centre[1], size[2] / 2), tuple(size)))
    return layout(free, furniture, tile_m)
