"""``vlm3r-data qa``: scene graphs -> VSI-Bench, VSTI-Bench and regionbench questions (JSON lines, LLaVA JSON, stats)."""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from pipeline.commands.options import add_ray_options, add_rebuild, config_errors, run_options, split_list
from pipeline.core.layout import BENCHES, DatasetRoot

HELP = "generate VSI-Bench / VSTI-Bench / regionbench questions from scene graphs (ROOT/graph -> ROOT/qa)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qa_templates.config import QAConfig

    defaults = QAConfig()
    parser.add_argument("--root", required=True, type=Path, help="dataset root (reads ROOT/graph, writes ROOT/qa)")
    parser.add_argument("--bench", default="all", choices=BENCHES + ("all",), help="which benchmark's files")
    parser.add_argument("--split", nargs="+", default=None,
                        help="splits to generate (default: every split that has graphs)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; each (scene, task) derives its own from it")
    parser.add_argument("--max-per-scene-task", type=int, default=defaults.max_per_scene_task,
                        help="questions per scene and task (0 = no cap)")
    parser.add_argument("--max-per-task", type=int, default=None,
                        help="questions per task and split over the whole run, 0 = no cap (default: "
                             f"{defaults.max_per_task_vsibench} VSI-Bench, {defaults.max_per_task_vstibench} VSTI-Bench)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these task names (default: all of the bench)")
    add_rebuild(parser, what="question files")
    add_ray_options(parser, "Ray tasks in flight / local Ray cluster size", max(1, min(8, os.cpu_count() or 1)))


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.run import run_stage
    from pipeline.stages.qa import QAStage, QAStageConfig
    from qa_templates.config import QAConfig

    tasks = split_list(args.tasks)
    with config_errors("qa"):
        qa = replace(QAConfig(), max_per_scene_task=args.max_per_scene_task)
        if args.max_per_task is not None:
            qa = replace(qa, max_per_task_vsibench=args.max_per_task, max_per_task_vstibench=args.max_per_task)
        config = QAStageConfig(seed=args.seed, qa=qa, tasks=tuple(tasks) if tasks else None)
    benches = BENCHES if args.bench == "all" else (args.bench,)
    splits = split_list(args.split)
    options = run_options(args, subset=bool(splits) or args.bench != "all", selection=("--split", "--bench"))
    result = run_stage(QAStage(), DatasetRoot(args.root), config, options,
                       extra={"benches": benches, "splits": splits})
    return result.exit_status
