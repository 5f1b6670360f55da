"""build_scene_graph on hand-built scenes (answers known by construction) and the graph files' round trip."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.errors import InputError
from pipeline.core.layout import DONE_MARKER
from pipeline.core.scene import build_manifest, objects_table
from pipeline.core.schemas import (GRAPH_FRAMES_SCHEMA, GRAPH_OBJECTS_SCHEMA, MANIFEST_SCHEMA, VISIBILITY_SCHEMA,
                              SchemaError, column_as_array, table_from_columns)
from scene_graph.graph import GraphConfig, build_scene_graph, read_graph, write_graph
from scene_graph.regions import RegionConfig


def _rows(graph, rank=None):
    rows = graph.visibility.to_pylist()
    return {r["instance_id"]: r for r in rows if rank is None or r["rank"] == rank}


def test_camera_center_is_the_translation_of_camera_to_world(kit):
    scene = kit.build_room_scene(num_frames=3)
    # A rotated camera: -R.T @ t (the VSTI-Bench bug) differs from the translation column.
    yaw = np.radians(30)
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    c2w = np.eye(4); c2w[:3, :3] = rz @ kit.CAMERA_ROT; c2w[:3, 3] = [0.7, 1.2, 1.4]
    manifest = build_manifest(scene.frames)
    poses = column_as_array(manifest, "camera_to_world").copy()
    poses[1] = c2w.reshape(-1)
    manifest = manifest.set_column(3, MANIFEST_SCHEMA.field("camera_to_world"),
                                   table_from_columns(MANIFEST_SCHEMA, {**{n: manifest.column(n).to_pylist() for n in
                                                      MANIFEST_SCHEMA.names}, "camera_to_world": poses})
                                   .column("camera_to_world"))
    graph = build_scene_graph(scene, manifest)
    centers = graph.camera_centers
    np.testing.assert_array_equal(centers[1], [0.7, 1.2, 1.4])
    assert not np.allclose(centers[1], -c2w[:3, :3].T @ c2w[:3, 3])
    np.testing.assert_array_equal(centers, graph.camera_to_world[:, :3, 3])
    assert column_as_array(graph.frames, "rank").tolist() == [0, 1, 2]
    assert column_as_array(graph.frames, "frame_index").tolist() == [0, 10, 20]


def test_visibility_with_depth_maps(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    depths = [kit.analytic_depth(kit.camera_position(k)) for k in range(manifest.num_rows)]
    graph = build_scene_graph(room_scene, manifest, depths=depths)
    first = _rows(graph, rank=0)
    # The chair in front of the camera: its front face covers pixel centres u 22..41, v 24..43, all unoccluded.
    assert set(first) == {7}, "the table behind the wall must not be visible"
    assert first[7]["bbox_2d"] == kit.CHAIR_BBOX
    assert first[7]["visible_pixels"] == 400 and first[7]["visible_fraction"] == pytest.approx(1.0)
    assert first[7]["source"] == "mesh_projection"
    # Every frame sees the chair, and it grows as the camera moves... backwards it shrinks.
    sizes = [r["visible_pixels"] for r in graph.visibility.to_pylist()]
    assert len(sizes) == 4 and sizes == sorted(sizes, reverse=True)
    assert graph.room["first_appearance_s"] == {"chair": 0.0}
    assert graph.room["video_duration_s"] == pytest.approx(1.5) and graph.room["fps"] == pytest.approx(2.0)


def test_partial_occlusion_gives_the_visible_fraction(kit, room_scene):
    """A depth map whose left half is a near occluder at 0.5 m hides the chair's left 10 columns (u 22..31)."""
    manifest = build_manifest(room_scene.frames)
    depth = kit.analytic_depth()
    depth[:, :32] = 0.5
    depths = [depth] + [None] * (manifest.num_rows - 1)
    graph = build_scene_graph(room_scene, manifest, depths=depths)
    row = _rows(graph, rank=0)[7]
    assert row["bbox_2d"] == [32, 24, 41, 43]
    assert row["visible_pixels"] == 200 and row["visible_fraction"] == pytest.approx(0.5)


