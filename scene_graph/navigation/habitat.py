"""The habitat-sim backend: Recast/Detour through ``habitat_sim`` when it is importable.

habitat-sim is y-up: z-up points (x, y, z) become (x, z, -y) there and come back as (x, -z, y) (a rotation, so
handedness and left/right are preserved). The z-up mesh is converted, written to a temporary PLY and loaded as the
stage of a simulator created without a renderer; ``recompute_navmesh`` then builds the navmesh with our settings.

Written against habitat-sim's documented Python API (``Simulator.recompute_navmesh``, ``PathFinder``,
``ShortestPath``, ``NavMeshSettings``); habitat-sim is not installable from PyPI, so this backend is not exercised
by this project's tests.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from scene_graph.geometry import point_box_distance
from scene_graph.navigation.base import Island, NavmeshSettings, Navigator, NavPath, TopDown, prepare_mesh

_ZUP_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # rows: y-up (x, y, z) from z-up


def to_yup(points: np.ndarray) -> np.ndarray:
    """z-up -> habitat's y-up, as float32 (what habitat's Vector3 arguments take)."""
    return (np.asarray(points, np.float64) @ _ZUP_TO_YUP.T).astype(np.float32)


def to_zup(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ _ZUP_TO_YUP


def habitat_available() -> bool:
    try:
        import habitat_sim  # noqa: F401
    except ImportError:
        return False
    return True


class HabitatNavigator(Navigator):
    backend = "habitat"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, settings: NavmeshSettings = NavmeshSettings(),
                 source: str = "<mesh>"):
        import habitat_sim
        import trimesh

        self.settings = settings
        self.source = str(source)
        vertices, faces, _, _, _, self.floor_z = prepare_mesh(vertices, faces, settings, self.source)

        self._tmp = tempfile.TemporaryDirectory(prefix="vlm3r_navmesh_")
        stage = Path(self._tmp.name) / "stage_yup.ply"
        trimesh.Trimesh(np.asarray(vertices, np.float64) @ _ZUP_TO_YUP.T, faces, process=False).export(stage)
        sim_cfg = habitat_sim.SimulatorConfiguration()
        sim_cfg.scene_id = str(stage)
        sim_cfg.create_renderer = False      # navmesh only: no GPU, no window
        sim_cfg.enable_physics = False
        self._sim = habitat_sim.Simulator(habitat_sim.Configuration(sim_cfg, [habitat_sim.agent.AgentConfiguration()]))
        nav = habitat_sim.NavMeshSettings()
        nav.set_defaults()
        nav.cell_size = settings.cell_size_m
        nav.cell_height = settings.cell_height_m
        nav.agent_height = settings.agent_height_m
        nav.agent_radius = settings.agent_radius_m
        nav.agent_max_climb = settings.agent_max_climb_m
        nav.agent_max_slope = settings.agent_max_slope_deg
        nav.region_min_size = settings.region_min_size
        self._pathfinder = self._sim.pathfinder
        if not self._sim.recompute_navmesh(self._pathfinder, nav) or not self._pathfinder.is_loaded:
            raise InputError(self.source, "habitat-sim could not build a navmesh from this mesh (no walkable floor)")
        self._habitat = habitat_sim
        # habitat numbers islands in its own order; ours are sorted by decreasing area (index 0 = largest).
        areas_by_habitat = [float(self._pathfinder.island_area(k)) for k in range(self._pathfinder.num_islands)]
        self._order = sorted(range(len(areas_by_habitat)), key=lambda k: (-areas_by_habitat[k], k))
        self._ours = {h: i for i, h in enumerate(self._order)}
        self._areas = [areas_by_habitat[h] for h in self._order]
        if not self._areas:
            raise InputError(self.source, "habitat-sim navmesh has no island: the mesh has no navigable floor")

    @property
    def islands(self) -> list[Island]:
        return [Island(i, a) for i, a in enumerate(self._areas)]

    def _habitat_island(self, island: int | None) -> int:
        return -1 if island is None else self._order[island]

    def island_of(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        nav = self.is_navigable(points)
        out = np.full(len(points), -1, np.int64)
        for k in np.flatnonzero(nav):
            out[k] = self._ours.get(int(self._pathfinder.get_island(to_yup(points[k]))), -1)
        return out

    def is_navigable(self, points: np.ndarray, max_dz_m: float = 0.5) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        return np.array([bool(self._pathfinder.is_navigable(to_yup(p), max_dz_m)) for p in points], dtype=bool)

    def snap(self, points: np.ndarray, island: int | None = None) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.full_like(points, np.nan)
        for k, p in enumerate(points):
            snapped = np.asarray(self._pathfinder.snap_point(to_yup(p), self._habitat_island(island)), np.float64)
            if np.isfinite(snapped).all():
                out[k] = to_zup(snapped)
        return out

    def sample_point(self, rng: np.random.Generator, island: int | None = 0, near_box: tuple | None = None,
                     max_distance_m: float = 1.0, max_tries: int = 200) -> np.ndarray | None:
        # Detour's sampler uses the C rand() state: seed it from our generator so runs are reproducible.
        self._pathfinder.seed(int(rng.integers(0, 2**31 - 1)))
        h_island = self._habitat_island(island)
        for _ in range(max_tries):
            if near_box is None:
                p = self._pathfinder.get_random_navigable_point(island_index=h_island)
            else:
                centroid, lengths, axes = (np.asarray(a, np.float64) for a in near_box)
                radius = max_distance_m + 0.5 * float(np.linalg.norm(lengths[:2]))
                p = self._pathfinder.get_random_navigable_point_near(
                    to_yup(centroid), radius, island_index=h_island)
            p = np.asarray(p, np.float64)
            if not np.isfinite(p).all():
                continue
            p = to_zup(p)
            if near_box is None:
                return p
            q = np.array([p[0], p[1], centroid[2]])
            if point_box_distance(q, centroid, lengths, axes.reshape(3, 3)) <= max_distance_m:
                return p
        return None

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> NavPath:
        path = self._habitat.ShortestPath()
        path.requested_start = to_yup(np.asarray(start, np.float64).reshape(3))
        path.requested_end = to_yup(np.asarray(goal, np.float64).reshape(3))
        if not self._pathfinder.find_path(path) or not np.isfinite(path.geodesic_distance):
            return NavPath(np.zeros((0, 3)), float("inf"))
        return NavPath(to_zup(np.asarray(path.points, np.float64).reshape(-1, 3)), float(path.geodesic_distance))

    def line_of_sight(self, start: np.ndarray, goal: np.ndarray) -> bool:
        goal = np.asarray(goal, np.float64).reshape(3)
        reached = to_zup(np.asarray(self._pathfinder.try_step_no_sliding(
            to_yup(np.asarray(start, np.float64).reshape(3)), to_yup(goal)), np.float64))
        return bool(np.linalg.norm(reached[:2] - goal[:2]) <= self.settings.cell_size_m)

    def topdown(self) -> TopDown:
        mpp = self.settings.cell_size_m
        # habitat's top-down view is indexed [z, x] in its y-up frame; z = -y_world, so flip rows to get +y upwards.
        view = np.asarray(self._pathfinder.get_topdown_island_view(mpp, self.floor_z), np.int64)
        lower, _ = self._pathfinder.get_bounds()
        lookup = np.array([self._ours.get(k, -1) for k in range(max(self._order) + 1)] + [-1])
        islands = np.where(view >= 0, lookup[np.clip(view, 0, len(lookup) - 1)], -1)[::-1]
        upper = self._pathfinder.get_bounds()[1]
        origin = np.array([float(lower[0]), -float(upper[2])])
        return TopDown(islands, origin, mpp, {"floor_z": self.floor_z})

    def close(self) -> None:
        if getattr(self, "_sim", None) is not None:
            self._sim.close()
            self._sim = None
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None
