"""Plain videos as scenes, on real files written with PyAV: rotation metadata, variable frame rates, corrupt tails,
short clips, unreadable files, and how files are named and found again."""
import json

import numpy as np
import pytest
from video_factories import MARK, marked_image, noise_image, write_cut_video, write_video

from pipeline.core.errors import InputError
from pipeline.core.frames import (_decode_sequential, _decode_video, _decode_video_av, decode_colors,
                                  quarter_turns_from_display_matrix, quarter_turns_from_rotate_tag)
from pipeline.core.layout import DatasetRoot, scene_key, video_scene_id
from pipeline.core.scene import (manifest_frames, read_manifest, read_scene, scene_poses, video_name_index,
                                 write_scene)
from pipeline.stages.ingest import write_ingested_scene
from pipeline.core.schemas import column_as_array
from pipeline.sources.video import READER, ingest_notes, probe_video

FIXED_ONE = 1 << 16


def _brightness_index(img: np.ndarray) -> int:
    """The frame index marked_image encoded in the blue channel (away from the corner marker)."""
    return int(round((float(np.median(img[..., 2])) - 10) / 20))


def _scene(tmp_path, relative: str):
    return READER.read_scene(tmp_path / "raw", video_scene_id(relative.rsplit(".", 1)[0]), "test")


# ---- rotation ----------------------------------------------------------------------------------------------------

