"""ARKitScenes reader and synthetic writer, on real files: PNG frames, .traj, .pincam, annotation JSON, PLY, CSV.

The §6.3 fixture of datasets.md is built by :func:`make_scan` from the ground-truth upright cameras, with every stored
form (sideways images, world->camera axis-angle lines, pincam of the stored image) derived independently of the
reader's own helpers, so a convention error in the reader cannot cancel out.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.core.errors import InputError
from pipeline.core.frames import decode_colors, decode_depths
from pipeline.core.ply import write_ply
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import box_aabb, read_scene as read_canonical
from pipeline.stages.ingest import write_ingested_scene
from pipeline.core.schemas import column_as_array
from pipeline.sources import get_reader
from pipeline.sources.arkitscenes import (CLASS_NAMES, READER, ArkitScenesReader, ScanInfo, infer_sky_direction,
                                          match_timestamps, read_scan_csv, read_traj, rotate_camera)
from pipeline.sources.arkitscenes_writer import arkitscenes_label, video_id_for, write_arkitscenes
from pipeline.sources import synthetic
from pipeline.sources.synthetic import SyntheticObject, SyntheticScene

VID = "41069025"
TRAJ_S = 99.95 + 0.1 * np.arange(10)          # 10 Hz poses, crossing 100 s
FRAME_S = 99.95 + np.arange(30) / 60.0        # 60 fps frames: every 6th one sits on a traj line
STORED_W, STORED_H = 256, 192
SPEC_PINCAM = (256, 192, 212.0, 212.0, 127.5, 95.5)
ZERO_DEPTH_FRAME = 12                         # an exactly posed frame whose depth is all zero
PINCAM_MINUS_1MS_FRAME = 13                   # its .pincam is named with t - 0.001
PINCAM_PLUS_1MS_FRAME = 14                    # its .pincam is named with t + 0.001


# ---- the §6.3 fixture ------------------------------------------------------------------------------------------

def upright_camera_to_world(k: int) -> np.ndarray:
    """Ground truth: camera at (1 + 0.2k, 1.5, 1.4) looking along +x, yawing 5 deg per pose (OpenCV camera)."""
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])   # columns: camera x, y, z in world
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("z", 5.0 * k, degrees=True).as_matrix() @ base
    c2w[:3, 3] = [1.0 + 0.2 * k, 1.5, 1.4]
    return c2w


# Stored camera of a scan whose sky is on the LEFT of the stored image: the stored x axis is the upright image's
# down direction and the stored y axis is the upright left direction (columns: stored x, y, z in upright axes).
STORED_FROM_UPRIGHT = {"Left": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), "Up": np.eye(3)}


def stored_camera_to_world(k: int, sky: str) -> np.ndarray:
    c2w = upright_camera_to_world(k)
    c2w[:3, :3] = c2w[:3, :3] @ STORED_FROM_UPRIGHT[sky]
    return c2w


def stored_rgb(j: int) -> np.ndarray:
    """A stored (sensor-oriented) frame: gradients + frame number, so orientation and order both show."""
    v, u = np.mgrid[0:STORED_H, 0:STORED_W]
    return np.stack([u % 256, (v * 3) % 256, np.full_like(u, 8 * j)], axis=-1).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def fixture_png(kind: str, j: int, marker: tuple[int, int] | None) -> bytes:
    """Encoded PNG of a fixture frame (cached: every test rebuilds the scan, the bytes are always the same)."""
    if kind == "rgb":
        image = cv2.cvtColor(stored_rgb(j), cv2.COLOR_RGB2BGR)
        if marker is not None:
            image[marker[1], marker[0]] = 255
    else:
        image = np.full((STORED_H, STORED_W), 0 if j == ZERO_DEPTH_FRAME else 1500, np.uint16)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image)


def room_mesh(path: Path) -> None:
    floor = [[0, 0, 0], [4, 0, 0], [4, 3, 0], [0, 3, 0]]
    chair = [[x, y, z] for x in (0.95, 1.55) for y in (1.05, 1.45) for z in (0.0, 0.9)]
    verts = np.array(floor + chair, np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [5, 7, 6]], np.int64)
    colors = np.tile(np.array([[200, 180, 150]], np.uint8), (len(verts), 1))
    write_ply(path, verts, faces, colors)


DECOY_OBB = {"centroid": [0, 0, 0], "axesLengths": [1, 1, 1], "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
CHAIR = {"uid": "u1", "label": "chair", "segments": {
    "obbAligned": {"centroid": [1.25, 1.25, 0.45], "axesLengths": [0.9, 0.6, 0.4],
                   "normalizedAxes": [0, 0, 1, 1, 0, 0, 0, 1, 0]},
    "obb": DECOY_OBB}}
TV = {"uid": "u2", "label": "tv_monitor", "segments": {
    "obbAligned": {"centroid": [3.9, 1.5, 1.2], "axesLengths": [1.0, 0.1, 0.6],
                   "normalizedAxes": [0, 1, 0, -1, 0, 0, 0, 0, 1]},
    "obb": DECOY_OBB}}


def make_scan(root: Path, layout: str = "raw", sky: str = "Left", pincam=SPEC_PINCAM, metadata: bool = True,
              marker: tuple[int, int] | None = None) -> Path:
    """datasets.md §6.3 under ``root/<layout>/``; returns the folder of the frame files."""
    scan = root / layout / "Training" / VID
    frames = scan / f"{VID}_frames" if layout == "3dod" else scan
    lines = []
    for k, t in enumerate(TRAJ_S):
        w2c = np.linalg.inv(stored_camera_to_world(k, sky))
        r = Rotation.from_matrix(w2c[:3, :3]).as_rotvec()
        lines.append(f"{t:.6f} {r[0]} {r[1]} {r[2]} {w2c[0, 3]} {w2c[1, 3]} {w2c[2, 3]}")
    frames.mkdir(parents=True, exist_ok=True)
    (frames / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    for j, t in enumerate(FRAME_S):
        name = f"{VID}_{t:.3f}"
        for folder, kind in (("lowres_wide", "rgb"), ("lowres_depth", "depth")):
            (frames / folder).mkdir(exist_ok=True)
            (frames / folder / f"{name}.png").write_bytes(fixture_png(kind, j, marker if kind == "rgb" else None))
        pincam_t = {PINCAM_MINUS_1MS_FRAME: t - 0.001, PINCAM_PLUS_1MS_FRAME: t + 0.001}.get(j, t)
        (frames / "lowres_wide_intrinsics").mkdir(exist_ok=True)
        (frames / "lowres_wide_intrinsics" / f"{VID}_{pincam_t:.3f}.pincam").write_text(" ".join(map(str, pincam)))
    (scan / f"{VID}_3dod_annotation.json").write_text(json.dumps({"data": [CHAIR, TV], "skipped": False}))
    room_mesh(scan / f"{VID}_3dod_mesh.ply")
    # A validation scan (visit NA) that has its annotation and mesh but no frames.
    other = root / layout / "Validation" / "41069030"
    other.mkdir(parents=True, exist_ok=True)
    (other / "41069030_3dod_annotation.json").write_text(json.dumps({"data": [], "skipped": False}))
    room_mesh(other / "41069030_3dod_mesh.ply")
    if metadata:
        (root / layout / "metadata.csv").write_text(
            "video_id,visit_id,fold,sky_direction\n"
            f"{VID},111,Training,{sky}\n41069026,111,Training,Up\n41069030,NA,Validation,Up\n")
    return frames


def pose_matrix(frames, row: int) -> np.ndarray:
    return column_as_array(frames, "camera_to_world")[row].reshape(4, 4)


# ---- listing and splits --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["raw", "3dod"])
def test_list_scenes_uses_metadata_and_drops_missing_scans(tmp_path, layout):
    make_scan(tmp_path, layout)
    reader = get_reader("arkitscenes")
    assert reader is READER and reader.name == "arkitscenes"
    # 41069026 is in metadata.csv but has no folder: not listed. 41069030 (visit NA) is a validation scan.
    assert reader.list_scenes(tmp_path) == [(VID, "train"), ("41069030", "val")]
    assert reader.list_scenes(tmp_path, "val") == [("41069030", "val")]
    # The layout folder itself may be given as the root.
    assert reader.list_scenes(tmp_path / layout, "train") == [(VID, "train")]
    with pytest.raises(ValueError, match="split"):
        reader.list_scenes(tmp_path, "test")
    rows = read_scan_csv(tmp_path / layout / "metadata.csv")
    assert rows["41069030"].visit_id is None and rows["41069030"].sky_direction == "Up"
    assert rows[VID] == ScanInfo(VID, "111", "train", "Left", str(tmp_path / layout / "metadata.csv"))


def test_malformed_scan_csv_names_file_and_line(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("video_id,visit_id,fold,sky_direction\n41069025,1,Training,Left\n41069026,1,Test,Up\n")
    with pytest.raises(InputError, match="metadata.csv: line 3: fold 'Test'"):
        read_scan_csv(path)
    path.write_text("video,fold\n1,Training\n")
    with pytest.raises(InputError, match="metadata.csv: missing column"):
        read_scan_csv(path)


def test_split_comes_from_the_split_csv_and_visit_na_is_none(tmp_path):
    make_scan(tmp_path, metadata=False)
    # The official split CSV (no sky direction) says the scan folder under Training is a validation scan.
    (tmp_path / "raw" / "raw_train_val_splits.csv").write_text(
        f"video_id,visit_id,fold\n{VID},NA,Validation\n")
    assert READER.list_scenes(tmp_path) == [(VID, "val"), ("41069030", "val")]
    scene = READER.read_scene(tmp_path, VID, "val")
    assert scene.split == "val" and scene.meta["visit_id"] is None
    assert scene.meta["scan_dir"].endswith(f"Training/{VID}")
    # No sky direction in any CSV: inferred from the poses, and right.
    assert scene.meta["sky_direction"] == "Left" and scene.meta["sky_direction_source"] == "poses"


def test_scan_without_frames_names_the_missing_folder(tmp_path):
    make_scan(tmp_path)
    with pytest.raises(InputError, match="Validation/41069030/lowres_wide.traj: trajectory file not found"):
        READER.read_scene(tmp_path, "41069030", "val")
    (tmp_path / "raw" / "Validation" / "41069030" / "lowres_wide.traj").write_text("1.0 0 0 0 0 0 0\n")
    with pytest.raises(InputError, match="Validation/41069030/lowres_wide: frame folder not found"):
        READER.read_scene(tmp_path, "41069030", "val")
    with pytest.raises(InputError, match="41069026: scan folder not found"):
        READER.read_scene(tmp_path, "41069026", "train")


# ---- frames, poses, intrinsics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["raw", "3dod"])
def test_frames_sorted_numerically_and_exact_poses_at_traj_times(tmp_path, layout):
    frames_dir = make_scan(tmp_path, layout)
    scene = READER.read_scene(tmp_path, VID, "train")
    frames = scene.frames
    assert frames.num_rows == 30
    names = [Path(p).name for p in frames.column("color_path").to_pylist()]
    # Numeric order across the 100 s boundary (lexically, "100.000" would sort before "99.950").
    assert names[:4] == [f"{VID}_99.950.png", f"{VID}_99.967.png", f"{VID}_99.983.png", f"{VID}_100.000.png"]
    assert sorted(names) != names
    np.testing.assert_allclose(column_as_array(frames, "timestamp"), np.round(FRAME_S, 3), atol=1e-9)
    assert column_as_array(frames, "frame_index").tolist() == list(range(30))
    assert all(Path(p).parent == frames_dir / "lowres_wide" for p in frames.column("color_path").to_pylist())
    # Frames on a traj line (within 0.005 s, the official rule) get its exact pose; the 60 fps frames between two
    # 10 Hz lines get CUT3R's interpolation: camera centre linear, rotation slerp.
    valid = column_as_array(frames, "valid")
    assert valid.all()
    for k in range(5):
        np.testing.assert_allclose(pose_matrix(frames, 6 * k), upright_camera_to_world(k), atol=1e-9)
    from scipy.spatial.transform import Rotation

    stamps = column_as_array(frames, "timestamp")
    for j in (1, 3, 5):  # about 1/6, 1/2 and 5/6 of the way from line 0 to line 1 (names carry 3 decimals)
        w = (stamps[j] - stamps[0]) / 0.1
        a, b, got = upright_camera_to_world(0), upright_camera_to_world(1), pose_matrix(frames, j)
        np.testing.assert_allclose(got[:3, 3], (1 - w) * a[:3, 3] + w * b[:3, 3], atol=1e-6)
        full = Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).as_rotvec()
        np.testing.assert_allclose(Rotation.from_matrix(a[:3, :3].T @ got[:3, :3]).as_rotvec(), w * full, atol=1e-6)
    assert scene.meta["pose_match_tolerance_s"] == 0.005 and scene.meta["frames_with_pose"] == 30
    assert scene.meta["layout"] == layout
    # Interpolation off: only the frames on a traj line are posed.
    official = ArkitScenesReader(pose_interpolation_max_gap_s=0).read_scene(tmp_path, VID, "train")
    assert np.flatnonzero(column_as_array(official.frames, "valid")).tolist() == list(range(0, 30, 6))
    assert np.isnan(pose_matrix(official.frames, 1)).all()


def test_frames_in_a_tracking_gap_are_not_interpolated(tmp_path):
    frames_dir = make_scan(tmp_path)
    traj = frames_dir / "lowres_wide.traj"
    lines = traj.read_text().splitlines()
    traj.write_text("\n".join(lines[:1] + lines[3:]) + "\n")  # lines 1 and 2 lost: a 0.3 s gap after 99.95 s
    frames = READER.read_scene(tmp_path, VID, "train").frames
    valid = column_as_array(frames, "valid")
    assert valid[0] and not valid[1:18].any() and valid[18:].all()


def test_vlm3r_tolerance_gives_every_frame_its_nearest_pose(tmp_path):
    make_scan(tmp_path)
    scene = ArkitScenesReader(pose_match_tolerance_s=0.05).read_scene(tmp_path, VID, "train")
    assert column_as_array(scene.frames, "valid").all()
    for j in range(30):
        # Nearest 10 Hz line; a frame exactly half-way (j = 6k + 3, 50 ms from both) takes the earlier one.
        k = j // 6 + (1 if j % 6 > 3 else 0)
        np.testing.assert_allclose(pose_matrix(scene.frames, j), upright_camera_to_world(k), atol=1e-9,
                                   err_msg=f"frame {j}")
    assert scene.meta["pose_match_tolerance_s"] == 0.05


def test_camera_to_world_is_the_inverse_of_the_traj_transform(tmp_path):
    frames_dir = make_scan(tmp_path, sky="Up")
    scene = READER.read_scene(tmp_path, VID, "train")
    assert scene.meta["rotate_k"] == 0
    for k, line in enumerate((frames_dir / "lowres_wide.traj").read_text().splitlines()[:5]):
        values = [float(v) for v in line.split()]
        w2c = np.eye(4)
        w2c[:3, :3] = cv2.Rodrigues(np.array(values[1:4]))[0]
        w2c[:3, 3] = values[4:7]
        np.testing.assert_allclose(pose_matrix(scene.frames, 6 * k), np.linalg.inv(w2c), atol=1e-9)
    # The traj parser itself: timestamps and world->camera as written.
    times, world_to_camera = read_traj(frames_dir / "lowres_wide.traj")
    np.testing.assert_allclose(times, np.round(TRAJ_S, 6))
    np.testing.assert_allclose(world_to_camera[3], np.linalg.inv(upright_camera_to_world(3)), atol=1e-9)


def test_pincam_name_fallback_and_missing_pincam(tmp_path):
    frames_dir = make_scan(tmp_path)
    scene = READER.read_scene(tmp_path, VID, "train")
    fx, fy = column_as_array(scene.frames, "fx"), column_as_array(scene.frames, "fy")
    # Frames 13 and 14 found their .pincam under t - 1 ms and t + 1 ms.
    assert np.isfinite(fx).all() and np.isfinite(fy).all()
    # The stored 256x192 pincam becomes the 192x256 upright camera.
    for row in (PINCAM_MINUS_1MS_FRAME, PINCAM_PLUS_1MS_FRAME):
        got = [scene.frames.column(c)[row].as_py() for c in ("width", "height", "fx", "fy", "cx", "cy")]
        assert got == [192, 256, 212.0, 212.0, 191 - 95.5, 127.5]
    assert not (frames_dir / "lowres_wide_intrinsics" / f"{VID}_{FRAME_S[PINCAM_PLUS_1MS_FRAME]:.3f}.pincam").exists()
    # Without any .pincam a frame stays in the table but is not usable.
    (frames_dir / "lowres_wide_intrinsics" / f"{VID}_{FRAME_S[6]:.3f}.pincam").unlink()
    scene = READER.read_scene(tmp_path, VID, "train")
    assert np.isnan(column_as_array(scene.frames, "fx")[6]) and not column_as_array(scene.frames, "valid")[6]
    assert scene.meta["frames_without_intrinsics"] == 1


def test_left_scan_images_are_rotated_upright(tmp_path):
    make_scan(tmp_path)
    scene = READER.read_scene(tmp_path, VID, "train")
    assert scene.meta["sky_direction"] == "Left" and scene.meta["sky_direction_source"].endswith("metadata.csv")
    assert scene.meta["sky_direction_from_poses"] == "Left"
    assert set(column_as_array(scene.frames, "rotate_k").tolist()) == {3}
    images = decode_colors(scene.frames.slice(0, 3))
    for j, image in enumerate(images):
        # "Left": 90 degrees clockwise. The stored top-left pixel ends up top-right.
        np.testing.assert_array_equal(image, cv2.rotate(stored_rgb(j), cv2.ROTATE_90_CLOCKWISE))
        assert image.shape == (256, 192, 3)
    assert scene.frames.column("width")[0].as_py() == 192 and scene.frames.column("height")[0].as_py() == 256


def test_upright_intrinsics_and_pose_project_like_the_stored_camera(tmp_path):
    """Independent check of the exact principal-point transform with an off-centre principal point: a world point
    seen at stored pixel (u, v) must project, with the reader's upright K and pose, to where np.rot90 put that pixel."""
    pincam = (256, 192, 212.0, 208.0, 131.25, 90.75)
    marker = (40, 30)   # stored pixel (u, v)
    make_scan(tmp_path, pincam=pincam, marker=marker)
    scene = READER.read_scene(tmp_path, VID, "train")
    # Back-project the stored marker pixel at 2.5 m with the stored camera of frame 0 (= traj line 0).
    _, _, fx, fy, cx, cy = pincam
    point_camera = 2.5 * np.array([(marker[0] - cx) / fx, (marker[1] - cy) / fy, 1.0])
    point_world = stored_camera_to_world(0, "Left") @ np.append(point_camera, 1.0)
    # Where the decoder (np.rot90 by rotate_k) actually put the marker in the upright image.
    upright = decode_colors(scene.frames.slice(0, 1))[0]
    v_up, u_up = np.argwhere((upright == 255).all(axis=-1))[0]
    # Projection with the reader's upright camera.
    f = {c: scene.frames.column(c)[0].as_py() for c in ("fx", "fy", "cx", "cy")}
    p = np.linalg.inv(pose_matrix(scene.frames, 0)) @ point_world
    u, v = f["fx"] * p[0] / p[2] + f["cx"], f["fy"] * p[1] / p[2] + f["cy"]
    np.testing.assert_allclose([u, v], [u_up, v_up], atol=1e-9)
    # The approximate swap (cx' = cy, cy' = cx) would be off by the principal point's offset from the centre.
    assert abs(f["cx"] - 90.75) > 1 and f["cy"] == 131.25


