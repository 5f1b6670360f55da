"""``vlm3r-data stats``: the dataset report (Markdown + PNG plots) of a dataset root."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write the dataset report (Markdown + PNG plots: questions, answers, letters, frames, tokens, shards, failures)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: ROOT/report)")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.errors import InputError
    from pipeline.core.layout import DatasetRootError
    from pipeline.stages.report import write_report

    try:
        result = write_report(args.root, args.out)
    except (InputError, DatasetRootError) as exc:
        print(f"vlm3r-data stats: {exc}", file=sys.stderr)
        return 2
    print(f"stats: {result.total_questions} questions, {len(result.plot_paths)} plots -> {result.report_path}")
    return 0
