"""Shared test fixtures: one real local Ray for the whole session (starting Ray costs seconds), and a small dataset
root built once by the real stages.

``built_root``: four synthetic scenes written as a raw ScanNet release (one of them a ``val`` scene, one with a
truncated ``.sens`` so that ingest fails on it), then ingest, extract (random tiny CUT3R at a small input size),
graph, routes, qa and pack, each through ``pipeline.cli.main`` in-process (``--local``). Tests that change the root
work on a copy.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray


def pytest_sessionfinish(session, exitstatus):
    """Shut Ray down before pytest prints its summary, so Ray's reports about workers that tests kill on purpose do
    not come after the summary line."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def torch_one_thread():
    """torch on one thread for the duration of a test: the tiny models are dominated by per-op overhead, and one
    thread is faster and steadier on a shared 2-core machine. Folders opt in with an autouse fixture using it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BROKEN = 3          # index of the scene whose raw .sens is truncated
VAL = 2             # index of the benchmark (val) scene


@dataclass(frozen=True)
class BuiltRoot:
    root: Path
    raw: Path
    scene_ids: tuple[str, ...]
    exit_codes: dict[str, int]

    @property
    def broken_scene(self) -> str:
        return self.scene_ids[BROKEN]

    def copy(self, dst: Path) -> Path:
        shutil.copytree(self.root, dst)
        return dst


@pytest.fixture(scope="session")
def built_root(tmp_path_factory) -> BuiltRoot:
    from pipeline.cli import main
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scene

    base = tmp_path_factory.mktemp("report_root")
    raw, root = base / "raw", base / "root"
    scene_ids = []
    for i in range(4):
        scene = generate_scene(10 + i, num_frames=16)
        scene_ids.append(write_scannet(scene, raw, split="val" if i == VAL else "train"))
    sens = raw / "scans" / scene_ids[BROKEN] / f"{scene_ids[BROKEN]}.sens"
    sens.write_bytes(sens.read_bytes()[:200])    # a header cut short: the reader raises InputError naming the file
    steps = {
        "ingest": ["ingest", "--dataset", "scannet", "--raw", str(raw), "--out", str(root), "--num-frames", "4"],
        "extract": ["extract", "--root", str(root), "--random-tiny", "--size", "112", "--squash-size", "112"],
        "graph": ["graph", "--root", str(root)],
        "routes": ["routes", "--root", str(root), "--max-routes", "2"],
        "qa": ["qa", "--root", str(root), "--max-per-scene-task", "2"],
        "pack": ["pack", "--root", str(root)],
    }
    codes = {}
    for name, argv in steps.items():
        codes[name] = main(argv + ([] if name == "pack" else ["--local"]))
    return BuiltRoot(root, raw, tuple(scene_ids), codes)
