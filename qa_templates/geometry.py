"""QA-specific geometry on top of :mod:`scene_graph.geometry` (boxes, distances and bearings live there)."""
from __future__ import annotations

import numpy as np

from scene_graph.geometry import relative_bearing_deg


def floor_angle_deg(position, facing_point, target) -> np.ndarray:
    """Counter-clockwise floor angle in [0, 360) from the facing direction to ``target`` (z-up): standing at
    ``position`` and facing ``facing_point``, 0-180 is the left half-plane and 180-360 the right one (the angle
    convention of VLM-3R's direction generators, whose sectors we keep)."""
    return np.mod(relative_bearing_deg(position, facing_point, target), 360.0)


def world_to_camera(points, camera_to_world: np.ndarray) -> np.ndarray:
    """World points [..., 3] in the camera frame of a 4x4 camera-to-world pose (OpenCV: x right, y down, z forward).
    The camera centre is the pose's translation ``camera_to_world[:3, 3]``."""
    rotation = camera_to_world[:3, :3]
    return (np.asarray(points, dtype=np.float64) - camera_to_world[:3, 3]) @ rotation


def length(vector) -> float:
    """Euclidean length of one vector, summed in index order. ``np.linalg.norm`` of a 1-D vector switched to a dot
    product (BLAS, fused multiply-adds) in NumPy 2.4, which moves the last bit of some answers; an explicit sum of
    squares gives the same bits on every NumPy."""
    v = np.asarray(vector, dtype=np.float64)
    return float(np.sqrt(np.sum(v * v)))
