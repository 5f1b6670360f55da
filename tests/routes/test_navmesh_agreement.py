"""The grid navigator against an independent Recast/Detour implementation (pynavmesh) on a generated two-room scene:
navigable area within 3 %, path-length median within 1 % and 95th percentile within 5 %, reachability >= 98 %."""
from __future__ import annotations

import numpy as np
import pytest

from scene_graph.navigation import build_navigator, scenes
from scene_graph.navigation.agreement import RecastReference, compare, recast_available

pytestmark = pytest.mark.skipif(
    not recast_available(),
    reason="pynavmesh (a Recast/Detour implementation from PyPI, import name 'pathfinder') is not installed; "
           "pip install pynavmesh to run the agreement test")


def test_grid_agrees_with_recast_on_a_two_room_scene():
    lay = scenes.multi_room(7, rooms_x=2, rooms_y=1)
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    ref = RecastReference(lay.vertices, lay.faces)
    result = compare(nav, ref, np.random.default_rng(0), num_points=14)
    assert result.area_rel_diff <= 0.03
    assert result.pairs == 91 and result.reachability_agree / result.pairs >= 0.98
    diff = np.abs(result.length_rel_diff)
    assert result.both_reachable >= 80 and result.grid_paths_on_navmesh >= 0.9 * result.both_reachable
    assert np.median(diff) <= 0.01
    assert np.percentile(diff, 95) <= 0.05
