"""Pack round trip: training shards carry each training scene's tokens, frames, timing and all its QA; benchmark
scenes and their QA never enter; reruns are byte-identical and resume only what is missing."""
import io
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from trainer_factories import SceneSpec, build_root

from pipeline.core.atomic import read_json, sha256_file
from pipeline.cli import main as cli_main
from pipeline.core.frames import decode_image_bytes
from pipeline.core.layout import DatasetRoot
from pipeline.stages.pack import load_qa
from pipeline.core.train_samples import read_qa_counts
from pipeline.core.scene import read_manifest
from pipeline.core.tokens import iter_samples
from pipeline.core.shards import read_index
from pipeline.core.train_samples import SceneSample, iter_scene_samples
from pipeline.stages.qa import save_qa_file

SPECS = [SceneSpec("scannet", "scene0000_00", "train", 5),
         SceneSpec("scannet", "scene0001_00", "train", 4, with_jpegs=False),
         SceneSpec("scannet", "scene0002_00", "val", 3),
         SceneSpec("arkitscenes", "41069025", "train", 3)]
SHARD_MB = "3"


def _train_samples(root: DatasetRoot) -> dict[str, SceneSample]:
    index = read_index(root.path / "train_shards")
    out = {}
    for entry in index["shards"]:
        for sample in iter_scene_samples(str(root.path / "train_shards" / entry["file"])):
            out[sample.key] = sample
    return out


def _hashes(folder) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.tar"))}


@pytest.fixture()
def root(tmp_path):
    return build_root(tmp_path / "root", SPECS, max_shard_bytes=3 << 20)


def test_pack_round_trip_keeps_benchmark_scenes_out(root):
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 0
    samples = _train_samples(root)
    assert sorted(samples) == sorted(s.key for s in SPECS if s.split == "train")
    val_records = [json.loads(line) for line in (root.qa_dir / "vsibench" / "val.jsonl").read_text().splitlines()]
    train_records = [json.loads(line) for line in (root.qa_dir / "vsibench" / "train.jsonl").read_text().splitlines()]
    val_keys = {r["qa_key"] for r in val_records}
    tokens = {s.key: s for s in iter_samples(root.tokens_dir)}
    for key, sample in samples.items():
        expected = sorted((r for r in train_records if r["scene_key"] == key), key=lambda r: r["qa_key"])
        assert [{k: v for k, v in r.items() if k != "split"} for r in sample.qa] == expected
        assert all(r["split"] == "train" for r in sample.qa)
        assert not {r["qa_key"] for r in sample.qa} & val_keys
        token = tokens[key]
        assert np.array_equal(np.load(io.BytesIO(sample.members["patch.npy"])), token.patch)
        assert np.array_equal(np.load(io.BytesIO(sample.members["camera.npy"])), token.camera)
        assert json.loads(sample.members["frames.json"]) == token.frames
        manifest = read_manifest(root.scene_dir(token.meta["dataset"], token.meta["scene_id"]))
        # Frames at 10.0 + 0.5 s * index over 4 frames: the video lasts 4 x 0.5 = 2 s (frames / fps, as LLaVA-Video
        # reads it); times count from its first frame.
        assert sample.video["duration_s"] == pytest.approx(2.0)
        assert sample.video["frame_times_s"] == pytest.approx([t - 10.0 for t in manifest["timestamp"].to_pylist()])
        jpegs = [sample.members[f"frame_{i:03d}.jpg"] for i in range(token.num_frames)]
        if token.jpegs is not None:
            assert jpegs == token.jpegs
        else:   # decoded from the scene's PNG frames of the manifest, squashed to 384x384
            for jpeg, frame_index in zip(jpegs, manifest["frame_index"].to_pylist()):
                png = cv2.cvtColor(cv2.imread(str(root.path / "raw" / key / f"frame_{frame_index:03d}.png")),
                                   cv2.COLOR_BGR2RGB)
                expect = np.asarray(Image.fromarray(png).resize((384, 384), Image.Resampling.BICUBIC),
                                    dtype=np.float32)
                got = decode_image_bytes(jpeg, key).astype(np.float32)
                assert got.shape == (384, 384, 3) and np.abs(got - expect).mean() < 8.0
    counts = read_qa_counts(root.path / "train_shards")
    assert {k: n for shard in counts.values() for k, n in shard.items()} == {k: len(s.qa) for k, s in samples.items()}
    assert read_json(root.info_path)["stages"]["pack"]["counts"]["benchmark_scenes_left_out"] == 1


