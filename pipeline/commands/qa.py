"""``vlm3r-data qa``: scene graphs -> VSI-Bench and VSTI-Bench questions (benchmark JSON lines, LLaVA JSON, stats)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_open, dumps_json, read_json, write_json
from pipeline.core.errors import ErrorRow, InputError, record_errors
from pipeline.core.layout import DatasetRoot, scene_key
from pipeline.core.parallel import map_units

HELP = "generate VSI-Bench / VSTI-Bench questions from scene graphs (ROOT/graph -> ROOT/qa)"
STAGE = "qa"
BENCHES = ("vsibench", "vstibench")
# Benchmark splits: their scenes are the benchmarks' own; only the benchmarks' question forms are written for them
# and they never feed training files.
BENCHMARK_SPLITS = frozenset({"val", "test"})
# VSI-Bench route planning comes from the routes stage (ROOT/routes/<dataset>/<scene_id>.parquet), not from the graph.
ROUTE_TASK = "route_planning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qa_templates.config import QAConfig

    defaults = QAConfig()
    parser.add_argument("--root", required=True, type=Path, help="dataset root (reads ROOT/graph, writes ROOT/qa)")
    parser.add_argument("--bench", default="all", choices=BENCHES + ("all",), help="which benchmark's tasks")
    parser.add_argument("--split", nargs="+", default=None,
                        help="splits to generate (default: every split that has graphs)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; each (scene, task) derives its own from it")
    parser.add_argument("--max-per-scene-task", type=int, default=defaults.max_per_scene_task,
                        help="questions per scene and task (0 = no cap)")
    parser.add_argument("--max-per-task", type=int, default=None,
                        help="questions per task and split over the whole run, 0 = no cap (default: "
                             f"{defaults.max_per_task_vsibench} VSI-Bench, {defaults.max_per_task_vstibench} VSTI-Bench)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these task names (default: all of the bench)")
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="Ray tasks in flight / local Ray cluster size")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")


@dataclass(frozen=True)
class ScenePlan:
    """Everything a worker needs for one scene (picklable)."""
    dataset: str
    scene_id: str
    split: str
    graph_dir: str
    benches: tuple[str, ...]
    task_names: tuple[tuple[str, tuple[str, ...]], ...]   # (bench, task names)
    seed: int
    config: Any                                          # QAConfig
    routes_path: str = ""                                # the scene's routes table ("" = no route questions)


def qa_scene(plan: ScenePlan) -> dict[str, Any]:
    """Read one graph and generate every selected task. Runs inside a Ray task (or in-process with --local)."""
    from qa_templates.generate import generate_scene
    from qa_templates.scene_view import build_view
    from qa_templates.tasks import TASKS_BY_NAME
    from scene_graph.graph import read_graph

    graph = read_graph(plan.graph_dir)
    if (graph.dataset, graph.scene_id, graph.split) != (plan.dataset, plan.scene_id, plan.split):
        raise InputError(plan.graph_dir, f"graph says {graph.dataset}/{graph.scene_id} split {graph.split}, "
                                         f"expected {plan.dataset}/{plan.scene_id} split {plan.split}")
    try:
        view = build_view(graph, plan.config.min_visible_pixels)
    except InputError as exc:  # name the real file on disk
        raise InputError(Path(plan.graph_dir) / Path(exc.path).name, exc.problem) from exc
    out = {}
    for bench, names in plan.task_names:
        result = generate_scene(view, bench, [TASKS_BY_NAME[n] for n in names], plan.seed, plan.config)
        out[bench] = {"records": result.records, "stats": result.stats, "notes": result.notes}
    if plan.routes_path:
        out["vsibench"]["stats"][ROUTE_TASK] = _route_questions(plan, view.key, out["vsibench"]["records"])
    return out


def _route_questions(plan: ScenePlan, key: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Append the scene's route-planning records; returns the task's stats entry."""
    from pipeline.core.schemas import ROUTES_SCHEMA, read_table
    from qa_templates.route_planning import route_records

    rejected: Counter = Counter()
    routes = read_table(plan.routes_path, ROUTES_SCHEMA)
    made = route_records(routes, dataset=plan.dataset, scene_id=plan.scene_id, scene_key=key, run_seed=plan.seed,
                         max_per_scene=plan.config.max_per_scene_task, rejected=rejected)
    records.extend(made)
    candidates = routes.num_rows - sum(rejected.values())
    return {"candidates": candidates, "kept": len(made), "capped_per_scene": candidates - len(made),
            "rejections": dict(sorted(rejected.items()))}


def _room_of(dataset: str, scene_id: str) -> str | None:
    """ScanNet rescans of one room (scene0000_00, scene0000_01) share a room; the official splits keep them together."""
    m = re.fullmatch(r"(scene\d{4})_\d{2}", scene_id) if dataset == "scannet" else None
    return f"scannet/{m.group(1)}" if m else None


