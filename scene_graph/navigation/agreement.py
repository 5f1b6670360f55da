"""Agreement of a navigator with an independent Recast/Detour implementation (the ``pynavmesh`` package: a Python
port of Recast's navmesh baker plus a navmesh path finder with funnel string pulling).

Used by the agreement test and ``benchmarks/bench_navmesh_agreement.py``. ``pynavmesh`` (import name
``pathfinder``) is a test/benchmark dependency only; this module imports it lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene_graph.navigation.base import NavmeshSettings, Navigator

_ZUP_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def recast_available() -> bool:
    try:
        from pathfinder.navmesh import Navmesh  # noqa: F401
        from pathfinder.navmesh_baker import NavmeshBaker  # noqa: F401
    except ImportError:
        return False
    return True


class RecastReference:
    """A Recast navmesh baked by pynavmesh from the same z-up mesh (converted to Recast's y-up) and settings."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, settings: NavmeshSettings = NavmeshSettings()):
        from pathfinder.navmesh import Navmesh
        from pathfinder.navmesh_baker import NavmeshBaker

        baker = NavmeshBaker()
        baker.add_geometry([tuple(p) for p in (np.asarray(vertices, np.float64) @ _ZUP_TO_YUP.T).tolist()],
                           np.asarray(faces, np.int64).tolist())
        ok = baker.bake(cell_size=settings.cell_size_m, cell_height=settings.cell_height_m,
                        agent_height=settings.agent_height_m, agent_radius=settings.agent_radius_m,
                        agent_max_climb=settings.agent_max_climb_m, agent_max_slope=settings.agent_max_slope_deg,
                        region_min_size=settings.region_min_size, region_merge_size=20)
        if not ok:
            raise RuntimeError("pynavmesh could not bake a navmesh from this mesh")
        verts, polys = baker.get_polygonization()
        self.vertices = np.asarray(verts, np.float64).reshape(-1, 3)
        self.polygons = [list(p) for p in polys]
        self.navmesh = Navmesh(verts, polys)

    def area_m2(self, floor_z: float | None = None, climb_m: float = 0.2) -> float:
        """Navmesh area; with ``floor_z`` only polygons within ``climb_m`` of that floor level (Recast keeps large
        furniture tops as islands of their own, which the grid never counts as floor)."""
        total = 0.0
        for poly in self.polygons:
            p = self.vertices[poly]
            # A polygon reaching above the climb height is not floor (with a 0.2 m cell height Recast can merge a
            # low furniture top into a polygon that starts on the floor).
            if floor_z is not None and float(np.abs(p[:, 1] - floor_z).max()) > climb_m + 1e-9:
                continue
            q = p[:, [0, 2]]   # y-up: the floor plane is x-z
            total += 0.5 * abs(float(np.dot(q[:, 0], np.roll(q[:, 1], -1)) - np.dot(q[:, 1], np.roll(q[:, 0], -1))))
        return total

    def snap(self, point_zup: np.ndarray) -> np.ndarray | None:
        p = self.navmesh.sample(tuple((np.asarray(point_zup, np.float64) @ _ZUP_TO_YUP.T).tolist()))
        return None if p is None else np.asarray(p, np.float64) @ _ZUP_TO_YUP

    def floor_union(self):
        """The navmesh's floor-plane footprint (shapely), for checking that a path lies on the navmesh."""
        if not hasattr(self, "_union"):
            import shapely

            polys = [shapely.Polygon(np.column_stack([self.vertices[p][:, 0], -self.vertices[p][:, 2]]))
                     for p in self.polygons if len(p) >= 3]
            self._union = shapely.union_all([q.buffer(0) for q in polys])
        return self._union

    def path_on_navmesh(self, points_zup: np.ndarray, tolerance_m: float = 0.07, step_m: float = 0.025) -> bool:
        """True when a polyline stays on the navmesh, sampled every ``step_m``. The tolerance is Recast's own
        contour error: its polygons may cut the voxel boundary by up to edgeMaxError (1.3 cells = 6.5 cm)."""
        import shapely

        pts = np.asarray(points_zup, np.float64)
        samples = [pts[:1, :2]]
        for a, b in zip(pts[:-1, :2], pts[1:, :2]):
            n = max(2, int(np.ceil(np.linalg.norm(b - a) / step_m)) + 1)
            samples.append(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a))
        xy = np.concatenate(samples)
        area = self.floor_union().buffer(tolerance_m)
        return bool(shapely.contains_xy(area, xy[:, 0], xy[:, 1]).all())

    def on_polygon(self, point_zup: np.ndarray) -> bool:
        """True when the path finder can locate the point's polygon (its path search starts from that)."""
        return self.navmesh.sample_polygon(tuple((np.asarray(point_zup) @ _ZUP_TO_YUP.T).tolist())) is not None

    def path_length(self, start_zup: np.ndarray, goal_zup: np.ndarray, corridor_slack: float | None = 1.1) -> float:
        """Funnel-pulled path length; with ``corridor_slack`` every polygon corridor up to that factor of the
        shortest one (between polygon centres) is pulled and the shortest result kept, because centre-to-centre
        graph distance alone sometimes picks a corridor whose pulled path is not the shortest."""
        a = tuple((np.asarray(start_zup) @ _ZUP_TO_YUP.T).tolist())
        b = tuple((np.asarray(goal_zup) @ _ZUP_TO_YUP.T).tolist())
        path = self.navmesh.search_path(a, b, corridor_slack)
        if not path:
            return float("inf")
        pts = np.asarray(path, np.float64)
        return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


