"""``vlm3r-data eval``: score predictions against benchmark questions with the benchmarks' exact rules."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_allow_stale, add_rebuild, run_options
from pipeline.core.layout import BENCHES, DatasetRoot

HELP = "score predictions (JSON lines with id and prediction) against VSI-Bench / VSTI-Bench questions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=Path, default=None, help="benchmark records (JSON lines)")
    parser.add_argument("--predictions", type=Path, default=None, help='JSON lines {"id": ..., "prediction": "..."}')
    parser.add_argument("--out", type=Path, default=None, help="with --questions: write the scores as JSON here")
    parser.add_argument("--bench", choices=BENCHES, default=None,
                        help="overall rule (default: detected from the questions)")
    parser.add_argument("--root", type=Path, default=None,
                        help="instead of --questions/--predictions: score every <bench>_<split>.jsonl in the "
                             "predictions folder against ROOT/qa/<bench>/<split>.jsonl, scores to ROOT/eval/")
    parser.add_argument("--predictions-dir", type=Path, default=None,
                        help="with --root: where the predictions are (default ROOT/train/predictions)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score questions without a prediction as wrong (lmms-eval's worst case) instead of "
                             "refusing the file; malformed lines, duplicate and unknown ids are always refused")
    add_rebuild(parser, what="scores")
    add_allow_stale(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.contract import StageRefused

    if args.root is None:
        if args.questions is None or args.predictions is None:
            raise StageRefused("eval: give --questions and --predictions, or --root")
        return _score_files(args)
    if args.questions or args.predictions or args.out:
        raise StageRefused("eval: --root scores a whole dataset root; do not combine it with --questions, "
                           "--predictions or --out")
    from pipeline.stages.run import run_stage
    from pipeline.stages.eval import EvalConfig, EvalStage

    result = run_stage(EvalStage(), DatasetRoot(args.root), EvalConfig(args.bench), run_options(args),
                       extra={"predictions_dir": args.predictions_dir, "allow_missing": args.allow_missing})
    return result.exit_status


def _score_files(args: argparse.Namespace) -> int:
    """Score one predictions file (no dataset root): the same strict rules, exit 1 on refused predictions."""
    import sys

    from pipeline.core.atomic import write_json
    from pipeline.core.errors import InputError
    from pipeline.stages.eval import print_report
    from qa_templates.scorer import ScoringRefused, score_files

    try:
        report = score_files(args.questions, args.predictions, args.bench, allow_missing=args.allow_missing)
    except ScoringRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:       # a missing or malformed question file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(f"{args.predictions.name} vs {args.questions}", report)
    if args.out:
        write_json(args.out, report.to_json())
        print(f"scores: {args.out}")
    return 0