def test_depth_png_in_metres_upright_and_zero_frame_kept(tmp_path):
    make_scan(tmp_path)
    scene = READER.read_scene(tmp_path, VID, "train")
    assert set(scene.frames.column("depth_kind").to_pylist()) == {"png_u16"}
    rows = scene.frames.take([0, ZERO_DEPTH_FRAME])
    depth, zero = decode_depths(rows)
    assert depth.shape == (256, 192) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, 1.5)
    assert not zero.any() and column_as_array(rows, "valid").all()   # all-zero depth is not the reader's call
    assert rows.column("depth_fx")[0].as_py() == 212.0 and rows.column("depth_cx")[0].as_py() == 95.5


def test_depth_of_another_size_gets_scaled_intrinsics(tmp_path):
    frames_dir = make_scan(tmp_path)
    write_png(frames_dir / "lowres_depth" / f"{VID}_{FRAME_S[0]:.3f}.png", np.full((96, 128), 1500, np.uint16))
    frame = READER.read_scene(tmp_path, VID, "train").frames.slice(0, 1)
    got = [frame.column(c)[0].as_py() for c in ("depth_width", "depth_height", "depth_fx", "depth_fy",
                                                  "depth_cx", "depth_cy")]
    # Half-size sideways depth, turned upright: 96 x 128, and the centred principal point stays centred.
    assert got == [96, 128, 106.0, 106.0, 47.5, 63.5]
    assert decode_depths(frame)[0].shape == (128, 96)


