"""CUT3R checkpoint loading: official layout against both manifests, safe unpickling, strict key/shape errors."""
from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.cut3r import (Cut3rCheckpointError, expected_shapes, load_manifest, load_model, random_model,
                           save_safetensors, tiny_config)

MANIFESTS = ("cut3r_512_dpt_4_64", "cut3r_224_linear_4")


def official_file(path, shapes, model_str, args=None):
    """An official-layout checkpoint whose tensors are all stride-0 views of one float: real file, tiny size."""
    one = torch.zeros(1)
    state_dict = {k: one.expand(*shape) for k, shape in shapes.items()}
    torch.save({"model": state_dict, "args": args or argparse.Namespace(model=model_str, lr=1e-4), "epoch": 1}, path)
    return path


@pytest.mark.parametrize("name", MANIFESTS)
def test_model_matches_manifest(manifest_path, name):
    manifest = load_manifest(manifest_path(name))
    expected = expected_shapes(manifest.config)
    assert list(expected) == list(manifest.shapes)  # same keys, same (official) order
    assert expected == manifest.shapes
    assert all(k.endswith("weight") and ".scratch.layer_rn." in k for k in manifest.aliases)


@pytest.mark.parametrize("name", MANIFESTS)
def test_official_layout_loads_against_manifest(manifest_path, tmp_path, name):
    path = manifest_path(name)
    manifest = load_manifest(path)
    data = json.loads(path.read_text())
    ckpt = official_file(tmp_path / f"{name}.pth", manifest.shapes, data["model_str"])
    model = load_model(ckpt, manifest=manifest)
    assert sum(p.numel() for p in model.parameters()) == data["total_params"]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == manifest.shapes
    assert model.cfg.head_type == ("dpt" if "dpt" in name else "linear")


def test_official_layout_with_omegaconf_args(manifest_path, tmp_path, monkeypatch):
    """Hydra-trained checkpoints pickle an OmegaConf DictConfig; it is rebuilt from inert stand-ins."""
    package = types.ModuleType("omegaconf")
    dictconfig = types.ModuleType("omegaconf.dictconfig")
    nodes = types.ModuleType("omegaconf.nodes")

    class DictConfig:
        pass

    class AnyNode:
        pass

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    AnyNode.__module__, AnyNode.__qualname__ = "omegaconf.nodes", "AnyNode"
    dictconfig.DictConfig, nodes.AnyNode = DictConfig, AnyNode
    for mod in (package, dictconfig, nodes):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    manifest = load_manifest(manifest_path("cut3r_224_linear_4"))
    args = DictConfig()
    node = AnyNode()
    node.__dict__.update(_val=json.loads(manifest.path.read_text())["model_str"], _parent=args)
    args.__dict__.update(_metadata=None, _parent=None, _content={"model": node, "lr": 1e-4})
    ckpt = official_file(tmp_path / "omega.pth", manifest.shapes, "", args=args)
    for mod in (package, dictconfig, nodes):  # loading must not need the real classes
        monkeypatch.delitem(sys.modules, mod.__name__)
    assert load_model(ckpt).cfg.head_type == "linear"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cut3r_test_pwned",))


class _UnknownArgs:
    def __init__(self):
        self.model = "x"


@pytest.mark.parametrize("args", [_Exploit(), _UnknownArgs()], ids=["reduce-os.system", "unknown-class"])
def test_refuses_non_allowlisted_objects(tmp_path, args):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": args}, path)
    with pytest.raises(Cut3rCheckpointError, match="refused to unpickle") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert not os.path.exists("/tmp/cut3r_test_pwned")


