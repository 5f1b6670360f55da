"""The region-prompt part of the dataset report (SR-3D style, :mod:`qa_templates.regionbench`).

What it shows: regionbench questions per task and split and their regions per question; how many of each question's
instances one manifest frame shows together (``max_regions_per_frame``: 1 = no two of them ever share a frame), with
the share of multi-region questions whose instances are never all in one frame (regionbench keeps it at 50% or more);
mask areas (visible pixels as a share of the frame) over every region of the graphs' ``regions.parquet`` and over
the prompts the questions use; region sources and truncated regions; and a few frames with their region prompts drawn.

:func:`collect_regions` reads the root (read-only) into a :class:`RegionReport`, or None when the root has neither
regionbench questions nor region prompts (the report then has no such section and no such plots); the ``plot_*``
functions and :func:`render_region_section` are pure. Masks and boxes are at the stored frame's resolution; a frame
shown from the token shards' JPEGs (squashed to 384x384) is drawn in the stored frame's pixel coordinates, so both
line up whatever the image's size.
"""
from __future__ import annotations

import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.layout import BENCHMARK_SPLITS, DatasetRoot, scene_key
from pipeline.core.masks import decode_rle, rle_area
from pipeline.core.qa_records import iter_records
from pipeline.core.shards import ShardRecord
from pipeline.stages.contract import Ledgers
from pipeline.stages.report_figures import (HISTOGRAM_BINS, bars_height, grid_shape, hide_unused, image_line,
                                            integer_axis, markdown_table, new_figure, short_label)

REGION_BENCH = "regionbench"
PROMPT_PANELS = 6                       # frames drawn in region_prompts.png (whole questions only)
AREA_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
MASK_ALPHA = 0.5                        # a mask pixel shows (1 - alpha) x frame + alpha x its region's colour
# Region [i]'s colour (RGB): matplotlib's default cycle C0..C4 (the report always draws in the default style).
REGION_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
SOURCE_TOKENS = "token shards' JPEGs"
SOURCE_SCENE = "ingested scenes' sources"


# ---- data --------------------------------------------------------------------------------------------------------

@dataclass
class RegionTask:
    """The regionbench questions of one task over all splits."""

    questions_per_split: dict[str, int] = field(default_factory=dict)
    regions_per_question: list[int] = field(default_factory=list)
    together: Counter = field(default_factory=Counter)     # questions with 2+ regions: max_regions_per_frame -> count
    never_all: int = 0                                      # of which no manifest frame shows all their instances

    @property
    def questions(self) -> int:
        return sum(self.questions_per_split.values())

    @property
    def multi_region(self) -> int:
        return sum(self.together.values())

    @property
    def no_two(self) -> int:
        """Questions with 2+ regions whose instances no frame shows two of."""
        return self.together.get(1, 0)


@dataclass
class RegionTables:
    """Every region prompt of the graphs (``regions.parquet``)."""

    scenes: int                                             # graphs with a regions.parquet
    area_fractions: np.ndarray                              # [R] visible pixels / frame pixels
    sources: Counter                                        # source -> regions
    truncated: Counter                                      # source -> truncated regions

    @property
    def regions(self) -> int:
        return len(self.area_fractions)


@dataclass
class PromptPanel:
    """One region prompt of a question, drawn on its frame."""

    title: str
    region_index: int                                       # i of Region [i]
    rle: dict[str, Any]                                     # at the stored frame's resolution
    bbox_xyxy: list[int]                                    # inclusive pixels of the stored frame
    image: np.ndarray                                       # [h, w, 3] uint8: the frame, stored or resized
    image_source: str                                       # SOURCE_TOKENS or SOURCE_SCENE


@dataclass
class RegionReport:
    tasks: dict[str, RegionTask]                            # regionbench task -> questions
    prompt_areas: list[float]                               # mask area / frame area of every prompt the questions use
    tables: RegionTables | None                             # None: no graph has region prompts
    panels: list[PromptPanel]

    @property
    def questions(self) -> int:
        return sum(t.questions for t in self.tasks.values())

    @property
    def multi_region(self) -> int:
        return sum(t.multi_region for t in self.tasks.values())

    @property
    def never_all(self) -> int:
        return sum(t.never_all for t in self.tasks.values())

    @property
    def no_two(self) -> int:
        return sum(t.no_two for t in self.tasks.values())


