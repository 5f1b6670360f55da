"""The task registry: every generated question family, its benchmark, and whether it is the benchmark's own form."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from qa_templates import regionbench, vsi_objects, vsi_relations, vsti_camera


@dataclass(frozen=True)
class TaskSpec:
    name: str
    bench: str                  # "vsibench", "vstibench" or "regionbench"
    benchmark_form: bool        # the benchmark's own question form (the only ones written for benchmark splits)
    generate: Callable          # generate(view_or_graph, rng, cfg, rejected) -> list[Candidate]


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("object_counting", "vsibench", True, vsi_objects.generate_counting),
    TaskSpec("object_abs_distance", "vsibench", True, vsi_objects.generate_abs_distance),
    TaskSpec("object_abs_distance_mc", "vsibench", False, partial(vsi_objects.generate_abs_distance, multiple_choice=True)),
    TaskSpec("object_size_estimation", "vsibench", True, vsi_objects.generate_size),
    TaskSpec("object_size_estimation_mc", "vsibench", False, partial(vsi_objects.generate_size, multiple_choice=True)),
    TaskSpec("room_size_estimation", "vsibench", True, vsi_objects.generate_room_size),
    TaskSpec("room_size_estimation_mc", "vsibench", False, partial(vsi_objects.generate_room_size, multiple_choice=True)),
    TaskSpec("object_rel_distance", "vsibench", True, vsi_relations.generate_rel_distance),
    TaskSpec("object_rel_distance_v2", "vsibench", False, partial(vsi_relations.generate_rel_distance, num_options=3)),
    TaskSpec("object_rel_distance_v3", "vsibench", False, partial(vsi_relations.generate_rel_distance, num_options=2)),
    TaskSpec("object_rel_direction_easy", "vsibench", True, partial(vsi_relations.generate_rel_direction, level="easy")),
    TaskSpec("object_rel_direction_medium", "vsibench", True,
             partial(vsi_relations.generate_rel_direction, level="medium")),
    TaskSpec("object_rel_direction_hard", "vsibench", True, partial(vsi_relations.generate_rel_direction, level="hard")),
    TaskSpec("obj_appearance_order", "vsibench", True, vsi_relations.generate_appearance_order),
    TaskSpec("camera_obj_abs_dist", "vstibench", True, vsti_camera.generate_cam_obj_abs_dist),
    TaskSpec("camera_obj_rel_dist_v1", "vstibench", True, vsti_camera.generate_cam_obj_rel_dist),
    TaskSpec("camera_obj_rel_dist_v2", "vstibench", True, partial(vsti_camera.generate_cam_obj_rel_dist, num_options=3)),
    TaskSpec("camera_obj_rel_dist_v3", "vstibench", True, partial(vsti_camera.generate_cam_obj_rel_dist, num_options=2)),
    TaskSpec("obj_obj_relative_pos_nf", "vstibench", True, partial(vsti_camera.generate_obj_obj_position, relation="nf")),
    TaskSpec("obj_obj_relative_pos_lr", "vstibench", True, partial(vsti_camera.generate_obj_obj_position, relation="lr")),
    TaskSpec("obj_obj_relative_pos_ud", "vstibench", True, partial(vsti_camera.generate_obj_obj_position, relation="ud")),
    TaskSpec("camera_displacement", "vstibench", True, vsti_camera.generate_displacement),
    TaskSpec("camera_movement_direction", "vstibench", True, vsti_camera.generate_movement_direction),
    TaskSpec("camera_movement_direction_v2", "vstibench", False,
             partial(vsti_camera.generate_movement_direction, num_options=3)),
    TaskSpec("camera_movement_direction_v3", "vstibench", False,
             partial(vsti_camera.generate_movement_direction, num_options=2)),
    TaskSpec("camera_obj_dist_change", "vstibench", True, vsti_camera.generate_cam_obj_dist_change),
    TaskSpec("region_distance", "regionbench", True, regionbench.generate_distance),
    TaskSpec("region_size", "regionbench", True, regionbench.generate_size),
    TaskSpec("region_closest", "regionbench", True, regionbench.generate_closest),
    TaskSpec("region_direction", "regionbench", True, regionbench.generate_direction),
    TaskSpec("region_vertical", "regionbench", True, regionbench.generate_vertical),
    TaskSpec("region_same_kind_count", "regionbench", True, regionbench.generate_same_kind_count),
    TaskSpec("region_camera_distance", "regionbench", True, regionbench.generate_camera_distance),
)
TASKS_BY_NAME = {t.name: t for t in TASKS}


def tasks_for(bench: str, benchmark_only: bool = False, names: list[str] | None = None) -> list[TaskSpec]:
    """The tasks of one bench in registry order; ``names`` (when not None) restricts them (unknown names raise)."""
    if names is not None:
        unknown = sorted(set(names) - set(TASKS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown task names {unknown}; known: {sorted(TASKS_BY_NAME)}")
    return [t for t in TASKS if t.bench == bench and (not benchmark_only or t.benchmark_form)
            and (names is None or t.name in names)]
