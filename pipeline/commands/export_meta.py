"""``vlm3r-data export-meta``: scene graphs -> VLM-3R's scene and frame metadata JSON files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.layout import DATASETS

HELP = "export scene graphs as VLM-3R scene/frame metadata JSON, or ScanNet scenes as ScanNet200-preprocessed PLY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=("vlm3r", "scannet200"),
                        help="vlm3r: VLM-3R's metadata JSON from the scene graphs; scannet200: the ScanNet200 "
                             "preprocessing's point_cloud/<split>/<scene>.ply from the ingested ScanNet scenes")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: <split>/<dataset>_metadata_<split>.json and "
                             "<split>/<dataset>_frame_metadata_<split>.json, as VLM-3R's QA generators expect "
                             "(vlm3r), or <split>/<scene>.ply (scannet200)")
    parser.add_argument("--valid-ids", type=Path, default=None,
                        help="scannet200: file of label ids to keep (one per line, e.g. ScanNet200's "
                             "VALID_CLASS_IDS_200); other labels become 0. Default: every id of the label map")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only graphs of this dataset")


def _export_scannet200(args: argparse.Namespace) -> int:
    from pipeline.core.layout import DatasetRoot
    from pipeline.core.scene import read_scene
    from pipeline.sources.scannet import export_scannet200_ply

    root = DatasetRoot(args.root)
    root.check()
    valid = None
    if args.valid_ids is not None:
        try:
            valid = {int(t) for t in args.valid_ids.read_text().split()}
        except (OSError, ValueError) as exc:
            print(f"error: {args.valid_ids}: cannot read label ids: {exc}", file=sys.stderr)
            return 2
    scenes = root.scenes("scannet")
    if not scenes:
        print(f"error: no ingested ScanNet scenes under {root.path / 'scenes' / 'scannet'}", file=sys.stderr)
        return 1
    for _, scene_id in scenes:
        scene = read_scene(root.scene_dir("scannet", scene_id))
        split = scene.split if scene.split in ("train", "val") else "test"  # as the ScanNet200 preprocessing does
        counts = export_scannet200_ply(scene, args.out / split / f"{scene_id}.ply", valid)
        print(f"export-meta: {scene_id}: {counts['vertices']} vertices, {counts['instances']} instances "
              f"-> {args.out / split / f'{scene_id}.ply'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.format == "scannet200":
        return _export_scannet200(args)
    from pipeline.core.layout import DatasetRoot
    from scene_graph.graph import read_graph
    from scene_graph.interop import export_vlm3r

    root = DatasetRoot(args.root)
    root.check()
    keys = root.graphs(args.dataset)
    if not keys:
        print(f"error: no complete scene graphs under {root.graphs_dir}", file=sys.stderr)
        return 1
    groups: dict[tuple[str, str], list] = {}
    for ds, sid in keys:
        graph = read_graph(root.graph_dir(ds, sid))
        groups.setdefault((ds, graph.split), []).append(graph)
    for (ds, split), graphs in sorted(groups.items()):
        scene_path = args.out / split / f"{ds}_metadata_{split}.json"
        frame_path = args.out / split / f"{ds}_frame_metadata_{split}.json"
        counts = export_vlm3r(graphs, scene_path, frame_path)
        print(f"export-meta: {ds}/{split}: {counts['scenes']} scenes, {counts['frames']} frames "
              f"({counts['frames_without_finite_pose']} without a finite pose left out) -> {scene_path.parent}")
    return 0
