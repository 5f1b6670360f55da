"""regionbench: region-prompted spatial questions over the whole video (SR-3D style).

Every object is named ``Region [i]`` (i = its order of mention) and carries one region prompt: a manifest frame in
which it is visible, with its box and COCO RLE mask there (the graph's ``regions.parquet``, see
:mod:`scene_graph.regions`). Any object with a region can be asked about, unique in its category or not. The prompt's
frame is drawn (seeded) among the object's frames where it is untruncated and at least
``QAConfig.region_prompt_min_fraction`` visible, or among all its frames when it has none such.

Questions about two or more regions are examined in random order and split into those whose instances are never
all visible in the same manifest frame (no frame of the visibility table shows all of them; for two regions: the two
are never seen together) and the others; a task keeps at most as many of the others as of the former, so at least
half of its multi-region questions are about instances that no single frame shows together. Each record carries the
largest number of its instances that one frame shows (``max_regions_per_frame``), so stricter shares (e.g. no two of
them ever together: 1) can be counted from the records.

Answer rules and thresholds (docs/qa_tasks.md, "Region tasks"), distances and sizes from the oriented 3D boxes:

- region_distance (m, 1 decimal): closest-point distance of the two solid boxes; pairs closer than
  ``region_min_distance_m`` are skipped (the rounded answer must stay positive for MRA).
- region_size (cm, integer): the longest box edge.
- region_closest (2-4 options): which region's box is nearest to Region [0]'s; skipped when the two smallest distances
  differ by less than ``region_closest_gap_m``.
- region_direction (left / right / behind): standing at Region [0]'s centroid facing Region [1]'s, the floor-plane
  angle to Region [2]'s centroid, counter-clockwise from the facing direction: [0, 135) left, [135, 225) behind,
  [225, 360) right (VSI-Bench medium); skipped within ``region_direction_boundary_deg`` of 0, 135, 225 degrees.
- region_vertical (above / below): Region [0] is above Region [1] when its box bottom is at least
  ``region_vertical_gap_m`` above the other's top, below in the mirrored case; anything else is skipped.
- region_same_kind_count (integer): objects of Region [0]'s category in the room, Region [0] included (one question
  per category; structural categories are not objects of the QA, see ``scene_view.EXCLUDED_CATEGORIES``).
- region_camera_distance (m, 1 decimal): from the camera centre of frame k of N to the closest point of Region [0]'s
  box, within [``cam_obj_min_m``, ``cam_obj_max_m``] (VSTI-Bench's camera_obj_abs_dist range); any valid frame.
"""
from __future__ import annotations

from collections import Counter
from itertools import combinations, permutations
from typing import Any, Iterator, Sequence

import numpy as np

from qa_templates.candidate import Candidate, reject
from qa_templates.config import QAConfig
from qa_templates.geometry import floor_angle_deg, length
from qa_templates.sampling import draw_budget, random_subsets
from qa_templates.scene_view import SceneView, as_view
from scene_graph.geometry import point_box_distance
from scene_graph.graph import SceneGraph

DISTANCE_TEMPLATE = ("Measuring from the closest point of each object, what is the direct distance between Region [0] "
                     "and Region [1] (in meters)?")
SIZE_TEMPLATE = ("What is the length of the longest dimension (length, width, or height) of Region [0], measured in "
                 "centimeters?")
CLOSEST_TEMPLATE = ("Measuring from the closest point of each object, which of these regions is the closest to "
                    "Region [0]?")
DIRECTION_TEMPLATE = ("If I am standing by Region [0] and facing Region [1], is Region [2] to my left, right, or "
                      "behind me? Region [2] is behind me if I would have to turn at least 135 degrees in order to "
                      "face it.")
VERTICAL_TEMPLATE = "Is Region [0] above or below Region [1]?"
SAME_KIND_TEMPLATE = "How many objects of the same kind as Region [0] are in this room, Region [0] included?"
CAMERA_DISTANCE_TEMPLATE = ("What is the approximate distance (in meters) between the camera (or the person filming) "
                            "in {frame} and the nearest point of Region [0]?")
