"""CUT3R points and estimated camera poses for plain videos (no sensor poses): a folder of real videos through
``ingest --dataset video`` and ``extract --points cut3r`` (the real tiny CUT3R with random weights), checked against
the model run alone on the same frames, and carried unchanged into a training sample."""
import shutil

import numpy as np
import pytest
from video_factories import marked_image, write_video

from pipeline.cli import main as cli_main
from pipeline.core.atomic import dumps_json
from pipeline.core.frames import decode_colors
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import manifest_frames, read_manifest
from pipeline.core.schemas import FRAMES_SCHEMA, read_table
from pipeline.core.shards import ShardWriter
from pipeline.core.tokens import iter_samples
from pipeline.core.train_samples import iter_scene_samples, pack_members
from workers.cut3r import Cut3rEncoder, PreprocessConfig, preprocess_frames, random_model, tiny_config

SIZE = 64                      # tiny input side: 4 x 4 patches
EXTRACT = ["--random-tiny", "--local", "--size", str(SIZE), "--squash-size", str(SIZE)]


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """torch on one thread (see tests/conftest.py)."""


def _model_alone(root: DatasetRoot, dataset: str, scene_id: str):
    """The scene's manifest frames through the model alone (a batch of one), outside the stage."""
    scene_dir = root.scene_dir(dataset, scene_id)
    rows = manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), read_manifest(scene_dir))
    pixels = preprocess_frames(np.stack(decode_colors(rows)), PreprocessConfig(size=SIZE, squash_size=SIZE))
    return Cut3rEncoder(random_model(tiny_config(), seed=0)).encode([pixels], points=True)


def test_videos_get_points_in_camera0_and_estimated_poses(tmp_path):
    raw, root_path = tmp_path / "videos", tmp_path / "root"
    write_video(raw / "arkitscenes" / "41069025.mp4", [marked_image(i) for i in range(10)])
    portrait = [np.ascontiguousarray(np.rot90(marked_image(i, 96, 64), 1)) for i in range(9)]
    write_video(raw / "phone" / "IMG_0001.MOV", portrait, rotation_degrees=-90)
    assert cli_main(["ingest", "--dataset", "video", "--raw", str(raw), "--out", str(root_path), "--local",
                     "--num-frames", "6"]) == 0
    plain_path = shutil.copytree(root_path, tmp_path / "plain")

    assert cli_main(["extract", "--root", str(root_path), *EXTRACT, "--points", "cut3r"]) == 0
    root = DatasetRoot(root_path)
    samples = list(iter_samples(root.tokens_dir))
    assert [s.key for s in samples] == ["video_arkitscenes__41069025", "video_phone__IMG_0001"]
    for sample in samples:
        t, n = sample.num_frames, (SIZE // 16) ** 2
        assert t == 6
        assert (sample.meta["points_source"], sample.meta["estimated_poses"], sample.meta["points_frame"]) == \
            ("cut3r", "cut3r", "camera0")
        # no sensor pose: camera 0 is the world, and every point the model gives is kept
        assert sample.points_valid.shape == (t, n) and sample.points_valid.all()
        assert np.isfinite(sample.points).all() and np.array_equal(sample.points, sample.points_cam0)
        assert sample.points.any()
        # the sensor pose stays missing; the model's estimate is beside it, marked as such
        assert all(row["camera_to_world"] == [None] * 16 and row["valid"] is False for row in sample.frames)
        assert {row["estimated_pose_source"] for row in sample.frames} == {"cut3r"}
        estimated = np.array([row["estimated_camera_to_world"] for row in sample.frames]).reshape(t, 4, 4)
        rotations = estimated[:, :3, :3]
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (t, 3, 3)),
                                   atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
        np.testing.assert_array_equal(estimated[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (t, 4)))
        # exactly the model's own outputs (batched in lock-step vs alone: float32 reduction order only)
        alone = _model_alone(root, sample.meta["dataset"], sample.meta["scene_id"])
        np.testing.assert_allclose(estimated, alone.camera_poses[0].double().numpy(), atol=1e-4)
        np.testing.assert_allclose(sample.points_cam0, alone.points[0].numpy(), atol=1e-4)

    # pack carries frames.json as it is
    sample = samples[1]
    record = {"id": 0, "bench": "vsibench", "task": "object_counting", "question_type": "object_counting",
              "qa_key": f"{sample.key}/object_counting/0000", "scene_key": sample.key, "question": "How many?",
              "options": None, "ground_truth": "2", "answer_text": "2"}
    jpegs = [b"\xff\xd8 not decoded here"] * sample.num_frames
    with ShardWriter(tmp_path / "train", max_shard_bytes=1 << 30) as writer:
        writer.write_members(sample.key, pack_members(sample, [record], {"duration_s": None, "frame_times_s": None},
                                                      jpegs=jpegs), None)
    (packed,) = list(iter_scene_samples(str(tmp_path / "train" / "shard-000000.tar")))
    assert packed.members["frames.json"] == dumps_json(sample.frames).encode()
    assert packed.meta["points_frame"] == "camera0" and packed.meta["estimated_poses"] == "cut3r"

    # without --points cut3r the frames are the manifest rows alone, and meta says nothing of poses or frames
    assert cli_main(["extract", "--root", str(plain_path), *EXTRACT]) == 0
    for sample in iter_samples(DatasetRoot(plain_path).tokens_dir):
        assert sample.points is None and not {"estimated_poses", "points_frame"} & set(sample.meta)
        assert all(set(row) == {"rank", "frame_index", "timestamp", "camera_to_world", "valid"}
                   for row in sample.frames)


def test_a_diverged_pose_head_is_an_error_row_and_the_other_video_goes_on(tmp_path):
    from pipeline.core.errors import read_errors
    from pipeline.stages.run import extract_root
    from workers.extract import ExtractOptions, ModelSpec, Scheduling

    raw, root_path = tmp_path / "videos", tmp_path / "root"
    for name in ("a", "b"):
        write_video(raw / f"{name}.mp4", [marked_image(i) for i in range(4)])
    assert cli_main(["ingest", "--dataset", "video", "--raw", str(raw), "--out", str(root_path), "--local",
                     "--num-frames", "4"]) == 0

    class DivergingPoses:
        """The real encoder, whose pose head gives NaN for the second video of each batch."""

        def __init__(self, options):
            self.inner = ModelSpec("random_tiny").build_encoder(options)

        def encode(self, frames, **kwargs):
            out = self.inner.encode(frames, **kwargs)
            if len(frames) > 1:
                out.camera_poses = out.camera_poses.clone()   # an inference tensor: changed on a copy
                out.camera_poses[1, 0, 0, 0] = float("nan")
            return out

    options = ExtractOptions(input_size=SIZE, squash_size=SIZE, points="cut3r")
    summary = extract_root(root_path, ModelSpec("random_tiny"), options, Scheduling(batch_videos=2, local=True),
                           encoder_factory=DivergingPoses, progress=False)
    assert summary.extracted == 1
    rows = read_errors(DatasetRoot(root_path).errors_path)
    assert [(r.scene_id, r.error_type) for r in rows if r.stage == "extract"] == [("b", "NonFiniteTokens")]
    assert "non-finite camera poses" in rows[-1].message
    (sample,) = list(iter_samples(DatasetRoot(root_path).tokens_dir))
    assert sample.key == "video_a" and sample.points_valid.all()
