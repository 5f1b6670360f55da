"""Agreement of the grid navigator with an independent Recast/Detour implementation (pynavmesh from PyPI).

On generated multi-room scenes (``scene_graph.navigation.scenes.multi_room``: 2x1, 2x2 and 3x1 rooms with doors and
furniture) and the project's synthetic furnished rooms, both built with habitat's navmesh defaults, it measures:
navigable floor area (relative difference per scene; Recast polygons at floor level, since Recast keeps large
furniture tops as islands of their own), geodesic path length over all pairs of sampled points reachable in both
(relative difference, median and 95th percentile pooled over scenes) and reachability agreement over all pairs.
Targets: area within 3 %, median within 1 %, 95th percentile within 5 %, reachability >= 98 %.

Path lengths: pynavmesh's own path search (A* between polygon centres, then funnel pulling) sometimes returns a
path through a longer corridor. The Recast geodesic is at most the length of any path lying on the Recast navmesh,
so when the grid's path lies on it (checked by sampling every 2.5 cm, with Recast's own 6.5 cm contour tolerance) the reference length is
min(pynavmesh, grid); otherwise pynavmesh's. Both the raw and this bounded comparison are reported. Writes
``benchmarks/results/navmesh_agreement.json``::

    pip install pynavmesh && python benchmarks/bench_navmesh_agreement.py
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
from scene_graph.navigation import build_navigator, scenes  # noqa: E402
from scene_graph.navigation.agreement import RecastReference, compare, recast_available  # noqa: E402


def scene_set(n_multi: int, n_synthetic: int):
    shapes = [(2, 1), (2, 2), (3, 1)]
    for k in range(n_multi):
        rx, ry = shapes[k % len(shapes)]
        lay = scenes.multi_room(100 + k, rooms_x=rx, rooms_y=ry)
        yield f"multi{rx}x{ry}_{k:02d}", lay.vertices, lay.faces
    if n_synthetic:
        from pipeline.sources.synthetic import generate_scene
        for seed in range(n_synthetic):
            s = generate_scene(seed, num_frames=2, width=16, height=12)
            yield s.name, s.vertices, s.faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multi-room", type=int, default=9, help="generated multi-room scenes")
    parser.add_argument("--synthetic", type=int, default=3, help="synthetic furnished single rooms")
    parser.add_argument("--points", type=int, default=20, help="sampled points per scene (all pairs compared)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "navmesh_agreement.json")
    args = parser.parse_args()
    if not recast_available():
        write_json(args.out, {"status": "not run: pynavmesh (a Recast/Detour implementation) is not installed"})
        print("pynavmesh is not installed: pip install pynavmesh", file=sys.stderr)
        sys.exit(1)
    per_scene, diffs, raw_diffs = [], [], []
    pairs = agree = on_mesh = 0
    for k, (name, vertices, faces) in enumerate(scene_set(args.multi_room, args.synthetic)):
        t0 = time.perf_counter()
        nav = build_navigator(vertices, faces, backend="grid", source=name)
        t1 = time.perf_counter()
        ref = RecastReference(vertices, faces)
        t2 = time.perf_counter()
        res = compare(nav, ref, np.random.default_rng(k), num_points=args.points)
        d = np.abs(res.length_rel_diff)
        raw = np.abs(res.raw_length_rel_diff)
        diffs.append(d)
        raw_diffs.append(raw)
        on_mesh += res.grid_paths_on_navmesh
        pairs += res.pairs
        agree += res.reachability_agree
        per_scene.append({
            "scene": name, "grid_area_m2": round(res.grid_area_m2, 4), "recast_floor_area_m2": round(res.recast_area_m2, 4),
            "recast_total_area_m2": round(res.recast_total_area_m2, 4), "area_rel_diff": round(res.area_rel_diff, 5),
            "grid_islands": len(nav.islands), "pairs": res.pairs, "reachability_agree": res.reachability_agree,
            "paths_compared": res.both_reachable,
            "length_rel_diff_median": round(float(np.median(d)), 5) if len(d) else None,
            "length_rel_diff_p95": round(float(np.percentile(d, 95)), 5) if len(d) else None,
            "raw_length_rel_diff_median": round(float(np.median(raw)), 5) if len(raw) else None,
            "raw_length_rel_diff_p95": round(float(np.percentile(raw, 95)), 5) if len(raw) else None,
            "grid_paths_on_recast_navmesh": res.grid_paths_on_navmesh,
            "grid_longer_max": round(float(res.length_rel_diff.max()), 5) if len(d) else None,
            "grid_shorter_max": round(float(-res.length_rel_diff.min()), 5) if len(d) else None,
            "grid_build_s": round(t1 - t0, 3), "recast_bake_s": round(t2 - t1, 3)})
        print(per_scene[-1], flush=True)
    pooled = np.concatenate(diffs)
    pooled_raw = np.concatenate(raw_diffs)
    area = np.array([s["area_rel_diff"] for s in per_scene])
    summary = {
        "scenes": len(per_scene), "paths_compared": int(len(pooled)), "pairs": pairs,
        "area_rel_diff_max": round(float(area.max()), 5), "area_rel_diff_mean": round(float(area.mean()), 5),
        "length_rel_diff_median": round(float(np.median(pooled)), 5),
        "length_rel_diff_p95": round(float(np.percentile(pooled, 95)), 5),
        "raw_length_rel_diff_median": round(float(np.median(pooled_raw)), 5),
        "raw_length_rel_diff_p95": round(float(np.percentile(pooled_raw, 95)), 5),
        "grid_paths_on_recast_navmesh": round(on_mesh / max(len(pooled), 1), 5),
        "reachability_agreement": round(agree / pairs, 5),
        "targets": {"area_rel_diff": 0.03, "length_median": 0.01, "length_p95": 0.05, "reachability": 0.98},
    }
    summary["meets_targets"] = bool(summary["area_rel_diff_max"] <= 0.03 and summary["length_rel_diff_median"] <= 0.01
                                    and summary["length_rel_diff_p95"] <= 0.05
                                    and summary["reachability_agreement"] >= 0.98)
    import importlib.metadata as md
    result = {"reference": f"pynavmesh {md.version('pynavmesh')} (pure-Python Recast port + navmesh path finder "
                           "with funnel pulling; corridors up to 1.1x the shortest centre-to-centre one are pulled)",
              "settings": "habitat navmesh defaults: cell 0.05 m, cell height 0.2 m, agent height 1.5 m, radius 0.1 m, "
                          "climb 0.2 m, slope 45 deg, region min size 20",
              "summary": summary, "per_scene": per_scene,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}}
    write_json(args.out, result)
    print(summary)


if __name__ == "__main__":
    main()