# Counter-clockwise sector bounds from the facing direction and their answers (VSI-Bench medium).
DIRECTION_BOUNDS = np.array([0.0, 135.0, 225.0, 360.0])
DIRECTION_LABELS = ("left", "behind", "right")
DIRECTION_OPTIONS = ("left", "right", "behind")
VERTICAL_OPTIONS = ("above", "below")


def region_name(index: int) -> str:
    return f"Region [{index}]"


def region_prompt(view: SceneView, row: int, rng: np.random.Generator, cfg: QAConfig) -> dict[str, Any]:
    """One region prompt of object ``row`` (see the module docstring for which frame)."""
    options = view.regions[row]
    good = [r for r in options if not r["truncated"] and r["visible_fraction"] >= cfg.region_prompt_min_fraction]
    pool = good or options
    pick = pool[int(rng.integers(len(pool)))]
    return {"instance_id": int(view.instance_id[row]), "category": str(view.category[row]),
            "frame_rank": int(pick["frame_rank"]), "bbox_xyxy": [int(x) for x in pick["bbox_xyxy"]],
            "rle": {"size": [int(x) for x in pick["rle"]["size"]], "counts": str(pick["rle"]["counts"])}}


def _candidate(view: SceneView, rng: np.random.Generator, cfg: QAConfig, question_type: str, question: str,
               answer: Any, value: float, rows: Sequence[int], options: list[str] | None = None,
               named_frames: tuple[int, ...] = ()) -> Candidate:
    """A candidate about ``rows`` (Region [0], [1], ... in this order), with their region prompts."""
    prompts = tuple(region_prompt(view, r, rng, cfg) for r in rows)
    return Candidate(question_type, question, answer, float(value), options=options,
                     object_ids=tuple(int(view.instance_id[r]) for r in rows),
                     frame_ranks=tuple(named_frames) + tuple(p["frame_rank"] for p in prompts),
                     categories=tuple(str(view.category[r]) for r in rows), regions=prompts,
                     max_regions_per_frame=view.max_regions_per_frame(rows))


def never_together(candidate: Candidate) -> bool:
    """No manifest frame shows all of the question's instances."""
    return candidate.max_regions_per_frame < len(candidate.regions)


class _Examined:
    """The multi-region candidates of one task in examination order, with a running count of the separate ones."""

    def __init__(self, limit: int):
        self.limit, self.found, self.separate = limit, [], 0

    def add(self, candidate: Candidate) -> bool:
        """Record a candidate; True once the examined ones fill the cap with the separate/together split."""
        self.found.append(candidate)
        self.separate += never_together(candidate)
        return bool(self.limit) and self.separate >= self.limit and \
            len(self.found) - self.separate >= self.limit // 2

    def kept(self) -> list[Candidate]:
        return keep_mostly_separate(self.found, self.limit)


