"""Each VSTI-Bench task's answer on a hand-built graph: camera centres, displacements, directions, distances."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.errors import InputError
from pipeline.core.schemas import GRAPH_FRAMES_SCHEMA
from qa_factories import answer_of, look_pose, make_graph, run_task
from qa_templates.scene_view import build_view
from qa_templates.vsti_camera import movement_direction

CUBE = (0.2, 0.2, 0.2)


def _walk(n, start=(0.0, 0.0, 1.0), step=(0.0, 0.25, 0.0), forward=(0.0, 1.0, 0.0)):
    """n poses moving by `step` per frame, all looking along `forward`."""
    return [look_pose(np.add(start, np.multiply(k, step)), forward) for k in range(n)]


def test_camera_centre_is_the_translation_of_camera_to_world():
    # A rotated camera (looking along +y) at (1, 2, 1.5): -R.T @ t would give a different point.
    pose = look_pose((1.0, 2.0, 1.5), (0.0, 1.0, 0.0))
    assert not np.allclose(-pose[:3, :3].T @ pose[:3, 3], pose[:3, 3])
    g = make_graph([(1, "sofa", (1.0, 5.0, 1.5), (1.0, 1.0, 1.0))], poses=[pose], visibility=[(0, 1)])
    view = build_view(g)
    np.testing.assert_allclose(view.camera_centre(0), [1.0, 2.0, 1.5])
    records, _ = run_task(g, "camera_obj_abs_dist")
    # Sofa's near face at y = 4.5, camera at y = 2.0: 2.5 m.
    assert records[0]["ground_truth"] == 2.5 and records[0]["answer_value"] == pytest.approx(2.5)
    assert records[0]["question"] == ("What is the approximate distance (in meters) between the camera (or the person "
                                      "filming) and the nearest point of the sofa in frame 1 of 1?")
    assert records[0]["frame_ranks"] == [0] and records[0]["object_ids"] == [1]


def test_camera_obj_abs_dist_range_and_visibility():
    poses = _walk(4)
    g = make_graph([(1, "sofa", (0, 3.0, 1.0), CUBE), (2, "tv", (0, 20.0, 1.0), CUBE), (3, "bed", (3, 0, 1), CUBE)],
                   poses=poses, visibility=[(k, 1) for k in range(4)] + [(k, 2) for k in range(4)])
    records, stats = run_task(g, "camera_obj_abs_dist")
    # Only the sofa (visible, within 10 m); the tv is too far, the bed never visible.
    assert {r["object_ids"][0] for r in records} == {1}
    for r in records:
        expected = 3.0 - 0.1 - 0.25 * r["frame_ranks"][0]
        assert r["answer_value"] == pytest.approx(expected)
        assert f"frame {r['frame_ranks'][0] + 1} of 4" in r["question"]
    assert stats["rejections"] == {"camera-object distance outside [0.2, 10.0] m": 4}


def test_camera_displacement_one_and_a_half_metres_forward():
    g = make_graph([], poses=_walk(8, step=(0.0, 0.25, 0.0)))
    records, _ = run_task(g, "camera_displacement")
    pairs = {tuple(r["frame_ranks"]): r for r in records}
    # Gaps of 5-7 frames only (min gap 5), each 0.25 m per frame.
    assert set(pairs) == {(0, 5), (0, 6), (0, 7), (1, 6), (1, 7), (2, 7)}
    assert pairs[(0, 6)]["answer_value"] == pytest.approx(1.5) and pairs[(0, 6)]["ground_truth"] == 1.5
    assert pairs[(0, 6)]["question"] == ("Approximately how far (in meters) did the camera move between frame 1 of 8 "
                                         "and frame 7 of 8?")


def test_movement_direction_rules():
    assert movement_direction(np.array([0.1, 0.0, 1.5]), 1.0, 0.15) == "Forward"
    assert movement_direction(np.array([0.0, 3.0, -1.2]), 1.0, 0.15) == "Backward"   # vertical motion ignored
    assert movement_direction(np.array([-1.3, 0.0, 0.4]), 1.0, 0.15) == "Left"
    assert movement_direction(np.array([0.7, 0.0, 0.2]), 0.5, 0.15) == "Right"
    assert movement_direction(np.array([0.3, 0.0, 0.9]), 1.0, 0.15) is None           # below threshold
    assert movement_direction(np.array([1.2, 0.0, 1.25]), 1.0, 0.15) is None          # too close to call


def test_movement_direction_in_start_camera_axes():
    # Facing +y and stepping towards -x: the camera's right is +x, so it moves Left.
    left = make_graph([], poses=_walk(6, step=(-0.5, 0.0, 0.0)))
    records, _ = run_task(left, "camera_movement_direction")
    assert records and all(answer_of(r) == "Left" for r in records)
    r = records[0]
    assert len(r["options"]) == 4 and r["ground_truth"] == "Left" and r["mc_answer"] in "ABCD"
    i, j = r["frame_ranks"]
    assert r["question"].startswith(f"During the sequence between frame {i + 1} of 6 and frame {j + 1} of 6, what was "
                                    "the primary consistent direction of the camera's movement")
    listed = r["question"].split("The options are ")[1].rstrip(".")
    texts = [o[3:] for o in r["options"]]
    assert listed == f"{texts[0]}, {texts[1]}, {texts[2]}, and {texts[3]}"
    # Facing -x and moving towards -x is Forward.
    forward = make_graph([], poses=_walk(6, step=(-0.5, 0.0, 0.0), forward=(-1.0, 0.0, 0.0)))
    v3, _ = run_task(forward, "camera_movement_direction_v3")
    assert v3 and all(answer_of(r) == "Forward" and len(r["options"]) == 2 for r in v3)
    assert " and " in v3[0]["question"].split("The options are ")[1]


def _pair_graph(a_centre, b_centre, n=1):
    """Camera at the origin looking along +y (x right, y down = -z world, z forward = +y world)."""
    return make_graph([(1, "lamp", a_centre, CUBE), (2, "sofa", b_centre, CUBE)],
                      poses=[look_pose((0, 0, 1), (0, 1, 0))] * n, visibility=[(k, i) for k in range(n) for i in (1, 2)])


def _relation(records):
    """Answer as 'lamp <relation> sofa' whichever object the question named first."""
    r = records[0]
    answer = answer_of(r)
    first_is_lamp = "is the lamp" in r["question"]
    flip = {"Left": "Right", "Right": "Left", "Up": "Down", "Down": "Up", "Near": "Far", "Far": "Near"}
    return answer if first_is_lamp else flip[answer]


def test_obj_obj_relative_position_left_right_up_down_near_far():
    assert _relation(run_task(_pair_graph((-2, 4, 1), (2, 4, 1)), "obj_obj_relative_pos_lr")[0]) == "Left"
    assert _relation(run_task(_pair_graph((2, 4, 1), (-2, 4, 1)), "obj_obj_relative_pos_lr")[0]) == "Right"
    assert _relation(run_task(_pair_graph((0, 4, 2.5), (0, 4, 0.5)), "obj_obj_relative_pos_ud")[0]) == "Up"
    assert _relation(run_task(_pair_graph((0, 2, 1), (0.5, 5, 1)), "obj_obj_relative_pos_nf")[0]) == "Near"
    records, _ = run_task(_pair_graph((-2, 4, 1), (2, 4, 1)), "obj_obj_relative_pos_lr")
    r = records[0]
    b, a = ("sofa", "lamp") if "is the lamp" in r["question"] else ("lamp", "sofa")
    assert r["question"] == f"In frame 1 of 1, relative to the {b}, is the {a} to the [Left/Right]?"
    assert sorted(o[3:] for o in r["options"]) == ["Left", "Right"] and r["ground_truth"] == answer_of(r)
    nf, _ = run_task(_pair_graph((0, 2, 1), (0.5, 5, 1)), "obj_obj_relative_pos_nf")
    assert "relative to the camera, is the" in nf[0]["question"] and "[Near/Far] compared to the" in nf[0]["question"]


def test_obj_obj_relative_position_needs_the_margin():
    # 0.1 m apart along x (boxes 0.2 wide): not wholly separated by 0.15 m.
    records, stats = run_task(_pair_graph((-0.15, 4, 1), (0.15, 4, 1)), "obj_obj_relative_pos_lr")
    assert records == [] and stats["rejections"] == {"objects not separated by 0.15 m along the axis": 1}


def test_camera_obj_rel_dist_nearest_with_margins():
    objs = [(1, "sofa", (0, 2.1, 1), CUBE), (2, "tv", (0, 3.1, 1), CUBE), (3, "bed", (1.0, 4.1, 1), CUBE),
            (4, "desk", (-1.0, 5.1, 1), CUBE)]
    g = make_graph(objs, poses=[look_pose((0, 0, 1), (0, 1, 0))], visibility=[(0, i) for i in (1, 2, 3, 4)])
    records, _ = run_task(g, "camera_obj_rel_dist_v1")
    assert len(records) == 1 and answer_of(records[0]) == "sofa" and records[0]["answer_value"] == pytest.approx(2.0)
    assert records[0]["question_type"] == "camera_obj_rel_dist_v1"
    listed = records[0]["question"].split("(")[1].split(")")[0].split(", ")
    assert listed == [o[3:] for o in records[0]["options"]]
    too_close = make_graph([(1, "sofa", (0, 0.4, 1), CUBE), (2, "tv", (0, 3.1, 1), CUBE)],
                           poses=[look_pose((0, 0, 1), (0, 1, 0))], visibility=[(0, 1), (0, 2)])
    records, stats = run_task(too_close, "camera_obj_rel_dist_v3")
    assert records == [] and stats["rejections"] == {"nearest object closer than 0.5 m": 1}


def test_camera_obj_dist_change_between_frames():
    # Walking 0.25 m per frame straight at a sofa whose near face is 4.9 m ahead at frame 0.
    g = make_graph([(1, "sofa", (0, 5.0, 1.0), CUBE)], poses=_walk(8), visibility=[(k, 1) for k in range(8)])
    records, _ = run_task(g, "camera_obj_dist_change")
    assert records
    for r in records:
        i, j = r["frame_ranks"]
        assert r["answer_value"] == pytest.approx(0.25 * (j - i))
        assert 5 <= j - i <= 30
    assert "change between frame" in records[0]["question"]


def test_invalid_frames_are_skipped_and_counted_but_valid_nan_poses_are_errors():
    poses = _walk(8)
    poses[3] = np.full((4, 4), -np.inf)         # lost tracking: marked invalid by the factory
    g = make_graph([], poses=poses)
    records, stats = run_task(g, "camera_displacement")
    assert all(3 not in r["frame_ranks"] for r in records)
    assert stats["rejections"]["frame without a finite pose"] == 1
    bad = make_graph([], poses=_walk(2))
    valid = pa.array([True, True])
    c2w = bad.frames.column("camera_to_world").to_pylist()
    c2w[1] = [float("nan")] * 16
    frames = bad.frames.set_column(GRAPH_FRAMES_SCHEMA.get_field_index("camera_to_world"), "camera_to_world",
                                   pa.array(c2w, type=GRAPH_FRAMES_SCHEMA.field("camera_to_world").type))
    frames = frames.set_column(GRAPH_FRAMES_SCHEMA.get_field_index("valid"), "valid", valid)
    bad.frames = frames
    with pytest.raises(InputError, match=r"frames.parquet: frames marked valid with non-finite poses at ranks \[1\]"):
        build_view(bad)


def test_qa_geometry_conventions():
    from qa_templates.geometry import floor_angle_deg, world_to_camera

    # Facing +y from the origin: -x is 90 degrees to the left (counter-clockwise, z-up), +x is 270, behind is 180.
    angles = floor_angle_deg([0, 0, 0], [0, 1, 0], np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 5, 0]], float))
    np.testing.assert_allclose(angles, [90.0, 270.0, 180.0, 0.0], atol=1e-9)
    # A camera at (1, 2, 1.5) looking along +y: world +x is camera right (+x), world -z is camera down (+y).
    pose = look_pose((1.0, 2.0, 1.5), (0.0, 1.0, 0.0))
    np.testing.assert_allclose(world_to_camera(np.array([[2.0, 5.0, 0.5]]), pose), [[1.0, 1.0, 3.0]], atol=1e-12)