def check_splits(scenes: list[ScenePlan], recorded: dict[str, list[str]], splits: set[str]) -> list[str]:
    """Problems with the split assignment: a scene (or a ScanNet room) in two splits, here or in earlier runs."""
    problems = []
    where: dict[str, set[str]] = defaultdict(set)
    for split, keys in recorded.items():
        if split not in splits:
            for key in keys:
                where[key].add(split)
    rooms: dict[str, set[str]] = defaultdict(set)
    for s in scenes:
        where[scene_key(s.dataset, s.scene_id)].add(s.split)
        room = _room_of(s.dataset, s.scene_id)
        if room:
            rooms[room].add(s.split)
    for key, in_splits in sorted(where.items()):
        if len(in_splits) > 1:
            problems.append(f"scene {key} appears in splits {sorted(in_splits)}")
    for room, in_splits in sorted(rooms.items()):
        if len(in_splits) > 1:
            problems.append(f"ScanNet room {room} has scans in splits {sorted(in_splits)}")
    return problems


def _global_cap(records: list[dict[str, Any]], cap: int, seed: int) -> tuple[list[dict[str, Any]], Counter]:
    """Keep at most ``cap`` records per task, chosen by a stable hash of their keys (independent of order)."""
    from qa_templates.seeding import stable_rank_key

    dropped: Counter = Counter()
    if not cap:
        return records, dropped
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    keep: set[str] = set()
    for task, rows in by_task.items():
        ranked = sorted(rows, key=lambda r: stable_rank_key(seed, "global-cap", r["qa_key"]))
        keep.update(r["qa_key"] for r in ranked[:cap])
        dropped[task] = max(0, len(rows) - cap)
    return [r for r in records if r["qa_key"] in keep], dropped


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"min": round(float(a.min()), 4), "median": round(float(np.median(a)), 4),
            "mean": round(float(a.mean()), 4), "max": round(float(a.max()), 4)}


def build_stats(records: list[dict[str, Any]], scene_stats: list[dict[str, dict[str, Any]]], notes: Counter,
                dropped: Counter, task_names: list[str], scene_count: int) -> dict[str, Any]:
    per_task: dict[str, Any] = {}
    for task in task_names:
        rows = [r for r in records if r["task"] == task]
        rejections: Counter = Counter()
        candidates = capped = 0
        for st in scene_stats:
            if task in st:
                candidates += st[task]["candidates"]
                capped += st[task]["capped_per_scene"]
                rejections.update(st[task]["rejections"])
        entry: dict[str, Any] = {
            "questions": len(rows), "scenes_with_questions": len({r["scene_key"] for r in rows}),
            "candidates": candidates, "capped_per_scene": capped, "capped_per_task": int(dropped.get(task, 0)),
            "rejections": dict(sorted(rejections.items())),
        }
        mc = [r for r in rows if r.get("options")]
        if mc:
            from pipeline.core.qa_records import correct_letter

            entry["answer_letters"] = dict(sorted(Counter(correct_letter(r) for r in mc).items()))
            entry["answer_texts"] = dict(sorted(Counter(r["answer_text"] for r in mc).most_common(20)))
        elif rows:
            entry["answer_values"] = _summary([float(r["answer_text"]) for r in rows])
        per_task[task] = entry
    return {"scenes": scene_count, "questions": len(records), "scene_notes": dict(sorted(notes.items())),
            "tasks": per_task}


def _tasks(bench: str, split: str, names: list[str] | None):
    """Graph tasks of a bench for a split: benchmark splits get only the benchmark's own question forms."""
    from qa_templates.tasks import tasks_for

    return tasks_for(bench, benchmark_only=split in BENCHMARK_SPLITS, names=names)


