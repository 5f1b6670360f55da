"""``vlm3r-data run``: every stage in order on real data, driven by one YAML config, resumable at every stage."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from pipeline.config import STAGE_ORDER, ConfigError, PipelineConfig, load_config, stage_flags

HELP = "run every stage (ingest, extract, graph, routes, qa, pack, train, eval, stats) from one YAML config, with resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML (see pipeline/config.py for the layout)")
    parser.add_argument("--only", default=None, help=f"comma-separated stages to run ({','.join(STAGE_ORDER)})")
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands without running them")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. workers=16 extract.num_gpus=2")


def _options_of(command: str) -> set[str]:
    """The long option names a command accepts (from its own parser), so shared flags go only where they fit."""
    from pipeline.cli import _module_name

    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(_module_name(command)).add_arguments(parser)
    return {opt for action in parser._actions for opt in action.option_strings}


def plan(config: PipelineConfig, available: list[str], only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The (title, argv) of every stage command to run, in pipeline order."""
    steps: list[tuple[str, list[str]]] = []
    for stage in STAGE_ORDER:
        if stage in config.skip or stage not in available or (only and stage not in only):
            continue
        accepts = _options_of(stage)
        common: list[str] = []
        if config.local and "--local" in accepts:
            common.append("--local")
        elif not config.local:
            if config.ray_address and "--ray-address" in accepts:
                common += ["--ray-address", config.ray_address]
            # ``workers`` sizes the per-scene Ray pool; train's --workers means Ray Train ranks, set in its section.
            if "--workers" in accepts and stage != "train":
                common += ["--workers", str(config.workers)]
        if "--seed" in accepts:
            common += ["--seed", str(config.seed)]
        options = stage_flags(config.stages.get(stage, {}))
        if stage == "ingest":
            for ds in config.datasets:
                argv = ["ingest", "--dataset", ds.name, "--raw", ds.raw, "--out", config.root]
                for key in ("split", "scenes", "stream"):
                    if getattr(ds, key):
                        argv += [f"--{key}", getattr(ds, key)]
                steps.append((f"ingest {ds.name}", argv + common + options))
        elif "--root" in accepts:
            steps.append((stage, [stage, "--root", config.root] + common + options))
        elif options:  # a stage outside the dataset root (eval of given files) runs only when configured
            steps.append((stage, [stage] + common + options))
    return steps


def run(args: argparse.Namespace) -> int:
    from pipeline.cli import available_commands

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - set(STAGE_ORDER))
    if unknown:
        print(f"error: --only: unknown stage(s) {unknown}; known: {', '.join(STAGE_ORDER)}", file=sys.stderr)
        return 2
    steps = plan(config, available_commands(), only)
    if not steps:
        print("nothing to run: every stage is skipped or unavailable", file=sys.stderr)
        return 2
    if args.dry_run:
        for title, argv in steps:
            print(f"\n== {title}: vlm3r-data {' '.join(argv)}", flush=True)
        return 0
    results: list[tuple[str, int, float]] = []
    for title, argv in steps:
        results.append(run_step(title, argv))
        if results[-1][1] == 2:
            print(f"error: stage {title!r} refused its configuration; stopping", file=sys.stderr)
            break
    print_summary(results)
    print(f"  dataset root: {config.root}  (vlm3r-data status --root {config.root})")
    if any(s == 2 for _, s, _ in results):
        return 2
    return 0 if all(s == 0 for _, s, _ in results) else 1


def run_step(title: str, argv: list[str]) -> tuple[str, int, float]:
    """One command of a sequence, announced: (title, exit status, seconds). An option argparse rejects (exit 2)
    is a status, not an exit of the whole sequence."""
    from pipeline.cli import main

    print(f"\n== {title}: vlm3r-data {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
    return title, status, time.perf_counter() - t0


def print_summary(results: list[tuple[str, int, float]]) -> None:
    print("\n== summary")
    width = max(len(t) for t, _, _ in results)
    for title, status, seconds in results:
        print(f"  {title:<{width}}  {'ok' if status == 0 else f'FAILED ({status})':<12} {seconds:7.1f}s")
