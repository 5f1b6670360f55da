"""Import of hand-written VLM-3R / VSI-Bench metadata (their real key layouts) and export round trips."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.core.scene import build_manifest
from pipeline.core.schemas import column_as_array
from scene_graph.graph import build_scene_graph
from scene_graph.interop import export_vlm3r, graph_to_vlm3r, import_vlm3r, import_vsibench

# VLM-3R scannet_metadata.py output: boxes with min/max and instance_id (the printer listed twice, as the
# duplicated whitelist entry makes it).
SCANNET_SCENE_META = """{
    "scene0011_00": {
        "video_path": "videos/val/scene0011_00.mp4",
        "dataset": "scannet",
        "room_size": 21.53,
        "room_center": [2.1, 3.4, 1.2],
        "object_counts": {"chair": 2, "printer": 1},
        "object_bboxes": {
            "chair": [
                {"centroid": [1.0, 1.0, 0.45], "axesLengths": [0.5, 0.5, 0.9],
                 "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1], "min": [0.75, 0.75, 0.0], "max": [1.25, 1.25, 0.9],
                 "instance_id": 3},
                {"centroid": [3.0, 1.0, 0.45], "axesLengths": [0.5, 0.5, 0.9],
                 "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1], "min": [2.75, 0.75, 0.0], "max": [3.25, 1.25, 0.9],
                 "instance_id": 5}
            ],
            "printer": [
                {"centroid": [2.0, 3.0, 0.8], "axesLengths": [0.4, 0.3, 0.3],
                 "normalizedAxes": [0, 1, 0, -1, 0, 0, 0, 0, 1], "min": [1.85, 2.8, 0.65], "max": [2.15, 3.2, 0.95],
                 "instance_id": 9},
                {"centroid": [2.0, 3.0, 0.8], "axesLengths": [0.4, 0.3, 0.3],
                 "normalizedAxes": [0, 1, 0, -1, 0, 0, 0, 0, 1], "min": [1.85, 2.8, 0.65], "max": [2.15, 3.2, 0.95],
                 "instance_id": 9}
            ]
        }
    }
}"""

# scannet_frame_metadata.py output; frame 20 lost tracking (VLM-3R wrote -Infinity / NaN); instance 0 (a wall) has
# a 2D box but no 3D box.
SCANNET_FRAME_META = """{
    "scene0011_00": {
        "camera_intrinsics": {"fx": 577.87, "fy": 577.87, "cx": 319.5, "cy": 239.5},
        "img_width": 640,
        "img_height": 480,
        "frames": [
            {"frame_id": 0, "file_path_color": "color/val/scene0011_00/000000.jpg",
             "file_path_depth": "depth/val/scene0011_00/000000.png",
             "camera_pose_camera_to_world": [[1, 0, 0, 0.5], [0, 0, 1, 1.5], [0, -1, 0, 1.2], [0, 0, 0, 1]],
             "bboxes_2d": [{"instance_id": 3, "bbox_2d": [100, 50, 199, 149]}, {"instance_id": 0, "bbox_2d": [0, 0, 639, 99]}]},
            {"frame_id": 20, "file_path_color": "color/val/scene0011_00/000020.jpg",
             "file_path_depth": "depth/val/scene0011_00/000020.png",
             "camera_pose_camera_to_world": [[-Infinity, -Infinity, -Infinity, -Infinity], [NaN, NaN, NaN, NaN],
                                             [NaN, NaN, NaN, NaN], [NaN, NaN, NaN, NaN]],
             "bboxes_2d": [{"instance_id": 5, "bbox_2d": [10, 10, 20, 20]}]},
            {"frame_id": 48, "file_path_color": "color/val/scene0011_00/000048.jpg",
             "file_path_depth": "depth/val/scene0011_00/000048.png",
             "camera_pose_camera_to_world": [[1, 0, 0, 0.9], [0, 0, 1, 1.5], [0, -1, 0, 1.2], [0, 0, 0, 1]],
             "bboxes_2d": [{"instance_id": 5, "bbox_2d": [300, 60, 380, 200]}, {"instance_id": 9, "bbox_2d": [1, 2, 3, 4]}]}
        ]
    }
}"""

# ScanNet++ (raw segments_anno obb, no instance_id) and ARKitScenes (min_corner/max_corner from columns-as-axes).
OTHER_SCENE_META = {
    "0a1b2c3d4e": {
        "video_path": "ScanNetpp/videos/train/0a1b2c3d4e.mp4", "dataset": "ScanNetpp", "scene_name": "0a1b2c3d4e",
        "split": "train", "room_size": 30.2, "room_center": [0, 0, 1],
        "object_counts": {"chair": 1, "table": 1},
        "object_bboxes": {
            "chair": [{"centroid": [1.25, 1.25, 0.45], "axesLengths": [0.6, 0.4, 0.9],
                       "normalizedAxes": [0.8660254, 0.5, 0, -0.5, 0.8660254, 0, 0, 0, 1],
                       "min": [0.890192, 0.926795, 0.0], "max": [1.609808, 1.573205, 0.9]}],
            "table": [{"centroid": [3.0, 2.0, 0.4], "axesLengths": [1.2, 0.8, 0.8],
                       "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1], "min": [2.4, 1.6, 0.0], "max": [3.6, 2.4, 0.8]}],
        },
    },
    "41069025": {
        "video_path": "ARkitScenes/videos/train/41069025.mp4", "dataset": "ARkitScenes", "scene_name": "41069025",
        "split": "train", "room_size": 0.0, "room_center": [0, 0, 0], "object_counts": {"chair": 1, "tv_monitor": 1},
        "object_bboxes": {
            "chair": [{"centroid": [1.25, 1.25, 0.45], "axesLengths": [0.9, 0.6, 0.4],
                       "normalizedAxes": [0, 0, 1, 1, 0, 0, 0, 1, 0],
                       "min_corner": [1.05, 0.80, 0.15], "max_corner": [1.45, 1.70, 0.75]}],
            "tv_monitor": [{"centroid": [3.0, 0.1, 1.2], "axesLengths": [1.0, 0.1, 0.6],
                            "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                            "min_corner": [2.5, 0.05, 0.9], "max_corner": [3.5, 0.15, 1.5]}],
        },
    },
}

# VSI-Bench data/meta_info/*_meta_info_val.json: key object_bbox, mapped names ("tv", "ceiling light").
VSI_META = {
    "scene0050_00": {
        "video_path": "scannet/scene0050_00.mp4", "dataset": "scannet", "room_size": 18.4,
        "room_center": [1.9, 2.2, 1.3], "object_counts": {"tv": 1, "ceiling light": 2},
        "object_bbox": {
            "tv": [{"centroid": [0.2, 2.0, 1.1], "axesLengths": [0.1, 1.1, 0.7],
                    "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1], "min": [0.15, 1.45, 0.75], "max": [0.25, 2.55, 1.45],
                    "instance_id": 17}],
            "ceiling light": [
                {"centroid": [1.0, 1.0, 2.6], "axesLengths": [0.3, 0.3, 0.1], "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                 "min": [0.85, 0.85, 2.55], "max": [1.15, 1.15, 2.65], "instance_id": 21},
                {"centroid": [3.0, 3.0, 2.6], "axesLengths": [0.3, 0.3, 0.1], "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                 "min": [2.85, 2.85, 2.55], "max": [3.15, 3.15, 2.65], "instance_id": 22}],
        },
    },
    "malformed_scene": {"dataset": "scannet", "room_size": 5.0, "object_bbox": {
        "chair": [{"centroid": [0, 0], "axesLengths": [0.5, 0.5, 0.5]}], "sofa": "not a list"}},
    "broken_scene": {"dataset": "scannet", "room_size": 5.0, "object_bbox": {
        "chair": [{"centroid": [0, 0, 0], "axesLengths": [0.5, 0.5, float("nan")],
                   "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1]}]}},
}


def test_import_vlm3r_scannet_scene_and_frames(tmp_path):
    (tmp_path / "scene.json").write_text(SCANNET_SCENE_META)
    (tmp_path / "frames.json").write_text(SCANNET_FRAME_META)
    [(graph, report)] = import_vlm3r(tmp_path / "scene.json", tmp_path / "frames.json", split="val")
    assert (graph.dataset, graph.scene_id, graph.split) == ("scannet", "scene0011_00", "val")
    assert report["duplicate_boxes"] == 1 and report["count_mismatches"] == 0
    objects = {r["instance_id"]: r for r in graph.objects.to_pylist()}
    assert sorted(objects) == [3, 5, 9] and objects[9]["category"] == "printer"
    # The printer's axes (rows) are rotated 90 deg about z: AABB spans 0.3 in x and 0.4 in y.
    np.testing.assert_allclose(objects[9]["aabb_min"], [1.85, 2.8, 0.65]); np.testing.assert_allclose(
        objects[9]["aabb_max"], [2.15, 3.2, 0.95])
    assert not objects[3]["is_unique"] and objects[9]["is_unique"]
    assert graph.room["floor_area_m2"] == 21.53 and graph.room["center"] == [2.1, 3.4, 1.2]
    frames = graph.frames.to_pylist()
    assert [f["frame_index"] for f in frames] == [0, 20, 48] and [f["valid"] for f in frames] == [True, False, True]
    assert frames[2]["timestamp"] == pytest.approx(2.0)                 # 48 / 24 fps (VLM-3R's ScanNet rate)
    assert frames[0]["camera_center"] == [0.5, 1.5, 1.2] and all(math.isnan(x) for x in frames[1]["camera_center"])
    assert (frames[0]["fx"], frames[0]["width"], frames[0]["height"]) == (577.87, 640, 480)
    vis = graph.visibility.to_pylist()
    assert [(v["rank"], v["instance_id"], v["bbox_2d"]) for v in vis] == [
        (0, 3, [100, 50, 199, 149]), (2, 5, [300, 60, 380, 200]), (2, 9, [1, 2, 3, 4])]
    assert report["dropped_bboxes_2d"] == 2                             # the wall, and the lost-tracking frame
    assert vis[0]["visible_pixels"] == 100 * 100 and math.isnan(vis[0]["visible_fraction"])   # the box's area
    assert graph.room["first_appearance_s"] == {"chair": 0.0, "printer": 2.0}


def test_import_box_key_variants_scannetpp_and_arkitscenes():
    results = dict((g.scene_id, (g, r)) for g, r in import_vlm3r(OTHER_SCENE_META))
    spp, _ = results["0a1b2c3d4e"]
    ark, _ = results["41069025"]
    assert spp.dataset == "scannetpp" and ark.dataset == "arkitscenes" and spp.split == "train"
    # No instance_id in either: ids follow file order.
    assert column_as_array(spp.objects, "instance_id").tolist() == [0, 1]
    assert spp.objects.column("category").to_pylist() == ["chair", "table"]
    chair = spp.objects.to_pylist()[0]
    np.testing.assert_allclose(chair["aabb_min"], [0.890192, 0.926795, 0.0], atol=1e-6)
    np.testing.assert_allclose(chair["aabb_max"], [1.609808, 1.573205, 0.9], atol=1e-6)
    # ARKitScenes min_corner/max_corner were computed with columns as axes: ignored, recomputed with rows.
    ark_chair = next(r for r in ark.objects.to_pylist() if r["category"] == "chair")
    np.testing.assert_allclose(ark_chair["aabb_min"], [0.95, 1.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(ark_chair["aabb_max"], [1.55, 1.45, 0.9], atol=1e-12)
    assert ark.frames.num_rows == 0 and ark.visibility.num_rows == 0


def test_import_vsibench_meta_info(tmp_path):
    path = tmp_path / "scannet_meta_info_val.json"
    path.write_text(json.dumps(VSI_META, indent=4))
    results = import_vsibench(path)
    assert [g.scene_id if g else r["scene_id"] for g, r in results] == ["broken_scene", "malformed_scene",
                                                                        "scene0050_00"]
    broken, malformed, graph = results[0], results[1], results[2][0]
    assert broken[0] is None and "non-finite box" in str(broken[1]["error"])
    assert malformed[0] is None and "'centroid' has 2 values, expected 3" in str(malformed[1]["error"])
    assert str(path) in str(malformed[1]["error"])
    assert graph.split == "val" and graph.room["floor_area_m2"] == 18.4
    assert sorted(graph.objects.column("category").to_pylist()) == ["ceiling light", "ceiling light", "tv"]
    assert column_as_array(graph.objects, "instance_id").tolist() == [17, 21, 22]
    tv = graph.objects.to_pylist()[0]
    assert tv["longest_edge"] == pytest.approx(1.1) and tv["is_unique"]


def test_export_import_round_trip(tmp_path, kit):
    scene = kit.build_room_scene(time_offset_s=100.0)     # device-clock timestamps: the video starts at 100 s
    manifest = build_manifest(scene.frames)
    graph = build_scene_graph(scene, manifest, depths=[kit.analytic_depth(kit.camera_position(k)) for k in range(4)])
    # A frame without a finite pose (rank 1) is left out of the export; the re-import ranks the rest 0..N-1.
    frames = graph.frames.to_pylist()
    frames[1]["valid"] = False
    graph.frames = graph.frames.from_pylist(frames, schema=graph.frames.schema)
    scene_path, frame_path = tmp_path / "scannet_metadata_train.json", tmp_path / "scannet_frame_metadata_train.json"
    counts = export_vlm3r([graph], scene_path, frame_path)
    assert counts == {"scenes": 1, "frames": 3, "frames_without_finite_pose": 1}
    text = scene_path.read_text()
    assert text == json.dumps(json.loads(text), indent=4)               # VLM-3R's json.dump(indent=4) layout
    entry = json.loads(text)["scene0001_00"]
    assert entry["dataset"] == "scannet" and entry["object_counts"] == {"chair": 1, "table": 1}
    assert entry["video_path"] == "scannet/videos/train/scene0001_00.mp4"
    assert entry["object_bboxes"]["chair"][0]["instance_id"] == 7
    assert entry["room_size"] == pytest.approx(graph.room["floor_area_m2"])
    frame_entry = json.loads(frame_path.read_text())["scene0001_00"]
    assert [f["frame_id"] for f in frame_entry["frames"]] == [0, 20, 30]
    assert frame_entry["camera_intrinsics"] == {"fx": 40.0, "fy": 40.0, "cx": 31.5, "cy": 23.5}
    assert frame_entry["frames"][0]["bboxes_2d"] == [{"instance_id": 7, "bbox_2d": kit.CHAIR_BBOX}]
    [(back, report)] = import_vlm3r(scene_path, frame_path)
    assert report["dropped_bboxes_2d"] == 0 and report["duplicate_boxes"] == 0
    assert (back.dataset, back.scene_id, back.split) == ("scannet", "scene0001_00", "train")
    for col in ("instance_id", "category", "centroid", "lengths", "axes", "aabb_min", "aabb_max", "longest_edge",
                "footprint_area", "volume", "is_unique"):
        assert back.objects.column(col).equals(graph.objects.column(col)), col
    kept = [f for f in graph.frames.to_pylist() if f["valid"]]
    assert [f["frame_index"] for f in back.frames.to_pylist()] == [f["frame_index"] for f in kept]
    assert column_as_array(back.frames, "rank").tolist() == [0, 1, 2]
    np.testing.assert_array_equal(column_as_array(back.frames, "camera_to_world"),
                                  [f["camera_to_world"] for f in kept])
    np.testing.assert_array_equal(column_as_array(back.frames, "timestamp"), [f["timestamp"] for f in kept])
    new_rank = {0: 0, 2: 1, 3: 2}
    assert [(v["rank"], v["instance_id"], v["bbox_2d"]) for v in back.visibility.to_pylist()] == [
        (new_rank[v["rank"]], v["instance_id"], v["bbox_2d"]) for v in graph.visibility.to_pylist() if v["rank"] != 1]
    assert back.room["first_appearance_s"] == graph.room["first_appearance_s"] == {"chair": 0.0}
    assert back.room["time_origin_s"] == graph.room["time_origin_s"] == 100.0
    # Exporting the re-imported graph gives the same scene metadata.
    assert graph_to_vlm3r(back)[0] == entry


def test_import_first_appearance_follows_vlm3r_rounding_and_all_frames():
    # VLM-3R: round(frame_id / fps) whole seconds over every listed frame, lost-tracking ones included.
    frames = json.loads(SCANNET_FRAME_META.replace("-Infinity", "null").replace("NaN", "null"))
    entry = frames["scene0011_00"]
    entry["frames"][1]["camera_pose_camera_to_world"] = [[math.nan] * 4] * 4
    entry["frames"][1]["bboxes_2d"] = [{"instance_id": 9, "bbox_2d": [10, 10, 20, 20]}]     # frame 20: 0.83 s -> 1
    entry["frames"][0]["frame_id"] = 12                                                     # 0.5 s -> 0 (half even)
    [(graph, report)] = import_vlm3r(json.loads(SCANNET_SCENE_META), frames, split="val")
    assert graph.room["first_appearance_s"] == {"chair": 0.0, "printer": 1.0}
    assert column_as_array(graph.frames, "timestamp")[0] == pytest.approx(0.5)           # frame times stay exact
    assert report["dropped_bboxes_2d"] == 2                 # the wall, and the lost-tracking frame's box


def test_import_does_not_link_2d_boxes_to_assigned_ids():
    # ScanNet++ scene metadata has no instance_id: the raw mask values of bboxes_2d name no imported object.
    frames = {"0a1b2c3d4e": {
        "camera_intrinsics": {"fx": 500.0, "fy": 500.0, "cx": 292.0, "cy": 194.5}, "img_width": 584, "img_height": 389,
        "split": "train", "frames": [
            {"frame_id": "DSC00030", "camera_pose_camera_to_world": np.eye(4).tolist(),
             "bboxes_2d": [{"instance_id": 0, "bbox_2d": [0, 0, 10, 10]}, {"instance_id": 1, "bbox_2d": [5, 5, 9, 9]}]}]}}
    results = {g.scene_id: (g, r) for g, r in import_vlm3r(OTHER_SCENE_META, frames)}
    spp, report = results["0a1b2c3d4e"]
    assert column_as_array(spp.objects, "instance_id").tolist() == [0, 1]
    assert spp.visibility.num_rows == 0 and spp.room["first_appearance_s"] == {}
    assert report["dropped_bboxes_2d"] == 2 and report["objects_without_instance_id"] == 2


def test_import_duplicates_without_instance_id_and_mixed_ids():
    printer = {"centroid": [2.0, 3.0, 0.8], "axesLengths": [0.4, 0.3, 0.3],
               "normalizedAxes": [0, 1, 0, -1, 0, 0, 0, 0, 1], "min": [1.85, 2.8, 0.65], "max": [2.15, 3.2, 0.95]}
    chair = {"centroid": [1.0, 1.0, 0.45], "axesLengths": [0.5, 0.5, 0.9], "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    meta = {"s": {"dataset": "scannet", "room_size": 10.0, "object_bbox": {
        "printer": [dict(printer), dict(printer)], "chair": [dict(chair), {**chair, "instance_id": 1}]}}}
    [(graph, report)] = import_vsibench(meta)
    assert report["duplicate_boxes"] == 1
    # Assigned ids start above the file's own ids, so no collision with instance_id 1.
    assert sorted(zip(column_as_array(graph.objects, "instance_id").tolist(),
                      graph.objects.column("category").to_pylist())) == [(1, "chair"), (2, "printer"), (3, "chair")]


def test_frame_id_variants():
    from scene_graph.interop import _frame_index

    assert [_frame_index(x, 7) for x in (12, np.int64(12), 12.0, "DSC01752", "frame_000048", "x")] == [
        12, 12, 12, 1752, 48, 7]