def run(args: argparse.Namespace) -> int:
    from qa_templates.config import QAConfig
    from pipeline.core.qa_records import dumps_record, llava_conversation
    from qa_templates.tasks import tasks_for
    from scene_graph.graph import graph_marker, list_graphs

    root = DatasetRoot(args.root)
    root.check()  # a missing root or one of another format version is refused (exit 2)
    try:
        cfg = replace(QAConfig(), max_per_scene_task=args.max_per_scene_task)
        if args.max_per_task is not None:
            cfg = replace(cfg, max_per_task_vsibench=args.max_per_task, max_per_task_vstibench=args.max_per_task)
        benches = BENCHES if args.bench == "all" else (args.bench,)
        graph_tasks = [t for t in args.tasks if t != ROUTE_TASK] if args.tasks else None
        for bench in benches:
            tasks_for(bench, names=graph_tasks)          # validates --tasks names
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    graphs = list_graphs(root.path)
    if not graphs:
        print(f"error: {root.path / 'graph'}: no complete scene graphs; run `vlm3r-data graph` first", file=sys.stderr)
        return 2

    plans: list[ScenePlan] = []
    for dataset, scene_id in graphs:
        gdir = root.graph_dir(dataset, scene_id)
        split = str(graph_marker(gdir)["split"])
        task_names = tuple((b, tuple(t.name for t in _tasks(b, split, graph_tasks))) for b in benches)
        routes = root.routes_dir / dataset / f"{scene_id}.parquet"
        want_routes = "vsibench" in benches and (not args.tasks or ROUTE_TASK in args.tasks)
        plans.append(ScenePlan(dataset, scene_id, split, str(gdir), benches, task_names, args.seed, cfg,
                               str(routes) if want_routes and routes.exists() else ""))
    all_splits = sorted({p.split for p in plans})
    splits = set(args.split) if args.split else set(all_splits)
    missing = sorted(splits - set(all_splits))
    if missing:
        print(f"error: no graphs of split(s) {missing} under {root.path / 'graph'} (found {all_splits})", file=sys.stderr)
        return 2

    # Split guard: checked over every graph of the root and the scene lists of earlier runs.
    scenes_path = root.qa_dir / "scenes.json"
    recorded = read_json(scenes_path) if scenes_path.exists() else {}
    problems = check_splits(plans, recorded, set(all_splits))
    if problems:
        for p in problems:
            print(f"error: split guard: {p}", file=sys.stderr)
        print(f"(if the split lists changed on purpose, delete {scenes_path} and rerun)", file=sys.stderr)
        return 1
    plans = [p for p in plans if p.split in splits]

    results: dict[tuple[str, str], dict[str, Any]] = {}
    errors: list[ErrorRow] = []
    for plan, result, exc in map_units(qa_scene, plans, local=args.local, workers=args.workers,
                                       ray_address=args.ray_address, desc="qa"):
        if exc is not None:
            errors.append(ErrorRow.from_exception(STAGE, plan.dataset, plan.scene_id, exc))
        else:
            results[(plan.dataset, plan.scene_id)] = result

    counts: dict[str, Any] = {}
    by_key = {(p.dataset, p.scene_id): p for p in plans}
    for bench in benches:
        for split in sorted(splits):
            keys = sorted(k for k, p in by_key.items() if p.split == split and k in results)
            records = [r for k in keys for r in results[k][bench]["records"]]
            records.sort(key=lambda r: r["qa_key"])
            records, dropped = _global_cap(records, cfg.max_per_task(bench), args.seed)
            for i, r in enumerate(records):
                r["id"] = i
            notes = Counter(n for k in keys for n in results[k][bench]["notes"])
            names = [t.name for t in _tasks(bench, split, graph_tasks)]
            if bench == "vsibench" and any(by_key[k].routes_path for k in keys):
                names.append(ROUTE_TASK)
            stats = build_stats(records, [results[k][bench]["stats"] for k in keys], notes, dropped, names, len(keys))
            stats.update(bench=bench, split=split, seed=args.seed, config=cfg.to_dict(),
                         failed_scenes=sum(1 for e in errors if by_key[(e.dataset, e.scene_id)].split == split))
            out_dir = root.qa_dir / bench
            with atomic_open(out_dir / f"{split}.jsonl", "w") as fh:
                for r in records:
                    fh.write(dumps_record(r) + "\n")
            with atomic_open(out_dir / f"{split}_llava.json", "w") as fh:
                fh.write(dumps_json([llava_conversation(r) for r in records]))
            write_json(out_dir / f"{split}_stats.json", stats)
            counts[f"{bench}/{split}"] = len(records)
            print(f"{bench}/{split}: {len(records)} questions from {len(keys)} scenes -> {out_dir / (split + '.jsonl')}")

    recorded = {k: v for k, v in recorded.items() if k not in splits}
    for split in sorted(splits):
        recorded[split] = sorted(scene_key(p.dataset, p.scene_id) for p in plans if p.split == split)
    write_json(scenes_path, dict(sorted(recorded.items())))
    record_errors(root.errors_path, STAGE, [(p.dataset, p.scene_id) for p in plans], errors)
    root.record_stage(STAGE, {"seed": args.seed, "benches": list(benches), "splits": sorted(splits),
                              "tasks": args.tasks, "qa": cfg.to_dict()},
                      {**counts, "scenes": len(plans), "failed": len(errors)})
    if errors:
        print(f"{len(errors)} scene(s) failed; see {root.errors_path}:", file=sys.stderr)
        for e in errors[:10]:
            print(f"  {e.dataset}/{e.scene_id}: {e.error_type}: {e.message}", file=sys.stderr)
        return 1
    return 0
