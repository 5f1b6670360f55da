"""Navigation routes between unique objects, described the way VSI-Bench's route_planning questions are.

Pure: a :class:`~scene_graph.navigation.Navigator` and the objects table in, :class:`Route` s out (no I/O).

Rules (issue 5; the public record of VLM-3R's Habitat generator):
- start and goal are navigable points on the largest island near two distinct objects of unique categories;
- the agent starts facing a unique object visible from the start (straight line on the navmesh);
- the geodesic path is simplified (Ramer-Douglas-Peucker on its corner points); walking along it, a turn is made
  where the direction differs from the current heading by more than 30 deg; left or right from the sign of the
  change in the z-up world (counter-clockwise seen from above = left); "Turn Back" beyond 135 deg;
- each leg is named by the nearest unique object to its end point (the last leg by the goal object);
- routes with a repeated landmark label, with 0 or more than 4 turns, or with a heading change within
  ``ambiguity_margin_deg`` of a threshold are dropped;
- optional augmentation: the reversed route and the partial routes ending at an intermediate landmark.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError
from pipeline.core.schemas import ROUTES_SCHEMA, table_from_columns
from scene_graph.geometry import bearing_deg, boxes_from_table, point_box_distance, wrap_deg
from scene_graph.navigation import Navigator

TURN_LEFT, TURN_RIGHT, TURN_BACK = "Turn Left", "Turn Right", "Turn Back"
TURNS = (TURN_LEFT, TURN_RIGHT, TURN_BACK)
# Structural or catch-all categories that never name a place to walk to.
NON_LANDMARK_CATEGORIES = frozenset({"", "floor", "wall", "ceiling", "object", "unknown", "otherstructure",
                                     "otherfurniture", "otherprop"})


@dataclass(frozen=True)
class RouteSettings:
    seed: int = 0
    max_routes: int = 10                  # forward routes per scene (augmented ones come on top)
    max_pairs: int = 200                  # (start, goal) pairs tried at most
    near_object_m: float = 1.0            # start / goal within this distance of the object's floor footprint
    landmark_max_distance_m: float = 1.5  # a leg's landmark must be this close to the leg's end point
    facing_min_distance_m: float = 0.5
    min_route_length_m: float = 1.0
    simplify_tolerance_m: float = 0.2
    min_leg_m: float = 0.5                # shorter legs are folded into the neighbouring turns (a hairpin = turn back)
    turn_threshold_deg: float = 30.0
    back_threshold_deg: float = 135.0
    ambiguity_margin_deg: float = 5.0
    min_turns: int = 1
    max_turns: int = 4
    reversed: bool = False
    partial: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.turn_threshold_deg < self.back_threshold_deg < 180:
            raise ValueError("RouteSettings: need 0 < turn_threshold_deg < back_threshold_deg < 180")
        if not 0 <= self.min_turns <= self.max_turns:
            raise ValueError("RouteSettings: need 0 <= min_turns <= max_turns")
        if self.max_routes < 0 or self.max_pairs < 0:
            raise ValueError("RouteSettings: max_routes and max_pairs must be >= 0")


@dataclass
class Route:
    kind: str
    parent_index: int
    start_instance_id: int
    start_label: str
    facing_instance_id: int
    facing_label: str
    goal_instance_id: int
    goal_label: str
    start: np.ndarray                     # [3]
    goal: np.ndarray                      # [3]
    start_heading_deg: float
    corner_points: np.ndarray             # [K, 3]
    starts_with_turn: bool
    turns: list[str]
    turn_angles_deg: list[float]
    turn_points: np.ndarray               # [T, 3]
    landmark_instance_ids: list[int]
    landmark_labels: list[str]
    leg_lengths_m: list[float]
    geodesic_length_m: float

    @property
    def num_turns(self) -> int:
        return len(self.turns)


def classify_turn(delta_deg: float, settings: RouteSettings = RouteSettings()) -> str | None:
    """The turn for a signed heading change (+ = counter-clockwise seen from above = left); None for straight."""
    magnitude = abs(delta_deg)
    if magnitude <= settings.turn_threshold_deg:
        return None
    if magnitude > settings.back_threshold_deg:
        return TURN_BACK
    return TURN_LEFT if delta_deg > 0 else TURN_RIGHT


def simplify_path(points: np.ndarray, tolerance_m: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on the floor projection: drop corners within ``tolerance_m`` of the simplified line."""
    points = np.asarray(points, np.float64)
    if len(points) <= 2:
        return points
    keep = np.zeros(len(points), bool)
    keep[[0, -1]] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = points[i, :2], points[j, :2]
        ab = b - a
        rel = points[i + 1:j, :2] - a
        length = np.linalg.norm(ab)
        if length < 1e-12:
            dist = np.linalg.norm(rel, axis=1)
        else:
            dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / length
        k = int(np.argmax(dist))
        if dist[k] > tolerance_m:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return points[keep]