def test_display_matrix_and_rotate_tag_give_quarter_turns():
    # FFmpeg's av_display_rotation_set(angle): [cos(-a), -sin(-a); sin(-a), cos(-a)] in 16.16, w = 1 << 30.
    def matrix(a, b, c, d):
        return [a * FIXED_ONE, b * FIXED_ONE, 0, c * FIXED_ONE, d * FIXED_ONE, 0, 0, 0, 1 << 30]

    assert quarter_turns_from_display_matrix(matrix(1, 0, 0, 1)) == 0
    assert quarter_turns_from_display_matrix(matrix(0, -1, 1, 0)) == 1     # shown 90 degrees counter-clockwise
    assert quarter_turns_from_display_matrix(matrix(0, 1, -1, 0)) == 3     # an iPhone portrait clip (-90)
    assert quarter_turns_from_display_matrix(matrix(-1, 0, 0, -1)) == 2
    with pytest.raises(ValueError, match="mirrors"):
        quarter_turns_from_display_matrix(matrix(-1, 0, 0, 1))
    with pytest.raises(ValueError, match="not a multiple of 90"):
        quarter_turns_from_display_matrix([46341, -46341, 0, 46341, 46341, 0, 0, 0, 1 << 30])  # 45 degrees
    assert quarter_turns_from_rotate_tag("90") == 3 and quarter_turns_from_rotate_tag("-90") == 1
    assert quarter_turns_from_rotate_tag("180") == 2
    with pytest.raises(ValueError, match="not a multiple of 90"):
        quarter_turns_from_rotate_tag("30")


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotated_phone_videos_come_out_upright(tmp_path, degrees):
    """A portrait picture stored sideways with a display matrix (as phones record) decodes upright, by decord and
    PyAV alike: both give the stored pixels and rotate_k turns them."""
    turns = (degrees // 90) % 4
    upright = [marked_image(i, height=96, width=64) for i in range(6)]
    stored = [np.ascontiguousarray(np.rot90(img, -turns)) for img in upright]
    write_video(tmp_path / "raw" / "phone" / "clip.mp4", stored, rotation_degrees=degrees)
    scene = _scene(tmp_path, "phone/clip.mp4")
    assert set(column_as_array(scene.frames, "rotate_k")) == {turns}
    assert set(column_as_array(scene.frames, "width")) == {64} and set(column_as_array(scene.frames, "height")) == {96}
    assert scene.meta["video"]["rotation_source"] == "display_matrix"
    images = decode_colors(scene.frames)
    for i, (img, want) in enumerate(zip(images, upright)):
        assert img.shape == (96, 64, 3)
        assert np.abs(img.astype(int) - want).mean() < 4
        assert img[:8, :8].min() > MARK - 20                       # the marker is top-left, as it was filmed
        assert _brightness_index(img) == i
    raw = _decode_video(str(tmp_path / "raw" / "phone" / "clip.mp4"), [0])[0]
    assert raw.shape == stored[0].shape and np.abs(raw.astype(int) - stored[0]).mean() < 4


def test_legacy_rotate_tag_is_applied(tmp_path):
    upright = [marked_image(i, height=96, width=64) for i in range(4)]
    stored = [np.ascontiguousarray(np.rot90(img, 1)) for img in upright]   # needs 90 degrees clockwise
    write_video(tmp_path / "raw" / "old.mkv", stored, rotate_tag="90")
    scene = _scene(tmp_path, "old.mkv")
    assert scene.meta["video"]["rotation_source"] == "rotate_tag"
    (first,) = decode_colors(scene.frames.slice(0, 1))
    assert np.abs(first.astype(int) - upright[0]).mean() < 4


@pytest.mark.parametrize("kind", ["45 degrees", "mirror"])
def test_unknown_rotation_is_a_clear_error(tmp_path, kind):
    images = [marked_image(i) for i in range(3)]
    path = tmp_path / "raw" / "odd.mp4"
    if kind == "mirror":
        write_video(path, images, display_matrix=[-FIXED_ONE, 0, 0, 0, FIXED_ONE, 0, 0, 0, 1 << 30])
    else:
        write_video(path, images, rotation_degrees=45)
    with pytest.raises(InputError, match=r"odd\.mp4: unsupported rotation"):
        _scene(tmp_path, "odd.mp4")


# ---- frames, timestamps, the manifest ----------------------------------------------------------------------------

def test_variable_frame_rate_keeps_container_timestamps(tmp_path):
    pts_ms = [0, 100, 150, 400, 420, 440, 900, 1000, 1010, 1500]
    write_video(tmp_path / "raw" / "vfr.mkv", [marked_image(i) for i in range(len(pts_ms))], pts_ms=pts_ms)
    scene = _scene(tmp_path, "vfr.mkv")
    np.testing.assert_allclose(column_as_array(scene.frames, "timestamp"), np.array(pts_ms) / 1000.0, atol=1e-12)
    kinds = [n["kind"] for n in scene.meta["video"]["notes"]]
    assert kinds == ["variable_frame_rate"]
    root = DatasetRoot(tmp_path / "root")
    write_scene(root.scene_dir("video", scene.scene_id), scene, num_frames=4)
    manifest = read_manifest(root.scene_dir("video", scene.scene_id))
    # Uniform over the decodable frames by index (not by time), with their container timestamps.
    assert column_as_array(manifest, "frame_index").tolist() == [0, 3, 6, 9]
    np.testing.assert_allclose(column_as_array(manifest, "timestamp"), [0.0, 0.4, 0.9, 1.5])
    images = decode_colors(manifest_frames(scene.frames, manifest))
    assert [_brightness_index(img) for img in images] == [0, 3, 6, 9]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_corrupt_tail_keeps_the_decodable_frames_and_records_the_rest(tmp_path, suffix):
    path = write_cut_video(tmp_path / "raw" / f"cut{suffix}", frames=30, keep_fraction=0.6)
    scene = _scene(tmp_path, f"cut{suffix}")
    kept = scene.frames.num_rows
    assert 5 < kept < 30
    (note,) = scene.meta["video"]["notes"]
    assert note["kind"] == "corrupt_tail" and note["message"].startswith(f"{kept} decodable frames kept")
    # The cut-off frames are not rows; every row decodes, with decord and PyAV alike.
    assert column_as_array(scene.frames, "frame_index").tolist() == list(range(kept))
    by_decoders = decode_colors(scene.frames)
    by_pyav = _decode_video_av(str(path), list(range(kept)))
    for i in range(kept):
        np.testing.assert_array_equal(by_decoders[i], by_pyav[i])
    assert np.abs(by_pyav[kept - 1].astype(int) - noise_image(kept - 1)).mean() < np.abs(
        by_pyav[kept - 1].astype(int) - noise_image(kept - 2)).mean()           # frame numbers are not shifted
    with pytest.raises(InputError, match=f"cut{suffix}"):
        _decode_video_av(str(path), [29])


def test_short_video_takes_all_frames_and_says_so(tmp_path):
    write_video(tmp_path / "raw" / "short.mp4", [marked_image(i) for i in range(5)])
    scene = _scene(tmp_path, "short.mp4")
    root = DatasetRoot(tmp_path / "root")
    stats = write_scene(root.scene_dir("video", "short"), scene, num_frames=32)
    assert stats["manifest_frames"] == 5 and stats["valid_frames"] == 0
    assert column_as_array(read_manifest(root.scene_dir("video", "short")), "rank").tolist() == [0, 1, 2, 3, 4]
    assert [n["kind"] for n in ingest_notes(scene, stats["manifest_frames"], 32)] == ["short_video"]
    assert ingest_notes(scene, stats["manifest_frames"], 5) == []


def test_a_pose_less_scene_declares_it_and_reads_back(tmp_path):
    write_video(tmp_path / "raw" / "arkitscenes" / "41069025.mp4", [marked_image(i) for i in range(12)])
    scene = _scene(tmp_path, "arkitscenes/41069025.mp4")
    root = DatasetRoot(tmp_path / "root")
    scene_dir = root.scene_dir("video", scene.scene_id)
    write_ingested_scene(root, scene, num_frames=4)
    info = json.loads((scene_dir / "scene.json").read_text())
    assert (info["poses"], info["intrinsics"], info["depth"], info["mesh"]) == ("none", "none", "none", None)
    assert not (scene_dir / "mesh.ply").exists() and scene_poses(scene_dir) == "none"
    manifest = read_manifest(scene_dir)
    assert not column_as_array(manifest, "valid").any() and np.isnan(column_as_array(manifest, "camera_to_world")).all()
    again = read_scene(scene_dir)
    assert again.poses == "none" and len(again.mesh_vertices) == 0 and again.meta["video"]["name"] == \
        "arkitscenes/41069025"
    assert video_name_index(root) == {"arkitscenes/41069025": scene_key("video", "arkitscenes__41069025")}


# ---- bad files ---------------------------------------------------------------------------------------------------

def test_unreadable_and_frameless_videos_are_clear_errors(tmp_path):
    import av

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "junk.mp4").write_bytes(b"this is not a video" * 20)
    with pytest.raises(InputError, match=r"junk\.mp4: not a readable video"):
        probe_video(raw / "junk.mp4")
    # The index of 8 frames, and none of their data: the container opens, no frame decodes.
    path = write_video(raw / "empty.mp4", [noise_image(i) for i in range(8)], options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 16])
    with pytest.raises(InputError, match=r"empty\.mp4: no decodable video frame"):
        probe_video(path)
    with av.open(str(raw / "sound.mkv"), "w") as container:    # audio only
        container.add_stream("aac", rate=8000)
    with pytest.raises(InputError, match=r"sound\.mkv: (no video stream|not a readable video)"):
        probe_video(raw / "sound.mkv")


