"""``vlm3r-data graph``: canonical scenes -> scene graphs (objects, frames, visibility, room measures)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import ErrorRow, record_errors, report_failures
from pipeline.core.layout import DATASETS, DONE_MARKER, DatasetRoot

HELP = "build the scene graph of every ingested scene: objects, frames, visibility, room measures"
STAGE = "graph"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT) holding ingested scenes")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only scenes of this dataset")
    parser.add_argument("--scenes", nargs="+", default=None,
                        help="only these scene ids or dataset_sceneid keys (space- or comma-separated)")
    parser.add_argument("--force", action="store_true", help="rebuild graphs that are complete and up to date")
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (local Ray cluster size)")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
    parser.add_argument("--depth-tolerance", type=float, default=0.2,
                        help="a projected surface point is visible where |z - depth| <= tolerance x depth")
    parser.add_argument("--floor-seed", type=int, default=None,
                        help="seed of the floor-point sampling (default: VLM-3R's, 42 for ScanNet and ScanNet++, "
                             "0 for ARKitScenes)")
    parser.add_argument("--no-masks", action="store_true",
                        help="ignore the dataset's instance masks and always project the mesh")


def _config(args: argparse.Namespace):
    from scene_graph.graph import GraphConfig

    return GraphConfig(depth_tolerance=args.depth_tolerance, floor_seed=args.floor_seed)


def _instance_masks(scene, frame_indices: list[int]) -> list | None:
    """Per-frame instance masks when the scene declares them and the reader that knows the format is present."""
    spec = scene.meta.get("instance_masks")
    if not isinstance(spec, dict) or spec.get("kind") != "zip":   # the ScanNet reader's declaration
        return None
    try:
        from pipeline.sources.scannet import read_instance_mask
    except ImportError:
        return None
    return [read_instance_mask(spec["path"], fi) for fi in frame_indices]


def build_one(job: dict[str, Any]) -> dict[str, Any]:
    """Read one canonical scene, build its graph and write it. Runs inside a Ray task (or in-process).

    Bad input comes back as ``{"error": {...}}`` rather than raised: InputError(path, problem) does not survive
    Ray's exception pickling (its constructor takes two arguments), and a row is all the driver needs anyway.
    """
    from pipeline.core.errors import InputError
    from pipeline.core.schemas import SchemaError

    try:
        return {"marker": _build_one(job)}
    except (InputError, SchemaError, FileNotFoundError, ValueError) as exc:
        return {"error": {"error_type": type(exc).__name__, "message": str(exc),
                          "path": getattr(exc, "path", "") or ""}}


def _build_one(job: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core.frames import decode_depths
    from pipeline.core.scene import manifest_frames, read_manifest, read_scene
    from pipeline.core.schemas import column_as_array
    from scene_graph.graph import GraphConfig, build_scene_graph, write_graph

    scene_dir = Path(job["scene_dir"])
    config = GraphConfig(**job["config"])
    scene = read_scene(scene_dir)
    manifest = read_manifest(scene_dir)
    rows = manifest_frames(scene.frames, manifest)
    depths = decode_depths(rows)
    masks = None if job["no_masks"] else _instance_masks(scene, column_as_array(rows, "frame_index").tolist())
    graph = build_scene_graph(scene, manifest, depths=depths, instance_masks=masks, config=config,
                              where=str(scene_dir))
    return write_graph(job["graph_dir"], graph, input_hash=job["input_hash"], config=job["config"])


def input_hash(scene_dir: Path, config: dict[str, Any], use_masks: bool) -> str:
    """What the graph depends on: the scene's done-marker (it holds the sha256 of every scene file) and the config."""
    from pipeline.core.version import FORMAT_VERSION
    from pipeline.core.atomic import read_json
    from scene_graph.graph import config_hash

    return config_hash({"scene_marker": read_json(scene_dir / DONE_MARKER), "config": config,
                        "masks": use_masks, "format_version": FORMAT_VERSION})


def run(args: argparse.Namespace) -> int:
    from pipeline.core.parallel import map_units
    from scene_graph.graph import graph_marker

    root = DatasetRoot(args.root)
    root.check()  # a missing root or one of another format version is refused (exit 2)
    scenes = root.scenes(args.dataset)
    if args.scenes:
        wanted = {s.strip() for arg in args.scenes for s in arg.split(",") if s.strip()}
        scenes = [(ds, sid) for ds, sid in scenes if sid in wanted or f"{ds}_{sid}" in wanted]
        missing = wanted - {s for _, s in scenes} - {f"{d}_{s}" for d, s in scenes}
        if missing:
            print(f"error: not ingested under {root.path}: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    try:
        config = _config(args).to_dict()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs, skipped = [], []
    for ds, sid in scenes:
        h = input_hash(root.scene_dir(ds, sid), config, not args.no_masks)
        marker = graph_marker(root.graph_dir(ds, sid))
        if not args.force and marker is not None and marker.get("input_hash") == h:
            skipped.append((ds, sid))
            continue
        jobs.append({"dataset": ds, "scene_id": sid, "scene_dir": str(root.scene_dir(ds, sid)),
                     "graph_dir": str(root.graph_dir(ds, sid)), "config": config, "input_hash": h,
                     "no_masks": bool(args.no_masks)})
    done, errors = [], []
    for job, result, exc in map_units(build_one, jobs, local=args.local, workers=args.workers,
                                      ray_address=args.ray_address, desc=STAGE):
        if exc is not None:  # infrastructure failure after Ray's retries, or a bug
            errors.append(ErrorRow.from_exception(STAGE, job["dataset"], job["scene_id"], exc))
        elif "error" in result:
            errors.append(ErrorRow(STAGE, job["dataset"], job["scene_id"], **result["error"]))
        else:
            done.append((job["dataset"], job["scene_id"], result["marker"]))
    # Skipped scenes are complete and current: any old error row of theirs is stale too.
    record_errors(root.errors_path, STAGE, [(j["dataset"], j["scene_id"]) for j in jobs] + skipped, errors)
    counts = {"scenes": len(scenes), "built": len(done), "skipped": len(skipped), "failed": len(errors),
              "objects": sum(m["stats"]["objects"] for _, _, m in done),
              "visibility_rows": sum(m["stats"]["visibility_rows"] for _, _, m in done)}
    root.record_stage(STAGE, {**config, "masks": not args.no_masks}, counts)
    print(f"graph: {counts['built']} built, {counts['skipped']} up to date, {counts['failed']} failed "
          f"of {counts['scenes']} scenes -> {root.path / 'graph'}")
    return report_failures(errors, root.errors_path)
