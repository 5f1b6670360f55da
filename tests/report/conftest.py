"""The report tests' shared fixture (one ``stats`` run on a copy of the session's built root), and their helpers
module on sys.path (pytest runs in importlib mode, without rootdir on sys.path)."""
from __future__ import annotations

import os
import sys

import pytest

from pipeline.cli import main

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def report(built_root, tmp_path_factory):
    """A copy of the built root with its report written by the command; returns (root, report text). Tests only
    read it (a rerun of ``stats`` on it is byte-identical)."""
    root = built_root.copy(tmp_path_factory.mktemp("stats") / "root")
    assert main(["stats", "--root", str(root)]) == 0
    return root, (root / "report" / "report.md").read_text(encoding="utf-8")
