"""Hand-built scenes whose visibility is known by construction.

World: z-up, metres. A camera at (0.5, 1.5, 1.0) looks along +x (OpenCV axes: x right = world -y, y down = world -z,
z forward = world +x), 64x48 pixels, fx = fy = 40, cx = 31.5, cy = 23.5. In front of it a "chair" box
x in [1.5, 2.0], y in [1.25, 1.75], z in [0.5, 1.0] (its front face at depth 1.0 m covers pixel centres u 22..41,
v 24..43); a wall at x = 2.5 (depth 2.0 m) and a "table" box x in [3.0, 3.5], y in [2.0, 2.8] hidden behind it; a 4 m x 3 m floor.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.scene import CanonicalScene, frames_columns, objects_table
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns

W, H, F, CX, CY = 64, 48, 40.0, 31.5, 23.5
CAMERA_POS = np.array([0.5, 1.5, 1.0])
# Columns of the rotation = world directions of the camera x, y, z axes.
CAMERA_ROT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CHAIR = dict(lo=np.array([1.5, 1.25, 0.5]), hi=np.array([2.0, 1.75, 1.0]))
TABLE = dict(lo=np.array([3.0, 2.0, 0.0]), hi=np.array([3.5, 2.8, 0.75]))
WALL_X = 2.5
CHAIR_BBOX = [22, 24, 41, 43]


def camera_position(frame: int) -> np.ndarray:
    return CAMERA_POS - np.array([0.1 * frame, 0.0, 0.0])


def camera_to_world(position=CAMERA_POS) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = CAMERA_ROT
    c2w[:3, 3] = position
    return c2w


def analytic_depth(position=CAMERA_POS, width=W, height=H, fx=F, cx=CX, cy=CY, with_chair=True) -> np.ndarray:
    """The depth (m, along the optical axis) the camera measures: wall at 2.0 m, the floor below the horizon, the
    chair's front face at 1.0 m. Computed from the geometry, not by the rasteriser under test."""
    u, v = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    position = np.asarray(position, float)
    depth = np.full((height, width), WALL_X - position[0])
    below = v > cy
    floor = np.where(below, fx * position[2] / np.where(below, v - cy, 1.0), np.inf)   # ray meets z = 0
    depth = np.minimum(depth, floor)
    if with_chair:
        d = CHAIR["lo"][0] - position[0]
        x_cam, y_cam = (u - cx) / fx * d, (v - cy) / fx * d
        y_world, z_world = position[1] - x_cam, position[2] - y_cam
        on = ((y_world >= CHAIR["lo"][1]) & (y_world <= CHAIR["hi"][1])
              & (z_world >= CHAIR["lo"][2]) & (z_world <= CHAIR["hi"][2]))
        depth = np.where(on, d, depth)
    return depth.astype(np.float32)


def box_mesh(lo, hi):
    """8 corners and 12 triangles of an axis-aligned box."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [(q[0], q[1], q[2]) for q in quads] + [(q[0], q[2], q[3]) for q in quads]
    return corners, np.array(faces, np.int64)


def grid_mesh(x, y, z_of):
    """A triangulated grid; ``z_of(X, Y)`` gives the heights (or a plane in another orientation via the caller)."""
    xx, yy = np.meshgrid(x, y, indexing="ij")
    verts = np.stack([xx.ravel(), yy.ravel(), z_of(xx, yy).ravel()], axis=1)
    nx, ny = len(x), len(y)
    idx = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return verts, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def build_room_scene(num_frames: int = 4, scene_id: str = "scene0001_00", with_table: bool = True,
                     depth_paths: list[str] | None = None, objects=None, time_offset_s: float = 0.0) -> CanonicalScene:
    """The room above as a CanonicalScene; frames move the camera 0.1 m along -x per frame (all see the chair)."""
    floor_v, floor_f = grid_mesh(np.linspace(0, 4, 41), np.linspace(0, 3, 31), lambda X, Y: np.zeros_like(X))
    wall_yz_v, wall_f = grid_mesh(np.linspace(0, 3, 7), np.linspace(0, 2.5, 6), lambda Y, Z: np.full_like(Y, WALL_X))
    wall_v = wall_yz_v[:, [2, 0, 1]]                     # (y, z, x) grid -> world (x = wall, y, z)
    chair_v, chair_f = box_mesh(CHAIR["lo"], CHAIR["hi"])
    table_v, table_f = box_mesh(TABLE["lo"], TABLE["hi"])
    parts = [(floor_v, floor_f, -1), (wall_v, wall_f, -1), (chair_v, chair_f, 7)]
    if with_table:
        parts.append((table_v, table_f, 12))
    verts, faces, inst, offset = [], [], [], 0
    for v, f, i in parts:
        verts.append(v); faces.append(f + offset); inst.append(np.full(len(v), i)); offset += len(v)
    cols = frames_columns(num_frames)
    poses = np.stack([camera_to_world(camera_position(k)) for k in range(num_frames)])
    cols.update({
        "frame_index": np.arange(num_frames, dtype=np.int64) * 10, "timestamp": time_offset_s + np.arange(num_frames) * 0.5,
        "camera_to_world": poses.reshape(-1, 16), "valid": np.ones(num_frames, bool),
        "fx": np.full(num_frames, F), "fy": np.full(num_frames, F), "cx": np.full(num_frames, CX),
        "cy": np.full(num_frames, CY), "width": np.full(num_frames, W, np.int32),
        "height": np.full(num_frames, H, np.int32),
    })
    if depth_paths is not None:
        cols.update({"depth_kind": ["png_u16"] * num_frames, "depth_path": depth_paths,
                     "depth_width": np.full(num_frames, W, np.int32), "depth_height": np.full(num_frames, H, np.int32),
                     "depth_fx": np.full(num_frames, F), "depth_fy": np.full(num_frames, F),
                     "depth_cx": np.full(num_frames, CX), "depth_cy": np.full(num_frames, CY)})
    if objects is None:
        boxes = [(7, "chair", CHAIR)] + ([(12, "table", TABLE)] if with_table else [])
        objects = objects_table(
            [b[0] for b in boxes], [b[1] for b in boxes], [b[1] for b in boxes],
            [(b[2]["lo"] + b[2]["hi"]) / 2 for b in boxes], [b[2]["hi"] - b[2]["lo"] for b in boxes],
            [np.eye(3)] * len(boxes), [8] * len(boxes))
    return CanonicalScene(dataset="scannet", scene_id=scene_id, split="train",
                          frames=table_from_columns(FRAMES_SCHEMA, cols), objects=objects,
                          mesh_vertices=np.concatenate(verts), mesh_faces=np.concatenate(faces),
                          vertex_instance=np.concatenate(inst).astype(np.int64))


@pytest.fixture
def room_scene() -> CanonicalScene:
    return build_room_scene()


@pytest.fixture
def kit():
    """This module's helpers and constants (pytest's importlib mode cannot import conftest by name)."""
    import sys

    return sys.modules[__name__]
