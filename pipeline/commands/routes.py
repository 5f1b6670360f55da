"""``vlm3r-data routes``: navigable floor of every ingested scene -> sampled routes + a top-down plot per scene.

Per scene: the navigator is built from ``ROOT/scenes/<ds>/<id>/mesh.ply`` (z-up) and the routes are sampled between
the unique objects of ``objects.parquet``; outputs are ``ROOT/routes/<ds>/<id>.parquet`` (ROUTES_SCHEMA),
``ROOT/routes/plots/<ds>/<id>.png`` and the done-marker ``ROOT/routes/<ds>/<id>_DONE.json`` (written last; holds the
input hash and the counts). Bad scenes become rows of ``ROOT/errors.parquet`` and never stop the others.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import ErrorRow, record_errors, report_failures
from pipeline.core.layout import DATASETS, DONE_MARKER, DatasetRoot, scene_key

HELP = "sample navigation routes on each scene's navigable floor (grid or habitat-sim backend) and plot them"
STAGE = "routes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT) holding ingested scenes")
    parser.add_argument("--backend", default=None, choices=("grid", "habitat"),
                        help="navigation backend (default: habitat when habitat_sim imports, else grid)")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only scenes of this dataset")
    parser.add_argument("--seed", type=int, default=0, help="run seed (each scene derives its own from it)")
    parser.add_argument("--max-routes", type=int, default=10, help="forward routes per scene")
    parser.add_argument("--reversed", action="store_true", help="also store each route walked backwards")
    parser.add_argument("--partial", action="store_true", help="also store prefixes ending at a landmark")
    parser.add_argument("--no-plots", action="store_true", help="skip the top-down PNG per scene")
    parser.add_argument("--force", action="store_true", help="redo scenes whose routes are complete and up to date")
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (local Ray cluster size)")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")


def _paths(root: DatasetRoot, dataset: str, scene_id: str) -> dict[str, str]:
    base = root.routes_dir / dataset
    return {"table": str(base / f"{scene_id}.parquet"), "marker": str(base / f"{scene_id}{DONE_MARKER}"),
            "plot": str(root.routes_dir / "plots" / dataset / f"{scene_id}.png")}


def plot_routes(path: str | Path, navigator, routes, objects, title: str) -> None:
    """Top-down PNG: navigable floor (largest island darker), route paths, unique-object landmarks. Atomic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.core.atomic import atomic_path
    from scene_graph.routes import unique_objects

    top = navigator.topdown()
    rows, cols = top.islands.shape
    extent = (top.origin_xy[0], top.origin_xy[0] + cols * top.meters_per_pixel,
              top.origin_xy[1], top.origin_xy[1] + rows * top.meters_per_pixel)
    shade = np.where(top.islands == 0, 0.55, np.where(top.islands > 0, 0.8, 1.0))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.imshow(shade, origin="lower", extent=extent, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for k, route in enumerate(routes):
        pts = np.asarray(route.corner_points)
        ax.plot(pts[:, 0], pts[:, 1], "-", lw=1.2, color=plt.cm.tab10(k % 10))
        ax.plot(pts[0, 0], pts[0, 1], "o", ms=3, color=plt.cm.tab10(k % 10))
    uniq = unique_objects(objects)
    ax.scatter(uniq.centroid[:, 0], uniq.centroid[:, 1], marker="s", s=12, color="crimson")
    for label, c in zip(uniq.labels, uniq.centroid):
        ax.annotate(label, (c[0], c[1]), fontsize=6, color="crimson")
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)", fontsize=7); ax.set_ylabel("y (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    with atomic_path(path) as tmp:
        # No metadata: the bytes depend only on the figure (reproducible across runs).
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def routes_one(job: dict[str, Any]) -> dict[str, Any]:
    """Build the navigator, sample and write one scene's routes (+ plot, then the marker). Raises on bad input."""
    from pipeline.core.atomic import write_json
    from pipeline.core.scene import read_scene
    from pipeline.core.schemas import ROUTES_SCHEMA, write_table
    from qa_templates.seeding import derive_seed
    from scene_graph.navigation import NavmeshSettings, build_navigator
    from scene_graph.routes import RouteSettings, routes_table, sample_routes

    scene_dir = Path(job["scene_dir"])
    scene = read_scene(scene_dir)
    key = scene_key(job["dataset"], job["scene_id"])
    navigator = build_navigator(scene.mesh_vertices, scene.mesh_faces, NavmeshSettings(), job["backend"],
                                source=str(scene_dir / "mesh.ply"))
    try:
        settings = RouteSettings(seed=derive_seed(job["seed"], key, STAGE), max_routes=job["max_routes"],
                                 reversed=job["reversed"], partial=job["partial"])
        routes, rejected = sample_routes(navigator, scene.objects, settings, source=str(scene_dir / "objects.parquet"))
        table = routes_table(routes, job["dataset"], job["scene_id"], navigator.backend)
        write_table(job["table"], table, ROUTES_SCHEMA)
        if job["plots"]:
            plot_routes(job["plot"], navigator, routes, scene.objects, f"{key}: {len(routes)} routes")
        islands = navigator.islands
        stats = {"routes": len(routes), "turns": int(sum(r.num_turns for r in routes)),
                 "navigable_area_m2": round(navigator.navigable_area_m2, 4),
                 "largest_island_m2": round(islands[0].area_m2, 4), "islands": len(islands),
                 "rejected": rejected, "backend": navigator.backend}
    finally:
        navigator.close()
    write_json(job["marker"], {"input_hash": job["input_hash"], "stats": stats})
    return stats


def input_hash(scene_dir: Path, config: dict[str, Any]) -> str:
    import hashlib
    import json

    from pipeline.core.version import FORMAT_VERSION
    from pipeline.core.atomic import read_json

    payload = {"scene_marker": read_json(scene_dir / DONE_MARKER), "config": config, "format_version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    from pipeline.core.atomic import read_json
    from pipeline.core.parallel import map_units
    from scene_graph.navigation import default_backend, habitat_available

    root = DatasetRoot(args.root)
    root.check()  # a missing root or one of another format version is refused (exit 2)
    if args.max_routes < 0:
        print("error: --max-routes must be >= 0", file=sys.stderr)
        return 2
    backend = args.backend or default_backend()
    if backend == "habitat" and not habitat_available():
        print("error: --backend habitat needs habitat-sim (conda install habitat-sim -c aihabitat -c conda-forge), "
              "which is not importable here; use --backend grid", file=sys.stderr)
        return 2
    config = {"backend": backend, "seed": args.seed, "max_routes": args.max_routes, "reversed": args.reversed,
              "partial": args.partial, "plots": not args.no_plots}
    scenes = root.scenes(args.dataset)
    jobs, skipped = [], []
    for ds, sid in scenes:
        paths = _paths(root, ds, sid)
        h = input_hash(root.scene_dir(ds, sid), config)
        marker = Path(paths["marker"])
        if not args.force and marker.exists() and read_json(marker).get("input_hash") == h:
            skipped.append((ds, sid))
            continue
        marker.unlink(missing_ok=True)
        jobs.append({"dataset": ds, "scene_id": sid, "scene_dir": str(root.scene_dir(ds, sid)), **paths,
                     "input_hash": h, **config})
    done, errors = [], []
    for job, stats, exc in map_units(routes_one, jobs, local=args.local, workers=args.workers,
                                     ray_address=args.ray_address, desc=STAGE):
        if exc is None:
            done.append(stats)
        else:
            errors.append(ErrorRow.from_exception(STAGE, job["dataset"], job["scene_id"], exc))
    record_errors(root.errors_path, STAGE, [(j["dataset"], j["scene_id"]) for j in jobs], errors)
    counts = {"scenes": len(scenes), "done": len(done), "skipped": len(skipped), "failed": len(errors),
              "routes": sum(s["routes"] for s in done), "turns": sum(s["turns"] for s in done),
              "scenes_without_routes": sum(1 for s in done if s["routes"] == 0),
              "scenes_with_several_islands": sum(1 for s in done if s["islands"] > 1)}
    root.record_stage(STAGE, config, counts)
    print(f"routes: {counts['routes']} routes in {counts['done']} scenes ({backend} backend), "
          f"{counts['skipped']} up to date, {counts['failed']} failed of {counts['scenes']} -> {root.routes_dir}")
    return report_failures(errors, root.errors_path)