def _shuffled_pairs(view: SceneView, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """Every pair of regions once, in random order, which one is Region [0] a coin flip."""
    pairs = list(combinations(view.region_rows().tolist(), 2))
    for k in rng.permutation(len(pairs)):
        a, b = pairs[k]
        yield (b, a) if rng.random() < 0.5 else (a, b)


def keep_mostly_separate(found: list[Candidate], limit: int) -> list[Candidate]:
    """Multi-region candidates (in examination order) -> those kept: at most as many whose instances some frame shows
    together as of the others, at most ``limit`` in all (0 = no cap), half of each kind when both are plentiful;
    examination order kept."""
    separate = [i for i, c in enumerate(found) if never_together(c)]
    together = [i for i, c in enumerate(found) if not never_together(c)]
    if limit:
        n_together = min(len(together), limit // 2, len(separate))
        n_separate = min(len(separate), limit - n_together)
    else:
        n_separate = len(separate)
        n_together = min(len(together), n_separate)
    return [found[i] for i in sorted(separate[:n_separate] + together[:n_together])]


def _box_z_range(view: SceneView, row: int) -> tuple[float, float]:
    z = view.corners(row)[:, 2]
    return float(z.min()), float(z.max())


# ---- the tasks -----------------------------------------------------------------------------------------------------

def generate_distance(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                      rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    examined = _Examined(cfg.max_per_scene_task)
    for a, b in _shuffled_pairs(view, rng):
        distance_m = float(view.distances[a, b])
        if distance_m < cfg.region_min_distance_m:
            reject(rejected, f"regions closer than {cfg.region_min_distance_m} m")
            continue
        if examined.add(_candidate(view, rng, cfg, "region_distance", DISTANCE_TEMPLATE, round(distance_m, 1),
                                   distance_m, (a, b))):
            break
    return examined.kept()


def generate_size(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                  rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    rows = view.region_rows()
    out: list[Candidate] = []
    for row in rows[rng.permutation(len(rows))].tolist():
        longest_cm = float(view.lengths[row].max()) * 100.0
        if round(longest_cm) < 1:
            reject(rejected, "object smaller than 1 cm")
            continue
        out.append(_candidate(view, rng, cfg, "region_size", SIZE_TEMPLATE, int(round(longest_cm)), longest_cm,
                              (row,)))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def generate_closest(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                     rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    rows = view.region_rows()
    if len(rows) < 3:
        reject(rejected, "fewer than 3 objects with a region")
        return []
    examined = _Examined(cfg.max_per_scene_task)
    seen: set[tuple[int, frozenset[int]]] = set()
    for _ in range(draw_budget(cfg.max_per_scene_task)):
        k = int(rng.integers(2, min(4, len(rows) - 1) + 1))            # 2-4 regions to choose from
        pick = rows[rng.choice(len(rows), size=k + 1, replace=False)].tolist()
        target, choices = pick[0], pick[1:]                            # random order: Region [1..k]
        key = (target, frozenset(choices))
        if key in seen:
            continue
        seen.add(key)
        distance_m = np.array([view.distances[target, c] for c in choices])
        nearest, second = np.sort(distance_m)[:2]
        if second - nearest < cfg.region_closest_gap_m:
            reject(rejected, f"two smallest distances within {cfg.region_closest_gap_m} m")
            continue
        best = int(np.argmin(distance_m))
        names = [region_name(i + 1) for i in range(k)]
        if examined.add(_candidate(view, rng, cfg, "region_closest", CLOSEST_TEMPLATE, names[best], float(nearest),
                                   [target] + choices,
                                   options=[names[best]] + [n for i, n in enumerate(names) if i != best])):
            break
    return examined.kept()


def direction_answer(origin, facing, query, boundary_deg: float) -> tuple[str | None, float]:
    """(answer or None when ambiguous, counter-clockwise floor angle in degrees) of the direction rule."""
    angle = float(floor_angle_deg(origin, facing, query))
    if np.abs(angle - DIRECTION_BOUNDS).min() < boundary_deg:
        return None, angle
    sector = int(np.clip(np.searchsorted(DIRECTION_BOUNDS, angle, side="right") - 1, 0, 2))
    return DIRECTION_LABELS[sector], angle


def generate_direction(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                       rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    rows = view.region_rows().tolist()
    if len(rows) < 3:
        reject(rejected, "fewer than 3 objects with a region")
        return []
    examined, enough = _Examined(cfg.max_per_scene_task), False
    orders = list(permutations(range(3)))
    for triple in random_subsets(rng, rows, 3, draw_budget(cfg.max_per_scene_task)):
        for p in rng.permutation(len(orders)):
            standing, facing, query = (triple[i] for i in orders[int(p)])
            origin, ahead, target = view.centroid[standing], view.centroid[facing], view.centroid[query]
            if length(ahead[:2] - origin[:2]) < 1e-6 or length(target[:2] - origin[:2]) < 1e-6:
                reject(rejected, "regions at the same floor position")
                continue
            answer, angle = direction_answer(origin, ahead, target, cfg.region_direction_boundary_deg)
            if answer is None:
                reject(rejected, f"within {cfg.region_direction_boundary_deg} degrees of a sector boundary")
                continue
            enough = examined.add(_candidate(view, rng, cfg, "region_direction", DIRECTION_TEMPLATE, answer, angle,
                                             (standing, facing, query),
                                             options=[answer] + [o for o in DIRECTION_OPTIONS if o != answer]))
            break
        if enough:
            break
    return examined.kept()


def vertical_answer(z_range_a: tuple[float, float], z_range_b: tuple[float, float], gap_m: float
                    ) -> tuple[str | None, float]:
    """("above" / "below" / None, clearance in metres) of box A against box B from their (bottom, top) heights."""
    above_by = z_range_a[0] - z_range_b[1]
    below_by = z_range_b[0] - z_range_a[1]
    if above_by >= gap_m:
        return "above", above_by
    if below_by >= gap_m:
        return "below", below_by
    return None, max(above_by, below_by)


def generate_vertical(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                      rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    examined = _Examined(cfg.max_per_scene_task)
    for a, b in _shuffled_pairs(view, rng):
        answer, gap_m = vertical_answer(_box_z_range(view, a), _box_z_range(view, b), cfg.region_vertical_gap_m)
        if answer is None:
            reject(rejected, f"boxes within {cfg.region_vertical_gap_m} m vertically")
            continue
        if examined.add(_candidate(view, rng, cfg, "region_vertical", VERTICAL_TEMPLATE, answer, gap_m, (a, b),
                                   options=[answer] + [o for o in VERTICAL_OPTIONS if o != answer])):
            break
    return examined.kept()


def generate_same_kind_count(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                             rejected: Counter | None = None) -> list[Candidate]:
    """One question per category that has an object with a region; Region [0] is one of its instances."""
    view = as_view(graph)
    with_region = set(view.region_rows().tolist())
    counts = view.category_counts
    categories = sorted(counts)
    out: list[Candidate] = []
    for i in rng.permutation(len(categories)):
        category = categories[int(i)]
        rows = [r for r in view.rows_of(category).tolist() if r in with_region]
        if not rows:
            reject(rejected, "no instance of the category has a region")
            continue
        row = rows[int(rng.integers(len(rows)))]
        out.append(_candidate(view, rng, cfg, "region_same_kind_count", SAME_KIND_TEMPLATE, int(counts[category]),
                              float(counts[category]), (row,)))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out


def generate_camera_distance(graph: SceneGraph | SceneView, rng: np.random.Generator, cfg: QAConfig,
                             rejected: Counter | None = None) -> list[Candidate]:
    view = as_view(graph)
    frames = np.flatnonzero(view.frame_valid)
    reject(rejected, "frame without a finite pose", int(view.num_frames - len(frames)))
    rows = view.region_rows().tolist()
    pairs = [(int(f), int(r)) for f in frames for r in rows]
    out: list[Candidate] = []
    for k in rng.permutation(len(pairs)):
        frame, row = pairs[k]
        distance_m = float(point_box_distance(view.camera_centre(frame), view.centroid[row], view.lengths[row],
                                              view.axes[row]))
        if not cfg.cam_obj_min_m <= distance_m <= cfg.cam_obj_max_m:
            reject(rejected, f"camera-region distance outside [{cfg.cam_obj_min_m}, {cfg.cam_obj_max_m}] m")
            continue
        out.append(_candidate(view, rng, cfg, "region_camera_distance",
                              CAMERA_DISTANCE_TEMPLATE.format(frame=view.frame_label(frame)), round(distance_m, 1),
                              distance_m, (row,), named_frames=(int(view.frame_rank[frame]),)))
        if cfg.max_per_scene_task and len(out) >= cfg.max_per_scene_task:
            break
    return out
