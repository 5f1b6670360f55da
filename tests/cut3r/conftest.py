"""Shared fixtures of the CUT3R tests: the golden fixture directory and the tiny model loaded from it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("CUT3R_FIXTURES", REPO.parent / "shared" / "fixtures" / "cut3r"))
TINY = FIXTURES / "tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    if not (TINY / "model.safetensors").is_file():
        pytest.skip(f"CUT3R golden fixture not found at {TINY} (set CUT3R_FIXTURES)")
    return TINY


@pytest.fixture(scope="session")
def manifest_path():
    def get(name: str) -> Path:
        path = FIXTURES / f"{name}.manifest.json"
        if not path.is_file():
            pytest.skip(f"CUT3R manifest not found at {path} (set CUT3R_FIXTURES)")
        return path
    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from workers.cut3r import load_model

    return load_model(tiny_dir / "model.safetensors", tiny_dir / "config.json")


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (see tests/conftest.py)."""
