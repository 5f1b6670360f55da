"""ScanNet v2: the .sens stream, the reader on the datasets.md §6.1 fixture, bad input, and the synthetic round trip.

Every fixture is written in the real formats (a real .sens, binary PLY, JSON, zip of PNGs, TSV) and parsed back by
the real readers.
"""
from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import InputError
from pipeline.core.frames import decode_colors, decode_depths
from pipeline.core.ply import read_ply, write_ply
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import read_manifest, read_scene
from pipeline.stages.ingest import write_ingested_scene
from pipeline.core.schemas import column_as_array
from pipeline.sources import get_reader
from pipeline.sources.scannet import READER, list_scenes, read_instance_mask, read_label_map, read_scene_meta
from pipeline.sources.sens import (COLOR_JPEG, DEPTH_ZLIB_USHORT, FRAME_HEADER_BYTES, SensFramePayload, SensHeader,
                                   encode_depth_zlib, iter_sens_frames, read_frame_bytes, read_sens_header,
                                   read_sens_index, write_sens)
from pipeline.sources.synthetic import SyntheticObject, SyntheticScene

SCENE = "scene0000_00"
# §6.1: 90 degrees about z plus a shift of 3 m along x.
ALIGN = np.array([[0, -1, 0, 3], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
TSV_HEADER = ("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\tModelNet40\t"
              "ModelNet10\tShapeNetCore55\tsynsetoffset\twnsynsetid\twnsynsetkey\tmpcat40\tmpcat40index")


# ---- the §6.1 fixture ------------------------------------------------------------------------------------------

def fixture_pose(k: int) -> np.ndarray:
    """Camera at (1 + 0.2k, 1.5, 1.4) looking along +x (OpenCV: columns = world directions of camera x, y, z)."""
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], np.float64).T
    c2w[:3, 3] = (1 + 0.2 * k, 1.5, 1.4)
    return c2w


def fixture_rgb(k: int) -> np.ndarray:
    """A smooth 64x48 image per frame (JPEG-friendly, different per frame)."""
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, np.full_like(x, 20 * k)], axis=-1).astype(np.uint8)


def _jpeg_pil(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _box_corners(lo, hi) -> np.ndarray:
    return np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])], float)


def _box_faces(base: int) -> np.ndarray:
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]) + base


