"""VSI-Bench object tasks: object_counting, object_abs_distance, object_size_estimation, room_size_estimation
(the last three also in their 4-option form, as in VLM-3R's training data)."""
from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np

from qa_templates.candidate import Candidate, reject
from qa_templates.config import QAConfig
from qa_templates.options import format_number, numeric_options
from qa_templates.scene_view import SceneView, as_view
from scene_graph.graph import SceneGraph

COUNT_TEMPLATE = "How many {category}(s) are in this room?"
ABS_DISTANCE_TEMPLATE = ("Measuring from the closest point of each object, what is the direct distance between the "
                         "{object1} and the {object2} (in meters)?")
SIZE_TEMPLATE = ("What is the length of the longest dimension (length, width, or height) of the {category}, "
                 "measured in centimeters?")
ROOM_SIZE_TEMPLATE = ("What is the size of this room (in square meters)? If multiple rooms are shown, estimate the "
                      "size of the combined space.")


def _with_options(c: Candidate, rng: np.random.Generator, cfg: QAConfig, rejected: Counter | None,
                  decimals: int, value_range: tuple[float, float]) -> Candidate | None:
    """The 4-option form of a numeric question: the rounded truth and three distractors."""
    truth = float(c.answer)
    distractors = numeric_options(truth, rng, value_range[0], value_range[1], cfg.option_margin_frac, decimals,
                                  cfg.option_max_resamples)
    if distractors is None:
        reject(rejected, "distractors too close to each other or to the answer")
        return None
    correct = format_number(truth, decimals)
    c.question_type += "_mc"
    c.answer = correct
    c.options = [correct] + [format_number(v, decimals) for v in distractors]
    return c


def generate_counting(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                      rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    out = []
    for category, count in sorted(view.category_counts.items()):
        if count < cfg.min_count:
            reject(rejected, "category with a single instance")
            continue
        rows = view.rows_of(category)
        out.append(Candidate("object_counting", COUNT_TEMPLATE.format(category=category), int(count), float(count),
                             object_ids=tuple(int(i) for i in view.instance_id[rows]), categories=(category,)))
    return out


def generate_abs_distance(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                          rejected: Counter | None = None, multiple_choice: bool = False) -> list[Candidate]:
    view = as_view(graph)
    unique = view.unique_rows()
    out = []
    for a, b in combinations(unique.tolist(), 2):
        distance_m = float(view.distances[a, b])
        if distance_m < cfg.min_abs_distance_m:
            reject(rejected, f"objects closer than {cfg.min_abs_distance_m} m")
            continue
        # Which object is named first is a coin flip, so neither order is a cue.
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        c = Candidate("object_abs_distance",
                      ABS_DISTANCE_TEMPLATE.format(object1=view.category[first], object2=view.category[second]),
                      round(distance_m, 1), distance_m,
                      object_ids=(int(view.instance_id[first]), int(view.instance_id[second])),
                      categories=(view.category[first], view.category[second]))
        if multiple_choice:
            c = _with_options(c, rng, cfg, rejected, 1, cfg.option_range)
        if c is not None:
            out.append(c)
    return out


def generate_size(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                  rejected: Counter | None = None, multiple_choice: bool = False) -> list[Candidate]:
    view = as_view(graph)
    out = []
    for row in view.unique_rows().tolist():
        longest_cm = float(view.lengths[row].max()) * 100.0
        if round(longest_cm) < 1:
            reject(rejected, "object smaller than 1 cm")
            continue
        c = Candidate("object_size_estimation", SIZE_TEMPLATE.format(category=view.category[row]),
                      int(round(longest_cm)), longest_cm, object_ids=(int(view.instance_id[row]),),
                      categories=(view.category[row],))
        if multiple_choice:
            c = _with_options(c, rng, cfg, rejected, 0, cfg.size_option_range)
        if c is not None:
            out.append(c)
    return out


def generate_room_size(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                       rejected: Counter | None = None, multiple_choice: bool = False) -> list[Candidate]:
    view = as_view(graph)
    area = view.room.get("floor_area_m2")
    if area is None or not np.isfinite(area) or round(float(area), 1) <= 0:
        reject(rejected, "no positive floor area in room.json")
        return []
    c = Candidate("room_size_estimation", ROOM_SIZE_TEMPLATE, round(float(area), 1), float(area))
    if multiple_choice:
        c = _with_options(c, rng, cfg, rejected, 1, cfg.option_range)
    return [c] if c is not None else []
