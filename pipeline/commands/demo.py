"""``vlm3r-data demo``: every stage that exists, end to end, on generated scenes with a small random CUT3R on CPU."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from pipeline.commands.run import print_summary, run_step

HELP = "run every stage end to end on generated scenes (all three raw formats, small random CUT3R, CPU)"

WRITERS = {
    "scannet": ("pipeline.sources.scannet_writer", "write_scannet"),
    "scannetpp": ("pipeline.sources.scannetpp_writer", "write_scannetpp"),
    "arkitscenes": ("pipeline.sources.arkitscenes_writer", "write_arkitscenes"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (raw data and ROOT)")
    parser.add_argument("--scenes", type=int, default=3, help="generated scenes, each written in all three formats")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene generator and of every stage")
    parser.add_argument("--local", action="store_true", help="run stages in-process instead of on a local Ray")
    parser.add_argument("--train-steps", type=int, default=40, help="optimizer steps of the tiny model")
    parser.add_argument("--keep", action="store_true", help="keep an existing --out (resume) instead of starting clean")


def _video_path(out: Path, scenes: list, root: Path, mode: list[str]) -> list[tuple[str, int, float]]:
    """The benchmarks' own path: plain videos (the validation scene as VSI-Bench ships it, plus a sideways phone clip)
    into a root of their own, tokens, the published question file answered by the adapter just trained, and scored."""
    from pipeline.core.qa_records import iter_records, write_benchmark_questions
    from pipeline.sources.video_writer import write_video_folder

    videos, video_root = out / "raw" / "videos", out / "video_root"
    val = scenes[-1:] if len(scenes) > 1 else scenes
    for dataset in ("scannet", "scannetpp"):
        write_video_folder(val, videos, dataset=dataset, sideways=dataset == "scannetpp")
    # The root's own VSI-Bench validation questions about those two datasets, written as lmms-eval's file.
    questions = [r for r in iter_records(root / "qa" / "vsibench" / "val.jsonl") if r["dataset"] in ("scannet",
                                                                                                   "scannetpp")]
    question_file = write_benchmark_questions(questions, out / "questions" / "vsibench_val.jsonl")
    predictions, scores = out / "predictions" / "vsibench_val.jsonl", out / "predictions" / "vsibench_val_scores.json"
    return [
        run_step("ingest video", ["ingest", "--dataset", "video", "--raw", str(videos), "--out", str(video_root), *mode]),
        # No depth or poses in a plain video: the points (and per-frame poses, marked estimated) come from CUT3R.
        run_step("extract video", ["extract", "--root", str(video_root), "--random-tiny", "--with-frames",
                                "--points", "cut3r", *mode]),
        run_step("predict video", ["predict", "--root", str(video_root), "--questions", str(question_file),
                                "--adapter", str(root / "train"), "--out", str(predictions)]),
        run_step("eval video", ["eval", "--questions", str(question_file), "--predictions", str(predictions),
                             "--out", str(scores)]),
    ]


def run(args: argparse.Namespace) -> int:
    import importlib

    from pipeline.cli import available_commands
    from pipeline.sources.synthetic import generate_scenes

    out: Path = args.out
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    raw, root = out / "raw", out / "root"
    t0 = time.perf_counter()
    print(f"generating {args.scenes} synthetic scenes (seed {args.seed}) in 3 raw formats under {raw}")
    scenes = generate_scenes(args.scenes, seed=args.seed, mounted=True)
    for i, scene in enumerate(scenes):
        # The last scene is a validation (benchmark) scene, so the split guard has something to guard.
        split = "val" if i == len(scenes) - 1 and len(scenes) > 1 else "train"
        for dataset, (module, func) in WRITERS.items():
            getattr(importlib.import_module(module), func)(scene, raw / dataset, split=split)
    print(f"  done in {time.perf_counter() - t0:.1f}s")

    have = set(available_commands())
    mode = ["--local"] if args.local else ["--workers", "2"]
    results = []
    for dataset in WRITERS:
        results.append(run_step(f"ingest {dataset}", ["ingest", "--dataset", dataset, "--raw", str(raw / dataset),
                                                    "--out", str(root), *mode]))
    if "extract" in have:
        results.append(run_step("extract", ["extract", "--root", str(root), "--random-tiny", "--with-frames",
                                         "--points", "depth", *mode]))
    if "graph" in have:
        results.append(run_step("graph", ["graph", "--root", str(root), *mode]))
    if "routes" in have:
        results.append(run_step("routes", ["routes", "--root", str(root), *mode]))
    if "qa" in have:
        results.append(run_step("qa", ["qa", "--root", str(root), "--seed", str(args.seed), *mode]))

    if "pack" in have:
        results.append(run_step("pack", ["pack", "--root", str(root)]))
    if "train" in have:
        # The tiny random model learns only with a much larger step size than the 7B recipe's 2e-5.
        results.append(run_step("train", ["train", "--root", str(root), "--tiny", "--steps", str(args.train_steps),
                                       "--grad-accum", "1", "--lr", "2e-3", "--seed", str(args.seed), "--predict"]))
    if "eval" in have and (root / "train" / "predictions").is_dir():
        results.append(run_step("eval", ["eval", "--root", str(root)]))
    if {"predict", "eval"} <= have and (root / "train" / "checkpoints").is_dir():
        results += _video_path(out, scenes, root, mode)
    if "stats" in have:
        results.append(run_step("stats", ["stats", "--root", str(root)]))
    if "status" in have:
        results.append(run_step("status", ["status", "--root", str(root)]))

    print_summary(results)
    print(f"  total {time.perf_counter() - t0:.1f}s; dataset root: {root.resolve()}")
    scores = sorted((root / "eval").glob("*.json")) if (root / "eval").is_dir() else []
    scores += sorted((out / "predictions").glob("*_scores.json")) if (out / "predictions").is_dir() else []
    if scores:
        from pipeline.core.atomic import read_json

        print("\n== eval of the tiny trained model (scores in %; a tiny random model trained a few steps on CPU scores near chance)")
        for path in scores:
            table = read_json(path)
            print(f"  {path.stem}: overall {table['overall']:.2f}, missing {table.get('missing', 0)}")
            for key, value in sorted(table.items()):
                if isinstance(value, (int, float)) and key not in ("overall", "missing", "duplicate_ids", "unknown_ids", "malformed_lines"):
                    print(f"    {key:<32} {value:6.2f}")
    if (root / "report" / "report.md").exists():
        print(f"  report: {(root / 'report' / 'report.md').resolve()}")
    if (root / "errors.parquet").exists():
        print(f"  error rows: {root / 'errors.parquet'}")
    return 0 if all(r[1] == 0 for r in results) else 1


