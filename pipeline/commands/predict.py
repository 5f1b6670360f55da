"""``vlm3r-data predict``: answer a published benchmark question file with a trained adapter.

The question file is in lmms-eval's VSI-Bench / VSTI-Bench layout (JSON lines, a JSON array or parquet); each
question's video is found in the root by ``<dataset>/<scene_name>`` (or ``video_path``): a plain video ingested with
``ingest --dataset video`` or a scan. Questions lmms-eval could not ask, and questions whose video has no tokens, are
counted, listed and written as error rows (``ROOT/errors.parquet``, stage ``predict``); the others are answered.
Score with ``vlm3r-data eval --questions FILE --predictions OUT``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "answer a benchmark question file (lmms-eval's VSI-Bench / VSTI-Bench layout) with a trained adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root with token shards (ROOT/tokens)")
    parser.add_argument("--questions", required=True, type=Path, help="question file: .jsonl, .json or .parquet")
    parser.add_argument("--adapter", required=True, type=Path,
                        help="a checkpoint folder (train's checkpoints/step_*) or a training run folder (its newest)")
    parser.add_argument("--out", required=True, type=Path, help='predictions, JSON lines {"id", "prediction"}')
    parser.add_argument("--max-new-tokens", type=int, default=16, help="lmms-eval's generation budget")
    parser.add_argument("--time-instruction", choices=("auto", "on", "off"), default="auto",
                        help="LLaVA-Video's time instruction in the prompt (auto: as the adapter was trained)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.core.errors import InputError, record_errors
    from pipeline.core.layout import DatasetRoot
    from pipeline.core.qa_records import load_benchmark_questions
    from workers.trainer.predict import STAGE, load_adapter, predict

    root = DatasetRoot(args.root)
    root.check()
    try:
        questions, problems = load_benchmark_questions(args.questions, STAGE)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        model, tokenizer, config, checkpoint = load_adapter(args.adapter, device)
        with_time = {"on": True, "off": False}.get(args.time_instruction, bool(config.get("time_instruction")))
        summary = predict(model, tokenizer, root, questions, args.out, max_new_tokens=args.max_new_tokens,
                          time_instruction=with_time, device=device, progress=not args.no_progress)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = problems + summary.error_rows(args.questions)
    processed = {(str(q.get("dataset", "")), str(q.get("scene_name", ""))) for q in questions}
    processed |= {(r.dataset, r.scene_id) for r in rows} | {("", "")}
    record_errors(root.errors_path, STAGE, processed, rows)
    for row in problems:
        print(f"  skipped: {row.error_type}: {row.message}", file=sys.stderr)
    for q in summary.missing[:20]:
        print(f"  no video: question {q['id']}: {q['video']}", file=sys.stderr)
    if len(summary.missing) > 20:
        print(f"  ... and {len(summary.missing) - 20} more questions without a video", file=sys.stderr)
    total = summary.questions + sum(1 for r in problems if r.error_type != "UnknownColumns")
    print(f"predict: {summary.answered} of {total} questions answered from {summary.videos} videos "
          f"({summary.questions_per_s:.2f} questions/s, checkpoint {checkpoint}); "
          f"{len(summary.missing)} without a video in the root, {len(problems)} problems in the question file "
          f"-> {args.out}" + (f" (error rows: {root.errors_path})" if rows else ""))
    print(f"score: vlm3r-data eval --questions {args.questions} --predictions {args.out}")
    return 1 if rows else 0
