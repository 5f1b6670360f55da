"""qa: scene graphs (and routes) -> benchmark questions, one file per bench and split
(``ROOT/qa/<bench>/<split>.jsonl`` with ``<split>_llava.json`` and ``<split>_stats.json``).

Units: the (bench, split) files; each reads the graphs of its split's scenes (and, for VSI-Bench, their route
tables). Generation runs per scene on Ray, all of a scene's benches from one read of its graph; each file is then
assembled in a fixed order (records sorted by key, a per-task cap chosen by stable hashes, ids in that order), so
the bytes depend only on the graphs, the seed and the configuration. Benchmark splits (val, test) get only the
benchmarks' own question forms and never feed training files; the split guard refuses a scene (or a ScanNet room)
found in two splits, here or in earlier runs (``ROOT/qa/scenes.json``).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.core.atomic import atomic_open, dumps_json, sha256_file, write_json
from pipeline.core.errors import ErrorRow, InputError, read_input_json
from pipeline.core.layout import BENCHES, BENCHMARK_SPLITS, MARKER_DIR, DatasetRoot, bench_file_name, scene_key
from pipeline.core.markers import ref
from pipeline.stages.contract import Context, FileLedger, Outcome, Stage, StageRefused, Unit, Work
from qa_templates.config import QAConfig

# VSI-Bench route planning comes from the routes stage (ROOT/routes/<dataset>/<scene_id>.parquet), not the graph.
ROUTE_TASK = "route_planning"


@dataclass(frozen=True)
class QAStageConfig:
    seed: int = 0                                     # run seed; each (scene, task) derives its own from it
    qa: QAConfig = field(default_factory=QAConfig)
    tasks: tuple[str, ...] | None = None              # only these task names (None: every task of each bench)

    def __post_init__(self) -> None:
        from qa_templates.tasks import tasks_for

        graph_tasks = self.graph_tasks
        for bench in BENCHES:
            tasks_for(bench, names=graph_tasks)       # unknown task names raise ValueError

    @property
    def graph_tasks(self) -> list[str] | None:
        return None if self.tasks is None else [t for t in self.tasks if t != ROUTE_TASK]

    @property
    def route_questions(self) -> bool:
        return self.tasks is None or ROUTE_TASK in self.tasks

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "tasks": None if self.tasks is None else list(self.tasks), **self.qa.to_dict()}


@dataclass(frozen=True)
class ScenePlan:
    """Everything a worker needs for one scene (picklable)."""
    dataset: str
    scene_id: str
    split: str
    graph_dir: str
    task_names: tuple[tuple[str, tuple[str, ...]], ...]   # (bench, task names)
    seed: int
    config: QAConfig
    routes_path: str = ""                                # the scene's routes table ("" = no route questions)


def tasks_of(bench: str, split: str, names: list[str] | None):
    """Graph tasks of a bench for a split: benchmark splits get only the benchmark's own question forms."""
    from qa_templates.tasks import tasks_for

    return tasks_for(bench, benchmark_only=split in BENCHMARK_SPLITS, names=names)


def qa_scene(plan: ScenePlan) -> dict[str, Any]:
    """Read one graph and generate every selected task of every bench. Runs inside a Ray task (or in-process)."""
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
    if plan.routes_path and "vsibench" in out:
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


def check_splits(scenes: list[tuple[str, str, str]], recorded: dict[str, list[str]], splits: set[str]) -> list[str]:
    """Problems with the split assignment of (dataset, scene_id, split): a scene (or a ScanNet room) in two splits,
    here or in the scene lists of earlier runs (``recorded``; those of ``splits`` are replaced by this run's)."""
    problems = []
    where: dict[str, set[str]] = defaultdict(set)
    for split, keys in recorded.items():
        if split not in splits:
            for key in keys:
                where[key].add(split)
    rooms: dict[str, set[str]] = defaultdict(set)
    for dataset, scene_id, split in scenes:
        where[scene_key(dataset, scene_id)].add(split)
        room = _room_of(dataset, scene_id)
        if room:
            rooms[room].add(split)
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
    from pipeline.core.qa_records import correct_letter

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
            entry["answer_letters"] = dict(sorted(Counter(correct_letter(r) for r in mc).items()))
            entry["answer_texts"] = dict(sorted(Counter(r["answer_text"] for r in mc).most_common(20)))
        elif rows:
            entry["answer_values"] = _summary([float(r["answer_text"]) for r in rows])
        per_task[task] = entry
    return {"scenes": scene_count, "questions": len(records), "scene_notes": dict(sorted(notes.items())),
            "tasks": per_task}


