"""The navigation interface shared by both backends, its settings, and the mesh checks done before any build.

Coordinates in and out are the canonical z-up metric world (x, y on the floor, z up, metres). Headings and turns
are measured counter-clockwise seen from above (right-handed z-up), so a positive turn is a left turn.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import InputError


@dataclass(frozen=True)
class NavmeshSettings:
    """Agent and voxel settings, defaulting to habitat-sim's ``NavMeshSettings.set_defaults()``."""

    cell_size_m: float = 0.05          # xy voxel size
    cell_height_m: float = 0.2         # vertical voxel size (habitat backend; the grid keeps continuous heights)
    agent_height_m: float = 1.5        # free space needed above the floor
    agent_radius_m: float = 0.1        # the walkable area is eroded by this
    agent_max_climb_m: float = 0.2     # steps up to this height are traversable
    agent_max_slope_deg: float = 45.0  # steeper surfaces are not walkable
    region_min_size: int = 20          # islands under region_min_size**2 cells are dropped (Recast's minRegionArea)
    # Mesh checks done before a build (both backends).
    min_floor_area_m2: float = 0.5     # less up-facing area than this at floor level: "no floor"
    check_up_axis: bool = True

    def __post_init__(self) -> None:
        for name in ("cell_size_m", "cell_height_m", "agent_height_m", "agent_max_climb_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"NavmeshSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.agent_radius_m < 0:
            raise ValueError(f"NavmeshSettings.agent_radius_m must be >= 0, got {self.agent_radius_m}")
        if not 0 < self.agent_max_slope_deg < 90:
            raise ValueError(f"NavmeshSettings.agent_max_slope_deg must be in (0, 90), got {self.agent_max_slope_deg}")
        if self.region_min_size < 0:
            raise ValueError(f"NavmeshSettings.region_min_size must be >= 0, got {self.region_min_size}")

    @property
    def min_island_area_m2(self) -> float:
        return float(self.region_min_size ** 2 * self.cell_size_m ** 2)


@dataclass(frozen=True)
class NavPath:
    """A shortest path: corner points [K, 3] from start to goal (both included) and its geodesic length in metres.
    Unreachable goals give no points and an infinite length."""

    points: np.ndarray
    length_m: float

    @property
    def reachable(self) -> bool:
        return bool(np.isfinite(self.length_m))


@dataclass(frozen=True)
class Island:
    index: int                         # 0 = largest
    area_m2: float


@dataclass(frozen=True)
class TopDown:
    """Top-down island map for plots: ``islands[row, col]`` = island index or -1; row 0 is the lowest y."""

    islands: np.ndarray
    origin_xy: np.ndarray              # world xy of the corner of cell (0, 0)
    meters_per_pixel: float
    extra: dict = field(default_factory=dict)


class Navigator(abc.ABC):
    """Navigable floor of one scene. Points are z-up world coordinates; arrays are ``[N, 3]`` float64."""

    backend: str
    settings: NavmeshSettings

    @property
    @abc.abstractmethod
    def islands(self) -> list[Island]:
        """Islands (connected navigable components) sorted by decreasing area; index 0 is the largest."""

    @property
    def navigable_area_m2(self) -> float:
        return float(sum(island.area_m2 for island in self.islands))

    @abc.abstractmethod
    def island_of(self, points: np.ndarray) -> np.ndarray:
        """Island index [N] of each point, -1 where the point is not navigable."""

    @abc.abstractmethod
    def is_navigable(self, points: np.ndarray, max_dz_m: float = 0.5) -> np.ndarray:
        """True [N] where an agent can stand at the point (xy inside the navmesh, height within ``max_dz_m``)."""

    @abc.abstractmethod
    def snap(self, points: np.ndarray, island: int | None = None) -> np.ndarray:
        """The nearest navigable points [N, 3] (on ``island`` if given); NaN rows where there is none."""

    @abc.abstractmethod
    def sample_point(self, rng: np.random.Generator, island: int | None = 0, near_box: tuple | None = None,
                     max_distance_m: float = 1.0) -> np.ndarray | None:
        """A random navigable point on ``island`` (None = any); with ``near_box = (centroid, lengths, axes)`` only
        points within ``max_distance_m`` of that box's floor footprint. None when no such point exists."""

    @abc.abstractmethod
    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> NavPath:
        """Geodesic shortest path between two points (each snapped to the navmesh first)."""

    def geodesic_distance(self, points: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Geodesic distance [N] in metres from each point to ``goal``; inf where unreachable."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        return np.array([self.shortest_path(p, goal).length_m for p in points], dtype=np.float64)

    @abc.abstractmethod
    def line_of_sight(self, start: np.ndarray, goal: np.ndarray) -> bool:
        """True when the straight segment between two points stays on the navmesh."""

    @abc.abstractmethod
    def topdown(self) -> TopDown:
        """The island map seen from above (for plots and audits)."""

    def close(self) -> None:
        """Release backend resources (the habitat simulator); a no-op for the grid."""


# ---- mesh checks shared by the backends -------------------------------------------------------------------------

_AXIS_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z")


def face_geometry(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles [F, 3, 3], unit normals [F, 3] (from the winding, right-handed) and areas [F] in m²."""
    tris = vertices[faces]
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    norm = np.linalg.norm(cross, axis=1)
    normals = cross / np.maximum(norm, 1e-300)[:, None]
    return tris, normals, 0.5 * norm


def validate_mesh(vertices, faces, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] float64 and faces [F, 3] int64 after checking shapes, finiteness and indices."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise InputError(source, f"mesh vertices must be a non-empty [V, 3] array, got shape {list(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise InputError(source, f"mesh faces must be a non-empty [F, 3] triangle array, got shape {list(faces.shape)}")
    if not np.isfinite(vertices).all():
        raise InputError(source, f"mesh has {int((~np.isfinite(vertices)).any(axis=1).sum())} non-finite vertices")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(source, f"mesh face indices out of range [0, {len(vertices)})")
    return vertices, faces


def check_up_axis(normals: np.ndarray, areas: np.ndarray, tris: np.ndarray, settings: NavmeshSettings,
                  source: str) -> None:
    """Raise when the mesh is evidently not z-up.

    Why this rule: walls come in opposite pairs (and closed furniture boxes face every way equally), but a scan's
    floor faces up while its ceiling is mostly missing, so the up direction is the one with by far the most area
    facing it beyond the area facing the opposite way. A mesh in a y-up convention (habitat, glTF), upside down or
    never aligned has that excess on another direction. Meshes whose excess is small everywhere (closed rooms with
    ceilings) are left alone: the check is then inconclusive, not a failure.
    """
    cos_slope = np.cos(np.radians(settings.agent_max_slope_deg))
    facing = np.concatenate([normals, -normals], axis=1)[:, [0, 3, 1, 4, 2, 5]]  # +x -x +y -y +z -z
    directional = np.array([areas[facing[:, k] >= cos_slope].sum() for k in range(6)])
    excess = directional - directional[[1, 0, 3, 2, 5, 4]]      # area facing d minus area facing -d
    k_best = int(np.argmax(excess))
    if k_best == 4 or excess[k_best] < 0.05 * areas.sum() or excess[4] >= 0.5 * excess[k_best]:
        return
    raise InputError(source, (
        f"mesh is not z-up: {directional[k_best]:.1f} m² of surface faces {_AXIS_NAMES[k_best]} against "
        f"{directional[k_best ^ 1]:.1f} m² the opposite way (a floor without its ceiling), while +z has "
        f"{directional[4]:.1f} m² against {directional[5]:.1f} m² facing -z; the canonical scene must be z-up "
        f"(check the dataset's alignment / axis convention)"))


def floor_height(tris: np.ndarray, normals: np.ndarray, areas: np.ndarray, settings: NavmeshSettings,
                 source: str) -> float:
    """Height of the main floor: the lowest level holding at least half the largest up-facing area of any level.

    Levels are windows of one climb height, so a slightly uneven or tilted scanned floor counts as one level.
    """
    cos_slope = np.cos(np.radians(settings.agent_max_slope_deg))
    up = normals[:, 2] >= cos_slope
    if not up.any() or areas[up].sum() < settings.min_floor_area_m2:
        raise InputError(source, (
            f"mesh has no floor: {areas[up].sum():.2f} m² of walkable up-facing surface (slope <= "
            f"{settings.agent_max_slope_deg:g} deg), need at least {settings.min_floor_area_m2:g} m²"))
    z = tris[up, :, 2].mean(axis=1)
    w = areas[up]
    bin_m = 0.02
    edges = np.arange(z.min() - bin_m, z.max() + 2 * bin_m, bin_m)
    hist, _ = np.histogram(z, bins=edges, weights=w)
    window = max(1, int(round(settings.agent_max_climb_m / bin_m)))
    level_area = np.convolve(hist, np.ones(window), mode="same")
    k = int(np.flatnonzero(level_area >= 0.5 * level_area.max())[0])
    centre = edges[k] + bin_m / 2
    near = np.abs(z - centre) <= settings.agent_max_climb_m / 2
    if w[near].sum() < settings.min_floor_area_m2:
        raise InputError(source, (
            f"mesh has no floor: the lowest large up-facing level (z = {centre:.2f} m) has only "
            f"{w[near].sum():.2f} m², need at least {settings.min_floor_area_m2:g} m²"))
    order = np.argsort(z[near], kind="stable")
    cum = np.cumsum(w[near][order])
    return float(z[near][order][np.searchsorted(cum, cum[-1] / 2)])


def prepare_mesh(vertices, faces, settings: NavmeshSettings, source: str):
    """What every backend does first: validate the mesh, take the geometry of its non-degenerate faces, refuse a
    mesh that is not z-up (when asked), and find the main floor height.

    Returns ``(vertices, faces, tris, normals, areas, floor_z)``; ``faces`` are all validated faces, ``tris`` /
    ``normals`` / ``areas`` those of faces with a positive area."""
    vertices, faces = validate_mesh(vertices, faces, source)
    tris, normals, areas = face_geometry(vertices, faces)
    keep = areas > 1e-12
    tris, normals, areas = tris[keep], normals[keep], areas[keep]
    if settings.check_up_axis:
        check_up_axis(normals, areas, tris, settings, source)
    return vertices, faces, tris, normals, areas, floor_height(tris, normals, areas, settings, source)
