"""``vlm3r-data pack``: geometry tokens + frames + timing + all training QA of each scene -> training shards."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_allow_stale, add_rebuild, positive, run_options
from pipeline.core.layout import DatasetRoot

HELP = "join token shards with the training QA into training shards (one sample per scene; benchmark scenes never)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--max-shard-mb", type=positive(float), default=1024.0,
                        help="start a new shard beyond this size")
    parser.add_argument("--vision-features", default="",
                        help="store pre-computed vision-tower features instead of JPEGs: 'tiny' or a local "
                             "SigLIP / LLaVA model folder")
    parser.add_argument("--no-verify", action="store_true", help="skip sha256 checks of the token shards read")
    add_rebuild(parser, "--overwrite", "scenes")
    add_allow_stale(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.run import run_stage
    from pipeline.stages.pack import PackConfig, PackStage

    encoder, visual = None, "jpeg"
    if args.vision_features:
        from workers.trainer.vision import vision_encoder

        encoder, fingerprint = vision_encoder(args.vision_features)
        visual = f"vision_features:{fingerprint}"
    options = run_options(args)
    result = run_stage(PackStage(), DatasetRoot(args.root), PackConfig(visual=visual), options,
                       extra={"vision_encoder": encoder, "max_shard_bytes": int(args.max_shard_mb * (1 << 20)),
                              "verify_sha256": not args.no_verify})
    return result.exit_status