@dataclass
class Agreement:
    grid_area_m2: float
    recast_area_m2: float      # polygons at floor level
    recast_total_area_m2: float
    pairs: int                 # point pairs compared
    reachability_agree: int    # pairs where both say reachable or both say unreachable
    both_reachable: int
    length_rel_diff: np.ndarray  # (L_grid - L_ref) / L_ref for pairs reachable in both (signed), L_ref below
    raw_length_rel_diff: np.ndarray  # the same against pynavmesh's own path length
    grid_paths_on_navmesh: int   # grid paths that lie entirely on the Recast navmesh

    @property
    def area_rel_diff(self) -> float:
        return abs(self.grid_area_m2 - self.recast_area_m2) / max(self.recast_area_m2, 1e-12)


def compare(navigator: Navigator, reference: RecastReference, rng: np.random.Generator, num_points: int = 24,
            snap_tolerance_m: float = 0.05) -> Agreement:
    """Sample points navigable on the grid (any island) that are also on the Recast navmesh (within
    ``snap_tolerance_m``), then compare reachability and geodesic lengths over all pairs of them."""
    points = []
    islands = [i.index for i in navigator.islands]
    tries = 0
    while len(points) < num_points and tries < 20 * num_points:
        tries += 1
        island = islands[int(rng.integers(len(islands)))]
        p = navigator.sample_point(rng, island=island)
        q = reference.snap(p)
        if q is not None and np.linalg.norm((q - p)[:2]) <= snap_tolerance_m and reference.on_polygon(q):
            points.append((p, q))
    pairs = agree = both = on_mesh = 0
    rel, raw = [], []
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            grid_path = navigator.shortest_path(points[i][0], points[j][0])
            grid_len = grid_path.length_m
            ref_len = reference.path_length(points[i][1], points[j][1])
            pairs += 1
            agree += int(np.isfinite(grid_len) == np.isfinite(ref_len))
            if np.isfinite(grid_len) and np.isfinite(ref_len) and ref_len > 0.5:
                both += 1
                raw.append((grid_len - ref_len) / ref_len)
                # The Recast geodesic is at most the length of any path lying on its navmesh: when the grid path
                # does, it bounds the reference too (pynavmesh's corridor search is not always optimal).
                if reference.path_on_navmesh(grid_path.points):
                    on_mesh += 1
                    ref_len = min(ref_len, grid_len)
                rel.append((grid_len - ref_len) / ref_len)
    floor_z = float(getattr(navigator, "floor_z", 0.0))
    return Agreement(navigator.navigable_area_m2, reference.area_m2(floor_z), reference.area_m2(), pairs, agree,
                     both, np.asarray(rel), np.asarray(raw), on_mesh)