@dataclass(frozen=True)
class _Objects:
    ids: np.ndarray
    labels: list[str]
    centroid: np.ndarray
    lengths: np.ndarray
    axes: np.ndarray

    def footprint_distance(self, point: np.ndarray) -> np.ndarray:
        """Floor-plane distance [N] from a point to each (upright) box's footprint."""
        q = np.column_stack([np.broadcast_to(point[:2], (len(self.ids), 2)), self.centroid[:, 2]])
        return point_box_distance(q, self.centroid, self.lengths, self.axes)


def unique_objects(objects: pa.Table) -> _Objects:
    """Objects whose category occurs exactly once in the scene (structural categories excluded), by instance id."""
    categories = [str(c) for c in objects.column("category").to_pylist()]
    counts = Counter(categories)
    centroid, lengths, axes = boxes_from_table(objects)
    ids = np.asarray(objects.column("instance_id").to_pylist(), np.int64)
    rows = [k for k, c in enumerate(categories) if counts[c] == 1 and c.strip().lower() not in NON_LANDMARK_CATEGORIES]
    rows.sort(key=lambda k: ids[k])
    return _Objects(ids[rows], [categories[k] for k in rows], centroid[rows], lengths[rows], axes[rows])


def fold_short_legs(corners: np.ndarray, min_leg_m: float) -> np.ndarray:
    """Remove legs shorter than ``min_leg_m``: an inner one is replaced by its midpoint (two quick turns become one,
    e.g. a hairpin around a thin wall becomes a turn back); a short first or last one loses its inner corner."""
    pts = [np.asarray(p, np.float64) for p in corners]
    while len(pts) > 2:
        lengths = np.array([np.linalg.norm((b - a)[:2]) for a, b in zip(pts[:-1], pts[1:])])
        k = int(np.argmin(lengths))
        if lengths[k] >= min_leg_m:
            break
        if k == 0:
            del pts[1]
        elif k == len(lengths) - 1:
            del pts[-2]
        else:
            pts[k:k + 2] = [(pts[k] + pts[k + 1]) / 2.0]
    return np.array(pts)


def _describe(corners: np.ndarray, facing_heading_deg: float, settings: RouteSettings):
    """Legs of a corner path: (starts_with_turn, turns, angles, turn points, leg end points, leg lengths), or a
    reason string when a heading change is too close to a threshold."""
    corners = fold_short_legs(corners, settings.min_leg_m)
    seg = np.diff(corners, axis=0)
    seg_len = np.linalg.norm(seg[:, :2], axis=1)
    keep = seg_len > 1e-6
    starts = corners[:-1][keep]
    seg, seg_len = seg[keep], seg_len[keep]
    headings = bearing_deg(seg)
    heading = facing_heading_deg
    turns, angles, turn_points, leg_ends, leg_lengths = [], [], [], [], []
    starts_with_turn = False
    current = 0.0
    thresholds = (settings.turn_threshold_deg, settings.back_threshold_deg)
    for k in range(len(seg)):
        delta = float(wrap_deg(headings[k] - heading))
        if min(abs(abs(delta) - t) for t in thresholds) < settings.ambiguity_margin_deg:
            return "ambiguous_turn"
        turn = classify_turn(delta, settings)
        if turn is not None:
            if k == 0:
                starts_with_turn = True
            else:
                leg_ends.append(starts[k]); leg_lengths.append(current); current = 0.0
            turns.append(turn); angles.append(delta); turn_points.append(starts[k])
            heading = float(headings[k])
        current += float(np.linalg.norm(seg[k]))
    leg_ends.append(corners[-1]); leg_lengths.append(current)
    return starts_with_turn, turns, angles, np.array(turn_points).reshape(-1, 3), leg_ends, leg_lengths


