"""Region prompts and per-patch points through a hand-built training sample: pack_members -> a real shard -> the
trainer's loader, which returns each region's mask on the 27x27 patch grid."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.masks import encode_mask, mask_patch_coverage
from pipeline.core.shards import ShardWriter
from pipeline.core.tokens import TokenSample, encode_tokens
from pipeline.core.train_samples import iter_scene_samples, pack_members
from workers.trainer.data import ShardStream, decode_scene, region_patch_masks
from workers.trainer.tokenizer import ByteTokenizer

KEY, T, N, C, W, H = "scannet_scene0007_00", 2, 729, 8, 64, 48


def _rect(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _sample() -> TokenSample:
    rng = np.random.default_rng(0)
    meta = {"key": KEY, "dataset": "scannet", "scene_id": "scene0007_00", "model_id": "m", "checkpoint_sha256": "0" * 64,
            "dtype": "float32", "storage": "native", "num_frames": T, "num_patches": N, "token_width": C,
            "input_size": 432, "with_points": True, "points_source": "depth", "with_frames": True, "code_version": "t"}
    frames = [{"rank": i, "frame_index": 5 * i, "timestamp": i * 0.5, "camera_to_world": list(np.eye(4).ravel()),
               "valid": True} for i in range(T)]
    world = rng.normal(size=(T, N, 3)).astype(np.float32)
    jpegs = [cv2.imencode(".jpg", rng.integers(0, 255, (384, 384, 3), dtype=np.uint8))[1].tobytes() for _ in range(T)]
    return TokenSample(KEY, encode_tokens(rng.normal(size=(T, 1, C)), "float32"),
                       encode_tokens(rng.normal(size=(T, N, C)), "float32"), frames, meta, points=world, jpegs=jpegs,
                       points_cam0=world + 1, points_valid=rng.random((T, N)) < 0.9)


REGION_A, REGION_B = _rect(10, 8, 32, 24), _rect(40, 30, 64, 48)
RECORDS = [
    {"id": 0, "bench": "regionbench", "task": "region_distance", "question_type": "region_distance",
     "qa_key": f"{KEY}/region_distance/0000", "scene_key": KEY,
     "question": "Measuring from the closest point of each object, what is the direct distance between Region [0] "
                 "and Region [1] (in meters)?", "options": None, "ground_truth": "1.2", "answer_text": "1.2",
     "regions": [{"instance_id": 3, "category": "chair", "frame_rank": 1, "bbox_xyxy": [10, 8, 31, 23],
                  "rle": encode_mask(REGION_A)},
                 {"instance_id": 9, "category": "chair", "frame_rank": 0, "bbox_xyxy": [40, 30, 63, 47],
                  "rle": encode_mask(REGION_B)}]},
    {"id": 1, "bench": "vsibench", "task": "object_counting", "question_type": "object_counting",
     "qa_key": f"{KEY}/object_counting/0000", "scene_key": KEY, "question": "How many chair(s) are in this room?",
     "options": None, "ground_truth": "2", "answer_text": "2"},
]


def test_patch_coverage_of_a_mask_by_hand():
    """Each cell's fraction, counted pixel by pixel with the frame contract's cell of every pixel centre."""
    expected = np.zeros((27, 27))
    cell_pixels = np.zeros((27, 27))
    for v in range(H):
        for u in range(W):
            i, j = int((v + 0.5) * 27 // H), int((u + 0.5) * 27 // W)
            cell_pixels[i, j] += 1
            expected[i, j] += REGION_A[v, u]
    np.testing.assert_allclose(mask_patch_coverage(REGION_A), expected / cell_pixels, atol=1e-6)
    assert (mask_patch_coverage(REGION_A) * cell_pixels).sum() == pytest.approx(REGION_A.sum(), abs=1e-4)


def test_pack_carries_points_and_regions_and_the_loader_returns_patch_grid_masks(tmp_path):
    sample = _sample()
    timing = {"duration_s": 1.0, "frame_times_s": [0.0, 0.5]}
    with ShardWriter(tmp_path, max_shard_bytes=1 << 30) as writer:
        writer.write_members(KEY, pack_members(sample, RECORDS, timing, jpegs=sample.jpegs), None)
    shard = str(tmp_path / "shard-000000.tar")
    (scene,) = list(iter_scene_samples(shard))
    assert {"points.npy", "points_cam0.npy", "points_valid.npy"} <= set(scene.members)
    assert scene.qa[0]["regions"] == RECORDS[0]["regions"] and scene.meta["points_source"] == "depth"
    tensors = decode_scene(scene)
    assert torch.equal(tensors["patch_points"], torch.from_numpy(sample.points))
    assert torch.equal(tensors["patch_points_valid"], torch.from_numpy(sample.points_valid))

    masks, frames = region_patch_masks(RECORDS[0])
    assert masks.shape == (2, 27, 27) and frames.tolist() == [1, 0]
    np.testing.assert_array_equal(masks[0].numpy(), mask_patch_coverage(REGION_A))
    np.testing.assert_array_equal(masks[1].numpy(), mask_patch_coverage(REGION_B))
    assert masks[1, -1, -1] == 1.0 and masks[1, 0, 0] == 0.0      # region B fills the bottom-right corner

    stream = ShardStream([shard], tokenizer=ByteTokenizer(), micro_batch=2, shuffle_buffer=1)
    batch = next(iter(stream))
    by_id = {i.split("/")[-1]: k for k, i in enumerate(batch["ids"])}
    region_item, plain_item = by_id["0"], by_id["1"]
    assert torch.equal(batch["region_masks"][region_item], masks)
    assert batch["region_frames"][region_item].tolist() == [1, 0]
    assert batch["region_masks"][plain_item].shape == (0, 27, 27) and batch["region_frames"][plain_item].numel() == 0
    assert batch["patch_points"].shape == (2 * T, N, 3) and batch["patch_points_valid"].dtype == torch.bool