def test_wrong_key_shape_and_missing_key_are_named(tiny_dir, tmp_path):
    config = tiny_dir / "config.json"
    weights = load_file(str(tiny_dir / "model.safetensors"))

    def write(name, tensors):
        path = tmp_path / name
        save_file(tensors, str(path))
        return path

    renamed = dict(weights)
    renamed["dec_blocks.0.attn.qkv.wieght"] = renamed.pop("dec_blocks.0.attn.qkv.weight")
    path = write("renamed.safetensors", renamed)
    with pytest.raises(Cut3rCheckpointError) as err:
        load_model(path, config)
    assert str(path) in str(err.value)
    assert "missing key 'dec_blocks.0.attn.qkv.weight'" in str(err.value)
    assert "unexpected key 'dec_blocks.0.attn.qkv.wieght'" in str(err.value)

    reshaped = dict(weights)
    reshaped["enc_norm.weight"] = torch.zeros(65)
    with pytest.raises(Cut3rCheckpointError, match=r"shape mismatch for 'enc_norm.weight': file \[65\] vs"):
        load_model(write("reshaped.safetensors", reshaped), config)

    dropped = {k: v for k, v in weights.items() if k != "pose_token"}
    with pytest.raises(Cut3rCheckpointError, match="missing key 'pose_token'"):
        load_model(write("dropped.safetensors", dropped), config)

    # An absent DPT alias is filled from its original; a differing one is refused.
    no_alias = {k: v for k, v in weights.items() if ".scratch.layer_rn." not in k}
    load_model(write("no_alias.safetensors", no_alias), config)
    bad_alias = dict(weights)
    bad_alias["downstream_head.dpt_self.scratch.layer_rn.0.weight"] = torch.zeros_like(
        weights["downstream_head.dpt_self.scratch.layer1_rn.weight"])
    with pytest.raises(Cut3rCheckpointError, match="alias"):
        load_model(write("bad_alias.safetensors", bad_alias), config)

    # Against a manifest: the tiny weights are not the official architecture.
    with pytest.raises(Cut3rCheckpointError, match="manifest cut3r_512_dpt_4_64.manifest.json"):
        load_model(tiny_dir / "model.safetensors", config,
                   manifest=tiny_dir.parent / "cut3r_512_dpt_4_64.manifest.json")


def test_truncated_files_are_named(tiny_dir, tmp_path, manifest_path):
    data = (tiny_dir / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Cut3rCheckpointError, match="truncated or corrupt") as err:
        load_model(cut, tiny_dir / "config.json")
    assert str(cut) in str(err.value)

    manifest = load_manifest(manifest_path("cut3r_224_linear_4"))
    full = official_file(tmp_path / "full.pth", manifest.shapes, json.loads(manifest.path.read_text())["model_str"])
    blob = full.read_bytes()
    for n_bytes in (len(blob) // 2, len(blob) - 10):
        cut_pth = tmp_path / f"cut_{n_bytes}.pth"
        cut_pth.write_bytes(blob[:n_bytes])
        with pytest.raises(Cut3rCheckpointError, match="truncated or corrupt") as err:
            load_model(cut_pth)
        assert str(cut_pth) in str(err.value)


def test_plain_state_dict_and_safetensors_round_trip(tiny_dir, tiny_model, tmp_path):
    frames = torch.from_numpy(np.load(tiny_dir / "inputs.npz")["frames"]).transpose(0, 1)
    plain = tmp_path / "plain.pth"
    torch.save({"module." + k: v for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}, plain)
    with pytest.raises(Cut3rCheckpointError, match="needs a config"):
        load_model(plain)
    from_plain = load_model(plain, tiny_dir / "config.json")

    model = random_model(tiny_config(), seed=5)
    save_safetensors(model, tmp_path / "m.safetensors", tmp_path / "m.json")
    reloaded = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    with torch.inference_mode():
        torch.testing.assert_close(from_plain(frames).patch_tokens, tiny_model(frames).patch_tokens, rtol=0, atol=1e-5)
        torch.testing.assert_close(reloaded(frames, heads=True).heads["conf"], model(frames, heads=True).heads["conf"],
                                   rtol=0, atol=1e-5)
    assert reloaded.cfg == model.cfg
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
