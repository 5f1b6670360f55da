"""VSI-Bench relation tasks: object_rel_distance (4/3/2 options), object_rel_direction_easy/medium/hard,
obj_appearance_order."""
from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from qa_templates.candidate import Candidate, reject
from qa_templates.config import QAConfig
from qa_templates.geometry import floor_angle_deg, length
from qa_templates.sampling import draw_budget, random_subsets
from qa_templates.scene_view import SceneView, as_view
from scene_graph.graph import SceneGraph

REL_DISTANCE_TEMPLATE = ("Measuring from the closest point of each object, which of these objects ({choices}) is the "
                         "closest to the {category}? If there are multiple instances of an object category, measure "
                         "to the closest.")
_STANDING = "If I am standing by the {positioning} and facing the {orienting}, "
DIRECTION_TEMPLATES = {
    "hard": _STANDING + ("is the {querying} to my front-left, front-right, back-left, or back-right? The directions "
                         "refer to the quadrants of a Cartesian plane (if I am standing at the origin and facing along "
                         "the positive y-axis)."),
    "medium": _STANDING + ("is the {querying} to my left, right, or back? An object is to my back if I would have to "
                           "turn at least 135 degrees in order to face it."),
    "easy": _STANDING + "is the {querying} to the left or the right of the {orienting}?",
}
# Sectors of the counter-clockwise angle from the facing direction (0-180 = left half on a z-up floor). The easy level
# uses the medium level's sectors and asks nothing about an object in the back sector (turn of 135 degrees or more),
# which is neither clearly left nor clearly right (as VLM-3R's left/right generator does).
DIRECTION_SECTORS = {
    "hard": (np.array([0.0, 90.0, 180.0, 270.0, 360.0]), ["front-left", "back-left", "back-right", "front-right"]),
    "medium": (np.array([0.0, 135.0, 225.0, 360.0]), ["left", "back", "right"]),
    "easy": (np.array([0.0, 135.0, 225.0, 360.0]), ["left", None, "right"]),
}
DIRECTION_OPTIONS = {
    "hard": ["front-left", "front-right", "back-left", "back-right"],
    "medium": ["left", "right", "back"],
    "easy": ["left", "right"],
}
APPEARANCE_TEMPLATE = ("What will be the first-time appearance order of the following categories in the video: "
                       "{a}, {b}, {c}, {d}?")


def generate_rel_distance(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                          rejected: Counter | None = None, num_options: int = 4) -> list[Candidate]:
    view = as_view(graph)
    question_type = "object_rel_distance" if num_options == 4 else f"object_rel_distance_v{5 - num_options}"
    categories = sorted(view.category_counts)
    area = float(view.room.get("floor_area_m2") or 0.0)
    gap_m = cfg.rel_distance_ambiguity_large_room_m if area > cfg.large_room_m2 else cfg.rel_distance_ambiguity_m
    limit = cfg.max_per_scene_task
    # Targets are unique objects; candidates are any other categories (measured to their closest instance).
    targets = view.unique_rows().tolist()
    if len(targets) == 0 or len(categories) < num_options + 1:
        reject(rejected, f"fewer than {num_options + 1} categories or no unique target")
        return []
    out: list[Candidate] = []
    per_target = [list(random_subsets(rng, [c for c in categories if c != view.category[t]], num_options,
                                      draw_budget(limit))) for t in targets]
    order = [(ti, si) for ti in range(len(targets)) for si in range(len(per_target[ti]))]
    for k in rng.permutation(len(order)):
        ti, si = order[k]
        target, chosen = targets[ti], per_target[ti][si]
        nearest_rows = [view.rows_of(c)[np.argmin(view.distances[target, view.rows_of(c)])] for c in chosen]
        dist_m = np.array([view.distances[target, r] for r in nearest_rows])
        best = int(np.argmin(dist_m))
        if dist_m[best] < cfg.rel_distance_min_nearest_m:
            reject(rejected, f"nearest candidate closer than {cfg.rel_distance_min_nearest_m} m")
            continue
        if np.diff(np.sort(dist_m)).min() <= gap_m:
            reject(rejected, f"two candidate distances within {gap_m} m")
            continue
        others = [c for i, c in enumerate(chosen) if i != best]
        out.append(Candidate(question_type, REL_DISTANCE_TEMPLATE.replace("{category}", view.category[target]),
                             chosen[best], float(dist_m[best]), options=[chosen[best]] + others,
                             object_ids=(int(view.instance_id[target]),) + tuple(int(view.instance_id[r]) for r in nearest_rows),
                             categories=(view.category[target],) + tuple(chosen)))
        if limit and len(out) >= limit:
            break
    return out


