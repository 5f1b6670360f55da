"""The dataset report: ``ROOT/report/report.md`` with PNG plots under ``ROOT/report/plots/``.

What it shows: the stage status table, questions per task (per bench and split), option-letter balance and the most
frequent answers of multiple-choice tasks, numeric-answer histograms, frames and tokens per scene, shard sizes
(token and training shards), failures by cause (error_type per stage) and, when the routes stage ran, route
statistics with links to its per-scene plots; when the root has regionbench questions or region prompts, their
counts, co-visibility, mask areas and a few prompts drawn on their frames (:mod:`pipeline.stages.report_regions`).

:func:`collect` reads the root (read-only) into a :class:`ReportData`; :func:`render_markdown` and the ``plot_*``
functions are pure; :func:`write_report` writes everything atomically. The output is deterministic: no timestamps,
fixed figure sizes and DPI, matplotlib's default style whatever the user's matplotlibrc, and PNGs saved without the
"Software" metadata, so rerunning on the same root gives byte-identical files. Figures are drawn on the Agg canvas
directly (no pyplot): no display, no global figure state, whatever backend the process chose.
"""
from __future__ import annotations

import json
import os
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.atomic import write_text
from pipeline.core.errors import InputError, read_input_json
from pipeline.core.layout import PLOTS_DIR, QA_COUNTS, DatasetRoot, scene_key
from pipeline.core.qa_records import iter_records
from pipeline.core.shards import ShardRecord, complete_shards
from pipeline.stages.contract import Ledgers
from pipeline.stages.report_figures import (bars_height, grid_shape, hide_unused, histogram, image_line,
                                            integer_axis, markdown_table, new_figure, save_png, short_label)
from pipeline.stages.report_regions import (REGION_BENCH, REGION_PLOTS, RegionReport, collect_regions,
                                            render_region_section)
from pipeline.stages.status import RootStatus, load_errors, root_status


REPORT_NAME = "report.md"   # plots go to PLOTS_DIR inside the report folder; every PNG there is this module's
TOP_ANSWERS = 8              # most frequent answers shown per multiple-choice task


# ---- data --------------------------------------------------------------------------------------------------------

@dataclass
class TaskAnswers:
    """The answers of one (bench, task) over all splits."""

    questions_per_split: dict[str, int] = field(default_factory=dict)
    letters: Counter = field(default_factory=Counter)          # correct option letter -> questions (multiple choice)
    max_options: int = 0                                       # most options a question of the task offers
    answer_texts: Counter = field(default_factory=Counter)     # correct option text -> questions (multiple choice)
    numeric: list[float] = field(default_factory=list)         # ground-truth values as the benchmark states them

    @property
    def questions(self) -> int:
        return sum(self.questions_per_split.values())

    @property
    def multiple_choice(self) -> int:
        return sum(self.letters.values())


@dataclass
class QaFile:
    bench: str
    split: str
    path: str                                                  # relative to the root
    questions: int
    scenes: int                                                # scenes with at least one question


@dataclass
class SceneSize:
    key: str
    stream_frames: int                                         # frames of the source stream
    valid_frames: int                                          # of which with a finite pose
    manifest_frames: int                                       # frames the scene contributes (frame manifest)
    tokens: int | None = None                                  # geometry tokens T x (patches + 1 camera token)
    sample_bytes: int | None = None                            # bytes of the scene's token-shard sample


@dataclass
class ShardSet:
    name: str                                                  # "tokens" or "train_shards"
    files: list[str]
    sizes_bytes: list[int]
    samples: list[int]
    questions: list[int] | None = None                         # training shards: QA records per shard


@dataclass
class ReportData:
    status: RootStatus
    qa_files: list[QaFile]
    tasks: dict[tuple[str, str], TaskAnswers]                  # (bench, task) -> answers
    scenes: list[SceneSize]
    shards: list[ShardSet]
    failures: Counter                                          # (stage, error_type) -> rows
    failure_examples: dict[tuple[str, str], list[str]]         # (stage, error_type) -> "dataset/scene_id"
    routes_per_scene: dict[str, int]                           # scene key -> routes
    route_turns: list[int]                                     # turns of every route
    route_plots: list[str]                                     # absolute paths of the routes stage's PNGs
    regions: RegionReport | None = None                        # regionbench and region prompts, when the root has them

    @property
    def total_questions(self) -> int:
        return sum(f.questions for f in self.qa_files)


