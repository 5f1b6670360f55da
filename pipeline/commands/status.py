"""``vlm3r-data status``: done / total / stale / failed per stage of a dataset root, and where the outputs are."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print done / total / stale / failed per stage of a dataset root and where each stage's outputs are"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.atomic import dumps_json
    from pipeline.stages.run import ledgers_of
    from pipeline.stages.status import format_table, root_status

    status = root_status(ledgers_of(args.root))
    sys.stdout.write(dumps_json(status.to_json()) if args.json else format_table(status))
    return 0
