"""ScanNet++ reader, depth.bin, COLMAP text parsing and the synthetic ScanNet++ writer.

The §6.2 fixture of docs/datasets.md is built here by :func:`make_fixture`, writing every file literally in the
release's format (COLMAP text with the empty 2D-points lines, depth.bin bytes by zlib/lz4 directly), so the
reader is checked against independently produced files; the writer is checked by round trips.
"""
from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import lz4.block
import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.core.frames import decode_colors, decode_depths
from pipeline.core.ply import write_ply
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import box_aabb, read_scene as read_canonical
from pipeline.stages.ingest import write_ingested_scene
from pipeline.core.schemas import column_as_array
from pipeline.sources import get_reader
from pipeline.sources.colmap import (camera_to_world_to_nerfstudio, nerfstudio_to_camera_to_world, qvec_to_rotmat,
                                     read_cameras_txt, read_images_txt, rotmat_to_qvec)
from pipeline.core.depth_bin import index_depth_bin, read_depth_frame, write_depth_bin
from pipeline.sources.scannetpp import READER, ScanNetPPReader, list_scenes
from pipeline.sources.scannetpp_writer import scannetpp_scene_id, write_scannetpp, write_video
from pipeline.sources.synthetic import MOUNTED_BOTTOM_M, SyntheticObject, SyntheticScene, generate_scene

SCENE = "0a1b2c3d4e"
INVALID_FRAME = 5            # aligned_pose written as -Infinity in the fixture
COLMAP_FRAMES = (0, 3, 6, 9)
COS30, SIN30 = np.cos(np.radians(30)), np.sin(np.radians(30))


# ---- the §6.2 fixture --------------------------------------------------------------------------------------------------

