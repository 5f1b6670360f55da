"""Vectorised geometry shared by the scene graph and every QA task (numpy; z-up metric world).

Boxes are oriented boxes given as ``centroid`` [..., 3] (metres), ``lengths`` [..., 3] (full edge lengths, metres)
and ``axes`` [..., 3, 3] whose **rows** are the box axes in world coordinates (the convention of ScanNet++'s and
ARKitScenes' ``normalizedAxes`` and of VLM-3R's ``R.T.flatten()``). Leading dimensions broadcast everywhere.

Floor-plane helpers work on the XY plane of the z-up world; angles are counter-clockwise seen from above, so a
positive relative angle means "to the left".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import shapely
from scipy.spatial import Delaunay

# Corner k of a box has local sign pattern BOX_CORNER_SIGNS[k] (bit 2 -> axis 0, bit 1 -> axis 1, bit 0 -> axis 2).
BOX_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
# The 12 edges as pairs of corner indices: corners that differ in exactly one sign.
BOX_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                      if np.count_nonzero(BOX_CORNER_SIGNS[i] != BOX_CORNER_SIGNS[j]) == 1], dtype=np.int64)

VLM3R_FLOOR_ALPHA = 5.0          # alpha of the floor-plan alpha shape (VLM-3R calculate_room_area)
VLM3R_FLOOR_SAMPLES = 10_000     # points drawn with replacement before the alpha shape
_EPS = 1e-12


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def boxes_from_table(objects: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroid [N, 3], lengths [N, 3], axes [N, 3, 3]) of an OBJECTS_SCHEMA / GRAPH_OBJECTS_SCHEMA table."""
    from pipeline.core.schemas import column_as_array

    return (column_as_array(objects, "centroid"), column_as_array(objects, "lengths"),
            column_as_array(objects, "axes").reshape(-1, 3, 3))


def box_corners(centroid, lengths, axes) -> np.ndarray:
    """The 8 corners [..., 8, 3] of oriented boxes; rows of ``axes`` are the box axes (see BOX_CORNER_SIGNS)."""
    centroid, lengths, axes = _f64(centroid), _f64(lengths), _f64(axes)
    half_axes = (lengths[..., :, None] / 2.0) * axes                   # [..., 3, 3]: row i = half edge vector i
    return centroid[..., None, :] + np.einsum("kj,...ji->...ki", BOX_CORNER_SIGNS, half_axes)


def box_triangles(centroid, lengths, axes) -> tuple[np.ndarray, np.ndarray]:
    """A closed triangle mesh of one box: vertices [8, 3] (its corners) and faces [12, 3] (outward winding)."""
    corners = box_corners(centroid, lengths, axes).reshape(8, 3)
    # Each face: the 4 corners sharing one sign on one axis, ordered around the face.
    quads = []
    for axis in range(3):
        a, b = [k for k in range(3) if k != axis]
        for sign in (-1.0, 1.0):
            ring = []
            for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                pattern = np.zeros(3); pattern[axis] = sign; pattern[a] = sa; pattern[b] = sb
                ring.append(int(np.flatnonzero((BOX_CORNER_SIGNS == pattern).all(axis=1))[0]))
            quads.append(ring if sign > 0 else ring[::-1])
    faces = np.array([[q[0], q[1], q[2]] for q in quads] + [[q[0], q[2], q[3]] for q in quads], dtype=np.int64)
    return corners, faces


def to_box_frame(points, centroid, axes) -> np.ndarray:
    """World points [..., 3] in the box's local frame (coordinate i along box axis i)."""
    return np.einsum("...ij,...j->...i", _f64(axes), _f64(points) - _f64(centroid))


def closest_point_on_box(points, centroid, lengths, axes) -> np.ndarray:
    """The point of each (solid) box nearest to each point [..., 3]; the point itself when inside."""
    half = _f64(lengths) / 2.0
    local = np.clip(to_box_frame(points, centroid, axes), -half, half)
    return _f64(centroid) + np.einsum("...ij,...i->...j", _f64(axes), local)


