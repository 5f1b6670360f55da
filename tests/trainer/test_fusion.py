"""The fusion block reproduces the fixture made with VLM-3R's code, loading its parameter names strictly."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from workers.trainer.fusion import FusionBlock, pool_2x2

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "fusion"


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.exists():
        pytest.skip(f"fusion fixture not found at {FIXTURE}")
    config = json.loads((FIXTURE / "config.json").read_text())
    io = dict(np.load(FIXTURE / "fusion_tiny_io.npz"))
    return config, load_file(FIXTURE / "fusion_tiny.safetensors"), io


def test_fusion_block_matches_fixture_in_eval_mode(fixture):
    config, state, io = fixture
    block = FusionBlock(config["d_clip"], config["d_spatial"], config["d_attn"], config["num_heads"], config["dropout"])
    block.load_state_dict(state, strict=True)
    assert sorted(block.state_dict()) == sorted(config["keys"])
    block.eval()
    with torch.no_grad():
        fused = block(torch.from_numpy(io["visual_tokens"]), torch.from_numpy(io["geometry_tokens"]))
        pooled = pool_2x2(fused)
    np.testing.assert_allclose(fused.numpy(), io["fused"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled.numpy(), io["fused_pooled_14x14"], atol=1e-5, rtol=0)


def test_frames_do_not_attend_across_each_other(fixture):
    config, state, io = fixture
    block = FusionBlock(config["d_clip"], config["d_spatial"], config["d_attn"], config["num_heads"]).eval()
    block.load_state_dict(state)
    visual, geometry = torch.from_numpy(io["visual_tokens"]), torch.from_numpy(io["geometry_tokens"]).clone()
    with torch.no_grad():
        before = block(visual, geometry)
        geometry[2] = torch.randn(geometry[2].shape, generator=torch.Generator().manual_seed(0))  # only frame 2 changes
        after = block(visual, geometry)
    torch.testing.assert_close(after[:2], before[:2], rtol=0, atol=0)
    assert (after[2] - before[2]).abs().max() > 1e-3


def test_pool_2x2_is_bilinear_on_a_ramp():
    # A linear ramp over the 27x27 grid stays a linear ramp after bilinear resampling to 14x14.
    y, x = torch.meshgrid(torch.arange(27.0), torch.arange(27.0), indexing="ij")
    tokens = torch.stack([x, y], dim=-1).reshape(1, 729, 2)
    pooled = pool_2x2(tokens).reshape(14, 14, 2)
    # align_corners=False: output pixel j samples input coordinate (j + 0.5) * 27/14 - 0.5 (clamped at the border).
    expect = torch.clamp((torch.arange(14.0) + 0.5) * 27 / 14 - 0.5, 0, 26)
    torch.testing.assert_close(pooled[0, 1:13, 0], expect[1:13], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[1:13, 0, 1], expect[1:13], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="27x27"):
        pool_2x2(torch.zeros(1, 730, 2))
