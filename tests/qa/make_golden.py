"""Regenerate tests/qa/golden/*.jsonl: every task's records on the fixed hand-built scene of ``golden_graph()``.

Run ``python tests/qa/make_golden.py`` after an intended change of question wording, rounding or sampling, and
review the diff: the golden files pin the exact bytes the qa stage writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from qa_factories import look_pose, make_graph  # noqa: E402


def golden_graph():
    """Seven objects (two cups, a picture above the sofa), a 32-frame walk along +y that turns slowly, everything visible from frame 3 on."""
    import numpy as np

    objects = [(1, "chair", (0.0, 0.0, 0.5), (0.5, 0.5, 1.0)), (2, "table", (2.5, 0.0, 0.4), (1.0, 1.0, 0.8), 30.0),
               (3, "sofa", (0.0, 3.0, 0.45), (2.0, 0.9, 0.9)), (4, "lamp", (3.0, 3.0, 0.8), (0.3, 0.3, 1.6)),
               (5, "cup", (1.0, 1.0, 0.85), (0.1, 0.1, 0.12)), (6, "cup", (1.3, 1.1, 0.85), (0.1, 0.1, 0.12)),
               (7, "picture", (0.0, 3.4, 2.2), (0.8, 0.05, 0.6))]
    poses = [look_pose((0.05 * k, -3.0 + 0.12 * k, 1.5), (np.sin(0.02 * k), 1.0, -0.1)) for k in range(32)]
    visibility = [(k, i) for k in range(32) for i in range(1, 8) if k >= 3 or i in (3, 4)]
    first_seen = {"sofa": 0.0, "lamp": 1.2, "chair": 2.5, "table": 4.0, "cup": 5.5, "picture": 7.0}
    return make_graph(objects, poses=poses, visibility=visibility, timestamps=np.arange(32) * 0.5,
                      room={"floor_area_m2": 27.35, "first_appearance_s": first_seen})


def golden_region_graph():
    """The golden scene for regionbench: the same objects, each seen in its own stretch of the walk (object i in
    frames 4i-2 .. 4i+5, so neighbours in the list share frames and distant ones never do), one rectangular region
    prompt per visibility row."""
    import numpy as np

    from qa_factories import with_box_regions

    base = golden_graph()
    visibility = [(k, i) for i in range(1, 8) for k in range(max(0, 4 * i - 2), min(32, 4 * i + 6))]
    poses = [np.asarray(p).reshape(4, 4) for p in base.frames.column("camera_to_world").to_pylist()]
    graph = make_graph([(1, "chair", (0.0, 0.0, 0.5), (0.5, 0.5, 1.0)), (2, "table", (2.5, 0.0, 0.4), (1.0, 1.0, 0.8), 30.0),
                        (3, "sofa", (0.0, 3.0, 0.45), (2.0, 0.9, 0.9)), (4, "lamp", (3.0, 3.0, 0.8), (0.3, 0.3, 1.6)),
                        (5, "cup", (1.0, 1.0, 0.85), (0.1, 0.1, 0.12)), (6, "cup", (1.3, 1.1, 0.85), (0.1, 0.1, 0.12)),
                        (7, "picture", (0.0, 3.4, 2.2), (0.8, 0.05, 0.6))],
                       poses=poses, visibility=visibility, timestamps=np.arange(32) * 0.5,
                       room={"floor_area_m2": 27.35})
    return with_box_regions(graph)


def golden_lines(bench: str) -> list[str]:
    from qa_templates.config import QAConfig
    from qa_templates.generate import generate_scene
    from pipeline.core.qa_records import dumps_record
    from qa_templates.tasks import tasks_for

    graph = golden_region_graph() if bench == "regionbench" else golden_graph()
    return [dumps_record(r) for r in generate_scene(graph, bench, tasks_for(bench), 0, QAConfig()).records]


if __name__ == "__main__":
    for bench in ("vsibench", "vstibench", "regionbench"):
        path = HERE / "golden" / f"{bench}.jsonl"
        lines = golden_lines(bench)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        print(f"{path}: {len(lines)} records")
