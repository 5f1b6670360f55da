"""The exact bytes of every task's records on a fixed scene (regenerate with tests/qa/make_golden.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from make_golden import golden_lines

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("bench", ["vsibench", "vstibench", "regionbench"])
def test_records_match_the_golden_file(bench):
    expected = (GOLDEN / f"{bench}.jsonl").read_text(encoding="utf-8").splitlines()
    assert golden_lines(bench) == expected


def test_golden_files_cover_every_task():
    import json

    from qa_templates.tasks import TASKS

    tasks = {json.loads(line)["task"] for bench in ("vsibench", "vstibench", "regionbench")
             for line in (GOLDEN / f"{bench}.jsonl").read_text(encoding="utf-8").splitlines()}
    assert tasks == {t.name for t in TASKS}
