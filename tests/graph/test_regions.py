"""Region prompts: masks from the graph's visibility pass, at the stored resolution, as real pycocotools RLE."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from pipeline.core.errors import InputError
from pipeline.core.layout import DONE_MARKER
from pipeline.core.scene import build_manifest
from pipeline.core.schemas import column_as_array
from pipeline.sources.synthetic import canonical_inputs, generate_scene
from scene_graph.graph import build_scene_graph, read_graph
from pipeline.core.masks import decode_rle, encode_mask, rle_bbox_xyxy
from scene_graph.regions import MIN_REGION_AREA_FRACTION, RegionConfig, instance_masks_with_fallback, region_rle


def _regions(graph, rank=None):
    return {r["instance_id"]: r for r in graph.regions.to_pylist() if rank is None or r["rank"] == rank}


def _mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_rle_round_trip_through_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.3
    rle = encode_mask(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    # The counts string is pycocotools' own: its area and box agree with the mask.
    assert coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}) == mask.sum()
    assert rle_bbox_xyxy(rle) == _mask_box(mask)


def test_region_of_the_chair_with_depth_maps(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    depths = [kit.analytic_depth(kit.camera_position(k)) for k in range(manifest.num_rows)]
    graph = build_scene_graph(room_scene, manifest, depths=depths, region_config=RegionConfig())
    first = _regions(graph, rank=0)
    assert set(first) == {7}, "the table hidden behind the wall gets no region"
    chair = first[7]
    mask = decode_rle(region_rle(chair))
    # The chair's front face covers pixel centres u 22..41, v 24..43 of the 64x48 frame.
    expected = np.zeros((kit.H, kit.W), bool)
    expected[24:44, 22:42] = True
    np.testing.assert_array_equal(mask, expected)
    assert chair["bbox_xyxy"] == [22, 24, 41, 43] == rle_bbox_xyxy(region_rle(chair))
    assert chair["visible_pixels"] == 400 and chair["source"] == "mesh_projection"
    assert chair["truncated"] is False
    # Same pass, same numbers as the visibility row.
    vis = {(r["rank"], r["instance_id"]): r for r in graph.visibility.to_pylist()}
    for r in graph.regions.to_pylist():
        assert r["visible_fraction"] == vis[(r["rank"], r["instance_id"])]["visible_fraction"]
    assert column_as_array(graph.regions, "rank").tolist() == [0, 1, 2, 3]


def test_regions_do_not_change_the_visibility_table(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    depths = [kit.analytic_depth(kit.camera_position(k)) for k in range(manifest.num_rows)]
    plain = build_scene_graph(room_scene, manifest, depths=depths)
    with_regions = build_scene_graph(room_scene, manifest, depths=depths, region_config=RegionConfig())
    assert plain.regions is None
    assert plain.visibility.equals(with_regions.visibility) and plain.room == with_regions.room


def test_truncated_when_the_projection_crosses_the_border(kit):
    """Camera 0.7 m from the chair's front face, shifted 0.4 m to its right: the chair's left part leaves the
    image (u < 0), while the fully visible chair of the reference camera is not truncated."""
    from dataclasses import replace

    scene = kit.build_room_scene(num_frames=1)
    c2w = kit.camera_to_world(np.array([0.8, 1.1, 0.75]))
    scene = replace(scene, frames=_with_pose(scene.frames, c2w))
    graph = build_scene_graph(scene, build_manifest(scene.frames), region_config=RegionConfig())
    chair = _regions(graph)[7]
    assert chair["truncated"] is True
    assert chair["bbox_xyxy"][0] == 0, "the mask reaches the image border where the projection leaves it"


def _with_pose(frames, c2w):
    from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns

    cols = {name: frames.column(name).to_pylist() for name in FRAMES_SCHEMA.names}
    cols["camera_to_world"] = np.tile(c2w.reshape(1, 16), (frames.num_rows, 1))
    return table_from_columns(FRAMES_SCHEMA, cols)


def test_instance_mask_at_another_resolution_becomes_a_frame_resolution_mask(kit, room_scene):
    """A 2D instance mask at half the colour resolution: the region is at the stored 64x48, each image pixel taking
    the mask pixel that contains its centre."""
    manifest = build_manifest(room_scene.frames)
    half = np.full((kit.H // 2, kit.W // 2), -1, np.int32)
    half[12:22, 11:21] = 7                                  # colour pixels 22..41 x 24..43
    masks = [half] + [None] * (manifest.num_rows - 1)
    graph = build_scene_graph(room_scene, manifest, instance_masks=masks, region_config=RegionConfig())
    chair = _regions(graph, rank=0)[7]
    assert chair["source"] == "instance_mask" and (chair["mask_height"], chair["mask_width"]) == (kit.H, kit.W)
    expected = np.kron(half == 7, np.ones((2, 2), bool))
    np.testing.assert_array_equal(decode_rle(region_rle(chair)), expected)
    assert chair["bbox_xyxy"] == [22, 24, 41, 43]


def test_minimum_area_threshold(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    depth = kit.analytic_depth()
    depth[:, :41] = 0.5                                     # one column of the chair stays visible: 20 pixels
    depths = [depth] + [None] * (manifest.num_rows - 1)
    default = build_scene_graph(room_scene, manifest, depths=depths, region_config=RegionConfig())
    assert RegionConfig().min_pixels(kit.W, kit.H) == int(np.ceil(kit.W * kit.H * MIN_REGION_AREA_FRACTION)) == 5
    assert _regions(default, rank=0)[7]["visible_pixels"] == 20
    strict = build_scene_graph(room_scene, manifest, depths=depths,
                               region_config=RegionConfig(min_area_fraction=21 / (kit.W * kit.H)))
    assert 7 not in _regions(strict, rank=0)
    assert 7 in {r["instance_id"] for r in strict.visibility.to_pylist() if r["rank"] == 0}


@pytest.fixture(scope="module")
def synthetic_graph():
    synth = generate_scene(5, num_frames=24, width=96, height=72)
    scene, manifest, depths, masks = canonical_inputs(synth)
    by_mask = build_scene_graph(scene, manifest, instance_masks=masks, region_config=RegionConfig())
    by_depth = build_scene_graph(scene, manifest, depths=depths, region_config=RegionConfig())
    return synth, scene, manifest, masks, by_mask, by_depth


def test_every_region_round_trips_and_its_box_is_the_mask_box(synthetic_graph):
    synth, _, _, masks, by_mask, by_depth = synthetic_graph
    min_pixels = RegionConfig().min_pixels(synth.width, synth.height)
    for graph in (by_mask, by_depth):
        assert graph.regions.num_rows > 20
        for r in graph.regions.to_pylist():
            rle = region_rle(r)
            mask = decode_rle(rle)
            assert mask.shape == (synth.height, synth.width)
            assert _mask_box(mask) == r["bbox_xyxy"] == rle_bbox_xyxy(rle)
            assert int(mask.sum()) == r["visible_pixels"] >= min_pixels
            assert encode_mask(mask)["counts"] == r["rle_counts"]
            assert 0 < r["visible_fraction"] <= 1
    # With the generator's instance masks the region is exactly the rendered instance's pixels.
    for r in by_mask.regions.to_pylist():
        np.testing.assert_array_equal(decode_rle(region_rle(r)), masks[r["rank"]] == r["instance_id"])
        assert r["source"] == "instance_mask"


def test_depth_test_regions_agree_with_the_rendered_instances(synthetic_graph):
    """Rasterised mesh + depth test vs the generator's instance rendering: the same pixels up to edge effects."""
    _, _, _, masks, _, by_depth = synthetic_graph
    ious = []
    for r in by_depth.regions.to_pylist():
        got, truth = decode_rle(region_rle(r)), masks[r["rank"]] == r["instance_id"]
        ious.append((got & truth).sum() / max((got | truth).sum(), 1))
    assert np.median(ious) > 0.9 and np.mean(ious) > 0.8