def point_box_distance(points, centroid, lengths, axes) -> np.ndarray:
    """Euclidean distance [...] from points to solid oriented boxes (0 inside). Broadcasts, e.g. points [N, 1, 3]
    against boxes [1, B] gives [N, B]."""
    local = np.abs(to_box_frame(points, centroid, axes))
    outside = np.maximum(local - _f64(lengths) / 2.0, 0.0)
    return np.linalg.norm(outside, axis=-1)


def segment_segment_distance(p0, p1, q0, q1) -> np.ndarray:
    """Distance [...] between segments p0-p1 and q0-q1 (closest points, clamped; degenerate segments allowed)."""
    p0, p1, q0, q1 = _f64(p0), _f64(p1), _f64(q0), _f64(q1)
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a = np.einsum("...i,...i", d1, d1)
    e = np.einsum("...i,...i", d2, d2)
    b = np.einsum("...i,...i", d1, d2)
    c = np.einsum("...i,...i", d1, r)
    f = np.einsum("...i,...i", d2, r)
    a_ok, e_ok = a > _EPS, e > _EPS
    safe_a, safe_e = np.where(a_ok, a, 1.0), np.where(e_ok, e, 1.0)
    denom = a * e - b * b
    # Non-parallel: the unconstrained optimum clamped to [0, 1]; parallel: any s, take 0.
    s = np.where(denom > _EPS * np.maximum(a * e, _EPS), np.clip((b * f - c * e) / np.where(denom > 0, denom, 1.0), 0, 1), 0.0)
    t = (b * s + f) / safe_e
    # t out of range: clamp t and recompute s for the clamped t.
    s = np.where(t < 0, np.clip(-c / safe_a, 0, 1), np.where(t > 1, np.clip((b - c) / safe_a, 0, 1), s))
    t = np.clip(t, 0, 1)
    # Degenerate segments (points).
    s = np.where(a_ok, s, 0.0)
    t = np.where(a_ok, t, np.clip(f / safe_e, 0, 1))
    s = np.where(e_ok, s, np.where(a_ok, np.clip(-c / safe_a, 0, 1), 0.0))
    t = np.where(e_ok, t, 0.0)
    gap = (p0 + s[..., None] * d1) - (q0 + t[..., None] * d2)
    return np.linalg.norm(gap, axis=-1)


def boxes_overlap(centroid_a, lengths_a, axes_a, centroid_b, lengths_b, axes_b, tol: float = 1e-9) -> np.ndarray:
    """True [...] where two solid oriented boxes intersect (separating-axis test over the 15 candidate axes)."""
    ra, rb = _f64(axes_a), _f64(axes_b)
    ra, rb = np.broadcast_arrays(ra, rb)
    cross = np.cross(ra[..., :, None, :], rb[..., None, :, :]).reshape(*ra.shape[:-2], 9, 3)
    candidates = np.concatenate([ra, rb, cross], axis=-2)                     # [..., 15, 3]
    norm = np.linalg.norm(candidates, axis=-1)
    usable = norm > 1e-9                                                      # parallel edge pairs give no axis
    unit = candidates / np.where(usable, norm, 1.0)[..., None]
    half_a, half_b = _f64(lengths_a) / 2.0, _f64(lengths_b) / 2.0
    radius_a = np.einsum("...k,...kl->...l", half_a, np.abs(np.einsum("...ki,...li->...kl", ra, unit)))
    radius_b = np.einsum("...k,...kl->...l", half_b, np.abs(np.einsum("...ki,...li->...kl", rb, unit)))
    offset = np.abs(np.einsum("...li,...i->...l", unit, _f64(centroid_b) - _f64(centroid_a)))
    separated = usable & (offset > radius_a + radius_b + tol)
    return ~separated.any(axis=-1)


