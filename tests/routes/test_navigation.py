"""The grid navigator on generated meshes: floors, furniture, walls, islands, geodesics and bad meshes."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import InputError
from scene_graph.navigation import NavmeshSettings, build_navigator, scenes
from scene_graph.navigation.base import face_geometry


def room(cols: int = 8, rows: int = 6, tile_m: float = 0.5, furniture=()):
    free = np.ones((rows, cols), bool)
    return scenes.layout(free, list(furniture), tile_m)


def test_furniture_tops_are_not_navigable_but_climbable_steps_are():
    bed = ("bed", (1.25, 1.5, 0.25), (2.0, 1.6, 0.5))          # top 3.2 m² at 0.5 m: a Recast island of its own
    table = ("table", (3.5, 2.8, 0.375), (1.2, 0.8, 0.75))
    platform = ("platform", (4.0, 0.8, 0.05), (1.2, 0.8, 0.1))   # 0.1 m high: within the 0.2 m climb
    lay = room(cols=10, rows=8, furniture=[bed, table, platform])  # 5 m x 4 m
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    tops = np.array([[1.25, 1.5, 0.5], [3.5, 2.8, 0.75]])
    assert not nav.is_navigable(tops).any()
    assert (nav.island_of(tops) == -1).all()
    snapped = nav.snap(tops)
    assert np.allclose(snapped[:, 2], 0.0)                        # snapping lands on the floor, not a top
    assert nav.is_navigable(np.array([[4.0, 0.8, 0.1]])).all()     # standing on the low platform
    assert nav.is_navigable(np.array([[1.0, 3.2, 0.0], [2.6, 1.5, 0.0]])).all()
    assert not nav.is_navigable(np.array([[1.0, 3.2, 0.8]])).any()  # right xy, too high above the floor
    assert len(nav.islands) == 1
    # Floor area: the room minus the bed and table footprints and the agent-radius margins (about 0.15 m along
    # the 18 m of walls and the 11.2 m of furniture outline).
    free_m2 = 5.0 * 4.0 - 3.2 - 0.96
    assert free_m2 - 0.2 * 29.2 < nav.navigable_area_m2 < free_m2 - 0.1 * 29.2


def test_a_wall_splits_the_floor_into_islands():
    free = np.ones((6, 13), bool)
    free[:, 6] = False                                            # a full-height wall tile column, no door
    lay = scenes.layout(free, [], 0.5)
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    assert len(nav.islands) == 2
    assert nav.islands[0].area_m2 == pytest.approx(nav.islands[1].area_m2, rel=0.05)
    west, east = np.array([1.0, 1.5, 0.0]), np.array([5.5, 1.5, 0.0])
    assert nav.island_of(np.stack([west, east])).tolist() in ([0, 1], [1, 0])
    path = nav.shortest_path(west, east)
    assert not path.reachable and len(path.points) == 0
    assert np.isinf(nav.geodesic_distance(west[None], east)).all()
    assert nav.shortest_path(west, np.array([2.0, 2.5, 0.0])).reachable


def test_shortest_path_is_straight_in_the_open_and_bends_over_a_wall_tip():
    free = np.ones((8, 12), bool)                                 # 6 m x 4 m
    stub = ("partition", (3.0, 1.25, 1.25), (0.1, 2.5, 2.5))     # from the south wall up to y = 2.5
    lay = scenes.layout(free, [stub], 0.5)
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    a, b = np.array([1.0, 1.0, 0.0]), np.array([5.0, 1.0, 0.0])
    open_path = nav.shortest_path(a, np.array([1.0, 3.5, 0.0]))
    assert open_path.length_m == pytest.approx(2.5, abs=1e-9) and len(open_path.points) == 2
    path = nav.shortest_path(a, b)
    # Taut over the tip at (3, 2.5 + agent radius + up to a cell): 2 * sqrt(2^2 + 1.6^2) .. with 1.65.
    assert 2 * np.hypot(2.0, 1.6) - 0.02 < path.length_m < 2 * np.hypot(2.0, 1.7)
    assert np.allclose(path.points[[0, -1]], [a, b])
    assert nav.is_navigable(path.points).all()
    assert path.points[1:-1, 1].min() > 2.5                       # every corner passes north of the tip
    assert nav.geodesic_distance(a[None], b)[0] == pytest.approx(path.length_m, rel=0.01)


def test_sampling_near_a_box_and_snapping_are_on_the_largest_island():
    lay = scenes.multi_room(3)
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    from scene_graph.geometry import boxes_from_table, point_box_distance

    centroid, lengths, axes = boxes_from_table(lay.objects)
    rng = np.random.default_rng(0)
    for c, l, a in zip(centroid, lengths, axes):
        p = nav.sample_point(rng, island=0, near_box=(c, l, a), max_distance_m=1.0)
        assert p is not None and nav.is_navigable(p[None])[0] and nav.island_of(p[None])[0] == 0
        assert point_box_distance(np.array([p[0], p[1], c[2]]), c, l, a) <= 1.0
    inside = centroid[:1]                                          # a furniture centre: not navigable
    snapped = nav.snap(inside, island=0)
    assert not nav.is_navigable(inside)[0] and nav.is_navigable(snapped)[0]


def test_builds_are_deterministic():
    lay = scenes.multi_room(5)
    a = build_navigator(lay.vertices, lay.faces, backend="grid")
    b = build_navigator(lay.vertices, lay.faces, backend="grid")
    assert np.array_equal(a.topdown().islands, b.topdown().islands)
    p, q = np.array([0.6, 0.6, 0.0]), np.array([7.6, 7.6, 0.0])
    assert np.array_equal(a.shortest_path(p, q).points, b.shortest_path(p, q).points)


def test_a_y_up_mesh_is_refused_as_not_z_up():
    lay = scenes.multi_room(1)
    y_up = lay.vertices[:, [0, 2, 1]] * [1.0, 1.0, -1.0]          # (x, z, -y): the habitat / glTF convention
    with pytest.raises(InputError, match="not z-up") as info:
        build_navigator(y_up, lay.faces, backend="grid", source="scene/mesh.ply")
    assert info.value.path == "scene/mesh.ply"


def test_walls_without_a_floor_are_refused():
    lay = room()
    _, normals, _ = face_geometry(lay.vertices, lay.faces)
    walls_only = lay.faces[normals[:, 2] < 0.5]
    with pytest.raises(InputError, match="no floor"):
        build_navigator(lay.vertices, walls_only, backend="grid", source="walls.ply")


def test_malformed_meshes_and_settings_are_refused():
    with pytest.raises(InputError, match="out of range"):
        build_navigator(np.zeros((3, 3)), np.array([[0, 1, 5]]), backend="grid")
    with pytest.raises(ValueError, match="agent_max_slope_deg"):
        NavmeshSettings(agent_max_slope_deg=95.0)
    with pytest.raises(ValueError, match="unknown navigation backend"):
        build_navigator(np.zeros((3, 3)), np.array([[0, 1, 2]]), backend="recast")


def test_habitat_backend_conversion_and_availability():
    from scene_graph.navigation import habitat_available
    from scene_graph.navigation.habitat import to_yup, to_zup

    pts = np.array([[1.0, 2.0, 3.0], [-0.5, 4.0, 0.25]])
    yup = to_yup(pts)
    assert np.allclose(yup, [[1.0, 3.0, -2.0], [-0.5, 0.25, -4.0]])      # z-up (x, y, z) -> y-up (x, z, -y)
    assert np.allclose(to_zup(yup), pts, atol=1e-6)
    # A left (counter-clockwise from above) turn stays counter-clockwise about habitat's +y: handedness preserved.
    a, b = to_yup(np.array([1.0, 0.0, 0.0])), to_yup(np.array([0.0, 1.0, 0.0]))
    assert np.allclose(np.cross(a, b), to_yup(np.array([0.0, 0.0, 1.0])))
    if not habitat_available():
        lay = room()
        with pytest.raises(ValueError, match="habitat-sim"):
            build_navigator(lay.vertices, lay.faces, backend="habitat")