# ---- objects, mesh, canonical write ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["raw", "3dod"])
def test_boxes_use_obbaligned_rows_as_axes(tmp_path, layout):
    make_scan(tmp_path, layout)
    objects = READER.read_scene(tmp_path, VID, "train").objects
    assert objects.column("label").to_pylist() == ["chair", "tv_monitor"]
    assert objects.column("category").to_pylist() == ["chair", "tv_monitor"]
    assert objects.column("instance_id").to_pylist() == [0, 1]
    assert objects.column("num_points").to_pylist() == [0, 0]
    # Rows as axes: an upright 0.6 x 0.4 x 0.9 chair (columns-as-axes would give min (1.05, 0.80, 0.15)).
    np.testing.assert_allclose(column_as_array(objects, "aabb_min")[0], [0.95, 1.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(column_as_array(objects, "aabb_max")[0], [1.55, 1.45, 0.9], atol=1e-12)
    # The decoy 'obb' (unit box at the origin) is not used.
    np.testing.assert_allclose(column_as_array(objects, "centroid")[0], [1.25, 1.25, 0.45])
    np.testing.assert_allclose(column_as_array(objects, "lengths")[0], [0.9, 0.6, 0.4])


def test_label_normalisation_unknown_labels_and_skipped_scans(tmp_path):
    make_scan(tmp_path)
    path = tmp_path / "raw" / "Training" / VID / f"{VID}_3dod_annotation.json"
    doc = json.loads(path.read_text())
    doc["data"][1]["label"] = "tv monitor"   # the official ' ', '-', '/' -> '_' normalisation
    doc["data"].append(dict(CHAIR, uid="u3", label="lamp"))
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"{VID}_3dod_annotation.json: data\\[2\\]: label 'lamp'"):
        READER.read_scene(tmp_path, VID, "train")
    objects = ArkitScenesReader(unknown_labels="skip").read_scene(tmp_path, VID, "train").objects
    assert objects.column("label").to_pylist() == ["chair", "tv monitor"]
    assert objects.column("category").to_pylist() == ["chair", "tv_monitor"]
    doc["skipped"] = True
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="annotation.json: annotation is marked 'skipped'"):
        READER.read_scene(tmp_path, VID, "train")