def box_box_distance(centroid_a, lengths_a, axes_a, centroid_b, lengths_b, axes_b) -> np.ndarray:
    """Exact closest-point distance [...] between two solid oriented boxes (0 when they intersect).

    The closest pair of two disjoint convex polytopes is realised by a vertex of one and the other solid, or by two
    edges, so the minimum over the 8+8 corner-to-box distances and the 12x12 edge-to-edge distances is exact;
    intersection (distance 0, which no feature pair reveals for crossing bars) comes from the separating-axis test.
    """
    ca, la, ra = _f64(centroid_a), _f64(lengths_a), _f64(axes_a)
    cb, lb, rb = _f64(centroid_b), _f64(lengths_b), _f64(axes_b)
    corners_a, corners_b = box_corners(ca, la, ra), box_corners(cb, lb, rb)      # [..., 8, 3]
    d_ab = point_box_distance(corners_a, cb[..., None, :], lb[..., None, :], rb[..., None, :, :]).min(axis=-1)
    d_ba = point_box_distance(corners_b, ca[..., None, :], la[..., None, :], ra[..., None, :, :]).min(axis=-1)
    ea0, ea1 = corners_a[..., BOX_EDGES[:, 0], None, :], corners_a[..., BOX_EDGES[:, 1], None, :]   # [..., 12, 1, 3]
    eb0, eb1 = corners_b[..., None, BOX_EDGES[:, 0], :], corners_b[..., None, BOX_EDGES[:, 1], :]   # [..., 1, 12, 3]
    d_edges = segment_segment_distance(ea0, ea1, eb0, eb1).min(axis=(-1, -2))
    distance = np.minimum(np.minimum(d_ab, d_ba), d_edges)
    return np.where(boxes_overlap(ca, la, ra, cb, lb, rb), 0.0, distance)


def pairwise_box_distances(centroid, lengths, axes) -> np.ndarray:
    """Symmetric [N, N] matrix of closest-point distances between N boxes (0 on the diagonal)."""
    centroid, lengths, axes = _f64(centroid), _f64(lengths), _f64(axes).reshape(-1, 3, 3)
    n = len(centroid)
    out = np.zeros((n, n))
    i, j = np.triu_indices(n, k=1)
    if len(i):
        d = box_box_distance(centroid[i], lengths[i], axes[i], centroid[j], lengths[j], axes[j])
        out[i, j] = d
        out[j, i] = d
    return out


def sample_box_shell(centroid, lengths, axes, spacing: float = 0.05) -> np.ndarray:
    """Points [K, 3] on a hollow shell of one box, VLM-3R's VSTI rule: a grid of ``ceil(L/spacing)`` samples per
    axis spanning the box, keeping points whose |local coordinate| exceeds L/4 on some axis; the spacing halves
    (up to 8 times) while nothing survives."""
    lengths = _f64(lengths).reshape(3)
    for _ in range(9):
        counts = np.ceil(lengths / spacing).astype(np.int64)
        ticks = [np.linspace(-l / 2.0, l / 2.0, n) for l, n in zip(lengths, counts)]
        grid = np.stack(np.meshgrid(*ticks, indexing="ij"), axis=-1).reshape(-1, 3)
        local = grid[np.any(np.abs(grid) > lengths / 4.0, axis=1)]
        if len(local):
            return _f64(centroid).reshape(3) + local @ _f64(axes).reshape(3, 3)
        spacing /= 2.0
    return np.zeros((0, 3))


def box_floor_area(lengths, axes) -> np.ndarray:
    """Area [...] (m^2) of the boxes' orthogonal projection on the floor: sum over the three face pairs of
    face area x |cos(face normal, z)| (exact for any orientation; l0*l1 for an upright box)."""
    lengths = _f64(lengths)
    face_areas = np.stack([lengths[..., 1] * lengths[..., 2], lengths[..., 0] * lengths[..., 2],
                           lengths[..., 0] * lengths[..., 1]], axis=-1)
    return (face_areas * np.abs(_f64(axes)[..., :, 2])).sum(axis=-1)


# ---- floor plane -------------------------------------------------------------------------------------------------

def bearing_deg(vectors) -> np.ndarray:
    """Heading [...] in degrees of floor-plane vectors (x, y, [z ignored]): counter-clockwise from +x, in (-180, 180]."""
    v = _f64(vectors)
    return np.degrees(np.arctan2(v[..., 1], v[..., 0]))


def wrap_deg(angle) -> np.ndarray:
    """Angles wrapped to (-180, 180]."""
    wrapped = np.mod(_f64(angle) + 180.0, 360.0) - 180.0
    return np.where(wrapped == -180.0, 180.0, wrapped)


