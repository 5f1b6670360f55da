"""``vlm3r-data eval``: score predictions against benchmark questions with the benchmarks' exact rules."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import InputError

HELP = "score predictions (JSON lines with id and prediction) against VSI-Bench / VSTI-Bench questions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, type=Path, help="benchmark records (JSON lines)")
    parser.add_argument("--predictions", required=True, type=Path, help='JSON lines {"id": ..., "prediction": "..."}')
    parser.add_argument("--out", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--bench", choices=("vsibench", "vstibench"), default=None,
                        help="overall rule (default: detected from the questions)")


def run(args: argparse.Namespace) -> int:
    from qa_templates.scorer import score_files

    try:
        report = score_files(args.questions, args.predictions, args.bench)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max([len(k) for k in report.scores] + [13])
    print(f"{'question_type':<{width}}  {'n':>6}  {'score':>7}")
    for key, value in report.scores.items():
        if key != "overall":
            print(f"{key:<{width}}  {report.counts.get(key, ''):>6}  {value:7.2f}")
    print(f"{'overall':<{width}}  {sum(report.counts.values()):>6}  {report.scores['overall']:7.2f}")
    print(f"missing predictions: {report.missing} (scored 0); unknown ids: {report.unknown_ids}; "
          f"duplicate ids: {report.duplicate_ids}; malformed lines: {len(report.malformed_lines)}")
    for problem in report.malformed_lines[:10]:
        print(f"  {problem}", file=sys.stderr)
    if args.out:
        write_json(args.out, report.to_json())
    return 0
