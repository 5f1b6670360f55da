"""``vlm3r-data ingest``: raw dataset release -> canonical scenes and frame manifests."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_ray_options, add_rebuild, config_errors, run_options, split_list
from pipeline.core.layout import DATASETS, DatasetRoot
from pipeline.core.scene import DEFAULT_NUM_FRAMES

HELP = "read a raw ScanNet / ScanNet++ / ARKitScenes release, or a folder of videos, into canonical scenes and frame manifests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="raw format of --raw")
    parser.add_argument("--raw", required=True, type=Path, help="root of the raw release")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write (ROOT)")
    parser.add_argument("--split", default=None, help="only scenes of this split (e.g. train, val)")
    parser.add_argument("--scenes", nargs="+", default=None,
                        help="only these scene ids (space- or comma-separated); all scenes of the split when omitted")
    parser.add_argument("--stream", default=None, choices=("iphone", "dslr"),
                        help="ScanNet++ only: which capture to use as the video (default iphone)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                        help="frames per scene in the frame manifest (uniform among valid frames)")
    parser.add_argument("--no-verify-frames", action="store_true",
                        help="skip decoding the manifest frames at ingest (corrupt frames then surface in extract)")
    add_rebuild(parser, "--force", "scenes")
    add_ray_options(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.run import run_stage
    from pipeline.stages.ingest import IngestConfig, IngestStage

    with config_errors("ingest"):
        config = IngestConfig(args.dataset, str(args.raw.resolve()), args.num_frames, not args.no_verify_frames,
                              args.stream)
    scenes = split_list(args.scenes)
    options = run_options(args, subset=bool(scenes or args.split), selection=("--scenes", "--split"))
    result = run_stage(IngestStage(), DatasetRoot(args.out), config, options,
                       extra={"scenes": scenes, "split": args.split})
    return result.exit_status