def relative_bearing_deg(position, facing_point, target) -> np.ndarray:
    """Standing at ``position`` and facing ``facing_point``, the signed floor-plane angle [...] to ``target`` in
    degrees, (-180, 180]: 0 = straight ahead, positive = to the left (counter-clockwise, z-up), +-180 = behind."""
    position = _f64(position)
    return wrap_deg(bearing_deg(_f64(target) - position) - bearing_deg(_f64(facing_point) - position))


def floor_xy_in_frame(points, position, facing_point) -> np.ndarray:
    """Floor coordinates [..., 2] of points in an observer frame: origin at ``position``, +y towards
    ``facing_point``, +x to the observer's right (the quadrant convention of VSI-Bench's hard direction task).
    Arguments broadcast (e.g. points [N, 3] with one position and facing point)."""
    position = _f64(position)
    forward = _f64(facing_point)[..., :2] - position[..., :2]
    forward = forward / np.maximum(np.linalg.norm(forward, axis=-1, keepdims=True), _EPS)
    right = np.stack([forward[..., 1], -forward[..., 0]], axis=-1)        # forward turned by -90 deg (z-up)
    rel = _f64(points)[..., :2] - position[..., :2]
    return np.stack([(rel * right).sum(-1), (rel * forward).sum(-1)], axis=-1)


# ---- floor plan: alpha shape, outline, centre ----------------------------------------------------------------------

@dataclass(frozen=True)
class FloorShape:
    area_m2: float                    # area of the alpha shape (holes enclosed by the shape are filled, as in VLM-3R)
    outline: np.ndarray               # [K, 2] closed exterior ring of the largest component (first point repeated)
    geometry: shapely.Geometry        # the (Multi)Polygon


def alpha_shape(xy, alpha: float = VLM3R_FLOOR_ALPHA) -> shapely.Geometry:
    """The 2D alpha shape of points [N, 2], as ``alphashape.alphashape(xy, alpha)`` computes it, vectorised.

    Delaunay triangles whose circumradius is below 1/alpha are kept and merged; alphashape rebuilds the shape by
    polygonising every kept edge, which also returns the faces enclosed by kept triangles, so enclosed holes are
    filled here too. Fewer than 4 points give the convex hull (alphashape's rule).
    """
    xy = _f64(xy).reshape(-1, 2)
    if len(xy) < 4:
        return shapely.MultiPoint(xy).convex_hull
    try:
        tri = Delaunay(xy)
    except Exception:  # noqa: BLE001 - qhull raises QhullError for collinear / coincident input
        return shapely.MultiPoint(xy).convex_hull
    p = xy[tri.simplices]                                                   # [T, 3, 2]
    side_a = np.linalg.norm(p[:, 1] - p[:, 2], axis=1)
    side_b = np.linalg.norm(p[:, 0] - p[:, 2], axis=1)
    side_c = np.linalg.norm(p[:, 0] - p[:, 1], axis=1)
    u, v = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    twice_area = np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        circumradius = np.where(twice_area > 0, side_a * side_b * side_c / (2.0 * twice_area), np.inf)
    kept = p[circumradius < 1.0 / alpha]
    if len(kept) == 0:
        return shapely.Polygon()
    triangles = shapely.polygons(np.concatenate([kept, kept[:, :1]], axis=1))
    # Delaunay triangles form a valid polygonal coverage, so the (fast) coverage union applies.
    merged = shapely.coverage_union_all(triangles)
    parts = list(getattr(merged, "geoms", [merged]))
    filled = [shapely.Polygon(part.exterior) for part in parts if part.geom_type == "Polygon" and not part.is_empty]
    if not filled:
        return shapely.Polygon()
    return shapely.union_all(filled) if len(filled) > 1 else filled[0]


