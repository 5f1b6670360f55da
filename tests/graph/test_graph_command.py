"""The graph / import-meta / export-meta commands on real dataset roots (canonical scenes written as ingest does,
depth maps as real 16-bit PNG files decoded by the real frame decoder), in-process and on a real local Ray."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DONE_MARKER, DatasetRoot
from pipeline.core.scene import objects_table
from pipeline.sources import scannet_writer as writer, synthetic
from pipeline.stages.ingest import write_ingested_scene
from scene_graph.graph import read_graph

GRAPH_FILES = ("objects.parquet", "frames.parquet", "visibility.parquet", "room.json", DONE_MARKER)


def _make_root(root, kit):
    """Two good scenes (one with measured depth PNGs, one without depth), one with a NaN box, one with no objects."""
    depth_dir = root / "raw_depth"
    depth_dir.mkdir(parents=True)
    paths = []
    for k in range(4):
        path = depth_dir / f"{k:06d}.png"
        mm = np.round(kit.analytic_depth(kit.camera_position(k)) * 1000).astype(np.uint16)
        assert cv2.imwrite(str(path), mm)
        paths.append(str(path))
    nan_box = objects_table([7], ["chair"], ["chair"], [[1.75, np.nan, 0.75]], [[0.5, 0.5, 0.5]], [np.eye(3)], [8])
    empty = objects_table([], [], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), [])
    scenes = [kit.build_room_scene(scene_id="scene0001_00", depth_paths=paths),
              kit.build_room_scene(scene_id="scene0002_00"),
              kit.build_room_scene(scene_id="scene0003_00", objects=nan_box),
              kit.build_room_scene(scene_id="scene0004_00", objects=empty)]
    dataset_root = DatasetRoot(root)
    for scene in scenes:
        write_ingested_scene(dataset_root, scene)
    return dataset_root


def _graph_bytes(root):
    return {(ds, sid, name): (root.graph_dir(ds, sid) / name).read_bytes()
            for ds, sid in root.graphs() for name in GRAPH_FILES}


def test_graph_command_local_then_ray_is_byte_identical(tmp_path, kit, ray_local, capsys):
    local = _make_root(tmp_path / "local", kit)
    assert main(["graph", "--root", str(local.path), "--local"]) == 1          # two scenes fail
    out = capsys.readouterr()
    assert "2 done, 0 up to date, 2 failed of 4 scenes" in out.out
    assert local.graphs() == [("scannet", "scene0001_00"), ("scannet", "scene0002_00")]
    errors = {e.scene_id: e for e in read_errors(local.errors_path)}
    assert set(errors) == {"scene0003_00", "scene0004_00"}
    assert errors["scene0003_00"].error_type == "InputError" and "non-finite box" in errors["scene0003_00"].message
    assert "no objects" in errors["scene0004_00"].message and errors["scene0004_00"].stage == "graph"
    assert str(local.scene_dir("scannet", "scene0003_00")) == errors["scene0003_00"].path
    info = json.loads(local.info_path.read_text())["stages"]["graph"]
    assert info["counts"]["done"] == 2 and info["counts"]["failed"] == 2 and info["config"]["floor_seed"] is None

    # The scene with measured depth: the chair seen exactly; the table behind the wall not at all.
    graph = read_graph(local.graph_dir("scannet", "scene0001_00"), verify=True)
    first = [r for r in graph.visibility.to_pylist() if r["rank"] == 0]
    assert [(r["instance_id"], r["bbox_2d"], r["visible_pixels"]) for r in first] == [(7, kit.CHAIR_BBOX, 400)]
    assert graph.room["floor_area_m2"] == pytest.approx(12.0, rel=0.02)
    np.testing.assert_array_equal(graph.camera_centers[2], kit.camera_position(2))

    # The same root on a real local Ray with 2 CPUs: byte-identical graphs and the same error rows.
    on_ray = DatasetRoot(tmp_path / "ray")
    shutil.copytree(local.path / "scenes", on_ray.path / "scenes")
    assert main(["graph", "--root", str(on_ray.path), "--workers", "2"]) == 1
    assert _graph_bytes(on_ray) == _graph_bytes(local) and len(_graph_bytes(local)) == 10
    def rows(root):
        return [(e.scene_id, e.error_type, e.message.replace(str(root.path), "ROOT")) for e in read_errors(root.errors_path)]
    assert rows(on_ray) == rows(local)

    # A rerun skips the complete, unchanged graphs and retries the failed scenes only.
    capsys.readouterr()
    assert main(["graph", "--root", str(local.path), "--local"]) == 1
    assert "0 done, 2 up to date, 2 failed of 4 scenes" in capsys.readouterr().out
    # Fixing the scenes clears their error rows; a changed config is refused, naming the field, until --rebuild.
    for sid in ("scene0003_00", "scene0004_00"):
        write_ingested_scene(local, kit.build_room_scene(scene_id=sid))
    assert main(["graph", "--root", str(local.path), "--local", "--floor-seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "floor_seed: null -> 7" in err and "--floor-seed 7 --rebuild" in err and "Traceback" not in err
    assert main(["graph", "--root", str(local.path), "--local", "--floor-seed", "7", "--rebuild"]) == 0
    assert "4 done, 0 up to date of 4 scenes" in capsys.readouterr().out
    assert [e for e in read_errors(local.errors_path) if e.stage == "graph"] == []


def test_import_and_export_meta_commands(tmp_path, kit, capsys):
    meta = {"scene0050_00": {
        "video_path": "scannet/scene0050_00.mp4", "dataset": "scannet", "room_size": 18.4,
        "room_center": [1.9, 2.2, 1.3], "object_counts": {"tv": 1},
        "object_bbox": {"tv": [{"centroid": [0.2, 2.0, 1.1], "axesLengths": [0.1, 1.1, 0.7],
                                "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1], "min": [0.15, 1.45, 0.75],
                                "max": [0.25, 2.55, 1.45], "instance_id": 17}]}},
        "scene0051_00": {"dataset": "scannet", "room_size": 9.0, "object_bbox": {}}}
    meta_path = tmp_path / "scannet_meta_info_val.json"
    meta_path.write_text(json.dumps(meta, indent=4))
    root = DatasetRoot(tmp_path / "root")
    assert main(["import-meta", "--format", "vsibench", "--scene-meta", str(meta_path), "--out", str(root.path)]) == 1
    assert root.graphs() == [("scannet", "scene0050_00")]
    assert [e.scene_id for e in read_errors(root.errors_path)] == ["scene0051_00"]   # no objects: an error row
    graph = read_graph(root.graph_dir("scannet", "scene0050_00"))
    assert graph.split == "val" and graph.room["floor_area_m2"] == 18.4 and graph.frames.num_rows == 0

    # Add a built graph (with frames) and export everything in VLM-3R's layout.
    from pipeline.core.scene import build_manifest
    from pipeline.stages.graph import save_graph
    from scene_graph.graph import build_scene_graph

    scene = kit.build_room_scene()
    save_graph(root, build_scene_graph(scene, build_manifest(scene.frames)))
    out = tmp_path / "meta"
    assert main(["export-meta", "--format", "vlm3r", "--root", str(root.path), "--out", str(out)]) == 0
    val = json.loads((out / "val" / "scannet_metadata_val.json").read_text())
    train = json.loads((out / "train" / "scannet_metadata_train.json").read_text())
    assert list(val) == ["scene0050_00"] and list(train) == ["scene0001_00"]
    assert val["scene0050_00"]["object_bboxes"]["tv"][0]["instance_id"] == 17
    frames = json.loads((out / "train" / "scannet_frame_metadata_train.json").read_text())["scene0001_00"]["frames"]
    assert len(frames) == 4 and frames[0]["bboxes_2d"][0]["bbox_2d"] == kit.CHAIR_BBOX
    # And back: the exported files import as graphs again.
    assert main(["import-meta", "--format", "vlm3r", "--scene-meta", str(out / "train" / "scannet_metadata_train.json"),
                 "--frame-meta", str(out / "train" / "scannet_frame_metadata_train.json"),
                 "--out", str(tmp_path / "again")]) == 0
    again = read_graph(DatasetRoot(tmp_path / "again").graph_dir("scannet", "scene0001_00"))
    assert again.frames.num_rows == 4 and again.visibility.num_rows == 4


def test_graph_of_a_generated_scannet_scene_matches_the_rendered_instances(tmp_path):
    """Generator -> ScanNet raw files (.sens, instance-mask zip, ...) -> ingest -> graph. With the dataset's instance
    masks the visibility equals the generator's instance renders exactly; projecting the mesh against the decoded
    depth finds the same (frame, object) pairs with nearly the same pixel counts."""
    scene = synthetic.generate_scene(3, num_frames=16, width=64, height=48)
    scene_id = writer.write_scannet(scene, tmp_path / "raw")
    root = DatasetRoot(tmp_path / "root")
    assert main(["ingest", "--dataset", "scannet", "--raw", str(tmp_path / "raw"), "--out", str(root.path),
                 "--local"]) == 0
    assert main(["graph", "--root", str(root.path), "--local"]) == 0
    with_masks = read_graph(root.graph_dir("scannet", scene_id))
    shutil.rmtree(root.path / "graph")
    assert main(["graph", "--root", str(root.path), "--local", "--no-masks"]) == 0
    projected = read_graph(root.graph_dir("scannet", scene_id))

    truth = {}
    for rank, frame in enumerate(with_masks.frames.column("frame_index").to_pylist()):
        ids = scene.instance[frame]
        for inst in np.unique(ids[ids >= 0]):
            ys, xs = np.nonzero(ids == inst)
            truth[(rank, int(inst))] = ([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())], len(xs))
    assert len(truth) > 50
    by_mask = {(r["rank"], r["instance_id"]): r for r in with_masks.visibility.to_pylist()}
    assert {k: (r["bbox_2d"], r["visible_pixels"]) for k, r in by_mask.items()} == truth
    assert {r["source"] for r in by_mask.values()} == {"instance_mask"}

    by_projection = {(r["rank"], r["instance_id"]): r for r in projected.visibility.to_pylist()}
    assert {r["source"] for r in by_projection.values()} == {"mesh_projection"}
    assert set(by_projection) == set(truth)
    ratio = np.array([by_projection[k]["visible_pixels"] / truth[k][1] for k in truth])
    # The 20 % relative depth tolerance lets contact zones (floor under a chair) count for both: never fewer.
    assert ratio.min() >= 0.95 and np.median(ratio) == pytest.approx(1.0, abs=0.02)
    assert with_masks.room["floor_area_m2"] == projected.room["floor_area_m2"] > 0
