"""``vlm3r-data routes``: navigable floor of every ingested scene -> sampled routes + a top-down plot per scene."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_ray_options, add_rebuild, config_errors, run_options, split_list
from pipeline.core.layout import DATASETS, DatasetRoot

HELP = "sample navigation routes on each scene's navigable floor (grid or habitat-sim backend) and plot them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT) holding ingested scenes")
    parser.add_argument("--backend", default=None, choices=("grid", "habitat"),
                        help="navigation backend (default: habitat when habitat_sim imports, else grid)")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="only scenes of this dataset")
    parser.add_argument("--scenes", nargs="+", default=None, help="only these scene ids or dataset_sceneid keys")
    parser.add_argument("--seed", type=int, default=0, help="run seed (each scene derives its own from it)")
    parser.add_argument("--max-routes", type=int, default=10, help="forward routes per scene")
    parser.add_argument("--reversed", action="store_true", help="also store each route walked backwards")
    parser.add_argument("--partial", action="store_true", help="also store prefixes ending at a landmark")
    parser.add_argument("--no-plots", action="store_true", help="skip the top-down PNG per scene")
    add_rebuild(parser, "--force", "scenes")
    add_ray_options(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.contract import StageRefused
    from pipeline.stages.run import run_stage
    from pipeline.stages.routes import RoutesConfig, RoutesStage
    from scene_graph.navigation import default_backend, habitat_available

    backend = args.backend or default_backend()
    if backend == "habitat" and not habitat_available():
        raise StageRefused("routes: --backend habitat needs habitat-sim (conda install habitat-sim -c aihabitat -c "
                           "conda-forge), which is not importable here; use --backend grid")
    with config_errors("routes"):
        config = RoutesConfig(backend, args.seed, args.max_routes, args.reversed, args.partial, not args.no_plots)
    scenes = split_list(args.scenes)
    options = run_options(args, subset=bool(scenes or args.dataset), selection=("--scenes", "--dataset"))
    result = run_stage(RoutesStage(), DatasetRoot(args.root), config, options,
                       extra={"scenes": scenes, "dataset": args.dataset})
    return result.exit_status