def test_visibility_without_depth_renders_the_mesh(kit):
    """No depth maps: the mesh itself (the wall) occludes the table; a scene without the wall shows it."""
    scene = kit.build_room_scene()
    graph = build_scene_graph(scene, build_manifest(scene.frames))
    assert set(_rows(graph, rank=0)) == {7}
    assert _rows(graph, rank=0)[7]["bbox_2d"] == kit.CHAIR_BBOX
    # Remove the wall faces from the mesh: now the table is in view (u 11..23; the chair hides u 22, 23).
    wall = (np.abs(scene.mesh_vertices[:, 0] - kit.WALL_X) < 1e-9) & (scene.vertex_instance == -1)
    keep = ~wall[scene.mesh_faces].any(axis=1)
    scene.mesh_faces = scene.mesh_faces[keep]
    graph = build_scene_graph(scene, build_manifest(scene.frames))
    seen = _rows(graph, rank=0)
    assert set(seen) == {7, 12}
    assert seen[12]["bbox_2d"][0] == 11 and seen[12]["bbox_2d"][2] == 21
    assert 0.75 < seen[12]["visible_fraction"] < 1     # the chair hides the table's two right columns


def test_visibility_from_instance_masks(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    masks = [np.full((kit.H, kit.W), -1, np.int32) for _ in range(manifest.num_rows)]
    masks[0][24:44, 22:42] = 7            # the chair, exactly its projection
    masks[1][30:40, 10:20] = 12           # a table patch (the mask is the authority on what is seen)
    masks[2][0:5, 0:5] = 99               # an instance that is no object of the scene: ignored
    graph = build_scene_graph(room_scene, manifest, instance_masks=masks)
    rows = graph.visibility.to_pylist()
    assert [(r["rank"], r["instance_id"]) for r in rows] == [(0, 7), (1, 12)]
    assert rows[0]["bbox_2d"] == kit.CHAIR_BBOX and rows[0]["visible_fraction"] == pytest.approx(1.0)
    assert rows[0]["source"] == "instance_mask" and rows[1]["bbox_2d"] == [10, 30, 19, 39]
    # A mask at 10x the image resolution maps back to the same image pixels (VLM-3R's NEAREST-resized masks).
    big = np.kron(masks[0], np.ones((10, 10), np.int32))
    graph = build_scene_graph(room_scene, manifest, instance_masks=[big, None, None, None])
    assert _rows(graph, rank=0)[7]["bbox_2d"] == kit.CHAIR_BBOX
    assert _rows(graph, rank=0)[7]["visible_pixels"] == 40_000
    # 20x (1280x960): the projection for the fraction is rasterised on a grid capped at 640x480 and scaled.
    huge = np.kron(masks[0], np.ones((20, 20), np.int32))
    row = _rows(build_scene_graph(room_scene, manifest, instance_masks=[huge, None, None, None]), rank=0)[7]
    assert row["bbox_2d"] == kit.CHAIR_BBOX and row["visible_pixels"] == 160_000
    assert row["visible_fraction"] == pytest.approx(1.0, abs=0.02)


def test_objects_derived_fields_and_bad_input(kit, room_scene):
    graph = build_scene_graph(room_scene, build_manifest(room_scene.frames))
    objects = {r["instance_id"]: r for r in graph.objects.to_pylist()}
    assert objects[12]["longest_edge"] == pytest.approx(0.8)
    assert objects[12]["footprint_area"] == pytest.approx(0.4) and objects[12]["volume"] == pytest.approx(0.3)
    assert objects[7]["is_unique"] and objects[12]["is_unique"]
    assert graph.room["floor_area_m2"] == pytest.approx(12.0, rel=0.02)
    nan_box = objects_table([7], ["chair"], ["chair"], [[np.nan, 0, 0]], [[1, 1, 1]], [np.eye(3)], [8])
    with pytest.raises(InputError, match="non-finite box"):
        build_scene_graph(kit.build_room_scene(objects=nan_box), build_manifest(room_scene.frames))
    empty = objects_table([], [], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), [])
    with pytest.raises(InputError, match="no objects"):
        build_scene_graph(kit.build_room_scene(objects=empty), build_manifest(room_scene.frames))