class _Generator:
    def __init__(self, navigator: Navigator, objects: pa.Table, settings: RouteSettings, source: str):
        self.nav, self.settings, self.source = navigator, settings, source
        self.obj = unique_objects(objects)
        if len(self.obj.ids) < 3:
            raise InputError(source, (
                f"scene has {len(self.obj.ids)} objects of a unique category ({', '.join(self.obj.labels) or 'none'}); "
                f"routes need at least 3 (start, goal and a landmark or facing object)"))
        self.rng = np.random.default_rng(settings.seed)
        # One navigable anchor per object on the largest island: "at the bed" is a point near the bed.
        self.anchor = [navigator.sample_point(self.rng, island=0, near_box=(c, l, a),
                                              max_distance_m=settings.near_object_m)
                       for c, l, a in zip(self.obj.centroid, self.obj.lengths, self.obj.axes)]
        reachable = [k for k, p in enumerate(self.anchor) if p is not None]
        if len(reachable) < 3:
            islands = navigator.islands
            total = sum(i.area_m2 for i in islands)
            raise InputError(source, (
                f"disconnected rooms: the largest navigable island ({islands[0].area_m2:.1f} m² of {total:.1f} m² "
                f"in {len(islands)} islands) is within {settings.near_object_m:g} m of only {len(reachable)} of the "
                f"{len(self.obj.ids)} unique objects; routes need 3"))
        self.reachable = reachable
        self.centre_snap = navigator.snap(self.obj.centroid, island=0)
        self.stats: Counter = Counter()

    def landmark(self, point: np.ndarray) -> int | None:
        dist = self.obj.footprint_distance(point)
        k = int(np.argmin(dist))
        return k if dist[k] <= self.settings.landmark_max_distance_m else None

    def choose_facing(self, start_obj: int, goal_obj: int, start: np.ndarray) -> int | None:
        """A random unique object (not the start or goal) seen from the start: the straight line to its anchor or
        to the navigable point nearest its centre stays on the navmesh."""
        candidates = []
        for k in self.reachable:
            if k in (start_obj, goal_obj):
                continue
            if np.linalg.norm(self.obj.centroid[k, :2] - start[:2]) < self.settings.facing_min_distance_m:
                continue
            if self.nav.line_of_sight(start, self.anchor[k]) or self.nav.line_of_sight(start, self.centre_snap[k]):
                candidates.append(k)
        return candidates[int(self.rng.integers(len(candidates)))] if candidates else None

    def describe(self, kind: str, parent: int, start_obj: int, goal_obj: int, corners: np.ndarray,
                 facing: int | None = None) -> Route | str:
        s = self.settings
        start = corners[0]
        facing = self.choose_facing(start_obj, goal_obj, start) if facing is None else facing
        if facing is None:
            return "no_visible_facing_object"
        facing_heading = float(bearing_deg(self.obj.centroid[facing] - start))
        legs = _describe(corners, facing_heading, s)
        if isinstance(legs, str):
            return legs
        starts_with_turn, turns, angles, turn_points, leg_ends, leg_lengths = legs
        if not s.min_turns <= len(turns) <= s.max_turns:
            return "turn_count"
        landmarks = []
        for end in leg_ends[:-1]:
            k = self.landmark(end)
            if k is None:
                return "no_landmark_near_turn"
            landmarks.append(k)
        landmarks.append(goal_obj)
        labels = [self.obj.labels[start_obj]] + [self.obj.labels[k] for k in landmarks]
        if len(set(labels)) != len(labels):
            return "repeated_landmark"
        return Route(
            kind=kind, parent_index=parent,
            start_instance_id=int(self.obj.ids[start_obj]), start_label=self.obj.labels[start_obj],
            facing_instance_id=int(self.obj.ids[facing]), facing_label=self.obj.labels[facing],
            goal_instance_id=int(self.obj.ids[goal_obj]), goal_label=self.obj.labels[goal_obj],
            start=corners[0].copy(), goal=corners[-1].copy(), start_heading_deg=facing_heading,
            corner_points=corners.copy(), starts_with_turn=starts_with_turn, turns=turns, turn_angles_deg=angles,
            turn_points=turn_points, landmark_instance_ids=[int(self.obj.ids[k]) for k in landmarks],
            landmark_labels=[self.obj.labels[k] for k in landmarks], leg_lengths_m=leg_lengths,
            geodesic_length_m=float(np.linalg.norm(np.diff(corners, axis=0), axis=1).sum()))

    def partials(self, route: Route, parent: int) -> list[Route]:
        """Prefixes of a route ending at an intermediate landmark (the turn point where that leg ends)."""
        out = []
        ends = route.turn_points[1:] if route.starts_with_turn else route.turn_points
        for m, end in enumerate(ends):   # ends of legs 0..L-2, i.e. every intermediate landmark
            # Corner points up to (and including) the turn point that closes leg m.
            # Folded turns may sit between two corners: cut at the corner nearest the turn point.
            cut = int(np.argmin(np.linalg.norm(route.corner_points - end, axis=1)))
            if cut == 0:
                continue
            corners = route.corner_points[:cut + 1]
            goal_obj = int(np.flatnonzero(self.obj.ids == route.landmark_instance_ids[m])[0])
            start_obj = int(np.flatnonzero(self.obj.ids == route.start_instance_id)[0])
            facing = int(np.flatnonzero(self.obj.ids == route.facing_instance_id)[0])
            # Same start and heading as the parent, unless it faced what is now the goal.
            part = self.describe("partial", parent, start_obj, goal_obj, corners,
                                 None if facing == goal_obj else facing)
            if isinstance(part, Route):
                out.append(part)
        return out

    def run(self) -> list[Route]:
        s = self.settings
        pairs = [(i, j) for i in self.reachable for j in self.reachable if i != j]
        order = self.rng.permutation(len(pairs))[:s.max_pairs]
        routes: list[Route] = []
        forward = 0
        for p in order:
            if forward >= s.max_routes:
                break
            i, j = pairs[int(p)]
            path = self.nav.shortest_path(self.anchor[i], self.anchor[j])
            if not path.reachable:
                self.stats["unreachable"] += 1
                continue
            if path.length_m < s.min_route_length_m:
                self.stats["too_short"] += 1
                continue
            corners = simplify_path(path.points, s.simplify_tolerance_m)
            route = self.describe("forward", -1, i, j, corners)
            if isinstance(route, str):
                self.stats[route] += 1
                continue
            forward += 1
            parent = len(routes)
            routes.append(route)
            if s.reversed:
                back = self.describe("reversed", parent, j, i, corners[::-1].copy())
                if isinstance(back, Route):
                    routes.append(back)
            if s.partial:
                routes += self.partials(route, parent)
        self.stats["routes"] = len(routes)
        return routes