def _region_files(root: DatasetRoot) -> list[tuple[str, Any]]:
    """(split, path) of the regionbench files, benchmark splits first (they give the drawn examples)."""
    files = [(split, path) for bench, split, path in root.qa_files() if bench == REGION_BENCH]
    return sorted(files, key=lambda sp: (sp[0] not in BENCHMARK_SPLITS, sp[0]))


def _collect_questions(root: DatasetRoot) -> tuple[dict[str, RegionTask], list[float], list[tuple[str, dict]]]:
    """Tasks, prompt areas and the questions to draw: the first ones (benchmark splits first, file order) with 2+
    regions whose instances are never all in one frame, whole questions up to PROMPT_PANELS regions."""
    tasks: dict[str, RegionTask] = defaultdict(RegionTask)
    areas: list[float] = []
    drawn: list[tuple[str, dict]] = []
    for split, path in _region_files(root):
        for record in iter_records(path):
            where = f"record {record.get('qa_key', record.get('id'))!r}"
            regions = record.get("regions")
            if not isinstance(regions, list) or not regions:
                raise InputError(path, f"{where}: a regionbench question without regions")
            try:
                for region in regions:
                    height, width = region["rle"]["size"]
                    areas.append(rle_area(region["rle"]) / (int(height) * int(width)))
                together = int(record["max_regions_per_frame"]) if len(regions) >= 2 else 0
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                raise InputError(path, f"{where}: malformed regions or max_regions_per_frame ({exc!r})") from None
            task = tasks[str(record["task"])]
            task.questions_per_split[split] = task.questions_per_split.get(split, 0) + 1
            task.regions_per_question.append(len(regions))
            if len(regions) < 2:
                continue
            task.together[together] += 1
            task.never_all += together < len(regions)
            if together < len(regions) and sum(len(r["regions"]) for _, r in drawn) + len(regions) <= PROMPT_PANELS:
                drawn.append((split, record))
    return dict(sorted(tasks.items())), areas, drawn


def _collect_tables(root: DatasetRoot, ledgers: Ledgers) -> RegionTables | None:
    from pipeline.core.schemas import REGIONS_SCHEMA, SchemaError, column_as_array, read_table
    from scene_graph.graph import REGIONS_FILE

    scenes, areas, sources, truncated = 0, [], Counter(), Counter()
    for unit in sorted(ledgers.markers("graph")):
        ds, sid = unit.split("/", 1)
        path = root.graph_dir(ds, sid) / REGIONS_FILE
        if not path.is_file():             # a graph built without region prompts, or imported from metadata
            continue
        try:
            table = read_table(path, REGIONS_SCHEMA)
        except SchemaError as exc:
            raise InputError(path, str(exc)) from None
        scenes += 1
        pixels = column_as_array(table, "mask_height").astype(np.float64) * column_as_array(table, "mask_width")
        areas.append(column_as_array(table, "visible_pixels") / np.maximum(pixels, 1.0))
        source = table.column("source").to_pylist()
        sources.update(source)
        truncated.update(s for s, t in zip(source, table.column("truncated").to_pylist()) if t)
    if not scenes:
        return None
    return RegionTables(scenes, np.concatenate(areas), Counter(dict(sorted(sources.items()))), truncated)


