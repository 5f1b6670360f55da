"""``vlm3r-data export-meta``: scene graphs -> VLM-3R's scene and frame metadata JSON files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.layout import DATASETS

HELP = "export scene graphs as VLM-3R scene_metadata / frame_metadata JSON (finite poses only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=("vlm3r",), help="metadata layout to write")
    parser.add_argument("--root", required=True, type=Path, help="dataset root holding ROOT/graph/")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: <split>/<dataset>_metadata_<split>.json and "
                             "<split>/<dataset>_frame_metadata_<split>.json, as VLM-3R's QA generators expect")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only graphs of this dataset")


def run(args: argparse.Namespace) -> int:
    from scene_graph.graph import list_graphs, read_graph
    from scene_graph.interop import export_vlm3r

    keys = list_graphs(args.root, args.dataset)
    if not keys:
        print(f"error: no complete scene graphs under {args.root / 'graph'}", file=sys.stderr)
        return 1
    groups: dict[tuple[str, str], list] = {}
    for ds, sid in keys:
        graph = read_graph(Path(args.root) / "graph" / ds / sid)
        groups.setdefault((ds, graph.split), []).append(graph)
    for (ds, split), graphs in sorted(groups.items()):
        scene_path = args.out / split / f"{ds}_metadata_{split}.json"
        frame_path = args.out / split / f"{ds}_frame_metadata_{split}.json"
        counts = export_vlm3r(graphs, scene_path, frame_path)
        print(f"export-meta: {ds}/{split}: {counts['scenes']} scenes, {counts['frames']} frames "
              f"({counts['frames_without_finite_pose']} without a finite pose left out) -> {scene_path.parent}")
    return 0
