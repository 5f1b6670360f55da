"""``vlm3r-data import-meta``: VLM-3R or VSI-Bench metadata JSON -> scene graphs under ROOT/graph/."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import ErrorRow, record_errors
from pipeline.core.layout import DATASETS, DatasetRoot

HELP = "import VLM-3R scene/frame metadata or VSI-Bench meta_info JSON as scene graphs (QA without raw scans)"
STAGE = "import-meta"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=("vlm3r", "vsibench"), help="layout of the metadata")
    parser.add_argument("--scene-meta", required=True, type=Path,
                        help="VLM-3R scene metadata JSON, or a VSI-Bench *_meta_info_val.json")
    parser.add_argument("--frame-meta", type=Path, default=None, help="VLM-3R frame metadata JSON (vlm3r only)")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write the graphs into (ROOT)")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="dataset of every scene (default: each entry's 'dataset' field)")
    parser.add_argument("--split", default=None, help="split of every scene (default: the entry's, else "
                                                        "'val' for vsibench and 'unknown' for vlm3r)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate turning VLM-3R frame_id into seconds (default: VLM-3R's per dataset)")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.atomic import sha256_file
    from scene_graph.graph import config_hash, write_graph
    from scene_graph.interop import import_vlm3r, import_vsibench

    if args.format == "vsibench" and args.frame_meta is not None:
        print("error: --frame-meta applies to --format vlm3r only", file=sys.stderr)
        return 2
    root = DatasetRoot(args.out)
    root.path.mkdir(parents=True, exist_ok=True)
    root.load_info()
    config = {"format": args.format, "scene_meta": str(args.scene_meta.resolve()),
              "frame_meta": str(args.frame_meta.resolve()) if args.frame_meta else None,
              "dataset": args.dataset, "split": args.split, "fps": args.fps}
    try:
        if args.format == "vsibench":
            results = import_vsibench(args.scene_meta, dataset=args.dataset, split=args.split or "val")
        else:
            results = import_vlm3r(args.scene_meta, args.frame_meta, dataset=args.dataset, split=args.split,
                                   fps=args.fps)
        files = [p for p in (args.scene_meta, args.frame_meta) if p is not None]
        digest = config_hash({"files": {str(p): sha256_file(p) for p in files}, "config": config})
    except Exception as exc:  # noqa: BLE001 - a bad file fails the whole import: say which and why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done, errors, processed = 0, [], []
    totals: dict[str, int] = {}
    for graph, report in results:
        if graph is None:
            ds = args.dataset or ""
            errors.append(ErrorRow.from_exception(STAGE, ds, report["scene_id"], report["error"]))
            processed.append((ds, report["scene_id"]))
            continue
        processed.append((graph.dataset, graph.scene_id))
        try:
            write_graph(root.graph_dir(graph.dataset, graph.scene_id), graph, input_hash=digest,
                        config={**config, "imported": True})
        except (ValueError, OSError) as exc:   # SchemaError / non-finite JSON / disk: a row, and go on
            errors.append(ErrorRow.from_exception(STAGE, graph.dataset, graph.scene_id, exc))
            continue
        done += 1
        for key, value in report.items():
            totals[key] = totals.get(key, 0) + int(value)
    record_errors(root.errors_path, STAGE, processed, errors)
    counts = {"scenes": len(results), "imported": done, "failed": len(errors), **totals}
    root.record_stage(STAGE, config, counts)
    extra = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if v)
    print(f"import-meta: {done} scene graphs imported, {len(errors)} failed -> {root.path / 'graph'}"
          + (f" ({extra})" if extra else ""))
    for row in errors:
        print(f"  failed {row.scene_id}: {row.message}", file=sys.stderr)
    return 1 if errors else 0