def _frame_image(root: DatasetRoot, shard_of: dict[str, str], scenes: dict[str, tuple[str, str]], key: str,
                 rank: int) -> tuple[np.ndarray, str] | None:
    """The manifest frame ``rank`` of scene ``key``: the token shard's JPEG when extract stored frames, else decoded
    from the ingested scene's source; None when neither can be read (the panel is left out)."""
    from pipeline.core.frames import decode_colors, decode_image_bytes
    from pipeline.core.tokens import frame_member

    if key in shard_of:
        member = f"{key}.{frame_member(rank)}"
        try:
            with tarfile.open(root.tokens_dir / shard_of[key], "r:") as tar:
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else None
        except (KeyError, tarfile.TarError, OSError):    # KeyError: extract ran without --with-frames
            data = None
        if data:
            try:
                return decode_image_bytes(data, str(root.tokens_dir / shard_of[key]), member), SOURCE_TOKENS
            except InputError:
                pass
    if key in scenes:
        from pipeline.core.scene import manifest_frames, read_manifest
        from pipeline.core.schemas import FRAMES_SCHEMA, SchemaError, read_table

        scene_dir = root.scene_dir(*scenes[key])
        try:
            frames = manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), read_manifest(scene_dir))
            if 0 <= rank < frames.num_rows:
                return decode_colors(frames.slice(rank, 1))[0], SOURCE_SCENE
        except (InputError, SchemaError, OSError, ValueError):   # raw release moved or corrupt
            pass
    return None


def _collect_panels(root: DatasetRoot, drawn: list[tuple[str, dict]],
                    token_records: list[ShardRecord]) -> list[PromptPanel]:
    shard_of = {key: r.file for r in token_records for key in r.keys}
    scenes = {scene_key(ds, sid): (ds, sid) for ds, sid in root.scenes()}
    panels = []
    for split, record in drawn:
        for i, region in enumerate(record["regions"]):
            found = _frame_image(root, shard_of, scenes, record["scene_key"], int(region["frame_rank"]))
            if found is None:
                continue
            title = (f"{record['scene_key']} {split} #{record.get('id')} {record['task']}\n"
                     f"Region [{i}] {region['category']}, frame rank {region['frame_rank']}")
            panels.append(PromptPanel(title, i, region["rle"], [int(v) for v in region["bbox_xyxy"]], *found))
    return panels


def collect_regions(root: DatasetRoot, ledgers: Ledgers, token_records: list[ShardRecord]) -> RegionReport | None:
    """The region part of the report, or None when the root has no regionbench questions and no region prompts."""
    tasks, areas, drawn = _collect_questions(root)
    tables = _collect_tables(root, ledgers)
    if not tasks and tables is None:
        return None
    return RegionReport(tasks, areas, tables, _collect_panels(root, drawn, token_records))


# ---- drawing a prompt on its frame (pure) --------------------------------------------------------------------------

