"""import-meta: VLM-3R scene/frame metadata or a VSI-Bench ``meta_info`` file -> scene graphs in ``ROOT/graph/``
(QA without raw scans). Units: the file's scenes; their markers are graph markers with the configuration scope
``import-meta:<file name>``, so one root can hold the graphs of several metadata files (VSI-Bench ships one per
dataset) and the graphs the graph stage builds. The files' sha256 are part of the configuration: a changed file is
refused like any changed setting. Categories whose declared count disagrees with their boxes are reported as
warning rows and kept out of counting and unique-object tasks (:func:`scene_graph.interop.inconsistent_categories`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import WARNING, ErrorRow, InputError
from pipeline.core.layout import DATASETS, DatasetRoot
from pipeline.stages.contract import Context, Outcome, Stage, StageRefused, Unit, Work
from pipeline.stages.graph import graph_ledger, graph_output

FORMATS = ("vlm3r", "vsibench")


@dataclass(frozen=True)
class ImportMetaConfig:
    format: str
    scene_meta: str                       # absolute path
    scene_meta_sha256: str
    frame_meta: str | None = None
    frame_meta_sha256: str | None = None
    dataset: str | None = None
    split: str | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown metadata format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.format == "vsibench" and self.frame_meta is not None:
            raise ValueError("--frame-meta applies to --format vlm3r only")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")


class ImportMetaStage(Stage):
    name = "import-meta"
    version = 1
    creates_root = True

    def ledger(self):
        return graph_ledger()

    def scope(self, config: ImportMetaConfig) -> str:
        return f"import-meta:{Path(config.scene_meta).name}"

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.graphs_dir)

    def units(self, ctx: Context) -> list[Unit]:
        from scene_graph.interop import import_vlm3r, import_vsibench

        config: ImportMetaConfig = ctx.config
        try:
            if config.format == "vsibench":
                results = import_vsibench(config.scene_meta, dataset=config.dataset, split=config.split or "val")
            else:
                results = import_vlm3r(config.scene_meta, config.frame_meta, dataset=config.dataset,
                                       split=config.split, fps=config.fps)
        except InputError as exc:         # the file itself is unreadable: nothing to import
            raise StageRefused(f"import-meta: {exc}") from None
        units = []
        for graph, report in results:
            if graph is None:
                units.append(Unit(f"{config.dataset or ''}/{report['scene_id']}", job=(None, report),
                                  dataset=config.dataset or "", scene_id=report["scene_id"]))
            else:
                units.append(Unit(f"{graph.dataset}/{graph.scene_id}", job=(graph, report), dataset=graph.dataset,
                                  scene_id=graph.scene_id))
        return units

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from scene_graph.graph import INCONSISTENT_KEY, write_graph

        ledger = ctx.ledgers.of(self.name)
        totals: dict[str, int] = {}
        for item in work:
            graph, report = item.unit.job
            unit = item.unit
            if graph is None:
                yield Outcome(unit, errors=[ErrorRow.from_exception(self.name, unit.dataset, unit.scene_id,
                                                                    report["error"])])
                continue
            try:
                stats = write_graph(ctx.root.graph_dir(graph.dataset, graph.scene_id), graph)
            except (ValueError, OSError) as exc:     # SchemaError / non-finite JSON / disk: a row, and go on
                yield Outcome(unit, errors=[ErrorRow.from_exception(self.name, unit.dataset, unit.scene_id, exc)])
                continue
            for key, value in report.items():
                totals[key] = totals.get(key, 0) + int(value)
            warnings = [ErrorRow(self.name, graph.dataset, graph.scene_id, "InconsistentCounts",
                                 f"{category}: object_counts says {n['declared']}, the file has {n['boxes']} boxes; "
                                 "kept out of counting and of unique-object questions", ctx.config.scene_meta, WARNING)
                        for category, n in sorted(graph.room.get(INCONSISTENT_KEY, {}).items())]
            marker = item.marker(self, ctx, graph_output(stats), stats)
            ledger.write(ctx.root, marker)
            yield Outcome(unit, marker=marker, errors=warnings)
        ctx.extra["totals"] = totals

    def finish(self, ctx: Context, outcomes: list[Outcome], done: list[Work]) -> dict[str, Any]:
        inconsistent = sorted(f"{e.dataset}/{e.scene_id} {e.message.split(':')[0]}" for o in outcomes
                              for e in o.errors if not e.is_error)
        if inconsistent:
            print(f"import-meta: {len(inconsistent)} categories whose object_counts disagree with their boxes, kept "
                  f"out of counting and unique-object questions: {', '.join(inconsistent)}")
        totals = ctx.extra.get("totals", {})
        extra = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if v)
        if extra:
            print(f"import-meta: {extra}")
        return {**totals, "inconsistent_categories": len(inconsistent)}
