"""``vlm3r-data predict``: answer a published benchmark question file with a trained adapter.

The question file is in lmms-eval's VSI-Bench / VSTI-Bench layout (JSON lines, a JSON array or parquet); each
question's video is found in the root by ``<dataset>/<scene_name>`` (or ``video_path``): a plain video ingested with
``ingest --dataset video`` or a scan. Questions lmms-eval could not ask, and questions whose video has no tokens, are
counted, listed and written as error rows (``ROOT/errors.parquet``, stage ``predict``); the others are answered.
Score with ``vlm3r-data eval --questions FILE --predictions OUT``. (``train --predict`` answers the root's own
benchmark questions.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_allow_stale, run_options
from pipeline.core.layout import DatasetRoot

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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allow_stale(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.core.atomic import read_json, sha256_file
    from pipeline.stages.contract import StageRefused
    from pipeline.stages.run import run_stage
    from pipeline.stages.train import PredictFileConfig, PredictFileStage
    from workers.trainer.predict import adapter_checkpoint

    if not args.questions.is_file():
        raise StageRefused(f"predict: {args.questions}: question file not found")
    checkpoint = adapter_checkpoint(args.adapter)
    trained_with_time = bool(read_json(checkpoint / "config.json").get("time_instruction"))
    with_time = {"on": True, "off": False}.get(args.time_instruction, trained_with_time)
    config = PredictFileConfig(str(args.questions.resolve()), sha256_file(args.questions), str(checkpoint.resolve()),
                               str(args.out.resolve()), args.max_new_tokens, with_time)
    result = run_stage(PredictFileStage(), DatasetRoot(args.root), config, run_options(args))
    return result.exit_status