def _look_along_x(position, yaw_deg=0.0):
    """Camera-to-world, OpenCV camera looking along +x rotated by yaw about z (columns = camera x, y, z in world)."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    forward, right = np.array([c, s, 0.0]), np.array([s, -c, 0.0])
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def fixture_c2w(k: int) -> np.ndarray:
    return _look_along_x((1 + 0.2 * k, 1.5, 1.4), yaw_deg=7.0 * k - 20.0)


def _box_corners(lo, hi):
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)


def _box_faces(base):
    # 12 triangles over the corner order of _box_corners (index = 4*ix + 2*iy + iz).
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return [(base + a, base + b, base + c) for q in quads for a, b, c in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))]


def fixture_rgb(k: int, h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4 + 9 * k) % 256, (y * 5) % 256, ((x // 8 + y // 8) % 2) * 200 + k], -1).astype(np.uint8)


def _w2c_line(image_id, w2c, name):
    values = " ".join(repr(float(v)) for v in (*rotmat_to_qvec(w2c[:3, :3]), *w2c[:3, 3]))
    return f"{image_id} {values} 1 {name}"


def _obb(centroid, lengths, rows, minimum, maximum):
    return {"centroid": list(centroid), "axesLengths": list(lengths), "normalizedAxes": list(np.ravel(rows)),
            "min": list(minimum), "max": list(maximum)}


def make_fixture(root: Path, depth_encoding: str = "deflate") -> Path:
    """docs/datasets.md §6.2: a ScanNet++ root with one scene, written file by file in the release formats."""
    scene = root / "data" / SCENE
    scans, iphone, dslr = scene / "scans", scene / "iphone", scene / "dslr"
    # 1. mesh: floor corners 0-3, chair box 4-11, table slab 12-19.
    verts = np.concatenate([[(0, 0, 0), (4, 0, 0), (4, 3, 0), (0, 3, 0)],
                            _box_corners((1, 1, 0), (1.5, 1.5, 0.9)), _box_corners((2.5, 1, 0.7), (3.5, 2, 0.75))])
    faces = np.array([(0, 1, 2), (0, 2, 3)] + _box_faces(4) + _box_faces(12))
    colors = np.tile(np.array([[200, 180, 160]], np.uint8), (20, 1))
    write_ply(scans / "mesh_aligned_0.05.ply", verts, faces, colors)
    (scans / "mesh_aligned_0.05_semantic.ply").write_bytes((scans / "mesh_aligned_0.05.ply").read_bytes())
    # 2-3. segments (identity) and annotations; the chair obb is yaw-rotated by 30 degrees.
    (scans / "segments.json").write_text(json.dumps({"params": {}, "sceneId": SCENE, "segIndices": list(range(20))}))
    chair_rows = [[COS30, SIN30, 0], [-SIN30, COS30, 0], [0, 0, 1]]
    groups = [
        {"id": 1, "objectId": 1, "label": "chair", "segments": list(range(4, 12)),
         "obb": _obb((1.25, 1.25, 0.45), (0.6, 0.4, 0.9), chair_rows, (0.890192, 0.926795, 0.0), (1.609808, 1.573205, 0.9))},
        {"id": 2, "objectId": 2, "label": "table", "segments": list(range(12, 20)),
         "obb": _obb((3.0, 1.5, 0.725), (1.0, 1.0, 0.05), np.eye(3), (2.5, 1.0, 0.7), (3.5, 2.0, 0.75))},
        {"id": 3, "objectId": 3, "label": "wall", "segments": [0, 1, 2, 3],
         "obb": _obb((2.0, 1.5, 0.0), (4.0, 3.0, 0.01), np.eye(3), (0.0, 0.0, -0.005), (4.0, 3.0, 0.005))},
        {"id": 4, "objectId": 7, "label": "office chair", "segments": [],
         "obb": _obb((0.5, 2.5, 0.5), (0.5, 0.5, 1.0), np.eye(3), (0.25, 2.25, 0.0), (0.75, 2.75, 1.0))},
        {"id": 5, "objectId": 8, "label": "remove me", "segments": [0]},  # no obb: not an object
    ]
    (scans / "segments_anno.json").write_text(json.dumps({"sceneId": SCENE, "segGroups": groups}))
    # 4. poses: frame 5 lost (-Infinity, as Python's json writes it).
    poses = {}
    for k in range(10):
        aligned = np.full((4, 4), -np.inf) if k == INVALID_FRAME else fixture_c2w(k)
        poses[f"frame_{k:06d}"] = {"timestamp": k / 60, "intrinsic": [[60, 0, 31.5], [0, 60, 23.5], [0, 0, 1]],
                                   "pose": np.eye(4).tolist(), "aligned_pose": aligned.tolist(), "imu": {}}
    iphone.mkdir(parents=True)
    (iphone / "pose_intrinsic_imu.json").write_text(json.dumps(poses))
    # 5. depth.bin, 2.0 m everywhere.
    if depth_encoding == "deflate":
        comp = zlib.compressobj(wbits=-15)
        (iphone / "depth.bin").write_bytes(comp.compress(np.full((10, 192, 256), 2.0, "<f4").tobytes()) + comp.flush())
    else:
        record = lz4.block.compress(np.full((192, 256), 2000, "<u2").tobytes(), store_size=False)
        (iphone / "depth.bin").write_bytes((struct.pack("<I", len(record)) + record) * 10)
    # 6. COLMAP: frames 0, 3, 6, 9, each followed by an empty 2D-points line; one name with a folder prefix.
    colmap = iphone / "colmap"
    colmap.mkdir()
    (colmap / "cameras.txt").write_text("# Camera list with one line of data per camera:\n"
                                        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                                        "1 OPENCV 64 48 60 60 31.5 23.5 0 0 0 0\n")
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for k in COLMAP_FRAMES:
        name = f"iphone/frame_{k:06d}.jpg" if k == 3 else f"frame_{k:06d}.jpg"
        lines += [_w2c_line(k + 1, np.linalg.inv(fixture_c2w(k)), name), ""]
    (colmap / "images.txt").write_text("\n".join(lines) + "\n")
    (colmap / "points3D.txt").write_text("# 3D point list with one line of data per point:\n")
    # 7. the video.
    from fractions import Fraction

    write_video(iphone / "rgb.mp4", np.stack([fixture_rgb(k) for k in range(10)]), Fraction(60))
    # 8. DSLR: fisheye camera, 4 registered images, a 5th image on disk that COLMAP did not register.
    (dslr / "colmap").mkdir(parents=True)
    (dslr / "colmap" / "cameras.txt").write_text("1 OPENCV_FISHEYE 96 64 50 50 48 32 0 0 0 0\n")
    dslr_lines, ns_frames = [], []
    for j in range(1, 5):
        c2w = dslr_c2w(j)
        dslr_lines += [_w2c_line(j, np.linalg.inv(c2w), f"DSC{j:05d}.JPG"), ""]
        ns = c2w.copy()
        ns[:, 1:3] *= -1          # OpenCV -> OpenGL camera
        ns[[0, 1], :] = ns[[1, 0], :]  # swap world rows 0 and 1
        ns[2, :] *= -1            # negate world row 2
        ns_frames.append({"file_path": f"DSC{j:05d}.JPG", "transform_matrix": ns.tolist(), "mask_path": f"DSC{j:05d}.png"})
    (dslr / "colmap" / "images.txt").write_text("\n".join(dslr_lines) + "\n")
    (dslr / "resized_images").mkdir()
    (dslr / "resized_anon_masks").mkdir()
    for j in range(1, 6):
        cv2.imwrite(str(dslr / "resized_images" / f"DSC{j:05d}.JPG"), dslr_bgr(j), [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(dslr / "resized_anon_masks" / f"DSC{j:05d}.png"), np.full((64, 96), 255, np.uint8))
    (dslr / "train_test_lists.json").write_text(json.dumps(
        {"train": ["DSC00001.JPG", "DSC00002.JPG", "DSC00003.JPG"], "test": ["DSC00004.JPG"]}))
    (dslr / "nerfstudio").mkdir()
    (dslr / "nerfstudio" / "transforms.json").write_text(json.dumps(
        {"camera_model": "OPENCV_FISHEYE", "fl_x": 50, "fl_y": 50, "cx": 48, "cy": 32, "w": 96, "h": 64,
         "frames": ns_frames[:3], "test_frames": ns_frames[3:]}))
    # 10. root files.
    (root / "splits").mkdir()
    (root / "splits" / "nvs_sem_train.txt").write_text(f"{SCENE}\n")
    bench = root / "metadata" / "semantic_benchmark"
    bench.mkdir(parents=True)
    (bench / "top100.txt").write_text("wall\nchair\ntable\n")
    (bench / "top100_instance.txt").write_text("chair\ntable\n")
    (bench / "map_benchmark.csv").write_text("class,count,semantic_map_to,instance_map_to\n"
                                             "chair,10,,\noffice chair,5,chair,chair\nwall,20,,None\n")
    return root


def dslr_c2w(j: int) -> np.ndarray:
    return _look_along_x((0.5 + 0.5 * j, 2.0, 1.2), yaw_deg=-40.0 + 25.0 * j)


def dslr_bgr(j: int) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([(x * 2 + 30 * j) % 256, (y * 3) % 256, np.full_like(x, 40 * j)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def spp_root(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("scannetpp"))


@pytest.fixture(scope="module")
def spp_scene(spp_root):
    return READER.read_scene(spp_root, SCENE, "train")


# ---- §6.2 assertions ---------------------------------------------------------------------------------------------------

def test_reader_is_registered():
    assert get_reader("scannetpp") is READER and READER.name == "scannetpp"


def test_split_lists(spp_root, tmp_path):
    assert list_scenes(spp_root) == [(SCENE, "train")]
    assert list_scenes(spp_root, "train") == list_scenes(spp_root, "nvs_sem_train") == [(SCENE, "train")]
    assert list_scenes(spp_root, "val") == []
    # A listed scene without a folder is skipped; a folder in no list is "unlisted"; nvs_sem lists win over others.
    root = tmp_path / "r"
    for sid in ("0123456789", "abcdefabcd"):
        (root / "data" / sid).mkdir(parents=True)
    (root / "splits").mkdir()
    (root / "splits" / "nvs_test.txt").write_text("abcdefabcd\n")
    (root / "splits" / "nvs_sem_val.txt").write_text("abcdefabcd\nfffffffff0\n")
    assert list_scenes(root) == [("0123456789", "unlisted"), ("abcdefabcd", "val")]
    (root / "splits" / "nvs_sem_val.txt").write_text("not-an-id\n")
    with pytest.raises(InputError, match="nvs_sem_val.txt"):
        list_scenes(root)



def test_release_scene_ids_that_are_not_ten_hex_characters(tmp_path):
    # The release's nvs_sem_train list (and VLM-3R's copy) holds a few ids that are not 10 hex characters.
    root = tmp_path / "r"
    ids = ["7104910700000", "511061232", "717485935", "0a5c013435"]
    for sid in ids:
        (root / "data" / sid).mkdir(parents=True)
    (root / "splits").mkdir()
    (root / "splits" / "nvs_sem_train.txt").write_text("\n".join(ids) + "\n")
    assert list_scenes(root) == sorted((sid, "train") for sid in ids)

def test_yaw_rotated_obb_rows_as_axes(spp_scene):
    objects = spp_scene.objects.to_pylist()
    by_id = {o["instance_id"]: o for o in objects}
    assert sorted(by_id) == [1, 2, 3, 7]  # the group without obb is not an object
    chair = by_id[1]
    np.testing.assert_allclose(chair["aabb_min"], (0.890192, 0.926795, 0.0), atol=1e-6)
    np.testing.assert_allclose(chair["aabb_max"], (1.609808, 1.573205, 0.9), atol=1e-6)
    np.testing.assert_allclose(np.reshape(chair["axes"], (3, 3))[0], (COS30, SIN30, 0.0), atol=1e-12)
    np.testing.assert_allclose(chair["lengths"], (0.6, 0.4, 0.9))
    assert spp_scene.meta["obb_minmax_mismatch_ids"] == []
    assert spp_scene.meta["obb_minmax_max_deviation_m"] < 1e-6
    # num_points from the segments; vertex -> instance through segments.json.
    assert {i: o["num_points"] for i, o in by_id.items()} == {1: 8, 2: 8, 3: 4, 7: 0}
    np.testing.assert_array_equal(spp_scene.vertex_instance, [3] * 4 + [1] * 8 + [2] * 8)


def test_categories_follow_map_benchmark(spp_scene):
    cats = {o["label"]: o["category"] for o in spp_scene.objects.to_pylist()}
    assert cats == {"chair": "chair", "office chair": "chair", "table": "table", "wall": "wall"}
    counts = spp_scene.meta["categories"]
    assert (counts["renamed"], counts["kept"], counts["not_in_map"], counts["benchmark_excluded"]) == (1, 2, 1, 0)
    assert (counts["in_top100"], counts["in_top100_instance"]) == (4, 3)
    assert spp_scene.meta["groups_without_obb"] == 1


def test_iphone_frames_poses_intrinsics_and_invalid(spp_scene):
    frames = spp_scene.frames
    assert frames.num_rows == 10
    valid = column_as_array(frames, "valid")
    assert valid.tolist() == [k != INVALID_FRAME for k in range(10)]
    c2w = spp_scene.camera_to_world
    assert np.isnan(c2w[INVALID_FRAME]).all()
    for k in range(10):
        if k != INVALID_FRAME:
            np.testing.assert_allclose(c2w[k], fixture_c2w(k), atol=1e-12)
    np.testing.assert_allclose(column_as_array(frames, "timestamp"), np.arange(10) / 60)
    # JSON intrinsic refers to the COLMAP camera size (64x48) = the video size: unscaled; depth K scaled by 4.
    assert column_as_array(frames, "fx")[0] == 60 and column_as_array(frames, "cx")[0] == 31.5
    assert column_as_array(frames, "depth_fx")[0] == 240 and column_as_array(frames, "depth_cy")[0] == 94.0
    assert frames.column("color_kind").to_pylist() == ["video"] * 10
    assert spp_scene.meta["video_source"]["frames"] == 10 and spp_scene.meta["video_source"]["width"] == 64


def test_colmap_inverse_recovers_c2w(spp_root, spp_scene):
    images = read_images_txt(spp_root / "data" / SCENE / "iphone" / "colmap" / "images.txt")
    assert [img.basename for img in images] == [f"frame_{k:06d}.jpg" for k in COLMAP_FRAMES]
    assert images[1].name == "iphone/frame_000003.jpg"
    for img, k in zip(images, COLMAP_FRAMES):
        np.testing.assert_allclose(img.camera_to_world, fixture_c2w(k), atol=1e-9)
    check = spp_scene.meta["colmap_check"]
    assert check["registered"] == 4 and check["compared"] == 4
    assert check["max_translation_m"] < 1e-9 and not check["exceeds_tolerance"]
    camera = read_cameras_txt(spp_root / "data" / SCENE / "iphone" / "colmap" / "cameras.txt")[1]
    assert camera.model == "OPENCV" and camera.focal_principal == (60, 60, 31.5, 23.5)
    assert camera.distortion == {"k1": 0, "k2": 0, "p1": 0, "p2": 0}


def test_colmap_pose_mismatch_is_flagged(tmp_path):
    root = make_fixture(tmp_path)
    images_txt = root / "data" / SCENE / "iphone" / "colmap" / "images.txt"
    shifted = fixture_c2w(6)
    shifted[0, 3] += 0.03  # COLMAP says the camera is 3 cm elsewhere
    text = images_txt.read_text().replace(_w2c_line(7, np.linalg.inv(fixture_c2w(6)), "frame_000006.jpg"),
                                          _w2c_line(7, np.linalg.inv(shifted), "frame_000006.jpg"))
    images_txt.write_text(text)
    check = READER.read_scene(root, SCENE, "train").meta["colmap_check"]
    assert check["exceeds_tolerance"] and check["max_translation_m"] == pytest.approx(0.03, abs=1e-9)


def test_images_txt_without_empty_lines_is_rejected(tmp_path):
    path = tmp_path / "images.txt"
    c2w = fixture_c2w(0)
    path.write_text("\n".join(_w2c_line(i, np.linalg.inv(c2w), f"frame_{i:06d}.jpg") for i in (1, 2, 3)) + "\n")
    with pytest.raises(InputError, match="images.txt: line 2.*pairing"):
        read_images_txt(path)
    # The last image's empty points line may be missing at end of file.
    path.write_text(_w2c_line(1, np.linalg.inv(c2w), "frame_000000.jpg"))
    assert len(read_images_txt(path)) == 1


def test_images_txt_blank_lines_where_a_pose_line_is_expected_are_skipped(tmp_path):
    # COLMAP's reader skips empty lines while looking for a pose line and takes the next line as its points line.
    path = tmp_path / "images.txt"
    lines = ["# Image list with two lines of data per image:", ""]
    for i in (1, 2, 3):
        lines += [_w2c_line(i, np.linalg.inv(fixture_c2w(i)), f"frame_{i:06d}.jpg"),
                  "10.5 20.5 7 11.0 12.0 -1" if i == 2 else "", ""]
    path.write_text("\n".join(lines) + "\n")
    images = read_images_txt(path)
    assert [img.image_id for img in images] == [1, 2, 3]
    for i, img in zip((1, 2, 3), images):
        np.testing.assert_allclose(img.camera_to_world, fixture_c2w(i), atol=1e-9)


def test_quaternions_round_trip_including_half_turns():
    rng = np.random.default_rng(3)
    rotations = [qvec_to_rotmat(q) for q in rng.normal(size=(50, 4))]
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    for rot in rotations:
        q = rotmat_to_qvec(rot)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(qvec_to_rotmat(q), rot, atol=1e-12)


@pytest.mark.parametrize("encoding", ["deflate", "lz4_records"])
def test_depth_bin_both_encodings_decode_2m(tmp_path, encoding):
    root = make_fixture(tmp_path, depth_encoding=encoding)
    depth_bin = root / "data" / SCENE / "iphone" / "depth.bin"
    index = index_depth_bin(depth_bin)
    assert index.num_frames == 10
    stored = read_depth_frame(depth_bin, index.kind, int(index.offsets[4]), int(index.lengths[4]), 256, 192)
    assert stored.shape == (192, 256)
    if encoding == "deflate":
        assert index.kind == "depth_bin_deflate_f32" and np.all(stored == 2.0)
    else:
        assert index.kind == "depth_bin_record" and np.all(stored == 2000.0)
        np.testing.assert_array_equal(index.offsets, 4 + np.arange(10) * (4 + index.lengths[0]))
    scene = READER.read_scene(root, SCENE, "train")
    # Out of order on purpose: the DEFLATE cursor must restart for an earlier frame.
    rows = scene.frames.take([7, 2, 9, 0])
    for depth in decode_depths(rows):
        assert depth.shape == (192, 256) and np.all(depth == np.float32(2.0))


def test_depth_bin_deflate_streams_with_bounded_memory(tmp_path):
    """Frame 299 of a 59 MB (decompressed) stream is reached holding only a few MB at once."""
    rows_m = np.linspace(0.5, 4.0, 192, dtype=np.float32)[None, :, None]
    depth = np.broadcast_to(rows_m + 0.001 * np.arange(300, dtype=np.float32)[:, None, None], (300, 192, 256)).copy()
    depth[299] = 3.25
    path = tmp_path / "depth.bin"
    write_depth_bin(path, depth, "deflate")
    assert path.stat().st_size < depth.nbytes / 4
    tracemalloc.start()
    try:
        frame = read_depth_frame(path, "depth_bin_deflate_f32", 299, 0, 256, 192)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.all(frame == 3.25)
    assert peak_bytes < 16 * 2**20, peak_bytes
    np.testing.assert_array_equal(read_depth_frame(path, "depth_bin_deflate_f32", 3, 0, 256, 192), depth[3])


def test_deflate_records_are_millimetres(tmp_path):
    depth = np.full((3, 192, 256), 1.25, np.float32)
    depth[1, :10] = 0.0
    write_depth_bin(tmp_path / "d.bin", depth, "deflate_records")
    index = index_depth_bin(tmp_path / "d.bin")
    assert index.kind == "depth_bin_record" and index.unit_m == 0.001
    frame = read_depth_frame(tmp_path / "d.bin", index.kind, int(index.offsets[1]), int(index.lengths[1]))
    assert np.all(frame[:10] == 0) and np.allclose(frame[10:], 1250.0)


def test_whole_file_deflate_ignores_bytes_after_the_stream_end(tmp_path):
    # The official decoder (zlib.decompress of the whole file, wbits=-15) ignores data after the end-of-stream marker.
    depth = np.full((3, 192, 256), 1.5, np.float32)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = comp.compress(depth.tobytes()) + comp.flush()
    (tmp_path / "d.bin").write_bytes(stream + b"\x00" * 7)
    assert zlib.decompress((tmp_path / "d.bin").read_bytes(), wbits=-15) == depth.tobytes()
    index = index_depth_bin(tmp_path / "d.bin")
    assert index.kind == "depth_bin_deflate_f32" and index.num_frames == 3
    assert np.all(read_depth_frame(tmp_path / "d.bin", index.kind, 2, 0) == np.float32(1.5))


def test_video_frames_decode_to_the_encoded_rgb(spp_scene):
    images = decode_colors(spp_scene.frames.take([0, 4, 9]))
    for img, k in zip(images, (0, 4, 9)):
        # Lossless H.264 RGB (qp 0): decoded pixels equal the input (tolerance 1 for decoder colour paths).
        assert np.abs(img.astype(int) - fixture_rgb(k)).max() <= 1


def test_dslr_stream(spp_root):
    scene = ScanNetPPReader(stream="dslr").read_scene(spp_root, SCENE, "train")
    frames = scene.frames
    paths = frames.column("color_path").to_pylist()
    assert [Path(p).name for p in paths] == [f"DSC{j:05d}.JPG" for j in range(1, 6)]
    assert frames.column("color_kind").to_pylist() == ["image"] * 5
    assert column_as_array(frames, "valid").tolist() == [True, True, True, True, False]  # DSC00005 unregistered
    for j in range(1, 5):
        np.testing.assert_allclose(scene.camera_to_world[j - 1], dslr_c2w(j), atol=1e-9)
    assert column_as_array(frames, "fx").tolist() == [50.0] * 5 and column_as_array(frames, "cy").tolist() == [32.0] * 5
    assert column_as_array(frames, "width").tolist() == [96] * 5
    assert frames.column("depth_kind").to_pylist() == ["none"] * 5
    camera = scene.meta["camera"]
    assert camera["models"]["1"]["model"] == "OPENCV_FISHEYE" and camera["undistorted"] is False
    assert scene.meta["dslr_train_test"]["test"] == ["DSC00004.JPG"]
    assert scene.meta["nerfstudio_check"]["compared"] == 4
    assert scene.meta["nerfstudio_check"]["max_translation_m"] < 1e-9
    assert scene.meta["nerfstudio_check"]["max_rotation_deg"] < 1e-5
    decoded = decode_colors(frames.take([1]))[0]
    expected = cv2.cvtColor(cv2.imread(paths[1]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, expected)


def test_nerfstudio_inverse():
    c2w = dslr_c2w(2)
    ns = camera_to_world_to_nerfstudio(c2w)
    # The nerfstudio world is (x, y, z)_ns = (y, x, -z)_mesh and the camera is OpenGL (y up, z backward).
    np.testing.assert_allclose(ns[:3, 3], [c2w[1, 3], c2w[0, 3], -c2w[2, 3]])
    np.testing.assert_allclose(ns[:3, 2], -np.array([c2w[1, 2], c2w[0, 2], -c2w[2, 2]]))
    np.testing.assert_allclose(nerfstudio_to_camera_to_world(ns), c2w, atol=1e-15)


# ---- bad input -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["deflate", "lz4_records"])
def test_truncated_depth_bin_names_the_file(tmp_path, encoding):
    root = make_fixture(tmp_path, depth_encoding=encoding)
    depth_bin = root / "data" / SCENE / "iphone" / "depth.bin"
    data = depth_bin.read_bytes()
    depth_bin.write_bytes(data[: len(data) - 7])
    with pytest.raises(InputError, match=r"depth\.bin.*truncated") as err:
        READER.read_scene(root, SCENE, "train")
    assert err.value.path == str(depth_bin)


def test_corrupt_video_names_the_file(tmp_path):
    root = make_fixture(tmp_path)
    video = root / "data" / SCENE / "iphone" / "rgb.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="corrupt video") as err:
        READER.read_scene(root, SCENE, "train")
    assert err.value.path == str(video)


def test_missing_segments_anno_names_the_file(tmp_path):
    root = make_fixture(tmp_path)
    anno = root / "data" / SCENE / "scans" / "segments_anno.json"
    anno.unlink()
    with pytest.raises(InputError, match="segments_anno.json not found") as err:
        READER.read_scene(root, SCENE, "train")
    assert err.value.path == str(anno)


def test_segments_must_cover_the_mesh(tmp_path):
    root = make_fixture(tmp_path)
    segments = root / "data" / SCENE / "scans" / "segments.json"
    segments.write_text(json.dumps({"segIndices": list(range(19))}))
    with pytest.raises(InputError, match="19 segIndices for a mesh of 20 vertices"):
        READER.read_scene(root, SCENE, "train")


def test_null_and_nan_aligned_poses_are_invalid(tmp_path):
    root = make_fixture(tmp_path)
    pose_json = root / "data" / SCENE / "iphone" / "pose_intrinsic_imu.json"
    poses = json.loads(pose_json.read_text())
    poses["frame_000001"]["aligned_pose"] = None
    poses["frame_000002"]["aligned_pose"][0][0] = float("nan")
    pose_json.write_text(json.dumps(poses))
    scene = READER.read_scene(root, SCENE, "train")
    assert np.flatnonzero(~column_as_array(scene.frames, "valid")).tolist() == [1, 2, INVALID_FRAME]


# ---- the synthetic writer -----------------------------------------------------------------------------------------------

def small_synthetic_scene(name: str = "synth0001", num_frames: int = 8) -> SyntheticScene:
    """A tiny room: floor, a yaw-rotated chair, a table and a tv; a camera path; patterned 'renders'."""
    def box(instance_id, label, centroid, lengths, yaw_deg):
        c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
        return SyntheticObject(instance_id, label, np.array(centroid, float), np.array(lengths, float),
                               np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]))

    objects = [box(0, "floor", (2.0, 1.5, -0.005), (4.0, 3.0, 0.01), 0.0),
               box(1, "chair", (1.25, 1.25, 0.45), (0.6, 0.4, 0.9), 30.0),
               box(2, "table", (3.0, 1.5, 0.375), (1.2, 0.8, 0.75), -15.0),
               box(5, "tv", (3.8, 0.4, 1.2), (0.1, 0.9, 0.55), 90.0)]
    vertices, faces, vertex_instance = [], [], []
    for obj in objects:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        corners = obj.centroid + (signs * obj.lengths / 2) @ obj.axes
        faces += _box_faces(len(vertices))
        vertices += corners.tolist()
        vertex_instance += [obj.instance_id] * 8
    vertices += [(0.2, 2.8, 2.5)]  # an unannotated vertex
    vertex_instance += [-1]
    n_v = len(vertices)
    c2w = np.stack([_look_along_x((0.8 + 0.25 * k, 1.6, 1.3), yaw_deg=-30 + 9 * k) for k in range(num_frames)])
    h, w = 48, 64
    rgb = np.stack([fixture_rgb(k, h, w) for k in range(num_frames)])
    depth = np.stack([np.full((h, w), 1.5 + 0.125 * k, np.float32) for k in range(num_frames)])
    depth[:, :2] = 0.0
    return SyntheticScene(
        name=name, seed=1, vertices=np.asarray(vertices, float), faces=np.asarray(faces, np.int64),
        colors=(np.arange(n_v * 3).reshape(n_v, 3) * 37 % 256).astype(np.uint8),
        vertex_instance=np.asarray(vertex_instance, np.int64), objects=objects, camera_to_world=c2w,
        timestamps=np.arange(num_frames) / 30.0, intrinsics=np.array([[58.0, 0, 31.5], [0, 58.0, 23.5], [0, 0, 1]]),
        width=w, height=h, rgb=rgb, depth=depth, instance=np.full((num_frames, h, w), -1, np.int32),
        invalid_frames=(4,))


def _truth(kind: str) -> SyntheticScene:
    if kind == "generated":
        return generate_scene(3, num_frames=8)  # 96x72 renders, 15 objects
    if kind == "generated_mounted":
        scene = generate_scene(0, num_frames=8, mounted=True)
        assert any(o.centroid[2] - o.lengths[2] / 2 >= MOUNTED_BOTTOM_M[0] for o in scene.objects)  # wall-mounted
        return scene
    return small_synthetic_scene()


@pytest.mark.parametrize("kind,container,encoding", [("generated", "mp4", "deflate"), ("generated", "mkv", "lz4_records"),
                                                     ("handmade", "mp4", "deflate_records"),
                                                     ("generated_mounted", "mp4", "deflate")])
def test_synthetic_round_trip(tmp_path, kind, container, encoding):
    truth = _truth(kind)
    raw = tmp_path / "raw"
    scene_id = write_scannetpp(truth, raw, split="val", depth_encoding=encoding, video_container=container)
    assert scene_id == scannetpp_scene_id(truth.name) and len(scene_id) == 10
    assert (raw / "data" / scene_id / "iphone" / f"rgb.{container}").is_file()
    assert list_scenes(raw) == [(scene_id, "val")]
    scene = READER.read_scene(raw, scene_id, "val")

    valid = column_as_array(scene.frames, "valid")
    assert np.flatnonzero(~valid).tolist() == sorted(truth.invalid_frames)
    np.testing.assert_allclose(scene.camera_to_world[valid], truth.camera_to_world[valid], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(column_as_array(scene.frames, "timestamp"), truth.timestamps)
    for name, (i, j) in {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2)}.items():
        assert np.all(column_as_array(scene.frames, name) == truth.intrinsics[i, j])
    check = scene.meta["colmap_check"]
    registered = [k for k in range(0, len(truth.timestamps), 3) if k not in truth.invalid_frames]
    assert check["compared"] == len(registered) and check["max_translation_m"] < 1e-9

    objects = {o["instance_id"]: o for o in scene.objects.to_pylist()}
    assert sorted(objects) == sorted(o.instance_id for o in truth.objects)
    for obj in truth.objects:
        got = objects[obj.instance_id]
        assert got["label"] == got["category"] == obj.label
        assert got["centroid"] == obj.centroid.tolist() and got["lengths"] == obj.lengths.tolist()
        assert got["axes"] == np.asarray(obj.axes).reshape(9).tolist()
        lo, hi = box_aabb(obj.centroid, obj.lengths, obj.axes)
        assert got["aabb_min"] == lo.tolist() and got["aabb_max"] == hi.tolist()
        assert got["num_points"] == int((truth.vertex_instance == obj.instance_id).sum()) > 0
    np.testing.assert_array_equal(scene.vertex_instance, truth.vertex_instance)
    np.testing.assert_array_equal(scene.mesh_vertices, truth.vertices.astype(np.float32))
    np.testing.assert_array_equal(scene.mesh_faces, truth.faces)

    colours = decode_colors(scene.frames)
    assert len(colours) == len(truth.rgb)
    # Lossless H.264 RGB: decoded == rendered (tolerance 1 for decoder colour paths; measured 0).
    assert max(np.abs(c.astype(int) - t).max() for c, t in zip(colours, truth.rgb)) <= 1
    rows = [0, len(truth.timestamps) - 1]
    for depth, k in zip(decode_depths(scene.frames.take(rows)), rows):
        expected = cv2.resize(truth.depth[k], (256, 192), interpolation=cv2.INTER_NEAREST)
        # lz4 records hold whole millimetres: at most 0.5 mm off; DEFLATE keeps float32 metres.
        np.testing.assert_allclose(depth, expected, atol=5e-4 if encoding == "lz4_records" else 1e-6, rtol=0)

    # The canonical scene writes and reads back (schemas valid, meta JSON-clean).
    root = DatasetRoot(tmp_path / "canonical")
    out = root.scene_dir(scene.dataset, scene.scene_id)
    stats = write_ingested_scene(root, scene, num_frames=4).stats
    assert stats["valid_frames"] == len(truth.timestamps) - len(truth.invalid_frames)
    back = read_canonical(out)
    assert back.meta["video_source"]["kind"] == "video" and back.meta["alignment_source"].startswith("identity")
    np.testing.assert_array_equal(back.vertex_instance, truth.vertex_instance)


def test_writer_extracted_frames_are_used(tmp_path):
    truth = small_synthetic_scene(num_frames=4)
    scene_id = write_scannetpp(truth, tmp_path, extract_frames=True)
    scene = READER.read_scene(tmp_path, scene_id, "train")
    assert scene.frames.column("color_kind").to_pylist() == ["image"] * 4
    for colour, rendered in zip(decode_colors(scene.frames), truth.rgb):
        # The frame is the rendered RGB after one JPEG round trip at quality 95 (4:2:0 chroma on sharp edges).
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rendered, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.testing.assert_array_equal(colour, cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_is_deterministic_and_merges_root_files(tmp_path):
    a, b = small_synthetic_scene("synth0001", 4), small_synthetic_scene("synth0002", 4)
    a_id, b_id = write_scannetpp(a, tmp_path / "one"), write_scannetpp(b, tmp_path / "one")
    write_scannetpp(b, tmp_path / "two")
    write_scannetpp(a, tmp_path / "two")
    assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")
    assert (tmp_path / "one" / "splits" / "nvs_sem_train.txt").read_text() == "\n".join(sorted([a_id, b_id])) + "\n"
    bench = tmp_path / "one" / "metadata" / "semantic_benchmark"
    assert (bench / "top100.txt").read_text().split() == ["chair", "floor", "table", "tv"]
    assert (bench / "top100_instance.txt").read_text().split() == ["chair", "table", "tv"]
    assert "chair,2,," in (bench / "map_benchmark.csv").read_text().splitlines()
    scene = READER.read_scene(tmp_path / "one", a_id, "train")
    assert scene.meta["categories"]["in_top100"] == 4 and scene.meta["categories"]["kept"] == 4


def test_frames_past_the_video_or_depth_end(tmp_path):
    """Pose entries beyond the video are dropped (counted); frames beyond depth.bin keep no depth reference."""
    from fractions import Fraction

    root = make_fixture(tmp_path)
    iphone = root / "data" / SCENE / "iphone"
    write_video(iphone / "rgb.mp4", np.stack([fixture_rgb(k) for k in range(8)]), Fraction(60))
    comp = zlib.compressobj(wbits=-15)
    (iphone / "depth.bin").write_bytes(comp.compress(np.full((6, 192, 256), 2.0, "<f4").tobytes()) + comp.flush())
    scene = READER.read_scene(root, SCENE, "train")
    assert column_as_array(scene.frames, "frame_index").tolist() == list(range(8))
    assert scene.meta["frames_without_colour"] == 2
    assert scene.frames.column("depth_kind").to_pylist() == ["depth_bin_deflate_f32"] * 6 + ["none"] * 2
    assert scene.meta["depth_source"]["frames_without_depth"] == 2
    assert decode_depths(scene.frames.take([7]))[0] is None
