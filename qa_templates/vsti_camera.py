"""VSTI-Bench tasks (camera motion in static scenes). "frame k of N" is rank k-1 of the scene's frame manifest, the
frames the geometry tokens were extracted from; the camera centre is ``camera_to_world[:3, 3]``. Only frames with a
finite pose take part."""
from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np

from qa_templates.candidate import Candidate, reject
from qa_templates.config import QAConfig
from qa_templates.geometry import length, world_to_camera
from qa_templates.sampling import draw_budget, random_subsets
from qa_templates.scene_view import SceneView, as_view
from scene_graph.geometry import point_box_distance
from scene_graph.graph import SceneGraph

CAM_OBJ_ABS_TEMPLATE = ("What is the approximate distance (in meters) between the camera (or the person filming) and "
                        "the nearest point of the {object} in {frame}?")
CAM_OBJ_REL_TEMPLATE = ("Measuring from the closest point of each object, which of these objects ({choices}) is the "
                        "closest to the camera in {frame}?")
OBJ_OBJ_TEMPLATES = {
    "nf": "In {frame}, relative to the camera, is the {a} [Near/Far] compared to the {b}?",
    "lr": "In {frame}, relative to the {b}, is the {a} to the [Left/Right]?",
    "ud": "In {frame}, relative to the {b}, is the {a} to the [Up/Down]?",
}
# Camera axis per relation (OpenCV: x right, y down, z forward) and the words for "A is on the low / high side of B".
OBJ_OBJ_AXIS = {"lr": (0, "Left", "Right"), "ud": (1, "Up", "Down"), "nf": (2, "Near", "Far")}
DISPLACEMENT_TEMPLATE = "Approximately how far (in meters) did the camera move between {start} and {end}?"
MOVEMENT_TEMPLATE = ("During the sequence between {start} and {end}, what was the primary consistent direction of the "
                     "camera's movement relative to its orientation at the start? The options are {choices}.")
MOVEMENT_OPTIONS = ["Forward", "Backward", "Left", "Right"]
DIST_CHANGE_TEMPLATE = ("By how much (in meters) did the distance between the camera (or the person filming) and the "
                        "nearest point of the {object} change between {start} and {end}?")


def _valid_frames(view: SceneView, rejected: Counter | None) -> np.ndarray:
    frames = np.flatnonzero(view.frame_valid)
    reject(rejected, "frame without a finite pose", int(view.num_frames - len(frames)))
    return frames


def _unique_visible(view: SceneView, frame: int, unique: set[int]) -> list[int]:
    return [int(r) for r in view.visible.get(int(view.frame_rank[frame]), ()) if int(r) in unique]


def _camera_object_m(view: SceneView, frame: int, row: int) -> float:
    return float(point_box_distance(view.camera_centre(frame), view.centroid[row], view.lengths[row], view.axes[row]))