def test_pack_is_reproducible_and_resumes_only_missing_scenes(root):
    out = root.path / "train_shards"
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 0
    first = _hashes(out)
    index_before = (out / "index.json").read_bytes()
    assert len(first) == 3                                       # one scene per shard at this size
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 0
    assert _hashes(out) == first and (out / "index.json").read_bytes() == index_before
    # A killed run: the last shard lost its marker and a temporary file is left behind.
    (out / "_done" / "shard-000002.json").unlink()
    (out / ".shard-000003.tar.12345.0badcafe.tmp").write_bytes(b"partial")
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 0
    assert _hashes(out) == first and (out / "index.json").read_bytes() == index_before
    assert not (out / ".shard-000003.tar.12345.0badcafe.tmp").exists()
    # A question file edited behind the qa stage's back is refused, naming it.
    train_qa = root.qa_dir / "vsibench" / "train.jsonl"
    records = [json.loads(line) for line in train_qa.read_text().splitlines()]
    train_qa.write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 2
    # Remade by the qa stage: pack refuses its changed input until --rebuild (--overwrite, its former name).
    save_qa_file(root, "vsibench", "train", records[:-1])
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 2
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB, "--overwrite"]) == 0
    assert sum(len(s.qa) for s in _train_samples(root).values()) == 11


def test_a_scene_with_training_and_benchmark_qa_is_a_split_leak(root):
    val = root.qa_dir / "vsibench" / "val.jsonl"
    leaked = json.loads((root.qa_dir / "vsibench" / "train.jsonl").read_text().splitlines()[0])
    val.write_text(val.read_text() + json.dumps({**leaked, "id": 99}) + "\n")
    with pytest.raises(Exception, match="split leak"):
        load_qa(root)
    assert cli_main(["pack", "--root", str(root.path)]) == 2
    assert not (root.path / "train_shards").exists()
    shutil.rmtree(root.qa_dir)
    assert cli_main(["pack", "--root", str(root.path)]) == 2


def test_pack_with_precomputed_vision_features_feeds_the_trainer(root):
    import torch

    from workers.trainer.tokenizer import ByteTokenizer

    from workers.trainer.data import ShardStream, decode_scene, list_train_shards, pixels_from_jpegs
    from workers.trainer.model import ModelConfig, build_model

    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB, "--vision-features", "tiny"]) == 0
    samples = _train_samples(root)
    tower = build_model(ModelConfig.tiny(), lora=False).eval()
    for key, sample in samples.items():
        assert "vision.npy" in sample.members and not any(n.startswith("frame_") for n in sample.members)
        features = decode_scene(sample)["vision_features"]
        assert features.shape == (2, 729, 32)
        if key == "scannet_scene0000_00":   # the stored features are the tower's on the token shard's JPEGs
            token = next(s for s in iter_samples(root.tokens_dir) if s.key == key)
            with torch.no_grad():
                expect = tower.vision_features(torch.from_numpy(pixels_from_jpegs(token.jpegs, key)))
            torch.testing.assert_close(features, expect, atol=0.005 * float(expect.abs().max()), rtol=0.01)
    shards, _ = list_train_shards(root.path / "train_shards")
    batch = next(iter(ShardStream(shards, tokenizer=ByteTokenizer(), micro_batch=2, shuffle_buffer=2)))
    model = build_model(ModelConfig.tiny(vision_features=True))
    loss, count = model(batch)
    assert torch.isfinite(loss) and count > 0 and "pixel_values" not in batch


def test_a_scene_that_fails_becomes_an_error_row_and_the_rest_is_packed(root):
    from pipeline.core.errors import read_errors

    # scene0001_00's token sample has no JPEGs: pack decodes its frames from the raw PNGs, one of which is damaged.
    for png in (root.path / "raw" / "scannet_scene0001_00").glob("*.png"):
        png.write_bytes(b"not a png")
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 1
    assert sorted(_train_samples(root)) == ["arkitscenes_41069025", "scannet_scene0000_00"]
    rows = [r for r in read_errors(root.errors_path) if r.stage == "pack"]
    assert [(r.dataset, r.scene_id, r.error_type) for r in rows] == [("scannet", "scene0001_00", "InputError")]
    assert "scene0001_00" in rows[0].path


