"""Each VSI-Bench task's answer on a hand-built scene graph whose answer is known by construction."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import InputError
from qa_factories import answer_of, look_pose, make_graph, run_task
from qa_templates.scene_view import build_view

CUBE = (0.2, 0.2, 0.2)


def test_counting_counts_instances_and_skips_single_categories():
    g = make_graph([(1, "chair", (0, 0, 0.5), CUBE), (2, "chair", (1, 0, 0.5), CUBE), (3, "chair", (2, 0, 0.5), CUBE),
                    (4, "table", (3, 3, 0.5), CUBE)])
    records, stats = run_task(g, "object_counting")
    assert len(records) == 1
    r = records[0]
    assert r["question"] == "How many chair(s) are in this room?"
    assert r["ground_truth"] == "3" and r["options"] is None
    assert sorted(r["object_ids"]) == [1, 2, 3]
    assert stats["rejections"] == {"category with a single instance": 1}


def test_abs_distance_chair_two_metres_from_table_along_x():
    # chair spans x in [-0.25, 0.25]; table spans x in [2.25, 3.25]: closest points 2.0 m apart.
    g = make_graph([(1, "chair", (0, 0, 0.5), (0.5, 0.5, 1.0)), (2, "table", (2.75, 0, 0.4), (1.0, 1.0, 0.8))])
    records, _ = run_task(g, "object_abs_distance")
    assert len(records) == 1
    r = records[0]
    assert r["ground_truth"] == "2.0" and r["answer_value"] == pytest.approx(2.0)
    assert "the chair and the table" in r["question"] or "the table and the chair" in r["question"]
    assert r["question"].startswith("Measuring from the closest point of each object, what is the direct distance")


def test_abs_distance_reads_box_axes_as_rows():
    # A 2 m x 0.2 m bar rotated 90 degrees: its long side runs along world y, so along x it is only 0.2 m thick.
    rotated = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    g = make_graph([(1, "sofa", (0, 0, 0.5), (2.0, 0.2, 1.0), rotated), (2, "lamp", (1.6, 0, 0.5), (0.2, 0.2, 1.0))])
    records, _ = run_task(g, "object_abs_distance")
    # Rows as axes: sofa x-extent 0.1, lamp starts at 1.5 -> 1.4 m. (Columns would make the sofa 1 m wide: 0.5 m.)
    assert records[0]["answer_value"] == pytest.approx(1.4)


def test_abs_distance_skips_touching_pairs_and_non_unique_categories():
    g = make_graph([(1, "chair", (0, 0, 0.5), CUBE), (2, "table", (0.25, 0, 0.5), CUBE),
                    (3, "cup", (5, 5, 1), CUBE), (4, "cup", (6, 5, 1), CUBE)])
    records, stats = run_task(g, "object_abs_distance")
    assert records == []
    assert stats["rejections"] == {"objects closer than 0.2 m": 1}


def test_size_is_longest_edge_in_centimetres_and_mc_form_has_the_answer():
    g = make_graph([(1, "refrigerator", (0, 0, 0.9), (0.7, 0.6, 1.834))])
    records, _ = run_task(g, "object_size_estimation")
    assert records[0]["ground_truth"] == "183"
    assert "longest dimension (length, width, or height) of the refrigerator, measured in centimeters" in records[0]["question"]
    mc, _ = run_task(g, "object_size_estimation_mc")
    r = mc[0]
    assert r["question_type"] == "object_size_estimation_mc" and len(r["options"]) == 4
    assert answer_of(r) == "183"
    values = [float(o[3:]) for o in r["options"]]
    assert len(set(values)) == 4
    assert all(0.4 * 183 - 1 <= v <= 1.8 * 183 + 1 for v in values)
    # Every pair of options differs by at least the margin (20 % of the truth, rounded up to whole cm).
    gaps = np.abs(np.subtract.outer(values, values))[np.triu_indices(4, 1)]
    assert gaps.min() >= np.ceil(0.2 * 183)


def test_room_size_one_per_scene_in_square_metres():
    g = make_graph([(1, "bed", (0, 0, 0.5), CUBE)], room={"floor_area_m2": 23.46})
    records, _ = run_task(g, "room_size_estimation")
    assert [r["ground_truth"] for r in records] == ["23.5"]
    assert records[0]["question"].startswith("What is the size of this room (in square meters)?")
    empty, stats = run_task(make_graph([(1, "bed", (0, 0, 0.5), CUBE)]), "room_size_estimation")
    assert empty == [] and stats["rejections"] == {"no positive floor area in room.json": 1}


def test_rel_distance_picks_the_nearest_category_measuring_to_its_closest_instance():
    g = make_graph([(1, "tv", (0, 0, 0.5), CUBE),
                    (2, "sofa", (1.2, 0, 0.5), CUBE),                                  # 1.0 m
                    (3, "bed", (0, 2.2, 0.5), CUBE),                                   # 2.0 m
                    (4, "chair", (-3.2, 0, 0.5), CUBE), (5, "chair", (0, -0.7, 0.5), CUBE),  # closest chair 0.5 m
                    (6, "desk", (0, 0, 4.7), CUBE)])                                   # 4.0 m
    records, _ = run_task(g, "object_rel_distance")
    target_tv = [r for r in records if r["question"].endswith(
        "is the closest to the tv? If there are multiple instances of an object category, measure to the closest.")]
    assert len(target_tv) == 1
    r = target_tv[0]
    assert answer_of(r) == "chair" and len(r["options"]) == 4
    assert r["answer_value"] == pytest.approx(0.5)
    # The question lists the choices in the option order.
    listed = r["question"].split("(")[1].split(")")[0].split(", ")
    assert listed == [o[3:] for o in r["options"]]
    assert 5 in r["object_ids"] and 4 not in r["object_ids"]


def test_rel_distance_rejects_ambiguous_gaps_more_strictly_in_large_rooms():
    objs = [(1, "tv", (0, 0, 0.5), CUBE), (2, "sofa", (1.2, 0, 0.5), CUBE),        # 1.0 m
            (3, "bed", (0, 1.45, 0.5), CUBE)]                                        # 1.25 m: gap 0.25 m
    small, _ = run_task(make_graph(objs, room={"floor_area_m2": 20.0}), "object_rel_distance_v3")
    large, stats = run_task(make_graph(objs, room={"floor_area_m2": 60.0}), "object_rel_distance_v3")
    assert any(answer_of(r) == "sofa" and r["question"].count("closest to the tv") for r in small)
    assert not any("closest to the tv" in r["question"] for r in large)
    assert stats["rejections"]["two candidate distances within 0.3 m"] >= 1


def _direction_graph(query_xy):
    # Standing by the bed at the origin, facing the tv at +y; the lamp is the queried object.
    return make_graph([(1, "bed", (0, 0, 0.5), CUBE), (2, "tv", (0, 2, 0.5), CUBE),
                       (3, "lamp", (query_xy[0], query_xy[1], 0.5), CUBE)])


def _direction_answer(graph, level):
    records, stats = run_task(graph, f"object_rel_direction_{level}")
    mine = [r for r in records if r["question"].startswith("If I am standing by the bed and facing the tv, is the lamp")]
    return (answer_of(mine[0]) if mine else None), mine, stats


@pytest.mark.parametrize("query_xy, hard, medium, easy", [
    ((-2.0, 1.0), "front-left", "left", "left"),
    ((2.0, 1.0), "front-right", "right", "right"),
    ((-1.0, -2.0), "back-left", "back", None),         # 153 deg to the left: behind, so no easy question
    ((1.5, -1.0), "back-right", "right", "right"),     # 123.7 deg to the right: still "right" for medium and easy
    ((1.0, -2.5), "back-right", "back", None),         # 202 deg
    ((-2.0, -1.0), "back-left", "left", "left"),       # 116.6 deg to the left
])
def test_rel_direction_quadrants_and_sectors(query_xy, hard, medium, easy):
    g = _direction_graph(query_xy)
    assert _direction_answer(g, "hard")[0] == hard
    assert _direction_answer(g, "medium")[0] == medium
    assert _direction_answer(g, "easy")[0] == easy


def test_rel_direction_easy_skips_objects_behind():
    # VLM-3R's left/right generator uses the medium sectors (0/135/225/360) and skips the back one.
    _, _, stats = _direction_answer(_direction_graph((-1.0, -2.0)), "easy")
    assert stats["rejections"].get("queried object behind: neither left nor right", 0) >= 1
    answer, _, _ = _direction_answer(_direction_graph((-2.0, -0.4)), "easy")    # 101 deg: left
    assert answer == "left"


def test_rel_direction_question_forms_and_options():
    _, hard, _ = _direction_answer(_direction_graph((-2.0, 1.0)), "hard")
    assert hard[0]["question"].endswith("The directions refer to the quadrants of a Cartesian plane (if I am standing "
                                        "at the origin and facing along the positive y-axis).")
    assert sorted(o[3:] for o in hard[0]["options"]) == ["back-left", "back-right", "front-left", "front-right"]
    _, easy, _ = _direction_answer(_direction_graph((-2.0, 1.0)), "easy")
    assert easy[0]["question"] == ("If I am standing by the bed and facing the tv, is the lamp to the left or the "
                                   "right of the tv?")


def test_rel_direction_skips_near_boundaries_and_far_objects():
    # 5 degrees left of straight ahead: within 10 degrees of the front boundary for every level.
    near_ahead = _direction_graph((-0.35, 4.0))
    for level in ("hard", "medium", "easy"):
        answer, _, stats = _direction_answer(near_ahead, level)
        assert answer is None
        assert stats["rejections"].get("within 10.0 degrees of a sector boundary", 0) >= 1
    far = _direction_graph((-8.0, 1.0))
    answer, _, stats = _direction_answer(far, "hard")
    assert answer is None
    assert stats["rejections"] == {"object distances outside [0.3, 5.0] m": 1}


def test_rel_direction_skips_boxes_straddling_quadrants():
    # A long sofa across the facing line in front: its corners fall on both sides of the front boundary.
    g = make_graph([(1, "bed", (0, 0, 0.5), CUBE), (2, "tv", (0, 2, 0.5), CUBE),
                    (3, "sofa", (-0.9, 3.0, 0.5), (2.4, 0.6, 0.8))])
    records, stats = run_task(g, "object_rel_direction_hard")
    assert not [r for r in records if r["question"].startswith("If I am standing by the bed and facing the tv, is the sofa")]
    assert stats["rejections"].get("queried box straddles direction sectors", 0) >= 1


def _appearance_graph(times_by_category):
    objs, vis, rank_of_time = [], [], {}
    times = sorted(set(times_by_category.values()))
    for rank, t in enumerate(times):
        rank_of_time[t] = rank
    for k, (category, t) in enumerate(sorted(times_by_category.items())):
        objs.append((k + 1, category, (k, 0, 0.5), CUBE))
        vis += [(r, k + 1) for r in range(rank_of_time[t], len(times))]
    poses = [look_pose((0, -3, 1.5), (0, 1, 0)) for _ in times]
    return make_graph(objs, poses=poses, visibility=vis, timestamps=times)


def test_appearance_order_from_visibility_and_frame_times():
    g = _appearance_graph({"sofa": 4.0, "chair": 0.0, "tv": 6.5, "bed": 2.0})
    records, _ = run_task(g, "obj_appearance_order")
    assert len(records) == 1
    r = records[0]
    assert answer_of(r) == "chair, bed, sofa, tv"
    assert len({o[3:] for o in r["options"]}) == 4
    assert r["question"].startswith("What will be the first-time appearance order of the following categories in the video: ")
    assert sorted(r["question"].split(": ")[1].rstrip("?").split(", ")) == ["bed", "chair", "sofa", "tv"]


def test_appearance_order_prefers_room_json_and_enforces_the_gap():
    g = _appearance_graph({"sofa": 4.0, "chair": 0.0, "tv": 6.5, "bed": 2.0})
    g.room["first_appearance_s"] = {"sofa": 1.5, "chair": 0.0, "tv": 6.5, "bed": 3.0}
    records, _ = run_task(g, "obj_appearance_order")
    assert answer_of(records[0]) == "chair, sofa, bed, tv"
    # VLM-3R skips when any two first appearances are within the 1 s margin, inclusive: exactly 1 s is too close.
    for sofa in (0.5, 1.0):
        g.room["first_appearance_s"] = {"sofa": sofa, "chair": 0.0, "tv": 6.5, "bed": 3.0}
        records, stats = run_task(g, "obj_appearance_order")
        assert records == [] and stats["rejections"] == {"first appearances not more than 1.0 s apart": 1}


def test_bad_boxes_and_structural_categories():
    nan_box = make_graph([(1, "chair", (np.nan, 0, 0.5), CUBE), (2, "table", (1, 0, 0.5), CUBE)])
    with pytest.raises(InputError, match=r"objects.parquet: non-finite box .* instance ids \[1\]"):
        build_view(nan_box)
    # Walls and floors are not objects of any question.
    view = build_view(make_graph([(1, "wall", (0, 0, 1), (4, 0.1, 2)), (2, "floor", (0, 0, 0), (4, 4, 0.01)),
                                  (3, "chair", (1, 1, 0.5), CUBE)]))
    assert view.category.tolist() == ["chair"]


def test_empty_graph_yields_nothing_and_says_why():
    from qa_templates.config import QAConfig
    from qa_templates.generate import generate_scene
    from qa_templates.tasks import tasks_for

    result = generate_scene(make_graph([]), "vsibench", tasks_for("vsibench"), 0, QAConfig())
    assert result.records == []
    assert "scene has no objects" in result.notes and "scene has no frames" in result.notes
    assert result.stats["object_rel_direction_hard"]["rejections"] == {"fewer than 3 unique objects": 1}