def floor_shape(points, alpha: float = VLM3R_FLOOR_ALPHA, num_samples: int | None = VLM3R_FLOOR_SAMPLES,
                seed: int = 42) -> FloorShape:
    """Floor plan of a scan: the alpha shape of its points' XY (z-up world).

    Like VLM-3R's ``calculate_room_area``, ``num_samples`` points are drawn **with replacement** with NumPy's
    legacy generator seeded by ``seed`` (``np.random.seed(seed); np.random.choice(N, num_samples)`` draws the same
    indices), so the result is deterministic; ``num_samples=None`` uses every point.
    """
    xy = _f64(points)[:, :2]
    if len(xy) == 0:
        raise ValueError("floor_shape: no points")
    if num_samples is not None:
        xy = xy[np.random.RandomState(seed).choice(len(xy), num_samples)]
    shape = alpha_shape(xy, alpha)
    parts = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type == "Polygon" and not g.is_empty]
    if parts:
        largest = max(parts, key=lambda g: g.area)
        # Tolerance-0 simplification only drops collinear vertices: same polygon, far shorter room.json.
        outline = np.asarray(largest.exterior.simplify(0.0).coords, dtype=np.float64)
    else:
        outline = np.zeros((0, 2))
    return FloorShape(area_m2=float(shape.area), outline=outline, geometry=shape)


def room_center(points) -> np.ndarray:
    """Centre [3] of a scan: the centre of the minimum-area rectangle around the points' XY (a gravity-aligned
    stand-in for VLM-3R's open3d minimal oriented box, which open3d computes without the upright constraint), and
    the middle of the z range."""
    pts = _f64(points)
    if len(pts) == 0:
        raise ValueError("room_center: no points")
    rect = shapely.minimum_rotated_rectangle(shapely.MultiPoint(pts[:, :2]))
    cxy = np.asarray(rect.centroid.coords[0]) if rect.geom_type == "Polygon" else pts[:, :2].mean(axis=0)
    return np.array([cxy[0], cxy[1], (pts[:, 2].min() + pts[:, 2].max()) / 2.0])


# ---- projection and rasterisation (OpenCV pinhole camera: x right, y down, z forward; pixel centres at integers) --