def test_scene_writes_canonically(tmp_path):
    make_scan(tmp_path / "raw_root")
    scene = READER.read_scene(tmp_path / "raw_root", VID, "train")
    assert scene.mesh_vertices.shape == (12, 3) and scene.mesh_colors is not None
    root = DatasetRoot(tmp_path / "out")
    write_ingested_scene(root, scene, num_frames=4)
    back = read_canonical(root.scene_dir(scene.dataset, scene.scene_id))
    assert back.meta["video_source"] == {"kind": "frames", "path": str(tmp_path.absolute() / "raw_root" / "raw" /
                                                                       "Training" / VID / "lowres_wide")}
    assert back.meta["alignment"] == np.eye(4).tolist() and back.meta["object_uids"] == ["u1", "u2"]
    assert back.meta["mesh_source"].endswith(f"{VID}_3dod_mesh.ply")
    for got, want in ((back.frames, scene.frames), (back.objects, scene.objects)):
        for name in want.column_names:
            np.testing.assert_array_equal(column_as_array(got, name), column_as_array(want, name), err_msg=name)


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_missing_annotation_names_the_file(tmp_path):
    make_scan(tmp_path)
    (tmp_path / "raw" / "Training" / VID / f"{VID}_3dod_annotation.json").unlink()
    with pytest.raises(InputError, match=f"{VID}_3dod_annotation.json: annotation file not found"):
        READER.read_scene(tmp_path, VID, "train")


