"""``vlm3r-data import-meta``: VLM-3R or VSI-Bench metadata JSON -> scene graphs under ROOT/graph/."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_rebuild, config_errors, run_options
from pipeline.core.layout import DATASETS, DatasetRoot

HELP = "import VLM-3R scene/frame metadata or VSI-Bench meta_info JSON as scene graphs (QA without raw scans)"


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
    add_rebuild(parser, what="scenes")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.atomic import sha256_file
    from pipeline.stages.contract import StageRefused
    from pipeline.stages.run import run_stage
    from pipeline.stages.import_meta import ImportMetaConfig, ImportMetaStage

    for path in (args.scene_meta, args.frame_meta):
        if path is not None and not path.is_file():
            raise StageRefused(f"import-meta: {path}: metadata file not found")
    with config_errors("import-meta"):
        config = ImportMetaConfig(
            args.format, str(args.scene_meta.resolve()), sha256_file(args.scene_meta),
            str(args.frame_meta.resolve()) if args.frame_meta else None,
            sha256_file(args.frame_meta) if args.frame_meta else None, args.dataset, args.split, args.fps)
    return run_stage(ImportMetaStage(), DatasetRoot(args.out), config, run_options(args)).exit_status
