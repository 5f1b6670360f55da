"""Scene graph + all QA, in scenes per second, on generated scenes: one process and Ray with 2 CPUs, same run.

Each unit of work is what the ``graph`` and ``qa`` stages do for one scene: build the scene graph from the canonical
scene (visibility from the rendered depth and instance masks, floor alpha shape) and generate every VSI-Bench and
VSTI-Bench task. Scene synthesis is done before timing. Writes ``benchmarks/results/qa.json``::

    python benchmarks/bench_qa.py --scenes 8
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.atomic import write_json  # noqa: E402
from pipeline.sources.synthetic import canonical_inputs, generate_scene  # noqa: E402


def graph_and_qa(unit) -> dict:
    """One scene: build its graph, then every task of both benchmarks. Returns timings and question counts."""
    from qa_templates.config import QAConfig
    from qa_templates.generate import generate_scene
    from qa_templates.tasks import tasks_for
    from scene_graph.graph import build_scene_graph

    scene, manifest, depths, masks = unit
    t0 = time.perf_counter()
    graph = build_scene_graph(scene, manifest, depths, masks)
    t1 = time.perf_counter()
    questions = {b: len(generate_scene(graph, b, tasks_for(b), 0, QAConfig()).records) for b in ("vsibench", "vstibench")}
    t2 = time.perf_counter()
    return {"graph_s": t1 - t0, "qa_s": t2 - t1, "questions": questions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=48, help="frames rendered per generated scene")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "qa.json")
    args = parser.parse_args()

    units = [canonical_inputs(generate_scene(seed, num_frames=args.frames)) for seed in range(args.scenes)]

    # One process (warm the imports on one scene first so both modes pay the same start-up).
    graph_and_qa(units[0])
    t0 = time.perf_counter()
    local = [graph_and_qa(u) for u in units]
    local_s = time.perf_counter() - t0

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from pipeline.core.parallel import map_units

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    list(map_units(graph_and_qa, units[:2], workers=2, progress=False))          # warm both workers
    t0 = time.perf_counter()
    remote = [r for _, r, exc in map_units(graph_and_qa, units, workers=2, progress=False) if exc is None]
    ray_s = time.perf_counter() - t0
    ray.shutdown()

    result = {
        "scenes": args.scenes, "frames_per_scene": args.frames, "manifest_frames": units[0][1].num_rows,
        "one_process": {"seconds": round(local_s, 3), "scenes_per_s": round(args.scenes / local_s, 3),
                        "graph_s_per_scene": round(float(np.mean([r["graph_s"] for r in local])), 4),
                        "qa_s_per_scene": round(float(np.mean([r["qa_s"] for r in local])), 4)},
        "ray_2cpu": {"seconds": round(ray_s, 3), "scenes_per_s": round(len(remote) / ray_s, 3),
                     "completed": len(remote)},
        "questions_per_scene": {b: float(np.mean([r["questions"][b] for r in local])) for b in ("vsibench", "vstibench")},
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "note": "2 shared CPU cores; other jobs ran on the same machine during the measurement",
    }
    write_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