def test_no_pose_within_tolerance_names_the_traj(tmp_path):
    frames_dir = make_scan(tmp_path)
    traj = frames_dir / "lowres_wide.traj"
    shifted = [f"{float(line.split()[0]) + 50:.6f} " + line.split(" ", 1)[1] for line in traj.read_text().splitlines()]
    traj.write_text("\n".join(shifted) + "\n")
    with pytest.raises(InputError, match="lowres_wide.traj: no frame .* has a pose within 0.005 s"):
        READER.read_scene(tmp_path, VID, "train")


def test_malformed_traj_line_names_file_and_line(tmp_path):
    frames_dir = make_scan(tmp_path)
    traj = frames_dir / "lowres_wide.traj"
    lines = traj.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:6])
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="lowres_wide.traj: line 4: expected 7 numbers"):
        READER.read_scene(tmp_path, VID, "train")
    lines[3] = lines[4].replace(lines[4].split()[2], "abc", 1)
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="lowres_wide.traj: line 4"):
        READER.read_scene(tmp_path, VID, "train")


def test_corrupt_png_names_the_file(tmp_path):
    frames_dir = make_scan(tmp_path)
    bad = frames_dir / "lowres_wide" / f"{VID}_{FRAME_S[5]:.3f}.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=f"{bad.name}: corrupt PNG"):
        READER.read_scene(tmp_path, VID, "train")
    # A valid header over truncated data passes the listing and fails where it is decoded, naming the file.
    bad.write_bytes(good[:60])
    scene = READER.read_scene(tmp_path, VID, "train")
    with pytest.raises(InputError, match=f"{bad.name}: corrupt image"):
        decode_colors(scene.frames.slice(5, 1))
    # An 8-bit depth image is refused.
    write_png(frames_dir / "lowres_depth" / bad.name, np.zeros((STORED_H, STORED_W), np.uint8))
    bad.write_bytes(good)
    with pytest.raises(InputError, match=f"lowres_depth/{bad.name}: depth PNG must be 16-bit"):
        READER.read_scene(tmp_path, VID, "train")