def sample_routes(navigator: Navigator, objects: pa.Table, settings: RouteSettings = RouteSettings(),
                  source: str = "<scene>") -> tuple[list[Route], dict]:
    """Routes of one scene and the counts of rejected candidates by reason. Raises ``InputError`` (naming
    ``source``) when the scene has fewer than 3 unique objects or they are not on one connected floor."""
    gen = _Generator(navigator, objects, settings, source)
    routes = gen.run()
    return routes, dict(sorted(gen.stats.items()))


def routes_table(routes: list[Route], dataset: str, scene_id: str, backend: str) -> pa.Table:
    """ROUTES_SCHEMA rows, ``route_index`` in list order."""
    n = len(routes)

    def vecs(name):
        return np.array([getattr(r, name) for r in routes], np.float64).reshape(n, 3)

    return table_from_columns(ROUTES_SCHEMA, {
        "dataset": [dataset] * n, "scene_id": [scene_id] * n,
        "route_index": np.arange(n, dtype=np.int32),
        "kind": [r.kind for r in routes], "parent_index": np.array([r.parent_index for r in routes], np.int32),
        "backend": [backend] * n,
        "start_instance_id": np.array([r.start_instance_id for r in routes], np.int64),
        "start_label": [r.start_label for r in routes],
        "facing_instance_id": np.array([r.facing_instance_id for r in routes], np.int64),
        "facing_label": [r.facing_label for r in routes],
        "goal_instance_id": np.array([r.goal_instance_id for r in routes], np.int64),
        "goal_label": [r.goal_label for r in routes],
        "start": vecs("start"), "goal": vecs("goal"),
        "start_heading_deg": np.array([r.start_heading_deg for r in routes], np.float64),
        "corner_points": [np.asarray(r.corner_points, np.float64).tolist() for r in routes],
        "starts_with_turn": [bool(r.starts_with_turn) for r in routes],
        "turns": [list(r.turns) for r in routes],
        "turn_angles_deg": [[float(a) for a in r.turn_angles_deg] for r in routes],
        "turn_points": [np.asarray(r.turn_points, np.float64).reshape(-1, 3).tolist() for r in routes],
        "landmark_instance_ids": [[int(i) for i in r.landmark_instance_ids] for r in routes],
        "landmark_labels": [list(r.landmark_labels) for r in routes],
        "leg_lengths_m": [[float(x) for x in r.leg_lengths_m] for r in routes],
        "geodesic_length_m": np.array([r.geodesic_length_m for r in routes], np.float64),
        "euclidean_length_m": np.array([float(np.linalg.norm(r.goal - r.start)) for r in routes], np.float64),
        "num_turns": np.array([r.num_turns for r in routes], np.int32),
    })