def _numeric_answer(record: dict[str, Any], path: Path) -> float:
    try:
        return float(record["answer_text"] if "answer_text" in record else record["ground_truth"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, f"record {record.get('qa_key', record.get('id'))!r}: numeric question without a "
                               "numeric answer") from None


def _collect_qa(root: DatasetRoot) -> tuple[list[QaFile], dict[tuple[str, str], TaskAnswers]]:
    files, tasks = [], defaultdict(TaskAnswers)
    for bench, split, path in root.qa_files():
        n, scenes = 0, set()
        for record in iter_records(path):
            n += 1
            scenes.add(record["scene_key"])
            task = tasks[(bench, str(record["task"]))]
            task.questions_per_split[split] = task.questions_per_split.get(split, 0) + 1
            if record.get("options"):
                # VSTI-Bench keeps the letter in mc_answer (its ground_truth is the option text); VSI-Bench in
                # ground_truth (see qa_templates/records.py).
                task.letters[str(record.get("mc_answer", record.get("ground_truth")))] += 1
                task.max_options = max(task.max_options, len(record["options"]))
                task.answer_texts[str(record.get("answer_text", ""))] += 1
            else:
                task.numeric.append(_numeric_answer(record, path))
        files.append(QaFile(bench, split, path.relative_to(root.path).as_posix(), n, len(scenes)))
    return files, dict(sorted(tasks.items()))


def _sample_sizes(shard: Path) -> dict[str, tuple[int | None, int]]:
    """key -> (geometry tokens, sample bytes) from one token shard's headers and ``meta.json`` members (the token
    arrays themselves are skipped, not read)."""
    sizes: dict[str, int] = defaultdict(int)
    tokens: dict[str, int | None] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                sizes[key] += member.size
                if suffix == "meta.json":
                    fh = tar.extractfile(member)
                    meta = json.loads(fh.read()) if fh is not None else {}
                    # camera.npy [T, 1, C] + patch.npy [T, N, C]: T x (N + 1) tokens.
                    tokens[key] = int(meta["num_frames"]) * (int(meta["num_patches"]) + 1)
    except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
        raise InputError(shard, f"unreadable token shard ({exc!r})") from None
    return {k: (tokens.get(k), sizes[k]) for k in sorted(sizes)}


def _collect_scenes(root: DatasetRoot, ledgers: Ledgers, token_records: list[ShardRecord]) -> list[SceneSize]:
    per_key: dict[str, tuple[int | None, int]] = {}
    for record in token_records:
        per_key.update(_sample_sizes(root.tokens_dir / record.file))
    out = []
    for unit, marker in sorted(ledgers.markers("ingest").items()):
        ds, sid = unit.split("/", 1)
        stats = marker.stats
        try:
            frames = (int(stats["frames"]), int(stats["valid_frames"]), int(stats["manifest_frames"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(root.scene_dir(ds, sid), "scene done-marker without frames / valid_frames / "
                                                      "manifest_frames") from None
        key = scene_key(ds, sid)
        tokens, nbytes = per_key.get(key, (None, None))
        out.append(SceneSize(key, *frames, tokens=tokens, sample_bytes=nbytes))
    return out


def _collect_shards(root: DatasetRoot, token_records: list[ShardRecord]) -> list[ShardSet]:
    out = []
    if token_records:
        out.append(ShardSet("tokens", [r.file for r in token_records], [r.size_bytes for r in token_records],
                            [len(r.keys) for r in token_records]))
    train_records = complete_shards(root.train_shards_dir)
    if train_records:
        counts_path = root.train_shards_dir / QA_COUNTS        # {shard file: {key: questions}}
        counts = read_input_json(counts_path, "QA counts file") if counts_path.is_file() else {}
        questions = [sum(counts[r.file].values()) if r.file in counts else 0 for r in train_records] \
            if counts else None
        out.append(ShardSet("train_shards", [r.file for r in train_records], [r.size_bytes for r in train_records],
                            [len(r.keys) for r in train_records], questions))
    return out


def _collect_routes(root: DatasetRoot, ledgers: Ledgers) -> tuple[dict[str, int], list[int], list[str]]:
    from pipeline.core.schemas import ROUTES_SCHEMA, SchemaError, column_as_array, read_table

    per_scene, turns = {}, []
    for unit in sorted(ledgers.markers("routes")):
        ds, sid = unit.split("/", 1)
        table_path = root.routes_table(ds, sid)
        if not table_path.is_file():
            continue
        try:
            table = read_table(table_path, ROUTES_SCHEMA)
        except SchemaError as exc:
            raise InputError(table_path, str(exc)) from None
        per_scene[scene_key(ds, sid)] = table.num_rows
        turns += column_as_array(table, "num_turns").astype(int).tolist()
    plots_dir = root.routes_dir / PLOTS_DIR
    plots = [str(p) for p in sorted(plots_dir.glob("*/*.png"))] if plots_dir.is_dir() else []
    return per_scene, turns, plots


def collect(ledgers: Ledgers) -> ReportData:
    """Read everything the report shows from the ledgers' root (read-only). Malformed inputs raise InputError
    naming the file."""
    root = ledgers.root
    errors = load_errors(root)
    status = root_status(ledgers, errors)
    qa, tasks = _collect_qa(root)
    token_records = complete_shards(root.tokens_dir)
    failures: Counter = Counter()
    examples: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in errors:
        if not row.is_error:
            continue
        failures[(row.stage, row.error_type)] += 1
        examples[(row.stage, row.error_type)].append(f"{row.dataset}/{row.scene_id}" if row.dataset else row.scene_id)
    routes_per_scene, turns, plots = _collect_routes(root, ledgers)
    return ReportData(status, qa, tasks, _collect_scenes(root, ledgers, token_records),
                      _collect_shards(root, token_records), failures,
                      {k: sorted(v) for k, v in sorted(examples.items())}, routes_per_scene, turns, plots,
                      collect_regions(root, ledgers, token_records))


# ---- plots (pure: data -> matplotlib Figure, or None when there is nothing to show) -------------------------------

def plot_questions_per_task(data: ReportData):
    if not data.tasks:
        return None
    labels = [f"{bench}/{task}" for bench, task in data.tasks]
    splits = sorted({s for t in data.tasks.values() for s in t.questions_per_split})
    fig, axes = new_figure(9, bars_height(len(labels)))
    ax = axes[0, 0]
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for k, split in enumerate(splits):
        counts = np.array([t.questions_per_split.get(split, 0) for t in data.tasks.values()], dtype=float)
        ax.barh(y, counts, left=left, color=f"C{k}", label=split)
        left += counts
    ax.set_yticks(y, [short_label(lbl) for lbl in labels], fontsize=7)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(integer_axis())
    ax.set_xlabel("questions")
    ax.set_title(f"Questions per task ({data.total_questions} in total)", fontsize=9, loc="left")
    # Above the axes, so it never hides a bar.
    ax.legend(title="split", fontsize=7, title_fontsize=7, ncol=len(splits), loc="lower right",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _mc_tasks(data: ReportData) -> list[tuple[str, TaskAnswers]]:
    return [(f"{b}/{t}", a) for (b, t), a in data.tasks.items() if a.multiple_choice]


def _numeric_tasks(data: ReportData) -> list[tuple[str, TaskAnswers]]:
    return [(f"{b}/{t}", a) for (b, t), a in data.tasks.items() if a.numeric]


def plot_letter_balance(data: ReportData):
    tasks = _mc_tasks(data)
    if not tasks:
        return None
    letters = sorted({letter for _, t in tasks for letter in t.letters})
    fig, axes = new_figure(9, bars_height(len(tasks)))
    ax = axes[0, 0]
    y = np.arange(len(tasks))
    left = np.zeros(len(tasks))
    for k, letter in enumerate(letters):
        share = np.array([t.letters.get(letter, 0) / t.multiple_choice for _, t in tasks])
        ax.barh(y, share, left=left, color=f"C{k}", label=letter)
        left += share
    ax.set_yticks(y, [short_label(name) for name, _ in tasks], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the task's questions whose correct option has this letter")
    ax.set_title("Option-letter balance (multiple choice)", fontsize=9, loc="left")
    ax.legend(title="letter", fontsize=7, title_fontsize=7, ncol=len(letters), loc="lower right",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_mc_answers(data: ReportData):
    tasks = _mc_tasks(data)
    if not tasks:
        return None
    rows, cols = grid_shape(len(tasks))
    fig, axes = new_figure(4.0 * cols, 2.6 * rows, rows, cols)
    for ax, (name, task) in zip(axes.flat, tasks):
        top = _top_answers(task)
        ax.barh(np.arange(len(top)), [n for _, n in top], color="C0")
        ax.set_yticks(np.arange(len(top)), [short_label(a)[:24] for a, _ in top], fontsize=6)
        ax.invert_yaxis()
        ax.set_title(short_label(name), fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
    hide_unused(axes, len(tasks))
    fig.suptitle(f"Most frequent correct answers (top {TOP_ANSWERS} per task)", fontsize=9)
    fig.tight_layout()
    return fig


def _top_answers(task: TaskAnswers) -> list[tuple[str, int]]:
    # Ties broken by the answer text, so the order never depends on the input order.
    return sorted(task.answer_texts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ANSWERS]


def plot_numeric_answers(data: ReportData):
    tasks = _numeric_tasks(data)
    if not tasks:
        return None
    rows, cols = grid_shape(len(tasks))
    fig, axes = new_figure(4.0 * cols, 2.6 * rows, rows, cols)
    for ax, (name, task) in zip(axes.flat, tasks):
        histogram(ax, task.numeric, "C2")
        ax.set_title(f"{short_label(name)} (n={len(task.numeric)})", fontsize=7)
        ax.set_ylabel("questions", fontsize=6)
        ax.tick_params(labelsize=6)
    hide_unused(axes, len(tasks))
    fig.suptitle("Numeric ground-truth answers (benchmark units)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_frames_tokens(data: ReportData):
    if not data.scenes:
        return None
    tokens = [s.tokens for s in data.scenes if s.tokens is not None]
    fig, axes = new_figure(10, 3.2, 1, 3 if tokens else 2)
    ax = axes[0, 0]
    histogram(ax, [s.stream_frames for s in data.scenes], "C0")
    ax.set_title("source frames per scene", fontsize=8)
    ax = axes[0, 1]
    histogram(ax, [s.manifest_frames for s in data.scenes], "C1")
    ax.set_title("manifest frames per scene", fontsize=8)
    if tokens:
        ax = axes[0, 2]
        histogram(ax, tokens, "C4")
        ax.set_title("geometry tokens per scene", fontsize=8)
    for ax in axes.flat:
        ax.set_ylabel("scenes", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_shard_sizes(data: ReportData):
    if not data.shards:
        return None
    fig, axes = new_figure(9, 3.0, 1, len(data.shards))
    for ax, shards in zip(axes.flat, data.shards):
        x = np.arange(len(shards.files))
        ax.bar(x, np.asarray(shards.sizes_bytes) / 1e6, color="C0")
        ax.xaxis.set_major_locator(integer_axis())
        ax.set_xlabel("shard index", fontsize=7)
        ax.set_ylabel("MB", fontsize=7)
        ax.set_title(f"{shards.name}: {len(shards.files)} shards, {sum(shards.samples)} samples", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_failures(data: ReportData):
    if not data.failures:
        return None
    items = sorted(data.failures.items())
    fig, axes = new_figure(8, bars_height(len(items)))
    ax = axes[0, 0]
    stages = sorted({stage for (stage, _), _ in items})
    colours = {stage: f"C{k}" for k, stage in enumerate(stages)}
    y = np.arange(len(items))
    ax.barh(y, [n for _, n in items], color=[colours[stage] for (stage, _), _ in items])
    ax.set_yticks(y, [short_label(f"{stage}: {etype}") for (stage, etype), _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(integer_axis())
    ax.set_xlabel("failed inputs (error rows)")
    ax.set_title("Failures by cause", fontsize=9)
    fig.tight_layout()
    return fig


def plot_route_turns(data: ReportData):
    if not data.route_turns:
        return None
    fig, axes = new_figure(5, 3.0)
    ax = axes[0, 0]
    histogram(ax, data.route_turns, "C3")
    ax.set_xlabel("turns per route")
    ax.set_ylabel("routes")
    ax.set_title(f"{len(data.route_turns)} routes in {len(data.routes_per_scene)} scenes", fontsize=9)
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[ReportData], Any]] = {
    "questions_per_task.png": plot_questions_per_task,
    "letter_balance.png": plot_letter_balance,
    "mc_answers.png": plot_mc_answers,
    "numeric_answers.png": plot_numeric_answers,
    "frames_tokens.png": plot_frames_tokens,
    "shard_sizes.png": plot_shard_sizes,
    "failures.png": plot_failures,
    "route_turns.png": plot_route_turns,
}


# ---- Markdown ------------------------------------------------------------------------------------------------------

def _number(value: float, decimals: int) -> str:
    # Whole numbers (frame counts, most medians of counts) without a misleading ".0".
    return str(int(value)) if float(value).is_integer() else f"{value:.{decimals}f}"


def _summary(values: list[float], decimals: int = 1) -> list[str]:
    """min, median, mean, max."""
    a = np.asarray(values, dtype=np.float64)
    return [_number(v, decimals) for v in (a.min(), np.median(a), a.mean(), a.max())]


def _rel(path: str | Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def render_markdown(data: ReportData, plots: dict[str, str], out_dir: Path) -> str:
    """The report text. ``plots``: plot file name -> link (relative to ``out_dir``) of the plots that were written."""
    lines = ["# Dataset report", "", f"Dataset root: `{data.status.root}`"
             + (f" (vlm3r-data {data.status.code_version})" if data.status.code_version else "") + ".", ""]

    lines += ["## Stages", ""]
    lines += markdown_table(["stage", "state", "done", "total", "stale", "failed", "pending", "unit", "outputs (in the root)"],
                    [[s.stage, s.state, s.done, s.total, s.stale, s.failed, s.pending, s.unit,
                      f"`{_rel(s.outputs, Path(data.status.root))}`" if s.outputs else ""]
                     for s in data.status.stages if s.stage != "stats"],     # not the report itself
                    left=2)
    stale = [(s.stage, unit, why) for s in data.status.stages for unit, why in s.stale_units.items()]
    if stale:
        lines += ["", f"**{len(stale)} stale output(s)**: made from outputs that were rebuilt since; rebuild them "
                      "(the stage's command with `--rebuild`) before using them.", ""]
        lines += markdown_table(["stage", "unit", "why"], [[st, f"`{u}`", why] for st, u, why in stale[:50]], left=3)
        if len(stale) > 50:
            lines.append(f"... and {len(stale) - 50} more (`vlm3r-data status --root ...`)")

    lines += ["", "## Questions", ""]
    if not data.qa_files:
        lines.append("No QA files (run `vlm3r-data qa`).")
    else:
        lines += [f"Total questions: **{data.total_questions}** in {len(data.qa_files)} files.", ""]
        lines += markdown_table(["file", "questions", "scenes with questions"],
                        [[f"`{f.path}`", f.questions, f.scenes] for f in data.qa_files])
        splits = sorted({s for t in data.tasks.values() for s in t.questions_per_split})
        lines += ["", "Questions per task and split:", ""]
        lines += markdown_table(["bench", "task", *splits, "total"],
                        [[b, t, *[a.questions_per_split.get(s, 0) for s in splits], a.questions]
                         for (b, t), a in data.tasks.items()], left=2)
        image_line(lines, plots, "questions_per_task.png", "questions per task")

    mc = [(k, a) for k, a in data.tasks.items() if a.multiple_choice]
    if mc:
        letters = sorted({letter for _, a in mc for letter in a.letters})
        lines += ["", "## Option-letter balance (multiple choice)", "",
                  "Questions per correct-option letter; `max dev` is the largest distance of a letter's share "
                  "from the uniform share over the task's options (1 / options).", ""]
        rows = []
        for (b, t), a in mc:
            offered = "ABCDEFGHIJ"[:a.max_options]
            uniform = 1.0 / max(len(offered), 1)
            dev = max(abs(a.letters.get(letter, 0) / a.multiple_choice - uniform) for letter in offered)
            rows.append([b, t, a.multiple_choice, *[a.letters.get(letter, 0) for letter in letters], f"{dev:.3f}"])
        lines += markdown_table(["bench", "task", "questions", *letters, "max dev"], rows, left=2)
        image_line(lines, plots, "letter_balance.png", "option-letter balance")
        lines += ["", "## Answer distributions (multiple choice)", ""]
        lines += markdown_table(["bench", "task", "distinct answers", f"most frequent (top {TOP_ANSWERS})"],
                        [[b, t, len(a.answer_texts), "; ".join(f"{ans} ({n})" for ans, n in _top_answers(a))]
                         for (b, t), a in mc], left=2)
        image_line(lines, plots, "mc_answers.png", "most frequent answers")

    numeric = [(k, a) for k, a in data.tasks.items() if a.numeric]
    if numeric:
        lines += ["", "## Numeric answers", ""]
        lines += markdown_table(["bench", "task", "questions", "min", "median", "mean", "max"],
                        [[b, t, len(a.numeric), *_summary(a.numeric, 2)] for (b, t), a in numeric], left=2)
        image_line(lines, plots, "numeric_answers.png", "numeric answer histograms")

    stale_region_files = sorted(unit for s in data.status.stages if s.stage == "qa" for unit in s.stale_units
                                if unit.startswith(f"{REGION_BENCH}/"))
    lines += render_region_section(data.regions, stale_region_files, plots)

    lines += ["", "## Frames and tokens per scene", ""]
    if not data.scenes:
        lines.append("No ingested scenes.")
    else:
        rows = [["source frames", len(data.scenes), *_summary([s.stream_frames for s in data.scenes])],
                ["valid frames", len(data.scenes), *_summary([s.valid_frames for s in data.scenes])],
                ["manifest frames", len(data.scenes), *_summary([s.manifest_frames for s in data.scenes])]]
        with_tokens = [s for s in data.scenes if s.tokens is not None]
        if with_tokens:
            rows.append(["geometry tokens", len(with_tokens), *_summary([s.tokens for s in with_tokens])])
            rows.append(["token sample MB", len(with_tokens),
                         *_summary([s.sample_bytes / 1e6 for s in with_tokens], 2)])
        lines += markdown_table(["per scene", "scenes", "min", "median", "mean", "max"], rows)
        image_line(lines, plots, "frames_tokens.png", "frames and tokens per scene")

    lines += ["", "## Shards", ""]
    if not data.shards:
        lines.append("No complete shards.")
    else:
        rows = []
        for s in data.shards:
            mb = [b / 1e6 for b in s.sizes_bytes]
            rows.append([f"`{s.name}`", len(s.files), sum(s.samples),
                         "" if s.questions is None else sum(s.questions), f"{sum(mb):.2f}",
                         *[_summary(mb, 2)[i] for i in (0, 1, 3)]])
        lines += markdown_table(["shards", "files", "samples", "questions", "total MB", "min MB", "median MB", "max MB"],
                        rows)
        image_line(lines, plots, "shard_sizes.png", "shard sizes")

    lines += ["", "## Failures by cause", ""]
    if not data.failures:
        lines.append("No error rows.")
    else:
        lines += [f"{sum(data.failures.values())} error row(s) in `{_rel(data.status.errors_path, out_dir)}`.", ""]
        rows = []
        for (stage, etype), n in sorted(data.failures.items()):
            examples = data.failure_examples[(stage, etype)]
            rows.append([stage, etype, n, ", ".join(examples[:5]) + (" ..." if len(examples) > 5 else "")])
        lines += markdown_table(["stage", "error type", "rows", "scenes"], rows, left=2)
        image_line(lines, plots, "failures.png", "failures by cause")

    if data.routes_per_scene or data.route_plots:
        lines += ["", "## Routes", ""]
        if data.route_turns:
            lines += [f"{len(data.route_turns)} routes in {len(data.routes_per_scene)} scenes; "
                      f"turns per route: min {min(data.route_turns)}, median {np.median(data.route_turns):g}, "
                      f"max {max(data.route_turns)}."]
        else:
            lines.append(f"No routes in {len(data.routes_per_scene)} scenes.")
        image_line(lines, plots, "route_turns.png", "turns per route")
        if data.route_plots:
            lines += ["", "Top-down route plots:", ""]
            lines += [f"- [{Path(p).parent.name}/{Path(p).stem}]({_rel(p, out_dir)})" for p in data.route_plots]
    return "\n".join(lines) + "\n"


# ---- writing -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportResult:
    report_path: Path
    plot_paths: tuple[Path, ...]
    total_questions: int


def write_report(ledgers: Ledgers, out_dir: str | Path | None = None) -> ReportResult:
    """Collect, plot and write ``<out_dir>/report.md`` (default ``ROOT/report``) with its PNGs in ``plots/``."""
    from matplotlib import style

    out = Path(out_dir) if out_dir is not None else ledgers.root.report_dir
    data = collect(ledgers)
    plots_dir = out / PLOTS_DIR
    written: dict[str, str] = {}
    paths = []
    # The default style, not the user's matplotlibrc: same pixels on every machine with this matplotlib.
    with style.context("default"):
        figures = {**{name: (plot, data) for name, plot in PLOTS.items()},
                   **{name: (plot, data.regions) for name, plot in REGION_PLOTS.items()}}
        for name, (plot, of) in figures.items():
            fig = plot(of)
            if fig is None:
                continue
            save_png(fig, plots_dir / name)
            written[name] = f"{PLOTS_DIR}/{name}"
            paths.append(plots_dir / name)
    # Plots of an earlier report that has nothing to show now would be linked by nothing: remove them.
    if plots_dir.is_dir():
        for stale in sorted(plots_dir.glob("*.png")):
            if stale.name not in written:
                stale.unlink()
    report_path = out / REPORT_NAME
    write_text(report_path, render_markdown(data, written, out))
    return ReportResult(report_path, tuple(paths), data.total_questions)