@dataclass(frozen=True)
class QAUnitJob:
    bench: str
    split: str
    scenes: tuple[tuple[str, str], ...]               # (dataset, scene_id) of the split, sorted
    routes: tuple[tuple[str, str], ...]               # the scenes whose route table is read


class QAStage(Stage):
    name = "qa"
    reads = ("graph", "routes")
    version = 1
    noun = "question files"

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.qa_dir / MARKER_DIR / f"{bench_file_name(*unit.split('/'))}.json",
                          f"qa/{MARKER_DIR}/*.json")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.qa_dir)

    def error_keys(self, unit: Unit) -> list[tuple[str, str]]:
        """A question file's own rows and those of its scenes (a rerun that succeeds clears both)."""
        return [("", unit.id), *unit.job.scenes]

    def units(self, ctx: Context) -> list[Unit]:
        config: QAStageConfig = ctx.config
        graphs = ctx.ledgers.markers("graph")
        if not graphs:
            raise StageRefused(f"qa: {ctx.root.graphs_dir}: no complete scene graphs; run `vlm3r-data graph` (or "
                               "`vlm3r-data import-meta`) first")
        routes = ctx.ledgers.markers("routes")
        split_of = {}
        for unit, marker in graphs.items():
            dataset, scene_id = unit.split("/", 1)
            split_of[(dataset, scene_id)] = str(marker.stats.get("split", ""))
        all_splits = sorted(set(split_of.values()))
        splits = list(ctx.extra.get("splits") or all_splits)
        missing = sorted(set(splits) - set(all_splits))
        if missing:
            raise StageRefused(f"qa: no graphs of split(s) {missing} under {ctx.root.graphs_dir} (found {all_splits})")
        recorded = read_input_json(ctx.root.qa_scenes_path, "split guard record") if ctx.root.qa_scenes_path.exists() else {}
        problems = check_splits([(d, s, sp) for (d, s), sp in sorted(split_of.items())], recorded, set(all_splits))
        if problems:
            raise StageRefused("qa: split guard:\n" + "\n".join(f"  {p}" for p in problems) +
                               f"\n(if the split lists changed on purpose, delete {ctx.root.qa_scenes_path} and rerun)")
        units = []
        for bench in ctx.extra.get("benches") or BENCHES:
            for split in sorted(splits):
                scenes = tuple(sorted(k for k, sp in split_of.items() if sp == split))
                upstream = {ref("graph", f"{d}/{s}"): graphs[f"{d}/{s}"].identity for d, s in scenes}
                with_routes: tuple[tuple[str, str], ...] = ()
                if bench == "vsibench" and config.route_questions:
                    with_routes = tuple(k for k in scenes if f"{k[0]}/{k[1]}" in routes)
                    upstream.update({ref("routes", f"{d}/{s}"): routes[f"{d}/{s}"].identity for d, s in with_routes})
                units.append(Unit(f"{bench}/{split}", upstream, QAUnitJob(bench, split, scenes, with_routes),
                                  scene_id=f"{bench}/{split}"))
        return units

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from pipeline.core.parallel import map_units

        config: QAStageConfig = ctx.config
        if not work:
            return
        # One plan per scene: the benches of every file being made that holds the scene.
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for w in work:
            job: QAUnitJob = w.unit.job
            for dataset, scene_id in job.scenes:
                entry = wanted.setdefault((dataset, scene_id), {"split": job.split, "benches": [], "routes": False})
                entry["benches"].append(job.bench)
                entry["routes"] |= (dataset, scene_id) in job.routes
        plans = []
        for (dataset, scene_id), entry in sorted(wanted.items()):
            names = tuple((b, tuple(t.name for t in tasks_of(b, entry["split"], config.graph_tasks)))
                          for b in BENCHES if b in entry["benches"])
            plans.append(ScenePlan(dataset, scene_id, entry["split"], str(ctx.root.graph_dir(dataset, scene_id)),
                                   names, config.seed, config.qa,
                                   str(ctx.root.routes_table(dataset, scene_id)) if entry["routes"] else ""))
        results: dict[tuple[str, str], dict[str, Any]] = {}
        failures: dict[tuple[str, str], ErrorRow] = {}
        for plan, result, exc in map_units(qa_scene, plans, local=ctx.options.local, workers=ctx.options.workers,
                                           ray_address=ctx.options.ray_address, desc="qa scenes",
                                           progress=ctx.options.progress):
            if exc is not None:
                failures[(plan.dataset, plan.scene_id)] = ErrorRow.from_exception(self.name, plan.dataset,
                                                                                  plan.scene_id, exc)
            else:
                results[(plan.dataset, plan.scene_id)] = result
        ledger = ctx.ledgers.of(self.name)
        for w in work:
            marker, errors = self._write_file(ctx, w, results, failures)
            if errors:      # written for inspection, but not done: a rerun retries the failed scenes
                yield Outcome(w.unit, errors=errors)
                continue
            ledger.write(ctx.root, marker)
            yield Outcome(w.unit, marker=marker)

    def _write_file(self, ctx: Context, w: Work, results: dict, failures: dict):
        config: QAStageConfig = ctx.config
        job: QAUnitJob = w.unit.job
        keys = [k for k in job.scenes if k in results]
        records = [r for k in keys for r in results[k][job.bench]["records"]]
        records.sort(key=lambda r: r["qa_key"])
        records, dropped = _global_cap(records, config.qa.max_per_task(job.bench), config.seed)
        for i, r in enumerate(records):
            r["id"] = i
        notes = Counter(n for k in keys for n in results[k][job.bench]["notes"])
        names = [t.name for t in tasks_of(job.bench, job.split, config.graph_tasks)]
        if job.routes:
            names.append(ROUTE_TASK)
        errors = [failures[k] for k in job.scenes if k in failures]
        stats = build_stats(records, [results[k][job.bench]["stats"] for k in keys], notes, dropped, names, len(keys))
        stats.update(bench=job.bench, split=job.split, seed=config.seed, config=config.qa.to_dict(),
                     failed_scenes=len(errors))
        out_dir = ctx.root.qa_dir / job.bench
        from pipeline.core.qa_records import dumps_record, llava_conversation

        path = ctx.root.qa_file(job.bench, job.split)
        with atomic_open(path, "w") as fh:
            for r in records:
                fh.write(dumps_record(r) + "\n")
        with atomic_open(out_dir / f"{job.split}_llava.json", "w") as fh:
            fh.write(dumps_json([llava_conversation(r) for r in records]))
        write_json(out_dir / f"{job.split}_stats.json", stats)
        print(f"{job.bench}/{job.split}: {len(records)} questions from {len(keys)} scenes -> {path}")
        marker = w.marker(self, ctx, sha256_file(path), {"questions": len(records), "scenes": len(keys),
                                                          "failed_scenes": len(errors)})
        return marker, errors

    def finish(self, ctx: Context, outcomes: list[Outcome], done: list[Work]) -> dict[str, Any]:
        """The split guard's memory: the scenes of every split that has files now."""
        path = ctx.root.qa_scenes_path
        recorded = read_input_json(path, "split guard record") if path.exists() else {}
        for w in [o.unit for o in outcomes] + [w.unit for w in done]:
            job: QAUnitJob = w.job
            recorded[job.split] = sorted(scene_key(d, s) for d, s in job.scenes)
        write_json(path, dict(sorted(recorded.items())))
        return {o.unit.id: o.marker.stats["questions"] for o in outcomes if o.marker is not None}


def save_qa_file(root: DatasetRoot, bench: str, split: str, records: list[dict[str, Any]],
                 config: QAStageConfig | None = None) -> None:
    """Write a question file made elsewhere (tests, hand-made benchmark files) and its done-marker, as the qa stage
    leaves them (records as given, one canonical JSON line each)."""
    from pipeline.core.markers import Marker
    from pipeline.core.qa_records import dumps_record

    stage = QAStage()
    path = root.qa_file(bench, split)
    with atomic_open(path, "w") as fh:
        for r in records:
            fh.write(dumps_record(r) + "\n")
    settings = (config or QAStageConfig()).to_dict()
    marker = Marker.made(stage.name, stage.scope(settings), f"{bench}/{split}", stage.version, settings, {},
                         sha256_file(path),
                         stats={"questions": len(records), "scenes": len({r.get("scene_key") for r in records})})
    stage.ledger().write(root, marker)
