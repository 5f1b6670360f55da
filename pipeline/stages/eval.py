"""eval: predictions scored against the benchmark questions with the benchmarks' exact rules
(``ROOT/eval/<bench>_<split>.json``). Units: the prediction files (``ROOT/train/predictions/<bench>_<split>.jsonl``,
or another folder) that have a question file ``ROOT/qa/<bench>/<split>.jsonl``. Scoring is strict
(:func:`qa_templates.scorer.score_files`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.core.atomic import sha256_file, write_json
from pipeline.core.errors import ErrorRow, InputError
from pipeline.core.layout import MARKER_DIR, DatasetRoot, bench_file_name
from pipeline.core.markers import ref
from pipeline.stages.contract import Context, FileLedger, Outcome, Stage, StageRefused, Unit, Work


@dataclass(frozen=True)
class EvalConfig:
    bench: str | None = None              # the overall rule; None: each file's own bench


def print_report(title: str, report) -> None:
    width = max([len(k) for k in report.scores] + [13])
    print(f"{title}\n{'question_type':<{width}}  {'n':>6}  {'score':>7}")
    for key, value in report.scores.items():
        if key != "overall":
            print(f"{key:<{width}}  {report.counts.get(key, ''):>6}  {value:7.2f}")
    print(f"{'overall':<{width}}  {sum(report.counts.values()):>6}  {report.scores['overall']:7.2f}")
    if report.missing:
        print(f"missing predictions: {report.missing} (scored as wrong)")


class EvalStage(Stage):
    name = "eval"
    reads = ("qa", "predict")
    version = 1
    noun = "prediction files"
    refuses_stale_inputs = True

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.eval_dir / MARKER_DIR / f"{bench_file_name(*unit.split('/'))}.json",
                          f"eval/{MARKER_DIR}/*.json")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.eval_dir)

    def units(self, ctx: Context) -> list[Unit]:
        folder: Path = ctx.extra.get("predictions_dir") or ctx.root.predictions_dir
        own = folder.resolve() == ctx.root.predictions_dir.resolve()
        files = sorted(folder.glob("*_*.jsonl")) if folder.is_dir() else []
        if not files:
            raise StageRefused(f"eval: {folder}: no <bench>_<split>.jsonl predictions found")
        qa = ctx.ledgers.markers("qa")
        predicted = ctx.ledgers.markers("predict")
        units = []
        for path in files:
            bench, split = path.stem.split("_", 1)
            unit = f"{bench}/{split}"
            if unit not in qa:
                raise StageRefused(f"eval: {path}: no question file {ctx.root.qa_file(bench, split)} made by the qa "
                                   "stage to score it against")
            upstream = {ref("qa", unit): qa[unit].identity}
            if own and unit in predicted:
                upstream[ref("predict", unit)] = predicted[unit].identity
            else:   # predictions from elsewhere: their digest is the record (a changed file is a changed input)
                upstream[f"file:{path.resolve()}"] = sha256_file(path)
            units.append(Unit(unit, upstream, {"questions": str(ctx.root.qa_file(bench, split)),
                                               "predictions": str(path)}, scene_id=unit))
        return units

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from qa_templates.scorer import score_files

        for item in work:
            job = item.unit.job
            bench, split = item.unit.id.split("/")
            try:
                report = score_files(job["questions"], job["predictions"], ctx.config.bench,
                                     allow_missing=ctx.extra.get("allow_missing", False))
            except InputError as exc:
                yield Outcome(item.unit, errors=[ErrorRow.from_exception(self.name, "", item.unit.id, exc)])
                continue
            print_report(f"\n{Path(job['predictions']).name} vs {job['questions']}", report)
            out = ctx.root.eval_file(bench, split)
            write_json(out, report.to_json())
            print(f"scores: {out}", file=sys.stdout)
            marker = item.marker(self, ctx, sha256_file(out), {"overall": report.scores["overall"],
                                                               "questions": sum(report.counts.values()),
                                                               "missing": report.missing})
            ctx.ledgers.of(self.name).write(ctx.root, marker)
            yield Outcome(item.unit, marker=marker)