def _stripes(height=968, width=1296):
    """Two-pixel black/white stripes: a frame where OpenCV's cubic (no antialiasing) aliases badly when shrinking."""
    y, x = np.mgrid[:height, :width]
    return np.repeat((((x // 2 + y // 2) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)


def test_frames_are_squashed_as_siglips_processor_pil_bicubic():
    """SigLIP's image processor (LLaVA's SigLipImageProcessor) squashes with PIL bicubic, as extract does for the
    token shards' JPEGs; pack's fallback, the trainer's resize and the vision-feature encoder must do the same."""
    from pipeline.core.images import jpeg_frames, squash_rgb
    from workers.cut3r.preprocess import squash_uint8
    from workers.trainer.data import pixels_from_jpegs

    frame = _stripes()
    pil = np.asarray(Image.fromarray(frame).resize((384, 384), Image.Resampling.BICUBIC))
    assert np.array_equal(squash_rgb(frame), pil)
    assert np.array_equal(squash_rgb(frame), squash_uint8(frame[None], 384)[0])   # extract's squash
    got = decode_image_bytes(jpeg_frames([frame], "t")[0], "t").astype(np.float32)
    assert np.abs(got - pil).mean() < 4.0
    ok, big = cv2.imencode(".png", frame)   # lossless, not 384x384: the trainer squashes it itself
    pixels = pixels_from_jpegs([big.tobytes()], "t")[0]
    assert np.abs(pixels - ((pil.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)).max() < 1e-6


def test_video_timing_follows_llava_videos_reader():
    """process_video_with_decord: video_time = total_frames / fps, frame_time = frame index / fps."""
    from pipeline.core.train_samples import video_timing

    fps, total = 24.0, 100
    stamps = 1000.0 + np.arange(total) / fps
    picked = np.linspace(0, total - 1, 8, dtype=int)
    timing = video_timing(stamps, stamps[picked])
    assert timing["duration_s"] == pytest.approx(total / fps, abs=1e-6)
    assert timing["frame_times_s"] == pytest.approx((picked / fps).tolist(), abs=1e-6)
    assert video_timing(np.array([5.0]), np.array([5.0])) == {"duration_s": 0.0, "frame_times_s": [0.0]}
    assert video_timing(np.array([0.0, np.nan]), np.array([0.0]))["duration_s"] is None


def test_vision_features_from_a_bare_siglip_folder(tmp_path):
    """``pack --vision-features <SigLIP folder>`` (its help names that): LLaVA's tower is SigLIP's second-to-last
    layer, pre post-layernorm, on frames squashed with PIL bicubic and normalised with mean 0.5 / std 0.5."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from workers.trainer.vision import vision_encoder

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=384,
                  patch_size=14)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    siglip.save_pretrained(str(tmp_path / "siglip"))
    encode, fingerprint = vision_encoder(str(tmp_path / "siglip"))
    frame = _stripes(500, 700)
    got = encode([frame])
    pil = np.asarray(Image.fromarray(frame).resize((384, 384), Image.Resampling.BICUBIC))
    pixels = (torch.from_numpy(pil).permute(2, 0, 1)[None].float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        expect = siglip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert got.shape == (1, 729, 32) and fingerprint
    torch.testing.assert_close(torch.from_numpy(got), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("token_dtype", ["float32", "bfloat16", "float16", "float8_e4m3", "int8"])
def test_every_token_codec_reaches_the_trainer_as_the_decoded_tokens(tmp_path, token_dtype):
    """Pack carries the codec's members (the scales of float8_e4m3 / int8 included) into the training shards, and
    the trainer's decode gives exactly the float32 tokens the token shard decodes to, camera token first."""
    from workers.trainer.data import decode_scene

    root = build_root(tmp_path / "root", SPECS[:2], token_dtype=token_dtype)
    assert cli_main(["pack", "--root", str(root.path), "--max-shard-mb", SHARD_MB]) == 0
    tokens = {s.key: s for s in iter_samples(root.tokens_dir)}
    scaled = token_dtype in ("float8_e4m3", "int8")
    for key, sample in _train_samples(root).items():
        assert ("patch_scale.npy" in sample.members) == scaled and ("camera_scale.npy" in sample.members) == scaled
        geometry = decode_scene(sample)["geometry_tokens"].numpy()
        token = tokens[key]
        assert geometry.dtype == np.float32
        np.testing.assert_array_equal(geometry, np.concatenate([token.camera_tokens(), token.patch_tokens()], axis=1))
