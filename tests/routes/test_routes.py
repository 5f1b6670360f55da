"""Routes on generated layouts: turn direction and vocabulary, landmarks, filters, determinism, and bad scenes."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.core.errors import InputError
from pipeline.core.schemas import ROUTES_SCHEMA, read_table, write_table
from scene_graph.navigation import build_navigator, scenes
from scene_graph.routes import (TURN_BACK, TURN_LEFT, TURN_RIGHT, RouteSettings, classify_turn, fold_short_legs,
                                routes_table, sample_routes)


def only(objects: pa.Table, categories: list[str]) -> pa.Table:
    return objects.filter(pc.is_in(objects.column("category"), pa.array(categories)))


def routes_between(lay, start: str, goal: str, categories: list[str], **settings):
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    routes, _ = sample_routes(nav, only(lay.objects, categories), RouteSettings(max_routes=50, **settings))
    return [r for r in routes if r.start_label == start and r.goal_label == goal]


@pytest.mark.parametrize("mirror, expected", [(False, TURN_LEFT), (True, TURN_RIGHT)])
def test_l_corridor_route_turns_left_and_its_mirror_right(mirror, expected):
    # Door at the west end, plant in the corner, picture at the north (mirror: south) end.
    lay = scenes.l_corridor(mirror=mirror)
    found = routes_between(lay, "door", "picture", ["door", "plant", "picture"])
    assert found, "the L-corridor must yield the door -> picture route"
    for route in found:
        assert route.facing_label == "plant"                 # the only other object, straight ahead
        assert not route.starts_with_turn
        assert route.turns == [expected]
        assert route.landmark_labels == ["plant", "picture"]
        assert abs(abs(route.turn_angles_deg[0]) - 90.0) < 25.0
        assert route.geodesic_length_m > np.linalg.norm(route.goal - route.start)
    back = routes_between(lay, "picture", "door", ["door", "plant", "picture"])
    assert back and all(r.turns == [TURN_RIGHT if expected == TURN_LEFT else TURN_LEFT] for r in back)


def test_u_turn_around_a_thin_wall_is_turn_back():
    lay = scenes.hairpin()
    found = routes_between(lay, "door", "window", ["door", "window", "plant", "partition"])
    assert found
    for route in found:
        assert route.turns == [TURN_BACK]
        assert abs(route.turn_angles_deg[0]) > 135.0
        assert route.landmark_labels[-1] == "window"


def test_turn_classification_thresholds_and_sign():
    assert classify_turn(29.0) is None and classify_turn(-29.0) is None
    assert classify_turn(31.0) == TURN_LEFT                  # counter-clockwise seen from above (z-up) = left
    assert classify_turn(-31.0) == TURN_RIGHT
    assert classify_turn(134.0) == TURN_LEFT and classify_turn(-134.0) == TURN_RIGHT
    assert classify_turn(136.0) == TURN_BACK and classify_turn(-179.0) == TURN_BACK
    hairpin = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [4.0, 0.4, 0.0], [0.0, 0.4, 0.0]])
    assert np.allclose(fold_short_legs(hairpin, 0.5), [[0, 0, 0], [4, 0.2, 0], [0, 0.4, 0]])


def test_routes_on_multi_room_scenes_obey_every_rule():
    settings = RouteSettings(max_routes=8, reversed=True, partial=True, seed=3)
    total = 0
    for seed in (0, 1):
        lay = scenes.multi_room(seed)
        nav = build_navigator(lay.vertices, lay.faces, backend="grid")
        routes, rejected = sample_routes(nav, lay.objects, settings)
        total += len(routes)
        kinds = {r.kind for r in routes}
        assert "forward" in kinds
        for r in routes:
            assert 1 <= r.num_turns <= 4
            labels = [r.start_label] + r.landmark_labels
            assert len(set(labels)) == len(labels)                        # no repeated landmark
            assert len(r.landmark_labels) == r.num_turns + (0 if r.starts_with_turn else 1)
            assert r.goal_label == r.landmark_labels[-1] and r.facing_label not in (r.start_label, r.goal_label)
            assert all(t in (TURN_LEFT, TURN_RIGHT, TURN_BACK) for t in r.turns)
            assert nav.is_navigable(r.corner_points).all() and (nav.island_of(r.corner_points) == 0).all()
            assert sum(r.leg_lengths_m) == pytest.approx(r.geodesic_length_m, rel=0.05)
            if r.kind == "reversed":
                parent = routes[r.parent_index]
                assert (r.start_label, r.goal_label) == (parent.goal_label, parent.start_label)
                assert np.allclose(r.corner_points, parent.corner_points[::-1])
            if r.kind == "partial":
                parent = routes[r.parent_index]
                assert r.goal_label in parent.landmark_labels[:-1] and r.num_turns < parent.num_turns + 1
        assert sum(rejected.values()) > 0
    assert total >= 10


def test_routes_table_round_trips_and_is_deterministic(tmp_path):
    lay = scenes.multi_room(2)
    tables = []
    for _ in range(2):
        nav = build_navigator(lay.vertices, lay.faces, backend="grid")
        routes, _ = sample_routes(nav, lay.objects, RouteSettings(max_routes=6, reversed=True, seed=11))
        tables.append(routes_table(routes, "synthetic", "synth0002", "grid"))
    write_table(tmp_path / "a.parquet", tables[0], ROUTES_SCHEMA)
    write_table(tmp_path / "b.parquet", tables[1], ROUTES_SCHEMA)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    back = read_table(tmp_path / "a.parquet", ROUTES_SCHEMA)
    assert back.equals(tables[0]) and back.num_rows == len(routes)
    first = back.slice(0, 1).to_pylist()[0]
    assert first["corner_points"][0] == pytest.approx(first["start"])
    assert first["num_turns"] == len(first["turns"])
    other, _ = sample_routes(build_navigator(lay.vertices, lay.faces, backend="grid"), lay.objects,
                             RouteSettings(max_routes=6, reversed=True, seed=12))
    assert not routes_table(other, "synthetic", "synth0002", "grid").equals(tables[0])   # the seed matters


def test_too_few_unique_objects_and_disconnected_rooms_are_input_errors():
    lay = scenes.l_corridor()
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    with pytest.raises(InputError, match="2 objects of a unique category"):
        sample_routes(nav, only(lay.objects, ["door", "plant"]), source="s/objects.parquet")
    # Two rooms with no door: two unique objects in each, so no island reaches three.
    free = np.ones((6, 13), bool)
    free[:, 6] = False
    markers = [("bed", (0.5, 0.5, 0.3)), ("tv", (2.5, 2.5, 0.3)), ("sofa", (4.0, 0.5, 0.3)), ("sink", (6.0, 2.5, 0.3))]
    rooms = scenes.layout(free, [], 0.5, markers)
    nav = build_navigator(rooms.vertices, rooms.faces, backend="grid")
    with pytest.raises(InputError, match="disconnected rooms") as info:
        sample_routes(nav, rooms.objects, source="s/objects.parquet")
    assert info.value.path == "s/objects.parquet" and "2 islands" in str(info.value)