def _sector(angle_deg: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(bounds, angle_deg, side="right") - 1, 0, len(bounds) - 2)


def generate_rel_direction(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                           rejected: Counter | None = None, level: str = "hard") -> list[Candidate]:
    view = as_view(graph)
    bounds, labels = DIRECTION_SECTORS[level]
    unique = view.unique_rows().tolist()
    if len(unique) < 3:
        reject(rejected, "fewer than 3 unique objects")
        return []
    limit = cfg.max_per_scene_task
    out: list[Candidate] = []
    for triple in random_subsets(rng, unique, 3, draw_budget(limit)):
        pair_d = [view.distances[a, b] for a, b in ((triple[0], triple[1]), (triple[0], triple[2]), (triple[1], triple[2]))]
        if min(pair_d) < cfg.direction_min_distance_m or max(pair_d) > cfg.direction_max_distance_m:
            reject(rejected, f"object distances outside [{cfg.direction_min_distance_m}, {cfg.direction_max_distance_m}] m")
            continue
        for p_index in rng.permutation(6):
            positioning, orienting, querying = list(permutations(triple))[int(p_index)]
            origin = view.centroid[positioning]
            facing = view.centroid[orienting]
            if length(facing[:2] - origin[:2]) < 1e-6:
                reject(rejected, "positioning and orienting objects at the same floor position")
                continue
            points = np.vstack([view.centroid[querying][None], view.corners(querying)])   # [9, 3]: centroid, corners
            angles = floor_angle_deg(origin, facing, points)
            sectors = _sector(angles, bounds)
            if np.count_nonzero(sectors[1:] != sectors[0]) > cfg.direction_max_straddling_corners:
                reject(rejected, "queried box straddles direction sectors")
                continue
            if np.abs(angles[0] - bounds).min() < cfg.direction_boundary_deg:     # bounds include 0 and 360
                reject(rejected, f"within {cfg.direction_boundary_deg} degrees of a sector boundary")
                continue
            answer = labels[int(sectors[0])]
            if answer is None:
                reject(rejected, "queried object behind: neither left nor right")
                continue
            names = dict(positioning=view.category[positioning], orienting=view.category[orienting],
                         querying=view.category[querying])
            out.append(Candidate(f"object_rel_direction_{level}", DIRECTION_TEMPLATES[level].format(**names), answer,
                                 float(angles[0]), options=[answer] + [o for o in DIRECTION_OPTIONS[level] if o != answer],
                                 object_ids=tuple(int(view.instance_id[r]) for r in (positioning, orienting, querying)),
                                 categories=(names["positioning"], names["orienting"], names["querying"])))
            if limit and len(out) >= limit:
                return out
    return out


def generate_appearance_order(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                              rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    first_s = view.first_appearance_s(cfg.min_visible_pixels)
    categories = sorted(first_s)
    if len(categories) < 4:
        reject(rejected, "fewer than 4 categories with a first appearance")
        return []
    limit = cfg.max_per_scene_task
    out: list[Candidate] = []
    for chosen in random_subsets(rng, categories, 4, draw_budget(limit)):
        ordered = sorted(chosen, key=lambda c: (first_s[c], c))
        times = np.array([first_s[c] for c in ordered])
        if np.diff(times).min() <= cfg.appearance_min_gap_s:      # VLM-3R: any two within the margin -> skip
            reject(rejected, f"first appearances not more than {cfg.appearance_min_gap_s} s apart")
            continue
        correct = ", ".join(ordered)
        distractors: list[str] = []
        for _ in range(100):
            text = ", ".join(ordered[i] for i in rng.permutation(4))
            if text != correct and text not in distractors:
                distractors.append(text)
            if len(distractors) == 3:
                break
        mention = [chosen[i] for i in rng.permutation(4)]
        out.append(Candidate("obj_appearance_order",
                             APPEARANCE_TEMPLATE.format(a=mention[0], b=mention[1], c=mention[2], d=mention[3]),
                             correct, float(times[-1] - times[0]), options=[correct] + distractors,
                             object_ids=tuple(int(i) for c in ordered for i in view.instance_id[view.rows_of(c)]),
                             categories=tuple(ordered)))
        if limit and len(out) >= limit:
            break
    return out
