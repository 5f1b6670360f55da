"""Routes per second per core on generated scenes (grid backend, one process = one core).

Two scene sets: the project's synthetic rooms (``pipeline.sources.synthetic.generate_scene``, one furnished room
each) and multi-room layouts (``scene_graph.navigation.scenes.multi_room``, 2x2 rooms with doors). Per scene the
timing covers what ``vlm3r-data routes`` computes (navigator build + route sampling with reversed routes), not the
scene synthesis or file I/O. Writes ``benchmarks/results/routes.json``::

    python benchmarks/bench_routes.py --scenes 8
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.atomic import write_json  # noqa: E402
from pipeline.core.errors import InputError  # noqa: E402
from pipeline.core.scene import objects_table  # noqa: E402
from scene_graph.navigation import NavmeshSettings, build_navigator, scenes  # noqa: E402
from scene_graph.routes import RouteSettings, sample_routes  # noqa: E402


def synthetic_rooms(n: int):
    from pipeline.sources.synthetic import generate_scene

    out = []
    for seed in range(n):
        s = generate_scene(seed, num_frames=2, width=16, height=12)   # frames are not used here
        objs = s.objects
        table = objects_table([o.instance_id for o in objs], [o.label for o in objs], [o.label for o in objs],
                              [o.centroid for o in objs], [o.lengths for o in objs], [o.axes for o in objs],
                              [0] * len(objs))
        out.append((s.name, s.vertices, s.faces, table))
    return out


def multi_rooms(n: int):
    out = []
    for seed in range(n):
        lay = scenes.multi_room(seed)
        out.append((f"multi{seed:04d}", lay.vertices, lay.faces, lay.objects))
    return out


def measure(scene_set, max_routes: int) -> dict:
    build_s = sample_s = 0.0
    routes = turns = failed = 0
    for k, (name, vertices, faces, objects) in enumerate(scene_set):
        t0 = time.perf_counter()
        try:
            nav = build_navigator(vertices, faces, NavmeshSettings(), "grid", source=name)
            t1 = time.perf_counter()
            found, _ = sample_routes(nav, objects, RouteSettings(seed=k, max_routes=max_routes, reversed=True),
                                     source=name)
        except InputError:
            failed += 1
            continue
        t2 = time.perf_counter()
        build_s += t1 - t0
        sample_s += t2 - t1
        routes += len(found)
        turns += sum(r.num_turns for r in found)
    done = len(scene_set) - failed
    total = build_s + sample_s
    return {"scenes": len(scene_set), "failed_scenes": failed, "routes": routes, "turns": turns,
            "navmesh_build_s_per_scene": round(build_s / max(done, 1), 4),
            "route_sampling_s_per_scene": round(sample_s / max(done, 1), 4),
            "routes_per_scene": round(routes / max(done, 1), 2),
            "routes_per_s_per_core": round(routes / total, 3) if total else 0.0,
            "scenes_per_s_per_core": round(done / total, 3) if total else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8, help="scenes per set")
    parser.add_argument("--max-routes", type=int, default=10, help="forward routes per scene")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routes.json")
    args = parser.parse_args()
    result = {
        "backend": "grid", "settings": "habitat navmesh defaults (cell 0.05 m, height 1.5 m, radius 0.1 m, "
                                       "climb 0.2 m, slope 45 deg)",
        "max_routes": args.max_routes, "reversed": True,
        "synthetic_rooms": measure(synthetic_rooms(args.scenes), args.max_routes),
        "multi_room_2x2": measure(multi_rooms(args.scenes), args.max_routes),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "one process (one core); 2 shared CPU cores, other jobs ran on the same machine during the measurement",
    }
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