def test_pincam_for_another_image_size_is_refused(tmp_path):
    make_scan(tmp_path, pincam=(192, 256, 212.0, 212.0, 95.5, 127.5))   # the upright size: wrong for stored images
    with pytest.raises(InputError, match="pincam: intrinsics are for a 192x256 image but .* is 256x192"):
        READER.read_scene(tmp_path, VID, "train")


def test_match_timestamps_ties_edges_and_order():
    poses = np.array([2.0, 1.0, 3.0])   # unsorted on purpose
    frames = np.array([1.0, 1.5, 1.504, 2.9951, 2.994, 0.0, 3.005])
    assert match_timestamps(frames, poses, 0.005).tolist() == [1, -1, -1, 2, -1, -1, 2]
    assert match_timestamps(frames, poses, 0.5).tolist() == [1, 1, 0, 2, 2, -1, 2]
    assert match_timestamps(frames, np.zeros(0), 1.0).tolist() == [-1] * 7


def _c2w_from_right_up(right, up):
    right, down = np.asarray(right, float), -np.asarray(up, float)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, np.cross(right, down)], axis=1)   # columns: camera x, y, z in the world
    return c2w


def test_sky_direction_from_poses_uses_cut3r_unnormalised_mean_vectors():
    upright = _c2w_from_right_up([1, 0, 0], [0, 0, 1])
    assert infer_sky_direction(upright[None]) == "Up"
    assert infer_sky_direction(_c2w_from_right_up([0, 0, -1], [1, 0, 0])[None]) == "Left"
    assert infer_sky_direction(_c2w_from_right_up([0, 0, 1], [1, 0, 0])[None]) == "Right"
    assert infer_sky_direction(_c2w_from_right_up([-1, 0, 0], [0, 0, -1])[None]) == "Down"
    # Two frames whose up vectors tilt 72.5 deg from +z to either side: their mean (0, 0, 0.3) is short. CUT3R takes
    # acos of the mean's z without renormalising (72.5 deg, nearer 90 than the right vector's 116.7 deg), so the scan
    # is sideways with the right vector pointing down: Left. Renormalising would give 0 deg and "Up".
    s, c = 0.3, np.sqrt(1 - 0.09)
    a, b = -0.45 / c, np.sqrt(1 - (0.45 / c) ** 2)
    poses = np.stack([_c2w_from_right_up([-s * a, b, c * a], [c, 0, s]),
                      _c2w_from_right_up([s * a, b, c * a], [-c, 0, s])])
    np.testing.assert_allclose([np.linalg.det(p[:3, :3]) for p in poses], 1.0)
    assert infer_sky_direction(poses) == "Left"


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate_camera_matches_rot90_pixel_mapping(k):
    """rotate_camera against np.rot90 on an index image, with a non-centred principal point."""
    w, h = 7, 5
    index = np.arange(w * h).reshape(h, w)
    turned = np.rot90(index, k)
    (fx, fy, cx, cy, w2, h2), rot = rotate_camera(3.0, 4.0, 2.25, 1.5, w, h, k)
    assert (h2, w2) == turned.shape
    for v in range(h):
        for u in range(w):
            v2, u2 = np.argwhere(turned == index[v, u])[0]
            point = np.array([(u - 2.25) / 3.0, (v - 1.5) / 4.0, 1.0])   # on the ray of pixel (u, v)
            q = rot @ point
            assert np.allclose([fx * q[0] / q[2] + cx, fy * q[1] / q[2] + cy], [u2, v2])