def mask_on_image(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A stored-resolution mask [H, W] on an image of ``shape`` (h, w) that shows the same whole frame (the stored
    frame, or the frame resized, e.g. the squashed 384x384 token JPEGs): each image pixel takes the mask value of the
    stored pixel under its centre (edges map to edges)."""
    height, width = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    return np.asarray(mask, bool)[rows[:, None], cols[None, :]]


def region_colour(index: int) -> tuple[int, int, int]:
    return REGION_COLOURS[index % len(REGION_COLOURS)]


def prompt_overlay(image: np.ndarray, rle: dict[str, Any], colour: tuple[int, int, int]) -> np.ndarray:
    """The frame [h, w, 3] uint8 with the region's mask (compressed RLE at the stored resolution) tinted."""
    inside = mask_on_image(decode_rle(rle), image.shape[:2])
    out = image.astype(np.float32)
    out[inside] = (1.0 - MASK_ALPHA) * out[inside] + MASK_ALPHA * np.asarray(colour, np.float32)
    return np.round(out).astype(np.uint8)


# ---- plots (pure: data -> matplotlib Figure, or None when there is nothing to show) -------------------------------

def plot_region_covisibility(regions: RegionReport | None):
    tasks = [(name, t) for name, t in regions.tasks.items() if t.multi_region] if regions else []
    if not tasks:
        return None
    values = sorted({v for _, t in tasks for v in t.together})
    fig, axes = new_figure(9, bars_height(len(tasks)))
    ax = axes[0, 0]
    y = np.arange(len(tasks))
    left = np.zeros(len(tasks))
    for value in values:     # one colour per value, whichever values occur
        counts = np.array([t.together.get(value, 0) for _, t in tasks], dtype=float)
        ax.barh(y, counts, left=left, color=f"C{(value - 1) % 10}", label=str(value))
        left += counts
    ax.set_yticks(y, [short_label(name) for name, _ in tasks], fontsize=7)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(integer_axis())
    ax.set_xlabel("questions with 2+ regions")
    ax.set_title(f"Most regions in one frame; {regions.never_all}/{regions.multi_region} never all together",
                 fontsize=9, loc="left")
    # Above the axes, right of the title, so it never hides a bar.
    ax.legend(title="regions in one frame (1 = no two)", fontsize=7, title_fontsize=7, ncol=len(values),
              loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _area_bins(values: np.ndarray) -> np.ndarray:
    """Log-spaced bins (percent of the frame) over the values: areas span slivers of 0.14% to whole frames."""
    low, high = max(float(values.min()), 1e-3), max(float(values.max()), 1e-3)
    return np.geomspace(low, high * 1.0001 if high > low else low * 10.0, HISTOGRAM_BINS + 1)


def plot_region_mask_areas(regions: RegionReport | None):
    from matplotlib.ticker import FuncFormatter

    if regions is None:
        return None
    series = []
    if regions.tables is not None and regions.tables.regions:
        series.append((f"all regions (regions.parquet, {regions.tables.scenes} scenes)",
                       regions.tables.area_fractions, "C0"))
    if regions.prompt_areas:
        series.append(("prompts used by the questions", np.asarray(regions.prompt_areas), "C1"))
    if not series:
        return None
    fig, axes = new_figure(4.5 * len(series), 3.0, 1, len(series))
    for ax, (label, fractions, colour) in zip(axes.flat, series):
        percent = 100.0 * np.asarray(fractions, np.float64)
        ax.hist(percent, bins=_area_bins(percent), color=colour)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 0.1, 1, 10 rather than 10^k
        ax.set_xlabel("visible pixels, % of the frame", fontsize=7)
        ax.set_ylabel("masks", fontsize=7)
        ax.set_title(f"{label} (n={len(percent)})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def draw_prompt(ax, panel: PromptPanel) -> None:
    """One panel: the frame with its mask tinted, in the stored frame's pixel coordinates (so the box, given there,
    lines up on any image size), the box and a ``Region [i]`` label."""
    from matplotlib.patches import Rectangle

    height, width = (int(v) for v in panel.rle["size"])
    colour = region_colour(panel.region_index)
    rgb = tuple(c / 255.0 for c in colour)
    ax.imshow(prompt_overlay(panel.image, panel.rle, colour), extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="nearest")
    x0, y0, x1, y1 = panel.bbox_xyxy
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=rgb,
                           linewidth=1.5))
    ax.text(x0 - 0.5, y0 - 0.5, f"Region [{panel.region_index}]", color="white", fontsize=7, va="bottom",
            ha="left", bbox={"facecolor": rgb, "edgecolor": "none", "pad": 1.0})
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(panel.title, fontsize=6)


def plot_region_prompts(regions: RegionReport | None):
    panels = regions.panels if regions else []
    if not panels:
        return None
    rows, cols = grid_shape(len(panels))
    fig, axes = new_figure(3.4 * cols, 3.0 * rows, rows, cols)
    for ax, panel in zip(axes.flat, panels):
        draw_prompt(ax, panel)
    hide_unused(axes, len(panels))
    sources = sorted({p.image_source for p in panels})
    fig.suptitle(f"Region prompts of regionbench questions whose instances never all share a frame "
                 f"(frames: {', '.join(sources)})", fontsize=8)
    fig.tight_layout()
    return fig


REGION_PLOTS = {
    "region_covisibility.png": plot_region_covisibility,
    "region_mask_areas.png": plot_region_mask_areas,
    "region_prompts.png": plot_region_prompts,
}


# ---- Markdown ------------------------------------------------------------------------------------------------------

def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"


def _area_row(label: str, fractions) -> list[Any]:
    q = np.quantile(100.0 * np.asarray(fractions, np.float64), AREA_QUANTILES)
    return [label, len(fractions), *[f"{v:.2f}" for v in q]]


def render_region_section(regions: RegionReport | None, stale: list[str], plots: dict[str, str]) -> list[str]:
    """The ``## Region prompts`` lines (none when the root has no regionbench questions and no region prompts);
    ``stale``: the regionbench question files the root's status calls stale."""
    if regions is None:
        return []
    lines = ["", "## Region prompts", ""]
    if stale:
        lines += ["**Stale question files** (made from graphs rebuilt since: their prompts may not match "
                  f"`regions.parquet`): {', '.join(f'`{u}`' for u in stale)}.", ""]
    if not regions.tasks:
        lines.append("No regionbench questions (run `vlm3r-data qa`).")
    else:
        splits = sorted({s for t in regions.tasks.values() for s in t.questions_per_split})
        lines += [f"{regions.questions} regionbench questions with {len(regions.prompt_areas)} region prompts: "
                  "every object is a `Region [i]` with one prompt (a manifest frame, its box and mask).", ""]
        lines += markdown_table(["task", *splits, "total", "regions / question (mean)", "regions / question (max)"],
                        [[task, *[t.questions_per_split.get(s, 0) for s in splits], t.questions,
                          f"{np.mean(t.regions_per_question):.2f}", max(t.regions_per_question)]
                         for task, t in regions.tasks.items()])
    multi = [(task, t) for task, t in regions.tasks.items() if t.multi_region]
    if multi:
        values = sorted({v for _, t in multi for v in t.together})
        lines += ["", "Co-visibility of the questions with 2+ regions: questions by the largest number of their "
                      "instances that one manifest frame shows together (1 = no two of them ever share a frame).", ""]
        lines += markdown_table(["task", "questions", *[str(v) for v in values], "never all in one frame (%)",
                         "no two in one frame (%)"],
                        [[task, t.multi_region, *[t.together.get(v, 0) for v in values],
                          _percent(t.never_all, t.multi_region), _percent(t.no_two, t.multi_region)]
                         for task, t in multi])
        lines += ["", f"**{regions.never_all} of {regions.multi_region}** questions with 2+ regions "
                      f"({_percent(regions.never_all, regions.multi_region)}%) are about instances that no manifest "
                      f"frame shows all together (regionbench keeps this at 50% or more); {regions.no_two} "
                      f"({_percent(regions.no_two, regions.multi_region)}%) about instances no two of which share "
                      "a frame."]
        image_line(lines, plots, "region_covisibility.png", "region co-visibility")
    rows = []
    if regions.tables is not None and regions.tables.regions:
        rows.append(_area_row(f"all regions (regions.parquet, {regions.tables.scenes} scenes)",
                              regions.tables.area_fractions))
    if regions.prompt_areas:
        rows.append(_area_row("prompts used by the questions", regions.prompt_areas))
    if rows:
        lines += ["", "Mask areas: visible pixels as % of the frame (quantiles).", ""]
        lines += markdown_table(["masks", "count", *[f"q{int(round(100 * q))}" for q in AREA_QUANTILES]], rows)
        image_line(lines, plots, "region_mask_areas.png", "region mask areas")
    tables = regions.tables
    if tables is None:
        lines += ["", "No graph has region prompts (`regions.parquet`)."]
    else:
        lines += ["", f"Region sources over {tables.regions} regions in {tables.scenes} scenes (truncated: the "
                      "object's projection crosses the image border):", ""]
        source_rows = [[source, n, _percent(n, tables.regions), tables.truncated.get(source, 0),
                        _percent(tables.truncated.get(source, 0), n)] for source, n in tables.sources.items()]
        total_truncated = sum(tables.truncated.values())
        source_rows.append(["all", tables.regions, _percent(tables.regions, tables.regions), total_truncated,
                            _percent(total_truncated, tables.regions)])
        lines += markdown_table(["source", "regions", "share (%)", "truncated", "truncated (%)"], source_rows)
    if "region_prompts.png" in plots:
        sources = sorted({p.image_source for p in regions.panels})
        lines += ["", f"Region prompts drawn on their frames ({len(regions.panels)} panels; frames from the "
                      f"{' and '.join(sources)}): the first questions, benchmark splits first, whose instances never "
                      "all share a frame; each region on its own frame."]
        image_line(lines, plots, "region_prompts.png", "region prompts on their frames")
    return lines
