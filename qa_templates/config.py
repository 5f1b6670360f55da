"""Thresholds and caps of the QA generation, in one frozen dataclass (defaults = the published benchmarks' values)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

TEMPLATE_VERSION = 1


@dataclass(frozen=True)
class QAConfig:
    # ---- VSI-Bench -------------------------------------------------------------------------------------------
    min_count: int = 2                         # object_counting: categories with at least this many instances
    min_abs_distance_m: float = 0.2            # object_abs_distance: skip closer pairs
    rel_distance_min_nearest_m: float = 0.15   # object_rel_distance: nearest candidate at least this far
    rel_distance_ambiguity_m: float = 0.15     # candidate distances must differ by more than this ...
    rel_distance_ambiguity_large_room_m: float = 0.30  # ... or this when the room is larger than:
    large_room_m2: float = 40.0
    direction_min_distance_m: float = 0.30     # object_rel_direction: pairwise box distances in [min, max]
    direction_max_distance_m: float = 5.0
    direction_boundary_deg: float = 10.0       # skip when the query is this close to a sector boundary
    direction_max_straddling_corners: int = 2  # skip when more corners than this lie in another sector
    appearance_min_gap_s: float = 1.0          # obj_appearance_order: first appearances more than this apart
    size_option_range: tuple[float, float] = (0.4, 1.8)     # distractors for sizes (fraction of the truth)
    option_range: tuple[float, float] = (0.25, 1.75)        # distractors for distances and room sizes
    option_margin_frac: float = 0.20           # numeric options differ from each other by this fraction of the truth
    option_max_resamples: int = 30
    # ---- VSTI-Bench ------------------------------------------------------------------------------------------
    cam_obj_min_m: float = 0.2                 # camera_obj_abs_dist range
    cam_obj_max_m: float = 10.0
    cam_rel_min_nearest_m: float = 0.5         # camera_obj_rel_dist: nearest object at least this far
    cam_rel_ambiguity_m: float = 0.15
    obj_obj_margin_m: float = 0.15             # obj_obj_relative_pos: wholly nearer/left/above by this margin
    displacement_min_gap: int = 5              # camera_displacement / dist_change: frame gap range (ranks)
    displacement_max_gap: int = 30
    displacement_min_m: float = 0.2
    displacement_max_m: float = 10.0
    movement_threshold_4_m: float = 1.0        # camera_movement_direction, 4 options
    movement_threshold_m: float = 0.5          # 3 and 2 options
    movement_dominance_m: float = 0.15         # forward/back vs left/right must differ by this (else ambiguous)
    dist_change_min_m: float = 0.2             # camera_obj_dist_change: |change| at least this
    min_visible_pixels: int = 1                # an object "appears" in a frame with at least this many pixels
    # ---- regionbench (SR-3D style; docs qa_tasks.md "Region tasks") -----------------------------------------
    # region_camera_distance keeps camera-object distances in [cam_obj_min_m, cam_obj_max_m] (VSTI's range).
    region_min_distance_m: float = 0.2         # region_distance: skip closer pairs (MRA needs a positive answer)
    region_closest_gap_m: float = 0.15         # region_closest: the two smallest distances differ by at least this
    region_direction_boundary_deg: float = 10.0  # region_direction: skip within this of 0/135/225 degrees
    region_vertical_gap_m: float = 0.1         # region_vertical: one bottom at least this above the other's top
    region_prompt_min_fraction: float = 0.5    # a region prompt prefers frames where the object is untruncated
                                               # and at least this fraction visible (any frame when none is)
    # ---- caps ------------------------------------------------------------------------------------------------
    # Per (scene, task), as VLM-3R's num_subsample (6). Per task and split over the whole run, chosen so that the
    # full training splits (ScanNet 1,201 + ScanNet++ 856 + ARKitScenes ~4,500 scans, each task able to fill
    # 6 x 6,500 = 39K) give about 12 x 16K + 2 x 6.5K (room size, one per scene) ~ 205K VSI-Bench-style and
    # 12 x 11K ~ 132K VSTI-Bench-style questions. Estimates: a task that cannot fill its cap gives fewer.
    max_per_scene_task: int = 6
    max_per_task_vsibench: int = 16_000        # 0 = no cap
    max_per_task_vstibench: int = 11_000       # 0 = no cap
    max_per_task_regionbench: int = 11_000     # 0 = no cap

    def max_per_task(self, bench: str) -> int:
        return {"vsibench": self.max_per_task_vsibench, "vstibench": self.max_per_task_vstibench,
                "regionbench": self.max_per_task_regionbench}[bench]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"QAConfig.{f.name} must be >= 0, got {value}")
        for name in ("size_option_range", "option_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < 1 < hi:
                raise ValueError(f"QAConfig.{name} must satisfy 0 < low < 1 < high, got {(lo, hi)}")
        if self.direction_min_distance_m >= self.direction_max_distance_m:
            raise ValueError("QAConfig.direction_min_distance_m must be below direction_max_distance_m")
        if self.displacement_min_gap > self.displacement_max_gap:
            raise ValueError("QAConfig.displacement_min_gap must not exceed displacement_max_gap")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
