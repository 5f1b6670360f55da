"""Per-patch 3D points of the frame contract's patch grid, from sensor depth or from CUT3R's point head.

The frame contract (``workers/extract.py``, ``workers/cut3r/preprocess.py``): each upright colour frame of W x H is
squashed to 384 x 384 and resized to 432 x 432 (both resamplings map pixel edges to pixel edges), and CUT3R cuts
the result into 16 x 16 patches: a 27 x 27 grid whose 729 patch tokens are the geometry tokens. Patch (i, j) (row
i, column j, token i * 27 + j) therefore covers the colour image's pixel-edge range ``[j W/27, (j+1) W/27) x
[i H/27, (i+1) H/27)``: the colour pixel with centre (u, v) lies in column ``floor((u + 0.5) * 27 / W)`` and row
``floor((v + 0.5) * 27 / H)``, whatever the aspect ratio (the squash does not keep it).

Depth points (:func:`depth_patch_points`): a depth pixel belongs to the patch its centre falls in once carried into
the colour image (depth and colour cameras share centre and orientation: registered depth, as the graph assumes;
intrinsics may differ, e.g. ScanNet's 640x480 depth under 1296x968 colour). Per patch, the median of its valid depth
pixels picks the surface the patch sees (pixels within 5 % of it; an object edge's other side is left out), and the
point is that surface's depth on the ray through the patch centre: inverse depth is an affine function of the pixel
coordinates on any plane, so it is fitted over the surface's pixels (least squares) and evaluated at the centre.
The point therefore projects onto its patch centre, and lies on the surface exactly where the patch sees a plane
(to within the depth quantisation, averaged over the patch). Taking the median *value* itself along the centre
ray would be off the surface on slanted planes (centimetres), since a patch's pixels are not placed symmetrically
about its centre. Where the fit cannot be trusted (fewer than three pixels, collinear pixels, a centre depth outside
the surface's measured range), the median pixel itself is back-projected through its own centre: a measured point
inside the patch.

Depth images and intrinsics are the upright ones (``pipeline.core.frames.decode_depths`` applies ``rotate_k``, and
the readers store upright ``depth_fx..depth_cy``), so rotated ARKitScenes frames need nothing more here.

Layout (the token sample's ``points.npy``, ``points_cam0.npy``, ``points_valid.npy``): [T, 729, 3] float32 points in
the scene's z-up world, the same points in the camera frame of the first manifest frame (OpenCV: x right, y down,
z forward), and [T, 729] validity. Invalid entries are 0. A depth patch is invalid when its frame has no depth or no
finite pose, when no valid depth pixel falls in it, or when the first manifest frame has no finite pose (the camera-0
frame is then undefined).

CUT3R points (:func:`cut3r_geometry`): the point head's output is already in the first frame's camera, in the
model's scale, and the pose head gives each frame's camera-to-world in that same frame. With a finite rigid sensor
pose for the first manifest frame, both go to the z-up world through it (:data:`POINTS_FRAMES` ``"world_z_up"``);
without one (plain videos) the first frame's camera is the only canonical space there is, so it *is* the world
(``"camera0"``: ``points.npy`` equals ``points_cam0.npy``). CUT3R points are valid wherever they are finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.scene import finite_pose_mask

PATCH_GRID = 27                # patches per side: input 432 / patch 16
POINTS_SOURCES = ("depth", "cut3r")
# The frame of ``points.npy`` (and of CUT3R's estimated poses): the scene's z-up world, or the first manifest frame's
# OpenCV camera when the scene has no sensor pose for it.
POINTS_FRAMES = ("world_z_up", "camera0")
SURFACE_TOLERANCE = 0.05       # a patch's pixels within this fraction of its median depth are the surface it sees


@dataclass(frozen=True)
class PatchPoints:
    world: np.ndarray          # [T, G*G, 3] float32, z-up world, metres (0 where invalid)
    cam0: np.ndarray           # [T, G*G, 3] float32, first manifest frame's OpenCV camera frame (0 where invalid)
    valid: np.ndarray          # [T, G*G] bool


def _finite_rigid(pose: np.ndarray | None) -> bool:
    return pose is not None and bool(finite_pose_mask(pose, tol=1e-3)[0])


def patch_index_of_pixels(u: np.ndarray, v: np.ndarray, image_wh: tuple[int, int], grid: int = PATCH_GRID):
    """Patch token index (row * grid + column) of colour-image points ``(u, v)`` (pixel-centre coordinates, any
    float), or -1 outside the image."""
    width, height = image_wh
    col = np.floor((np.asarray(u, np.float64) + 0.5) * grid / width)
    row = np.floor((np.asarray(v, np.float64) + 0.5) * grid / height)
    inside = (col >= 0) & (col < grid) & (row >= 0) & (row < grid)
    return np.where(inside, row * grid + col, -1).astype(np.int64)


def depth_patch_points(depth: np.ndarray, depth_k, image_k, image_wh: tuple[int, int], grid: int = PATCH_GRID):
    """(points [G*G, 3] float64 in the frame's camera, valid [G*G]) of one frame: per patch, the seen surface's depth
    on the ray through the patch centre (see the module docstring). ``depth``: upright metres, 0 or non-finite = no
    measurement; ``depth_k``/``image_k``: (fx, fy, cx, cy) of the depth grid and of the colour image."""
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth map must be 2D, got shape {depth.shape}")
    dfx, dfy, dcx, dcy = depth_k
    fx, fy, cx, cy = image_k
    h, w = depth.shape
    width, height = image_wh
    # Separable: a depth column maps to one colour column, a depth row to one colour row.
    col_u = (np.arange(w) - dcx) / dfx * fx + cx
    row_v = (np.arange(h) - dcy) / dfy * fy + cy
    patch_col = patch_index_of_pixels(col_u, np.zeros(w), image_wh, grid)        # row 0: index = column
    patch_row = patch_index_of_pixels(np.zeros(h), row_v, image_wh, grid)        # column 0: index = row * grid
    cell = np.where((patch_row[:, None] >= 0) & (patch_col[None, :] >= 0), patch_row[:, None] + patch_col[None, :], -1)
    flat_depth = depth.reshape(-1)
    flat_cell = cell.reshape(-1)
    ok = np.isfinite(flat_depth) & (flat_depth > 0) & (flat_cell >= 0)
    pixel = np.flatnonzero(ok)
    points = np.zeros((grid * grid, 3))
    valid = np.zeros(grid * grid, bool)
    if len(pixel) == 0:
        return points, valid
    order = np.lexsort((pixel, flat_depth[pixel], flat_cell[pixel]))         # by cell, then depth, then pixel
    pixel = pixel[order]
    cells, start, count = np.unique(flat_cell[pixel], return_index=True, return_counts=True)
    chosen = pixel[start + (count - 1) // 2]                                  # the lower median of each cell
    z = flat_depth[chosen]
    ud, vd = chosen % w, chosen // w
    points[cells] = np.stack([(ud - dcx) / dfx * z, (vd - dcy) / dfy * z, z], axis=1)
    valid[cells] = True
    # The seen surface's depth on the ray through each patch centre (inverse depth affine in pixel coordinates).
    n_cells = grid * grid
    median_of = np.zeros(n_cells)
    median_of[cells] = z
    pix_cell = flat_cell[pixel]
    pix_z = flat_depth[pixel]
    surface = np.abs(pix_z - median_of[pix_cell]) <= SURFACE_TOLERANCE * median_of[pix_cell]
    pc, pz = pix_cell[surface], pix_z[surface]
    # The patch centres in colour pixels, carried into depth pixels (the same rays).
    rows, cols = np.divmod(np.arange(n_cells), grid)
    centre_u = ((cols + 0.5) * width / grid - 0.5 - cx) / fx * dfx + dcx
    centre_v = ((rows + 0.5) * height / grid - 0.5 - cy) / fy * dfy + dcy
    # Pixel coordinates relative to their patch centre: the fitted constant is the inverse depth at the centre, and
    # the least-squares system stays well conditioned.
    du = (pixel[surface] % w) - centre_u[pc]
    dv = (pixel[surface] // w) - centre_v[pc]
    inv_z = 1.0 / pz

    def total(values):
        return np.bincount(pc, weights=values, minlength=n_cells)

    n = np.bincount(pc, minlength=n_cells).astype(np.float64)
    su, sv, suu, suv, svv = total(du), total(dv), total(du * du), total(du * dv), total(dv * dv)
    normal = np.stack([np.stack([suu, suv, su], -1), np.stack([suv, svv, sv], -1), np.stack([su, sv, n], -1)], -2)
    rhs = np.stack([total(du * inv_z), total(dv * inv_z), total(inv_z)], -1)
    # Collinear pixels (a one-pixel-wide strip) leave the plane undetermined: a (nearly) singular normal matrix.
    fit = valid & (n >= 3)
    fit &= np.linalg.det(normal) > 1e-9 * np.maximum(suu * svv * n, 1e-300)
    if fit.any():
        inverse = np.linalg.solve(normal[fit], rhs[fit][..., None])[:, 2, 0]
        lo = np.full(n_cells, np.inf)
        hi = np.zeros(n_cells)
        np.minimum.at(lo, pc, pz)
        np.maximum.at(hi, pc, pz)
        with np.errstate(divide="ignore"):
            z_centre = np.where(inverse > 0, 1.0 / inverse, np.nan)
        # Outside the surface's measured depths the fit extrapolates: keep the median pixel there.
        trusted = np.isfinite(z_centre) & (z_centre >= lo[fit] * (1 - 1e-3)) & (z_centre <= hi[fit] * (1 + 1e-3))
        idx = np.flatnonzero(fit)[trusted]
        zc = z_centre[trusted]
        points[idx] = np.stack([(centre_u[idx] - dcx) / dfx * zc, (centre_v[idx] - dcy) / dfy * zc, zc], axis=1)
    return points, valid


def _to_world(points_cam: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    return points_cam @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def _assemble(world: np.ndarray, valid: np.ndarray, first_camera_to_world: np.ndarray | None) -> PatchPoints:
    """World points [T, N, 3] float64 + validity -> the stored layout, with the camera-0 points."""
    if not _finite_rigid(first_camera_to_world):
        valid = np.zeros_like(valid)
        cam0 = np.zeros_like(world)
    else:
        c2w0 = np.asarray(first_camera_to_world, np.float64).reshape(4, 4)
        cam0 = (world - c2w0[:3, 3]) @ c2w0[:3, :3]                           # R^T (p - t)
    keep = valid[..., None]
    return PatchPoints(world=np.where(keep, world, 0.0).astype(np.float32),
                       cam0=np.where(keep, cam0, 0.0).astype(np.float32), valid=valid.copy())


def frames_patch_points(depths: Sequence[np.ndarray | None], depth_ks: Sequence[tuple | None],
                        image_ks: Sequence[tuple], image_whs: Sequence[tuple[int, int]],
                        camera_to_world: Sequence[np.ndarray | None], grid: int = PATCH_GRID) -> PatchPoints:
    """Depth points of a manifest (rank order). A frame's depth may be None (no depth: invalid points), its depth
    intrinsics None (the depth image then spans the colour image: its intrinsics are the colour ones rescaled, pixel
    edges aligned), its pose non-finite (invalid points)."""
    t = len(depths)
    if not (len(depth_ks) == len(image_ks) == len(image_whs) == len(camera_to_world) == t):
        raise ValueError("depths, intrinsics, image sizes and poses must have one entry per frame")
    world = np.zeros((t, grid * grid, 3))
    valid = np.zeros((t, grid * grid), bool)
    for rank in range(t):
        depth, pose = depths[rank], camera_to_world[rank]
        if depth is None or not _finite_rigid(pose):
            continue
        depth = np.asarray(depth)
        depth_k = depth_ks[rank]
        if depth_k is None:
            fx, fy, cx, cy = image_ks[rank]
            sx, sy = depth.shape[1] / image_whs[rank][0], depth.shape[0] / image_whs[rank][1]
            depth_k = (fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5)
        points_cam, ok = depth_patch_points(depth, depth_k, image_ks[rank], image_whs[rank], grid)
        world[rank] = _to_world(points_cam, np.asarray(pose, np.float64).reshape(4, 4))
        valid[rank] = ok
    return _assemble(world, valid, camera_to_world[0] if t else None)


def manifest_patch_points(frame_rows: pa.Table, depths: Sequence[np.ndarray | None],
                          grid: int = PATCH_GRID) -> PatchPoints:
    """Depth points of a scene's manifest frames: ``frame_rows`` are its FRAMES_SCHEMA rows in rank order (poses
    and validity as the manifest gives them, intrinsics and image sizes as the scene's frames), ``depths`` their
    decoded upright depth maps (None where a frame has none)."""
    rows = frame_rows.select(["camera_to_world", "valid", "fx", "fy", "cx", "cy", "width", "height",
                              "depth_fx", "depth_fy", "depth_cx", "depth_cy"]).to_pylist()

    def k_of(row, prefix=""):
        k = tuple(float(row[f"{prefix}{n}"]) if row[f"{prefix}{n}"] is not None else float("nan")
                  for n in ("fx", "fy", "cx", "cy"))
        return k if np.isfinite(k).all() and k[0] > 0 and k[1] > 0 else None

    poses = [np.asarray(r["camera_to_world"], np.float64).reshape(4, 4) if r["valid"] else None for r in rows]
    image_ks = [k_of(r) for r in rows]
    # A frame without colour intrinsics has no patch grid to speak of: its points are invalid.
    usable = [k is not None and r["width"] > 0 and r["height"] > 0 for k, r in zip(image_ks, rows)]
    return frames_patch_points([d if ok else None for d, ok in zip(depths, usable)],
                               [k_of(r, "depth_") for r in rows],
                               [k if ok else (1.0, 1.0, 0.0, 0.0) for k, ok in zip(image_ks, usable)],
                               [(int(r["width"]), int(r["height"])) if ok else (1, 1) for r, ok in zip(rows, usable)],
                               poses, grid)


@dataclass(frozen=True)
class Cut3rGeometry:
    points: PatchPoints
    camera_to_world: np.ndarray  # [T, 4, 4] float64: the pose head's poses, in the frame of points.world
    frame: str                   # one of POINTS_FRAMES


def cut3r_geometry(points_cam0: np.ndarray, camera_poses_cam0: np.ndarray,
                   first_camera_to_world: np.ndarray | None) -> Cut3rGeometry:
    """CUT3R's point-head output [T, N, 3] and pose-head camera-to-world poses [T, 4, 4], both in the first frame's
    camera (the model's scale), in the stored layout: through the first manifest frame's sensor pose into the z-up
    world when it is finite and rigid, else with camera 0 as the world (see the module docstring). Points are valid
    where finite; the poses must be finite (the caller turns a diverged head into an error)."""
    points_cam0 = np.asarray(points_cam0, np.float64)
    poses = np.asarray(camera_poses_cam0, np.float64)
    if poses.shape != (points_cam0.shape[0], 4, 4):
        raise ValueError(f"expected one 4x4 pose per frame ({points_cam0.shape[0]}), got shape {list(poses.shape)}")
    valid = np.isfinite(points_cam0).all(axis=-1)
    safe = np.where(valid[..., None], points_cam0, 0.0)
    if not _finite_rigid(first_camera_to_world):
        points = PatchPoints(world=safe.astype(np.float32), cam0=safe.astype(np.float32), valid=valid)
        return Cut3rGeometry(points, poses, "camera0")
    c2w0 = np.asarray(first_camera_to_world, np.float64).reshape(4, 4)
    return Cut3rGeometry(_assemble(_to_world(safe, c2w0), valid, c2w0), c2w0 @ poses, "world_z_up")
