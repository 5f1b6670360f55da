"""Extraction tests import their factories from this folder (pytest runs in importlib mode, without rootdir on
sys.path); the tiny CUT3R is dominated by per-op overhead, so tests run torch on one thread."""
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
