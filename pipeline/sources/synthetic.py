"""Deterministic synthetic indoor scenes, written in the real raw formats of ScanNet, ScanNet++ and ARKitScenes.

:func:`generate_scene` builds a room (floor, walls, 5-15 furniture objects of distinct and repeated categories),
a camera path through it, and renders RGB, depth and instance masks from the mesh. The writers in
``pipeline.sources.<dataset>_writer`` turn a :class:`SyntheticScene` into that dataset's raw release layout, so
the real readers can be tested against the generator's ground truth and the demo runs on all three formats.

Conventions of the ground truth: z-up metric world, floor at z = 0; camera-to-world poses with an OpenCV camera
(x right, y down, z forward); boxes with rows as axes and full edge lengths.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
