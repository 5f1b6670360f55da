"""stats: the dataset report (``ROOT/report/report.md`` and its PNG plots), rewritten on every run: a view of the
root as it is, stale outputs included (:mod:`pipeline.stages.report`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.atomic import sha256_file
from pipeline.core.errors import InputError
from pipeline.core.layout import DONE_MARKER, DatasetRoot
from pipeline.stages.contract import Context, FileLedger, Outcome, Stage, StageRefused, Unit, Work

REPORT = "report"


@dataclass(frozen=True)
class StatsConfig:
    out_dir: str = ""                     # "" = ROOT/report

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir}


class StatsStage(Stage):
    name = "stats"
    reads = ("ingest", "extract", "graph", "routes", "qa", "pack", "train", "predict", "eval")
    noun = "reports"
    always_rebuild = True

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.report_dir / DONE_MARKER, f"report/{DONE_MARKER}")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.report_dir)

    def units(self, ctx: Context) -> list[Unit]:
        return [Unit(REPORT, scene_id=REPORT)]

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from pipeline.stages.report import write_report

        for item in work:
            try:
                result = write_report(ctx.ledgers, Path(ctx.config.out_dir) if ctx.config.out_dir else None)
            except InputError as exc:     # the report reads the whole root: a malformed file stops it
                raise StageRefused(f"stats: {exc}") from None
            print(f"stats: {result.total_questions} questions, {len(result.plot_paths)} plots -> {result.report_path}")
            marker = item.marker(self, ctx, sha256_file(result.report_path), {"questions": result.total_questions,
                                                                             "plots": len(result.plot_paths)})
            if not ctx.config.out_dir:    # a report written elsewhere is not the root's
                ctx.ledgers.of(self.name).write(ctx.root, marker)
            yield Outcome(item.unit, marker=marker)