# ---- names and keys ----------------------------------------------------------------------------------------------

def test_scene_ids_are_readable_key_safe_and_distinct():
    assert video_scene_id("arkitscenes/41069025") == "arkitscenes__41069025"
    assert video_scene_id("scene0011_00") == "scene0011_00"
    tricky = ["a.b", "a_b", "a/b", "a__b", "a_/b", "a/_b", "IMG 0001", "IMG_0001", "x" * 200, "x" * 201, "ü/clip"]
    ids = [video_scene_id(name) for name in tricky]
    assert len(set(ids)) == len(ids)
    for name, sid in zip(tricky, ids):
        key = scene_key("video", sid)
        assert "." not in key and "/" not in key and len(key) <= 80, (name, key)
    assert video_scene_id("a/_b") == "a___b" and video_scene_id("a_/b").startswith("a___b-")


def test_folder_listing_finds_videos_recursively_and_refuses_shared_names(tmp_path):
    raw = tmp_path / "raw"
    frames = [marked_image(i) for i in range(3)]
    for rel in ("arkitscenes/41069025.mp4", "scannet/scene0011_00.mkv", "phone/IMG 0001.MOV", "twin.mp4", "twin.mov",
                "clips/a.b.webm"):
        write_video(raw / rel, frames)
    (raw / "._twin.mp4").write_bytes(b"AppleDouble")          # macOS copy debris: hidden, skipped
    (raw / ".cache").mkdir()
    write_video(raw / ".cache" / "x.mp4", frames)
    (raw / "notes.txt").write_text("not a video")
    ids = [sid for sid, split in READER.list_scenes(raw)]
    assert ids == sorted([
        "arkitscenes__41069025", "scannet__scene0011_00", video_scene_id("phone/IMG 0001"), "twin",
        video_scene_id("clips/a.b")])
    assert READER.list_scenes(raw, "train") == []
    assert _scene(tmp_path, "phone/IMG 0001.MOV").meta["video"]["name"] == "phone/IMG 0001"
    assert _scene(tmp_path, "clips/a.b.webm").meta["video"]["file"] == "clips/a.b.webm"
    with pytest.raises(InputError, match=r"twin\.mov.*twin\.mp4.*share the name 'twin'"):
        READER.read_scene(raw, "twin", "test")


def test_pyav_seeking_matches_sequential_decoding_and_decord(tmp_path):
    """Random access with key frames every 4 frames (and B-frames): the seek path, the sequential path and decord
    give the same pixels for the same frame numbers."""
    import av
    import decord

    path = write_video(tmp_path / "gop.mp4", [marked_image(i % 12) for i in range(40)], gop=4)
    wanted = [3, 15, 16, 29, 37]
    seek = _decode_video_av(str(path), wanted)
    with av.open(str(path)) as container:
        sequential = _decode_sequential(str(path), container, container.streams.video[0], wanted)
    batch = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1).get_batch(wanted).asnumpy()
    for k, n in enumerate(wanted):
        np.testing.assert_array_equal(seek[n], sequential[n])
        np.testing.assert_array_equal(seek[n], batch[k])