def test_truncation_matches_the_instances_touching_the_border(synthetic_graph):
    """An object whose rendered pixels touch the image border is cut by it (the converse need not hold: an
    occluder can hide the part at the border)."""
    _, _, _, masks, by_mask, _ = synthetic_graph
    checked = 0
    for r in by_mask.regions.to_pylist():
        truth = masks[r["rank"]] == r["instance_id"]
        if truth[0].any() or truth[-1].any() or truth[:, 0].any() or truth[:, -1].any():
            assert r["truncated"], r
            checked += 1
    assert checked > 5


def test_graph_files_with_regions_round_trip_and_keep_the_other_files(tmp_path, synthetic_graph):
    _, scene, manifest, masks, by_mask, _ = synthetic_graph
    from pipeline.core.layout import DatasetRoot
    from pipeline.stages.graph import save_graph

    plain = build_scene_graph(scene, manifest, instance_masks=masks)
    a, b = DatasetRoot(tmp_path / "plain"), DatasetRoot(tmp_path / "regions")
    save_graph(a, plain)
    marker = save_graph(b, by_mask)
    assert "regions.parquet" in marker.stats["sha256"] and marker.stats["regions"] == by_mask.regions.num_rows
    plain_dir, regions_dir = a.graph_dir(scene.dataset, scene.scene_id), b.graph_dir(scene.dataset, scene.scene_id)
    for name in ("objects.parquet", "frames.parquet", "visibility.parquet", "room.json"):
        assert (plain_dir / name).read_bytes() == (regions_dir / name).read_bytes()
    back = read_graph(regions_dir, verify=True)
    assert back.regions.equals(by_mask.regions)
    assert read_graph(plain_dir).regions is None
    # Rewriting without regions removes the stale file, and the graph reads back without them.
    save_graph(b, plain)
    assert not (regions_dir / "regions.parquet").exists()
    assert read_graph(regions_dir).regions is None and (regions_dir / DONE_MARKER).exists()


def test_missing_or_corrupt_masks_fall_back_to_rasterisation(kit, room_scene):
    manifest = build_manifest(room_scene.frames)
    good = np.full((kit.H, kit.W), -1, np.int32)
    good[24:44, 22:42] = 7

    def read_mask(frame_index: int) -> np.ndarray:
        if frame_index == 10:
            raise InputError("scene_2d-instance-filt.zip", "no instance-filt/10.png in the instance mask zip")
        if frame_index == 20:
            return np.zeros((4, 4, 3), np.uint8)               # a colour PNG where an id image belongs
        return good

    frame_indices = column_as_array(manifest, "frame_index").tolist()
    masks, fallbacks = instance_masks_with_fallback(read_mask, frame_indices)
    assert [m is None for m in masks] == [False, True, True, False]
    assert [f["frame_index"] for f in fallbacks] == [10, 20]
    assert "no instance-filt/10.png" in fallbacks[0]["problem"]
    graph = build_scene_graph(room_scene, manifest, instance_masks=masks, region_config=RegionConfig())
    sources = {r["rank"]: r["source"] for r in graph.regions.to_pylist()}
    assert sources == {0: "instance_mask", 1: "mesh_projection", 2: "mesh_projection", 3: "instance_mask"}