def generate_cam_obj_abs_dist(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                              rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    unique = set(view.unique_rows().tolist())
    pairs = [(f, r) for f in _valid_frames(view, rejected).tolist() for r in _unique_visible(view, f, unique)]
    out: list[Candidate] = []
    for k in rng.permutation(len(pairs)):
        frame, row = pairs[k]
        d_m = _camera_object_m(view, frame, row)
        if not cfg.cam_obj_min_m <= d_m <= cfg.cam_obj_max_m:
            reject(rejected, f"camera-object distance outside [{cfg.cam_obj_min_m}, {cfg.cam_obj_max_m}] m")
            continue
        out.append(Candidate("camera_obj_abs_dist",
                             CAM_OBJ_ABS_TEMPLATE.format(object=view.category[row], frame=view.frame_label(frame)),
                             round(d_m, 1), d_m, object_ids=(int(view.instance_id[row]),),
                             frame_ranks=(int(view.frame_rank[frame]),), categories=(view.category[row],)))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def generate_cam_obj_rel_dist(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                              rejected: Counter | None = None, num_options: int = 4) -> list[Candidate]:
    """At most one question per frame, so the questions spread over the video."""
    view = as_view(graph)
    unique = set(view.unique_rows().tolist())
    limit = cfg.max_per_scene_task
    out: list[Candidate] = []
    frames = _valid_frames(view, rejected)
    for frame in frames[rng.permutation(len(frames))].tolist():
        visible = _unique_visible(view, frame, unique)
        if len(visible) < num_options:
            reject(rejected, f"fewer than {num_options} unique objects visible in the frame")
            continue
        for chosen in random_subsets(rng, visible, num_options, draw_budget(limit)):
            d_m = np.array([_camera_object_m(view, frame, r) for r in chosen])
            best = int(np.argmin(d_m))
            if d_m[best] < cfg.cam_rel_min_nearest_m:
                reject(rejected, f"nearest object closer than {cfg.cam_rel_min_nearest_m} m")
                continue
            if np.diff(np.sort(d_m)).min() <= cfg.cam_rel_ambiguity_m:
                reject(rejected, f"two object distances within {cfg.cam_rel_ambiguity_m} m")
                continue
            names = [view.category[r] for r in chosen]
            question = CAM_OBJ_REL_TEMPLATE.replace("{frame}", view.frame_label(frame))
            out.append(Candidate(f"camera_obj_rel_dist_v{5 - num_options}", question, names[best], float(d_m[best]),
                                 options=[names[best]] + [n for i, n in enumerate(names) if i != best],
                                 object_ids=tuple(int(view.instance_id[r]) for r in chosen),
                                 frame_ranks=(int(view.frame_rank[frame]),), categories=tuple(names)))
            break
        if limit and len(out) >= limit:
            break
    return out


def generate_obj_obj_position(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                              rejected: Counter | None = None, relation: str = "lr") -> list[Candidate]:
    """A is wholly on one side of B along one camera axis of frame k, by at least the margin."""
    view = as_view(graph)
    axis, low_word, high_word = OBJ_OBJ_AXIS[relation]
    unique = set(view.unique_rows().tolist())
    items = [(f, a, b) for f in _valid_frames(view, rejected).tolist()
             for a, b in combinations(_unique_visible(view, f, unique), 2)]
    out: list[Candidate] = []
    for k in rng.permutation(len(items)):
        frame, a, b = items[k]
        if rng.random() < 0.5:          # which object is "A" is a coin flip, so the order is no cue
            a, b = b, a
        ca = world_to_camera(view.corners(a), view.camera_to_world[frame])[:, axis]
        cb = world_to_camera(view.corners(b), view.camera_to_world[frame])[:, axis]
        if cb.min() - ca.max() > cfg.obj_obj_margin_m:
            answer, other, gap_m = low_word, high_word, float(cb.min() - ca.max())
        elif ca.min() - cb.max() > cfg.obj_obj_margin_m:
            answer, other, gap_m = high_word, low_word, float(ca.min() - cb.max())
        else:
            reject(rejected, f"objects not separated by {cfg.obj_obj_margin_m} m along the axis")
            continue
        question = OBJ_OBJ_TEMPLATES[relation].format(frame=view.frame_label(frame), a=view.category[a],
                                                      b=view.category[b])
        out.append(Candidate(f"obj_obj_relative_pos_{relation}", question, answer, gap_m, options=[answer, other],
                             object_ids=(int(view.instance_id[a]), int(view.instance_id[b])),
                             frame_ranks=(int(view.frame_rank[frame]),),
                             categories=(view.category[a], view.category[b])))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def _frame_pairs(view: SceneView, frames: np.ndarray, cfg: QAConfig, limited_gap: bool) -> list[tuple[int, int]]:
    pairs = []
    for i, j in combinations(frames.tolist(), 2):
        gap = int(view.frame_rank[j] - view.frame_rank[i])
        if not limited_gap or cfg.displacement_min_gap <= gap <= cfg.displacement_max_gap:
            pairs.append((i, j))
    return pairs


def generate_displacement(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                          rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    pairs = _frame_pairs(view, _valid_frames(view, rejected), cfg, limited_gap=True)
    if not pairs:
        reject(rejected, f"no frame pair {cfg.displacement_min_gap}-{cfg.displacement_max_gap} frames apart")
    out: list[Candidate] = []
    for k in rng.permutation(len(pairs)):
        i, j = pairs[k]
        d_m = length(view.camera_centre(j) - view.camera_centre(i))
        if not cfg.displacement_min_m <= d_m <= cfg.displacement_max_m:
            reject(rejected, f"displacement outside [{cfg.displacement_min_m}, {cfg.displacement_max_m}] m")
            continue
        out.append(Candidate("camera_displacement",
                             DISPLACEMENT_TEMPLATE.format(start=view.frame_label(i), end=view.frame_label(j)),
                             round(d_m, 1), d_m, frame_ranks=(int(view.frame_rank[i]), int(view.frame_rank[j]))))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def movement_direction(displacement_cam: np.ndarray, threshold_m: float, dominance_m: float) -> str | None:
    """Forward/Backward/Left/Right from a displacement in the start camera's axes (x right, z forward; y ignored),
    None when neither horizontal component exceeds the threshold or the two are too close to call."""
    dx, dz = float(displacement_cam[0]), float(displacement_cam[2])
    x_big, z_big = abs(dx) > threshold_m, abs(dz) > threshold_m
    if not (x_big or z_big):
        return None
    if x_big and z_big and abs(abs(dz) - abs(dx)) < dominance_m:
        return None
    if abs(dz) >= abs(dx):
        return "Forward" if dz > 0 else "Backward"
    return "Right" if dx > 0 else "Left"


def generate_movement_direction(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                                rejected: Counter | None = None, num_options: int = 4) -> list[Candidate]:
    view = as_view(graph)
    threshold_m = cfg.movement_threshold_4_m if num_options == 4 else cfg.movement_threshold_m
    question_type = "camera_movement_direction" if num_options == 4 else f"camera_movement_direction_v{5 - num_options}"
    pairs = _frame_pairs(view, _valid_frames(view, rejected), cfg, limited_gap=False)
    out: list[Candidate] = []
    for k in rng.permutation(len(pairs)):
        i, j = pairs[k]
        start = view.camera_to_world[i]
        displacement_cam = (view.camera_centre(j) - view.camera_centre(i)) @ start[:3, :3]   # = R_i^T (c_j - c_i)
        answer = movement_direction(displacement_cam, threshold_m, cfg.movement_dominance_m)
        if answer is None:
            reject(rejected, f"no dominant horizontal movement beyond {threshold_m} m")
            continue
        wrong = [o for o in MOVEMENT_OPTIONS if o != answer]
        distractors = [wrong[t] for t in rng.choice(len(wrong), size=num_options - 1, replace=False)]
        out.append(Candidate(question_type,
                             MOVEMENT_TEMPLATE.replace("{start}", view.frame_label(i)).replace("{end}", view.frame_label(j)),
                             answer, length(displacement_cam[[0, 2]]), options=[answer] + distractors,
                             frame_ranks=(int(view.frame_rank[i]), int(view.frame_rank[j])), choice_join="sentence"))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def generate_cam_obj_dist_change(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                                 rejected: Counter | None = None) -> list[Candidate]:
    """The absolute change of the camera-to-object distance between frames i and j (announced by VSTI-Bench's
    evaluator, never shipped by VLM-3R). The object must be visible in at least one of the two frames."""
    view = as_view(graph)
    unique = set(view.unique_rows().tolist())
    items = [(i, j, r) for i, j in _frame_pairs(view, _valid_frames(view, rejected), cfg, limited_gap=True)
             for r in sorted(set(_unique_visible(view, i, unique)) | set(_unique_visible(view, j, unique)))]
    out: list[Candidate] = []
    for k in rng.permutation(len(items)):
        i, j, row = items[k]
        d_i, d_j = _camera_object_m(view, i, row), _camera_object_m(view, j, row)
        if not (cfg.cam_obj_min_m <= min(d_i, d_j) and max(d_i, d_j) <= cfg.cam_obj_max_m):
            reject(rejected, f"camera-object distance outside [{cfg.cam_obj_min_m}, {cfg.cam_obj_max_m}] m")
            continue
        change_m = abs(d_j - d_i)
        if change_m < cfg.dist_change_min_m:
            reject(rejected, f"distance change below {cfg.dist_change_min_m} m")
            continue
        out.append(Candidate("camera_obj_dist_change",
                             DIST_CHANGE_TEMPLATE.format(object=view.category[row], start=view.frame_label(i),
                                                         end=view.frame_label(j)),
                             round(change_m, 1), change_m, object_ids=(int(view.instance_id[row]),),
                             frame_ranks=(int(view.frame_rank[i]), int(view.frame_rank[j])),
                             categories=(view.category[row],)))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out
