"""``vlm3r-data stats``: the dataset report (Markdown + PNG plots) of a dataset root."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import run_options
from pipeline.core.layout import DatasetRoot

HELP = "write the dataset report (Markdown + PNG plots: questions, answers, letters, frames, tokens, shards, failures)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: ROOT/report)")


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.run import run_stage
    from pipeline.stages.stats import StatsConfig, StatsStage

    config = StatsConfig(str(args.out.resolve()) if args.out else "")
    return run_stage(StatsStage(), DatasetRoot(args.root), config, run_options(args)).exit_status
