"""``vlm3r-data cut3r`` reproduces the golden fixture outputs through the real command line entry point."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main

TOLERANCE = {"camera_token": 2e-4, "patch_tokens": 2e-4, "pts3d_in_self_view": 2e-5, "pts3d_in_other_view": 2e-5,
             "conf_self": 2e-5, "conf": 2e-5, "rgb": 2e-5, "camera_pose": 5e-5}


@pytest.mark.parametrize("suffix", ["", "_32x48"])
def test_cli_reproduces_fixture(tiny_dir, tmp_path, suffix):
    out = tmp_path / "outputs.npz"
    rc = main(["cut3r", "--config", str(tiny_dir / "config.json"), "--weights", str(tiny_dir / "model.safetensors"),
               "--inputs", str(tiny_dir / f"inputs{suffix}.npz"), "--out", str(out), "--debug"])
    assert rc == 0
    ours, ref = np.load(out), np.load(tiny_dir / f"outputs{suffix}.npz")
    assert set(ours.files) == set(ref.files)
    for name, tol in TOLERANCE.items():
        assert ours[name].shape == ref[name].shape and ours[name].dtype == np.float32, name
        assert np.abs(ours[name] - ref[name]).max() <= tol, name
    for name in ref.files:
        if name.startswith("dbg_"):
            assert ours[name].shape == ref[name].shape, name
            assert np.abs(ours[name] - ref[name]).max() <= 2e-4, name
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_official_checkpoint_and_errors(tiny_dir, tmp_path, capsys):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    kwargs = ", ".join(f"{k}={_py(v)}" for k, v in cfg["constructor_kwargs"].items())
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": load_file(str(tiny_dir / "model.safetensors")),
                "args": argparse.Namespace(model=f"ARCroco3DStereo(ARCroco3DStereoConfig({kwargs}))")}, ckpt)
    inputs = str(tiny_dir / "inputs.npz")
    out = tmp_path / "tokens.npz"
    # The fixture's reduced DPT sizes are not expressible in the constructor string: --config supplies them.
    assert main(["cut3r", "--checkpoint", str(ckpt), "--config", str(tiny_dir / "config.json"),
                 "--inputs", inputs, "--out", str(out), "--tokens-only"]) == 0
    tokens, ref = np.load(out), np.load(tiny_dir / "outputs.npz")
    assert sorted(tokens.files) == ["camera_token", "patch_tokens"]
    assert np.abs(tokens["patch_tokens"] - ref["patch_tokens"]).max() <= 2e-4
    # Without it the official DPT sizes apply and the first mismatched key is named.
    assert main(["cut3r", "--checkpoint", str(ckpt), "--inputs", inputs, "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "shape mismatch for 'downstream_head.dpt_self.scratch.layer1_rn.weight'" in err
    assert main(["cut3r", "--weights", str(tiny_dir / "model.safetensors"), "--inputs", inputs,
                 "--out", str(tmp_path / "y.npz")]) == 2
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "y.npz").exists()


def _py(value):
    """A JSON config value as Python source for the constructor string ("inf" -> inf, lists -> tuples)."""
    if value in ("inf", "-inf"):
        return value
    if isinstance(value, list):
        return "(" + ", ".join(_py(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)
