"""Drawing and Markdown helpers shared by the report's sections (:mod:`pipeline.stages.report`,
:mod:`pipeline.stages.report_regions`): figures on the Agg canvas at a fixed DPI, deterministic PNGs, Markdown
tables and image links."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path

PLOT_DPI = 100
HISTOGRAM_BINS = 20
DISCRETE_VALUES = 12         # at most this many distinct whole numbers are drawn as one bar each
LABEL_CHARS = 40             # longer axis labels are cut (the tables keep the full text)


def short_label(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 3] + "..."


def integer_axis():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, min_n_ticks=1)   # whole-number ticks even when one integer is in view


def new_figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=PLOT_DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def histogram(ax, values, color: str) -> None:
    """Histogram that treats whole numbers as such: with few distinct integers (32 manifest frames in every scene,
    object counts 2..5) one labelled bar per value, otherwise ``HISTOGRAM_BINS`` bins; never an axis offset."""
    a = np.asarray(values, dtype=np.float64)
    distinct, counts = np.unique(a, return_counts=True)
    if np.all(distinct == np.round(distinct)) and len(distinct) <= DISCRETE_VALUES:
        ax.bar(np.arange(len(distinct)), counts, width=0.8, color=color,
               tick_label=[str(int(v)) for v in distinct])
    else:
        ax.hist(a, bins=HISTOGRAM_BINS, color=color)
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")


def bars_height(bars: int) -> float:
    """Inches for a horizontal bar chart: a fixed margin plus a fixed height per bar (never squashed)."""
    return max(2.5, 1.2 + 0.28 * bars)


def hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def grid_shape(n: int, cols: int = 3) -> tuple[int, int]:
    return max(1, -(-n // cols)), min(cols, n)


def save_png(fig, path: Path) -> None:
    """Atomic, deterministic PNG: no "Software" metadata (the only varying field Agg would write)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI, metadata={"Software": None})


def markdown_table(header: list[str], rows: list[list[Any]], left: int = 1) -> list[str]:
    """A Markdown table; the first ``left`` columns and every column whose cells are not all numbers align left."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    def is_number(value: Any) -> bool:
        try:
            float(str(value))
            return True
        except ValueError:
            return False

    align = ["---:" if i >= left and rows and all(is_number(r[i]) for r in rows) else "---"
             for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + \
        ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def image_line(lines: list[str], plots: dict[str, str], name: str, alt: str) -> None:
    if name in plots:
        lines += ["", f"![{alt}]({plots[name]})"]
