"""``vlm3r-data eval``: score predictions against benchmark questions with the benchmarks' exact rules."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.atomic import write_json
from pipeline.core.errors import InputError

HELP = "score predictions (JSON lines with id and prediction) against VSI-Bench / VSTI-Bench questions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=Path, default=None, help="benchmark records (JSON lines)")
    parser.add_argument("--predictions", type=Path, default=None, help='JSON lines {"id": ..., "prediction": "..."}')
    parser.add_argument("--out", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--bench", choices=("vsibench", "vstibench"), default=None,
                        help="overall rule (default: detected from the questions)")
    parser.add_argument("--root", type=Path, default=None,
                        help="instead of --questions/--predictions: score every <bench>_<split>.jsonl in the "
                             "predictions folder against ROOT/qa/<bench>/<split>.jsonl, scores to ROOT/eval/")
    parser.add_argument("--predictions-dir", type=Path, default=None,
                        help="with --root: where the predictions are (default ROOT/train/predictions)")


def _print_report(title: str, report) -> None:
    width = max([len(k) for k in report.scores] + [13])
    print(f"{title}\n{'question_type':<{width}}  {'n':>6}  {'score':>7}")
    for key, value in report.scores.items():
        if key != "overall":
            print(f"{key:<{width}}  {report.counts.get(key, ''):>6}  {value:7.2f}")
    print(f"{'overall':<{width}}  {sum(report.counts.values()):>6}  {report.scores['overall']:7.2f}")
    print(f"missing predictions: {report.missing} (scored 0); unknown ids: {report.unknown_ids}; "
          f"duplicate ids: {report.duplicate_ids}; malformed lines: {len(report.malformed_lines)}")
    for problem in report.malformed_lines[:10]:
        print(f"  {problem}", file=sys.stderr)


def _jobs(args: argparse.Namespace) -> list[tuple[Path, Path, Path | None]] | str:
    """(questions, predictions, out) to score, or an error message."""
    if args.root is None:
        if args.questions is None or args.predictions is None:
            return "give --questions and --predictions, or --root"
        return [(args.questions, args.predictions, args.out)]
    if args.questions or args.predictions:
        return "--root scores a whole dataset root; do not combine it with --questions/--predictions"
    folder = args.predictions_dir or args.root / "train" / "predictions"
    files = sorted(folder.glob("*_*.jsonl")) if folder.is_dir() else []
    if not files:
        return f"{folder}: no <bench>_<split>.jsonl predictions found"
    jobs = []
    for path in files:
        bench, split = path.stem.split("_", 1)
        jobs.append((args.root / "qa" / bench / f"{split}.jsonl", path, args.root / "eval" / f"{bench}_{split}.json"))
    return jobs


def run(args: argparse.Namespace) -> int:
    from qa_templates.scorer import score_files

    jobs = _jobs(args)
    if isinstance(jobs, str):
        print(f"error: {jobs}", file=sys.stderr)
        return 2
    for questions, predictions, out in jobs:
        try:
            report = score_files(questions, predictions, args.bench)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _print_report(f"\n{predictions.name} vs {questions}", report)
        if out:
            write_json(out, report.to_json())
            print(f"scores: {out}")
    return 0
