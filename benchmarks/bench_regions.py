"""Region prompts' cost per scene next to the graph stage's, in one run on generated scenes.

For each scene, in one process and interleaved so that machine load hits all of them alike: the whole graph as the
``graph`` stage builds it today (``build_scene_graph``: objects, visibility, room measures), and the graph's
visibility pass alone without and with region prompts (``visibility_and_regions``; the regions add masks at the
stored resolution, truncation and pycocotools RLE to the same pass). The region cost is the difference between the
two passes, reported next to the whole graph's cost. Also timed: the regionbench questions of the scene and the depth
points of ``extract --points depth`` (27x27 per manifest frame). Both visibility sources are measured: the release's
2D instance masks (ScanNet) and the mesh rasterised with the depth test (the other datasets). Times are the process's
CPU seconds (best of ``--repeats``), which the other jobs of a shared machine disturb far less than wall time.
Writes ``benchmarks/results/regions.json``::

    python benchmarks/bench_regions.py --scenes 3 --width 320 --height 240
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
from pipeline.core.patch_points import frames_patch_points  # noqa: E402
from pipeline.core.schemas import column_as_array  # noqa: E402
from pipeline.sources.synthetic import canonical_inputs, generate_scene  # noqa: E402
from qa_templates.config import QAConfig  # noqa: E402
from qa_templates.generate import generate_scene as generate_qa  # noqa: E402
from qa_templates.tasks import tasks_for  # noqa: E402
from scene_graph.graph import build_scene_graph, visibility_and_regions  # noqa: E402
from scene_graph.regions import RegionConfig  # noqa: E402


def _timed(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def measure(unit, repeats: int) -> dict:
    """Best-of-``repeats`` CPU seconds of each step for one scene."""
    scene, manifest, depths, masks = unit
    sources = {"instance_mask": {"instance_masks": masks}, "mesh_projection": {"depths": depths}}
    out: dict = {}
    for source, inputs in sources.items():
        graph_s, pass_s, pass_regions_s = [], [], []
        for _ in range(repeats):
            graph, s = _timed(lambda: build_scene_graph(scene, manifest, **inputs, region_config=RegionConfig()))
            _, s = _timed(lambda: build_scene_graph(scene, manifest, **inputs))
            graph_s.append(s)
            _, s = _timed(lambda: visibility_and_regions(scene, graph.objects, graph.frames, **inputs))
            pass_s.append(s)
            _, s = _timed(lambda: visibility_and_regions(scene, graph.objects, graph.frames, **inputs,
                                                         region_config=RegionConfig()))
            pass_regions_s.append(s)
        out[source] = {"graph_s": min(graph_s), "visibility_pass_s": min(pass_s),
                       "visibility_pass_with_regions_s": min(pass_regions_s), "regions": graph.regions.num_rows}
    questions, qa_s = _timed(lambda: generate_qa(graph, "regionbench", tasks_for("regionbench"), 0, QAConfig()))
    out["regionbench_qa_s"] = qa_s
    out["regionbench_questions"] = len(questions.records)
    frames = scene.frames.take(np.searchsorted(column_as_array(scene.frames, "frame_index"),
                                               column_as_array(manifest, "frame_index")))
    k = tuple(column_as_array(frames, name)[0] for name in ("fx", "fy", "cx", "cy"))
    wh = (int(column_as_array(frames, "width")[0]), int(column_as_array(frames, "height")[0]))
    poses = [p.reshape(4, 4) if ok else None for p, ok in zip(column_as_array(manifest, "camera_to_world"),
                                                               column_as_array(manifest, "valid"))]
    _, points_s = _timed(lambda: frames_patch_points(depths, [k] * len(depths), [k] * len(depths),
                                                     [wh] * len(depths), poses))
    out["depth_points_s"] = points_s
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames", type=int, default=48, help="frames rendered per generated scene (manifest: 32)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "regions.json")
    args = parser.parse_args()

    units = [canonical_inputs(generate_scene(seed, num_frames=args.frames, width=args.width, height=args.height))
             for seed in range(args.scenes)]
    measure(units[0], 1)                                          # warm imports and caches
    per_scene = [measure(u, args.repeats) for u in units]

    def mean(path):
        values = [r[path[0]][path[1]] if len(path) == 2 else r[path[0]] for r in per_scene]
        return round(float(np.mean(values)), 4)

    summary = {}
    for source in ("instance_mask", "mesh_projection"):
        graph_s = mean((source, "graph_s"))
        pass_s, with_s = mean((source, "visibility_pass_s")), mean((source, "visibility_pass_with_regions_s"))
        summary[source] = {"graph_cpu_s_per_scene": graph_s, "visibility_pass_cpu_s_per_scene": pass_s,
                           "visibility_pass_with_regions_cpu_s_per_scene": with_s,
                           "regions_cpu_s_per_scene": round(with_s - pass_s, 4),
                           "regions_over_graph": round((with_s - pass_s) / graph_s, 3),
                           "regions_per_scene": mean((source, "regions"))}
    result = {
        "scenes": args.scenes, "frames_per_scene": args.frames, "manifest_frames": units[0][1].num_rows,
        "image": [args.width, args.height], "repeats_best_of": args.repeats, **summary,
        "regionbench_qa_cpu_s_per_scene": mean(("regionbench_qa_s",)),
        "regionbench_questions_per_scene": mean(("regionbench_questions",)),
        "depth_points_cpu_s_per_scene": mean(("depth_points_s",)),
        "per_scene": [{k: ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else round(v, 4))
                       for k, v in r.items()} for r in per_scene],
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "note": "one process, CPU seconds; 2 shared CPU cores, other jobs ran on the same machine during the "
                "measurement",
    }
    write_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
