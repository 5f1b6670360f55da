"""Trainer tests import their factories from this folder (pytest runs in importlib mode, without rootdir on
sys.path), run torch on one thread (the tiny models are dominated by per-op overhead on a shared machine), and
share one packed tiny dataset root between the tests that only read it."""
from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def packed_root(tmp_path_factory):
    """Three training scenes (one without JPEGs in its token shard) and one val scene, packed one scene per shard."""
    from trainer_factories import SceneSpec, build_root

    from pipeline.stages.run import pack

    specs = [SceneSpec("scannet", "scene0000_00", "train", 5),
             SceneSpec("scannet", "scene0001_00", "train", 4, with_jpegs=False),
             SceneSpec("arkitscenes", "41069025", "train", 3),
             SceneSpec("scannet", "scene0707_00", "val", 3)]
    root = build_root(tmp_path_factory.mktemp("packed") / "root", specs, max_shard_bytes=3 << 20)
    pack(root, max_shard_bytes=3 << 20)
    return root
