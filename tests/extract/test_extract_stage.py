"""The extraction stage end to end on real dataset roots (ScanNet written by the synthetic generator and ingested,
plus an mp4-backed scene), the real tiny CUT3R architecture with random weights, and a real local Ray."""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_factories import CrashingFactory, file_hashes, ingest_synthetic, write_video_scene

from pipeline.core.atomic import read_json
from pipeline.cli import main as cli_main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot, scene_key
from pipeline.core.scene import manifest_frames, read_manifest
from pipeline.core.schemas import FRAMES_SCHEMA, read_table
from pipeline.core.tokens import iter_samples
from pipeline.core.shards import read_index
from workers.cut3r import Cut3rEncoder, EncodedBatch, preprocess_frames, random_model, save_safetensors, tiny_config
from workers.extract import ExtractOptions, ModelSpec, Scheduling

FRAME_COUNTS = [5, 7, 4, 6]          # source frames of the ScanNet scenes (one pose each is lost)
SIZE, SQUASH = 64, 96                # tiny input side (4x4 patches) and squash side, to stay fast
BASE = ["--random-tiny", "--size", str(SIZE), "--squash-size", str(SQUASH)]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A dataset root with four ingested ScanNet scenes and one video scene (copied per test)."""
    base = tmp_path_factory.mktemp("extract_template")
    ingest_synthetic(base / "raw", base / "root", FRAME_COUNTS)
    write_video_scene(base / "root", base / "videos", "41069021", seed=11)
    return base / "root"


@pytest.fixture(scope="module")
def clean_hashes(template, tmp_path_factory) -> dict[str, str]:
    """File hashes of a clean in-process run with one video per batch and one sample per shard."""
    from pipeline.stages.run import extract_root

    clean = copy_root(template, tmp_path_factory.mktemp("clean") / "root")
    summary = extract_root(clean, ModelSpec("random_tiny"), ExtractOptions(input_size=SIZE, squash_size=SQUASH),
                           Scheduling(batch_videos=1, local=True), shard_bytes=100, progress=False)
    assert summary.extracted == 5 and summary.shards == 5
    return file_hashes(clean / "tokens")


def copy_root(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def extract(root: Path, *extra: str) -> int:
    return cli_main(["extract", "--root", str(root), *BASE, *extra])


def reference_run(root: Path, dataset: str, scene_id: str, points: bool = False):
    """The scene's manifest frames run through the model alone (batch of one), outside the stage: the encoder's
    output for the one video and the manifest rows."""
    from pipeline.core.frames import decode_colors
    from workers.cut3r.preprocess import PreprocessConfig

    scene_dir = DatasetRoot(root).scene_dir(dataset, scene_id)
    manifest = read_manifest(scene_dir)
    images = decode_colors(manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), manifest))
    pixels = preprocess_frames(np.stack(images), PreprocessConfig(size=SIZE, squash_size=SQUASH))
    return Cut3rEncoder(random_model(tiny_config(), seed=0)).encode([pixels], points=points), manifest.to_pylist()


def test_stage_tokens_match_the_model_and_shards_do_not_depend_on_workers(ray_local, template, tmp_path):
    one, two = copy_root(template, tmp_path / "one"), copy_root(template, tmp_path / "two")
    args = ["--batch-videos", "3", "--with-frames", "--points", "cut3r", "--shard-bytes", "20kB"]
    assert extract(one, *args, "--workers", "1") == 0
    assert extract(two, *args, "--workers", "4") == 0  # twice as many batches decoded ahead
    hashes = file_hashes(one / "tokens")
    assert hashes == file_hashes(two / "tokens")
    index = read_index(one / "tokens")
    assert index["num_shards"] >= 2, "the size limit should have rolled the shards over"

    scenes = DatasetRoot(one).scenes()
    assert len(scenes) == 5
    sha = ModelSpec("random_tiny").describe()["checkpoint_sha256"]
    samples = list(iter_samples(one / "tokens", expect={"checkpoint_sha256": sha, "dtype": "float32"}))
    assert [s.key for s in samples] == [scene_key(d, s) for d, s in scenes]
    for sample, (dataset, scene_id) in zip(samples, scenes):
        out, rows = reference_run(one, dataset, scene_id, points=True)
        camera, patch = out.camera_tokens[0].numpy(), out.patch_tokens[0].numpy()
        t = len(rows)
        assert sample.camera.shape == (t, 1, 32) and sample.patch.shape == (t, 16, 32)
        # batched in lock-step with other videos vs alone: equal up to float32 reduction order
        np.testing.assert_allclose(sample.camera_tokens(), camera, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(sample.patch_tokens(), patch, atol=2e-4, rtol=1e-4)
        assert [r["frame_index"] for r in sample.frames] == [r["frame_index"] for r in rows]
        np.testing.assert_allclose([r["camera_to_world"] for r in sample.frames], [r["camera_to_world"] for r in rows])
        assert sample.points.shape == (t, 16, 3) and np.isfinite(sample.points).all()
        assert sample.meta["points_source"] == "cut3r" and sample.points_valid.shape == (t, 16)
        first_pose = np.asarray(sample.frames[0]["camera_to_world"]).reshape(4, 4)
        np.testing.assert_allclose(sample.points[sample.points_valid],
                                   sample.points_cam0[sample.points_valid] @ first_pose[:3, :3].T + first_pose[:3, 3],
                                   atol=1e-4)
        # scans keep their sensor poses in camera_to_world; the model's own go beside them, through the first one
        assert sample.meta["points_frame"] == "world_z_up" and sample.meta["estimated_poses"] == "cut3r"
        assert all(r["estimated_pose_source"] == "cut3r" for r in sample.frames)
        estimated = np.array([r["estimated_camera_to_world"] for r in sample.frames]).reshape(t, 4, 4)
        np.testing.assert_allclose(estimated, first_pose @ out.camera_poses[0].double().numpy(), atol=1e-4)
        np.testing.assert_allclose(sample.points_cam0, out.points[0].numpy(), atol=1e-4)
        assert [img.shape for img in sample.images()] == [(SQUASH, SQUASH, 3)] * t
        assert sample.meta["model_id"] == "cut3r-random-tiny-seed0" and sample.meta["input_size"] == SIZE

    info = read_json(one / "info.json")["stages"]["extract"]
    assert info["counts"]["extracted"] == 5 and info["config"]["checkpoint_sha256"] == sha

    # a rerun skips everything and leaves the bytes alone; --overwrite redoes them byte for byte
    assert extract(one, *args) == 0
    assert read_json(one / "info.json")["stages"]["extract"]["counts"]["skipped"] == 5
    assert file_hashes(one / "tokens") == hashes
    assert extract(one, *args, "--overwrite", "--local") == 0
    rebuilt = file_hashes(one / "tokens")
    assert {k: v for k, v in rebuilt.items() if k.endswith(".tar")} == {k: v for k, v in hashes.items()
                                                                         if k.endswith(".tar")}
    # the same bytes, but a rebuild: the units' markers count it (what read the old tokens is stale)
    marker = read_json(one / "tokens" / "_done" / "shard-000000.json")
    assert {u["generation"] for u in marker["units"].values()} == {1}


def test_rerun_refuses_another_configuration(template, tmp_path, capsys):
    root = copy_root(template, tmp_path / "root")
    assert extract(root, "--local") == 0
    before = file_hashes(root / "tokens")
    capsys.readouterr()
    assert cli_main(["extract", "--root", str(root), "--random-tiny", "--size", "32", "--squash-size", str(SQUASH),
                     "--local"]) == 2
    err = capsys.readouterr().err
    assert "extract: the configuration changed" in err and "input_size: 64 -> 32" in err and "--rebuild" in err
    assert extract(root, "--local", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "checkpoint_sha256: " in err and "model_id: cut3r-random-tiny-seed0 -> cut3r-random-tiny-seed1" in err
    assert file_hashes(root / "tokens") == before

    # a scene re-ingested with another frame list: its tokens no longer match its manifest
    from pipeline.core.scene import read_scene
    from pipeline.stages.ingest import write_ingested_scene

    dataset, scene_id = DatasetRoot(root).scenes()[0]
    scene = read_scene(DatasetRoot(root).scene_dir(dataset, scene_id))
    write_ingested_scene(DatasetRoot(root), scene, num_frames=2)
    assert extract(root, "--local") == 2
    err = capsys.readouterr().err
    assert f"{dataset}/{scene_id}: ingest:{dataset}/{scene_id}#frames" in err and "upstream rebuilt" in err
    assert file_hashes(root / "tokens") == before
    # --rebuild redoes it: its shard is replaced, the other scenes of that shard are redone with it
    assert extract(root, "--local", "--rebuild") == 0
    (sample,) = [s for s in iter_samples(root / "tokens") if s.key == scene_key(dataset, scene_id)]
    assert sample.num_frames == 2


def test_bf16_tokens_are_stored_as_bit_patterns_close_to_float32(template, tmp_path):
    fp32, bf16 = copy_root(template, tmp_path / "fp32"), copy_root(template, tmp_path / "bf16")
    assert extract(fp32, "--local") == 0
    assert extract(bf16, "--local", "--dtype", "bf16") == 0
    for a, b in zip(iter_samples(fp32 / "tokens"), iter_samples(bf16 / "tokens", expect={"dtype": "bfloat16"})):
        assert b.meta["storage"] == "uint16_bits" and b.patch.dtype == np.uint16 and a.patch.dtype == np.float32
        # bf16 autocast compute and bf16 storage: about 2-3 significant digits
        scale = np.abs(a.patch_tokens()).max()
        np.testing.assert_allclose(b.patch_tokens(), a.patch_tokens(), atol=0.05 * scale)
        assert not np.array_equal(b.patch_tokens(), a.patch_tokens())


def test_weights_file_gives_the_tokens_of_the_same_model(template, tmp_path, capsys):
    root = copy_root(template, tmp_path / "root")
    weights, config = tmp_path / "tiny.safetensors", tmp_path / "tiny.json"
    save_safetensors(random_model(tiny_config(), seed=0), weights, config)
    assert cli_main(["extract", "--root", str(root), "--weights", str(weights), "--config", str(config),
                     "--size", str(SIZE), "--squash-size", str(SQUASH), "--local"]) == 0
    from_file = list(iter_samples(root / "tokens"))
    assert {s.meta["model_id"] for s in from_file} == {"tiny"}
    ref = copy_root(template, tmp_path / "ref")
    assert extract(ref, "--local") == 0
    ref_samples = list(iter_samples(ref / "tokens"))
    assert [s.key for s in from_file] == [s.key for s in ref_samples]
    for a, b in zip(from_file, ref_samples):
        # same weights; the loaded tensors live in other memory, so SIMD paths may differ in the last bits
        np.testing.assert_allclose(a.patch_tokens(), b.patch_tokens(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(a.camera_tokens(), b.camera_tokens(), atol=1e-5, rtol=1e-5)
    assert from_file[0].meta["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert cli_main(["extract", "--root", str(root), "--weights", str(weights), "--local"]) == 2
    assert "--weights needs --config" in capsys.readouterr().err
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:-1000])
    assert cli_main(["extract", "--root", str(ref), "--weights", str(truncated), "--config", str(config),
                     "--overwrite"]) == 2  # refused in the driver: no Ray, and the existing shards stay
    assert str(truncated) in capsys.readouterr().err
    assert len(list(iter_samples(ref / "tokens"))) == 5


def test_corrupt_video_becomes_an_error_row_and_the_rest_is_extracted(ray_local, template, tmp_path):
    root = copy_root(template, tmp_path / "root")
    video = write_video_scene(root, tmp_path / "videos", "47333462", seed=12)
    good = video.read_bytes()
    video.write_bytes(good[: len(good) // 3] + b"\x00" * 4096)  # truncated upload with garbage after it
    assert extract(root, "--num-gpus", "1") == 2  # the test cluster has no GPU: refused before any work
    assert extract(root, "--workers", "2", "--batch-videos", "2") == 1
    rows = [r for r in read_errors(root / "errors.parquet") if r.stage == "extract"]
    assert [(r.dataset, r.scene_id, r.error_type) for r in rows] == [("arkitscenes", "47333462", "InputError")]
    assert rows[0].path == str(video) and "video" in rows[0].message
    keys = [k for shard in read_index(root / "tokens")["shards"] for k in shard["keys"]]
    assert keys == [scene_key(d, s) for d, s in DatasetRoot(root).scenes() if s != "47333462"]

    video.write_bytes(good)  # the video is fixed: the rerun extracts only that scene and clears its error row
    assert extract(root, "--local") == 0
    assert [r for r in read_errors(root / "errors.parquet") if r.stage == "extract"] == []
    keys = [k for shard in read_index(root / "tokens")["shards"] for k in shard["keys"]]
    assert sorted(keys) == sorted(scene_key(d, s) for d, s in DatasetRoot(root).scenes()) and len(set(keys)) == 6


def test_killed_actor_then_rerun_gives_every_scene_exactly_once(ray_local, template, clean_hashes, tmp_path):
    from ray import cloudpickle

    import extract_factories
    from pipeline.stages.run import extract_root

    cloudpickle.register_pickle_by_value(extract_factories)  # the actor process cannot import the test folder
    model = ModelSpec("random_tiny")
    options = ExtractOptions(input_size=SIZE, squash_size=SQUASH)
    run = dict(shard_bytes=100, progress=False)  # one sample per shard

    # The actor dies (os._exit) on its 4th batch and may not restart: the run stops with shards 0 and 1 complete
    # (scene 3 sat in the open shard, which is dropped like after a kill). One batch at a time in the actor, so
    # that batch 3 is surely finished when batch 4 kills the process.
    killed = copy_root(template, tmp_path / "killed")
    flag = tmp_path / "crash.flag"
    flag.touch()
    crashing = CrashingFactory(model, flag, crash_on_call=4, remove_flag=False)
    summary = extract_root(killed, model, options, Scheduling(batch_videos=1, retries=0, actor_concurrency=1),
                           encoder_factory=crashing, **run)
    assert summary.aborted and "rerun to resume" in summary.aborted
    index = read_index(killed / "tokens")
    all_keys = [scene_key(d, s) for d, s in DatasetRoot(killed).scenes()]
    assert [k for s in index["shards"] for k in s["keys"]] == all_keys[:2]
    assert not list((killed / "tokens").glob(".*.tmp"))

    flag.unlink()
    summary = extract_root(killed, model, options, Scheduling(batch_videos=1, local=True), **run)
    assert (summary.extracted, summary.skipped, summary.aborted) == (3, 2, None)
    assert [s.key for s in iter_samples(killed / "tokens")] == all_keys
    # the completed shards are a prefix of the clean run's, so the resumed run is byte-identical to it
    assert file_hashes(killed / "tokens") == clean_hashes

    # With restarts allowed, the dead actor is restarted, its batch retried, and the run completes on its own.
    retried = copy_root(template, tmp_path / "retried")
    flag.touch()
    crashing = CrashingFactory(model, flag, crash_on_call=2, remove_flag=True)
    summary = extract_root(retried, model, options, Scheduling(batch_videos=1, retries=1),
                           encoder_factory=crashing, **run)
    assert not flag.exists(), "the actor should have crashed once"
    assert (summary.extracted, summary.aborted) == (5, None)
    assert file_hashes(retried / "tokens") == clean_hashes  # in-process and Ray give the same bytes


def test_decode_follows_the_manifest_and_matches_the_preprocessing(template):
    from pipeline.core.frames import decode_colors
    from workers.cut3r.preprocess import PreprocessConfig
    from workers.extract import SceneJob, decode_scene

    root = DatasetRoot(template)
    dataset, scene_id = root.scenes("scannet")[1]
    scene_dir = root.scene_dir(dataset, scene_id)
    decoded = decode_scene(SceneJob(dataset, scene_id, scene_key(dataset, scene_id), str(scene_dir)),
                           ExtractOptions(input_size=SIZE, squash_size=SQUASH, with_frames=True))
    manifest = read_manifest(scene_dir)
    assert [r["rank"] for r in decoded.frames] == list(range(manifest.num_rows))
    images = decode_colors(manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), manifest))
    expected = preprocess_frames(np.stack(images), PreprocessConfig(size=SIZE, squash_size=SQUASH))
    assert torch.equal(torch.from_numpy(decoded.pixels), expected)
    assert decoded.pixels.shape == (manifest.num_rows, 3, SIZE, SIZE) and len(decoded.jpegs) == manifest.num_rows


KILLED_DRIVER = """
import sys
sys.path.insert(0, {here!r})
from extract_factories import CrashingFactory
from pipeline.stages.run import extract_root
from workers.extract import ExtractOptions, ModelSpec, Scheduling