def test_write_read_round_trip(tmp_path, kit, room_scene):
    from pipeline.core.layout import DatasetRoot
    from pipeline.stages.graph import save_graph

    manifest = build_manifest(room_scene.frames)
    graph = build_scene_graph(room_scene, manifest,
                              depths=[kit.analytic_depth(kit.camera_position(k)) for k in range(4)])
    g, h = DatasetRoot(tmp_path / "g"), DatasetRoot(tmp_path / "h")
    marker = save_graph(g, graph)
    folder = g.graph_dir("scannet", "scene0001_00")
    back = read_graph(folder, verify=True)
    assert (back.dataset, back.scene_id, back.split) == ("scannet", "scene0001_00", "train")
    for name in ("objects", "frames", "visibility"):
        assert getattr(back, name).equals(getattr(graph, name)), name
    assert back.room == json.loads(json.dumps(graph.room))
    assert marker.stats["visibility_rows"] == 4 and marker.config == {**GraphConfig().to_dict(), "instance_masks": True,
                                                                  "regions": RegionConfig().to_dict()}
    assert json.loads((folder / DONE_MARKER).read_text())["stats"]["sha256"].keys() == {
        "objects.parquet", "frames.parquet", "visibility.parquet", "room.json"}
    assert back.objects.schema == GRAPH_OBJECTS_SCHEMA and back.frames.schema == GRAPH_FRAMES_SCHEMA
    assert back.visibility.schema == VISIBILITY_SCHEMA
    # Same input, same bytes.
    save_graph(h, build_scene_graph(room_scene, manifest, depths=[
        kit.analytic_depth(kit.camera_position(k)) for k in range(4)]))
    other = h.graph_dir("scannet", "scene0001_00")
    for name in ("objects.parquet", "frames.parquet", "visibility.parquet", "room.json", DONE_MARKER):
        assert (folder / name).read_bytes() == (other / name).read_bytes(), name
    # Incomplete (no marker) and tampered graphs are refused.
    (other / DONE_MARKER).unlink()
    with pytest.raises(FileNotFoundError):
        read_graph(other)
    (folder / "room.json").write_text("{}")
    with pytest.raises(InputError, match="sha256"):
        read_graph(folder, verify=True)
    bad = graph.visibility.drop_columns(["source"])
    graph.visibility = bad
    with pytest.raises(SchemaError):
        write_graph(tmp_path / "i", graph)
    assert isinstance(bad, pa.Table)


def test_frame_that_sees_no_object_has_no_visibility_rows(kit):
    # Turn every camera around (facing -x, away from the chair and table): no object is in view.
    scene = kit.build_room_scene(num_frames=2)
    manifest = build_manifest(scene.frames)
    poses = column_as_array(manifest, "camera_to_world").reshape(-1, 4, 4).copy()
    poses[:, :3, :3] = np.diag([-1.0, -1.0, 1.0]) @ kit.CAMERA_ROT
    manifest = table_from_columns(MANIFEST_SCHEMA, {**{n: manifest.column(n).to_pylist() for n in MANIFEST_SCHEMA.names},
                                                    "camera_to_world": poses.reshape(-1, 16)})
    graph = build_scene_graph(scene, manifest)
    assert graph.visibility.num_rows == 0
    assert graph.frames.num_rows == 2


def test_depth_tolerance_boundary_is_inclusive(kit, room_scene):
    """VLM-3R keeps a point where |depth_image - z| <= 0.2 * depth_image: the chair's face at 1.0 m against a
    measured 1.25 m sits exactly on the boundary (0.25 == 0.2 * 1.25 in floating point) and is visible."""
    manifest = build_manifest(room_scene.frames)
    depth = kit.analytic_depth()
    depth[depth == 1.0] = 1.25
    graph = build_scene_graph(room_scene, manifest, depths=[depth] + [None] * (manifest.num_rows - 1))
    row = _rows(graph, rank=0)[7]
    assert row["bbox_2d"] == kit.CHAIR_BBOX and row["visible_pixels"] == 400


def test_floor_sampling_uses_vlm3r_seed_of_the_dataset(kit, room_scene):
    """VLM-3R seeds NumPy with --random_seed before calculate_room_area: 42 for ScanNet / ScanNet++, 0 for
    ARKitScenes. An explicit floor_seed overrides it."""
    import dataclasses

    from scene_graph.geometry import floor_shape

    manifest = build_manifest(room_scene.frames)
    for dataset, seed in (("scannet", 42), ("scannetpp", 42), ("arkitscenes", 0)):
        scene = dataclasses.replace(room_scene, dataset=dataset)
        room = build_scene_graph(scene, manifest).room
        assert room["floor_method"]["seed"] == seed
        assert room["floor_area_m2"] == floor_shape(scene.mesh_vertices, seed=seed).area_m2
    room = build_scene_graph(room_scene, manifest, config=GraphConfig(floor_seed=7)).room
    assert room["floor_method"]["seed"] == 7