def fixture_sens_header() -> SensHeader:
    kc = np.array([[40, 0, 31.5, 0], [0, 40, 23.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    kd = np.array([[20, 0, 15.5, 0], [0, 20, 11.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    return SensHeader(sensor_name="synthetic", intrinsic_color=kc, extrinsic_color=np.eye(4), intrinsic_depth=kd,
                      extrinsic_depth=np.eye(4), color_compression=COLOR_JPEG, depth_compression=DEPTH_ZLIB_USHORT,
                      color_width=64, color_height=48, depth_width=32, depth_height=24, depth_shift=1000.0)


def fixture_payloads(num_frames: int = 10, invalid=(3,)):
    depth = np.zeros((24, 32), np.uint16)
    depth[1:-1, 1:-1] = 2000                      # 2 m with a 0 (invalid) border
    for k in range(num_frames):
        pose = np.full((4, 4), -np.inf) if k in invalid else fixture_pose(k)
        yield SensFramePayload(pose, k * 33333, k * 33333 + 100, _jpeg_pil(fixture_rgb(k)), encode_depth_zlib(depth))


def make_scannet_fixture(root: Path, *, invalid=(3,), imu_samples: int = 0, trailing: bytes = b"") -> Path:
    """datasets.md §6.1 exactly: scans/scene0000_00/ plus the root TSV and split list. Returns the scene folder."""
    scene_dir = root / "scans" / SCENE
    scene_dir.mkdir(parents=True)
    sens = scene_dir / f"{SCENE}.sens"
    imu = np.arange(imu_samples * 15, dtype=np.float64).reshape(-1, 15)
    write_sens(sens, fixture_sens_header(), fixture_payloads(invalid=invalid), imu_samples=imu,
               imu_timestamps_us=np.arange(imu_samples, dtype=np.uint64) * 5000)
    if trailing:
        with open(sens, "ab") as fh:
            fh.write(trailing)
    (scene_dir / f"{SCENE}.txt").write_text(
        "axisAlignment = 0 -1 0 3 1 0 0 0 0 0 1 0 0 0 0 1\ncolorHeight = 48\ncolorWidth = 64\ndepthHeight = 24\n"
        "depthWidth = 32\nfx_color = 40\nfy_color = 40\nmx_color = 31.5\nmy_color = 23.5\nfx_depth = 20\n"
        "fy_depth = 20\nmx_depth = 15.5\nmy_depth = 11.5\nnumColorFrames = 10\nnumDepthFrames = 10\n"
        "numIMUmeasurements = 0\nsceneType = Living room / Lounge\n")
    floor = np.array([[0, 0, 0], [4, 0, 0], [4, 3, 0], [0, 3, 0]], float)
    chair = _box_corners((1, 1, 0), (1.5, 1.5, 0.9))
    table = _box_corners((2.5, 1, 0.7), (3.5, 2, 0.75))
    gx, gy = np.meshgrid(np.linspace(0, 4, 27), np.linspace(0, 3, 21))
    grid = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)          # 567 floor points
    vertices = np.concatenate([floor, chair, table, grid])
    faces = np.concatenate([[[0, 1, 2], [0, 2, 3]], _box_faces(4), _box_faces(12)])
    colors = np.full((len(vertices), 3), 128, np.uint8)
    write_ply(scene_dir / f"{SCENE}_vh_clean_2.ply", vertices, faces, colors,
              extra={"alpha": np.full(len(vertices), 255, np.uint8)})
    seg = np.full(len(vertices), 7)
    seg[4:12], seg[12:20] = 21, 42                # non-contiguous segment ids on purpose
    (scene_dir / f"{SCENE}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({
        "params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
                   "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
        "sceneId": f"{SCENE}_vh_clean_2", "segIndices": seg.tolist()}))
    (scene_dir / f"{SCENE}.aggregation.json").write_text(json.dumps({
        "sceneId": f"scannet.{SCENE}", "appId": "Aggregator.v2",
        "segmentsFile": f"scannet.{SCENE}_vh_clean_2.0.010000.segs.json",
        "segGroups": [{"id": 0, "objectId": 0, "segments": [21], "label": "chair"},
                      {"id": 1, "objectId": 1, "segments": [42], "label": "table"},
                      {"id": 2, "objectId": 2, "segments": [7], "label": "floor"}]}))
    mask = np.zeros((48, 64), np.uint8)
    mask[5:15, 10:20] = 1                         # chair = objectId 0 + 1
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    with zipfile.ZipFile(scene_dir / f"{SCENE}_2d-instance-filt.zip", "w") as zf:
        for k in range(10):
            zf.writestr(f"instance-filt/{k}.png", buf.getvalue())
    rows = [(1, "wall", "wall", 1, 1, "wall"), (2, "chair", "chair", 1, 5, "chair"),
            (3, "floor", "floor", 1, 2, "floor"), (4, "table", "table", 1, 7, "table")]
    lines = [TSV_HEADER] + ["\t".join([str(i), raw, cat, str(n), str(nyu), "", "", cls] + [""] * 9)
                            for i, raw, cat, n, nyu, cls in rows]
    (root / "scannetv2-labels.combined.tsv").write_text("\n".join(lines) + "\n")
    (root / "scannetv2_train.txt").write_text(f"{SCENE}\n")
    return scene_dir


@pytest.fixture
def fixture_root(tmp_path) -> Path:
    root = tmp_path / "scannet"
    make_scannet_fixture(root)
    return root


# ---- .sens -----------------------------------------------------------------------------------------------------

def test_sens_layout_sizes_and_byte_ranges(fixture_root):
    sens = fixture_root / "scans" / SCENE / f"{SCENE}.sens"
    header = read_sens_header(sens)
    assert header.header_bytes == 304 + len("synthetic") == 313
    assert (header.version, header.num_frames, header.sensor_name) == (4, 10, "synthetic")
    assert (header.color_width, header.color_height, header.depth_width, header.depth_height) == (64, 48, 32, 24)
    np.testing.assert_array_equal(header.intrinsic_depth[:2, :3], [[20, 0, 15.5], [0, 20, 11.5]])
    frames = list(iter_sens_frames(sens))
    payloads = list(fixture_payloads())
    assert frames[0].color_offset == 313 + FRAME_HEADER_BYTES
    end = 313
    for f, p in zip(frames, payloads):
        assert read_frame_bytes(sens, f.color_offset, f.color_length) == p.color_bytes
        assert read_frame_bytes(sens, f.depth_offset, f.depth_length) == p.depth_bytes
        end += FRAME_HEADER_BYTES + len(p.color_bytes) + len(p.depth_bytes)
    assert sens.stat().st_size == end + 8          # + the IMU count (0 samples)
    assert np.isneginf(frames[3].camera_to_world).all()
    np.testing.assert_allclose(frames[5].camera_to_world, fixture_pose(5), atol=1e-6)
    assert (frames[4].timestamp_color_us, frames[4].timestamp_depth_us) == (4 * 33333, 4 * 33333 + 100)


def test_sens_trailing_imu_block_is_tolerated(tmp_path):
    plain, with_imu = tmp_path / "a", tmp_path / "b"
    make_scannet_fixture(plain)
    make_scannet_fixture(with_imu, imu_samples=7, trailing=b"\x00extra bytes after the IMU block")
    a = read_sens_index(plain / "scans" / SCENE / f"{SCENE}.sens")[1]
    sens_b = with_imu / "scans" / SCENE / f"{SCENE}.sens"
    b = read_sens_index(sens_b)[1]
    np.testing.assert_array_equal(a.color_offset, b.color_offset)
    np.testing.assert_array_equal(a.camera_to_world, b.camera_to_world)
    # The IMU block really is there: count 7, then 7 x 128-byte samples.
    tail_at = int(b.depth_offset[-1] + b.depth_length[-1])
    raw = sens_b.read_bytes()
    assert struct.unpack_from("<Q", raw, tail_at)[0] == 7
    assert struct.unpack_from("<15d", raw, tail_at + 8)[1] == 1.0


def test_sens_streams_with_bounded_memory(tmp_path):
    """A several-MB .sens is indexed without holding its payloads: peak Python allocation << file size."""
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(256 * 1024) for _ in range(24)]          # incompressible stand-ins for JPEG frames
    path = tmp_path / "big.sens"
    write_sens(path, fixture_sens_header(),
               (SensFramePayload(fixture_pose(k), k, k, payloads[k], b"z" * 1000) for k in range(24)))
    size = path.stat().st_size
    assert size > 6 * 1024 * 1024
    tracemalloc.start()
    try:
        header, index = read_sens_index(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 256 * 1024, f"peak {peak_bytes} bytes while indexing a {size}-byte .sens"
    assert header.num_frames == 24
    assert read_frame_bytes(path, int(index.color_offset[17]), int(index.color_length[17])) == payloads[17]


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case, problem", [
    ("truncated", "truncated .sens"),
    ("truncated_header", "truncated .sens"),
    ("version", "unsupported .sens version 3"),
    ("color_type", "unknown colour compression type 7"),
    ("depth_type", "unknown depth compression type 5"),
])
def test_sens_bad_input(fixture_root, case, problem):
    sens = fixture_root / "scans" / SCENE / f"{SCENE}.sens"
    tail = 12 + len("synthetic") + 64 * 4                        # offset of the compression types
    if case == "truncated":
        sens.write_bytes(sens.read_bytes()[:sens.stat().st_size // 2])
    elif case == "truncated_header":
        sens.write_bytes(sens.read_bytes()[:200])
    elif case == "version":
        _patch(sens, 0, struct.pack("<I", 3))
    elif case == "color_type":
        _patch(sens, tail, struct.pack("<i", 7))
    else:
        _patch(sens, tail + 4, struct.pack("<i", 5))
    with pytest.raises(InputError, match=problem) as info:
        READER.read_scene(fixture_root, SCENE, "train")
    assert f"{SCENE}.sens" in str(info.value) and info.value.path.endswith(".sens")


# ---- the reader on the §6.1 fixture ----------------------------------------------------------------------------

def test_fixture_frames(fixture_root):
    scene = get_reader("scannet").read_scene(fixture_root, SCENE, "train")
    frames = scene.frames
    assert frames.num_rows == 10
    valid = column_as_array(frames, "valid")
    np.testing.assert_array_equal(valid, np.arange(10) != 3)
    c2w = scene.camera_to_world
    assert np.isnan(c2w[3]).all()
    for k in (0, 5, 9):
        np.testing.assert_allclose(c2w[k], ALIGN @ fixture_pose(k), atol=1e-5)
    # Aligned camera 0 sits at A @ (1, 1.5, 1.4) = (1.5, 1, 1.4) and now looks along +y.
    np.testing.assert_allclose(c2w[0][:3, 3], [1.5, 1.0, 1.4], atol=1e-6)
    np.testing.assert_allclose(c2w[0][:3, 2], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(column_as_array(frames, "timestamp"), np.arange(10) * 33333 / 1e6)
    assert set(column_as_array(frames, "fx")) == {40.0} and set(column_as_array(frames, "cx")) == {31.5}
    assert set(column_as_array(frames, "cy")) == {23.5} and set(column_as_array(frames, "width")) == {64}
    assert set(column_as_array(frames, "depth_fx")) == {20.0} and set(column_as_array(frames, "depth_cx")) == {15.5}
    assert set(column_as_array(frames, "depth_scale")) == {0.001}
    assert set(frames.column("color_kind").to_pylist()) == {"sens_jpeg"}

    depths = decode_depths(frames)
    assert len(depths) == 10 and depths[0].shape == (24, 32)
    np.testing.assert_allclose(depths[7][1:-1, 1:-1], 2.0, atol=1e-6)
    assert (depths[7][0] == 0).all() and (depths[7][:, -1] == 0).all()
    colors = decode_colors(frames)
    for k in (0, 9):
        assert colors[k].shape == (48, 64, 3) and colors[k].dtype == np.uint8
        assert np.abs(colors[k].astype(int) - fixture_rgb(k)).mean() < 2.0


@pytest.mark.parametrize("stamps_us", [[0] * 10, [0, 0, 0, 7_000_123, 0, 0, 0, 0, 0, 0]], ids=["all_zero", "stray"])
def test_unusable_sens_timestamps_fall_back_to_index_at_24_fps(fixture_root, stamps_us):
    # Most released .sens files store 0 for every frame's timestamp, some a stray value (ScanNet issues #9, #39):
    # the frame time is then the index at VLM-3R's ScanNet video rate, so times still order and space the frames.
    payloads = [SensFramePayload(p.camera_to_world, t, t, p.color_bytes, p.depth_bytes)
                for p, t in zip(fixture_payloads(), stamps_us)]
    write_sens(fixture_root / "scans" / SCENE / f"{SCENE}.sens", fixture_sens_header(), payloads)
    scene = get_reader("scannet").read_scene(fixture_root, SCENE, "train")
    np.testing.assert_allclose(column_as_array(scene.frames, "timestamp"), np.arange(10) / 24.0)
    assert scene.meta["timestamp_source"].startswith("frame index / 24")


def test_fixture_mesh_instances_objects_and_labels(fixture_root):
    scene = READER.read_scene(fixture_root, SCENE, "train")
    raw_vertices = read_ply(fixture_root / "scans" / SCENE / f"{SCENE}_vh_clean_2.ply").vertices
    np.testing.assert_allclose(scene.mesh_vertices, raw_vertices @ ALIGN[:3, :3].T + ALIGN[:3, 3], atol=1e-6)
    assert len(scene.mesh_vertices) == 20 + 567 and scene.mesh_faces.shape == (26, 3)
    inst = scene.vertex_instance
    assert (inst[4:12] == 0).all() and (inst[12:20] == 1).all()
    assert (inst[:4] == 2).all() and (inst[20:] == 2).all()       # the floor grid is in the floor segment

    objects = scene.objects.to_pylist()
    by_id = {o["instance_id"]: o for o in objects}
    assert sorted(by_id) == [0, 1, 2]
    chair = by_id[0]
    assert (chair["label"], chair["category"], chair["num_points"]) == ("chair", "chair", 8)
    np.testing.assert_allclose(sorted(chair["lengths"]), [0.5, 0.5, 0.9], atol=1e-6)
    # The chair [1,1.5]x[1,1.5]x[0,0.9] rotated by 90 degrees about z and shifted 3 m along x.
    np.testing.assert_allclose(chair["aabb_min"], [1.5, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(chair["aabb_max"], [2.0, 1.5, 0.9], atol=1e-6)
    table = by_id[1]
    np.testing.assert_allclose(table["lengths"], [1.0, 1.0, 0.05], atol=1e-6)
    np.testing.assert_allclose(table["aabb_min"], [1.0, 2.5, 0.7], atol=1e-6)
    np.testing.assert_allclose(table["aabb_max"], [2.0, 3.5, 0.75], atol=1e-6)
    floor = by_id[2]
    np.testing.assert_allclose(floor["aabb_min"], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(floor["aabb_max"], [3.0, 4.0, 0.0], atol=1e-6)
    assert floor["num_points"] == 4 + 567

    label_map = read_label_map(fixture_root / "scannetv2-labels.combined.tsv")
    assert (label_map["chair"].scannet_id, label_map["chair"].nyu40_id) == (2, 5)
    assert scene.meta["label_ids"]["chair"] == {"id": 2, "category": "chair", "nyu40id": 5}
    assert scene.meta["alignment"] == ALIGN.tolist()
    assert scene.meta["alignment_source"].startswith("axisAlignment from ")
    assert scene.meta["alignment_source"].endswith(f"{SCENE}.txt")
    assert scene.meta["scene_type"] == "Living room / Lounge"
    assert read_scene_meta(fixture_root / "scans" / SCENE / f"{SCENE}.txt")["sceneType"] == "Living room / Lounge"
    assert scene.meta["video_source"] == {"kind": "sens", "path": str(fixture_root / "scans" / SCENE / f"{SCENE}.sens")}
    masks = scene.meta["instance_masks"]
    assert (masks["kind"], masks["pattern"], masks["value"]) == ("zip", "instance-filt/{frame_index}.png", "objectId+1")


def test_fixture_instance_mask(fixture_root):
    zip_path = fixture_root / "scans" / SCENE / f"{SCENE}_2d-instance-filt.zip"
    mask = read_instance_mask(zip_path, 9)
    assert mask.dtype == np.int32 and mask.shape == (48, 64)
    ys, xs = np.nonzero(mask == 0)                  # the chair, objectId 0
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (10, 5, 19, 14)
    assert set(np.unique(mask)) == {-1, 0}
    with pytest.raises(InputError, match="no instance-filt/10.png") as info:
        read_instance_mask(zip_path, 10)
    assert info.value.path == str(zip_path)


def test_fixture_lists_and_ingests(fixture_root, tmp_path):
    assert list_scenes(fixture_root) == [(SCENE, "train")]
    assert list_scenes(fixture_root, "val") == []
    scene = READER.read_scene(fixture_root, SCENE, "train")
    root = DatasetRoot(tmp_path / "root")
    out = root.scene_dir("scannet", SCENE)
    stats = write_ingested_scene(root, scene, num_frames=4).stats
    assert stats["valid_frames"] == 9 and stats["objects"] == 3
    back = read_scene(out)
    assert back.meta["alignment"] == ALIGN.tolist()
    manifest = read_manifest(out)
    assert 3 not in column_as_array(manifest, "frame_index")
    np.testing.assert_array_equal(back.vertex_instance, scene.vertex_instance)


def test_test_split_scene_without_annotations(fixture_root):
    scene_dir = fixture_root / "scans" / SCENE
    for name in (f"{SCENE}.aggregation.json", f"{SCENE}_vh_clean_2.0.010000.segs.json",
                 f"{SCENE}_2d-instance-filt.zip"):
        (scene_dir / name).unlink()
    meta = scene_dir / f"{SCENE}.txt"
    meta.write_text("".join(l + "\n" for l in meta.read_text().splitlines() if not l.startswith("axisAlignment")))
    test_dir = fixture_root / "scans_test" / SCENE
    test_dir.parent.mkdir()
    scene_dir.rename(test_dir)
    (fixture_root / "scannetv2_train.txt").unlink()
    assert list_scenes(fixture_root) == [(SCENE, "test")]
    scene = READER.read_scene(fixture_root, SCENE, "test")
    assert scene.objects.num_rows == 0 and (scene.vertex_instance == -1).all()
    assert scene.meta["alignment_source"] == f"identity: no axisAlignment in {test_dir / f'{SCENE}.txt'}"
    np.testing.assert_allclose(scene.camera_to_world[0], fixture_pose(0), atol=1e-6)
    assert "instance_masks" not in scene.meta


# ---- bad input: an InputError naming the file ------------------------------------------------------------------

def _corrupt_jpeg(root: Path) -> str:
    sens = root / "scans" / SCENE / f"{SCENE}.sens"
    frame = list(iter_sens_frames(sens))[2]
    _patch(sens, frame.color_offset, b"\x00" * 64)        # the JPEG header (SOI, tables) is destroyed
    return f"{SCENE}.sens"


def _missing(name: str):
    def damage(root: Path) -> str:
        (root / "scans" / SCENE / name).unlink()
        return name
    return damage


def _unknown_label(root: Path) -> str:
    path = root / "scans" / SCENE / f"{SCENE}.aggregation.json"
    agg = json.loads(path.read_text())
    agg["segGroups"][1]["label"] = "flying saucer"
    path.write_text(json.dumps(agg))
    return f"{SCENE}.aggregation.json"


def _no_valid_pose(root: Path) -> str:
    sens = root / "scans" / SCENE / f"{SCENE}.sens"
    write_sens(sens, fixture_sens_header(), fixture_payloads(invalid=range(10)))
    return f"{SCENE}.sens"


def _empty_mesh(root: Path) -> str:
    write_ply(root / "scans" / SCENE / f"{SCENE}_vh_clean_2.ply", np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    return f"{SCENE}_vh_clean_2.ply"


def _segs_length(root: Path) -> str:
    path = root / "scans" / SCENE / f"{SCENE}_vh_clean_2.0.010000.segs.json"
    segs = json.loads(path.read_text())
    segs["segIndices"] = segs["segIndices"][:-5]
    path.write_text(json.dumps(segs))
    return f"{SCENE}_vh_clean_2.0.010000.segs.json"


def _bad_alignment(root: Path) -> str:
    path = root / "scans" / SCENE / f"{SCENE}.txt"
    path.write_text(path.read_text().replace("axisAlignment = 0 -1 0 3", "axisAlignment = 2 -1 0 3"))
    return f"{SCENE}.txt"


def _missing_tsv(root: Path) -> str:
    (root / "scannetv2-labels.combined.tsv").unlink()
    return "scannetv2-labels.combined.tsv"


@pytest.mark.parametrize("damage, problem", [
    (_corrupt_jpeg, "corrupt JPEG"),
    (_missing(f"{SCENE}.aggregation.json"), "aggregation file not found"),
    (_missing(f"{SCENE}_vh_clean_2.0.010000.segs.json"), "segments file not found"),
    (_missing(f"{SCENE}_vh_clean_2.ply"), "mesh file not found"),
    (_missing(f"{SCENE}.txt"), "scene meta file not found"),
    (_unknown_label, r"labels not in scannetv2-labels.combined.tsv: \['flying saucer'\]"),
    (_no_valid_pose, "no frame of 10 has a valid"),
    (_empty_mesh, "mesh has no vertices"),
    (_segs_length, "segIndices has 582 entries but the mesh"),
    (_bad_alignment, "not a rigid transform"),
    (_missing_tsv, "label map not found"),
], ids=["corrupt_jpeg", "no_aggregation", "no_segs", "no_mesh", "no_meta", "unknown_label", "no_valid_pose",
        "empty_mesh", "segs_length", "bad_alignment", "no_label_map"])
def test_bad_input_names_the_file(fixture_root, damage, problem):
    name = damage(fixture_root)
    with pytest.raises(InputError, match=problem) as info:
        scene = READER.read_scene(fixture_root, SCENE, "train")
        decode_colors(scene.frames)            # a corrupt frame is found when its JPEG is decoded
    assert name in str(info.value)
    assert Path(info.value.path).name == name


# ---- synthetic round trip --------------------------------------------------------------------------------------

def _yawed_box(centre, lengths, yaw_deg):
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    axes = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    local = (_box_corners((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)) * lengths)
    return local @ axes + centre, axes


def small_synthetic_scene(seed: int = 7) -> SyntheticScene:
    """A tiny hand-built SyntheticScene: floor grid, a wall slab, a yawed chair, a table; 6 frames with one lost."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(0, 4, 9), np.linspace(0, 3, 7))
    floor = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    floor_faces = np.array([(r * 9 + c, r * 9 + c + 1, (r + 1) * 9 + c + 1) for r in range(6) for c in range(8)] +
                           [(r * 9 + c, (r + 1) * 9 + c + 1, (r + 1) * 9 + c) for r in range(6) for c in range(8)])
    # Non-contiguous instance ids, so aggregation group ids (0..4) differ from objectIds.
    specs = [(1, "wall", (2.0, 2.95, 1.25), (4.0, 0.1, 2.5), 0.0),
             (5, "chair", (1.2, 1.0, 0.45), (0.5, 0.45, 0.9), 30.0),
             (9, "table", (2.8, 1.6, 0.375), (1.2, 0.8, 0.75), -12.0),
             (11, "chair", (2.8, 0.6, 0.45), (0.5, 0.5, 0.9), 95.0)]
    vertices, faces, inst, objects = [floor], [floor_faces], [np.zeros(len(floor), np.int64)], []
    objects.append(SyntheticObject(0, "floor", np.array([2.0, 1.5, 0.0]), np.array([4.0, 3.0, 0.0]), np.eye(3)))
    base = len(floor)
    for iid, label, centre, lengths, yaw in specs:
        corners, axes = _yawed_box(np.array(centre), np.array(lengths), yaw)
        vertices.append(corners)
        faces.append(_box_faces(base))
        inst.append(np.full(8, iid, np.int64))
        objects.append(SyntheticObject(iid, label, np.array(centre, float), np.array(lengths, float), axes))
        base += 8
    vertices = np.concatenate(vertices)
    num_frames, width, height = 6, 40, 30
    poses = []
    for k in range(num_frames):
        yaw = np.radians(20 * k)
        forward = np.array([np.cos(yaw), np.sin(yaw), -0.2])
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, forward], axis=1)
        pose[:3, 3] = (0.5 + 0.3 * k, 0.8 + 0.1 * k, 1.5)
        poses.append(pose)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([np.stack([x * 5 + 10 * k, y * 8, np.full_like(x, 40 * k)], -1) for k in range(num_frames)])
    instance = np.full((num_frames, height, width), -1, np.int32)
    instance[:, 10:20, 5:15] = 5
    instance[:, 22:, 30:] = 11
    instance[:, 0:5, :] = 1
    return SyntheticScene(
        name=f"synth{seed:04d}", seed=seed, vertices=vertices, faces=np.concatenate(faces).astype(np.int64),
        colors=rng.integers(0, 256, (len(vertices), 3), dtype=np.uint8), vertex_instance=np.concatenate(inst),
        objects=objects, camera_to_world=np.stack(poses), timestamps=np.arange(num_frames) / 30.0,
        intrinsics=np.array([[32.0, 0, (width - 1) / 2], [0, 32.0, (height - 1) / 2], [0, 0, 1]]),
        width=width, height=height, rgb=rgb.astype(np.uint8),
        depth=np.full((num_frames, height, width), 2.5, np.float32), instance=instance, invalid_frames=(2,))


def _generated(seed: int, mounted: bool = False):
    def make() -> SyntheticScene:
        from pipeline.sources.synthetic import MOUNTED_BOTTOM_M, generate_scene

        scene = generate_scene(seed, num_frames=12, mounted=mounted)
        # A mounted scene has objects hanging on the walls (bottom at 1.4 m or more), to carry through the files.
        assert mounted == any(o.centroid[2] - o.lengths[2] / 2 >= MOUNTED_BOTTOM_M[0] for o in scene.objects)
        return scene
    return make


def _corners(centroid, lengths, axes) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return centroid + (signs * np.asarray(lengths) / 2) @ np.asarray(axes).reshape(3, 3)


@pytest.mark.parametrize("make_scene", [small_synthetic_scene, _generated(3), _generated(8), _generated(0, True)],
                         ids=["hand_built", "generated_seed3", "generated_seed8", "generated_seed0_mounted"])
def test_synthetic_round_trip(tmp_path, make_scene):
    from pipeline.sources.scannet_writer import SCANNET_LABELS, default_alignment, write_scannet

    truth = make_scene()
    raw = tmp_path / "raw"
    scene_id = write_scannet(truth, raw)
    assert list_scenes(raw) == [(scene_id, "train")]
    assert (raw / "scans" / scene_id / f"{scene_id}.txt").read_text().startswith("axisAlignment = ")
    scene = READER.read_scene(raw, scene_id, "train")
    assert scene.meta["alignment"] == default_alignment().tolist()

    valid = column_as_array(scene.frames, "valid")
    expect_valid = np.ones(len(truth.camera_to_world), bool)
    expect_valid[list(truth.invalid_frames)] = False
    np.testing.assert_array_equal(valid, expect_valid)
    np.testing.assert_allclose(scene.camera_to_world[valid], truth.camera_to_world[valid], atol=1e-6, rtol=0)
    np.testing.assert_allclose(column_as_array(scene.frames, "timestamp"), truth.timestamps, atol=1e-6)
    np.testing.assert_allclose(column_as_array(scene.frames, "fx"), truth.intrinsics[0, 0])
    np.testing.assert_allclose(column_as_array(scene.frames, "cy"), truth.intrinsics[1, 2])

    np.testing.assert_allclose(scene.mesh_vertices, truth.vertices, atol=1e-5)
    np.testing.assert_array_equal(scene.mesh_faces, truth.faces)
    np.testing.assert_array_equal(scene.vertex_instance, truth.vertex_instance)
    np.testing.assert_array_equal(scene.mesh_colors, truth.colors)

    got = {o["instance_id"]: o for o in scene.objects.to_pylist()}
    assert sorted(got) == sorted(o.instance_id for o in truth.objects)
    for obj in truth.objects:
        row = got[obj.instance_id]
        assert row["label"] == SCANNET_LABELS[obj.label][0] and row["category"] == SCANNET_LABELS[obj.label][1]
        assert row["num_points"] == int((truth.vertex_instance == obj.instance_id).sum())
        np.testing.assert_allclose(row["centroid"], obj.centroid, atol=1e-5)
        want = _corners(obj.centroid, obj.lengths, obj.axes)
        have = _corners(row["centroid"], row["lengths"], row["axes"])
        # Same box whatever the axis order/sign: every true corner has a read corner on it.
        assert np.linalg.norm(want[:, None] - have[None], axis=-1).min(axis=1).max() < 1e-5, obj

    colors = decode_colors(scene.frames)
    for k in range(len(colors)):
        assert np.abs(colors[k].astype(int) - truth.rgb[k]).mean() < 3.0
    depths = decode_depths(scene.frames)
    for k in range(len(depths)):  # stored as whole millimetres: within half a millimetre of the rendered depth
        np.testing.assert_allclose(depths[k], truth.depth[k], atol=5e-4 + 1e-6, rtol=0)
    zip_path = scene.meta["instance_masks"]["path"]
    # The first and last frames, and one showing the last object (on mounted scenes, a wall-mounted one).
    showing_last = (truth.instance == truth.objects[-1].instance_id).any(axis=(1, 2))
    for k in {0, len(truth.instance) - 1, int(np.argmax(showing_last))}:
        np.testing.assert_array_equal(read_instance_mask(zip_path, k), truth.instance[k])


def test_writer_merges_split_lists_and_label_map(tmp_path):
    from pipeline.sources.scannet_writer import write_scannet

    raw = tmp_path / "raw"
    a, b, c = small_synthetic_scene(7), small_synthetic_scene(12), small_synthetic_scene(10005)
    ids = [write_scannet(b, raw, "val"), write_scannet(a, raw), write_scannet(c, raw)]
    assert ids == ["scene0012_00", "scene0007_00", "scene0005_01"]
    assert (raw / "scannetv2_train.txt").read_text() == "scene0005_01\nscene0007_00\n"
    assert (raw / "scannetv2_val.txt").read_text() == "scene0012_00\n"
    tsv_once = (raw / "scannetv2-labels.combined.tsv").read_text()
    write_scannet(a, raw)                                      # rewriting is idempotent
    assert (raw / "scannetv2-labels.combined.tsv").read_text() == tsv_once
    assert (raw / "scannetv2_train.txt").read_text() == "scene0005_01\nscene0007_00\n"
    write_scannet(b, raw, "train")                             # moving a scene between splits
    assert (raw / "scannetv2_val.txt").read_text() == ""
    assert list_scenes(raw) == [("scene0005_01", "train"), ("scene0007_00", "train"), ("scene0012_00", "train")]
    header, *rows = [r.split("\t") for r in tsv_once.splitlines()]
    assert len(header) == 17 and all(len(r) == 17 for r in rows)
    by_raw = {r[1]: r for r in rows}
    assert [by_raw["chair"][i] for i in (0, 2, 4, 7)] == ["2", "chair", "5", "chair"]
    assert [by_raw["floor"][i] for i in (0, 4)] == ["3", "2"]
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), key=int)
    label_map = read_label_map(raw / "scannetv2-labels.combined.tsv")
    assert label_map["wall"].scannet_id == 1 and label_map["table"].nyu40_id == 7


def test_writer_annotation_files_use_object_ids(tmp_path):
    from pipeline.sources.scannet_writer import write_scannet

    raw = tmp_path / "raw"
    truth = small_synthetic_scene()
    scene_id = write_scannet(truth, raw)
    scene_dir = raw / "scans" / scene_id
    agg = json.loads((scene_dir / f"{scene_id}.aggregation.json").read_text())
    assert [(g["id"], g["objectId"], g["label"]) for g in agg["segGroups"]] == [
        (0, 0, "floor"), (1, 1, "wall"), (2, 5, "chair"), (3, 9, "table"), (4, 11, "chair")]
    seg = np.array(json.loads((scene_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    assert len(seg) == len(truth.vertices) and len(np.unique(seg)) > len(agg["segGroups"])   # over-segmented
    assert not np.array_equal(np.unique(seg), np.arange(len(np.unique(seg))))              # ids not contiguous
    ply = read_ply(scene_dir / f"{scene_id}_vh_clean_2.ply")
    assert list(ply.vertex) == ["x", "y", "z", "red", "green", "blue", "alpha"]
    assert b"property list uchar int vertex_indices" in (scene_dir / f"{scene_id}_vh_clean_2.ply").read_bytes()[:400]
    with zipfile.ZipFile(scene_dir / f"{scene_id}_2d-instance-filt.zip") as zf:
        assert zf.namelist() == [f"instance-filt/{k}" + ".png" for k in range(6)]
        png = np.array(Image.open(io.BytesIO(zf.read("instance-filt/0.png"))))
    assert png.dtype == np.uint8 and png[15, 10] == 6 and png[25, 35] == 12 and png[29, 0] == 0
    sens_header = read_sens_header(scene_dir / f"{scene_id}.sens")
    assert (sens_header.color_compression, sens_header.depth_compression, sens_header.depth_shift) == (2, 1, 1000.0)


def test_shared_segments_go_to_the_last_group_and_label_conflicts_fail(fixture_root):
    from pipeline.sources.scannet import vertex_instances

    groups = [{"objectId": 4, "segments": [10, 11]}, {"objectId": 2, "segments": [11, 12]}]
    inst, shared = vertex_instances(np.array([10, 11, 12, 13, 11]), groups)
    np.testing.assert_array_equal(inst, [4, 2, 2, -1, 2])
    assert shared == 1
    path = fixture_root / "scans" / SCENE / f"{SCENE}.aggregation.json"
    agg = json.loads(path.read_text())
    # The same objectId in two groups with the same label is one object (both segments are the chair) ...
    agg["segGroups"][0]["segments"] = [21]
    agg["segGroups"].append({"id": 3, "objectId": 0, "segments": [42], "label": "chair"})
    agg["segGroups"][1]["segments"] = []
    path.write_text(json.dumps(agg))
    scene = READER.read_scene(fixture_root, SCENE, "train")
    assert (scene.vertex_instance[4:20] == 0).all() and scene.meta["instances_without_vertices"] == [1]
    assert sorted(scene.objects.column("instance_id").to_pylist()) == [0, 2]
    # ... with different labels it is an error.
    agg["segGroups"][-1]["label"] = "table"
    path.write_text(json.dumps(agg))
    with pytest.raises(InputError, match="objectId 0 has two labels 'chair' and 'table'") as info:
        READER.read_scene(fixture_root, SCENE, "train")
    assert info.value.path == str(path)


def test_list_scenes_splits(fixture_root):
    (fixture_root / "scans" / "scene0001_00").mkdir()                   # present, in no list
    (fixture_root / "scans" / "scene0002_00").mkdir()
    bench = fixture_root / "Tasks" / "Benchmark"
    bench.mkdir(parents=True)
    (bench / "scannetv2_val.txt").write_text("scene0002_00\nscene0009_00\n")   # 0009 is not downloaded
    assert list_scenes(fixture_root) == [(SCENE, "train"), ("scene0001_00", "unlisted"), ("scene0002_00", "val")]
    assert list_scenes(fixture_root, "val") == [("scene0002_00", "val")]
    (fixture_root / "scannetv2_val.txt").write_text(f"{SCENE}\n")
    with pytest.raises(InputError, match="in both split lists"):
        list_scenes(fixture_root)


def test_writer_is_byte_reproducible(tmp_path):
    from pipeline.sources.scannet_writer import write_scannet

    trees = []
    for run in ("a", "b"):
        raw = tmp_path / run
        write_scannet(small_synthetic_scene(), raw)
        trees.append({p.relative_to(raw).as_posix(): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()})
    assert list(trees[0]) == list(trees[1]) and len(trees[0]) == 8   # 6 scene files + TSV + split list
    assert all(trees[0][name] == trees[1][name] for name in trees[0])


def test_writer_test_split_has_no_annotations(tmp_path):
    from pipeline.sources.scannet_writer import write_scannet

    raw = tmp_path / "raw"
    truth = small_synthetic_scene()
    scene_id = write_scannet(truth, raw, "test")
    scene_dir = raw / "scans_test" / scene_id
    assert sorted(p.name for p in scene_dir.iterdir()) == [f"{scene_id}.sens", f"{scene_id}.txt",
                                                           f"{scene_id}_vh_clean_2.ply"]
    scene = READER.read_scene(raw, scene_id, "test")
    assert scene.objects.num_rows == 0
    assert scene.meta["alignment_source"].startswith("identity: no axisAlignment in ")
    valid = column_as_array(scene.frames, "valid")
    np.testing.assert_allclose(scene.camera_to_world[valid], truth.camera_to_world[valid], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no axisAlignment"):
        write_scannet(truth, raw, "test", alignment=np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3))


def test_ingest_command_records_bad_scenes_and_ingests_the_rest(tmp_path):
    """The real `vlm3r-data ingest` on a written release: one good scene, one without its aggregation file."""
    from pipeline.cli import main
    from pipeline.core.errors import read_errors
    from pipeline.core.layout import DatasetRoot
    from pipeline.sources.scannet_writer import write_scannet

    raw, out = tmp_path / "raw", tmp_path / "root"
    good = write_scannet(small_synthetic_scene(7), raw)
    bad = write_scannet(small_synthetic_scene(9), raw)
    (raw / "scans" / bad / f"{bad}.aggregation.json").unlink()
    code = main(["ingest", "--dataset", "scannet", "--raw", str(raw), "--out", str(out), "--local",
                 "--num-frames", "4"])
    assert code == 1
    root = DatasetRoot(out)
    assert root.scenes("scannet") == [("scannet", good)]
    errors = read_errors(root.errors_path)
    assert [(e.scene_id, e.error_type) for e in errors] == [(bad, "InputError")]
    assert errors[0].path.endswith(f"{bad}.aggregation.json") and "not found" in errors[0].message
    manifest = read_manifest(root.scene_dir("scannet", good))
    assert manifest.num_rows == 4 and 2 not in column_as_array(manifest, "frame_index")   # frame 2 is lost


def test_scannet200_ply_export_matches_the_preprocessing_layout(tmp_path):
    """§6.1: the ScanNet200-style PLY has label = the TSV id and instance_id = objectId (0 where unannotated)."""
    from pipeline.cli import main
    from pipeline.core.ply import read_ply
    from pipeline.core.scene import read_scene
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scene

    truth = generate_scene(4)
    scene_id = write_scannet(truth, tmp_path / "raw", split="val")
    assert main(["ingest", "--dataset", "scannet", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "root"),
                 "--local"]) == 0
    (tmp_path / "ids.txt").write_text("2\n3\n")  # keep chair and floor only
    assert main(["export-meta", "--format", "scannet200", "--root", str(tmp_path / "root"),
                 "--out", str(tmp_path / "pc"), "--valid-ids", str(tmp_path / "ids.txt")]) == 0
    ply = read_ply(tmp_path / "pc" / "val" / f"{scene_id}.ply")
    assert list(ply.vertex)[:8] == ["x", "y", "z", "red", "green", "blue", "label", "instance_id"]
    assert ply.vertex["label"].dtype == np.uint32 and ply.vertex["instance_id"].dtype == np.uint32
    scene = read_scene(tmp_path / "root" / "scenes" / "scannet" / scene_id)
    np.testing.assert_allclose(ply.vertices, scene.mesh_vertices, atol=1e-5)   # aligned, as the canonical mesh
    inst = scene.vertex_instance
    labels = dict(zip(scene.objects.column("instance_id").to_pylist(), scene.objects.column("label").to_pylist()))
    expect_label = np.array([{"chair": 2, "floor": 3}.get(labels.get(i, ""), 0) for i in inst])
    np.testing.assert_array_equal(ply.vertex["label"], expect_label)
    np.testing.assert_array_equal(ply.vertex["instance_id"], np.where(inst >= 0, inst, 0))
    assert (expect_label == 2).any() and (expect_label == 3).any()