model = ModelSpec("random_tiny")
extract_root({root!r}, model, ExtractOptions(input_size={size}, squash_size={squash}),
             Scheduling(batch_videos=1, local=True), shard_bytes=100, progress=False,
             encoder_factory=CrashingFactory(model, {flag!r}, crash_on_call=4, remove_flag=False))
raise SystemExit("the driver should have died on its 4th batch")
"""


def test_killed_driver_leaves_debris_that_the_rerun_cleans_up(template, clean_hashes, tmp_path):
    """The whole run dies (os._exit in the driver process, --local) with shard 2 half written: the rerun deletes
    the temporary file, keeps shards 0 and 1, and ends byte-identical to a clean run."""
    import subprocess
    import sys

    from pipeline.stages.run import extract_root

    model = ModelSpec("random_tiny")
    options = ExtractOptions(input_size=SIZE, squash_size=SQUASH)
    killed = copy_root(template, tmp_path / "killed")
    flag = tmp_path / "crash.flag"
    flag.touch()
    script = KILLED_DRIVER.format(here=str(Path(__file__).parent), root=str(killed), size=SIZE, squash=SQUASH,
                                  flag=str(flag))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    tokens = killed / "tokens"
    names = sorted(p.name for p in tokens.iterdir())
    # the half-written shard has a temporary name unique to the dead process: .shard-000002.tar.<pid>.<hex>.tmp
    assert re.fullmatch(r"\.shard-000002\.tar\.\d+\.[0-9a-f]{8}\.tmp", names[0]), names
    assert names[1:] == ["_done", "shard-000000.tar", "shard-000001.tar"]
    summary = extract_root(killed, model, options, Scheduling(batch_videos=1, local=True), shard_bytes=100,
                           progress=False)
    assert summary.removed_debris == [names[0]]
    assert (summary.extracted, summary.skipped) == (3, 2)
    assert file_hashes(tokens) == clean_hashes


def test_non_finite_points_or_poses_become_an_error_not_a_sample():
    from types import SimpleNamespace

    from workers.extract import DecodedScene, SceneError, SceneJob, encode_scenes, run_identity

    options = ExtractOptions(input_size=SIZE, squash_size=SQUASH, points="cut3r")
    identity = run_identity(ModelSpec("random_tiny").describe(), options)
    n, c, t = (SIZE // 16) ** 2, identity["token_width"], 2
    rows = [{"rank": i, "frame_index": i, "timestamp": 0.0, "camera_to_world": [0.0] * 16, "valid": True}
            for i in range(t)]
    scenes = [DecodedScene(SceneJob("scannet", f"scene000{i}_00", f"scannet_scene000{i}_00", "/nowhere"),
                           np.zeros((t, 3, SIZE, SIZE), np.float32), rows) for i in range(3)]
    points = torch.zeros(3, t, n, 3)
    points[1, 1, 3, 2] = float("nan")  # the second scene's point head diverged on one patch
    poses = torch.eye(4).repeat(3, t, 1, 1)
    poses[2, 1, 0, 3] = float("inf")   # the third scene's pose head diverged on one frame
    out = EncodedBatch(camera_tokens=torch.zeros(3, t, 1, c), patch_tokens=torch.zeros(3, t, n, c),
                       lengths=torch.tensor([t, t, t]), points=points, camera_poses=poses)
    encoder = SimpleNamespace(encode=lambda frames, points=False, keep_dtype=False: out)
    good, bad_points, bad_poses = encode_scenes(encoder, scenes, options, identity)
    assert good.points.shape == (t, n, 3)
    # a first pose that is "valid" but not a rotation (all zeros) is no pose: camera 0 is the world
    assert good.meta["points_frame"] == "camera0"
    assert [r["estimated_camera_to_world"] for r in good.frames] == [list(np.eye(4).ravel())] * t
    assert isinstance(bad_points, SceneError) and "non-finite points" in bad_points.message
    assert isinstance(bad_poses, SceneError) and "non-finite camera poses" in bad_poses.message


def test_token_codecs_of_the_stage_and_no_mixing_in_one_folder(template, tmp_path, capsys):
    """--token-dtype int8 stores codes and per-frame, per-channel scales that decode to the float32 tokens within half
    a step; the codec (and a bf16 compute precision) is part of the folder's identity: another one is refused and the
    shards stay untouched."""
    fp32, int8 = copy_root(template, tmp_path / "fp32"), copy_root(template, tmp_path / "int8")
    assert extract(fp32, "--local") == 0
    assert extract(int8, "--local", "--token-dtype", "int8") == 0
    pairs = zip(iter_samples(fp32 / "tokens"), iter_samples(int8 / "tokens", expect={"dtype": "int8"}))
    for a, b in pairs:
        assert b.meta["storage"] == "int8_scaled" and "compute_precision" not in b.meta
        assert b.patch.dtype == np.int8 and b.patch_scale.shape == (b.num_frames, 1, 32)
        assert (np.abs(b.patch_tokens() - a.patch_tokens()) <= 0.5 * b.patch_scale * (1 + 1e-5)).all()
        assert (np.abs(b.camera_tokens() - a.camera_tokens()) <= 0.5 * b.camera_scale * (1 + 1e-5)).all()
    before = file_hashes(int8 / "tokens")
    capsys.readouterr()
    assert extract(int8, "--local", "--token-dtype", "fp8_e4m3") == 2
    err = capsys.readouterr().err
    assert "dtype: int8 -> float8_e4m3" in err and "--rebuild" in err
    assert extract(int8, "--local", "--token-dtype", "int8", "--dtype", "bf16") == 2
    assert "compute_precision: null -> bf16" in capsys.readouterr().err
    assert file_hashes(int8 / "tokens") == before
    # bf16 compute stored losslessly as float32: recorded in the identity
    bf16 = copy_root(template, tmp_path / "bf16")
    assert extract(bf16, "--local", "--dtype", "bf16", "--token-dtype", "fp32") == 0
    sample = next(iter_samples(bf16 / "tokens", expect={"dtype": "float32", "compute_precision": "bf16"}))
    # float32 storage of bf16 values: every value is exactly a bf16 number
    values = sample.patch_tokens()
    np.testing.assert_array_equal(values.view(np.uint32) & 0xFFFF, 0)