# ---- synthetic writer round trip ---------------------------------------------------------------------------------

def small_synthetic_scene() -> SyntheticScene:
    """A hand-built scene with a non-square image, distinct focals and an off-centre principal point."""
    rng = np.random.default_rng(7)
    width, height, num_frames = 40, 30, 8
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    for i in range(num_frames):
        c2w[i, :3, :3] = Rotation.from_euler("zx", [12.0 * i, -8.0], degrees=True).as_matrix() @ base
        c2w[i, :3, 3] = [1.0 + 0.1 * i, 1.2 + 0.05 * i, 1.3]
    yaw = np.deg2rad(30.0)

    def obj(i, label, centroid, lengths, axes):
        return SyntheticObject(i, label, np.array(centroid, float), np.array(lengths, float), np.array(axes, float))

    objects = [
        obj(0, "floor", [2, 1.5, 0], [4, 3, 0.01], np.eye(3)),
        obj(1, "chair", [1.25, 1.25, 0.45], [0.6, 0.4, 0.9],
            [[np.cos(yaw), np.sin(yaw), 0], [-np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]),
        obj(2, "lamp", [3.5, 0.5, 0.8], [0.3, 0.3, 1.6], np.eye(3)),
        obj(3, "tv", [3.95, 2.0, 1.2], [1.0, 0.08, 0.6], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        obj(4, "sofa", [2.0, 2.6, 0.4], [0.8, 1.9, 0.8], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ]
    depth = rng.uniform(0.5, 4.0, (num_frames, height, width)).astype(np.float32)
    depth[:, :2] = 0.0
    return SyntheticScene(
        name="synth_small", seed=7, vertices=rng.uniform(0, 3, (20, 3)), faces=rng.integers(0, 20, (10, 3)),
        colors=rng.integers(0, 256, (20, 3)).astype(np.uint8), vertex_instance=np.zeros(20, np.int64),
        objects=objects, camera_to_world=c2w, timestamps=5.0 + np.arange(num_frames) / 10.0,  # the 10 Hz of ARKit's traj
        intrinsics=np.array([[36.0, 0, 21.3], [0, 34.0, 13.7], [0, 0, 1]]), width=width, height=height,
        rgb=rng.integers(0, 256, (num_frames, height, width, 3)).astype(np.uint8), depth=depth,
        instance=np.zeros((num_frames, height, width), np.int32), invalid_frames=(3,))


def generated_scene(mounted: bool = False) -> SyntheticScene:
    if mounted:
        scene = synthetic.generate_scene(0, num_frames=12, width=48, height=36, mounted=True)
        hanging = [o for o in scene.objects if o.centroid[2] - o.lengths[2] / 2 >= synthetic.MOUNTED_BOTTOM_M[0]]
        assert hanging and all(arkitscenes_label(o.label) is not None for o in hanging)   # all annotated by ARKit
        return scene
    return synthetic.generate_scene(3, num_frames=12, width=48, height=36)


def assert_round_trip(scene: SyntheticScene, raw_root: Path, video_id: str, sky: str, split: str) -> None:
    assert READER.list_scenes(raw_root, split) == [(video_id, split)]
    got = READER.read_scene(raw_root, video_id, split)
    frames = got.frames
    assert got.meta["sky_direction"] == sky and got.meta["sky_direction_from_poses"] == sky
    valid = np.ones(len(scene.timestamps), bool)
    valid[list(scene.invalid_frames)] = False
    np.testing.assert_array_equal(column_as_array(frames, "valid"), valid)
    np.testing.assert_allclose(column_as_array(frames, "timestamp"), scene.timestamps, atol=5e-4 + 1e-9)
    np.testing.assert_allclose(got.camera_to_world[valid], scene.camera_to_world[valid], atol=1e-6)
    assert np.isnan(got.camera_to_world[~valid]).all()
    k = scene.intrinsics
    for col, want in (("fx", k[0, 0]), ("fy", k[1, 1]), ("cx", k[0, 2]), ("cy", k[1, 2]),
                      ("depth_fx", k[0, 0]), ("depth_cy", k[1, 2])):
        np.testing.assert_allclose(column_as_array(frames, col), want, atol=1e-9, err_msg=col)
    assert set(column_as_array(frames, "width").tolist()) == {scene.width}
    assert set(column_as_array(frames, "height").tolist()) == {scene.height}
    # PNG is lossless: the upright decoded frames are the rendered ones, pixel for pixel.
    np.testing.assert_array_equal(np.stack(decode_colors(frames)), scene.rgb)
    np.testing.assert_allclose(np.stack(decode_depths(frames)), scene.depth, atol=5e-4 + 1e-6)
    # Boxes: the annotated objects in scene order, exact.
    annotated = [o for o in scene.objects if arkitscenes_label(o.label) is not None]
    objects = got.objects
    assert objects.column("label").to_pylist() == [arkitscenes_label(o.label) for o in annotated]
    assert set(objects.column("category").to_pylist()) <= set(CLASS_NAMES)
    np.testing.assert_array_equal(column_as_array(objects, "centroid"), [o.centroid for o in annotated])
    np.testing.assert_array_equal(column_as_array(objects, "lengths"), [o.lengths for o in annotated])
    np.testing.assert_array_equal(column_as_array(objects, "axes"), [o.axes.reshape(9) for o in annotated])
    lo, hi = box_aabb([o.centroid for o in annotated], [o.lengths for o in annotated], [o.axes for o in annotated])
    np.testing.assert_allclose(column_as_array(objects, "aabb_min"), lo, atol=1e-12)
    np.testing.assert_allclose(column_as_array(objects, "aabb_max"), hi, atol=1e-12)
    np.testing.assert_allclose(got.mesh_vertices, scene.vertices, atol=1e-6)   # PLY stores float32
    np.testing.assert_array_equal(got.mesh_faces, scene.faces)
    np.testing.assert_array_equal(got.mesh_colors, scene.colors)


@pytest.mark.parametrize("sky,layout", [("Left", "raw"), ("Right", "3dod"), ("Down", "raw"), ("Up", "3dod")])
def test_small_synthetic_round_trip(tmp_path, sky, layout):
    scene = small_synthetic_scene()
    video_id = write_arkitscenes(scene, tmp_path, split="val", sky_direction=sky, layout=layout)
    assert video_id == video_id_for(scene.name) and len(video_id) == 8 and video_id.isdigit()
    stored = cv2.imread(str(next((tmp_path / layout / "Validation" / video_id).rglob("lowres_wide/*.png"))))
    assert stored.shape[:2] == ((30, 40) if sky in ("Up", "Down") else (40, 30))   # sideways for Left / Right
    assert_round_trip(scene, tmp_path, video_id, sky, "val")
    # The lamp and the floor are not annotated; the tv is a tv_monitor.
    annotation = json.loads(next(tmp_path.rglob("*_3dod_annotation.json")).read_text())
    assert [d["label"] for d in annotation["data"]] == ["chair", "tv_monitor", "sofa"]


@pytest.mark.parametrize("mounted", [False, True], ids=["floor_only", "mounted"])
def test_generated_scene_round_trip(tmp_path, mounted):
    scene = generated_scene(mounted)
    video_id = write_arkitscenes(scene, tmp_path, split="train", sky_direction="Left")
    assert_round_trip(scene, tmp_path, video_id, "Left", "train")
    # Without metadata.csv the sky direction is inferred from the poses, and agrees.
    (tmp_path / "raw" / "metadata.csv").unlink()
    got = READER.read_scene(tmp_path, video_id, "train")
    assert got.meta["sky_direction"] == "Left" and got.meta["sky_direction_source"] == "poses"


def test_writer_merges_metadata_deterministically_and_rewrites_in_place(tmp_path):
    scene = small_synthetic_scene()
    other = small_synthetic_scene()
    other.name = "synth_other"
    first = write_arkitscenes(scene, tmp_path, split="train", sky_direction="Right")
    second = write_arkitscenes(other, tmp_path, split="val", sky_direction="Up")
    metadata = (tmp_path / "raw" / "metadata.csv").read_text().splitlines()
    assert metadata[0] == "video_id,visit_id,fold,sky_direction"
    assert [line.split(",")[0] for line in metadata[1:]] == sorted([first, second])
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # Rewriting the first scene into another split moves it; rewriting it back restores every byte.
    write_arkitscenes(scene, tmp_path, split="val", sky_direction="Right")
    assert READER.list_scenes(tmp_path) == sorted([(first, "val"), (second, "val")])
    write_arkitscenes(scene, tmp_path, split="train", sky_direction="Right")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    with pytest.raises(ValueError, match="sky_direction"):
        write_arkitscenes(scene, tmp_path, sky_direction="Sideways")


def test_writer_refuses_an_invalid_frame_a_reader_would_pose(tmp_path):
    scene = small_synthetic_scene()
    scene.timestamps = scene.timestamps.copy()
    scene.timestamps[3] = scene.timestamps[2] + 0.004
    with pytest.raises(ValueError, match="invalid frame 3"):
        write_arkitscenes(scene, tmp_path)


def test_every_taxonomy_name_survives_the_writer_label_map():
    assert len(CLASS_NAMES) == 17 and CLASS_NAMES[15] == "tv_monitor"
    assert [arkitscenes_label(n) for n in CLASS_NAMES] == list(CLASS_NAMES)
    assert arkitscenes_label("tv") == "tv_monitor"
    assert arkitscenes_label("floor") is None and arkitscenes_label("wall") is None
