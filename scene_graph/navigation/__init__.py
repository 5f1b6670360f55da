"""Navigable floors and shortest paths: one interface (:class:`Navigator`), two backends.

- ``"grid"`` (default, PyPI only): a 2.5D height/occupancy grid built from the aligned mesh (``grid.py``);
- ``"habitat"``: Recast/Detour through habitat-sim, used when ``habitat_sim`` imports (``habitat.py``).
Both take habitat's navmesh defaults (:class:`NavmeshSettings`) and the canonical z-up mesh.
"""
from __future__ import annotations

import numpy as np

from scene_graph.navigation.base import Island, NavmeshSettings, Navigator, NavPath, TopDown
from scene_graph.navigation.habitat import habitat_available

BACKENDS = ("grid", "habitat")

__all__ = ["BACKENDS", "Island", "NavPath", "NavmeshSettings", "Navigator", "TopDown", "build_navigator",
           "default_backend", "habitat_available"]


def default_backend() -> str:
    """``"habitat"`` when habitat-sim imports, else ``"grid"``."""
    return "habitat" if habitat_available() else "grid"


def build_navigator(vertices: np.ndarray, faces: np.ndarray, settings: NavmeshSettings = NavmeshSettings(),
                    backend: str | None = None, source: str = "<mesh>") -> Navigator:
    """Build the navigable floor of a z-up mesh. Raises ``pipeline.core.errors.InputError`` naming ``source`` when the
    mesh has no floor, is not z-up, or is malformed; ``ValueError`` for an unknown or unavailable backend."""
    backend = backend or default_backend()
    if backend == "grid":
        from scene_graph.navigation.grid import GridNavigator
        return GridNavigator(vertices, faces, settings, source)
    if backend == "habitat":
        if not habitat_available():
            raise ValueError("backend 'habitat' needs habitat-sim (conda install habitat-sim -c aihabitat), "
                             "which is not importable here; use backend 'grid'")
        from scene_graph.navigation.habitat import HabitatNavigator
        return HabitatNavigator(vertices, faces, settings, source)
    raise ValueError(f"unknown navigation backend {backend!r}; choose from {', '.join(BACKENDS)}")
