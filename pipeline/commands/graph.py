"""``vlm3r-data graph``: canonical scenes -> scene graphs (objects, frames, visibility, room measures)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_ray_options, add_rebuild, config_errors, run_options, split_list
from pipeline.core.layout import DATASETS, DatasetRoot

HELP = "build the scene graph of every ingested scene: objects, frames, visibility, room measures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT) holding ingested scenes")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only scenes of this dataset")
    parser.add_argument("--scenes", nargs="+", default=None,
                        help="only these scene ids or dataset_sceneid keys (space- or comma-separated)")
    parser.add_argument("--depth-tolerance", type=float, default=0.2,
                        help="a projected surface point is visible where |z - depth| <= tolerance x depth")
    parser.add_argument("--floor-seed", type=int, default=None,
                        help="seed of the floor-point sampling (default: VLM-3R's, 42 for ScanNet and ScanNet++, "
                             "0 for ARKitScenes)")
    parser.add_argument("--no-masks", action="store_true",
                        help="ignore the dataset's instance masks and always project the mesh")
    add_rebuild(parser, "--force", "graphs")
    add_ray_options(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.run import run_stage
    from pipeline.stages.graph import GraphStage, scene_graph_config

    with config_errors("graph"):
        config = scene_graph_config(args.depth_tolerance, args.floor_seed, not args.no_masks)
    scenes = split_list(args.scenes)
    options = run_options(args, subset=bool(scenes or args.dataset), selection=("--scenes", "--dataset"))
    result = run_stage(GraphStage(), DatasetRoot(args.root), config, options,
                       extra={"scenes": scenes, "dataset": args.dataset})
    return result.exit_status