def _clip_near(tri: np.ndarray, near_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangles [F, 3, 3] (camera coordinates) clipped against the plane z = near_m: a triangle with one vertex
    behind becomes two, with two behind one, with three behind none. Returns the pieces [G, 3, 3] and the index
    of the input triangle each came from [G]."""
    inside = tri[..., 2] >= near_m
    n_in = inside.sum(axis=1)
    whole, one, two = (np.flatnonzero(n_in == k) for k in (3, 1, 2))
    pieces, source = [tri[whole]], [whole]

    def cut(a, b):  # point where segment a-b crosses z = near
        t = (near_m - a[..., 2]) / (b[..., 2] - a[..., 2])
        return a + t[..., None] * (b - a)

    def rolled(rows: np.ndarray, first: np.ndarray):  # the 3 vertices, starting at vertex ``first``
        order = (first[:, None] + np.arange(3)) % 3
        return [np.take_along_axis(tri[rows], order[:, k, None, None].repeat(3, -1), 1)[:, 0] for k in range(3)]

    if len(one):  # keep the inside vertex A and the two crossings on A-B, A-C
        a, b, c = rolled(one, np.argmax(inside[one], axis=1))
        pieces.append(np.stack([a, cut(a, b), cut(a, c)], axis=1)); source.append(one)
    if len(two):  # outside vertex C: quad A, B, cut(B, C), cut(A, C) -> two triangles
        c, a, b = rolled(two, np.argmin(inside[two], axis=1))
        p, q = cut(a, c), cut(b, c)
        pieces += [np.stack([a, b, q], axis=1), np.stack([a, q, p], axis=1)]; source += [two, two]
    return np.concatenate(pieces), np.concatenate(source)


def splat_points(points_cam, k, width: int, height: int, near_m: float = 0.05):
    """Project camera-frame points to the pixel they fall in with VLM-3R's rule: ``(u + 0.5).astype(int)``, i.e.
    + 0.5 then truncation toward zero (so u in (-1.5, -0.5] still lands in column 0, as in VLM-3R).

    Returns (pixel [M] = row * width + col, depth [M] metres, ok [N]) for the points in front of the camera and
    inside the image."""
    fx, fy, cx, cy = k
    p = _f64(points_cam).reshape(-1, 3)
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.trunc(fx * p[:, 0] / z + cx + 0.5)
        row = np.trunc(fy * p[:, 1] / z + cy + 0.5)
    ok = (z >= near_m) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return (row[ok] * width + col[ok]).astype(np.int64), z[ok], ok


def rasterize_triangles(tri_cam, k, width: int, height: int, near_m: float = 0.05,
                        chunk_pixels: int = 1_000_000):
    """Rasterise camera-frame triangles [F, 3, 3] at the pixel centres of a width x height grid.

    Returns (face [K], pixel [K] = row * width + col, depth [K] metres) for every covered (triangle, pixel) pair;
    depth is interpolated perspective-correctly (1/z is linear in the image). Triangles are clipped at z = near_m;
    either winding is accepted. Work is chunked so at most about ``chunk_pixels`` candidates exist at once.
    """
    fx, fy, cx, cy = k
    tri_cam = _f64(tri_cam).reshape(-1, 3, 3)
    tri, owner = _clip_near(tri_cam, near_m)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(tri) == 0:
        return empty
    u = fx * tri[..., 0] / tri[..., 2] + cx                              # [F, 3]
    v = fy * tri[..., 1] / tri[..., 2] + cy
    inv_z = 1.0 / tri[..., 2]
    x0 = np.clip(np.ceil(u.min(1)), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(u.max(1)), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(v.min(1)), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(v.max(1)), -1, height - 1).astype(np.int64)
    bw, bh = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    denom = (v[:, 1] - v[:, 2]) * (u[:, 0] - u[:, 2]) + (u[:, 2] - u[:, 1]) * (v[:, 0] - v[:, 2])
    count = np.where(np.abs(denom) > 1e-12, bw * bh, 0)
    live = np.flatnonzero(count)
    if len(live) == 0:
        return empty
    # Barycentrics and 1/z are affine in the image: per face, l0, l1 and 1/z = A * px + B * py + C.
    u, v, inv_z, d = u[live], v[live], inv_z[live], denom[live]
    a0, b0 = (v[:, 1] - v[:, 2]) / d, (u[:, 2] - u[:, 1]) / d
    a1, b1 = (v[:, 2] - v[:, 0]) / d, (u[:, 0] - u[:, 2]) / d
    c0, c1 = -(a0 * u[:, 2] + b0 * v[:, 2]), -(a1 * u[:, 2] + b1 * v[:, 2])
    dz0, dz1 = inv_z[:, 0] - inv_z[:, 2], inv_z[:, 1] - inv_z[:, 2]
    coef = np.stack([a0, b0, c0, a1, b1, c1, a0 * dz0 + a1 * dz1, b0 * dz0 + b1 * dz1,
                     inv_z[:, 2] + c0 * dz0 + c1 * dz1], axis=1)                 # [F_live, 9]
    x0, y0, bw, count, owner = x0[live], y0[live], bw[live], count[live], owner[live]
    out_face, out_pix, out_z = [], [], []
    bounds = np.cumsum(count)
    start = 0
    tol = -1e-9                                                              # pixel centres on an edge count
    while start < len(live):
        stop = max(start + 1, int(np.searchsorted(bounds, bounds[start] - count[start] + chunk_pixels, "right")))
        n = count[start:stop]
        fr = np.repeat(np.arange(start, stop), n)
        offset = np.arange(len(fr)) - np.repeat(np.cumsum(n) - n, n)
        px = (x0[fr] + offset % bw[fr]).astype(np.float64)
        py = (y0[fr] + offset // bw[fr]).astype(np.float64)
        c = coef[fr]
        l0 = c[:, 0] * px + c[:, 1] * py + c[:, 2]
        l1 = c[:, 3] * px + c[:, 4] * py + c[:, 5]
        hit = (l0 >= tol) & (l1 >= tol) & (1.0 - l0 - l1 >= tol)
        c, px, py = c[hit], px[hit], py[hit]
        out_face.append(owner[fr[hit]])
        out_pix.append((py * width + px).astype(np.int64))
        out_z.append(1.0 / (c[:, 6] * px + c[:, 7] * py + c[:, 8]))
        start = stop
    return np.concatenate(out_face), np.concatenate(out_pix), np.concatenate(out_z)
